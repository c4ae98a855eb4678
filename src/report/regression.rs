//! Acceptance-rate regression testing: `baseline` stores per-cell acceptance counts, `check`
//! tests a new run against them with a one-sided two-proportion z-test.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::error::{Error, Result};
use crate::experiment::config::ExperimentConfig;
use crate::experiment::manifest::{Manifest, RunModels};
use crate::experiment::rows::{CellKey, RunRow, read_rows};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub experiment: String,
    /// The models whose acceptance this is; a run of other models is not compared.
    #[serde(default)]
    pub models: Option<RunModels>,
    pub significance: f64,
    pub cells: Vec<CellCounts>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellCounts {
    #[serde(flatten)]
    pub cell: CellKey,
    pub proposed: u64,
    pub accepted: u64,
}

impl CellCounts {
    fn rate(&self) -> f64 {
        self.accepted as f64 / self.proposed as f64
    }
}

/// Acceptance counts of every speculative cell.
pub fn cell_counts(rows: &[RunRow]) -> Vec<CellCounts> {
    let mut cells: BTreeMap<CellKey, (u64, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.k > 0) {
        let entry = cells.entry(r.cell()).or_default();
        entry.0 += r.proposed;
        entry.1 += r.accepted;
    }
    cells.into_iter().map(|(cell, (proposed, accepted))| CellCounts { cell, proposed, accepted }).collect()
}

impl Baseline {
    /// The baseline of a finished result folder: its experiment, models and per-cell counts.
    pub fn from_run(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let config = ExperimentConfig::parse(&manifest.config)?;
        let baseline = Self {
            experiment: manifest.experiment,
            models: manifest.models,
            significance: config.experiment.significance,
            cells: cell_counts(&read_rows(&dir.join("runs.csv"))?),
        };
        baseline.validate(&dir.join("manifest.json"))?;
        Ok(baseline)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let baseline: Self = crate::files::read_json(path)?;
        baseline.validate(path)?;
        Ok(baseline)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        crate::files::write_json(path, self)
    }

    /// What `check` needs to test anything: a significance level, cells, a defined rate in each,
    /// and the identity of the models.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Err(Error::MalformedFile { path: path.to_path_buf(), message });
        if !(self.significance > 0.0 && self.significance < 1.0) {
            return bad(format!("significance {} is not in (0, 1)", self.significance));
        }
        if self.cells.is_empty() {
            return bad("the baseline has no speculative cell: there is nothing to check against".into());
        }
        if let Some(c) = self.cells.iter().find(|c| c.proposed == 0 || c.accepted > c.proposed) {
            return bad(format!(
                "cell {} has {} accepted of {} proposed: no acceptance rate to test",
                c.cell.label(),
                c.accepted,
                c.proposed
            ));
        }
        if self.models.is_none() {
            return bad("the baseline records no model fingerprints (made by an older specbench); \
                        recreate it with `specbench baseline`"
                .into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    pub cell: String,
    pub baseline_rate: f64,
    pub current_rate: Option<f64>,
    /// One-sided p-value of "the current acceptance rate is lower".
    pub p_value: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Missing,
}

/// One-sided p-value that `current` accepts less often than `baseline`.
pub fn drop_p_value(baseline: &CellCounts, current: &CellCounts) -> f64 {
    let (n1, n2) = (baseline.proposed as f64, current.proposed as f64);
    let pooled = (baseline.accepted + current.accepted) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    let diff = current.rate() - baseline.rate();
    if se == 0.0 {
        // Both rates are 0 or both 1: identical, or (if counts differ) a certain drop.
        return if diff < 0.0 { 0.0 } else { 1.0 };
    }
    Normal::standard().cdf(diff / se)
}

/// Tests the run in `dir` against `baseline`: the same experiment and models, or an error;
/// then each baseline cell, which fails when it dropped significantly or has no proposals.
pub fn check(baseline: &Baseline, dir: &Path) -> Result<Vec<CheckRow>> {
    let manifest = Manifest::read(dir)?;
    if manifest.experiment != baseline.experiment {
        return Err(Error::Usage(format!(
            "{} is a run of experiment `{}`, the baseline is of `{}`",
            dir.display(),
            manifest.experiment,
            baseline.experiment
        )));
    }
    let (Some(theirs), Some(ours)) = (&baseline.models, &manifest.models) else {
        return Err(Error::Usage(format!(
            "{} records no model fingerprints (made by an older specbench): its models cannot be verified",
            dir.display()
        )));
    };
    if let Some(what) = theirs.difference(ours) {
        return Err(Error::ModelIdentityMismatch { dir: dir.to_path_buf(), what });
    }
    let current = cell_counts(&read_rows(&dir.join("runs.csv"))?);
    Ok(baseline
        .cells
        .iter()
        .map(|b| match current.iter().find(|c| c.cell == b.cell).filter(|c| c.proposed > 0) {
            Some(c) => {
                let p = drop_p_value(b, c);
                CheckRow {
                    cell: b.cell.label(),
                    baseline_rate: b.rate(),
                    current_rate: Some(c.rate()),
                    p_value: Some(p),
                    verdict: if p < baseline.significance { Verdict::Drop } else { Verdict::Pass },
                }
            }
            None => CheckRow {
                cell: b.cell.label(),
                baseline_rate: b.rate(),
                current_rate: None,
                p_value: None,
                verdict: Verdict::Missing,
            },
        })
        .collect())
}

pub fn format_check(rows: &[CheckRow], significance: f64) -> String {
    let mut out = format!(
        "| cell | baseline acceptance | current acceptance | p (drop) | verdict at {significance} |\n|---|---|---|---|---|\n"
    );
    for r in rows {
        let current = r.current_rate.map_or("—".into(), |c| format!("{c:.4}"));
        let p = r.p_value.map_or("—".into(), |p| format!("{p:.3e}"));
        let verdict = match r.verdict {
            Verdict::Pass => "ok",
            Verdict::Drop => "SIGNIFICANT DROP",
            Verdict::Missing => "MISSING in this run",
        };
        out += &format!("| {} | {:.4} | {current} | {p} | {verdict} |\n", r.cell, r.baseline_rate);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(proposed: u64, accepted: u64) -> CellCounts {
        CellCounts { cell: CellKey::new("specbench", "ndarray", "f32", 1.0, 2), proposed, accepted }
    }

    #[test]
    fn a_clear_drop_is_significant_and_equal_rates_are_not() {
        assert!(drop_p_value(&counts(1000, 700), &counts(1000, 600)) < 1e-4);
        assert!((drop_p_value(&counts(1000, 700), &counts(1000, 700)) - 0.5).abs() < 1e-12);
        // A rise is never a drop.
        assert!(drop_p_value(&counts(1000, 600), &counts(1000, 700)) > 0.99);
        // Degenerate rates.
        assert_eq!(drop_p_value(&counts(10, 10), &counts(10, 10)), 1.0);
    }

    #[test]
    fn a_baseline_that_cannot_test_anything_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baseline.json");
        let models = serde_json::json!({"target": {"spec": "a", "fingerprint": "0"}, "draft": {"spec": "b", "fingerprint": "1"}});
        let cell = serde_json::json!({"engine": "specbench", "backend": "ndarray", "dtype": "f32", "temperature": 1.0, "k": 2, "proposed": 10, "accepted": 5});
        let write = |value: serde_json::Value| std::fs::write(&path, value.to_string()).unwrap();
        let base =
            serde_json::json!({"experiment": "x", "models": models, "significance": 0.01, "cells": [cell]});
        write(base.clone());
        Baseline::read(&path).unwrap();
        for (key, value, expected) in [
            ("cells", serde_json::json!([]), "no speculative cell"),
            ("significance", serde_json::json!(0.0), "significance"),
            ("significance", serde_json::json!(-1.0), "significance"),
            ("models", serde_json::Value::Null, "fingerprints"),
        ] {
            let mut bad = base.clone();
            bad[key] = value;
            write(bad);
            let err = Baseline::read(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{key}: {err}");
        }
        let mut no_rate = base.clone();
        no_rate["cells"][0]["proposed"] = 0.into();
        write(no_rate);
        assert!(Baseline::read(&path).unwrap_err().to_string().contains("no acceptance rate"));
    }
}
