//! Acceptance by draft position, per speculative cell: the joint rate (the first i drafts all
//! accepted) and the conditional rate (draft i accepted given the i − 1 before it were), each
//! with a 95% interval over prompts, from the rows' accepted-length histograms. Written as
//! `acceptance_by_position.csv` and, per cell, as a `speculation_profile.json` in the schema of
//! NVIDIA Model Optimizer's specdec_bench (`examples/specdec_bench/specdec_bench/
//! speculation_profile.py`, schema 1.0: its field names, its survival-function conventions and
//! its two validation checks), so that tools reading that file read ours.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use super::summary::ratio_interval;
use crate::error::{Error, Result};
use crate::experiment::config::{ExperimentConfig, LEGACY_DRAFTER};
use crate::experiment::manifest::Manifest;
use crate::experiment::rows::{CellKey, RunRow, split_counts};

/// specdec_bench's `SCHEMA_VERSION`.
pub const SCHEMA_VERSION: &str = "1.0";
/// specdec_bench's tolerance on |1 + Σ marginals − mean accept length|.
pub const MEAN_TOLERANCE: f64 = 0.02;

/// The rates at one draft position (1-based), with 95% intervals over prompts (`None` where
/// there are fewer than two units or nothing was accepted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionRates {
    pub position: usize,
    pub joint: f64,
    pub joint_ci: Option<(f64, f64)>,
    pub conditional: f64,
    pub conditional_ci: Option<(f64, f64)>,
}

/// One cell's acceptance profile.
#[derive(Debug, Clone, PartialEq)]
pub struct CellProfile {
    pub cell: CellKey,
    /// Target calls that accepted exactly n drafts, n = 0..=k, over all the cell's rows.
    pub accepted_len_hist: Vec<u64>,
    pub positions: Vec<PositionRates>,
    /// Tokens per target call (the bonus token counted), weighted by calls.
    pub mean_accept_length: f64,
    /// The mean over prompts of each prompt's tokens per target call.
    pub mean_accept_length_per_prompt: f64,
    /// What the intervals are over: `16 prompts` (or `repeats` with one prompt).
    pub units: String,
}

/// Per prompt (its repeats added), the calls at each accepted length 0..=k.
fn histograms_by_prompt(rows: &[&RunRow], k: usize) -> Option<BTreeMap<(String, usize), Vec<u64>>> {
    let mut by_unit: BTreeMap<(String, usize), Vec<u64>> = BTreeMap::new();
    let prompts: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.prompt_id.as_str()).collect();
    for r in rows {
        let hist = split_counts(&r.accepted_len_hist);
        if hist.is_empty() {
            return None;
        }
        // With one prompt its repeats are the units; else the prompts, repeats added.
        let unit = (r.prompt_id.clone(), if prompts.len() == 1 { r.repeat } else { 0 });
        let sum = by_unit.entry(unit).or_insert_with(|| vec![0; k + 1]);
        hist.iter().take(k + 1).enumerate().for_each(|(n, c)| sum[n] += c);
    }
    Some(by_unit)
}

/// The profile of `cell` from its rows; `None` for the baseline and for rows without
/// accepted-length histograms (other engines' rows).
pub fn cell_profile(rows: &[RunRow], cell: &CellKey) -> Option<CellProfile> {
    let rows: Vec<&RunRow> = rows.iter().filter(|r| &r.cell() == cell).collect();
    if cell.k == 0 || rows.is_empty() {
        return None;
    }
    let k = cell.k;
    let by_unit = histograms_by_prompt(&rows, k)?;
    let label = if by_unit.keys().any(|(_, repeat)| *repeat > 0) { "repeats" } else { "prompts" };
    // reached[u][i]: unit u's calls that accepted at least i drafts (i = 0: every call).
    let reached: Vec<Vec<f64>> = by_unit
        .values()
        .map(|hist| (0..=k).map(|i| hist[i..].iter().sum::<u64>() as f64).collect())
        .collect();
    let total = |i: usize| reached.iter().map(|r| r[i]).sum::<f64>();
    if total(0) == 0.0 {
        return None;
    }
    let interval = |num: usize, den: usize| {
        let units: Vec<(f64, f64)> = reached.iter().map(|r| (r[num], r[den])).collect();
        ratio_interval(&units, 0.95).map(|(lo, hi)| (lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)))
    };
    let positions = (1..=k)
        .map(|i| PositionRates {
            position: i,
            joint: total(i) / total(0),
            joint_ci: interval(i, 0),
            conditional: if total(i - 1) > 0.0 { total(i) / total(i - 1) } else { 0.0 },
            conditional_ci: interval(i, i - 1),
        })
        .collect();
    let mut accepted_len_hist = vec![0u64; k + 1];
    for hist in by_unit.values() {
        accepted_len_hist.iter_mut().zip(hist).for_each(|(a, b)| *a += b);
    }
    let tau = |r: &Vec<f64>| 1.0 + r[1..].iter().sum::<f64>() / r[0];
    let per_prompt: Vec<f64> = reached.iter().filter(|r| r[0] > 0.0).map(tau).collect();
    Some(CellProfile {
        cell: cell.clone(),
        mean_accept_length: 1.0 + (1..=k).map(total).sum::<f64>() / total(0),
        mean_accept_length_per_prompt: per_prompt.iter().sum::<f64>() / per_prompt.len() as f64,
        accepted_len_hist,
        positions,
        units: format!("{} {label}", by_unit.len()),
    })
}

/// Every speculative cell's profile, in cell order.
pub fn profiles(rows: &[RunRow]) -> Vec<CellProfile> {
    let cells: std::collections::BTreeSet<CellKey> = rows.iter().map(RunRow::cell).collect();
    cells.iter().filter_map(|cell| cell_profile(rows, cell)).collect()
}

#[derive(Serialize)]
struct PositionLine<'a> {
    engine: &'a str,
    backend: &'a str,
    dtype: &'a str,
    drafter: &'a str,
    schedule: &'a str,
    temperature: f64,
    k: usize,
    position: usize,
    conditional: f64,
    conditional_ci_low: Option<f64>,
    conditional_ci_high: Option<f64>,
    joint: f64,
    joint_ci_low: Option<f64>,
    joint_ci_high: Option<f64>,
    ci_over: &'a str,
}

/// `acceptance_by_position.csv`: one line per cell and draft position.
pub fn write_csv(profiles: &[CellProfile], path: &Path) -> Result<()> {
    let csv_error = |e: csv::Error| Error::MalformedFile { path: path.to_path_buf(), message: e.to_string() };
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    for p in profiles {
        let c = &p.cell;
        for rates in &p.positions {
            writer
                .serialize(PositionLine {
                    engine: &c.engine,
                    backend: &c.backend,
                    dtype: &c.dtype,
                    drafter: &c.drafter,
                    schedule: &c.schedule,
                    temperature: c.temperature,
                    k: c.k,
                    position: rates.position,
                    conditional: rates.conditional,
                    conditional_ci_low: rates.conditional_ci.map(|ci| ci.0),
                    conditional_ci_high: rates.conditional_ci.map(|ci| ci.1),
                    joint: rates.joint,
                    joint_ci_low: rates.joint_ci.map(|ci| ci.0),
                    joint_ci_high: rates.joint_ci.map(|ci| ci.1),
                    ci_over: &p.units,
                })
                .map_err(csv_error)?;
        }
    }
    writer.flush().map_err(crate::files::io_error("write", path))
}

/// What a profile file says about the run besides the rates.
pub struct Context<'a> {
    /// The drafter's kind (`model`, `quantized`, `layer_skip`, `ngram`) when known.
    pub drafter_kind: Option<&'a str>,
    /// The target and draft as the rows name them.
    pub target: &'a str,
    pub draft: &'a str,
    /// Tokens per target call of the same drafter at each k it was run with.
    pub accept_length_by_k: BTreeMap<usize, f64>,
    /// Per prompt category: the category's own profile.
    pub per_category: BTreeMap<String, CellProfile>,
    pub conditions: Value,
}

/// specdec_bench's method name for a drafter kind: a separate draft model (whatever its
/// weights) is its `draft_model`; the others keep specbench's names.
fn method(kind: &str) -> &str {
    match kind {
        "model" | "quantized" => "draft_model",
        other => other,
    }
}

/// specdec_bench's `checkpoint_id`: the last two components of a path (no local layout in a
/// file meant to be published).
fn checkpoint_id(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    match parts.len() {
        0 => None,
        n => Some(parts[n.saturating_sub(2)..].join("/")),
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The profile as specdec_bench's `build_profile` makes it, with specbench's intervals under
/// `specbench`.
pub fn speculation_profile(p: &CellProfile, context: &Context) -> Value {
    let marginal: Vec<f64> = p.positions.iter().map(|r| round6(r.joint)).collect();
    let conditional: Vec<f64> = p.positions.iter().map(|r| round6(r.conditional)).collect();
    let method = context.drafter_kind.map(method);
    // specdec_bench's rule: a chain drafter's K = n draft is a prefix of its K = n + 1 draft,
    // so the marginals extrapolate over K; for others each K is measured.
    let chain = matches!(method, Some("eagle" | "eagle1" | "eagle2" | "eagle3" | "draft_model"));
    let histogram: BTreeMap<String, u64> = p
        .accepted_len_hist
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(n, c)| ((n + 1).to_string(), *c))
        .collect();
    let per_category: BTreeMap<&String, Value> = context
        .per_category
        .iter()
        .map(|(category, c)| {
            let marginal: Vec<f64> = c.positions.iter().map(|r| round6(r.joint)).collect();
            (category, json!({"mean_accept_length": round6(c.mean_accept_length), "marginal_accept_rates": marginal}))
        })
        .collect();
    let ci = |f: fn(&PositionRates) -> Option<(f64, f64)>| -> Vec<Option<[f64; 2]>> {
        p.positions.iter().map(|r| f(r).map(|(lo, hi)| [round6(lo), round6(hi)])).collect()
    };
    let k = p.cell.k;
    json!({
        "schema_version": SCHEMA_VERSION,
        "measured": true,
        "method": method,
        "draft_checkpoint": {"id": checkpoint_id(context.draft), "drafter": p.cell.drafter, "kind": context.drafter_kind},
        "target_model": {"id": checkpoint_id(context.target), "dtype": p.cell.dtype},
        "num_speculative_tokens": k,
        "block_size": null,
        "max_supported_k": k,
        "verification_method": "longest_prefix",
        "conditional_accept_rates": conditional,
        "marginal_accept_rates": marginal,
        "mean_accept_length": round6(p.mean_accept_length),
        "mean_accept_length_per_request": round6(p.mean_accept_length_per_prompt),
        "accept_length_model": if chain { "chain_analytic" } else { "measured_per_k" },
        "accept_length_by_k": context.accept_length_by_k.iter().map(|(k, l)| (k.to_string(), round6(*l))).collect::<BTreeMap<_, _>>(),
        "acceptance_length_histogram": histogram,
        "per_category": per_category,
        "measurement_conditions": context.conditions,
        "validation": {
            "mean_consistency": mean_consistency(p.mean_accept_length, &marginal),
            "marginal_monotonicity": marginal_monotonicity(&marginal),
        },
        "specbench": {
            "schedule": p.cell.schedule,
            "conditional_accept_rates_ci95": ci(|r| r.conditional_ci),
            "marginal_accept_rates_ci95": ci(|r| r.joint_ci),
            "ci_over": p.units,
            "ci_method": "ratio estimator over units, delta method on the log scale, Student's t; clamped to [0, 1]",
        },
    })
}

/// specdec_bench's `_consistency_check`: for longest-prefix verification the mean tokens per
/// step is 1 + Σ marginals.
pub fn mean_consistency(mean_accept_length: f64, marginal: &[f64]) -> Value {
    let implied = 1.0 + marginal.iter().sum::<f64>();
    let delta = (implied - mean_accept_length).abs();
    json!({
        "implied_mean_accept_length": round6(implied),
        "reported_mean_accept_length": round6(mean_accept_length),
        "abs_delta": round6(delta),
        "tolerance": MEAN_TOLERANCE,
        "passed": delta <= MEAN_TOLERANCE,
    })
}

/// specdec_bench's `_monotonicity_check`: a survival function cannot increase.
pub fn marginal_monotonicity(marginal: &[f64]) -> Value {
    let violations: Vec<Value> = (1..marginal.len())
        .filter(|&i| marginal[i] > marginal[i - 1] + 1e-9)
        .map(|i| json!({"position": i, "value": marginal[i], "previous": marginal[i - 1]}))
        .collect();
    json!({"passed": violations.is_empty(), "violations": violations})
}

/// `acceptance_by_position.csv` and `profiles/<cell>/speculation_profile.json` for every
/// speculative cell whose rows carry histograms.
pub fn write_all(rows: &[RunRow], manifest: Option<&Manifest>, dir: &Path) -> Result<()> {
    let all = profiles(rows);
    if all.is_empty() {
        return Ok(());
    }
    write_csv(&all, &dir.join("acceptance_by_position.csv"))?;
    let config = manifest.and_then(|m| ExperimentConfig::parse(&m.config).ok());
    for p in &all {
        let cell_rows: Vec<&RunRow> = rows.iter().filter(|r| r.cell() == p.cell).collect();
        let kind = config.as_ref().and_then(|c| drafter_kind(c, &p.cell.drafter));
        let same_drafter = |q: &&CellProfile| {
            let (a, b) = (&q.cell, &p.cell);
            (&a.engine, &a.backend, &a.dtype, &a.drafter, a.temperature.to_bits())
                == (&b.engine, &b.backend, &b.dtype, &b.drafter, b.temperature.to_bits())
        };
        let accept_length_by_k = match p.cell.schedule.is_empty() {
            true => all
                .iter()
                .filter(same_drafter)
                .filter(|q| q.cell.schedule.is_empty())
                .map(|q| (q.cell.k, q.mean_accept_length))
                .collect(),
            false => BTreeMap::from([(p.cell.k, p.mean_accept_length)]),
        };
        let categories: std::collections::BTreeSet<&str> =
            cell_rows.iter().map(|r| r.category.as_str()).collect();
        let per_category = match categories.len() {
            1 => BTreeMap::new(),
            _ => categories
                .iter()
                .filter_map(|category| {
                    let subset: Vec<RunRow> =
                        cell_rows.iter().filter(|r| r.category == *category).map(|r| (*r).clone()).collect();
                    Some((category.to_string(), cell_profile(&subset, &p.cell)?))
                })
                .collect(),
        };
        let prompts: std::collections::BTreeSet<&str> =
            cell_rows.iter().map(|r| r.prompt_id.as_str()).collect();
        let conditions = json!({
            "engine": p.cell.engine,
            "backend": p.cell.backend,
            "dtype": p.cell.dtype,
            "temperature": p.cell.temperature,
            "schedule": p.cell.schedule,
            "experiment": manifest.map(|m| &m.experiment),
            "prompts": prompts.len(),
            "categories": categories,
            "max_new_tokens": config.as_ref().map(|c| c.experiment.max_new_tokens),
            "cpu": manifest.map(|m| &m.machine.cpu),
            "cores": manifest.map(|m| m.machine.cores),
            "devices": manifest.map(|m| &m.devices),
            "git_commit": manifest.map(|m| &m.git_commit),
        });
        let first = cell_rows[0];
        let context = Context {
            drafter_kind: kind.as_deref(),
            target: &first.target,
            draft: &first.draft,
            accept_length_by_k,
            per_category,
            conditions,
        };
        let folder = dir.join("profiles").join(profile_dir_name(&p.cell));
        crate::files::create_dir(&folder)?;
        let text =
            serde_json::to_string_pretty(&speculation_profile(p, &context)).expect("JSON values serialize");
        crate::files::write_text(&folder.join("speculation_profile.json"), &(text + "\n"))?;
    }
    Ok(())
}

/// The kind of the drafter a config names `name` (`[models.draft]` is a `model` drafter).
fn drafter_kind(config: &ExperimentConfig, name: &str) -> Option<String> {
    if name == LEGACY_DRAFTER && config.models.draft.is_some() {
        return Some("model".into());
    }
    config.drafters.iter().find(|d| d.name == name).map(|d| d.spec.kind_name())
}

/// The folder name of a cell's profile: `draft-k3-T0-ndarray-f32`.
pub fn profile_dir_name(cell: &CellKey) -> String {
    let schedule = if cell.schedule.is_empty() { String::new() } else { format!("-{}", cell.schedule) };
    let raw = format!(
        "{}{schedule}-k{}-T{}-{}-{}",
        cell.drafter, cell.k, cell.temperature, cell.backend, cell.dtype
    );
    super::file_stem(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prompt: &str, hist: &str) -> RunRow {
        let counts = split_counts(hist);
        let calls: u64 = counts.iter().sum();
        let accepted: u64 = counts.iter().enumerate().map(|(n, c)| n as u64 * c).sum();
        RunRow {
            engine: "specbench".into(),
            backend: "ndarray".into(),
            dtype: "f32".into(),
            drafter: "d".into(),
            prompt_id: prompt.into(),
            k: counts.len() - 1,
            target_calls: calls,
            accepted,
            proposed: calls * (counts.len() as u64 - 1),
            accepted_len_hist: hist.into(),
            mean_accepted_len: (accepted + calls) as f64 / calls as f64,
            ..RunRow::default()
        }
    }

    /// specdec_bench's own test case: 100 steps, 40 emitted 1 token, 30 emitted 2, 30 emitted 3.
    #[test]
    fn rates_follow_specdec_bench_conventions() {
        let rows = vec![row("a", "40;30;30;0")];
        let p = cell_profile(&rows, &rows[0].cell()).unwrap();
        let joint: Vec<f64> = p.positions.iter().map(|r| r.joint).collect();
        let conditional: Vec<f64> = p.positions.iter().map(|r| r.conditional).collect();
        assert_eq!(joint, [0.6, 0.3, 0.0]);
        assert!((conditional[1] - 0.5).abs() < 1e-12 && conditional[0] == 0.6 && conditional[2] == 0.0);
        assert!((p.mean_accept_length - 1.9).abs() < 1e-12);
        let context = Context {
            drafter_kind: Some("model"),
            target: "/models/org/target",
            draft: "/x/y/org/draft",
            accept_length_by_k: BTreeMap::from([(3, 1.9)]),
            per_category: BTreeMap::new(),
            conditions: Value::Null,
        };
        let json = speculation_profile(&p, &context);
        assert_eq!(json["validation"]["mean_consistency"]["passed"], true);
        assert_eq!(json["validation"]["marginal_monotonicity"]["passed"], true);
        assert_eq!(json["accept_length_model"], "chain_analytic");
        assert_eq!(json["draft_checkpoint"]["id"], "org/draft");
        assert_eq!(json["acceptance_length_histogram"], json!({"1": 40, "2": 30, "3": 30}));
        // A wrong mean is flagged, as specdec_bench's check flags it.
        assert_eq!(mean_consistency(3.5, &[0.6, 0.3, 0.0])["passed"], false);
        assert_eq!(marginal_monotonicity(&[0.5, 0.6])["passed"], false);
    }

    #[test]
    fn the_mean_accepted_length_is_one_plus_the_joint_rates_and_intervals_cover_the_rates() {
        let rows: Vec<RunRow> = ["1;2;3;4", "4;3;2;1", "2;2;2;2", "0;1;5;3"]
            .iter()
            .enumerate()
            .map(|(i, h)| row(&format!("p{i}"), h))
            .collect();
        let p = cell_profile(&rows, &rows[0].cell()).unwrap();
        let tau: f64 = rows.iter().map(|r| r.accepted + r.target_calls).sum::<u64>() as f64
            / rows.iter().map(|r| r.target_calls).sum::<u64>() as f64;
        let implied = 1.0 + p.positions.iter().map(|r| r.joint).sum::<f64>();
        assert!((tau - implied).abs() < 1e-12 && (p.mean_accept_length - tau).abs() < 1e-12);
        assert_eq!(p.units, "4 prompts");
        for r in &p.positions {
            let ((jl, jh), (cl, ch)) = (r.joint_ci.unwrap(), r.conditional_ci.unwrap());
            assert!(jl <= r.joint && r.joint <= jh && cl <= r.conditional && r.conditional <= ch, "{r:?}");
            assert!(0.0 <= jl && jh <= 1.0 && 0.0 <= cl && ch <= 1.0, "{r:?}");
            // Joint through i = conditional at i × joint through i − 1.
            let before = if r.position == 1 { 1.0 } else { p.positions[r.position - 2].joint };
            assert!((r.joint - r.conditional * before).abs() < 1e-12);
        }
    }

    #[test]
    fn rows_without_histograms_have_no_profile() {
        let mut rows = vec![row("a", "1;1")];
        rows[0].accepted_len_hist.clear();
        assert_eq!(cell_profile(&rows, &rows[0].cell()), None);
    }
}
