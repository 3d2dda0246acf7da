//! Length-sorted sub-batching: rows sorted by length and cut where padding would grow, so each
//! ONNX Runtime call pads little. The one place that sorts, splits and scatters back.

use anyhow::Result;
use std::ops::Range;

/// How a length-sorted run of rows is cut into calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cut {
    /// Calls of at most this many rows.
    Every(usize),
    /// Where padding would grow ([`sub_batches`]).
    AtPadding,
}

/// Runs `call` on `rows` in length order, cut by `cut`, and returns its results in input
/// order. `call` gets one call's rows (shortest first) and returns one result per row.
pub(crate) fn in_length_order<T>(
    rows: &[&[u32]],
    cut: Cut,
    mut call: impl FnMut(&[&[u32]]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].len());
    let parts: Vec<Range<usize>> = match cut {
        Cut::Every(n) => (0..order.len())
            .step_by(n.max(1))
            .map(|a| a..(a + n.max(1)).min(order.len()))
            .collect(),
        Cut::AtPadding => {
            let lens: Vec<usize> = order.iter().map(|&i| rows[i].len()).collect();
            sub_batches(&lens)
        }
    };
    let mut out: Vec<Option<T>> = (0..rows.len()).map(|_| None).collect();
    for part in parts {
        let idx = &order[part];
        let batch: Vec<&[u32]> = idx.iter().map(|&i| rows[i]).collect();
        let results = call(&batch)?;
        anyhow::ensure!(
            results.len() == idx.len(),
            "a call returned {} results for {} rows",
            results.len(),
            idx.len()
        );
        for (&i, r) in idx.iter().zip(results) {
            out[i] = Some(r);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Splits a length-sorted batch into sub-batches so each pads little: a sub-batch closes when
/// adding the next (longer) row would make padding exceed a quarter of its tokens.
fn sub_batches(lengths_sorted: &[usize]) -> Vec<Range<usize>> {
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
    fn results_come_back_in_input_order_whatever_the_cut() {
        let rows: Vec<Vec<u32>> = [5, 1, 3, 9, 2, 2, 7].iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        for cut in [
            Cut::Every(1),
            Cut::Every(3),
            Cut::Every(100),
            Cut::AtPadding,
        ] {
            let mut calls = 0;
            let got = in_length_order(&refs, cut, |b| {
                calls += 1;
                assert!(b.windows(2).all(|w| w[0].len() <= w[1].len()), "sorted");
                Ok(b.iter().map(|r| r.len()).collect())
            })
            .unwrap();
            assert_eq!(got, vec![5, 1, 3, 9, 2, 2, 7], "{cut:?}");
            if let Cut::Every(n) = cut {
                assert_eq!(calls, rows.len().div_ceil(n));
            }
        }
    }

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
