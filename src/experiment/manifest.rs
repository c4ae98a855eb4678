//! `manifest.json`: everything needed to know what a result folder measured, and where.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::load::ModelIdentity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub experiment: String,
    /// The config file verbatim, and its SHA-256.
    pub config: String,
    pub config_sha256: String,
    /// What was loaded: resolved paths and fingerprints. `None` in folders made before
    /// specbench recorded it; such folders cannot be resumed, merged or checked.
    #[serde(default)]
    pub models: Option<RunModels>,
    /// The prompts run, in order: what `merge` expects every cell to hold.
    #[serde(default)]
    pub prompt_ids: Vec<String>,
    /// SHA-256 over each prompt's id, category and text, in order: the same ids with other
    /// texts are other prompts. Absent in folders made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts_sha256: Option<String>,
    /// The token ids generation stopped on (the target's and the config's).
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// The commit the binary was built from, `-dirty` when tracked files had changes.
    pub git_commit: String,
    pub crate_version: String,
    /// How the binary was built (commit, dirty tree, features, rustc, profile).
    #[serde(default)]
    pub build: Option<Build>,
    pub shard: Option<String>,
    pub machine: Machine,
    /// Per backend: the device burn reports (adapter for wgpu) and who multiplied the projections.
    pub devices: Vec<String>,
    pub target_dtype: String,
    pub started: String,
    pub finished: Option<String>,
    /// The most memory the process that finished the run held resident at once, in MiB (the
    /// loaded models, their caches and everything else; where the OS reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_resident_mib: Option<f64>,
    #[serde(default)]
    pub resumed: Vec<String>,
    /// Result folders merged into this one.
    #[serde(default)]
    pub merged_from: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunModels {
    pub target: ModelIdentity,
    /// Each drafter with a checkpoint of its own, by name (the others draft from the target).
    #[serde(default)]
    pub drafters: BTreeMap<String, ModelIdentity>,
}

impl RunModels {
    /// What differs between two runs' models, in words; `None` when they are the same. Models
    /// are compared by fingerprint: the same files under another path (another clone, another
    /// `$SPECBENCH_MODELS`) are the same model.
    pub fn difference(&self, other: &RunModels) -> Option<String> {
        let one = |role: &str, a: &ModelIdentity, b: &ModelIdentity| {
            let short = |f: &str| f.chars().take(12).collect::<String>();
            let content_differs = matches!((&a.content, &b.content), (Some(x), Some(y)) if x != y);
            (a.fingerprint != b.fingerprint || content_differs).then(|| {
                let place = if a.spec == b.spec {
                    format!("{} (changed on disk)", a.spec)
                } else {
                    format!("{} vs {}", a.spec, b.spec)
                };
                if a.fingerprint == b.fingerprint {
                    return format!("{role} {place}: same headers, other weights");
                }
                format!("{role} {place}, fingerprint {} vs {}", short(&a.fingerprint), short(&b.fingerprint))
            })
        };
        let mut parts: Vec<String> = one("target", &self.target, &other.target).into_iter().collect();
        let names: std::collections::BTreeSet<&String> =
            self.drafters.keys().chain(other.drafters.keys()).collect();
        for name in names {
            let role = format!("drafter `{name}`");
            match (self.drafters.get(name), other.drafters.get(name)) {
                (Some(a), Some(b)) => parts.extend(one(&role, a, b)),
                _ => parts.push(format!("{role} is in one run and not the other (or predates drafters)")),
            }
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The process's peak resident memory so far, in MiB: `getrusage`'s maximum resident set (KiB on
/// Linux, bytes on macOS); `None` where there is no such call.
pub fn peak_resident_mib() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `usage` is a valid place for one `rusage`, which getrusage fills.
        let usage = unsafe {
            if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
                return None;
            }
            usage.assume_init()
        };
        let unit = if cfg!(target_os = "macos") { 1.0 } else { 1024.0 };
        Some(usage.ru_maxrss as f64 * unit / (1024.0 * 1024.0))
    }
    #[cfg(not(unix))]
    None
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
}

impl Machine {
    /// From `sysinfo`, which reads /proc on Linux and the system's own APIs elsewhere.
    pub fn this() -> Self {
        let system = sysinfo::System::new_with_specifics(
            sysinfo::RefreshKind::nothing()
                .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram())
                .with_cpu(sysinfo::CpuRefreshKind::nothing()),
        );
        let cpu = system
            .cpus()
            .first()
            .map(|c| c.brand().trim().to_string())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let memory_gib = system.total_memory() as f64 / (1u64 << 30) as f64;
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (memory_gib * 10.0).round() / 10.0,
            os: std::env::consts::OS.into(),
        }
    }
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the running binary was built from, recorded by build.rs at build time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub commit: String,
    /// "true", "false", or "unknown" outside git.
    pub dirty: String,
    pub features: Vec<String>,
    pub rustc: String,
    pub profile: String,
}

impl Build {
    pub fn this() -> Self {
        Self {
            commit: env!("SPECBENCH_GIT_COMMIT").into(),
            dirty: env!("SPECBENCH_GIT_DIRTY").into(),
            features: env!("SPECBENCH_FEATURES")
                .split(',')
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect(),
            rustc: env!("SPECBENCH_RUSTC").into(),
            profile: env!("SPECBENCH_PROFILE").into(),
        }
    }

    /// The commit, marked `-dirty` when the tree had changes.
    pub fn commit_label(&self) -> String {
        if self.dirty == "true" { format!("{}-dirty", self.commit) } else { self.commit.clone() }
    }
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        crate::files::read_json(&dir.join("manifest.json"))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::files::write_json(&dir.join("manifest.json"), self)
    }
}
