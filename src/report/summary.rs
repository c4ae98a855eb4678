//! Per-cell figures from `runs.csv` alone: acceptance, speed, speedup with a 95% confidence
//! interval, the measured cost ratio and Theorem 3.8's prediction.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::experiment::rows::{CellKey, RunRow, split_counts};
use crate::metrics::{expected_accepted_len, predicted_speedup};

pub const ALL: &str = "all";
const BOOTSTRAP_SAMPLES: usize = 2000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub engine: String,
    pub backend: String,
    pub dtype: String,
    /// `all`, or one prompt category.
    pub category: String,
    pub temperature: f64,
    pub k: usize,
    pub n: usize,
    pub alpha: Option<f64>,
    pub alpha_hat: Option<f64>,
    pub mean_accepted_len: f64,
    pub expected_accepted_len: Option<f64>,
    pub tokens_per_s: f64,
    pub baseline_tokens_per_s: Option<f64>,
    pub speedup: Option<f64>,
    pub speedup_ci_low: Option<f64>,
    pub speedup_ci_high: Option<f64>,
    /// `t` (over repeats) or `bootstrap` (over prompts).
    pub ci_method: String,
    pub cost_ratio: Option<f64>,
    pub predicted_speedup: Option<f64>,
}

/// One row per cell for all prompts, then one per cell and category.
pub fn summarize(rows: &[RunRow]) -> Vec<SummaryRow> {
    let categories: BTreeSet<&str> = rows.iter().map(|r| r.category.as_str()).collect();
    let mut out = summarize_category(rows, ALL);
    for category in categories {
        let subset: Vec<RunRow> = rows.iter().filter(|r| r.category == category).cloned().collect();
        out.extend(summarize_category(&subset, category));
    }
    out
}

fn summarize_category(rows: &[RunRow], category: &str) -> Vec<SummaryRow> {
    let mut cells: BTreeMap<CellKey, Vec<&RunRow>> = BTreeMap::new();
    for row in rows {
        cells.entry(row.cell()).or_default().push(row);
    }
    cells
        .iter()
        .map(|(key, cell)| {
            summarize_cell(key, cell, cells.get(&key.baseline()).filter(|_| key.k > 0), category)
        })
        .collect()
}

fn summarize_cell(
    key: &CellKey,
    cell: &[&RunRow],
    baseline: Option<&Vec<&RunRow>>,
    category: &str,
) -> SummaryRow {
    let sum = |f: fn(&RunRow) -> f64| cell.iter().map(|r| f(r)).sum::<f64>();
    let (proposed, accepted, calls) =
        (sum(|r| r.proposed as f64), sum(|r| r.accepted as f64), sum(|r| r.target_calls as f64));
    let speculative = key.k > 0;
    let alpha = speculative.then(|| aggregate_alpha(cell)).flatten();
    let tokens_per_s = mean(cell.iter().map(|r| r.tokens_per_s));
    let baseline_tokens_per_s = baseline.map(|b| mean(b.iter().map(|r| r.tokens_per_s)));
    let (speedup, ci, ci_method) = match baseline {
        Some(b) => {
            let (ci, method) = speedup_interval(cell, b);
            (baseline_tokens_per_s.map(|base| tokens_per_s / base), ci, method)
        }
        None => (None, None, String::new()),
    };
    let draft_s = sum(|r| r.draft_s);
    let cost_ratio = (speculative && draft_s > 0.0 && proposed > 0.0)
        .then(|| (draft_s / proposed) / (sum(|r| r.verify_s) / calls));
    SummaryRow {
        engine: key.engine.clone(),
        backend: key.backend.clone(),
        dtype: key.dtype.clone(),
        category: category.into(),
        temperature: key.temperature,
        k: key.k,
        n: cell.len(),
        alpha,
        alpha_hat: (proposed > 0.0).then(|| accepted / proposed),
        mean_accepted_len: if calls > 0.0 {
            (accepted + calls) / calls
        } else {
            mean(cell.iter().map(|r| r.mean_accepted_len))
        },
        expected_accepted_len: alpha.map(|a| expected_accepted_len(a, key.k)),
        tokens_per_s,
        baseline_tokens_per_s,
        speedup,
        speedup_ci_low: ci.map(|c| c.0),
        speedup_ci_high: ci.map(|c| c.1),
        ci_method,
        cost_ratio,
        predicted_speedup: alpha.zip(cost_ratio).map(|(a, c)| predicted_speedup(a, c, key.k)),
    }
}

/// α from Σβ / Σ(verified positions) where rows carry them; else the mean of the rows' α.
fn aggregate_alpha(cell: &[&RunRow]) -> Option<f64> {
    let sums: Option<Vec<(f64, u64)>> = cell.iter().map(|r| r.overlap_sum.zip(r.overlap_count)).collect();
    match sums {
        Some(sums) if sums.iter().map(|s| s.1).sum::<u64>() > 0 => {
            Some(sums.iter().map(|s| s.0).sum::<f64>() / sums.iter().map(|s| s.1).sum::<u64>() as f64)
        }
        _ => {
            let alphas: Vec<f64> = cell.iter().filter_map(|r| r.alpha).collect();
            (!alphas.is_empty()).then(|| mean(alphas.into_iter()))
        }
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n as f64
}

/// 95% interval of the speedup: Student's t over repeats (the ratio of mean tokens/s within
/// each repeat) when there are at least two, otherwise a paired bootstrap over prompts.
fn speedup_interval(cell: &[&RunRow], baseline: &[&RunRow]) -> (Option<(f64, f64)>, String) {
    let repeats: BTreeSet<usize> = cell.iter().map(|r| r.repeat).collect();
    if repeats.len() >= 2 {
        let ratios: Vec<f64> = repeats
            .iter()
            .map(|&rep| {
                let of =
                    |rows: &[&RunRow]| mean(rows.iter().filter(|r| r.repeat == rep).map(|r| r.tokens_per_s));
                of(cell) / of(baseline)
            })
            .filter(|r| r.is_finite())
            .collect();
        return (t_interval(&ratios), "t".into());
    }
    // Per prompt, the mean over its rows, paired with the baseline of the same prompt.
    let per_prompt = |rows: &[&RunRow]| -> BTreeMap<String, f64> {
        let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in rows {
            groups.entry(r.prompt_id.clone()).or_default().push(r.tokens_per_s);
        }
        groups.into_iter().map(|(k, v)| (k, mean(v.into_iter()))).collect()
    };
    let (spec, base) = (per_prompt(cell), per_prompt(baseline));
    let pairs: Vec<(f64, f64)> = spec.iter().filter_map(|(id, s)| base.get(id).map(|b| (*s, *b))).collect();
    (bootstrap_ratio_interval(&pairs), "bootstrap".into())
}

fn t_interval(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let m = mean(values.iter().copied());
    let sd = (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let t = StudentsT::new(0.0, 1.0, n - 1.0).ok()?.inverse_cdf(0.975);
    let half = t * sd / n.sqrt();
    Some((m - half, m + half))
}

/// Percentile bootstrap of mean(spec) / mean(base) over resampled prompt pairs (seeded).
fn bootstrap_ratio_interval(pairs: &[(f64, f64)]) -> Option<(f64, f64)> {
    if pairs.len() < 2 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut ratios: Vec<f64> = (0..BOOTSTRAP_SAMPLES)
        .map(|_| {
            let (mut s, mut b) = (0.0, 0.0);
            for _ in 0..pairs.len() {
                let (ps, pb) = pairs[rng.gen_range(0..pairs.len())];
                s += ps;
                b += pb;
            }
            s / b
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((q * (ratios.len() - 1) as f64).round() as usize).min(ratios.len() - 1)];
    Some((at(0.025), at(0.975)))
}

/// Per draft position, accepted / proposed over the cell's rows. Rows without
/// `position_proposed` (older files) proposed at every position of every target call.
pub fn position_acceptance(rows: &[RunRow], cell: &CellKey) -> Vec<f64> {
    let mut accepted = vec![0.0; cell.k];
    let mut proposed = vec![0.0; cell.k];
    for r in rows.iter().filter(|r| &r.cell() == cell) {
        let row_proposed = split_counts(&r.position_proposed);
        for i in 0..cell.k {
            accepted[i] += split_counts(&r.position_accepted).get(i).copied().unwrap_or(0) as f64;
            proposed[i] += match row_proposed.is_empty() {
                true => r.target_calls as f64,
                false => row_proposed.get(i).copied().unwrap_or(0) as f64,
            };
        }
    }
    accepted.into_iter().zip(proposed).map(|(a, p)| a / p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(k: usize, repeat: usize, prompt: &str, tokens_per_s: f64) -> RunRow {
        RunRow {
            engine: "specbench".into(),
            backend: "ndarray".into(),
            dtype: "f32".into(),
            category: "qa".into(),
            k,
            repeat,
            prompt_id: prompt.into(),
            tokens_per_s,
            target_calls: 10,
            proposed: if k > 0 { 10 * k as u64 } else { 0 },
            accepted: if k > 0 { 5 * k as u64 } else { 0 },
            overlap_sum: (k > 0).then_some(6.0),
            overlap_count: (k > 0).then_some(10),
            draft_s: if k > 0 { 0.1 } else { 0.0 },
            verify_s: 1.0,
            ..RunRow::default()
        }
    }

    #[test]
    fn speedup_is_the_ratio_of_mean_speeds_with_a_t_interval_over_repeats() {
        let rows =
            vec![row(0, 0, "a", 10.0), row(0, 1, "a", 10.0), row(2, 0, "a", 15.0), row(2, 1, "a", 17.0)];
        let summary = summarize(&rows);
        let cell = summary.iter().find(|s| s.k == 2 && s.category == ALL).unwrap();
        assert!((cell.speedup.unwrap() - 1.6).abs() < 1e-12);
        // Ratios 1.5 and 1.7: mean 1.6, sd 0.1414, t(0.975, 1) = 12.706 → ±1.2706.
        assert!((cell.speedup_ci_low.unwrap() - (1.6 - 1.2706)).abs() < 1e-3);
        assert_eq!(cell.ci_method, "t");
        assert!((cell.alpha.unwrap() - 0.6).abs() < 1e-12);
        assert!((cell.alpha_hat.unwrap() - 0.5).abs() < 1e-12);
        assert!((cell.mean_accepted_len - 2.0).abs() < 1e-12);
        // c = (0.2 s / 40 drafted) / (2 s / 20 calls) = 0.05.
        assert!((cell.cost_ratio.unwrap() - 0.05).abs() < 1e-12);
        assert!(summary.iter().any(|s| s.category == "qa"));
    }

    #[test]
    fn a_single_repeat_uses_a_bootstrap_over_prompts() {
        let rows: Vec<RunRow> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .flat_map(|(i, p)| [row(0, 0, p, 10.0 + i as f64), row(1, 0, p, 12.0 + i as f64)])
            .collect();
        let cell = summarize(&rows).into_iter().find(|s| s.k == 1 && s.category == ALL).unwrap();
        assert_eq!(cell.ci_method, "bootstrap");
        let (low, high) = (cell.speedup_ci_low.unwrap(), cell.speedup_ci_high.unwrap());
        assert!(low <= cell.speedup.unwrap() && cell.speedup.unwrap() <= high && low > 1.0, "{low} {high}");
    }
}
