//! Turning `runs.csv` into `summary.csv`, `summary.md` and `plots/`; merging shards; acceptance
//! regression checks. Everything here reads the result folder alone.

pub mod plots;
pub mod profile;
pub mod regression;
pub mod summary;
pub mod verify_curve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::experiment::config::ExperimentConfig;
use crate::experiment::lock::FolderLock;
use crate::experiment::manifest::Manifest;
use crate::experiment::prompts::SPEC_BENCH_TASKS;
use crate::experiment::rows::{RowKey, RowWriter, RunRow, read_rows};
use summary::{ALL, SummaryRow, summarize};

/// Rebuilds the summary and plots of a result folder from its `runs.csv`, and the verify curve
/// from its `verify_curve.csv` where it has one (a folder may hold either or both; with the
/// curve alone the summary is empty).
pub fn write_report(dir: &Path) -> Result<Vec<SummaryRow>> {
    let curve = dir.join(verify_curve::FILE).exists();
    if curve {
        verify_curve::write(dir)?;
        if !dir.join("runs.csv").exists() {
            return Ok(Vec::new());
        }
    }
    let rows = read_rows(&dir.join("runs.csv"))?;
    if rows.is_empty() {
        return Err(Error::MalformedFile { path: dir.join("runs.csv"), message: "no rows".into() });
    }
    let summary = summarize(&rows);
    write_summary_csv(&summary, &dir.join("summary.csv"))?;
    let manifest = Manifest::read(dir).ok();
    let markdown = summary_markdown(&summary, manifest.as_ref());
    crate::files::write_text(&dir.join("summary.md"), &markdown)?;
    profile::write_all(&rows, manifest.as_ref(), dir)?;
    plots::write_all(&summary, &rows, &dir.join("plots"))?;
    Ok(summary)
}

fn write_summary_csv(summary: &[SummaryRow], path: &Path) -> Result<()> {
    let csv_error = |e: csv::Error| Error::MalformedFile { path: path.to_path_buf(), message: e.to_string() };
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    for row in summary {
        writer.serialize(row).map_err(csv_error)?;
    }
    writer.flush().map_err(crate::files::io_error("write", path))
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("—".into(), |v| format!("{v:.digits$}"))
}

fn speedup_cell(row: &SummaryRow) -> String {
    match (row.speedup, row.speedup_ci_low, row.speedup_ci_high) {
        (Some(s), Some(lo), Some(hi)) => format!("{s:.2}× [{lo:.2}, {hi:.2}]"),
        (Some(s), ..) => format!("{s:.2}×"),
        _ => "—".into(),
    }
}

pub fn summary_markdown(summary: &[SummaryRow], manifest: Option<&Manifest>) -> String {
    let mut out = String::new();
    if let Some(m) = manifest {
        out += &format!("# {}\n\n", m.experiment);
        out += &format!(
            "Machine: {} ({} cores, {} GiB); devices: {}. Commit `{}`, specbench {}, config sha256 `{}`. Started {}, finished {}{}.\n\n",
            m.machine.cpu,
            m.machine.cores,
            m.machine.memory_gib,
            if m.devices.is_empty() { "—".into() } else { m.devices.join("; ") },
            m.git_commit,
            m.crate_version,
            &m.config_sha256[..12.min(m.config_sha256.len())],
            m.started,
            m.finished.as_deref().unwrap_or("(unfinished)"),
            m.peak_resident_mib.map_or(String::new(), |mib| format!("; peak resident memory {mib:.0} MiB"))
        );
    }
    out += "Speedup = tokens/s of the cell ÷ tokens/s of target-only decoding (k = 0) on the same backend, \
            temperature, prompts and seeds, end to end (prefill of both models included; \"decode speedup\" leaves prefill out, \
            as llama.cpp's tools report speed); 95% CI over prompts, \
            paired by prompt and repeat (`ratio-t/N prompts`: the ratio estimator's delta-method interval on the log scale \
            with Student's t on N − 1 degrees of freedom; over repeats when there is one prompt). α = mean Σ min(p, q) over verified \
            positions; α̂ = accepted / proposed; τ = tokens per target call; E = (1 − α^(k+1)) / (1 − α); \
            c = draft time per drafted token ÷ target time per verify call; predicted = Theorem 3.8 from α, c, k; \
            refined = E × (target-only time per step) ÷ (the cell's draft + verify time per target call), \
            Theorem 3.8 without assuming a verify of k + 1 tokens costs one step. An adaptive schedule's k is its cap; \
            \"drafted\" is the mean number of draft tokens per target call, and E is averaged over the lengths drafted; \
            \"nodes\" the draft tokens verified per call. A tree (`tree:budget:B,depth:D,width:W`) drafts up to D levels and B nodes; \
            its \"drafted\" counts levels, α is taken at the first child of each reached node, and refined uses its measured τ for E.\n\n";
    out += &cell_table(summary);
    out += "\n## By prompt category\n\n| category | engine | backend | T | drafter | k | n | α | τ | speedup [95% CI] |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for r in summary.iter().filter(|r| r.category != ALL && r.k > 0) {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |\n",
            r.category,
            r.engine,
            r.backend,
            r.temperature,
            r.drafter,
            k_cell(r),
            r.n,
            opt(r.alpha, 3),
            r.mean_accepted_len,
            speedup_cell(r)
        );
    }
    let columns = task_columns(summary);
    if columns.len() > 1 {
        out += &task_table(summary, &columns);
    }
    out += "\nPlots: `plots/speedup_vs_k`, `plots/tokens_per_s`, `plots/accepted_len_vs_k`, `plots/acceptance_by_position`";
    if summary.iter().any(|r| !r.schedule.is_empty()) {
        out += ", `plots/drafted_len_hist`";
    }
    if columns.len() > 1 {
        out += ", `plots/speedup_by_category`";
    }
    if summary.iter().filter(|r| r.k > 0).map(|r| &r.drafter).collect::<std::collections::BTreeSet<_>>().len()
        > 1
    {
        out += ", `plots/speedup_heatmap*`";
    }
    out += " (PNG and SVG). Acceptance by draft position with 95% intervals: `acceptance_by_position.csv`, and per cell \
            `profiles/<cell>/speculation_profile.json` (NVIDIA specdec_bench's schema 1.0).\n";
    out
}

/// A prompt category as a table column and a chart label.
pub struct TaskColumn {
    pub category: String,
    pub title: String,
    pub short: String,
}

/// The prompt categories in the order of Spec-Bench's leaderboard where they are its tasks
/// (with its titles and the paper's short names), then the others by name.
pub fn task_columns(summary: &[SummaryRow]) -> Vec<TaskColumn> {
    let present: std::collections::BTreeSet<&str> =
        summary.iter().filter(|r| r.category != ALL).map(|r| r.category.as_str()).collect();
    let column = |category: &str, title: &str, short: &str| TaskColumn {
        category: category.into(),
        title: title.into(),
        short: short.into(),
    };
    let known = SPEC_BENCH_TASKS
        .iter()
        .filter(|(id, ..)| present.contains(id))
        .map(|(id, title, short)| column(id, title, short));
    let others =
        present.iter().filter(|c| !SPEC_BENCH_TASKS.iter().any(|(id, ..)| id == *c)).map(|c| column(c, c, c));
    known.chain(others).collect()
}

/// Speedup per category, mean accepted tokens and overall speedup per cell: the columns of
/// Spec-Bench's leaderboard, so that a row of ours reads beside theirs.
fn task_table(summary: &[SummaryRow], columns: &[TaskColumn]) -> String {
    let mut out = String::from(
        "\n## By task (Spec-Bench's leaderboard columns)\n\nSpeedup per task over target-only decoding on the same \
         backend and temperature; #MAT = mean accepted tokens per target call (τ) over all prompts; overall = speedup over \
         all prompts with its 95% CI.\n\n| backend | dtype | T | drafter | k |",
    );
    for column in columns {
        out += &format!(" {} |", column.title);
    }
    out += " #MAT | Overall |\n|---|---|---|---|---|";
    out += &"---|".repeat(columns.len() + 2);
    out += "\n";
    for cell in summary.iter().filter(|r| r.category == ALL && r.k > 0) {
        let key = cell.cell();
        out += &format!(
            "| {} | {} | {} | {} | {} |",
            cell.backend,
            cell.dtype,
            cell.temperature,
            cell.drafter,
            k_cell(cell)
        );
        for column in columns {
            let row = summary.iter().find(|r| r.category == column.category && r.cell() == key);
            out += &format!(" {} |", row.and_then(|r| r.speedup).map_or("—".into(), |s| format!("{s:.2}×")));
        }
        out += &format!(" {:.2} | {} |\n", cell.mean_accepted_len, speedup_cell(cell));
    }
    out
}

/// The per-cell table (all prompts) as markdown: what `run` and `report` print.
pub fn cell_table(summary: &[SummaryRow]) -> String {
    let mut out = String::new();
    out += "| engine | backend | dtype | T | drafter | k | drafted | nodes | n | α | α̂ | τ | E | tokens/s | target-only tokens/s | speedup [95% CI] | CI | decode speedup | c | predicted | refined |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in summary.iter().filter(|r| r.category == ALL) {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.engine,
            r.backend,
            r.dtype,
            r.temperature,
            if r.drafter.is_empty() { "—" } else { &r.drafter },
            k_cell(r),
            opt(r.mean_drafted, 2),
            opt(r.nodes_per_call, 2),
            r.n,
            opt(r.alpha, 3),
            opt(r.alpha_hat, 3),
            r.mean_accepted_len,
            opt(r.expected_accepted_len, 2),
            r.tokens_per_s,
            opt(r.baseline_tokens_per_s, 2),
            speedup_cell(r),
            r.ci_method,
            r.decode_speedup.map_or("—".into(), |s| format!("{s:.2}×")),
            opt(r.cost_ratio, 3),
            r.predicted_speedup.map_or("—".into(), |p| format!("{p:.2}×")),
            r.refined_speedup.map_or("—".into(), |p| format!("{p:.2}×")),
        );
    }
    out
}

/// `3`, for an adaptive schedule `heuristic:4 ≤ 8`, for a tree its shape (which names its depth).
fn k_cell(r: &SummaryRow) -> String {
    match r.schedule.as_str() {
        "" => r.k.to_string(),
        tree if tree.starts_with("tree:") => tree.to_string(),
        schedule => format!("{schedule} ≤ {}", r.k),
    }
}

/// A name as part of a file name: anything but ASCII letters, digits, `-`, `_` and `.` becomes `_`.
fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// What `merge` made: the summary, and the rows the config expects that no folder held.
pub struct Merged {
    pub summary: Vec<SummaryRow>,
    pub missing: Vec<RowKey>,
}

/// Joins shard folders into `out`. The folders must be runs of one config on the same models;
/// rows are deduplicated by key (a key seen twice with different rows is an error). The result
/// is marked finished only when every row the config expects is there.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Merged> {
    let manifests = dirs.iter().map(|d| Manifest::read(d)).collect::<Result<Vec<_>>>()?;
    let first = manifests.first().ok_or_else(|| Error::Usage("merge needs at least one folder".into()))?;
    for (dir, manifest) in dirs.iter().zip(&manifests) {
        if manifest.config_sha256 != first.config_sha256 {
            return Err(Error::Usage(format!(
                "cannot merge runs of different configs: {} ran config sha256 {} (experiment `{}`), {} ran {} (experiment `{}`)",
                dirs[0].display(),
                &first.config_sha256[..12.min(first.config_sha256.len())],
                first.experiment,
                dir.display(),
                &manifest.config_sha256[..12.min(manifest.config_sha256.len())],
                manifest.experiment
            )));
        }
        if let (Some(a), Some(b)) = (&first.prompts_sha256, &manifest.prompts_sha256)
            && a != b
        {
            return Err(Error::Usage(format!(
                "cannot merge runs of different prompts: {} and {} ran prompts with the same ids and other texts",
                dirs[0].display(),
                dir.display()
            )));
        }
        match (&first.models, &manifest.models) {
            (Some(a), Some(b)) => {
                if let Some(what) = a.difference(b) {
                    return Err(Error::ModelIdentityMismatch { dir: dir.clone(), what });
                }
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{} records no model fingerprints (made by an older specbench): its models cannot be verified",
                    dir.display()
                )));
            }
        }
    }
    let mut rows: BTreeMap<RowKey, RunRow> = BTreeMap::new();
    for dir in dirs {
        for row in read_rows(&dir.join("runs.csv"))? {
            if let Some(existing) = rows.get(&row.key())
                && existing != &row
            {
                return Err(Error::MalformedFile {
                    path: dir.join("runs.csv"),
                    message: format!(
                        "row of {} prompt `{}` repeat {} differs from the same row in another folder",
                        row.cell().label(),
                        row.prompt_id,
                        row.repeat
                    ),
                });
            }
            rows.insert(row.key(), row);
        }
    }
    let config = ExperimentConfig::parse(&first.config)?;
    let missing =
        expected_rows(&config, &first.prompt_ids).into_iter().filter(|k| !rows.contains_key(k)).collect();

    crate::files::create_dir(out)?;
    let _lock = FolderLock::acquire(out)?;
    if out.join("runs.csv").exists() {
        return Err(Error::Usage(format!("{} already holds a runs.csv", out.display())));
    }
    let mut writer = RowWriter::open(&out.join("runs.csv"))?;
    for row in rows.values() {
        writer.append(row)?;
    }
    let mut manifest = first.clone();
    manifest.shard = None;
    manifest.merged_from = dirs.iter().map(|d| d.display().to_string()).collect();
    manifest.devices = manifests.iter().flat_map(|m| m.devices.clone()).collect();
    manifest.devices.dedup();
    let all_finished = manifests.iter().all(|m| m.finished.is_some());
    manifest.finished = match (all_finished, &missing) {
        (true, missing) if Vec::is_empty(missing) => {
            manifests.iter().filter_map(|m| m.finished.clone()).max()
        }
        _ => None,
    };
    manifest.write(out)?;
    Ok(Merged { summary: write_report(out)?, missing })
}

/// Every row a whole run of `config` on these prompts writes.
fn expected_rows(config: &ExperimentConfig, prompt_ids: &[String]) -> Vec<RowKey> {
    let (dtype, names) = (&config.models.target.dtype, config.drafter_names());
    let mut keys = Vec::new();
    for cell in config.cells() {
        for prompt_id in prompt_ids {
            for repeat in 0..config.experiment.repeats {
                keys.push(RowKey { cell: cell.key(dtype, &names), prompt_id: prompt_id.clone(), repeat });
            }
        }
    }
    keys
}
