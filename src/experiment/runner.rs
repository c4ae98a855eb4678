//! `specbench run`: every cell (backend × temperature × k, with k = 0 the target-only baseline)
//! on the same prompts and seeds. Baseline and speculative runs of one prompt and repeat follow
//! each other, so slow drift of the machine affects both alike.
//!
//! The workflow reads as three steps: `Plan::new` (config, prompts, cells and the identity of
//! the models, all checked before anything is created), `ResultFolder::create`/`resume` (one
//! locked folder per run), and `execute` (load each backend's pair, check every prompt against
//! the context, run the pending rows).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::{ProgressBar, ProgressStyle};

use super::config::{Cell, ExperimentConfig, ExperimentFile};
use super::lock::FolderLock;
use super::manifest::{Build, Machine, Manifest, RunModels, now, sha256_hex};
use super::prompts::{self, Prompt, PromptSet};
use super::rows::{ENGINE, RowKey, RowWriter, RunRow, done_keys, join_counts, read_rows};
use crate::backend::{Backend, Runtime};
use crate::decoding::drafters::{DraftContext, LoadedDrafter};
use crate::decoding::{Generation, GenerationConfig, autoregressive};
use crate::error::{Error, Result};
use crate::load::LoadedModel;
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
        let bad = || Error::Usage(format!("--shard `{s}`: expected i/n with 0 ≤ i < n"));
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

/// The cells of `--shard i/n`: those whose index in `ExperimentConfig::cells` is `i` modulo `n`.
pub fn cells(config: &ExperimentConfig, shard: Option<Shard>) -> Vec<Cell> {
    config
        .cells()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|s| i % s.count == s.index))
        .map(|(_, cell)| cell)
        .collect()
}

pub fn load_prompts(file: &ExperimentFile) -> Result<Vec<Prompt>> {
    let settings = &file.config.prompts;
    let prompts = match &file.prompts_file {
        Some(path) => prompts::from_jsonl(path)?,
        None => settings.set.unwrap_or(PromptSet::Builtin).prompts(),
    };
    let mut prompts = prompts::select(prompts, &settings.categories, settings.limit_per_category)?;
    if let Some(limit) = settings.limit {
        prompts.truncate(limit);
    }
    Ok(prompts)
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

/// The seed of a later turn: its own stream, the same for the baseline and every k.
fn turn_seed(seed: u64, turn: usize) -> u64 {
    run_seed(seed, turn, usize::MAX)
}

/// Runs the sweep and returns the result folder.
pub fn run(config_path: &Path, options: &RunOptions) -> Result<PathBuf> {
    let file = ExperimentFile::load(config_path)?;
    let mut folder = match &options.resume {
        Some(dir) => ResultFolder::resume(dir, &file, options.shard)?,
        None => {
            let plan = Plan::new(file, options.shard)?;
            let folder = ResultFolder::create(&plan, options)?;
            return finish(folder, &plan, options);
        }
    };
    let plan = Plan::new(file, folder.manifest.shard.as_deref().map(str::parse).transpose()?)?;
    folder.check_plan(&plan)?;
    finish(folder, &plan, options)
}

fn finish(mut folder: ResultFolder, plan: &Plan, options: &RunOptions) -> Result<PathBuf> {
    // A panic (a bug) is an error here like any other, so that a folder it leaves without a row
    // is removed as well.
    let executed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(plan, &folder, options.progress)))
            .unwrap_or_else(|_| {
                Err(Error::Usage(
                    "the sweep stopped on an internal error; finished rows are kept for --resume".into(),
                ))
            });
    match executed {
        Ok(executed) => {
            folder.manifest.finished = Some(now());
            folder.manifest.peak_resident_mib = crate::experiment::manifest::peak_resident_mib();
            if !executed.devices.is_empty() {
                folder.manifest.devices = executed.devices;
                folder.manifest.stop_token_ids = executed.stop_ids;
            }
            folder.manifest.write(&folder.dir)?;
            Ok(folder.dir.clone())
        }
        Err(error) => {
            folder.abandon();
            Err(error)
        }
    }
}

/// Everything a run needs, checked before any folder is made.
struct Plan {
    file: ExperimentFile,
    prompts: Vec<Prompt>,
    shard: Option<Shard>,
    cells: Vec<Cell>,
    models: RunModels,
}

impl Plan {
    fn new(file: ExperimentFile, shard: Option<Shard>) -> Result<Self> {
        let prompts = load_prompts(&file)?;
        let all = file.config.cells().len();
        let cells = cells(&file.config, shard);
        if let (true, Some(s)) = (cells.is_empty(), shard) {
            return Err(Error::Usage(format!(
                "--shard {}/{} has no cells: the sweep has {all} cells (indices 0..{all}), so use at most {all} shards",
                s.index, s.count
            )));
        }
        let drafters = file
            .drafters
            .iter()
            .filter_map(|d| Some(d.checkpoint.as_ref()?.identity().map(|id| (d.name.clone(), id))))
            .collect::<Result<_>>()?;
        let models = RunModels { target: file.target.identity()?, drafters };
        Ok(Self { file, prompts, shard, cells, models })
    }

    fn config(&self) -> &ExperimentConfig {
        &self.file.config
    }

    fn prompt_ids(&self) -> Vec<String> {
        self.prompts.iter().map(|p| p.id.clone()).collect()
    }

    fn prompts_sha256(&self) -> String {
        let text: Vec<String> = self.prompts.iter().map(Prompt::fingerprint).collect();
        sha256_hex(&text.join("\u{1e}"))
    }
}

/// A result folder held by this process.
struct ResultFolder {
    dir: PathBuf,
    manifest: Manifest,
    /// Whether this run made the folder (so that a run failing before its first row removes it).
    created: bool,
    _lock: FolderLock,
}

impl ResultFolder {
    /// Makes a new folder, exclusively: `--out DIR`, or `results/<name>/<run-id>` where two runs
    /// started in the same millisecond still get two folders.
    fn create(plan: &Plan, options: &RunOptions) -> Result<Self> {
        let config = plan.config();
        let shard_suffix = plan.shard.map(|s| format!("-shard{}of{}", s.index, s.count)).unwrap_or_default();
        let (dir, created) = match &options.out {
            Some(dir) => (dir.clone(), make_dir_exclusive(dir)?),
            None => {
                let parent = Path::new(&config.experiment.results_dir).join(&config.experiment.name);
                crate::files::create_dir(&parent)?;
                let stem = format!("{}{shard_suffix}", run_id());
                let dir = (1..)
                    .map(|n| if n == 1 { parent.join(&stem) } else { parent.join(format!("{stem}-{n}")) })
                    .find_map(|dir| match make_dir_exclusive(&dir) {
                        Ok(true) => Some(Ok(dir)),
                        Ok(false) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .expect("an unbounded range")?;
                (dir, true)
            }
        };
        let lock = FolderLock::acquire(&dir)?;
        // Checked under the lock: a concurrent run that got here first has written its manifest.
        if dir.join("manifest.json").exists() || dir.join("runs.csv").exists() {
            return Err(Error::Usage(format!(
                "{} already holds a run; use --resume {} to complete it",
                dir.display(),
                dir.display()
            )));
        }
        report_stale_lock(&lock, &dir);
        let build = Build::this();
        let manifest = Manifest {
            experiment: config.experiment.name.clone(),
            config: plan.file.text.clone(),
            config_sha256: sha256_hex(&plan.file.text),
            models: Some(plan.models.clone()),
            prompt_ids: plan.prompt_ids(),
            prompts_sha256: Some(plan.prompts_sha256()),
            stop_token_ids: Vec::new(),
            git_commit: build.commit_label(),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            build: Some(build),
            shard: plan.shard.map(|s| format!("{}/{}", s.index, s.count)),
            machine: Machine::this(),
            devices: Vec::new(),
            target_dtype: config.models.target.dtype.clone(),
            started: now(),
            finished: None,
            peak_resident_mib: None,
            resumed: Vec::new(),
            merged_from: Vec::new(),
        };
        manifest.write(&dir)?;
        Ok(Self { dir, manifest, created, _lock: lock })
    }

    /// Opens a folder to complete: same config byte for byte, same models as fingerprinted when
    /// it started, same shard (a shard folder resumes as its own shard without `--shard`).
    fn resume(dir: &Path, file: &ExperimentFile, shard: Option<Shard>) -> Result<Self> {
        if !dir.join("manifest.json").is_file() {
            return Err(Error::Usage(format!(
                "--resume {}: no run there (a result folder holds the manifest.json and runs.csv of an earlier run)",
                dir.display()
            )));
        }
        let lock = FolderLock::acquire(dir)?;
        report_stale_lock(&lock, dir);
        let manifest = Manifest::read(dir)?;
        let recorded = manifest.shard.as_deref().map(str::parse::<Shard>).transpose()?;
        if shard.is_some() && shard != recorded {
            return Err(Error::Usage(format!(
                "{} holds shard {}, not the one given with --shard",
                dir.display(),
                manifest.shard.as_deref().unwrap_or("(none: the whole sweep)")
            )));
        }
        if manifest.config_sha256 != sha256_hex(&file.text) {
            return Err(Error::Usage(format!(
                "{} was run with a different config (sha256 {}); resume needs the same file",
                dir.display(),
                manifest.config_sha256
            )));
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, created: false, _lock: lock })
    }

    /// The models and prompts of a resumed run must be those it started with: the same config
    /// text can name other weights through `$VARS`, and a prompts file can change.
    fn check_plan(&mut self, plan: &Plan) -> Result<()> {
        let mismatch = |what: String| Error::ModelIdentityMismatch { dir: self.dir.clone(), what };
        match &self.manifest.models {
            None => {
                return Err(mismatch(
                    "its manifest records no model fingerprints (made by an older specbench), so the models cannot be verified".into(),
                ));
            }
            Some(recorded) => {
                if let Some(what) = recorded.difference(&plan.models) {
                    return Err(mismatch(what));
                }
            }
        }
        if self.manifest.prompt_ids != plan.prompt_ids() {
            return Err(Error::Usage(format!(
                "{} was run on other prompts ({} recorded, {} now); resume needs the same prompts",
                self.dir.display(),
                self.manifest.prompt_ids.len(),
                plan.prompts.len()
            )));
        }
        if self.manifest.prompts_sha256.as_ref().is_some_and(|recorded| *recorded != plan.prompts_sha256()) {
            return Err(Error::Usage(format!(
                "{} was run on prompts with the same ids and other texts; resume needs the same prompts",
                self.dir.display()
            )));
        }
        self.manifest.resumed.push(now());
        self.manifest.write(&self.dir)
    }

    /// After a failure: a folder this run made and wrote no row into is removed, so a config
    /// or model error leaves nothing behind. Anything else is kept for `--resume`.
    fn abandon(&self) {
        let has_rows = read_rows(&self.dir.join("runs.csv")).is_ok_and(|rows| !rows.is_empty());
        if self.created && !has_rows {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `Ok(true)` when this call made `dir`; `Ok(false)` when it already existed (parents are made).
fn make_dir_exclusive(dir: &Path) -> Result<bool> {
    if let Some(file) = dir.ancestors().skip(1).find(|p| p.exists() && !p.is_dir()) {
        return Err(Error::Usage(format!(
            "cannot make the result folder {}: {} is a file, not a folder",
            dir.display(),
            file.display()
        )));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::files::create_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(crate::files::io_error("create folder", dir)(e)),
    }
}

/// A run id that sorts by start time, to the millisecond.
fn run_id() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().replace(':', "-")
}

fn report_stale_lock(lock: &FolderLock, dir: &Path) {
    if let Some(pid) = &lock.stale_owner {
        eprintln!(
            "note: {} was left locked by process {pid}, which is no longer running; taking it over",
            dir.display()
        );
    }
}

/// Runs every pending row of the plan into the folder.
fn execute(plan: &Plan, folder: &ResultFolder, show_progress: bool) -> Result<Executed> {
    let config = plan.config();
    let runs_path = folder.dir.join("runs.csv");
    let done = if runs_path.exists() { done_keys(&read_rows(&runs_path)?) } else { HashSet::new() };
    let mut writer = RowWriter::open(&runs_path)?;
    let repeats = config.experiment.repeats;
    let total = (plan.cells.len() * plan.prompts.len() * repeats) as u64;
    let progress = if show_progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rows, ETA {eta} {msg}")
            .expect("valid template"),
    );
    let (dtype, names) = (config.models.target.dtype.as_str(), config.drafter_names());
    let pending = |cell: &Cell, p: &Prompt, repeat| {
        let cell = cell.key(dtype, &names);
        !done.contains(&RowKey { cell, prompt_id: p.id.clone(), repeat })
    };
    let any_pending = |cells: &[Cell]| {
        cells.iter().any(|c| plan.prompts.iter().any(|p| (0..repeats).any(|r| pending(c, p, r))))
    };
    let rows_of = |cells: &[Cell]| (cells.len() * plan.prompts.len() * repeats) as u64;
    let mut devices = Vec::new();
    let mut stop_ids = Vec::new();
    for backend in config.backends() {
        let backend_cells: Vec<Cell> = plan.cells.iter().copied().filter(|c| c.backend == backend).collect();
        if !any_pending(&backend_cells) {
            progress.inc(rows_of(&backend_cells));
            continue;
        }
        progress.set_message(format!("loading models on {backend}"));
        let sweep = BackendSweep::load(plan, backend)?;
        devices.push(sweep.target.runtime().describe());
        stop_ids = sweep.stop_ids.clone();
        for temperature in config.temperatures() {
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
                for (index, prompt) in plan.prompts.iter().enumerate() {
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
    Ok(Executed { devices, stop_ids })
}

/// What a run learnt about its runtime, for the manifest.
struct Executed {
    devices: Vec<String>,
    /// Empty when every row was already done (a resume of a finished run).
    stop_ids: Vec<u32>,
}

/// What one backend's part of the sweep shares: the target, each drafter's models, and the
/// encoded prompts.
struct BackendSweep<'a> {
    plan: &'a Plan,
    target: LoadedModel,
    /// In the order of `ExperimentFile::drafters`.
    drafters: Vec<Box<dyn LoadedDrafter>>,
    encoded: Vec<Vec<u32>>,
    /// The target's stop tokens and the config's.
    stop_ids: Vec<u32>,
    /// The target's own stop tokens where `ban_eos` bans them, else none.
    banned_ids: Vec<u32>,
}

impl<'a> BackendSweep<'a> {
    /// Loads the target and the drafters on `backend` and checks, before any generation, that
    /// every prompt fits every model's context with every cell's max_new_tokens + k.
    fn load(plan: &'a Plan, backend: Backend) -> Result<Self> {
        let models = &plan.config().models;
        let seed = plan.config().experiment.seed;
        let runtime = Runtime::new(backend, &models.target.dtype)?;
        let target = LoadedModel::load(&plan.file.target, &runtime, seed)
            .map_err(|e| in_context(format!("loading target {}", plan.file.target), e))?;
        let drafters = plan
            .file
            .drafters
            .iter()
            .map(|drafter| {
                let context = DraftContext {
                    target: &target,
                    runtime: &runtime,
                    seed,
                    checkpoint: drafter.checkpoint.as_ref(),
                };
                drafter
                    .spec
                    .load(&context)
                    .map_err(|e| in_context(format!("loading drafter `{}`", drafter.name), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let encoded = plan
            .prompts
            .iter()
            .map(|p| {
                let ids = target.tokenizer.encode_prompt(p.first_turn(), plan.config().prompts.chat);
                ids.map_err(|e| in_context(format!("prompt `{}`", p.id), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let stop_ids = target.stop_ids(&plan.config().experiment.stop_token_ids);
        let banned_ids = if plan.config().experiment.ban_eos { target.stop_ids(&[]) } else { Vec::new() };
        let sweep = Self { plan, target, drafters, encoded, stop_ids, banned_ids };
        sweep.check_context()?;
        Ok(sweep)
    }

    /// Every position a cell can reach must be inside every model's context: the prompt, the
    /// new tokens, and (for k > 0) the k drafts verified after the last of them. A prompt of
    /// several turns is counted with every earlier turn's answer at max_new_tokens (and checked
    /// again with the real answers before each later turn).
    fn check_context(&self) -> Result<()> {
        let max_new = self.plan.config().experiment.max_new_tokens;
        let chat = self.plan.config().prompts.chat;
        for (prompt, ids) in self.plan.prompts.iter().zip(&self.encoded) {
            let (turns, mut tokens) = (prompt.turns.len(), ids.len());
            if turns > 1 {
                let empty_answers = vec![String::new(); turns - 1];
                let messages = prompt.conversation(&empty_answers);
                let conversation = self.target.tokenizer.encode_conversation(&messages, chat);
                tokens = conversation.map_err(|e| in_context(format!("prompt `{}`", prompt.id), e))?.len()
                    + (turns - 1) * max_new;
            }
            self.check_positions(&format!("prompt `{}`", prompt.id), tokens)?;
        }
        Ok(())
    }

    /// A turn of `prompt_tokens` tokens (`label` names it) fits every model with max_new_tokens
    /// and the most draft rows of a verify (the largest k or tree budget).
    fn check_positions(&self, label: &str, prompt_tokens: usize) -> Result<()> {
        let max_new = self.plan.config().experiment.max_new_tokens;
        let rows = self.plan.cells.iter().map(Cell::draft_rows).max().unwrap_or(0);
        let what = format!("{label} ({prompt_tokens} tokens) + max_new_tokens {max_new} + {rows} draft rows");
        let positions = prompt_tokens + max_new + rows;
        self.target.check_context("target", positions, &what)?;
        for (plan, drafter) in self.plan.file.drafters.iter().zip(&self.drafters) {
            if let Some(model) = drafter.model() {
                model.check_context(&format!("drafter `{}`", plan.name), positions, &what)?;
            }
        }
        Ok(())
    }

    /// One prompt in one cell: each turn generated after the model's own answers to the turns
    /// before it (as Spec-Bench runs MT-Bench), and the turns' tokens, times and counts added.
    fn generate(&self, cell: &Cell, prompt_index: usize, seed: u64) -> Result<Generation> {
        let prompt = &self.plan.prompts[prompt_index];
        let in_cell = |e| {
            let config = self.plan.config();
            let cell_key = cell.key(&config.models.target.dtype, &config.drafter_names());
            in_context(format!("prompt `{}`, cell {}", prompt.id, cell_key.label()), e)
        };
        let mut whole = self.generate_turn(cell, &self.encoded[prompt_index], seed).map_err(in_cell)?;
        let mut answers: Vec<String> = vec![self.target.tokenizer.decode(&whole.tokens)];
        for turn in 1..prompt.turns.len() {
            let messages = prompt.conversation(&answers);
            let ids = self.target.tokenizer.encode_conversation(&messages, self.plan.config().prompts.chat);
            let ids = ids.map_err(in_cell)?;
            self.check_positions(&format!("prompt `{}` turn {}", prompt.id, turn + 1), ids.len())?;
            let next = self.generate_turn(cell, &ids, turn_seed(seed, turn)).map_err(in_cell)?;
            answers.push(self.target.tokenizer.decode(&next.tokens));
            whole = whole.then(next);
        }
        Ok(whole)
    }

    fn generate_turn(&self, cell: &Cell, prompt: &[u32], seed: u64) -> Result<Generation> {
        let config = self.plan.config();
        let generation = GenerationConfig {
            max_new_tokens: config.experiment.max_new_tokens,
            sampling: SamplingConfig {
                temperature: cell.temperature,
                top_k: config.sweep.top_k,
                top_p: config.sweep.top_p,
            },
            eos_ids: self.stop_ids.clone(),
            banned_ids: self.banned_ids.clone(),
            seed,
        };
        let target = &self.target.model;
        match cell.draft {
            None => autoregressive::generate(target, prompt, &generation),
            Some((index, length)) => self.drafters[index].generate(target, length, prompt, &generation),
        }
    }

    fn row(&self, cell: &Cell, prompt: &Prompt, repeat: usize, seed: u64, g: &Generation) -> RunRow {
        let a = &g.acceptance;
        let t = &g.timings;
        let speculative = cell.draft.is_some();
        let config = self.plan.config();
        let key = cell.key(&config.models.target.dtype, &config.drafter_names());
        let draft = cell.draft.map(|(i, _)| self.plan.file.drafters[i].describe(&self.target.spec));
        RunRow {
            engine: ENGINE.into(),
            backend: cell.backend.name().into(),
            dtype: self.plan.config().models.target.dtype.clone(),
            target: self.target.spec.to_string(),
            draft: draft.unwrap_or_default(),
            drafter: key.drafter,
            prompt_id: prompt.id.clone(),
            category: prompt.category.clone(),
            temperature: cell.temperature,
            k: cell.k(),
            schedule: key.schedule,
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
            position_proposed: join_counts(&a.position_proposed),
            position_accepted: join_counts(&a.position_accepted),
            accepted_len_hist: join_counts(&a.accepted_len_hist),
            drafted_len_hist: join_counts(&a.drafted_len_hist),
            overlap_sum: speculative.then_some(a.overlap_sum),
            overlap_count: speculative.then_some(a.overlap_count),
            nodes: speculative.then_some(a.nodes),
        }
    }
}

fn in_context(context: String, error: Error) -> Error {
    Error::InCell { context, cause: Box::new(error) }
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
        let key = |c: &Cell| (c.temperature.to_bits(), c.k());
        let shards: Vec<Vec<Cell>> =
            (0..3).map(|i| cells(&config, Some(Shard { index: i, count: 3 }))).collect();
        let mut joined: Vec<_> = shards.iter().flatten().map(key).collect();
        joined.sort();
        let mut want: Vec<_> = all.iter().map(key).collect();
        want.sort();
        // Every cell in exactly one shard: equal as sorted lists, so no duplicate and no gap.
        assert_eq!(joined, want);
        assert!(shards.iter().all(|s| !s.is_empty()));
        assert!("2/2".parse::<Shard>().is_err() && "1/0".parse::<Shard>().is_err());
    }

    #[test]
    fn run_seeds_differ_by_prompt_and_repeat() {
        let seeds: HashSet<u64> = (0..10).flat_map(|p| (0..10).map(move |r| run_seed(1, p, r))).collect();
        assert_eq!(seeds.len(), 100);
    }
}
