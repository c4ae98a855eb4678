//! The experiment TOML schema. Unknown keys are rejected (serde's `deny_unknown_fields`), and
//! every bad value is an error that names its key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::decoding::draft::DraftLength;
pub use crate::decoding::draft::MAX_K;
use crate::decoding::drafters::model::ModelSettings;
use crate::decoding::drafters::{Describe, DrafterSpec, KINDS, check_dtype};
use crate::decoding::tree::TreeShape;
use crate::error::{Error, Result};
use crate::experiment::prompts::PromptSet;
use crate::experiment::rows::{CellKey, ENGINE};
use crate::load::ModelSpec;

/// Limits on sizes taken from a config, so that a typo is a message, not an allocation abort.
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
    /// The drafters swept, as written; `[models.draft]` is the one-drafter shorthand (named
    /// `draft`). Read into `drafters` by `parse`.
    #[serde(default, rename = "drafters")]
    pub drafter_tables: Vec<toml::Table>,
    #[serde(skip)]
    pub drafters: Vec<DrafterEntry>,
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
    /// Never generate the target's end-of-generation tokens (their logits taken as −∞, by the
    /// drafters too): llama.cpp's `--ignore-eos`, so that both engines do the same work.
    #[serde(default)]
    pub ban_eos: bool,
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
    #[serde(default)]
    pub draft: Option<ModelEntry>,
}

/// One `[[drafters]]` entry: a name (its results' `drafter` column) and a drafter (`kind` and
/// that kind's settings; `decoding::drafters`). Read from the raw table, so that a wrong key is
/// named as `drafters[i].key`.
#[derive(Debug, Clone, PartialEq)]
pub struct DrafterEntry {
    pub name: String,
    pub spec: DrafterSpec,
}

impl DrafterEntry {
    fn from_table(i: usize, mut table: toml::Table) -> Result<Self> {
        let key = |field: &str| format!("drafters[{i}].{field}");
        let err = |message: String| Err(Error::InvalidConfig(message));
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) if !name.is_empty() && !name.contains([',', '"', '\n']) => name,
            _ => return err(format!("`{}` must be a non-empty name without commas or quotes", key("name"))),
        };
        let kind = match table.get("kind") {
            Some(toml::Value::String(kind)) => kind.clone(),
            _ => return err(format!("`{}` is missing; choose {KINDS}", key("kind"))),
        };
        let spec: DrafterSpec =
            toml::Value::Table(table).try_into().map_err(|e| settings_error(&e.to_string(), &kind, &key))?;
        spec.check(&key)?;
        Ok(Self { name, spec })
    }
}

/// serde's message about a drafter's settings, with the key it is about.
fn settings_error(message: &str, kind: &str, key: &dyn Fn(&str) -> String) -> Error {
    let quoted = |prefix: &str| {
        message.split_once(prefix).and_then(|(_, rest)| rest.split('`').next()).map(str::to_string)
    };
    let message = message.trim();
    Error::InvalidConfig(if let Some(field) = quoted("unknown field `") {
        let expected = message.split_once(", ").map_or("", |(_, rest)| rest);
        format!("`{}` is not a setting of a `{kind}` drafter ({expected})", key(&field))
    } else if message.contains("unknown variant") {
        format!("`{}` is `{kind}`; choose {KINDS}", key("kind"))
    } else if let Some(field) = quoted("missing field `") {
        format!("`{}` is missing: a `{kind}` drafter needs it", key(&field))
    } else {
        format!("`{}` (a `{kind}` drafter): {message}", key("").trim_end_matches('.'))
    })
}

/// A drafter as a run uses it: its own checkpoint, if any, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DrafterPlan {
    pub name: String,
    pub spec: DrafterSpec,
    pub checkpoint: Option<ModelSpec>,
}

impl DrafterPlan {
    /// What drafts, for the `draft` column of results.
    pub fn describe(&self, target: &ModelSpec) -> String {
        self.spec.describe(&Describe { target, checkpoint: self.checkpoint.as_ref() })
    }
}

/// The name `[models.draft]` gets as a drafter.
pub const LEGACY_DRAFTER: &str = "draft";

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
    /// Adaptive draft lengths swept beside each fixed k, capped at the largest k:
    /// `heuristic:START` (transformers' schedule) and `confidence:THRESHOLD`.
    #[serde(default)]
    pub adaptive: Vec<String>,
    /// Draft trees swept beside them (`budget:16,depth:5`, optionally `,width:4`): each step
    /// drafts a tree of at most `budget` nodes and `depth` levels, verified in one forward.
    #[serde(default)]
    pub tree: Vec<String>,
}

fn default_top_p() -> f64 {
    1.0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    /// JSONL with `id`, `category` and `prompt` (or `turns`) per line.
    #[serde(default)]
    pub file: Option<String>,
    /// A set that ships with specbench (`builtin`, the default without `file`, or
    /// `spec-bench`).
    #[serde(default)]
    pub set: Option<PromptSet>,
    /// Only the prompts of these categories (all when empty).
    #[serde(default)]
    pub categories: Vec<String>,
    /// At most this many prompts of each category, evenly spaced through it.
    #[serde(default)]
    pub limit_per_category: Option<usize>,
    /// Use only the first `limit` prompts (after the selection by category).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Wrap each turn in the target's chat template (a later turn after the model's answers).
    #[serde(default)]
    pub chat: bool,
}

/// One cell of the sweep: target-only (`draft` is `None`), or a drafter (its index in
/// `ExperimentFile::drafters`) with a draft length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub backend: Backend,
    pub temperature: f64,
    pub draft: Option<(usize, DraftLength)>,
}

impl Cell {
    /// The most tokens a step drafts: the `k` column (0 for the baseline).
    pub fn k(&self) -> usize {
        self.draft.map_or(0, |(_, length)| length.max())
    }

    /// The most draft rows one of its verifies feeds (0 for the baseline).
    pub fn draft_rows(&self) -> usize {
        self.draft.map_or(0, |(_, length)| length.rows())
    }

    /// Its identity in result rows; specbench's rows carry the target's dtype.
    pub fn key(&self, dtype: &str, drafter_names: &[String]) -> CellKey {
        let key = CellKey::new(ENGINE, self.backend.name(), dtype, self.temperature, self.k());
        match self.draft {
            Some((drafter, length)) => key.with_drafter(&drafter_names[drafter], &length.schedule()),
            None => key,
        }
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
    pub drafters: Vec<DrafterPlan>,
    pub prompts_file: Option<PathBuf>,
}

impl ExperimentFile {
    pub fn load(path: &Path) -> Result<Self> {
        let (config, text) = ExperimentConfig::from_file(path)?;
        let model = |model_path: &str, key: &str| -> Result<ModelSpec> {
            if model_path.starts_with("random:") {
                return model_path.parse();
            }
            let dir = resolve_beside(path, model_path, &format!("{key}.path"))?;
            if crate::load::is_gguf_path(&dir) {
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
        let target = model(&config.models.target.path, "models.target")?;
        let drafters = match &config.models.draft {
            Some(entry) => vec![DrafterPlan {
                name: LEGACY_DRAFTER.into(),
                spec: DrafterSpec::Model(ModelSettings {
                    path: entry.path.clone(),
                    dtype: Some(entry.dtype.clone()),
                }),
                checkpoint: Some(model(&entry.path, "models.draft")?),
            }],
            None => config
                .drafters
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let checkpoint =
                        entry.spec.checkpoint().map(|p| model(p, &format!("drafters[{i}]"))).transpose()?;
                    Ok(DrafterPlan { name: entry.name.clone(), spec: entry.spec.clone(), checkpoint })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let prompts_file =
            config.prompts.file.as_deref().map(|f| resolve_beside(path, f, "prompts.file")).transpose()?;
        Ok(Self { config, text, target, drafters, prompts_file })
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
        let mut config: Self = toml::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        config.drafters = config
            .drafter_tables
            .iter()
            .enumerate()
            .map(|(i, table)| DrafterEntry::from_table(i, table.clone()))
            .collect::<Result<_>>()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(Error::InvalidConfig(format!("`{key}` {why}")));
        let e = &self.experiment;
        if e.name.is_empty() || e.name.contains(['/', '\\']) || e.name == "." || e.name == ".." {
            return bad("experiment.name", "must be a non-empty name without slashes, and not `.` or `..`");
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
        if let Some(why) = s.temperatures.iter().find_map(|&t| crate::sampling::check_temperature(t).err()) {
            return Err(Error::InvalidConfig(format!("`sweep.temperatures`: {why}")));
        }
        // A value listed twice would run its cells twice and count each row twice in n.
        duplicate("sweep.k", &s.k)?;
        duplicate("sweep.backends", &s.backends)?;
        // 0.0 and -0.0 are the same temperature, and `==` says so.
        duplicate("sweep.temperatures", &s.temperatures)?;
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad("sweep.top_p", "must be in (0, 1]");
        }
        if self.prompts.file.is_some() && self.prompts.set.is_some() {
            return bad("prompts.set", "and `prompts.file` name two prompt sources; keep one");
        }
        if self.prompts.limit_per_category == Some(0) {
            return bad("prompts.limit_per_category", "must be at least 1");
        }
        if self.prompts.limit == Some(0) {
            return bad("prompts.limit", "must be at least 1");
        }
        let models =
            [("models.target", Some(&self.models.target)), ("models.draft", self.models.draft.as_ref())];
        for (key, entry) in models.into_iter().filter_map(|(key, entry)| Some((key, entry?))) {
            check_dtype(&entry.dtype, &format!("{key}.dtype"))?;
        }
        match (&self.models.draft, self.drafters.is_empty()) {
            (Some(_), false) => {
                return bad(
                    "models.draft",
                    "and [[drafters]] are both given: list the draft model as a drafter of kind `model`",
                );
            }
            (None, true) => {
                return bad("drafters", "is empty: give [models.draft] or at least one [[drafters]] entry");
            }
            _ => {}
        }
        let names: Vec<&str> = self.drafters.iter().map(|d| d.name.as_str()).collect();
        duplicate("drafters.name", &names)?;
        // Compared as parsed (`heuristic:01` is `heuristic:1`), as the results name them.
        let lengths = self.draft_lengths()?;
        let named = |tree: bool| -> Vec<String> {
            let kind = |length: &&DraftLength| matches!(length, DraftLength::Tree(_)) == tree;
            lengths
                .iter()
                .filter(kind)
                .filter(|l| !matches!(l, DraftLength::Fixed(_)))
                .map(DraftLength::schedule)
                .collect()
        };
        duplicate("sweep.adaptive", &named(false))?;
        duplicate("sweep.tree", &named(true))?;
        if !s.tree.is_empty()
            && let Some(chains) = self.drafters.iter().find(|d| !d.spec.drafts_trees())
        {
            return Err(Error::InvalidConfig(format!(
                "`sweep.tree` is given but drafter `{}` (kind {}) drafts chains only; trees need a drafter with \
                 distributions to draw from (model, quantized, layer_skip, eagle3)",
                chains.name,
                chains.spec.kind_name()
            )));
        }
        Ok(())
    }

    /// Each fixed k, then each adaptive schedule capped at the largest k, then each tree.
    pub fn draft_lengths(&self) -> Result<Vec<DraftLength>> {
        let max = self.sweep.k.iter().copied().max().unwrap_or(0);
        let fixed = self.sweep.k.iter().map(|&k| Ok(DraftLength::Fixed(k)));
        let adaptive = self.sweep.adaptive.iter().map(|text| {
            DraftLength::parse_schedule(text, max)
                .map_err(|why| Error::InvalidConfig(format!("`sweep.adaptive`: {why}")))
        });
        let trees = self.sweep.tree.iter().map(|text| {
            TreeShape::parse(text)
                .map(DraftLength::Tree)
                .map_err(|why| Error::InvalidConfig(format!("`sweep.tree`: {why}")))
        });
        fixed.chain(adaptive).chain(trees).collect()
    }

    /// The drafters' names in sweep order (`[models.draft]` is `draft`).
    pub fn drafter_names(&self) -> Vec<String> {
        if self.models.draft.is_some() {
            vec![LEGACY_DRAFTER.into()]
        } else {
            self.drafters.iter().map(|d| d.name.clone()).collect()
        }
    }

    /// The temperatures with -0.0 written as 0.0, so that a cell has one temperature identity.
    pub fn temperatures(&self) -> Vec<f64> {
        self.sweep.temperatures.iter().map(|&t| t + 0.0).collect()
    }

    /// Every cell of the sweep, in run order: backend × temperature × (the baseline, then each
    /// drafter × each draft length).
    pub fn cells(&self) -> Vec<Cell> {
        let lengths = self.draft_lengths().expect("validated");
        let mut all = Vec::new();
        for backend in self.backends() {
            for temperature in self.temperatures() {
                all.push(Cell { backend, temperature, draft: None });
                for drafter in 0..self.drafter_names().len() {
                    for &length in &lengths {
                        all.push(Cell { backend, temperature, draft: Some((drafter, length)) });
                    }
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
    use crate::decoding::drafters::layer_skip::LayerSelection;
    use crate::decoding::drafters::ngram::NgramLookup;

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
        assert_eq!(config.models.draft.unwrap().dtype, "f32");
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
            ("temperatures = [0.0, 1.0]", "temperatures = [1e-40]", "sweep.temperatures"),
            ("name = \"t\"", "name = \"..\"", "experiment.name"),
        ] {
            let err = error_of(&VALID.replace(from, to));
            assert!(err.contains(key), "{to}: {err}");
        }
    }

    const DRAFTERS: &str = r#"
[experiment]
name = "t"
max_new_tokens = 8
[models.target]
path = "random:custom"
[[drafters]]
name = "q4"
kind = "quantized"
dtype = "q4_0"
[[drafters]]
name = "skip"
kind = "layer_skip"
layers = "0-1,3"
[[drafters]]
name = "lookup"
kind = "ngram"
[sweep]
k = [1, 4]
adaptive = ["heuristic:2", "confidence:0.4"]
backends = ["ndarray"]
temperatures = [0.0]
"#;

    #[test]
    fn drafters_and_adaptive_schedules_make_the_cells() {
        let config = ExperimentConfig::parse(DRAFTERS).unwrap();
        assert_eq!(config.drafter_names(), ["q4", "skip", "lookup"]);
        // The baseline, then 3 drafters × (2 fixed k + 2 schedules).
        let cells = config.cells();
        assert_eq!(cells.len(), 1 + 3 * 4);
        let names = config.drafter_names();
        let labels: Vec<String> = cells.iter().map(|c| c.key("f32", &names).draft_label()).collect();
        assert_eq!(labels[0], "target only");
        assert!(labels.contains(&"skip heuristic:2 (k ≤ 4)".to_string()), "{labels:?}");
        assert!(labels.contains(&"lookup k=1".to_string()), "{labels:?}");
        let DrafterSpec::LayerSkip(skip) = &config.drafters[1].spec else { panic!("not layer_skip") };
        assert_eq!(skip.selection(&|f| f.into()).unwrap(), LayerSelection::Keep(vec![0, 1, 3]));
        let counts = DRAFTERS.replace("kind = \"ngram\"", "kind = \"ngram\"\nlookup = \"counts\"");
        let DrafterSpec::Ngram(ngram) = &ExperimentConfig::parse(&counts).unwrap().drafters[2].spec else {
            panic!("not ngram")
        };
        assert_eq!(ngram.lookup("lookup").unwrap(), NgramLookup::Counts);
        // The legacy [models.draft] is one drafter named `draft`.
        assert_eq!(ExperimentConfig::parse(VALID).unwrap().drafter_names(), ["draft"]);
    }

    #[test]
    fn trees_are_cells_beside_k_and_need_drafters_that_draw_them() {
        let trees = VALID.replace(
            "k = [1, 2]",
            "k = [1, 2]\ntree = [\"budget:16,depth:5\", \"depth:3,budget:8,width:2\"]",
        );
        let config = ExperimentConfig::parse(&trees).unwrap();
        // Per temperature: the baseline, then 2 fixed k + 2 trees.
        assert_eq!(config.cells().len(), 2 * (1 + 4));
        let names = config.drafter_names();
        let labels: Vec<String> = config.cells().iter().map(|c| c.key("f32", &names).draft_label()).collect();
        assert!(labels.contains(&"draft tree:budget:16,depth:5,width:4".to_string()), "{labels:?}");
        let rows: Vec<usize> = config.cells().iter().map(Cell::draft_rows).collect();
        assert_eq!(rows[..5], [0, 1, 2, 16, 8]);
        let err = error_of(&trees.replace("budget:16,depth:5", "budget:16"));
        assert!(err.contains("sweep.tree") && err.contains("depth"), "{err}");
        let err = error_of(&trees.replace("depth:3,budget:8,width:2", "depth:5,budget:16"));
        assert!(err.contains("sweep.tree") && err.contains("twice"), "{err}");
        let lookup = DRAFTERS.replace("k = [1, 4]", "k = [1, 4]\ntree = [\"budget:4,depth:2\"]");
        let err = error_of(&lookup);
        assert!(err.contains("lookup") && err.contains("chains only"), "{err}");
    }

    #[test]
    fn drafter_mistakes_name_their_key() {
        for (from, to, key) in [
            ("kind = \"ngram\"", "kind = \"ngram\"\ndtype = \"q4_0\"", "drafters[2].dtype"),
            ("kind = \"ngram\"", "kind = \"medusa\"", "drafters[2].kind"),
            ("kind = \"ngram\"", "kind = \"ngram\"\nmin_n = 3\nmax_n = 2", "drafters[2].min_n"),
            ("kind = \"ngram\"", "kind = \"ngram\"\nlookup = \"statistics\"", "drafters[2].lookup"),
            ("kind = \"layer_skip\"", "kind = \"layer_skip\"\nlookup = \"counts\"", "drafters[1].lookup"),
            ("dtype = \"q4_0\"", "dtype = \"q3_k\"", "drafters[0].dtype"),
            ("dtype = \"q4_0\"\n", "", "drafters[0].dtype"),
            ("layers = \"0-1,3\"", "layers = \"0-x\"", "drafters[1].layers"),
            ("layers = \"0-1,3\"", "layers = \"0-1\"\nskip = [2]", "drafters[1].skip"),
            ("name = \"lookup\"", "name = \"q4\"", "drafters.name"),
            (
                "adaptive = [\"heuristic:2\", \"confidence:0.4\"]",
                "adaptive = [\"heuristic:9\"]",
                "sweep.adaptive",
            ),
            (
                "adaptive = [\"heuristic:2\", \"confidence:0.4\"]",
                "adaptive = [\"confidence:2\"]",
                "sweep.adaptive",
            ),
            (
                "adaptive = [\"heuristic:2\", \"confidence:0.4\"]",
                "adaptive = [\"heuristic:2\", \"heuristic:02\"]",
                "sweep.adaptive",
            ),
            (
                "adaptive = [\"heuristic:2\", \"confidence:0.4\"]",
                "adaptive = [\"confidence:0.4\", \"confidence:0.40\"]",
                "sweep.adaptive",
            ),
            ("[models.target]", "[models.draft]\npath = \"random:custom\"\n[models.target]", "models.draft"),
        ] {
            assert!(DRAFTERS.contains(from), "{from}");
            let err = error_of(&DRAFTERS.replace(from, to));
            assert!(err.contains(key), "{to}: {err}");
        }
        let none = VALID.replace("[models.draft]\npath = \"random:custom\"\n", "");
        assert!(error_of(&none).contains("drafters"), "{}", error_of(&none));
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
