//! Length-sorted calls: rows sorted by length and cut into ONNX Runtime calls that pad little
//! and stay within the call limits, then scattered back to input order. The one place that
//! sorts, cuts and scatters back.

use anyhow::Result;
use std::ops::Range;

/// The largest ONNX Runtime call: rows, and tokens once padded (`rows × longest row`). One row
/// longer than `max_tokens` still gets a call of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    pub max_rows: usize,
    pub max_tokens: usize,
}

/// What one call costs beyond its padded tokens, in tokens: ONNX Runtime's per-run work (about
/// 0.2 ms, three tokens' worth, for the int8 MiniLM on one AVX-512 core). It makes the plan
/// prefer one call over two when merging costs less padding than that.
const CALL_OVERHEAD_TOKENS: usize = 4;

/// How a length-sorted run of rows is cut into calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cut {
    /// Calls of at most this many rows.
    Every(usize),
    /// The cheapest plan within the limits ([`plan_calls`]).
    Planned(CallLimits),
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
        Cut::Planned(limits) => {
            let lens: Vec<usize> = order.iter().map(|&i| rows[i].len()).collect();
            plan_calls(&lens, limits)
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

/// Cuts length-sorted rows into consecutive calls within `limits` so that padded tokens plus
/// a fixed cost per call are least (dynamic programming over where the calls end: each call
/// pads to its last, longest row). On this model a token costs about the same whatever the
/// call's size (BENCHMARKS.md), so padding is the waste worth planning away; the fixed cost
/// keeps runs of equal lengths in one call.
pub fn plan_calls(lengths_sorted: &[usize], limits: CallLimits) -> Vec<Range<usize>> {
    let n = lengths_sorted.len();
    let max_rows = limits.max_rows.max(1);
    // best[j]: least cost of the first j rows; from[j]: where the last call of that plan starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut from = vec![0usize; n + 1];
    best[0] = 0;
    for j in 1..=n {
        let longest = lengths_sorted[j - 1];
        for rows in 1..=max_rows.min(j) {
            if rows > 1 && rows * longest > limits.max_tokens {
                break;
            }
            let i = j - rows;
            let cost = best[i] + CALL_OVERHEAD_TOKENS + rows * longest;
            // Ties go to the longer last call: fewer calls for the same cost.
            if cost <= best[j] {
                best[j] = cost;
                from[j] = i;
            }
        }
    }
    let mut parts = Vec::new();
    let mut j = n;
    while j > 0 {
        parts.push(from[j]..j);
        j = from[j];
    }
    parts.reverse();
    parts
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
            Cut::Planned(CallLimits {
                max_rows: 3,
                max_tokens: 1000,
            }),
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

    fn plan(lens: &[usize], max_rows: usize, max_tokens: usize) -> Vec<Range<usize>> {
        plan_calls(
            lens,
            CallLimits {
                max_rows,
                max_tokens,
            },
        )
    }

    #[test]
    fn a_plan_covers_every_row_once_within_the_limits() {
        let lens = vec![3, 3, 4, 4, 5, 5, 6, 20, 21, 22, 60, 61, 61, 61, 200];
        for (rows, tokens) in [(1, 10), (4, 100), (32, 8192), (5, 64)] {
            let parts = plan(&lens, rows, tokens);
            assert_eq!(parts.first().unwrap().start, 0);
            assert_eq!(parts.last().unwrap().end, lens.len());
            for w in parts.windows(2) {
                assert_eq!(w[0].end, w[1].start, "{parts:?}");
            }
            for p in &parts {
                assert!(!p.is_empty() && p.len() <= rows, "{p:?} over {rows} rows");
                let padded = p.len() * lens[p.end - 1];
                assert!(p.len() == 1 || padded <= tokens, "{p:?}: {padded} tokens");
            }
        }
        assert!(plan(&[], 32, 8192).is_empty());
    }

    #[test]
    fn a_plan_splits_where_padding_costs_more_than_a_call() {
        // Short rows padded to one long row would waste 7 × 56 tokens: two calls.
        assert_eq!(plan(&[4, 4, 4, 4, 4, 4, 4, 60], 32, 8192), vec![0..7, 7..8]);
        // Rows one token apart: one call (padding 1+2 tokens < a second call's cost).
        assert_eq!(plan(&[10, 11, 12], 32, 8192), vec![0..3]);
        // Row and token limits bind even for equal rows.
        assert_eq!(plan(&[8; 10], 4, 8192), vec![0..2, 2..6, 6..10]);
        assert_eq!(plan(&[8; 4], 32, 16), vec![0..2, 2..4]);
        // A row longer than the token limit runs alone.
        assert_eq!(plan(&[8, 300], 32, 100), vec![0..1, 1..2]);
    }

    #[test]
    fn a_plan_pads_no_more_than_fixed_size_calls_of_the_same_rows() {
        // The plan is least-cost, so it never loses to cutting every max_rows rows.
        let mut lens: Vec<usize> = (0..500).map(|i| 3 + (i * 7919 % 97)).collect();
        lens.sort();
        let cost = |parts: &[Range<usize>]| -> usize {
            parts
                .iter()
                .map(|p| CALL_OVERHEAD_TOKENS + p.len() * lens[p.end - 1])
                .sum()
        };
        let planned = plan(&lens, 32, 8192);
        let fixed: Vec<Range<usize>> = (0..lens.len())
            .step_by(32)
            .map(|a| a..(a + 32).min(lens.len()))
            .collect();
        assert!(cost(&planned) <= cost(&fixed));
    }
}
