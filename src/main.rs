//! The `specbench` command line: errors become one readable line and exit code 1.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use specbench::backend::ExecutorKind;
use specbench::backend::{Backend, Runtime};
use specbench::decoding::drafters::DrafterSpec;
use specbench::decoding::tree::TreeShape;
use specbench::experiment::config::ExperimentFile;
use specbench::experiment::generate::Request;
use specbench::experiment::runner::{RunOptions, Shard, load_prompts, run as run_sweep};
use specbench::load::{LoadedModel, ModelSpec};
use specbench::measure;
use specbench::report::regression::{Baseline, Verdict, check, format_check};
use specbench::report::{cell_table, merge, write_report};
use specbench::sampling::SamplingConfig;

/// The crate version and the commit the binary was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SPECBENCH_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "specbench", version = VERSION, about = "Speculative decoding research and benchmarking harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, target-only or with a draft model, and print speed and
    /// acceptance statistics.
    Generate(GenerateArgs),
    /// Run an experiment config: every backend × temperature × k cell, baseline included.
    Run {
        config: PathBuf,
        /// Complete an interrupted run in this result folder.
        #[arg(long, conflicts_with = "out")]
        resume: Option<PathBuf>,
        /// Run only the cells i, i + n, i + 2n, ... (0-based), e.g. 0/4.
        #[arg(long)]
        shard: Option<String>,
        /// Result folder (default: results/<name>/<run-id>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the prompts a config runs, as JSONL (for peer engines and notebooks).
    Prompts {
        config: PathBuf,
        /// Add what the target is given: `text` (the chat template rendered when the config
        /// says `chat = true`) and its token `ids`, so that a peer engine gets the same input.
        #[arg(long)]
        rendered: bool,
    },
    /// Rebuild summary.csv, summary.md and plots/ from a result folder's runs.csv.
    Report { dir: PathBuf },
    /// Join shard result folders into one.
    Merge {
        dirs: Vec<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Store a result folder's per-cell acceptance counts as a regression baseline.
    Baseline {
        dir: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Test a result folder's acceptance rates against a baseline; exit 1 on a significant drop.
    Check {
        dir: PathBuf,
        #[arg(long)]
        baseline: PathBuf,
    },
    /// Measure the engine itself: the device's read bandwidth, or the cost of one forward of
    /// 1..n tokens on a filled cache (decode and verify). Prints CSV, or appends it to --out.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Best-of-N read bandwidth of the backend's device (a sum over a buffer), in GB/s.
    Bandwidth {
        #[arg(long, default_value = "ndarray")]
        backend: String,
        /// Buffer size in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        #[arg(long, default_value_t = 10)]
        repeats: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Median time of a forward of 1..=max-tokens tokens (or of each of --rows) after --context
    /// cached tokens: the verify curve.
    Forward {
        /// Checkpoint folder or random:PRESET.
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "ndarray")]
        backend: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value_t = 256)]
        context: usize,
        #[arg(long, default_value_t = 16)]
        max_tokens: usize,
        /// Rows per forward to time instead of 1..=max-tokens: counts and ranges, e.g.
        /// `1-16,32,64` (each at most 256).
        #[arg(long, conflicts_with = "max_tokens")]
        rows: Option<String>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct GenerateArgs {
    /// Hugging Face checkpoint folder, GGUF file (`.gguf`), or random:PRESET (llama3.2-1b,
    /// llama3.2-3b, llama3.1-8b, custom,hidden=..,layers=..).
    #[arg(long, visible_alias = "target")]
    model: String,
    /// Draft model (same forms as --model), in --dtype; enables speculative decoding. Short
    /// for `--drafter model:PATH`.
    #[arg(long, conflicts_with = "drafter")]
    draft: Option<String>,
    /// Any kind of drafter: `model:PATH`, `self:DTYPE` (the target in q8_0, q4_0, bf16, ...),
    /// `skip:LAYERS` or `keep:LAYERS` (like `4-7,9`), `ngram:MIN-MAX[:counts]`.
    #[arg(long)]
    drafter: Option<String>,
    /// Draft tokens proposed per target forward.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Draft a tree per target forward instead of k tokens: `budget:NODES,depth:LEVELS`
    /// (optionally `,width:NODES_PER_LEVEL`).
    #[arg(long, conflicts_with = "k")]
    tree: Option<String>,
    #[arg(long)]
    prompt: String,
    /// Wrap --prompt as one user turn of the model's chat template (tokenizer_config.json,
    /// chat_template.jinja, or the GGUF file's `tokenizer.chat_template`).
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Keep going past end-of-sequence tokens: every run makes exactly --max-new-tokens (for
    /// timing). The model may still emit them; llama.cpp's `--ignore-eos` is `--ban-eos`.
    #[arg(long)]
    ignore_eos: bool,
    /// Never generate the model's end-of-generation tokens (their logits taken as −∞), as
    /// llama.cpp's `--ignore-eos` does: the same tokens as llama.cpp at T = 0.
    #[arg(long, conflicts_with = "ignore_eos")]
    ban_eos: bool,
    /// A token id that also ends generation, besides the model's eos_token_id (repeatable).
    #[arg(long = "stop-token-id")]
    stop_token_ids: Vec<u32>,
    /// Print one JSON object (prompt and generated ids, accepted drafts per target call,
    /// timings, acceptance, top logits) on stdout instead of the text.
    #[arg(long)]
    json: bool,
    /// With --json: the N largest target logits (ids and values) at each of the first
    /// --logit-positions generated positions, from one forward over prompt and output.
    #[arg(long, default_value_t = 0)]
    top_logits: usize,
    #[arg(long, default_value_t = 8)]
    logit_positions: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ndarray or flex (CPU), or wgpu (GPU; needs the `wgpu` cargo feature).
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// f32, f16 or bf16 (f16/bf16 where the backend supports them), or q8_0 / q4_0: float weights
    /// quantized on load (CPU backends). A GGUF file's quantized tensors always stay as stored.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Who multiplies the linear layers: `host` (specbench's kernel; CPU backends in f32) or
    /// `backend` (Burn's matmul). Default: host wherever it applies.
    #[arg(long)]
    projections: Option<String>,
}

fn main() -> ExitCode {
    // `--version` also names the kernel path, which is decided on the CPU it runs on.
    let version = format!("{VERSION}, {} kernels", specbench::kernels::cpu::describe());
    let matches = Cli::command().version(&*Box::leak(version.into_boxed_str())).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    specbench::files::exit_cleanly_on_sigbus();
    // A panic is a bug, not the input's fault: one line naming where, and exit code 1. (The
    // backend probe swaps this hook while it runs, and restores it.)
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!(
            "error: internal error{place}: {message}; please report it with the command that caused it"
        );
    }));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(code)) => code,
        Ok(Err(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Generate(args) => generate(args).map(|_| ExitCode::SUCCESS),
        Command::Run { config, resume, shard, out } => {
            let options = RunOptions {
                resume,
                shard: shard.as_deref().map(str::parse::<Shard>).transpose()?,
                out,
                progress: std::io::stderr().is_terminal(),
            };
            let dir =
                run_sweep(&config, &options).with_context(|| format!("running {}", config.display()))?;
            report(&dir)
        }
        Command::Report { dir } => report(&dir),
        Command::Prompts { config, rendered } => {
            let file = ExperimentFile::load(&config)?;
            let tokenizer = rendered.then(|| file.target.tokenizer()).transpose()?;
            for prompt in load_prompts(&file)? {
                let mut line = serde_json::to_value(&prompt)?;
                if let Some(tokenizer) = &tokenizer {
                    let chat = file.config.prompts.chat;
                    // Of the first turn: later ones follow the model's own answers.
                    let first = prompt.first_turn();
                    let text = if chat { tokenizer.render_chat(first)? } else { first.to_string() };
                    line["text"] = text.into();
                    line["ids"] = tokenizer.encode_prompt(first, chat)?.into();
                }
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge { dirs, out } => {
            let merged = merge(&dirs, &out)?;
            report_paths(&out);
            if merged.missing.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            let shown: Vec<String> = merged
                .missing
                .iter()
                .take(5)
                .map(|m| format!("{} prompt `{}` repeat {}", m.cell.label(), m.prompt_id, m.repeat))
                .collect();
            eprintln!(
                "error: the merged run is incomplete, not marked finished: {} rows the config expects are in no folder (first: {}); complete the shard that holds them with --resume and merge again",
                merged.missing.len(),
                shown.join("; ")
            );
            Ok(ExitCode::FAILURE)
        }
        Command::Baseline { dir, out } => {
            let baseline = Baseline::from_run(&dir)?;
            baseline.write(&out)?;
            println!("baseline of {} cells written to {}", baseline.cells.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(what) => bench(what).map(|_| ExitCode::SUCCESS),
        Command::Check { dir, baseline } => {
            let baseline = Baseline::read(&baseline)?;
            let rows = check(&baseline, &dir)?;
            print!("{}", format_check(&rows, baseline.significance));
            let failed = rows.iter().filter(|r| r.verdict != Verdict::Pass).count();
            if failed == 0 {
                println!("acceptance rates hold: {} cells, no significant drop", rows.len());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{failed} of {} cells dropped significantly or are missing", rows.len());
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// CSV rows to stdout, or appended to `out`.
fn print_or_append<T: serde::Serialize>(rows: &[T], out: &Option<PathBuf>) -> Result<()> {
    match out {
        Some(path) => Ok(measure::append_csv(path, rows)?),
        None => {
            let mut writer = csv::Writer::from_writer(std::io::stdout());
            rows.iter().try_for_each(|r| writer.serialize(r))?;
            Ok(writer.flush()?)
        }
    }
}

fn bench(what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Bandwidth { backend, mib, repeats, out } => {
            if mib == 0 || mib > 64 * 1024 || repeats > 1000 {
                anyhow::bail!("--mib must be in 1..=65536 and --repeats at most 1000");
            }
            let runtime = Runtime::new(backend.parse()?, "f32")?;
            let bytes = mib << 20;
            let gb_per_s = measure::read_bandwidth(&runtime, bytes, repeats)?;
            let row = measure::Bandwidth { backend, device: runtime.describe(), bytes, gb_per_s };
            print_or_append(&[row], &out)
        }
        BenchCommand::Forward { model, backend, dtype, context, max_tokens, rows, repeats, out } => {
            if max_tokens == 0 || max_tokens > measure::MAX_FORWARD_ROWS || repeats > 1000 {
                anyhow::bail!("--max-tokens must be in 1..=256 and --repeats at most 1000");
            }
            let rows = match rows {
                Some(text) => measure::parse_row_counts(&text).map_err(|e| anyhow::anyhow!("--rows: {e}"))?,
                None => (1..=max_tokens).collect(),
            };
            let longest = rows.iter().copied().max().unwrap_or(1);
            let runtime = Runtime::new(backend.parse()?, &dtype)?;
            let spec: ModelSpec = model.parse()?;
            let loaded =
                LoadedModel::load(&spec, &runtime, 0).with_context(|| format!("loading model {spec}"))?;
            loaded.check_context(
                "benchmarked",
                context.saturating_add(longest),
                &format!("--context {context} + {longest} rows"),
            )?;
            print_or_append(&measure::forward_costs(&loaded, context, &rows, repeats)?, &out)
        }
    }
}

/// Writes the summary and plots of `dir` and prints the table and where everything is.
fn report(dir: &std::path::Path) -> Result<ExitCode> {
    let summary = write_report(dir)?;
    if dir.join(specbench::report::verify_curve::FILE).exists() {
        print!("{}", std::fs::read_to_string(dir.join("verify_curve.md"))?);
        if summary.is_empty() {
            println!(
                "
plots: {}",
                dir.join("plots").join("verify_curve.png").display()
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    print!("{}", cell_table(&summary));
    report_paths(dir);
    Ok(ExitCode::SUCCESS)
}

fn report_paths(dir: &std::path::Path) {
    println!("\nresults: {}", dir.display());
    println!("  runs.csv, summary.csv, summary.md, manifest.json, acceptance_by_position.csv, profiles/");
    println!("  plots: {}", dir.join("plots").display());
}

fn generate(args: GenerateArgs) -> Result<()> {
    let backend: Backend = args.backend.parse()?;
    let mut runtime = Runtime::new(backend, &args.dtype)?;
    if let Some(name) = &args.projections {
        runtime = runtime.with_executor(name.parse::<ExecutorKind>()?)?;
    }
    let drafter = match (&args.draft, &args.drafter) {
        (Some(path), _) => Some(format!("model:{path}").parse::<DrafterSpec>()?),
        (None, Some(text)) => Some(text.parse::<DrafterSpec>()?),
        (None, None) => None,
    };
    let request = Request {
        model: args.model.parse()?,
        drafter,
        k: args.k,
        tree: args
            .tree
            .as_deref()
            .map(TreeShape::parse)
            .transpose()
            .map_err(|why| anyhow::anyhow!("--tree {why}"))?,
        prompt: args.prompt.clone(),
        chat: args.chat,
        max_new_tokens: args.max_new_tokens,
        ignore_eos: args.ignore_eos,
        ban_eos: args.ban_eos,
        stop_token_ids: args.stop_token_ids.clone(),
        sampling: SamplingConfig { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p },
        seed: args.seed,
        top_logits: if args.json { args.top_logits } else { 0 },
        logit_positions: args.logit_positions,
    };
    if args.top_logits > 0 && !args.json {
        anyhow::bail!("--top-logits goes with --json");
    }
    let report = specbench::experiment::generate::generate(&request, &runtime)
        .with_context(|| format!("generating with {}", args.model))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}{}", args.prompt, report.text);
        eprintln!("\n{}", report.summary);
    }
    Ok(())
}
