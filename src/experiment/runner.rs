//! `specbench run`: every cell (backend × temperature × k, with k = 0 the target-only baseline)
//! on the same prompts and seeds. Baseline and speculative runs of one prompt and repeat follow
//! each other, so slow drift of the machine affects both alike.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::{ProgressBar, ProgressStyle};

use super::config::{ExperimentConfig, model_path, resolve_beside};
use super::manifest::{Machine, Manifest, git_commit, now, sha256_hex};
use super::prompts::{self, Prompt};
use super::rows::{RowKey, RowWriter, RunRow, done_keys, join_counts, read_rows};
use crate::backend::{Backend, dtype_name, parse_dtype};
use crate::decoding::pairing::shared_vocab;
use crate::decoding::speculative::Speculative;
use crate::decoding::{Generation, GenerationConfig, autoregressive};
use crate::error::{Error, Result};
use crate::model::{LoadedModel, ModelSpec};
use crate::sampling::SamplingConfig;

/// `--shard i/n`: cells whose index is `i` modulo `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidConfig(format!("--shard `{s}`: expected i/n with 0 ≤ i < n"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Option<PathBuf>,
    pub shard: Option<Shard>,
    /// Result folder to create instead of `results/<name>/<run-id>`.
    pub out: Option<PathBuf>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// One cell of the sweep. `k = 0` is the target-only baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub backend: Backend,
    pub temperature: f64,
    pub k: usize,
}

pub fn cells(config: &ExperimentConfig, shard: Option<Shard>) -> Vec<Cell> {
    let mut all = Vec::new();
    for backend in config.backends() {
        for &temperature in &config.sweep.temperatures {
            for k in std::iter::once(0).chain(config.sweep.k.iter().copied()) {
                all.push(Cell { backend, temperature, k });
            }
        }
    }
    all.into_iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|s| i % s.count == s.index))
        .map(|(_, cell)| cell)
        .collect()
}

pub fn load_prompts(config: &ExperimentConfig, config_path: &Path) -> Result<Vec<Prompt>> {
    let mut prompts = match &config.prompts.file {
        Some(file) => prompts::from_jsonl(&resolve_beside(config_path, file, "prompts.file")?)?,
        None => prompts::builtin(),
    };
    if let Some(limit) = config.prompts.limit {
        prompts.truncate(limit);
    }
    Ok(prompts)
}

/// Parses the model entries, failing before any work if a checkpoint folder is absent.
fn model_specs(config: &ExperimentConfig, config_path: &Path) -> Result<(ModelSpec, ModelSpec)> {
    let spec = |entry, key: &str| -> Result<ModelSpec> {
        let spec: ModelSpec = model_path(entry, key, config_path)?.parse()?;
        if let ModelSpec::Folder(dir) = &spec
            && !dir.is_dir()
        {
            return Err(Error::InvalidConfig(format!(
                "`{key}.path`: model folder {} does not exist. Put a Hugging Face checkpoint there \
                     (config.json, model.safetensors or model.safetensors.index.json with its shards, \
                     tokenizer.json), or point the path (or $SPECBENCH_MODELS) at one",
                dir.display()
            )));
        }
        Ok(spec)
    };
    Ok((spec(&config.models.target, "models.target")?, spec(&config.models.draft, "models.draft")?))
}

/// Mixes the experiment seed with the prompt and repeat, so each (prompt, repeat) has its own
/// stream, shared by the baseline and every k.
fn run_seed(seed: u64, prompt_index: usize, repeat: usize) -> u64 {
    // SplitMix64 finaliser.
    let mut z = seed ^ ((prompt_index as u64) << 32) ^ repeat as u64;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs the sweep and returns the result folder.
pub fn run(config_path: &Path, options: &RunOptions) -> Result<PathBuf> {
    let (config, config_text) = ExperimentConfig::from_file(config_path)?;
    let prompts = load_prompts(&config, config_path)?;
    let (target_spec, draft_spec) = model_specs(&config, config_path)?;
    let (dir, shard) = match &options.resume {
        Some(dir) => resume_manifest(dir, &config_text, options.shard)?,
        None => (new_result_dir(&config, &config_text, options)?, options.shard),
    };
    let cells = cells(&config, shard);
    let runs_path = dir.join("runs.csv");
    let done = if runs_path.exists() { done_keys(&read_rows(&runs_path)?) } else { HashSet::new() };
    let mut writer = RowWriter::open(&runs_path)?;

    let total = (cells.len() * prompts.len() * config.experiment.repeats) as u64;
    let progress = if options.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rows, ETA {eta} {msg}")
            .expect("valid template"),
    );
    let repeats = config.experiment.repeats;
    let pending = |cell: &Cell, p: &Prompt, repeat| !done.contains(&key(cell, p, repeat));
    let any_pending =
        |cells: &[Cell]| cells.iter().any(|c| prompts.iter().any(|p| (0..repeats).any(|r| pending(c, p, r))));
    let rows_of = |cells: &[Cell]| (cells.len() * prompts.len() * repeats) as u64;
    let mut devices = Vec::new();
    for backend in config.backends() {
        let backend_cells: Vec<Cell> = cells.iter().copied().filter(|c| c.backend == backend).collect();
        if !any_pending(&backend_cells) {
            progress.inc(rows_of(&backend_cells));
            continue;
        }
        let device = backend.device()?;
        let dtype = |entry: &super::config::ModelEntry| parse_dtype(&entry.dtype, backend, &device);
        let (target_dtype, draft_dtype) = (dtype(&config.models.target)?, dtype(&config.models.draft)?);
        progress.set_message(format!("loading models on {backend}"));
        let target = LoadedModel::load(&target_spec, backend, &device, target_dtype, config.experiment.seed)?;
        let draft = LoadedModel::load(
            &draft_spec,
            backend,
            &device,
            draft_dtype,
            config.experiment.seed.wrapping_add(1),
        )?;
        devices.push(format!("{backend}: {device:?}; {} projections", target.model.kernel()));
        let sweep = BackendSweep {
            config: &config,
            target: &target,
            draft: &draft,
            vocab: shared_vocab(&target, &draft)?,
            dtype: dtype_name(target_dtype),
            encoded: prompts.iter().map(|p| target.tokenizer.encode(&p.prompt)).collect::<Result<_>>()?,
        };
        for &temperature in &config.sweep.temperatures {
            let group: Vec<Cell> =
                backend_cells.iter().copied().filter(|c| c.temperature == temperature).collect();
            if !any_pending(&group) {
                progress.inc(rows_of(&group));
                continue;
            }
            progress.set_message(format!("{backend}, T = {temperature}: warm-up"));
            for cell in &group {
                for _ in 0..config.experiment.warmup {
                    sweep.generate(cell, 0, u64::MAX)?;
                }
            }
            progress.set_message(format!("{backend}, T = {temperature}"));
            for repeat in 0..repeats {
                for (index, prompt) in prompts.iter().enumerate() {
                    for cell in &group {
                        if pending(cell, prompt, repeat) {
                            let seed = run_seed(config.experiment.seed, index, repeat);
                            let generation = sweep.generate(cell, index, seed)?;
                            writer.append(&sweep.row(cell, prompt, repeat, seed, &generation))?;
                        }
                        progress.inc(1);
                    }
                }
            }
        }
    }
    progress.finish_and_clear();
    let mut manifest = Manifest::read(&dir)?;
    manifest.finished = Some(now());
    if !devices.is_empty() {
        manifest.devices = devices;
    }
    manifest.write(&dir)?;
    Ok(dir)
}

fn key(cell: &Cell, prompt: &Prompt, repeat: usize) -> RowKey {
    RowKey {
        engine: ENGINE.into(),
        backend: cell.backend.name().into(),
        temperature_bits: cell.temperature.to_bits(),
        k: cell.k,
        prompt_id: prompt.id.clone(),
        repeat,
    }
}

pub const ENGINE: &str = "specbench";

/// What one backend's part of the sweep shares: the loaded pair and the encoded prompts.
struct BackendSweep<'a> {
    config: &'a ExperimentConfig,
    target: &'a LoadedModel,
    draft: &'a LoadedModel,
    vocab: usize,
    dtype: &'static str,
    encoded: Vec<Vec<u32>>,
}

impl BackendSweep<'_> {
    fn generate(&self, cell: &Cell, prompt_index: usize, seed: u64) -> Result<Generation> {
        let generation = GenerationConfig {
            max_new_tokens: self.config.experiment.max_new_tokens,
            sampling: SamplingConfig {
                temperature: cell.temperature,
                top_k: self.config.sweep.top_k,
                top_p: self.config.sweep.top_p,
            },
            eos_ids: self.target.eos_ids(),
            seed,
        };
        let prompt = &self.encoded[prompt_index];
        if cell.k == 0 {
            autoregressive::generate(&self.target.model, prompt, &generation)
        } else {
            Speculative::new(&self.target.model, &self.draft.model, self.vocab, cell.k)?
                .generate(prompt, &generation)
        }
    }

    fn row(&self, cell: &Cell, prompt: &Prompt, repeat: usize, seed: u64, g: &Generation) -> RunRow {
        let a = &g.acceptance;
        let t = &g.timings;
        let speculative = cell.k > 0;
        RunRow {
            engine: ENGINE.into(),
            backend: cell.backend.name().into(),
            dtype: self.dtype.into(),
            target: self.target.spec.to_string(),
            draft: if speculative { self.draft.spec.to_string() } else { String::new() },
            prompt_id: prompt.id.clone(),
            category: prompt.category.clone(),
            temperature: cell.temperature,
            k: cell.k,
            repeat,
            seed,
            new_tokens: g.tokens.len(),
            target_calls: a.target_calls,
            proposed: a.proposed,
            accepted: a.accepted,
            alpha_hat: speculative.then(|| a.alpha_hat()),
            alpha: speculative.then(|| a.alpha()),
            mean_accepted_len: a.mean_accepted_len(),
            prefill_s: t.prefill.as_secs_f64(),
            draft_s: t.draft.as_secs_f64(),
            verify_s: t.verify.as_secs_f64(),
            other_s: (t.sampling + t.other()).as_secs_f64(),
            wall_s: t.wall.as_secs_f64(),
            tokens_per_s: g.tokens.len() as f64 / t.wall.as_secs_f64(),
            position_accepted: join_counts(&a.position_accepted),
            accepted_len_hist: join_counts(&a.accepted_len_hist),
            overlap_sum: speculative.then_some(a.overlap_sum),
            overlap_count: speculative.then_some(a.overlap_count),
        }
    }
}

fn new_result_dir(config: &ExperimentConfig, config_text: &str, options: &RunOptions) -> Result<PathBuf> {
    let shard_suffix = options.shard.map(|s| format!("-shard{}of{}", s.index, s.count)).unwrap_or_default();
    let dir = match &options.out {
        Some(dir) => dir.clone(),
        None => {
            let run_id = now().replace(':', "-");
            Path::new(&config.experiment.results_dir)
                .join(&config.experiment.name)
                .join(format!("{run_id}{shard_suffix}"))
        }
    };
    if dir.join("runs.csv").exists() {
        return Err(Error::InvalidConfig(format!(
            "{} already holds a run; use --resume {} to complete it",
            dir.display(),
            dir.display()
        )));
    }
    crate::files::create_dir(&dir)?;
    Manifest {
        experiment: config.experiment.name.clone(),
        config: config_text.to_string(),
        config_sha256: sha256_hex(config_text),
        git_commit: git_commit(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        shard: options.shard.map(|s| format!("{}/{}", s.index, s.count)),
        machine: Machine::this(),
        devices: Vec::new(),
        target_dtype: config.models.target.dtype.clone(),
        draft_dtype: config.models.draft.dtype.clone(),
        started: now(),
        finished: None,
        resumed: Vec::new(),
        merged_from: Vec::new(),
    }
    .write(&dir)?;
    Ok(dir)
}

/// A resumed run must be of the same config, byte for byte: otherwise its rows would mix two
/// experiments. A shard folder resumes as the same shard, whether or not `--shard` is repeated.
fn resume_manifest(dir: &Path, config_text: &str, shard: Option<Shard>) -> Result<(PathBuf, Option<Shard>)> {
    let mut manifest = Manifest::read(dir)?;
    let recorded = manifest.shard.as_deref().map(str::parse::<Shard>).transpose()?;
    if shard.is_some() && shard != recorded {
        return Err(Error::InvalidConfig(format!(
            "{} holds shard {}, not the one given with --shard",
            dir.display(),
            manifest.shard.as_deref().unwrap_or("(none: the whole sweep)")
        )));
    }
    if manifest.config_sha256 != sha256_hex(config_text) {
        return Err(Error::InvalidConfig(format!(
            "{} was run with a different config (sha256 {}); resume needs the same file",
            dir.display(),
            manifest.config_sha256
        )));
    }
    manifest.resumed.push(now());
    manifest.write(dir)?;
    Ok((dir.to_path_buf(), recorded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_cells() {
        let config = ExperimentConfig::parse(
            "[experiment]\nname='x'\nmax_new_tokens=4\n[models.target]\npath='random:custom'\n\
             [models.draft]\npath='random:custom'\n[sweep]\nk=[1,2,3]\nbackends=['ndarray']\ntemperatures=[0.0,1.0]\n",
        )
        .unwrap();
        let all = cells(&config, None);
        assert_eq!(all.len(), 8);
        let mut joined: Vec<Cell> =
            (0..3).flat_map(|i| cells(&config, Some(Shard { index: i, count: 3 }))).collect();
        joined.sort_by(|a, b| (a.temperature, a.k).partial_cmp(&(b.temperature, b.k)).unwrap());
        assert_eq!(joined.len(), all.len());
        assert!("2/2".parse::<Shard>().is_err() && "1/0".parse::<Shard>().is_err());
    }

    #[test]
    fn run_seeds_differ_by_prompt_and_repeat() {
        let seeds: HashSet<u64> = (0..10).flat_map(|p| (0..10).map(move |r| run_seed(1, p, r))).collect();
        assert_eq!(seeds.len(), 100);
    }
}
