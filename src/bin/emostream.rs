//! `emostream`: the Kafka labelling daemon (`run`), the broker-less `classify`,
//! `check-model`, `check-config` and `create-topics`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use emostream::daemon::config::Settings;
use emostream::model::labels::{over_threshold, ranked};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "emostream",
    version,
    about = "Label a Kafka stream of comments with GoEmotions emotions"
)]
struct Cli {
    /// Configuration file (TOML) applied over config/default.toml; EMOSTREAM__* env vars win.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: consume, label, produce, commit.
    Run,
    /// Serve the classify API, the try-it page and the live view on admin.bind, without Kafka.
    Serve {
        /// Model directory (default: model.dir, or the registry's active version)
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Label JSON or text lines from stdin; write label events to stdout.
    Classify {
        /// How to read each line (default: input.format)
        #[arg(long, value_enum)]
        format: Option<emostream::daemon::config::InputFormat>,
        /// Model directory (default: model.dir)
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Load and validate a model directory, run a smoke batch, print labels and timings.
    CheckModel { dir: PathBuf },
    /// Validate the configuration (file and environment) as `run` would at start-up, and exit.
    CheckConfig,
    /// Create the topics the configuration names that do not exist yet (input, output,
    /// dead-letter sized for the largest dead letter, control, feedback).
    CreateTopics {
        /// Partitions of each topic but the control topic (default: the broker's num.partitions)
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        partitions: i32,
        /// Replication factor (default: the broker's default.replication.factor)
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        replication_factor: i32,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("emostream: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let mut s = Settings::load(cli.config.as_deref())?;
    emostream::daemon::telemetry::init_logging(s.log.format, &s.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Run => {
            let r = rt.block_on(emostream::daemon::run::run(s));
            // After a fatal fault, threads still blocked (a wedged worker) must not hold the exit.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            r
        }
        Cmd::Serve { model } => {
            if let Some(m) = model {
                s.model.dir = model_override(&s, m)?;
            }
            let r = rt.block_on(emostream::daemon::serve::run(s));
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            r
        }
        Cmd::Classify { format, model } => {
            if let Some(f) = format {
                s.input.format = f;
            }
            if let Some(m) = model {
                s.model.dir = model_override(&s, m)?;
            }
            rt.block_on(emostream::daemon::stdin::run(s))
        }
        Cmd::CheckModel { dir } => check_model(&s, dir),
        // Settings::load above validated every key; secrets were read (and are not shown).
        Cmd::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Cmd::CreateTopics {
            partitions,
            replication_factor,
        } => {
            let layout = emostream::daemon::kafka::topics::TopicLayout {
                partitions,
                replication_factor,
            };
            for t in rt.block_on(emostream::daemon::kafka::topics::create_topics(&s, layout))? {
                println!("{}\t{}\t{}", t.topic, t.key, t.result);
            }
            Ok(())
        }
    }
}

/// `--model DIR`, refused where a registry decides the model (its ACTIVE version would be
/// served and the flag silently ignored).
fn model_override(s: &Settings, dir: PathBuf) -> Result<PathBuf> {
    if !s.registry_root().is_empty() {
        anyhow::bail!(
            "--model {} conflicts with config key registry.root = {:?}: the registry's ACTIVE version is what is served; unset registry.root (e.g. EMOSTREAM__REGISTRY__ROOT=\"\") to serve a directory",
            dir.display(),
            s.registry_root()
        );
    }
    Ok(dir)
}

const SMOKE: [&str; 4] = [
    "Thank you so much, this made my day!",
    "I can't believe they did that, it's disgusting.",
    "Wait, what? How does that even work?",
    "I'm so sorry for your loss.",
];

fn check_model(s: &Settings, dir: PathBuf) -> Result<()> {
    let t = std::time::Instant::now();
    let mut c = emostream::backend::offline::OfflineModel::load(&dir, &s.runtime_options(), true)?;
    let load = t.elapsed();
    let card = c.dir.card.clone();
    println!(
        "this machine: {}; ONNX Runtime: {}",
        emostream::model::kernels::this_machine(ort::info()),
        ort::info()
    );
    println!(
        "model {} {} ({}, {}, {} labels, max length {}), loaded in {:.0} ms",
        card.name,
        card.version,
        card.architecture,
        card.precision,
        card.labels.len(),
        card.max_sequence_length,
        load.as_secs_f64() * 1e3
    );
    if let Some(m) = card.metrics.get("test") {
        println!(
            "card: test macro-F1 {:.4} ({})",
            m.metrics.macro_f1, m.thresholds
        );
    }
    let t = std::time::Instant::now();
    let scores = c.score_texts(&SMOKE, SMOKE.len())?;
    let infer = t.elapsed();
    let th = card.thresholds.resolved(card.labels.len());
    for (text, s) in SMOKE.iter().zip(&scores) {
        anyhow::ensure!(
            s.iter().all(|x| x.is_finite()),
            "non-finite score for {text:?}"
        );
        let on = over_threshold(&ranked(s), s, &th);
        let labels: Vec<String> = on
            .iter()
            .map(|&i| format!("{} {:.2}", card.labels.name(i), s[i]))
            .collect();
        println!("{text:?} -> [{}]", labels.join(", "));
    }
    println!(
        "smoke batch of {} in {:.1} ms",
        SMOKE.len(),
        infer.as_secs_f64() * 1e3
    );
    Ok(())
}
