//! Llama-architecture models: configuration, weights, the forward pass and the KV cache.

pub mod cache;
pub mod config;
pub mod llama;
pub mod loader;
pub mod matvec;
pub mod projection;
pub mod rope;
pub mod weights;

use std::path::PathBuf;
use std::str::FromStr;

use burn::tensor::{DType, Device};

pub use cache::KvCache;
pub use config::{CustomDims, LlamaConfig};
pub use llama::Llama;
pub use projection::ProjectionKernel;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use loader::Checkpoint;
use weights::RandomWeights;

/// What `--model` names: a local Hugging Face folder or `random:PRESET`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    Folder(PathBuf),
    Random { name: String, config: Box<LlamaConfig> },
}

pub const PRESETS: &str =
    "random:llama3.2-1b, random:llama3.2-3b, random:llama3.1-8b, random:custom,KEY=VALUE,...";

impl FromStr for ModelSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some(preset) = s.strip_prefix("random:") else {
            return Ok(Self::Folder(PathBuf::from(s)));
        };
        let config = match preset {
            "llama3.2-1b" => LlamaConfig::llama3_2_1b(),
            "llama3.2-3b" => LlamaConfig::llama3_2_3b(),
            "llama3.1-8b" => LlamaConfig::llama3_1_8b(),
            custom if custom == "custom" || custom.starts_with("custom,") => LlamaConfig::custom(
                &CustomDims::parse(custom.trim_start_matches("custom").trim_start_matches(','))?,
            ),
            _ => return Err(Error::UnknownPreset(s.into(), PRESETS.into())),
        };
        config.validate()?;
        Ok(Self::Random { name: preset.into(), config: Box::new(config) })
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Folder(path) => write!(f, "{}", path.display()),
            Self::Random { name, .. } => write!(f, "random:{name}"),
        }
    }
}

/// A model ready to run, with the tokenizer that goes with it.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub spec: ModelSpec,
}

impl LoadedModel {
    /// Loads `spec` onto `device`. Random weights are drawn from `seed`. Projections run on the
    /// host kernel wherever it applies (`ProjectionKernel::default_for`).
    pub fn load(
        spec: &ModelSpec,
        backend: Backend,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let kernel = ProjectionKernel::default_for(backend, dtype);
        Self::load_with_kernel(spec, backend, device, dtype, seed, kernel)
    }

    /// `load` with the projection kernel chosen by the caller (to measure one against the other).
    pub fn load_with_kernel(
        spec: &ModelSpec,
        backend: Backend,
        device: &Device,
        dtype: DType,
        seed: u64,
        kernel: ProjectionKernel,
    ) -> Result<Self> {
        kernel.check(backend, dtype)?;
        let (model, tokenizer) = match spec {
            ModelSpec::Folder(dir) => {
                loader::require_dir(dir)?;
                let config = LlamaConfig::from_file(&dir.join("config.json"))?;
                let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
                check_memory(&config, dtype, backend, &dir.display().to_string())?;
                let mut source = Checkpoint::open(dir, device, dtype)?;
                (Llama::build(config, &mut source, device, dtype, kernel)?, tokenizer)
            }
            ModelSpec::Random { name, config } => {
                check_memory(config, dtype, backend, &format!("random:{name}"))?;
                let tokenizer = Tokenizer::Bytes { bos: config.bos_token_id };
                let mut source = RandomWeights::new(device, dtype, seed);
                (Llama::build(LlamaConfig::clone(config), &mut source, device, dtype, kernel)?, tokenizer)
            }
        };
        Ok(Self { model, tokenizer, spec: spec.clone() })
    }

    /// EOS ids from config.json and the tokenizer together.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.model.config().eos_token_ids();
        ids.extend(self.tokenizer.eos_ids());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Refuses, before allocating, a model that cannot fit host memory on a CPU backend.
fn check_memory(config: &LlamaConfig, dtype: DType, backend: Backend, what: &str) -> Result<()> {
    if !backend.uses_host_memory() {
        return Ok(());
    }
    let Some(available) = crate::files::meminfo_bytes("MemAvailable") else {
        return Ok(());
    };
    let needed = config.num_parameters() as f64 * dtype.size() as f64;
    let gib = |bytes: f64| bytes / (1u64 << 30) as f64;
    if needed > available as f64 {
        return Err(Error::InsufficientMemory {
            what: format!(
                "{what} ({:.2}B parameters in {})",
                config.num_parameters() as f64 / 1e9,
                crate::backend::dtype_name(dtype)
            ),
            needed_gib: gib(needed),
            available_gib: gib(available as f64),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_presets_folders_and_reject_unknown_presets() {
        assert!(matches!("random:llama3.1-8b".parse::<ModelSpec>().unwrap(), ModelSpec::Random { .. }));
        assert_eq!("models/x".parse::<ModelSpec>().unwrap(), ModelSpec::Folder("models/x".into()));
        let custom = "random:custom,hidden=64,layers=1".parse::<ModelSpec>().unwrap();
        let ModelSpec::Random { config, .. } = custom else { panic!("not random") };
        assert_eq!((config.hidden_size, config.num_hidden_layers), (64, 1));
        let err = "random:gpt5".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(err.contains("random:gpt5") && err.contains("llama3.2-1b"), "{err}");
    }

    #[test]
    fn eight_b_in_f32_is_refused_on_a_small_host_before_allocating() {
        let spec: ModelSpec = "random:llama3.1-8b".parse().unwrap();
        let ModelSpec::Random { config, .. } = spec else { unreachable!() };
        // 8.03B × 4 bytes = 29.9 GiB: more than this 24 GiB machine, so the check must fire
        // (on a larger host it passes, which is right too).
        let result = check_memory(&config, DType::F32, Backend::Ndarray, "random:llama3.1-8b");
        match crate::files::meminfo_bytes("MemAvailable") {
            Some(avail) if (avail as f64) < 29.9 * (1u64 << 30) as f64 => {
                let err = result.unwrap_err().to_string();
                assert!(err.contains("GiB") && err.contains("8.03B"), "{err}");
            }
            _ => assert!(result.is_ok()),
        }
    }
}
