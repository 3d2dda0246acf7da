//! Kafka message headers as bytes. rust-rdkafka's `Headers` iteration unwraps the key as UTF-8
//! and panics on any other key; a producer can send such a key, so the daemon reads and builds
//! headers through librdkafka's own calls here and never through that iterator.

use crate::daemon::pipeline::HeaderSummary;
use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};
use std::ffi::CStr;

fn native(h: &BorrowedHeaders) -> *const rd::rd_kafka_headers_t {
    // A `BorrowedHeaders` reference is librdkafka's header list pointer (rust-rdkafka's layout).
    h as *const BorrowedHeaders as *const rd::rd_kafka_headers_t
}

/// Calls `f(key, value)` for every header, in order; keys are whatever bytes the producer sent.
pub(crate) fn for_each(h: &BorrowedHeaders, mut f: impl FnMut(&[u8], Option<&[u8]>)) {
    let ptr = native(h);
    let n = unsafe { rd::rd_kafka_header_cnt(ptr) };
    for idx in 0..n {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
        let err =
            unsafe { rd::rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        let key = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) });
        f(key, value);
    }
}

/// What admission needs to know about a message's headers, read once where it is consumed.
pub(crate) fn summary(h: Option<&OwnedHeaders>) -> HeaderSummary {
    let mut s = HeaderSummary::default();
    let Some(h) = h else { return s };
    let mut idx = 0;
    for_each(h.as_borrowed(), |k, v| {
        s.bytes += k.len() + v.map_or(0, <[u8]>::len);
        if s.bad_key.is_none() && std::str::from_utf8(k).is_err() {
            s.bad_key = Some(idx);
        }
        idx += 1;
    });
    s
}

/// Appends a header whose key may be any bytes (a NUL ends the key, as in librdkafka).
pub(crate) fn add(h: OwnedHeaders, key: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    let ptr = native(h.as_borrowed()) as *mut rd::rd_kafka_headers_t;
    let (vptr, vlen) = match value {
        Some(v) => (v.as_ptr() as *const std::ffi::c_void, v.len() as isize),
        None => (std::ptr::null(), 0),
    };
    // An OwnedHeaders is always writable; header_add only fails on a read-only list.
    unsafe {
        rd::rd_kafka_header_add(
            ptr,
            key.as_ptr() as *const _,
            key.len() as isize,
            vptr,
            vlen,
        )
    };
    h
}

/// Headers as (key, value) byte pairs.
#[cfg(test)]
pub(crate) fn to_vec(h: &BorrowedHeaders) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for_each(h, |k, v| out.push((k.to_vec(), v.map(<[u8]>::to_vec))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_keys_and_null_values_round_trip_without_panicking() {
        let h = add(OwnedHeaders::new(), b"ok", Some(b"v"));
        let h = add(h, b"\xff\xfe", None);
        let h = add(h, b"bin", Some(&[0, 159, 146, 150]));
        assert_eq!(
            to_vec(h.as_borrowed()),
            vec![
                (b"ok".to_vec(), Some(b"v".to_vec())),
                (b"\xff\xfe".to_vec(), None),
                (b"bin".to_vec(), Some(vec![0, 159, 146, 150])),
            ]
        );
        let s = summary(Some(&h));
        assert_eq!(s.bad_key, Some(1));
        assert_eq!(s.bytes, 2 + 1 + 2 + 3 + 4);
        // A clone (what the sink sends on) keeps the raw key.
        assert_eq!(to_vec(h.clone().as_borrowed())[1].0, b"\xff\xfe".to_vec());
    }
}
