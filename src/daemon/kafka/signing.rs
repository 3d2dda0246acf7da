//! Signed control messages. A control-topic message moves every replica to another model, so
//! only a holder of the control key may send one: the body (JSON with `request_id` and
//! `issued_at_ms`) travels with `emostream.signature` = hex HMAC-SHA256(key, body) in a header.
//! A replica refuses an unsigned or badly signed message, one issued outside
//! `registry.control_max_age_ms` of its clock, and a request id it has seen (a replay).

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::Path;

pub const SIGNATURE_HEADER: &str = "emostream.signature";

/// The shared control key (from a secret file); `Debug` does not show it.
#[derive(Clone)]
pub struct ControlKey(Vec<u8>);

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(<redacted>)")
    }
}

impl ControlKey {
    /// Reads the key file (a trailing newline is not part of the key); at least 32 bytes.
    pub fn from_file(path: &Path) -> Result<ControlKey> {
        let raw = std::fs::read(path).with_context(|| {
            format!(
                "config key registry.control_key_file: reading {}",
                path.display()
            )
        })?;
        let key = raw.strip_suffix(b"\n").unwrap_or(&raw);
        if key.len() < 32 {
            bail!(
                "config key registry.control_key_file: {} holds {} bytes; use at least 32 (e.g. `openssl rand -hex 32`)",
                path.display(),
                key.len()
            );
        }
        Ok(ControlKey(key.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// The signature header's value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut m = self.mac();
        m.update(body);
        hex::encode(m.finalize().into_bytes())
    }

    /// Constant-time check of a hex signature.
    fn verify(&self, body: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        let mut m = self.mac();
        m.update(body);
        m.verify_slice(&sig).is_ok()
    }
}

/// Why a control message was refused (sent back in the reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Unsigned,
    BadSignature,
    /// No `request_id` or `issued_at_ms` in a signed body.
    Incomplete,
    Expired {
        age_ms: i64,
    },
    Replayed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unsigned => write!(f, "unsigned: no {SIGNATURE_HEADER} header"),
            Refusal::BadSignature => write!(f, "bad signature"),
            Refusal::Incomplete => write!(f, "signed body lacks request_id or issued_at_ms"),
            Refusal::Expired { age_ms } if *age_ms >= 0 => write!(
                f,
                "expired: issued {} s ago, outside registry.control_max_age_ms (or before this replica started)",
                age_ms / 1000
            ),
            Refusal::Expired { age_ms } => write!(
                f,
                "expired: issued {} s in the future, outside registry.control_max_age_ms (clock skew?)",
                age_ms.unsigned_abs() / 1000
            ),
            Refusal::Replayed => write!(f, "replayed: this request_id was seen already"),
        }
    }
}

/// Clock skew allowed between a publisher and a replica that has just started.
const START_SKEW_MS: i64 = 5_000;

/// Checks signatures, freshness and request ids of incoming control messages.
pub(crate) struct Verifier {
    key: ControlKey,
    max_age_ms: i64,
    /// Messages issued before this (start-up, less a little clock skew) are refused: the seen
    /// ids of an earlier run are gone, so an old message replayed now would pass them.
    not_before_ms: i64,
    /// Request id → when it was issued; forgotten once older than `max_age_ms` (by then the
    /// freshness check refuses it anyway).
    seen: HashMap<String, i64>,
}

impl Verifier {
    pub(crate) fn new(key: ControlKey, max_age_ms: u64, started_ms: i64) -> Verifier {
        Verifier {
            key,
            max_age_ms: max_age_ms as i64,
            not_before_ms: started_ms - START_SKEW_MS,
            seen: HashMap::new(),
        }
    }

    /// Accepts `body` (and remembers its request id) or says why not.
    pub(crate) fn check(
        &mut self,
        body: &[u8],
        signature: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        let sig = signature.ok_or(Refusal::Unsigned)?;
        if !self.key.verify(body, sig) {
            return Err(Refusal::BadSignature);
        }
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| Refusal::Incomplete)?;
        let (Some(rid), Some(issued)) = (
            v.get("request_id").and_then(|r| r.as_str()),
            v.get("issued_at_ms").and_then(|t| t.as_i64()),
        ) else {
            return Err(Refusal::Incomplete);
        };
        let age_ms = now_ms.saturating_sub(issued);
        if age_ms.saturating_abs() > self.max_age_ms || issued < self.not_before_ms {
            return Err(Refusal::Expired { age_ms });
        }
        self.seen.retain(|_, t| now_ms - *t <= self.max_age_ms);
        if self.seen.insert(rid.to_string(), issued).is_some() {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ControlKey {
        ControlKey(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn signed_fresh_messages_pass_once_and_everything_else_is_refused_with_its_reason() {
        let now = 1_000_000_000;
        let mut v = Verifier::new(key(), 60_000, now - 100_000);
        let body = format!(r#"{{"type":"rollback","request_id":"r1","issued_at_ms":{now}}}"#);
        let sig = key().sign(body.as_bytes());
        assert_eq!(v.check(body.as_bytes(), None, now), Err(Refusal::Unsigned));
        assert_eq!(
            v.check(body.as_bytes(), Some(b"00ff"), now),
            Err(Refusal::BadSignature)
        );
        let other = ControlKey(b"another key of thirty-two bytes!".to_vec()).sign(body.as_bytes());
        assert_eq!(
            v.check(body.as_bytes(), Some(other.as_bytes()), now),
            Err(Refusal::BadSignature)
        );
        // A changed body under the old signature.
        let tampered = body.replace("rollback", "activate");
        assert_eq!(
            v.check(tampered.as_bytes(), Some(sig.as_bytes()), now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            v.check(body.as_bytes(), Some(sig.as_bytes()), now + 5),
            Ok(())
        );
        assert_eq!(
            v.check(body.as_bytes(), Some(sig.as_bytes()), now + 10),
            Err(Refusal::Replayed)
        );
        assert!(matches!(
            v.check(body.as_bytes(), Some(sig.as_bytes()), now + 61_000),
            Err(Refusal::Expired { .. })
        ));
        // Issued before this replica started (less the skew): its seen ids are gone, refused.
        let mut fresh = Verifier::new(key(), 60_000, now + 30_000);
        let e = fresh.check(body.as_bytes(), Some(sig.as_bytes()), now + 31_000);
        assert!(matches!(e, Err(Refusal::Expired { .. })), "{e:?}");
        assert!(e.unwrap_err().to_string().contains("31 s ago"));
        let bare = br#"{"type":"rollback"}"#;
        let s = key().sign(bare);
        assert_eq!(
            v.check(bare, Some(s.as_bytes()), now),
            Err(Refusal::Incomplete)
        );
    }

    #[test]
    fn short_keys_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "short\n").unwrap();
        let e = format!("{:#}", ControlKey::from_file(&f).unwrap_err());
        assert!(e.contains("registry.control_key_file"), "{e}");
    }
}
