//! Which x86-64 instruction sets this CPU offers ONNX Runtime's CPU kernels (MLAS), and so which
//! kernel family computes a model's scores here. Different families (AVX2, AVX-512, VNNI, AMX)
//! add in different orders, so scores differ in the last bits between machines: every measured
//! figure (a card's metrics, a benchmark) names the family it was measured on.

use serde::{Deserialize, Serialize};

/// MLAS's kernel families for int8 and fp32 matrix products, best first. MLAS takes the best
/// one the CPU supports (onnxruntime/core/mlas/lib/platform.cpp: AMX > AVX-512 VNNI > AVX-512
/// core > AVX-VNNI > AVX2 for u8s8 GEMM; AVX-512F > FMA3/AVX2 for SGEMM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum KernelFamily {
    Amx,
    Avx512Vnni,
    Avx512,
    AvxVnni,
    Avx2,
    /// Older than AVX2 (SSE4 paths), or not x86-64.
    Baseline,
}

impl KernelFamily {
    pub(crate) fn name(self) -> &'static str {
        match self {
            KernelFamily::Amx => "amx",
            KernelFamily::Avx512Vnni => "avx512-vnni",
            KernelFamily::Avx512 => "avx512",
            KernelFamily::AvxVnni => "avx-vnni",
            KernelFamily::Avx2 => "avx2",
            KernelFamily::Baseline => "baseline",
        }
    }
}

/// Where a figure was measured: the CPU, the kernel family ONNX Runtime uses on it, and the
/// ONNX Runtime build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredOn {
    /// `model name` of /proc/cpuinfo (what `lscpu` prints).
    pub(crate) cpu: String,
    /// int8 kernel family (see [`KernelFamily`]).
    pub(crate) isa: KernelFamily,
    /// The CPU flags that decide the family, as /proc/cpuinfo spells them.
    pub(crate) flags: Vec<String>,
    /// ONNX Runtime's build string (version and commit), when it was loaded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub onnxruntime: String,
}

/// The flags MLAS looks at, in /proc/cpuinfo spelling.
const DECIDING_FLAGS: [&str; 8] = [
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "amx_tile",
    "amx_int8",
];

/// The family MLAS picks for a CPU with these /proc/cpuinfo flags.
fn family(flags: &[&str]) -> KernelFamily {
    let has = |f: &str| flags.contains(&f);
    if has("amx_tile") && has("amx_int8") {
        KernelFamily::Amx
    } else if has("avx512_vnni") && has("avx512bw") {
        KernelFamily::Avx512Vnni
    } else if has("avx512f") && has("avx512bw") {
        KernelFamily::Avx512
    } else if has("avx_vnni") && has("avx2") {
        KernelFamily::AvxVnni
    } else if has("avx2") && has("fma") {
        KernelFamily::Avx2
    } else {
        KernelFamily::Baseline
    }
}

/// Reads this machine's CPU (Linux /proc/cpuinfo; "unknown" elsewhere).
pub fn this_machine(onnxruntime: &str) -> MeasuredOn {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let all = field("flags").unwrap_or_default();
    let all: Vec<&str> = all.split_whitespace().collect();
    let flags: Vec<&str> = DECIDING_FLAGS
        .iter()
        .copied()
        .filter(|f| all.contains(f))
        .collect();
    MeasuredOn {
        cpu: field("model name").unwrap_or_else(|| "unknown".into()),
        isa: family(&flags),
        flags: flags.iter().map(|f| f.to_string()).collect(),
        onnxruntime: onnxruntime
            .trim_start_matches("ORT Build Info:")
            .trim()
            .to_string(),
    }
}

impl std::fmt::Display for MeasuredOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (ONNX Runtime kernels: {}; flags {})",
            self.cpu,
            self.isa.name(),
            self.flags.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_follows_mlas_preference_order() {
        assert_eq!(family(&["avx2", "fma"]), KernelFamily::Avx2);
        assert_eq!(family(&["avx2", "fma", "avx_vnni"]), KernelFamily::AvxVnni);
        assert_eq!(
            family(&["avx2", "fma", "avx512f", "avx512bw"]),
            KernelFamily::Avx512
        );
        assert_eq!(
            family(&["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]),
            KernelFamily::Avx512Vnni
        );
        assert_eq!(
            family(&["avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"]),
            KernelFamily::Amx
        );
        assert_eq!(family(&["sse4_2"]), KernelFamily::Baseline);
    }
}
