//! Tokenisation and ONNX Runtime inference throughput of model directories on the GoEmotions
//! test comments, at batch sizes 1, 8, 32 and 64 (batches sorted by length, padded to their
//! longest text), as the daemon runs them.
//!
//!   cargo bench --bench inference                       # the shipped model
//!   EMOSTREAM_BENCH_MODELS=dirA,dirB cargo bench --bench inference
//!   EMOSTREAM_BENCH_THREADS=2 (ORT intra-op threads, default 2)

use emostream::backend::classifier::Classifier;
use emostream::backend::ort::RuntimeOptions;
use emostream::model::eval::dataset::{goemotions_dir, Split};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let models = std::env::var("EMOSTREAM_BENCH_MODELS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/models/goemotions-minilm-l6").to_string()
    });
    let threads: usize = std::env::var("EMOSTREAM_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
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
        let mut c = Classifier::load(std::path::Path::new(dir), &runtime, true)?;
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
        for batch in [1usize, 8, 32, 64] {
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
    }
    Ok(())
}
