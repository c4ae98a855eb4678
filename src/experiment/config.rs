//! The experiment TOML schema. Unknown keys are rejected (serde's `deny_unknown_fields`), and
//! every bad value is an error that names its key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::experiment::rows::{CellKey, ENGINE};
use crate::model::ModelSpec;

/// Limits on sizes taken from a config, so that a typo is a message, not an allocation abort.
pub const MAX_K: usize = 64;
pub const MAX_REPEATS: usize = 1000;
pub const MAX_WARMUP: usize = 100;
pub const MAX_NEW_TOKENS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub experiment: Experiment,
    pub models: Models,
    pub sweep: Sweep,
    #[serde(default)]
    pub prompts: Prompts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "one")]
    pub repeats: usize,
    /// Generations per cell run before measuring (kernel compilation, caches), not recorded.
    #[serde(default = "one")]
    pub warmup: usize,
    pub max_new_tokens: usize,
    /// Significance level of `specbench check`.
    #[serde(default = "default_significance")]
    pub significance: f64,
    /// Where result folders go; relative paths are taken from the current directory.
    #[serde(default = "default_results")]
    pub results_dir: String,
    /// Token ids that end a generation besides the target's own `eos_token_id`s.
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
}

fn one() -> usize {
    1
}
fn default_significance() -> f64 {
    0.01
}
fn default_results() -> String {
    "results".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub target: ModelEntry,
    pub draft: ModelEntry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// A local Hugging Face folder (environment variables allowed: `$VAR`, `${VAR}`) or
    /// `random:PRESET`.
    pub path: String,
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_dtype() -> String {
    "f32".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    pub k: Vec<usize>,
    pub backends: Vec<String>,
    pub temperatures: Vec<f64>,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: usize,
}

fn default_top_p() -> f64 {
    1.0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    /// JSONL with `id`, `category`, `prompt` per line; the built-in set when absent.
    #[serde(default)]
    pub file: Option<String>,
    /// Use only the first `limit` prompts.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Wrap each prompt as one user turn of the target's chat template.
    #[serde(default)]
    pub chat: bool,
}

/// One cell of the sweep. `k = 0` is the target-only baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub backend: Backend,
    pub temperature: f64,
    pub k: usize,
}

impl Cell {
    /// Its identity in result rows; specbench's rows carry the target's dtype.
    pub fn key(&self, dtype: &str) -> CellKey {
        CellKey::new(ENGINE, self.backend.name(), dtype, self.temperature, self.k)
    }
}

/// A config file as loaded: parsed, validated, and every path in it resolved once (environment
/// variables expanded; relative paths taken from the config file's folder).
#[derive(Debug, Clone)]
pub struct ExperimentFile {
    pub config: ExperimentConfig,
    /// The file verbatim (recorded in the manifest).
    pub text: String,
    pub target: ModelSpec,
    pub draft: ModelSpec,
    pub prompts_file: Option<PathBuf>,
}

impl ExperimentFile {
    pub fn load(path: &Path) -> Result<Self> {
        let (config, text) = ExperimentConfig::from_file(path)?;
        let model = |entry: &ModelEntry, key: &str| -> Result<ModelSpec> {
            if entry.path.starts_with("random:") {
                return entry.path.parse();
            }
            let dir = resolve_beside(path, &entry.path, &format!("{key}.path"))?;
            if crate::model::is_gguf_path(&dir) {
                if !dir.is_file() {
                    return Err(Error::InvalidConfig(format!(
                        "`{key}.path` in {}: GGUF file {} does not exist",
                        path.display(),
                        dir.display()
                    )));
                }
                return Ok(ModelSpec::Gguf(std::fs::canonicalize(&dir).unwrap_or(dir)));
            }
            if !dir.is_dir() {
                return Err(Error::InvalidConfig(format!(
                    "`{key}.path` in {}: model folder {} does not exist. Put a Hugging Face checkpoint there \
                     (config.json, model.safetensors or model.safetensors.index.json with its shards, \
                     tokenizer.json), or point the path (or $SPECBENCH_MODELS) at one or at a .gguf file",
                    path.display(),
                    dir.display()
                )));
            }
            // Absolute, so that the manifest says which folder whatever the working directory.
            Ok(ModelSpec::Folder(std::fs::canonicalize(&dir).unwrap_or(dir)))
        };
        let target = model(&config.models.target, "models.target")?;
        let draft = model(&config.models.draft, "models.draft")?;
        let prompts_file =
            config.prompts.file.as_deref().map(|f| resolve_beside(path, f, "prompts.file")).transpose()?;
        Ok(Self { config, text, target, draft, prompts_file })
    }
}

impl ExperimentConfig {
    pub fn from_file(path: &Path) -> Result<(Self, String)> {
        let text = crate::files::read_text(path)?;
        let config = Self::parse(&text).map_err(|e| match e {
            Error::InvalidConfig(message) => Error::MalformedFile { path: path.to_path_buf(), message },
            other => other,
        })?;
        Ok((config, text))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(Error::InvalidConfig(format!("`{key}` {why}")));
        let e = &self.experiment;
        if e.name.is_empty() || e.name.contains(['/', '\\']) {
            return bad("experiment.name", "must be a non-empty name without slashes");
        }
        for (key, value, max) in [
            ("experiment.repeats", e.repeats, MAX_REPEATS),
            ("experiment.max_new_tokens", e.max_new_tokens, MAX_NEW_TOKENS),
        ] {
            if value == 0 || value > max {
                return Err(Error::InvalidConfig(format!("`{key}` is {value}; it must be in 1..={max}")));
            }
        }
        if e.warmup > MAX_WARMUP {
            return Err(Error::InvalidConfig(format!(
                "`experiment.warmup` is {}; it must be in 0..={MAX_WARMUP}",
                e.warmup
            )));
        }
        if !(e.significance > 0.0 && e.significance < 1.0) {
            return bad("experiment.significance", "must be in (0, 1)");
        }
        let s = &self.sweep;
        if s.k.is_empty() {
            return bad("sweep.k", "is empty: list at least one draft length");
        }
        if s.k.contains(&0) {
            return bad("sweep.k", "contains 0; draft lengths start at 1 (the baseline runs anyway)");
        }
        if let Some(k) = s.k.iter().find(|&&k| k > MAX_K) {
            return Err(Error::InvalidConfig(format!(
                "`sweep.k` contains {k}; draft lengths go up to {MAX_K}"
            )));
        }
        if s.backends.is_empty() {
            return bad("sweep.backends", "is empty: list at least one backend");
        }
        for name in &s.backends {
            name.parse::<Backend>().map_err(|e| Error::InvalidConfig(format!("`sweep.backends`: {e}")))?;
        }
        if s.temperatures.is_empty() {
            return bad("sweep.temperatures", "is empty: list at least one temperature");
        }
        if let Some(t) = s.temperatures.iter().find(|t| !t.is_finite() || **t < 0.0) {
            return Err(Error::InvalidConfig(format!(
                "`sweep.temperatures` contains {t}; temperatures must be ≥ 0"
            )));
        }
        // A value listed twice would run its cells twice and count each row twice in n.
        duplicate("sweep.k", &s.k)?;
        duplicate("sweep.backends", &s.backends)?;
        // 0.0 and -0.0 are the same temperature, and `==` says so.
        duplicate("sweep.temperatures", &s.temperatures)?;
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad("sweep.top_p", "must be in (0, 1]");
        }
        if self.prompts.limit == Some(0) {
            return bad("prompts.limit", "must be at least 1");
        }
        for (key, entry) in [("models.target", &self.models.target), ("models.draft", &self.models.draft)] {
            if !["f32", "f16", "bf16", "q8_0", "q4_0"].contains(&entry.dtype.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "`{key}.dtype` is `{}`; choose f32, f16, bf16, q8_0 or q4_0",
                    entry.dtype
                )));
            }
        }
        Ok(())
    }

    /// The temperatures with -0.0 written as 0.0, so that a cell has one temperature identity.
    pub fn temperatures(&self) -> Vec<f64> {
        self.sweep.temperatures.iter().map(|&t| t + 0.0).collect()
    }

    /// Every cell of the sweep, in run order: backend × temperature × (0, then each k).
    pub fn cells(&self) -> Vec<Cell> {
        let mut all = Vec::new();
        for backend in self.backends() {
            for temperature in self.temperatures() {
                for k in std::iter::once(0).chain(self.sweep.k.iter().copied()) {
                    all.push(Cell { backend, temperature, k });
                }
            }
        }
        all
    }

    pub fn backends(&self) -> Vec<Backend> {
        self.sweep.backends.iter().map(|b| b.parse().expect("validated")).collect()
    }
}

fn duplicate<T: std::fmt::Debug + PartialEq>(key: &str, values: &[T]) -> Result<()> {
    for (i, a) in values.iter().enumerate() {
        if values[..i].contains(a) {
            return Err(Error::InvalidConfig(format!("`{key}` lists {a:?} twice; list each value once")));
        }
    }
    Ok(())
}

/// Expands `$VAR`, `${VAR}` and `${VAR:-default}` (the `shellexpand` crate); an unset variable
/// without a default is an error naming it and the key.
pub fn expand_env(value: &str, key: &str) -> Result<String> {
    shellexpand::env(value).map(|v| v.into_owned()).map_err(|e| {
        Error::InvalidConfig(format!("`{key}` uses ${}, which is not set in the environment", e.var_name))
    })
}

/// Expands `path` and resolves it from the config file's folder when relative, so a config
/// means the same from any working directory.
pub fn resolve_beside(config_path: &Path, path: &str, key: &str) -> Result<PathBuf> {
    let expanded = PathBuf::from(expand_env(path, key)?);
    Ok(if expanded.is_relative() {
        config_path.parent().unwrap_or(Path::new(".")).join(expanded)
    } else {
        expanded
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
[experiment]
name = "t"
max_new_tokens = 8
[models.target]
path = "random:custom"
[models.draft]
path = "random:custom"
[sweep]
k = [1, 2]
backends = ["ndarray"]
temperatures = [0.0, 1.0]
"#;

    fn error_of(text: &str) -> String {
        ExperimentConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_config_parses_with_defaults() {
        let config = ExperimentConfig::parse(VALID).unwrap();
        assert_eq!((config.experiment.repeats, config.experiment.warmup), (1, 1));
        assert_eq!(config.sweep.top_p, 1.0);
        assert_eq!(config.models.draft.dtype, "f32");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = error_of(&VALID.replace("k = [1, 2]", "k = [1, 2]\ndraft_len = 3"));
        assert!(err.contains("draft_len"), "{err}");
    }

    #[test]
    fn missing_fields_are_named() {
        let err = error_of(&VALID.replace("max_new_tokens = 8\n", ""));
        assert!(err.contains("max_new_tokens"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (from, to, key) in [
            ("k = [1, 2]", "k = [0, 2]", "sweep.k"),
            ("k = [1, 2]", "k = []", "sweep.k"),
            ("temperatures = [0.0, 1.0]", "temperatures = [-0.5]", "sweep.temperatures"),
            ("backends = [\"ndarray\"]", "backends = []", "sweep.backends"),
            ("backends = [\"ndarray\"]", "backends = [\"tpu\"]", "sweep.backends"),
            ("max_new_tokens = 8", "max_new_tokens = 0", "experiment.max_new_tokens"),
            ("max_new_tokens = 8", "max_new_tokens = 9223372036854775807", "experiment.max_new_tokens"),
            ("max_new_tokens = 8", "max_new_tokens = 8\nrepeats = 100000000", "experiment.repeats"),
            ("max_new_tokens = 8", "max_new_tokens = 8\nwarmup = 100000000", "experiment.warmup"),
            ("k = [1, 2]", "k = [1, 100000]", "sweep.k"),
            ("k = [1, 2]", "k = [2, 2]", "sweep.k"),
            ("temperatures = [0.0, 1.0]", "temperatures = [0.0, -0.0]", "sweep.temperatures"),
            ("backends = [\"ndarray\"]", "backends = [\"ndarray\", \"ndarray\"]", "sweep.backends"),
        ] {
            let err = error_of(&VALID.replace(from, to));
            assert!(err.contains(key), "{to}: {err}");
        }
    }

    #[test]
    fn environment_variables_expand_and_unset_ones_are_named() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("SPECBENCH_TEST_MODELS", "/models") };
        assert_eq!(expand_env("$SPECBENCH_TEST_MODELS/a", "k").unwrap(), "/models/a");
        assert_eq!(expand_env("${SPECBENCH_TEST_MODELS}x", "k").unwrap(), "/modelsx");
        assert_eq!(expand_env("${SPECBENCH_SURELY_UNSET:-../models}/a", "k").unwrap(), "../models/a");
        let err = expand_env("$SPECBENCH_SURELY_UNSET/x", "models.target.path").unwrap_err().to_string();
        assert!(err.contains("SPECBENCH_SURELY_UNSET") && err.contains("models.target.path"), "{err}");
    }
}
