//! Length-sorted sub-batching: rows sorted by length and cut where padding would grow, so each
//! ONNX Runtime call pads little. The one place that sorts, splits and scatters back.

/// Splits a length-sorted batch into sub-batches so each pads little: a sub-batch closes when
/// adding the next (longer) row would make padding exceed a quarter of its tokens.
pub fn sub_batches(lengths_sorted: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut real = 0usize;
    for (i, &len) in lengths_sorted.iter().enumerate() {
        let rows = i + 1 - start;
        if rows > 1 && (len * rows) as f64 > 1.25 * (real + len) as f64 && rows > 4 {
            out.push(start..i);
            start = i;
            real = 0;
        }
        real += len;
    }
    if start < lengths_sorted.len() {
        out.push(start..lengths_sorted.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_batches_cover_all_and_limit_padding() {
        let lens = vec![3, 3, 4, 4, 5, 5, 6, 20, 21, 22, 60];
        let parts = sub_batches(&lens);
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, lens.len());
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(parts.len() >= 2, "{parts:?}");
        let padded: usize = parts.iter().map(|r| r.len() * lens[r.end - 1]).sum();
        assert!(
            padded < lens.len() * 60,
            "sub-batching should pad less than one batch"
        );
    }
}
