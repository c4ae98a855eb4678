//! `specbench run / report / merge / baseline / check` end to end on the fixture pair.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use specbench::experiment::rows::{RowKey, read_rows};

fn specbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_specbench")).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {text}", out.status.code());
    text
}

fn fixture(name: &str) -> String {
    common::fixture_dir(name).display().to_string()
}

fn run_into(config: &str, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["run", config, "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(&specbench(&args))
}

/// Runs shards `0..run` of `count` of `config` into `tmp/shard{i}` and returns their folders.
fn run_shards(config: &str, tmp: &Path, run: usize, count: usize) -> Vec<PathBuf> {
    let shards: Vec<PathBuf> = (0..run).map(|i| tmp.join(format!("shard{i}"))).collect();
    for (i, dir) in shards.iter().enumerate() {
        run_into(config, dir, &["--shard", &format!("{i}/{count}")]);
    }
    shards
}

/// `specbench run CONFIG --out DIR` in the background, its output discarded.
fn spawn_run(config: &str, dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["run", config, "--out", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn keys(dir: &Path) -> Vec<RowKey> {
    read_rows(&dir.join("runs.csv")).unwrap().iter().map(|r| r.key()).collect()
}

/// 2 temperatures × (baseline + 2 k) × 4 prompts × 2 repeats.
const SWEEP_ROWS: usize = 48;

/// 2 temperatures × (baseline + 4 drafters × (k = 2, heuristic, confidence)) × 2 prompts.
const DRAFTER_ROWS: usize = 52;

#[test]
fn every_drafter_kind_and_schedule_sweeps_into_one_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let printed = run_into(&fixture("drafters.toml"), &dir, &[]);
    let rows = read_rows(&dir.join("runs.csv")).unwrap();
    assert_eq!(rows.len(), DRAFTER_ROWS, "{printed}");
    assert_eq!(rows.iter().map(|r| r.key()).collect::<HashSet<_>>().len(), DRAFTER_ROWS);
    let drafters: HashSet<&str> = rows.iter().map(|r| r.drafter.as_str()).collect();
    assert_eq!(drafters, HashSet::from(["", "small", "self-q8", "skip-1", "lookup"]));
    let schedules: HashSet<&str> = rows.iter().map(|r| r.schedule.as_str()).collect();
    assert_eq!(schedules, HashSet::from(["", "heuristic:1", "confidence:0.5"]));
    for row in rows.iter().filter(|r| r.k > 0) {
        assert_eq!(row.k, 2, "adaptive schedules are capped at the largest k: {row:?}");
        let drafted: Vec<u64> = row.drafted_len_hist.split(';').map(|n| n.parse().unwrap()).collect();
        assert_eq!(drafted.len(), 3, "{row:?}");
        assert_eq!(drafted.iter().sum::<u64>(), row.target_calls, "{row:?}");
        let proposed: u64 = drafted.iter().enumerate().map(|(n, c)| n as u64 * c).sum();
        assert_eq!(proposed, row.proposed, "{row:?}");
    }
    let described = |name: &str| rows.iter().find(|r| r.drafter == name).unwrap().draft.clone();
    assert!(described("self-q8").ends_with("as q8_0") && described("skip-1").ends_with("skipping layers 1"));
    assert_eq!(described("lookup"), "ngram 1..=2");
    let markdown = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for name in ["small", "self-q8", "skip-1", "lookup", "heuristic:1 ≤ 2", "refined", "drafted_len_hist"] {
        assert!(markdown.contains(name), "summary.md lacks {name}");
    }
    assert!(
        dir.join("plots/drafted_len_hist.svg").exists() && dir.join("plots/drafted_len_hist.png").exists()
    );
    // A finished run resumes to nothing new.
    ok(&specbench(&["run", &fixture("drafters.toml"), "--resume", dir.to_str().unwrap()]));
    assert_eq!(read_rows(&dir.join("runs.csv")).unwrap().len(), DRAFTER_ROWS);
}

#[test]
fn run_writes_the_whole_result_folder_and_report_reproduces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let printed = run_into(&fixture("sweep.toml"), &dir, &[]);
    assert!(printed.contains("speedup") && printed.contains(dir.to_str().unwrap()), "{printed}");

    let rows = read_rows(&dir.join("runs.csv")).unwrap();
    assert_eq!(rows.len(), SWEEP_ROWS);
    assert_eq!(rows.iter().map(|r| r.key()).collect::<HashSet<_>>().len(), SWEEP_ROWS);
    for row in &rows {
        assert_eq!(row.engine, "specbench");
        assert!(row.new_tokens > 0 && row.tokens_per_s > 0.0 && row.wall_s > 0.0);
        if row.k == 0 {
            assert_eq!((row.proposed, row.mean_accepted_len), (0, 1.0));
            assert!(row.draft.is_empty() && row.alpha.is_none());
        } else {
            // Every call drafts k, or fewer once fewer than k tokens remain before max_new_tokens
            // (an accepted EOS also ends the count); per position, the counts add up.
            let k = row.k as u64;
            assert!(row.proposed <= k * row.target_calls && row.proposed >= row.target_calls, "{row:?}");
            let per_position: u64 = row.position_proposed.split(';').map(|n| n.parse::<u64>().unwrap()).sum();
            assert_eq!(per_position, row.proposed, "{row:?}");
            assert!(row.alpha.is_some() && row.draft_s > 0.0);
        }
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    for field in [
        "config",
        "config_sha256",
        "git_commit",
        "crate_version",
        "machine",
        "devices",
        "started",
        "finished",
    ] {
        assert!(!manifest[field].is_null(), "manifest lacks {field}");
    }
    assert_eq!(manifest["config"].as_str().unwrap(), std::fs::read_to_string(fixture("sweep.toml")).unwrap());
    // The models were loaded, so the process held at least their megabytes at its peak.
    #[cfg(unix)]
    assert!(manifest["peak_resident_mib"].as_f64().is_some_and(|m| m > 1.0), "{manifest}");

    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert!(summary.starts_with(
        "engine,backend,dtype,drafter,schedule,category,temperature,k,n,mean_drafted,nodes_per_call,alpha"
    ));
    let markdown = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(markdown.contains("speedup [95% CI]") && markdown.contains("By prompt category"));
    let plots = ["speedup_vs_k", "tokens_per_s", "accepted_len_vs_k", "acceptance_by_position"];
    for plot in plots {
        for ext in ["png", "svg"] {
            let size = std::fs::metadata(dir.join("plots").join(format!("{plot}.{ext}"))).unwrap().len();
            assert!(size > 1000, "{plot}.{ext} is {size} bytes");
        }
    }
    assert!(!dir.join("plots/drafted_len_hist.svg").exists(), "fixed k drafts k at every step: no histogram");

    // Per-position acceptance: a CSV line per cell and position, and a specdec_bench profile per
    // speculative cell that passes that tool's own checks and agrees with the rows' τ.
    let positions = std::fs::read_to_string(dir.join("acceptance_by_position.csv")).unwrap();
    assert_eq!(positions.lines().count(), 1 + 2 * (1 + 3), "{positions}");
    let profiles: Vec<PathBuf> =
        std::fs::read_dir(dir.join("profiles")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(profiles.len(), 4, "{profiles:?}");
    for folder in profiles {
        let text = std::fs::read_to_string(folder.join("speculation_profile.json")).unwrap();
        let profile: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(profile["schema_version"], "1.0");
        assert_eq!(profile["method"], "draft_model");
        assert_eq!(profile["validation"]["mean_consistency"]["passed"], true, "{text}");
        assert_eq!(profile["validation"]["marginal_monotonicity"]["passed"], true, "{text}");
        let k = profile["num_speculative_tokens"].as_u64().unwrap() as usize;
        let t = profile["measurement_conditions"]["temperature"].as_f64().unwrap();
        let cell: Vec<_> = rows.iter().filter(|r| r.k == k && r.temperature == t).collect();
        let tau = cell.iter().map(|r| r.accepted + r.target_calls).sum::<u64>() as f64
            / cell.iter().map(|r| r.target_calls).sum::<u64>() as f64;
        assert!((profile["mean_accept_length"].as_f64().unwrap() - tau).abs() < 1e-5, "{text}");
        assert_eq!(profile["marginal_accept_rates"].as_array().unwrap().len(), k);
    }

    // `report` rebuilds the same summary from runs.csv alone.
    std::fs::remove_file(dir.join("summary.csv")).unwrap();
    std::fs::remove_dir_all(dir.join("plots")).unwrap();
    ok(&specbench(&["report", dir.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(dir.join("summary.csv")).unwrap(), summary);
    assert!(dir.join("plots/speedup_vs_k.svg").exists());
}

#[test]
fn check_passes_on_itself_and_on_the_committed_baseline_and_fails_on_a_doctored_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run_into(&fixture("sweep.toml"), &dir, &[]);
    let dir_arg = dir.to_str().unwrap();

    let own = tmp.path().join("baseline.json");
    ok(&specbench(&["baseline", dir_arg, "-o", own.to_str().unwrap()]));
    let printed = ok(&specbench(&["check", dir_arg, "--baseline", own.to_str().unwrap()]));
    assert!(printed.contains("no significant drop"), "{printed}");

    let committed = fixture("sweep.baseline.json");
    let printed = ok(&specbench(&["check", dir_arg, "--baseline", &committed]));
    assert!(printed.contains("no significant drop"), "{printed}");

    // A baseline claiming the sampled cells used to accept 90% of drafts.
    let mut doctored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&own).unwrap()).unwrap();
    for cell in doctored["cells"].as_array_mut().unwrap() {
        if cell["temperature"].as_f64() == Some(1.0) {
            let proposed = cell["proposed"].as_u64().unwrap();
            cell["accepted"] = (proposed * 9 / 10).into();
        }
    }
    let doctored_path = tmp.path().join("doctored.json");
    std::fs::write(&doctored_path, doctored.to_string()).unwrap();
    let out = specbench(&["check", dir_arg, "--baseline", doctored_path.to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("SIGNIFICANT DROP"), "{printed}");
}

#[test]
fn a_killed_run_resumes_without_losing_or_repeating_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let config = fixture("sweep-long.toml");
    let mut child = spawn_run(&config, &dir);
    let runs = dir.join("runs.csv");
    let start = Instant::now();
    let lines = |p: &PathBuf| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
    while lines(&runs) < 20 {
        assert!(start.elapsed() < Duration::from_secs(120), "the run never wrote 20 rows");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let before = read_rows(&runs).unwrap();
    let expected_total = 2 * 3 * 8 * 3;
    assert!(before.len() < expected_total, "killed too late to test resume");

    ok(&specbench(&["run", &config, "--resume", dir.to_str().unwrap()]));
    let after = read_rows(&runs).unwrap();
    assert_eq!(after.len(), expected_total);
    assert_eq!(&after[..before.len()], &before[..], "finished rows changed");
    assert_eq!(
        after.iter().map(|r| r.key()).collect::<HashSet<_>>().len(),
        expected_total,
        "duplicated rows"
    );
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"resumed\": [\n    \""), "{manifest}");
}

#[test]
fn resume_refuses_a_different_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run_into(&fixture("sweep.toml"), &dir, &[]);
    let out = specbench(&["run", &fixture("sweep-long.toml"), "--resume", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different config"));
}

#[test]
fn shards_merge_into_the_full_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture("sweep.toml");
    let shards = run_shards(&config, tmp.path(), 3, 3);
    let merged = tmp.path().join("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(|d| d.to_str().unwrap()));
    args.extend(["-o", merged.to_str().unwrap()]);
    ok(&specbench(&args));
    let mut merged_keys = keys(&merged);
    merged_keys.sort();
    let full = tmp.path().join("full");
    run_into(&config, &full, &[]);
    let mut full_keys = keys(&full);
    full_keys.sort();
    assert_eq!(merged_keys, full_keys);
    assert!(shards.iter().all(|d| keys(d).len() < SWEEP_ROWS));
    assert!(merged.join("summary.md").exists());

    // A shard folder resumes as its own shard: nothing else is added to it.
    let before = keys(&shards[1]);
    ok(&specbench(&["run", &config, "--resume", shards[1].to_str().unwrap()]));
    assert_eq!(keys(&shards[1]), before);
    let out = specbench(&["run", &config, "--resume", shards[1].to_str().unwrap(), "--shard", "0/3"]);
    assert_eq!(out.status.code(), Some(1), "resuming shard 1 as shard 0 must fail");
}

/// `specbench run CONFIG` with the models under a folder that does not exist: exit 1, no panic,
/// no result folder, and stderr naming what to put where.
fn fails_without_weights(config: &str, expected: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["run", root.join("configs").join(config).to_str().unwrap()])
        .env("SPECBENCH_MODELS", "/nonexistent/models")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for text in expected {
        assert!(stderr.contains(text), "{config}: `{text}` not in {stderr}");
    }
    assert!(!root.join("results").join(config.trim_end_matches(".toml")).exists());
}

#[test]
fn the_llama3_configs_say_which_file_to_put_where() {
    fails_without_weights(
        "llama3-8b-1b.toml",
        &["/nonexistent/models/Llama-3.1-8B-Instruct", "config.json", "tokenizer.json"],
    );
    fails_without_weights(
        "llama3-8b-1b-gguf.toml",
        &["/nonexistent/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"],
    );
}

/// Every config under configs/ parses (read from the folder, so a new one cannot be left out).
#[test]
fn shipped_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            specbench::experiment::config::ExperimentConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            parsed += 1;
        }
    }
    assert!(parsed >= 9, "only {parsed} configs found in {}", dir.display());
}

#[test]
fn a_bad_config_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = "[prompts]\nlimit = 4";
    for (from, to, expected) in [
        ("k = [1, 3]", "k = [1, 3]\nbogus = 1", "bogus"),
        (prompts, "[prompts]\nset = \"spec_bench\"", "spec-bench"),
        (prompts, "[prompts]\nset = \"spec-bench\"\ncategories = [\"poetry\"]", "prompts.categories"),
        (prompts, "[prompts]\nset = \"spec-bench\"\nlimit_per_category = 0", "prompts.limit_per_category"),
        (prompts, "[prompts]\nset = \"builtin\"\nfile = \"p.jsonl\"", "prompts.set"),
    ] {
        let path = sweep_copy(tmp.path(), &[(from, to)]);
        let out = specbench(&["run", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        assert!(stderr.contains(expected) && !stderr.contains("panicked"), "{to}: {stderr}");
    }
}

#[test]
fn the_embedded_pair_keeps_its_acceptance_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run_into(&fixture("tiny-check.toml"), &dir, &[]);
    let printed =
        ok(&specbench(&["check", dir.to_str().unwrap(), "--baseline", &fixture("tiny-check.baseline.json")]));
    assert!(printed.contains("no significant drop"), "{printed}");
}

#[test]
fn the_embedded_target_has_at_least_five_times_the_draft_parameters() {
    use specbench::model::LlamaConfig;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let params =
        |name: &str| LlamaConfig::from_file(&root.join(name).join("config.json")).unwrap().num_parameters();
    let (target, draft) = (params("target"), params("draft"));
    assert!(target >= 5.0 * draft, "target {target} vs draft {draft}");
}

/// sweep.toml copied to `tmp` with absolute model paths, results under `tmp/results`, and
/// `edits` (from, to) applied to its text.
fn sweep_copy(tmp: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(fixture("sweep.toml"))
        .unwrap()
        .replace("path = \"tiny-gqa\"", &format!("path = {:?}", fixture("tiny-gqa")))
        .replace("path = \"tiny-untied-bf16\"", &format!("path = {:?}", fixture("tiny-untied-bf16")))
        .replace(
            "max_new_tokens = 10",
            &format!("max_new_tokens = 10\nresults_dir = {:?}", tmp.join("results").display().to_string()),
        );
    for (from, to) in edits {
        assert!(text.contains(from), "sweep.toml has no `{from}`");
        text = text.replace(from, to);
    }
    let path = tmp.join(format!("sweep-{}.toml", edits.len()));
    std::fs::write(&path, text).unwrap();
    path
}

fn failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn two_runs_started_together_write_two_folders_of_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let config = sweep_copy(tmp.path(), &[]);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_specbench"))
            .args(["run", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let folders: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("results/fixture-sweep"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    for dir in &folders {
        let keys = keys(dir);
        assert_eq!(keys.len(), SWEEP_ROWS, "{}", dir.display());
        assert_eq!(
            keys.iter().collect::<HashSet<_>>().len(),
            SWEEP_ROWS,
            "duplicated rows in {}",
            dir.display()
        );
    }
}

#[test]
fn a_folder_being_written_refuses_a_second_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let config = fixture("sweep-long.toml");
    let mut child = spawn_run(&config, &dir);
    let start = Instant::now();
    while !dir.join("runs.csv").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "the run never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = specbench(&["run", &config, "--resume", dir.to_str().unwrap()]);
    let stderr = failure(&out);
    assert!(
        stderr.contains("being written by process") && stderr.contains(&child.id().to_string()),
        "{stderr}"
    );
    let out = specbench(&["run", &config, "--out", dir.to_str().unwrap()]);
    assert!(failure(&out).contains("being written"));
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed writer's lock is stale now: a resume takes it over, says so, and completes.
    let out = specbench(&["run", &config, "--resume", dir.to_str().unwrap()]);
    let text = ok(&out);
    assert!(text.contains("no longer running"), "{text}");
    let rows = keys(&dir);
    assert_eq!(rows.len(), rows.iter().collect::<HashSet<_>>().len(), "duplicated rows");
}

#[test]
fn resume_refuses_other_models_behind_the_same_config() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let copy = |name: &str| {
        let to = models.join(name);
        std::fs::create_dir(&to).unwrap();
        common::copy_files(&common::fixture_dir(name), &to);
    };
    copy("tiny-gqa");
    copy("tiny-untied-bf16");
    let target = models.join("tiny-gqa").display().to_string();
    let config = sweep_copy(
        tmp.path(),
        &[(&format!("path = {:?}", fixture("tiny-gqa")), &format!("path = {target:?}"))],
    );
    let dir = tmp.path().join("run");
    ok(&specbench(&["run", config.to_str().unwrap(), "--out", dir.to_str().unwrap()]));
    // The same files elsewhere are the same model, so a resume of a finished run is a no-op.
    ok(&specbench(&["run", config.to_str().unwrap(), "--resume", dir.to_str().unwrap()]));
    // Weights changed under the same path: another model.
    let norm = models.join("tiny-gqa/config.json");
    let text =
        std::fs::read_to_string(&norm).unwrap().replace("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 2e-05");
    std::fs::write(&norm, text).unwrap();
    let stderr = failure(&specbench(&["run", config.to_str().unwrap(), "--resume", dir.to_str().unwrap()]));
    assert!(stderr.contains("other models") && stderr.contains("changed on disk"), "{stderr}");
    // The config back, and one weight byte rewritten in place: same headers, other weights.
    let text =
        std::fs::read_to_string(&norm).unwrap().replace("\"rms_norm_eps\": 2e-05", "\"rms_norm_eps\": 1e-05");
    std::fs::write(&norm, text).unwrap();
    ok(&specbench(&["run", config.to_str().unwrap(), "--resume", dir.to_str().unwrap()]));
    let weights = models.join("tiny-gqa/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let stderr = failure(&specbench(&["run", config.to_str().unwrap(), "--resume", dir.to_str().unwrap()]));
    assert!(stderr.contains("same headers, other weights"), "{stderr}");
}

#[test]
fn resume_and_merge_refuse_prompts_whose_texts_changed_under_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    let write = |second: &str| {
        let lines = [
            serde_json::json!({"id": "a", "category": "code", "prompt": "def f(x):"}),
            serde_json::json!({"id": "b", "category": "chat", "prompt": second}),
        ];
        std::fs::write(&prompts, lines.map(|l| l.to_string()).join("\n")).unwrap();
    };
    write("Hello there");
    let config = sweep_copy(tmp.path(), &[("limit = 4", "file = \"prompts.jsonl\"")]);
    let dir = tmp.path().join("run");
    ok(&specbench(&["run", config.to_str().unwrap(), "--out", dir.to_str().unwrap()]));
    write("Goodbye now");
    let stderr = failure(&specbench(&["run", config.to_str().unwrap(), "--resume", dir.to_str().unwrap()]));
    assert!(stderr.contains("same ids and other texts"), "{stderr}");
    let other = tmp.path().join("other");
    ok(&specbench(&["run", config.to_str().unwrap(), "--out", other.to_str().unwrap()]));
    let merged = tmp.path().join("merged");
    let out =
        specbench(&["merge", dir.to_str().unwrap(), other.to_str().unwrap(), "-o", merged.to_str().unwrap()]);
    assert!(failure(&out).contains("other texts"));
}

#[test]
fn merge_of_missing_shards_says_what_is_missing_and_is_not_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture("sweep.toml");
    let shards = run_shards(&config, tmp.path(), 2, 3);
    let merged = tmp.path().join("merged");
    let out = specbench(&[
        "merge",
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    let stderr = failure(&out);
    assert!(stderr.contains("incomplete") && stderr.contains("prompt"), "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["finished"].is_null(), "{manifest}");

    // Runs of different configs are refused as such.
    let other = tmp.path().join("other");
    run_into(sweep_copy(tmp.path(), &[("seed = 7", "seed = 8")]).to_str().unwrap(), &other, &[]);
    let out = specbench(&[
        "merge",
        shards[0].to_str().unwrap(),
        other.to_str().unwrap(),
        "-o",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(failure(&out).contains("different configs"));
}

#[test]
fn check_refuses_a_baseline_of_another_experiment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run_into(&fixture("sweep.toml"), &dir, &[]);
    let baseline = tmp.path().join("baseline.json");
    ok(&specbench(&["baseline", dir.to_str().unwrap(), "-o", baseline.to_str().unwrap()]));
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    value["experiment"] = "another".into();
    std::fs::write(&baseline, value.to_string()).unwrap();
    let out = specbench(&["check", dir.to_str().unwrap(), "--baseline", baseline.to_str().unwrap()]);
    assert!(failure(&out).contains("another"));
    value["experiment"] = "fixture-sweep".into();
    value["models"]["drafters"]["draft"]["fingerprint"] = "0000".into();
    std::fs::write(&baseline, value.to_string()).unwrap();
    let out = specbench(&["check", dir.to_str().unwrap(), "--baseline", baseline.to_str().unwrap()]);
    assert!(failure(&out).contains("other models"));
}

#[test]
fn a_run_that_cannot_start_leaves_no_folder_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    // Every prompt is checked against the 256-token context before any row is written.
    let long = sweep_copy(tmp.path(), &[("max_new_tokens = 10", "max_new_tokens = 250")]);
    let dir = tmp.path().join("run");
    let stderr = failure(&specbench(&["run", long.to_str().unwrap(), "--out", dir.to_str().unwrap()]));
    assert!(
        stderr.contains("prompt `") && stderr.contains("context of 256") && stderr.contains("3 draft rows"),
        "{stderr}"
    );
    assert!(!dir.exists(), "a failed start left {}", dir.display());
    // A shard with no cells.
    let stderr = failure(&specbench(&[
        "run",
        &fixture("sweep.toml"),
        "--out",
        dir.to_str().unwrap(),
        "--shard",
        "40/48",
    ]));
    assert!(stderr.contains("no cells"), "{stderr}");
    // Duplicate sweep values.
    let twice = sweep_copy(tmp.path(), &[("k = [1, 3]", "k = [1, 3, 3]")]);
    assert!(failure(&specbench(&["run", twice.to_str().unwrap()])).contains("twice"));
    assert!(!tmp.path().join("results").exists());
}

#[test]
fn result_folder_mistakes_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let config = sweep_copy(tmp.path(), &[]);
    let config = config.to_str().unwrap();
    // --out below a file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("run");
    let stderr = failure(&specbench(&["run", config, "--out", out.to_str().unwrap()]));
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    // --resume of a folder that holds no run.
    let missing = tmp.path().join("no-run");
    let stderr = failure(&specbench(&["run", config, "--resume", missing.to_str().unwrap()]));
    assert!(stderr.contains("no run there"), "{stderr}");
    // --resume and --out together.
    let out = specbench(&["run", config, "--resume", missing.to_str().unwrap(), "--out", "x"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{:?}", out);
}

#[test]
fn a_two_turn_prompt_asks_its_second_turn_after_the_models_own_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("turns.jsonl");
    let lines = [
        serde_json::json!({"id": "two", "category": "mt_bench", "turns": ["Tell me about rivers.", "Now about lakes."]}),
        serde_json::json!({"id": "one", "category": "qa", "prompt": "Why is the sea salty?"}),
    ];
    std::fs::write(&prompts, lines.map(|l| l.to_string()).join("\n")).unwrap();
    let config = sweep_copy(
        tmp.path(),
        &[("[prompts]\nlimit = 4", &format!("[prompts]\nfile = {:?}", prompts.display().to_string()))],
    );
    let dir = tmp.path().join("run");
    run_into(config.to_str().unwrap(), &dir, &[]);
    let rows = read_rows(&dir.join("runs.csv")).unwrap();
    assert_eq!(rows.len(), 2 * 3 * 2 * 2);
    for row in rows.iter().filter(|r| r.prompt_id == "two") {
        // Both turns' tokens and target calls are counted (10 new tokens a turn at most).
        assert!(row.new_tokens > 10 && row.new_tokens <= 20, "{row:?}");
        assert!(row.target_calls as usize >= if row.k == 0 { row.new_tokens - 2 } else { 2 }, "{row:?}");
    }
    // Greedy speculative decoding reproduces the baseline's two answers token for token; the
    // second turn depends on the first answer, so equal counts on both turns is the check here
    // (tests/speculative.rs checks the tokens of single turns).
    let greedy = |k: usize| {
        rows.iter()
            .find(|r| r.prompt_id == "two" && r.temperature == 0.0 && r.k == k && r.repeat == 0)
            .unwrap()
            .new_tokens
    };
    assert_eq!(greedy(1), greedy(0));
    assert_eq!(greedy(3), greedy(0));
    let markdown = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(markdown.contains("mt_bench"), "{markdown}");
}
