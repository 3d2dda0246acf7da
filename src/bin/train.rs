//! `train`: fine-tune BERT-family encoders on GoEmotions, evaluate, tune thresholds, export ONNX.

use anyhow::{bail, Context, Result};

// Keeps freed tensor buffers for reuse instead of unmapping them: glibc returned them to the
// kernel and page-faulted them back each step (a third of CPU time was system time).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::Device;
use clap::{Parser, Subcommand};
use emostream::backend::ort::RuntimeOptions;
use emostream::model::eval::dataset::{goemotions_dir, Split};
use emostream::model::eval::thresholds::ThresholdRule;
use emostream::model::labels::LabelSet;
use emostream::train::encoder::Pooling;
use emostream::train::loss::LossConfig;
use emostream::train::onnx::Variant;
use emostream::train::optim::AdamWConfig;
use emostream::train::{evaluate, package, TrainConfig, Trainer};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "train",
    version,
    about = "Fine-tune BERT-family encoders on GoEmotions and build emostream model directories"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct FitArgs {
    /// Where the weights start: a Hugging Face checkpoint directory (config.json,
    /// model.safetensors, tokenizer.json), or an emostream model directory (model.json,
    /// model.onnx), whose weights are recovered from its ONNX into RUN/base first.
    #[arg(long, required_unless_present = "from_registry")]
    base: Option<PathBuf>,
    /// Start from the version the registry's ACTIVE names (the model now in production), or
    /// from a model directory given here.
    #[arg(long, conflicts_with = "base")]
    from_registry: Option<PathBuf>,
    /// Run directory to create (checkpoints, best weights).
    #[arg(long)]
    run: PathBuf,
    /// The base model's public name for the card (default: the --base path).
    #[arg(long)]
    base_name: Option<String>,
    /// Directory with train.tsv / dev.tsv / labels.txt.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A dataset directory from `train data import`: its train.tsv is mixed with a replay
    /// sample of GoEmotions train (see --replay-ratio); dev stays GoEmotions dev.
    #[arg(long)]
    feedback: Option<PathBuf>,
    /// GoEmotions training rows drawn per imported row (0: the imported rows alone).
    #[arg(long, default_value_t = 4.0, requires = "feedback")]
    replay_ratio: f64,
    #[arg(long, default_value_t = 4)]
    epochs: u64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Head pooling: cls (the architecture's Hugging Face head) | mean (masked mean, then the
    /// classifier; how sentence-transformers checkpoints were trained).
    /// Default: what the base was trained with (a model directory's), else cls.
    #[arg(long, value_enum)]
    pooling: Option<Pooling>,
    /// Start the classifier bias at each label's log prior odds on train.
    #[arg(long)]
    prior_bias: bool,
    /// Keep the word-embedding table fixed (faster on CPU).
    #[arg(long)]
    freeze_embeddings: bool,
    /// Per-label positive weights: none, or sqrt-inv-freq (sqrt(neg/pos), capped at 10).
    #[arg(long, value_enum, default_value_t = PosWeight::None)]
    pos_weight: PosWeight,
    /// The loss: bce (binary cross-entropy) | asl (asymmetric loss: focusing and clipping
    /// below; Ridnik et al. 2021).
    #[arg(long, value_enum, default_value_t = LossKind::Bce)]
    loss: LossKind,
    /// ASL: focusing on positives, (1-p)^γ+ (the ASL paper's default 1).
    #[arg(long, default_value_t = 1.0)]
    asl_gamma_pos: f64,
    /// ASL: focusing on negatives, p_m^γ- (default 4).
    #[arg(long, default_value_t = 4.0)]
    asl_gamma_neg: f64,
    /// ASL: probability margin m; a negative scored below it adds nothing (default 0.05).
    #[arg(long, default_value_t = 0.05)]
    asl_clip: f64,
    /// Layer-wise learning-rate decay: the head trains at --lr, each encoder layer below at
    /// this factor times the one above, the embeddings one factor below the lowest layer.
    /// 1: off.
    #[arg(long, default_value_t = 1.0)]
    layer_decay: f64,
    /// Also evaluate on dev every N steps.
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Use only the first N training examples (smoke runs).
    #[arg(long)]
    limit_train_examples: Option<usize>,
    /// Checkpoint and stop once this many steps are done (resume later).
    #[arg(long)]
    stop_at_step: Option<u64>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Split each batch into this many shards on parallel threads (default: CPU cores).
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Turn moderators' corrections (the feedback topic) and/or JSONL/CSV files (text, labels
    /// by name) into a dataset directory: train.tsv, heldout.tsv (split by comment id) and
    /// provenance.json. The latest correction per (comment, moderator) wins.
    Import {
        /// The dataset directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Read this feedback topic (the daemons' api.feedback_topic) from its beginning.
        #[arg(long)]
        feedback_topic: Option<String>,
        /// The daemons' config file: the Kafka client settings (security, secret files).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Kafka bootstrap servers (default: kafka.brokers of the config).
        #[arg(long)]
        brokers: Option<String>,
        /// JSONL or CSV files of labelled comments (`text`, `labels`; `id`, `moderator` optional).
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        /// Share of comments held out for evaluation, in percent.
        #[arg(long, default_value_t = 20)]
        heldout_percent: u32,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Start fine-tuning from a base checkpoint.
    Fit(FitArgs),
    /// Continue a run from its latest checkpoint.
    Resume {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        stop_at_step: Option<u64>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Rebuild a trainable checkpoint (Hugging Face layout) from a model directory's ONNX:
    /// int8 weights dequantised, calibration folded into the classifier.
    Recover {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a checkpoint (Hugging Face layout, e.g. RUN/best) to an emostream model directory.
    Export(ExportArgs),
    /// Export with int8 dynamic quantisation (same as `export --precision int8`).
    Quantize(ExportArgs),
    /// Fit per-label Platt calibration on dev and fold it into model.onnx (scores become
    /// calibrated probabilities; thresholds are mapped so decisions stay the same).
    Calibrate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
        /// The calibrated model's version (model.onnx changes, so it is a new version).
        #[arg(long)]
        version: Option<String>,
    },
    /// Choose thresholds on dev and store them (and dev metrics) in model.json: each label's
    /// best threshold shrunk toward the global one by its dev support (the shrinkage chosen by
    /// cross-validation on dev), then raised until its dev precision reaches --min-precision.
    TuneThresholds {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
        /// No label may fire with a lower precision on dev where a higher threshold avoids it.
        #[arg(long, default_value_t = 0.2)]
        min_precision: f64,
        /// Each label's own best threshold, no shrinkage and no floor (how 1.0.0 was tuned).
        #[arg(long, conflicts_with = "min_precision")]
        per_label_only: bool,
    },
    /// Evaluate a model directory on a TSV split through ONNX Runtime.
    Evaluate {
        #[arg(long)]
        model: PathBuf,
        /// test | dev | a path to a TSV file
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long)]
        data: Option<PathBuf>,
        /// Record the test metrics in model.json.
        #[arg(long)]
        write: bool,
    },
    /// Write report.md (+ curves.png from the run) into a model directory.
    Report {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        run: Option<PathBuf>,
        /// An fp32 export of the same checkpoint, tuned and evaluated the same way: the report
        /// then compares its test metrics with this (int8) model's.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// The previous version's model directory, or a registry root (its ACTIVE version,
        /// the model in production): the report
        /// puts its test figures beside this one's, judges this one against it and writes
        /// the verdict to gate.json (which `train publish` enforces).
        #[arg(long)]
        before: Option<PathBuf>,
        /// The `train data import` dataset this candidate learnt from: judge it with the
        /// refresh gate (GoEmotions test not significantly worse, held-out corrections at
        /// least as well agreed with) instead of the default-model gate.
        #[arg(long, requires = "before")]
        feedback: Option<PathBuf>,
    },
    /// Training data of a team's own: `train data import`.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Copy a model directory into a model registry atomically (a directory: temporary name,
    /// fsync, rename; an object store: objects written only if absent, read back and verified,
    /// the card last); optionally point ACTIVE at it (conditionally: if another publisher
    /// changed it since it was read, nothing changes and the conflict is named) and/or announce
    /// it on the daemons' Kafka control topic.
    Publish {
        #[arg(long)]
        model: PathBuf,
        /// Registry root (the daemons' registry.root): a directory or s3://bucket/prefix,
        /// gs://…, az://… (credentials from the environment, as the cloud's own tools).
        #[arg(long)]
        registry: String,
        /// Version name in the registry (default: the card's version).
        #[arg(long)]
        version: Option<String>,
        /// Point the registry's ACTIVE file at the new version (daemons watching it swap).
        #[arg(long)]
        activate: bool,
        /// The daemons' config file, for --control-topic: the same Kafka client settings
        /// (security, secret files) and the control-message signing key
        /// (registry.control_key_file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Kafka bootstrap servers for --control-topic (default: kafka.brokers of the config).
        #[arg(long)]
        brokers: Option<String>,
        /// Announce the version on this control topic (every replica swaps and replies there).
        #[arg(long)]
        control_topic: Option<String>,
        /// Publish even though the candidate's gate.json says it failed (or judged another
        /// model.onnx, or another model than the one the registry serves).
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct ExportArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Training run directory (its train.json goes into the card).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Default: the name of the model the run started from (when it was recovered from a
    /// model directory), else "goemotions".
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "1.0.0")]
    version: String,
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// Standard ONNX ops only (no com.microsoft fused ops); fp32 only.
    #[arg(long)]
    plain: bool,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
}

fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s.starts_with("cuda") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse()
                .with_context(|| format!("bad device {s:?}"))?;
            Device::new_cuda(n)
                .with_context(|| format!("opening {s} (was train built with --features cuda?)"))
        }
        s => bail!("unknown device {s:?}: use cpu or cuda:N"),
    }
}

/// `--pos-weight`: how much a positive example of a label counts in its loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PosWeight {
    None,
    SqrtInvFreq,
}

/// `--loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LossKind {
    Bce,
    Asl,
}

/// `train export --precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Precision {
    Fp32,
    Int8,
}

fn pos_weights(kind: PosWeight, split: &Split, n: usize) -> Option<Vec<f32>> {
    match kind {
        PosWeight::None => None,
        PosWeight::SqrtInvFreq => {
            let mut pos = vec![0usize; n];
            for e in &split.examples {
                e.labels.iter().for_each(|&i| pos[i] += 1);
            }
            let total = split.examples.len() as f64;
            Some(
                pos.iter()
                    .map(|&p| ((total - p as f64) / (p.max(1) as f64)).sqrt().min(10.0) as f32)
                    .collect(),
            )
        }
    }
}

fn export(a: ExportArgs, quantize: bool) -> Result<()> {
    let variant = match (quantize, a.precision, a.plain) {
        (true, _, false) | (false, Precision::Int8, false) => Variant::Int8,
        (false, Precision::Fp32, plain) => Variant::Fp32 { fused: !plain },
        (_, _, true) => bail!("--plain exports fp32 only"),
    };
    let name = match (&a.name, &a.run) {
        (Some(n), _) => n.clone(),
        (None, Some(run)) => std::fs::read_to_string(run.join("base/recovered.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["from_name"].as_str().map(str::to_string))
            .unwrap_or_else(|| "goemotions".into()),
        (None, None) => "goemotions".into(),
    };
    let card = package::export_model_dir(&package::ExportRequest {
        checkpoint: &a.checkpoint,
        out: &a.out,
        variant,
        name: &name,
        version: &a.version,
        max_len: a.max_len,
        run: a.run.as_deref(),
    })?;
    println!(
        "wrote {} ({}, sha256 {})",
        a.out.display(),
        card.precision,
        card.model_sha256
    );
    Ok(())
}

/// The checkpoint a run starts from, and its name for the card: a Hugging Face directory as
/// given, or a model directory (given, or the registry's ACTIVE version) recovered from its
/// ONNX into RUN/base.
fn resolve_base(a: &FitArgs) -> Result<(PathBuf, String, bool)> {
    let dir = match (&a.base, &a.from_registry) {
        (Some(b), _) => b.clone(),
        (None, Some(reg)) => model_or_active(reg)?,
        (None, None) => bail!("give --base or --from-registry"),
    };
    if !dir.join(emostream::model::dir::CARD_FILE).is_file() {
        let name = a
            .base_name
            .clone()
            .unwrap_or_else(|| dir.display().to_string());
        return Ok((dir, name, false));
    }
    let out = a.run.join("base");
    let r = emostream::train::onnx::recover::recover(&dir, &out)?;
    tracing::info!(
        from = %dir.display(),
        dequantized = r.dequantized,
        "recovered {} {} into {}",
        r.from_name,
        r.from_version,
        out.display()
    );
    let name = a.base_name.clone().unwrap_or_else(|| {
        format!(
            "{} {} (recovered from its {} model.onnx, sha256 {})",
            r.from_name, r.from_version, r.precision, r.from_model_sha256
        )
    });
    Ok((out, name, true))
}

/// `train fit`: a new run from a pretrained base or the model in production.
fn fit(a: FitArgs, progress: bool) -> Result<()> {
    let data = a.data.clone().unwrap_or_else(goemotions_dir);
    let labels = LabelSet::from_file(&data.join("labels.txt"))?;
    let mut train = Split::read(&data.join("train.tsv"), labels.len())?;
    let dev = Split::read(&data.join("dev.tsv"), labels.len())?;
    if a.run.join("checkpoint/state.json").exists() {
        bail!(
            "{} already holds a run; use `train resume`",
            a.run.display()
        );
    }
    let (base, base_name, from_model) = resolve_base(&a)?;
    if from_model && a.prior_bias {
        bail!("--prior-bias would overwrite the classifier bias of the model it starts from");
    }
    let base_cfg = emostream::train::encoder::EncoderConfig::from_dir(&base, labels.len())?;
    let pooling = a.pooling.unwrap_or(base_cfg.pooling);
    let loss = match a.loss {
        LossKind::Bce => LossConfig::Bce,
        LossKind::Asl if a.pos_weight != PosWeight::None => {
            bail!(
                "--pos-weight weighs BCE's positive term; ASL's focusing takes its place (use one)"
            )
        }
        LossKind::Asl => LossConfig::Asymmetric {
            gamma_pos: a.asl_gamma_pos,
            gamma_neg: a.asl_gamma_neg,
            clip: a.asl_clip,
        },
    };
    if !(a.layer_decay > 0.0 && a.layer_decay <= 1.0) {
        bail!("--layer-decay must be in (0, 1] (got {})", a.layer_decay);
    }
    if !(0.0..0.5).contains(&a.asl_clip) || a.asl_gamma_pos < 0.0 || a.asl_gamma_neg < 0.0 {
        bail!("ASL needs 0 <= --asl-clip < 0.5 and non-negative focusing parameters");
    }
    let mix = match &a.feedback {
        Some(f) => {
            let out = a.run.join("train-mix.tsv");
            std::fs::create_dir_all(&a.run)?;
            let rec = emostream::train::mix::write_mix(
                &f.join("train.tsv"),
                &train,
                labels.len(),
                a.replay_ratio,
                a.seed,
                &out,
            )?;
            tracing::info!(
                own = rec.feedback_rows,
                replay = rec.replay_rows,
                "training on {}",
                out.display()
            );
            train = Split::read(&out, labels.len())?;
            Some(rec)
        }
        None => None,
    };
    let n = a
        .limit_train_examples
        .map_or(train.examples.len(), |l| l.min(train.examples.len()));
    let total = Trainer::total_steps(n, a.batch_size, a.epochs);
    let cfg = TrainConfig {
        base_model: base_name,
        train_path: std::fs::canonicalize(&train.path)?,
        dev_path: std::fs::canonicalize(&dev.path)?,
        train_sha256: train.sha256.clone(),
        dev_sha256: dev.sha256.clone(),
        epochs: a.epochs,
        batch_size: a.batch_size,
        max_len: a.max_len,
        seed: a.seed,
        freeze_embeddings: a.freeze_embeddings,
        pos_weight: pos_weights(a.pos_weight, &train, labels.len()),
        eval_every_steps: a.eval_every,
        checkpoint_every_steps: a.checkpoint_every.max(1),
        shards: a
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        optimizer: AdamWConfig {
            lr: a.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay,
            max_grad_norm: a.max_grad_norm,
            warmup_steps: (total as f64 * a.warmup_ratio).round() as u64,
            total_steps: total,
            layer_decay: a.layer_decay,
            num_layers: base_cfg.num_layers,
        },
        loss,
        limit_train_examples: a.limit_train_examples,
        pooling,
        prior_bias: a.prior_bias,
        mix,
    };
    let mut t = Trainer::create(&a.run, &base, cfg, labels, device(&a.device)?)?;
    tracing::info!(
        params = t.params.count(),
        steps = total,
        "starting fine-tuning in {}",
        a.run.display()
    );
    t.run(a.stop_at_step, progress)
}

/// `train calibrate`: Platt scaling fitted on dev, folded into model.onnx.
fn calibrate(
    model: &std::path::Path,
    data: Option<PathBuf>,
    version: Option<String>,
) -> Result<()> {
    let data = data.unwrap_or_else(goemotions_dir);
    let card = emostream::train::calibrate::calibrate(
        model,
        &data.join("dev.tsv"),
        &RuntimeOptions::default(),
        version.as_deref(),
    )?;
    let cal = card.calibration.as_ref().expect("calibrated");
    for (j, name) in card.labels.names().iter().enumerate() {
        println!(
            "{name:<15} logit x {:.3} {:+.3}",
            cal.scale[j], cal.shift[j]
        );
    }
    println!(
        "model.onnx now {} (was {}); next: train tune-thresholds, train evaluate --write",
        card.model_sha256, cal.uncalibrated_sha256
    );
    Ok(())
}

/// `train tune-thresholds`: per-label and global thresholds chosen on dev, into the card.
fn tune_thresholds(
    model: &std::path::Path,
    data: Option<PathBuf>,
    min_precision: f64,
    per_label_only: bool,
) -> Result<()> {
    if !(0.0..1.0).contains(&min_precision) {
        bail!("--min-precision {min_precision} must be in [0, 1)");
    }
    let data = data.unwrap_or_else(goemotions_dir);
    let rule = if per_label_only {
        evaluate::RuleChoice::Fixed(ThresholdRule::PER_LABEL)
    } else {
        evaluate::RuleChoice::CrossValidated { min_precision }
    };
    let card = evaluate::tune_thresholds(
        model,
        &data.join("dev.tsv"),
        &RuntimeOptions::default(),
        rule,
    )?;
    if let Some(sel) = &card.thresholds.selection {
        for cv in &sel.cross_validation {
            println!(
                "shrinkage {:<28} out-of-fold dev macro-F1 {:.4}",
                cv.shrinkage.to_string(),
                cv.macro_f1
            );
        }
        println!("chosen: {}", sel.rule.shrinkage);
    }
    let dev = &card.metrics["dev"];
    println!(
        "thresholds: default {:.2}, per label {:?}",
        card.thresholds.default,
        card.thresholds.per_label.as_deref().unwrap_or(&[])
    );
    println!(
        "dev macro-F1 {:.4} (per-label), {:.4} (global {:.2})",
        dev.metrics.macro_f1,
        card.metrics["dev_global_dev_best"].metrics.macro_f1,
        card.thresholds.default
    );
    Ok(())
}

/// `train evaluate`: a split through ONNX Runtime, with the card's and the reference thresholds.
fn evaluate_split(
    model: &std::path::Path,
    split: &str,
    data: Option<PathBuf>,
    write: bool,
) -> Result<()> {
    let data = data.unwrap_or_else(goemotions_dir);
    let path = match split {
        "test" | "dev" | "train" => data.join(format!("{split}.tsv")),
        p => PathBuf::from(p),
    };
    let res = evaluate::evaluate_test(model, &path, &RuntimeOptions::default(), write)?;
    if let Some(on) = res.values().find_map(|e| e.measured_on.as_ref()) {
        println!("measured on {on}");
        println!("ONNX Runtime: {}", on.onnxruntime);
    }
    for (k, e) in &res {
        println!(
            "{k:<22} thresholds {:<24} macro-F1 {:.4}  micro-F1 {:.4}  ({} examples)",
            e.thresholds, e.metrics.macro_f1, e.metrics.micro_f1, e.metrics.examples
        );
    }
    Ok(())
}

/// `train publish --config/--brokers`.
struct KafkaArgs {
    config: Option<PathBuf>,
    brokers: Option<String>,
}

/// `train publish`: into the registry, optionally activated and announced on the control topic.
fn publish_version(
    model: &std::path::Path,
    registry: &str,
    version: Option<String>,
    activate: bool,
    kafka: KafkaArgs,
    control_topic: Option<String>,
    force: bool,
) -> Result<()> {
    use emostream::model::registry::{default_cache_dir, Expect, Registry};
    let reg = Registry::open(registry, &default_cache_dir())?;
    // The gate first: nothing is copied for a candidate that is refused.
    let candidate = emostream::model::dir::ModelDir::load(model, true)?;
    let going_live = activate || control_topic.is_some();
    // What ACTIVE names now: the gate judges against it, and --activate writes only if it still
    // names it then.
    let judged_against = if going_live { reg.active()? } else { None };
    let serving = match &judged_against {
        Some(v) => Some(emostream::model::dir::ModelDir::load(&reg.resolve(v)?, false)?.card),
        None => None,
    };
    // The control message must be signable before anything is published or activated: a
    // missing key would otherwise publish and activate, then fail to announce.
    let announcement = match &control_topic {
        Some(topic) => {
            let mut settings = emostream::daemon::config::Settings::load(kafka.config.as_deref())?;
            if let Some(b) = &kafka.brokers {
                settings.set_brokers(b);
            }
            let control =
                emostream::daemon::kafka::control::ControlSettings::from_settings(&settings);
            control.key().context(
                "--control-topic: the announcement is signed with registry.control_key_file (give the daemons' --config)",
            )?;
            Some((control, topic.clone()))
        }
        None => None,
    };
    let why = emostream::train::gate::refusal(&candidate, serving.as_ref())?;
    if why.is_none() && !model.join(emostream::train::gate::GATE_FILE).exists() {
        eprintln!(
            "note: {} was not judged (no gate.json: `train report --before CURRENT` writes it)",
            model.display()
        );
    }
    emostream::train::gate::enforce(why, force)?;
    let (v, at) = reg.publish(model, version.as_deref())?;
    println!("published {} as {v} at {at}", model.display());
    if activate {
        reg.set_active(&v, Expect::Names(judged_against.as_deref()))?;
        println!("{} now names {v}", reg.pointer_location());
    }
    if let Some((control, topic)) = announcement {
        let rid = format!("publish-{v}-{}", std::process::id());
        let msg = emostream::daemon::kafka::control::activate_message(&v, &rid);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(emostream::daemon::kafka::control::announce(
                &control, &topic, &msg,
            ))?;
        println!("announced {v} on {topic} (request_id {rid})");
    }
    Ok(())
}

/// `train data import`: corrections from the feedback topic and files → a dataset directory.
fn import_data(
    out: &std::path::Path,
    feedback_topic: Option<String>,
    kafka: KafkaArgs,
    files: &[PathBuf],
    heldout_percent: u32,
) -> Result<()> {
    use emostream::train::feedback;
    anyhow::ensure!(
        heldout_percent <= 50,
        "--heldout-percent: at most 50 (got {heldout_percent})"
    );
    anyhow::ensure!(
        feedback_topic.is_some() || !files.is_empty(),
        "give --feedback-topic and/or --file"
    );
    let mut corrections = Vec::new();
    let mut sources = Vec::new();
    if let Some(topic) = &feedback_topic {
        let mut settings = emostream::daemon::config::Settings::load(kafka.config.as_deref())?;
        if let Some(b) = &kafka.brokers {
            settings.set_brokers(b);
        }
        let client = emostream::daemon::kafka::client::ClientSettings::from_settings(&settings);
        let records = emostream::daemon::kafka::topic_reader::read_all(
            &client,
            topic,
            std::time::Duration::from_secs(120),
        )?;
        let mut offsets: std::collections::BTreeMap<i32, (i64, i64, usize)> = Default::default();
        let mut unreadable = 0;
        for r in &records {
            let e = offsets
                .entry(r.partition)
                .or_insert((r.offset, r.offset, 0));
            e.1 = r.offset;
            e.2 += 1;
            // Partition-major order is not arrival order across partitions, but a comment's
            // records share its key and so its partition: per comment, offset order is.
            let seq = ((r.partition as u64) << 40) | r.offset as u64;
            match r
                .payload
                .as_deref()
                .map(|p| feedback::parse_feedback_record(p, seq))
            {
                Some(Ok(c)) => corrections.push(c),
                _ => unreadable += 1,
            }
        }
        let partitions: Vec<_> = offsets
            .iter()
            .map(|(p, (first, last, n))| serde_json::json!({"partition": p, "first_offset": first, "last_offset": last, "records": n}))
            .collect();
        sources.push(serde_json::json!({"kind": "kafka", "topic": topic, "brokers": settings_brokers(&kafka, &settings), "partitions": partitions, "unreadable": unreadable}));
    }
    for f in files {
        let seq = 1u64 << 62 | (corrections.len() as u64) << 20;
        let rows = feedback::read_file(f, seq)?;
        sources.push(serde_json::json!({"kind": "file", "path": f.display().to_string(), "sha256": emostream::model::eval::dataset::sha256_file(f)?, "rows": rows.len()}));
        corrections.extend(rows);
    }
    let labels = emostream::model::labels::LabelSet::goemotions();
    let (train, heldout, counts) = feedback::build(&corrections, &labels, heldout_percent);
    std::fs::create_dir_all(out)?;
    feedback::write_tsv(&out.join("train.tsv"), &train)?;
    feedback::write_tsv(&out.join("heldout.tsv"), &heldout)?;
    let provenance = serde_json::json!({
        "format_version": 1,
        "sources": sources,
        "counts": counts,
        "split": {"rule": "held out when the first 8 bytes of sha256(comment_id), mod 100, are below heldout_percent", "heldout_percent": heldout_percent},
        "merge": "latest correction per (comment, moderator); per comment, the labels at least half its moderators chose (else the latest one's)",
        "labels": labels.names(),
        "files": {
            "train.tsv": emostream::model::eval::dataset::sha256_file(&out.join("train.tsv"))?,
            "heldout.tsv": emostream::model::eval::dataset::sha256_file(&out.join("heldout.tsv"))?,
        },
    });
    std::fs::write(
        out.join("provenance.json"),
        serde_json::to_string_pretty(&provenance)? + "\n",
    )?;
    println!(
        "{}: {} comments ({} train, {} held out) from {} corrections ({} superseded, {} without text, {} with an unknown label)",
        out.display(), counts.comments, counts.train, counts.heldout, counts.corrections, counts.superseded, counts.without_text, counts.unknown_label
    );
    Ok(())
}

/// `path` itself when it is a model directory; a registry root's ACTIVE version otherwise.
fn model_or_active(path: &std::path::Path) -> Result<PathBuf> {
    if path.join(emostream::model::dir::CARD_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let neither = || {
        format!(
            "{} is neither a model directory nor a registry with an ACTIVE version",
            path.display()
        )
    };
    // Opening a registry creates it: only open what already is one.
    let root = path.to_string_lossy();
    let reg = emostream::model::registry::Registry::open_existing(
        &root,
        &emostream::model::registry::default_cache_dir(),
    )?
    .with_context(neither)?;
    let v = reg.active()?.with_context(neither)?;
    reg.resolve(&v)
}

fn settings_brokers(kafka: &KafkaArgs, s: &emostream::daemon::config::Settings) -> String {
    kafka
        .brokers
        .clone()
        .unwrap_or_else(|| s.brokers().to_string())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.cmd {
        Cmd::Fit(a) => fit(a, progress),
        Cmd::Recover { model, out } => {
            let r = emostream::train::onnx::recover::recover(&model, &out)?;
            println!(
                "wrote {}: {} {} ({} parameters; {} int8 matrices dequantised{})",
                out.display(),
                r.from_name,
                r.from_version,
                r.parameters,
                r.dequantized,
                if r.calibration_folded {
                    "; calibration folded into the classifier"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Cmd::Export(a) => export(a, false),
        Cmd::Quantize(a) => export(a, true),
        Cmd::Calibrate {
            model,
            data,
            version,
        } => calibrate(&model, data, version),
        Cmd::TuneThresholds {
            model,
            data,
            min_precision,
            per_label_only,
        } => tune_thresholds(&model, data, min_precision, per_label_only),
        Cmd::Evaluate {
            model,
            split,
            data,
            write,
        } => evaluate_split(&model, &split, data, write),
        Cmd::Data {
            cmd:
                DataCmd::Import {
                    out,
                    feedback_topic,
                    config,
                    brokers,
                    files,
                    heldout_percent,
                },
        } => import_data(
            &out,
            feedback_topic,
            KafkaArgs { config, brokers },
            &files,
            heldout_percent,
        ),
        Cmd::Publish {
            model,
            registry,
            version,
            activate,
            config,
            brokers,
            control_topic,
            force,
        } => publish_version(
            &model,
            &registry,
            version,
            activate,
            KafkaArgs { config, brokers },
            control_topic,
            force,
        ),
        Cmd::Report {
            model,
            run,
            compare,
            before,
            feedback,
        } => {
            let before = before.map(|b| model_or_active(&b)).transpose()?;
            let verdict = emostream::train::report::write_report(
                &model,
                run.as_deref(),
                compare.as_deref(),
                before.as_deref(),
                feedback.as_deref(),
            )?;
            if let Some(v) = &verdict {
                for c in &v.criteria {
                    println!(
                        "{} {}: {}",
                        if c.met { "met    " } else { "NOT MET" },
                        c.name,
                        c.detail
                    );
                }
                println!(
                    "{} gate: {} (wrote {}/gate.json)",
                    v.gate,
                    if v.passed { "passed" } else { "FAILED" },
                    model.display()
                );
            }
            println!("wrote {}/report.md", model.display());
            Ok(())
        }
        Cmd::Resume {
            run,
            stop_at_step,
            device: d,
        } => {
            let mut t = Trainer::resume(&run, device(&d)?)?;
            tracing::info!(
                step = t.state.step,
                epoch = t.state.epoch,
                "resuming {}",
                run.display()
            );
            t.run(stop_at_step, progress)
        }
    }
}
