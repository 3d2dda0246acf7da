//! `emostream classify`: labels lines from stdin (JSON objects or plain text, per
//! `input.format`) through the same inference core as the daemon, writing label events to
//! stdout in input order and rejections to stderr. No Kafka, no HTTP.

use crate::daemon::ack::Ledger;
use crate::daemon::config::{InputSettings, Settings};
use crate::daemon::pipeline::core::{join_workers, Core};
use crate::daemon::pipeline::workers::Observers;
use crate::daemon::pipeline::{admit, Admitted, Origin, Outcome};
use crate::daemon::start;
use crate::daemon::supervise::Faults;
use anyhow::Result;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

pub async fn run(s: Settings) -> Result<()> {
    anyhow::ensure!(
        s.input.format != crate::daemon::config::InputFormat::SchemaRegistry,
        "config key input.format: \"schema_registry\" values are read from Kafka (emostream run), not stdin"
    );
    // 1. The model, one session: one worker keeps the output in input order.
    let first = start::load_first_model(&s, 1)?;
    let policy = start::open_policy(&s, &first.generation)?;
    let (_active, active) = watch::channel(Arc::new(first.generation));
    // 2. The inference core, fed line by line from stdin.
    let faults = Arc::new(Faults::default());
    let core = Core::start(
        start::core_settings(&s, 1, 4096, start::labelling(&s, policy.as_deref())),
        active,
        Observers::default(),
        faults.clone(),
    )?;
    let reader = tokio::spawn(read_lines(core.pending, s.input.clone()));
    // 3. Outcomes to stdout (events) and stderr (rejections), in input order.
    write_outcomes(core.outcomes).await?;
    if let Some(cause) = faults.cause() {
        anyhow::bail!("{cause}");
    }
    let _ = reader.await;
    let _ = core.batcher.await;
    join_workers(core.workers);
    Ok(())
}

/// Admits each stdin line as a message at offset = its line number.
async fn read_lines(pending: mpsc::Sender<Admitted>, input: InputSettings) {
    // Nothing commits here; the ledger only gives every line the token a message carries.
    let ledger = Arc::new(Ledger::default());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut n: i64 = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let origin = Origin::unkeyed(&ledger, "stdin", n, Some(line.into_bytes()));
        n += 1;
        if pending.send(admit(origin, &input)).await.is_err() {
            break;
        }
    }
}

/// Writes each event as a line to stdout and each rejection as a JSON line to stderr.
async fn write_outcomes(mut outcomes: mpsc::Receiver<Outcome>) -> Result<()> {
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    while let Some(o) = outcomes.recv().await {
        match o {
            Outcome::Labelled { event, origin, .. } => {
                out.write_all(&event).await?;
                out.write_all(b"\n").await?;
                origin.ack.delivered();
            }
            Outcome::Rejected(r) => {
                eprintln!(
                    "{}",
                    serde_json::json!({"line": r.origin.position.offset + 1, "reason": r.reason.as_str(), "detail": r.detail})
                );
                r.origin.ack.delivered();
            }
        }
    }
    out.flush().await?;
    Ok(())
}
