//! Tokenisation and ONNX Runtime inference throughput of model directories on the GoEmotions
//! test comments, at batch sizes 1, 8, 32 and 64 (batches sorted by length, padded to their
//! longest text), as the daemon runs them.
//!
//!   cargo bench --bench inference                       # the shipped model
//!   EMOSTREAM_BENCH_MODELS=dirA,dirB cargo bench --bench inference
//!   EMOSTREAM_BENCH_THREADS=2 (ORT intra-op threads, default 2)
//!   EMOSTREAM_BENCH_BATCHES=1,8,32,64 (the single-session batch sizes to run)
//!   EMOSTREAM_BENCH_CALL_COST=1 (also: microseconds per token of one call on one thread, by
//!   rows and padded length: what the daemon's call planner assumes is flat)
//!   EMOSTREAM_BENCH_CALL_ROWS=32 EMOSTREAM_BENCH_CALL_TOKENS=8192 (the planner's limits: set
//!   them to the daemon's batching.max_batch_size and max_batch_tokens)
//!
//! With more than one thread it also runs the daemon's shape of the same budget: that many
//! sessions of one intra-op thread each, in parallel, taking the calls in turn, since one
//! session with N threads and N sessions with one thread each do not run at the same speed:
//! the sorted batches of 32 ("ORT batch 32, N sessions x 1 thread"), and the calls the
//! daemon's planner cuts from the whole sorted split with its default limits ("ORT planned
//! calls ..."), the best shapes the daemon could form from a backlog of these comments, and
//! the calls it does form from a backlog in stream order: windows of EMOSTREAM_BENCH_WINDOW
//! (batching.backlog_window, default 512) comments, each sorted and planned on its own.

use emostream::backend::batching::{plan_calls, CallLimits};
use emostream::backend::offline::OfflineModel;
use emostream::backend::ort::RuntimeOptions;
use emostream::model::eval::dataset::{goemotions_dir, Split};
use std::ops::Range;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let models = std::env::var("EMOSTREAM_BENCH_MODELS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/models/goemotions-minilm-l6").to_string()
    });
    let threads = env_or("EMOSTREAM_BENCH_THREADS", 2);
    let test = Split::read(&goemotions_dir().join("test.tsv"), 28)?;
    let texts = test.texts();
    println!(
        "{} GoEmotions test comments, ORT intra-op threads {threads}",
        texts.len()
    );
    for dir in models.split(',').filter(|s| !s.is_empty()) {
        let runtime = RuntimeOptions {
            intra_threads: threads,
            ..Default::default()
        };
        let mut c = OfflineModel::load(std::path::Path::new(dir), &runtime, true)?;
        println!(
            "\nmodel {dir} ({}, {})",
            c.dir.card.name, c.dir.card.precision
        );
        // Tokenisation, single thread.
        let t = Instant::now();
        let enc: Vec<Vec<u32>> = texts
            .iter()
            .map(|s| c.encode(s).map(|e| e.ids))
            .collect::<anyhow::Result<_>>()?;
        let secs = t.elapsed().as_secs_f64();
        let tokens: usize = enc.iter().map(Vec::len).sum();
        println!(
            "tokenize: {:.0} comments/s ({:.1} tokens/comment)",
            texts.len() as f64 / secs,
            tokens as f64 / texts.len() as f64
        );
        let mut order: Vec<usize> = (0..enc.len()).collect();
        order.sort_by_key(|&i| enc[i].len());
        let sizes = std::env::var("EMOSTREAM_BENCH_BATCHES").unwrap_or_else(|_| "1,8,32,64".into());
        for batch in sizes
            .split(',')
            .filter_map(|b| b.trim().parse::<usize>().ok())
        {
            // Batch 1 runs a 1,000-comment sample spread over all lengths to keep the run short.
            let sample: Vec<usize> = if batch == 1 {
                order.iter().copied().step_by(order.len() / 1000).collect()
            } else {
                order.clone()
            };
            // warm-up
            let warm: Vec<&[u32]> = sample
                .iter()
                .take(batch)
                .map(|&i| enc[i].as_slice())
                .collect();
            c.score_rows(&warm)?;
            let t = Instant::now();
            let mut lat = Vec::new();
            for chunk in sample.chunks(batch) {
                let rows: Vec<&[u32]> = chunk.iter().map(|&i| enc[i].as_slice()).collect();
                let b = Instant::now();
                c.score_rows(&rows)?;
                lat.push(b.elapsed().as_secs_f64() * 1e3);
            }
            let secs = t.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            println!(
                "ORT batch {batch:>2}: {:>6.0} comments/s   per batch p50 {:.2} ms, p99 {:.2} ms",
                sample.len() as f64 / secs,
                lat[lat.len() / 2],
                lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
            );
        }
        if std::env::var("EMOSTREAM_BENCH_CALL_COST").is_ok_and(|v| v == "1") {
            call_cost(std::path::Path::new(dir))?;
        }
        if threads > 1 {
            let fixed: Vec<Range<usize>> = (0..order.len())
                .step_by(32)
                .map(|a| a..(a + 32).min(order.len()))
                .collect();
            let rate = parallel_sessions(std::path::Path::new(dir), threads, &enc, &order, &fixed)?;
            println!("ORT batch 32, {threads} sessions x 1 thread: {rate:>6.0} comments/s");
            let limits = CallLimits {
                max_rows: env_or("EMOSTREAM_BENCH_CALL_ROWS", 32),
                max_tokens: env_or("EMOSTREAM_BENCH_CALL_TOKENS", 8192),
            };
            let lens: Vec<usize> = order.iter().map(|&i| enc[i].len()).collect();
            let planned = plan_calls(&lens, limits);
            let rate =
                parallel_sessions(std::path::Path::new(dir), threads, &enc, &order, &planned)?;
            println!(
                "ORT planned calls (<= {} rows, <= {} tokens; {} calls), {threads} sessions x 1 thread: {rate:>6.0} comments/s",
                limits.max_rows,
                limits.max_tokens,
                planned.len()
            );
            // What the daemon can form from a backlog in stream order: windows of
            // batching.backlog_window comments, each sorted and planned on its own.
            let window = env_or("EMOSTREAM_BENCH_WINDOW", 512).max(1);
            let (mut windowed, mut calls) = (Vec::new(), Vec::new());
            for start in (0..enc.len()).step_by(window) {
                let mut w: Vec<usize> = (start..(start + window).min(enc.len())).collect();
                w.sort_by_key(|&i| enc[i].len());
                let lens: Vec<usize> = w.iter().map(|&i| enc[i].len()).collect();
                let at = windowed.len();
                calls.extend(
                    plan_calls(&lens, limits)
                        .into_iter()
                        .map(|r| r.start + at..r.end + at),
                );
                windowed.extend(w);
            }
            let rate =
                parallel_sessions(std::path::Path::new(dir), threads, &enc, &windowed, &calls)?;
            println!(
                "ORT planned calls in stream-order windows of {window} ({} calls), {threads} sessions x 1 thread: {rate:>6.0} comments/s",
                calls.len()
            );
        }
    }
    Ok(())
}

/// Microseconds per token of one call on one intra-op thread, for a grid of rows × length.
fn call_cost(dir: &std::path::Path) -> anyhow::Result<()> {
    let runtime = RuntimeOptions {
        intra_threads: 1,
        ..Default::default()
    };
    let mut c = OfflineModel::load(dir, &runtime, false)?;
    println!("call cost, 1 thread, microseconds per padded token (rows x length):");
    for len in [8usize, 16, 32, 64, 128] {
        let mut line = format!("  length {len:>3}:");
        for rows in [1usize, 2, 4, 8, 16, 32, 64] {
            let row: Vec<u32> = (0..len as u32).map(|i| 1000 + i).collect();
            let refs: Vec<&[u32]> = (0..rows).map(|_| row.as_slice()).collect();
            c.score_rows(&refs)?;
            let n = (4000 / (rows * len)).max(3);
            let t = Instant::now();
            for _ in 0..n {
                c.score_rows(&refs)?;
            }
            let per = t.elapsed().as_secs_f64() / n as f64;
            line += &format!(" {rows}x:{:>5.1}", per * 1e6 / (rows * len) as f64);
        }
        println!("{line}");
    }
    Ok(())
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `sessions` sessions of one intra-op thread each score the `calls` (ranges of `order`), each
/// taking the next call when it is free; comments per second over all of them.
fn parallel_sessions(
    dir: &std::path::Path,
    sessions: usize,
    enc: &[Vec<u32>],
    order: &[usize],
    calls: &[Range<usize>],
) -> anyhow::Result<f64> {
    let runtime = RuntimeOptions {
        intra_threads: 1,
        ..Default::default()
    };
    let mut loaded = (0..sessions)
        .map(|_| OfflineModel::load(dir, &runtime, false))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let chunks: Vec<Vec<&[u32]>> = calls
        .iter()
        .map(|r| {
            order[r.clone()]
                .iter()
                .map(|&i| enc[i].as_slice())
                .collect()
        })
        .collect();
    for c in &mut loaded {
        c.score_rows(&chunks[0])?;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = loaded
            .iter_mut()
            .map(|c| {
                let (next, chunks) = (&next, &chunks);
                scope.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(rows) = chunks.get(i) else {
                            return Ok(());
                        };
                        c.score_rows(rows)?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("bench thread panicked")?;
        }
        Ok(())
    })?;
    Ok(order.len() as f64 / t.elapsed().as_secs_f64())
}
