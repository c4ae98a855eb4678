//! `manifest.json`: everything needed to know what a result folder measured, and where.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub experiment: String,
    /// The config file verbatim, and its SHA-256.
    pub config: String,
    pub config_sha256: String,
    pub git_commit: String,
    pub crate_version: String,
    pub shard: Option<String>,
    pub machine: Machine,
    /// Per backend: the device burn reports (adapter for wgpu) and who multiplied the projections.
    pub devices: Vec<String>,
    pub target_dtype: String,
    pub draft_dtype: String,
    pub started: String,
    pub finished: Option<String>,
    #[serde(default)]
    pub resumed: Vec<String>,
    /// Result folders merged into this one.
    #[serde(default)]
    pub merged_from: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
}

impl Machine {
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let memory_gib = crate::files::meminfo_bytes("MemTotal").unwrap_or(0) as f64 / (1u64 << 30) as f64;
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

/// `git rev-parse HEAD`, marked `-dirty` when the tree has changes; "unknown" outside git.
pub fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(commit) => match run(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{commit}-dirty"),
            _ => commit,
        },
        None => "unknown".into(),
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
