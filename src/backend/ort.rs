//! The model backend: an ONNX Runtime session (loaded dynamically from the shared library) that
//! turns a padded batch into logits. It knows nothing of Kafka or batching policy.

use crate::model::tokenize::PaddedBatch;
use anyhow::{anyhow, bail, Context, Result};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::Tensor;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where inference runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Provider {
    Cpu,
    Cuda { device: i32 },
    Tensorrt { device: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptLevel {
    Disable,
    Basic,
    Extended,
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeOptions {
    /// Path of libonnxruntime.so; empty: `ORT_DYLIB_PATH`, then the project's `.cache/ort`.
    #[serde(default)]
    pub library: Option<PathBuf>,
    pub intra_threads: usize,
    pub inter_threads: usize,
    /// Let idle intra-op threads spin (ONNX Runtime's default). Spinning wins on dedicated
    /// cores and loses when other busy threads share them.
    #[serde(default = "spin_default")]
    pub intra_spinning: bool,
    pub optimization: OptLevel,
    pub provider: Provider,
    /// If a GPU provider cannot register, run on CPU instead of failing.
    pub fallback_to_cpu: bool,
    /// Save ONNX Runtime's optimised graph here (to inspect fusions).
    #[serde(default)]
    pub optimized_model_path: Option<PathBuf>,
}

fn spin_default() -> bool {
    true
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            library: None,
            intra_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            inter_threads: 1,
            intra_spinning: true,
            optimization: OptLevel::All,
            provider: Provider::Cpu,
            fallback_to_cpu: false,
            optimized_model_path: None,
        }
    }
}

/// The ONNX Runtime library this process will load.
fn library_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/ort/onnxruntime-1.31.1/libonnxruntime.so");
    if local.exists() {
        return Ok(local);
    }
    bail!("ONNX Runtime library not found: set ORT_DYLIB_PATH (or runtime.library), or run scripts/setup-ort.sh")
}

static ENV: OnceLock<std::result::Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// Loads the ONNX Runtime library once per process.
pub(crate) fn environment(library: Option<&Path>) -> Result<ort::environment::Environment> {
    let r = ENV.get_or_init(|| {
        let path = match library_path(library) {
            Ok(p) => p,
            Err(e) => return Err(format!("{e:#}")),
        };
        let built = ort::init_from(&path)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", path.display()))
            .and_then(|b| {
                b.with_name("emostream")
                    .build()
                    .map_err(|e| format!("creating ONNX Runtime environment: {e}"))
            });
        built.map(|env| (path, env))
    });
    match r {
        Ok((_, env)) => Ok(env.clone()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// Registers the GPU execution provider `opts` asks for; CPU needs nothing. With
/// `fallback_to_cpu`, a provider that cannot register leaves the session on CPU.
/// Returns the builder and the provider the session will run on.
fn register_provider(
    b: SessionBuilder,
    opts: &RuntimeOptions,
) -> Result<(SessionBuilder, &'static str)> {
    let ep = match &opts.provider {
        Provider::Cpu => return Ok((b, "cpu")),
        Provider::Cuda { device } => ort::ep::CUDA::default()
            .with_device_id(*device)
            .build()
            .error_on_failure(),
        Provider::Tensorrt { device } => ort::ep::TensorRT::default()
            .with_device_id(*device)
            .build()
            .error_on_failure(),
    };
    match b.with_execution_providers([ep]) {
        Ok(b) => {
            tracing::info!(provider = ?opts.provider, "execution provider registered");
            let name = match opts.provider {
                Provider::Cuda { .. } => "cuda",
                Provider::Tensorrt { .. } => "tensorrt",
                Provider::Cpu => "cpu",
            };
            Ok((b, name))
        }
        Err(err) if opts.fallback_to_cpu => {
            tracing::warn!(error = %err, "GPU execution provider unavailable; falling back to CPU");
            Ok((err.recover(), "cpu"))
        }
        Err(err) => bail!(
            "execution provider {:?} could not register: {err} (set runtime.fallback_to_cpu = true to run on CPU)",
            opts.provider
        ),
    }
}

/// One loaded ONNX model that maps `[batch, seq]` token ids to `[batch, labels]` logits.
pub struct OrtSession {
    session: Session,
    /// The execution provider it runs on: cpu, cuda or tensorrt.
    pub(crate) provider: &'static str,
    token_types: bool,
    num_labels: usize,
}

impl OrtSession {
    pub(crate) fn load(path: &Path, opts: &RuntimeOptions) -> Result<OrtSession> {
        let env = environment(opts.library.as_deref())?;
        let e = |err: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("{err}");
        let mut b = Session::builder(&env)
            .map_err(|err| anyhow!("{err}"))?
            .with_intra_threads(opts.intra_threads.max(1))
            .map_err(e)?
            .with_inter_threads(opts.inter_threads.max(1))
            .map_err(e)?
            .with_intra_op_spinning(opts.intra_spinning)
            .map_err(e)?
            .with_optimization_level(match opts.optimization {
                OptLevel::Disable => GraphOptimizationLevel::Disable,
                OptLevel::Basic => GraphOptimizationLevel::Level1,
                OptLevel::Extended => GraphOptimizationLevel::Level2,
                OptLevel::All => GraphOptimizationLevel::All,
            })
            .map_err(e)?;
        if let Some(p) = &opts.optimized_model_path {
            b = b.with_optimized_model_path(p).map_err(e)?;
        }
        let (mut b, provider) = register_provider(b, opts)?;
        let session = b
            .commit_from_file(path)
            .map_err(|err| anyhow!("{err}"))
            .with_context(|| format!("loading ONNX model {}", path.display()))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for needed in ["input_ids", "attention_mask"] {
            if !names.contains(&needed) {
                bail!(
                    "{} has no input {needed:?} (inputs: {names:?})",
                    path.display()
                );
            }
        }
        if let Some(extra) = names
            .iter()
            .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(n))
        {
            bail!("{} has an unexpected input {extra:?}", path.display());
        }
        let token_types = names.contains(&"token_type_ids");
        let out = session.outputs().first().context("model has no outputs")?;
        let num_labels = match out.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.last().copied().unwrap_or(-1),
            other => bail!(
                "model output {:?} is {other}, expected a float tensor",
                out.name()
            ),
        };
        if num_labels <= 0 {
            bail!("model output {:?} has no fixed label dimension", out.name());
        }
        Ok(OrtSession {
            session,
            provider,
            token_types,
            num_labels: num_labels as usize,
        })
    }

    pub(crate) fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Logits, row-major `[batch, num_labels]`.
    pub fn logits(&mut self, batch: &PaddedBatch) -> Result<Vec<f32>> {
        let shape = [batch.batch as i64, batch.seq as i64];
        let ids: Vec<i64> = batch.input_ids.iter().map(|&x| x as i64).collect();
        let mask: Vec<i64> = batch.attention_mask.iter().map(|&x| x as i64).collect();
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, ids))?,
            "attention_mask" => Tensor::from_array((shape, mask))?,
        ];
        if self.token_types {
            inputs.push((
                "token_type_ids".into(),
                Tensor::from_array((shape, vec![0i64; batch.input_ids.len()]))?.into(),
            ));
        }
        let outputs = self
            .session
            .run(inputs)
            .context("ONNX Runtime inference failed")?;
        let (out_shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .context("reading logits")?;
        if out_shape.len() != 2
            || out_shape[0] as usize != batch.batch
            || out_shape[1] as usize != self.num_labels
        {
            bail!(
                "model returned logits of shape {out_shape:?}, expected [{}, {}]",
                batch.batch,
                self.num_labels
            );
        }
        Ok(data.to_vec())
    }
}
