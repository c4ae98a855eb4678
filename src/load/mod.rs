//! Loading models: what `--model` names (a Hugging Face folder, a GGUF file, a random preset),
//! each checkpoint format read into the `WeightSource` the model builds from (`folder`:
//! config.json, safetensors, tokenizer.json; `gguf_llama`: a GGUF file's Llama metadata and
//! tensors; `gguf_tokenizer`: its tokenizer and chat template), the memory check, and the
//! fingerprints that keep result folders from mixing models.

pub mod eagle3;
pub mod folder;
pub mod gguf_llama;
pub mod gguf_tokenizer;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::backend::{ExecutorKind, Runtime};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::model::Llama;
use crate::model::config::{self, CustomDims, LlamaConfig};
use crate::model::weights::RandomWeights;
use crate::tokenizer::Tokenizer;
use folder::Checkpoint;
use gguf_llama::GgufCheckpoint;

/// What `--model` names: a local Hugging Face folder, a GGUF file or `random:PRESET`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    Folder(PathBuf),
    Gguf(PathBuf),
    Random { name: String, config: Box<LlamaConfig> },
}

/// Whether `path` names a GGUF file (by its extension, as llama.cpp's tools do).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

pub const PRESETS: &str =
    "random:llama3.2-1b, random:llama3.2-3b, random:llama3.1-8b, random:custom,KEY=VALUE,...";

impl FromStr for ModelSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some(preset) = s.strip_prefix("random:") else {
            let path = PathBuf::from(s);
            return Ok(if is_gguf_path(&path) { Self::Gguf(path) } else { Self::Folder(path) });
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
            Self::Folder(path) | Self::Gguf(path) => write!(f, "{}", path.display()),
            Self::Random { name, .. } => write!(f, "random:{name}"),
        }
    }
}

/// The file's tokenizer; a file that says it has none (`tokenizer.ggml.model` = `none`, as
/// llama.cpp's vocabulary-less files of random weights for timing) reads text as bytes, as the
/// random presets do.
fn tokenizer_of_gguf(file: &GgufFile, path: &Path) -> Result<Tokenizer> {
    if gguf_tokenizer::has_no_vocabulary(file) {
        let bos = gguf_llama::config_from(file)?.bos_token_id;
        return Ok(Tokenizer::Bytes { bos });
    }
    Ok(Tokenizer::HuggingFace {
        inner: Box::new(gguf_tokenizer::tokenizer_from(file)?),
        path: path.to_path_buf(),
        chat: gguf_tokenizer::chat_template(file),
    })
}

/// What a result folder records of a model: where it came from and a fingerprint of what was
/// there, so that resume, merge and check never join rows of two different models.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelIdentity {
    /// The resolved path (environment variables expanded), or `random:PRESET`.
    pub spec: String,
    /// SHA-256 over config.json, tokenizer.json and each weight file's name, size and
    /// safetensors header (tensor names, dtypes, shapes, offsets); for a GGUF file, over its size
    /// and everything before the tensor data (metadata, tokenizer, tensor infos); for presets,
    /// over the config.
    pub fingerprint: String,
    /// SHA-256 over the weights' bytes (every weight file of a folder, a GGUF file whole), so
    /// that weights rewritten under the same headers are another model. Absent in folders made
    /// before it was recorded, which are compared by `fingerprint` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl ModelSpec {
    /// The tokenizer alone (and its chat template), without the weights.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            Self::Folder(dir) => Tokenizer::from_file(&dir.join("tokenizer.json")),
            Self::Gguf(path) => tokenizer_of_gguf(&GgufFile::open(path)?, path),
            Self::Random { config, .. } => Ok(Tokenizer::Bytes { bos: config.bos_token_id }),
        }
    }

    /// Cheap even for large checkpoints: the weights' headers and sizes, not their bytes.
    pub fn identity(&self) -> Result<ModelIdentity> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        match self {
            Self::Folder(dir) => {
                folder::require_dir(dir)?;
                for name in ["config.json", "tokenizer.json"] {
                    let path = dir.join(name);
                    // A drafter's head (EAGLE-3) has no tokenizer of its own; a model folder
                    // without one fails to load anyway.
                    if name == "tokenizer.json" && !path.exists() {
                        continue;
                    }
                    hash.update(name.as_bytes());
                    hash.update(std::fs::read(&path).map_err(crate::files::io_error("read", &path))?);
                }
                for (name, size, header) in folder::weight_headers(dir)? {
                    hash.update(name.as_bytes());
                    hash.update(size.to_le_bytes());
                    hash.update(header);
                }
            }
            Self::Gguf(path) => {
                let file = GgufFile::open(path)?;
                hash.update(file.size().to_le_bytes());
                hash.update(file.header_bytes());
            }
            Self::Random { name, config } => {
                hash.update(name.as_bytes());
                hash.update(serde_json::to_vec(config).expect("configs serialize"));
            }
        }
        let fingerprint = hex(&hash.finalize());
        let content = match self {
            Self::Folder(dir) => {
                let mut hash = Sha256::new();
                for (name, _, _) in folder::weight_headers(dir)? {
                    hash.update(name.as_bytes());
                    hash.update(crate::files::content_sha256(&dir.join(&name))?.as_bytes());
                }
                Some(hex(&hash.finalize()))
            }
            Self::Gguf(path) => Some(crate::files::content_sha256(path)?),
            Self::Random { .. } => None,
        };
        Ok(ModelIdentity { spec: self.to_string(), fingerprint, content })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A model ready to run, with the tokenizer and stop tokens that go with it.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub spec: ModelSpec,
    /// Generation stops after any of these: the model's own `eos_token_id`s, as transformers
    /// takes them (generation_config.json first, else config.json).
    stop_ids: Vec<u32>,
}

impl LoadedModel {
    /// Loads `spec` on `runtime` (its device, dtype and projection kernel). Random weights are
    /// drawn from `seed`.
    pub fn load(spec: &ModelSpec, runtime: &Runtime, seed: u64) -> Result<Self> {
        let _allocations = LoadingAllocations::begin();
        let (model, tokenizer, stop_ids) = match spec {
            ModelSpec::Folder(dir) => {
                folder::require_dir(dir)?;
                let config = LlamaConfig::from_file(&dir.join("config.json"))?;
                let tokenizer = spec.tokenizer()?;
                let stop_ids = match config::generation_eos_ids(&dir.join("generation_config.json"))? {
                    Some(ids) => ids,
                    None => config.eos_token_ids(),
                };
                let held = (runtime.weight_bytes_per_parameter(), runtime.weight_name());
                check_memory(&config, runtime, held, &dir.display().to_string())?;
                let mut source = Checkpoint::open(dir, runtime.device(), runtime.dtype())?;
                (Llama::build(config, &mut source, runtime)?, tokenizer, stop_ids)
            }
            ModelSpec::Gguf(path) => {
                let mut source = GgufCheckpoint::open(path, runtime.device(), runtime.dtype())?;
                let config = gguf_llama::config_from(source.file())?;
                let tokenizer = tokenizer_of_gguf(source.file(), path)?;
                let stop_ids = config.eos_token_ids();
                let held = gguf_bytes_per_parameter(source.file().size(), &config, runtime);
                check_memory(&config, runtime, held, &path.display().to_string())?;
                (Llama::build(config, &mut source, runtime)?, tokenizer, stop_ids)
            }
            ModelSpec::Random { name, config } => {
                let held = (runtime.weight_bytes_per_parameter(), runtime.weight_name());
                check_memory(config, runtime, held, &format!("random:{name}"))?;
                let tokenizer = spec.tokenizer()?;
                let mut source = RandomWeights::new(runtime.device(), runtime.dtype(), seed);
                let stop_ids = config.eos_token_ids();
                (Llama::build(LlamaConfig::clone(config), &mut source, runtime)?, tokenizer, stop_ids)
            }
        };
        Ok(Self { model, tokenizer, spec: spec.clone(), stop_ids })
    }

    pub fn runtime(&self) -> &Runtime {
        self.model.runtime()
    }

    /// Refuses, before any work, a generation that would reach past the model's context:
    /// `what` says what needs the `positions` (prompt, new tokens, drafts), `role` which model.
    pub fn check_context(&self, role: &str, positions: usize, what: &str) -> Result<()> {
        let context = self.model.config().max_position_embeddings;
        if positions <= context {
            return Ok(());
        }
        Err(Error::InvalidConfig(format!(
            "{what} = {positions} positions, past the {role} model's context of {context} ({}); \
             shorten the prompt or generate fewer tokens",
            self.spec
        )))
    }

    /// The model's stop tokens and `extra` ones, sorted, each once.
    pub fn stop_ids(&self, extra: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = self.stop_ids.iter().chain(extra).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// While a model loads, every allocation above 128 KiB is a mapping of its own, given back to
/// the system when freed: glibc otherwise raises that threshold to the largest block freed so
/// far, and the load-time copies freed between long-lived weights stayed resident as holes in
/// the heap (SmolLM2 f32 peaked at 1.7× its file). Afterwards the thresholds are those glibc's
/// own rule settles at (mappings from 32 MiB, trimming from 64 MiB), so that a forward's large
/// temporaries reuse the heap instead of faulting in fresh pages every step.
struct LoadingAllocations;

impl LoadingAllocations {
    fn begin() -> Self {
        Self::thresholds(128 << 10, 128 << 10);
        Self
    }

    fn thresholds(map_from: i32, trim_from: i32) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: sets allocator parameters (under the allocator's own lock); no memory is touched.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, map_from);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim_from);
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let _ = (map_from, trim_from);
    }
}

impl Drop for LoadingAllocations {
    fn drop(&mut self) {
        Self::thresholds(32 << 20, 64 << 20);
    }
}

/// Refuses, before allocating, a model that cannot fit host memory on a CPU backend.
/// `held` is what each parameter will take in memory, and its name for the message.
fn check_memory(config: &LlamaConfig, runtime: &Runtime, held: (f64, &str), what: &str) -> Result<()> {
    if !runtime.backend().uses_host_memory() {
        return Ok(());
    }
    match crate::files::available_memory_bytes() {
        Some(available) => fits_in_memory(config, held.0, held.1, available, what),
        None => Ok(()),
    }
}

/// What a GGUF file's parameters take once loaded: on the host kernel its tensors keep their
/// own types (quantized blocks stay blocks), so about the file's size; quantized on load, or
/// widened for the backend's matmul, what the runtime says.
fn gguf_bytes_per_parameter(file_size: u64, config: &LlamaConfig, runtime: &Runtime) -> (f64, &'static str) {
    if runtime.executor() == ExecutorKind::Host && runtime.quantize().is_none() {
        (file_size as f64 / config.num_parameters(), "the file's own types")
    } else {
        (runtime.weight_bytes_per_parameter(), runtime.weight_name())
    }
}

fn fits_in_memory(
    config: &LlamaConfig,
    bytes_per_parameter: f64,
    weights: &str,
    available: u64,
    what: &str,
) -> Result<()> {
    let needed = config.num_parameters() * bytes_per_parameter;
    let gib = |bytes: f64| bytes / (1u64 << 30) as f64;
    if needed > available as f64 {
        return Err(Error::InsufficientMemory {
            what: format!("{what} ({:.2}B parameters in {})", config.num_parameters() / 1e9, weights),
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
        assert_eq!("m/x.Q4_0.gguf".parse::<ModelSpec>().unwrap(), ModelSpec::Gguf("m/x.Q4_0.gguf".into()));
        let custom = "random:custom,hidden=64,layers=1".parse::<ModelSpec>().unwrap();
        let ModelSpec::Random { config, .. } = custom else { panic!("not random") };
        assert_eq!((config.hidden_size, config.num_hidden_layers), (64, 1));
        let err = "random:gpt5".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(err.contains("random:gpt5") && err.contains("llama3.2-1b"), "{err}");
    }

    #[test]
    fn eight_b_in_f32_is_refused_by_a_24_gib_host_and_fits_a_32_gib_one() {
        let spec: ModelSpec = "random:llama3.1-8b".parse().unwrap();
        let ModelSpec::Random { config, .. } = spec else { unreachable!() };
        // 8.03B × 4 bytes = 29.9 GiB.
        let gib = 1u64 << 30;
        let err =
            fits_in_memory(&config, 4.0, "f32", 24 * gib, "random:llama3.1-8b").unwrap_err().to_string();
        assert!(err.contains("29.9 GiB") && err.contains("8.03B"), "{err}");
        fits_in_memory(&config, 4.0, "f32", 32 * gib, "random:llama3.1-8b").unwrap();
        fits_in_memory(&config, 2.0, "bf16", 24 * gib, "random:llama3.1-8b").unwrap();
        fits_in_memory(&config, 0.5625, "q4_0", 24 * gib, "random:llama3.1-8b").unwrap();
    }

    #[test]
    fn a_quantized_gguf_is_sized_by_its_file_not_by_the_run_dtype() {
        let spec: ModelSpec = "random:llama3.1-8b".parse().unwrap();
        let ModelSpec::Random { config, .. } = spec else { unreachable!() };
        let gib = 1u64 << 30;
        let runtime = Runtime::new(crate::backend::Backend::Flex, "f32").unwrap();
        if runtime.executor() == ExecutorKind::Host {
            // An 8B Q4_K_M file of 4.9 GB held as it is: it fits 24 GiB, where 8B f32 would not.
            let (per_parameter, name) = gguf_bytes_per_parameter(4_900_000_000, &config, &runtime);
            assert_eq!(name, "the file's own types");
            fits_in_memory(&config, per_parameter, name, 24 * gib, "x.gguf").unwrap();
        }
        let backend_matmul = runtime.with_executor(ExecutorKind::Tensor).unwrap();
        let (per_parameter, _) = gguf_bytes_per_parameter(4_900_000_000, &config, &backend_matmul);
        assert_eq!(per_parameter, 4.0, "dequantized for Burn's matmul: f32");
    }

    #[test]
    fn absurd_custom_sizes_are_refused_not_allocated() {
        let err = "random:custom,hidden=18446744073709551615,layers=1".parse::<ModelSpec>().unwrap_err();
        assert!(err.to_string().contains("parameters"), "{err}");
        let err = "random:custom,vocab=4000000000,hidden=4096".parse::<ModelSpec>().unwrap_err();
        assert!(err.to_string().contains("parameters"), "{err}");
    }
}
