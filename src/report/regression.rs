//! Acceptance-rate regression testing: `baseline` stores per-cell acceptance counts, `check`
//! tests a new run against them with a one-sided two-proportion z-test.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::error::Result;
use crate::experiment::rows::RunRow;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub experiment: String,
    pub significance: f64,
    pub cells: Vec<CellCounts>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellCounts {
    pub engine: String,
    pub backend: String,
    pub dtype: String,
    pub temperature: f64,
    pub k: usize,
    pub proposed: u64,
    pub accepted: u64,
}

impl CellCounts {
    fn label(&self) -> String {
        format!("{} {} {} T={} k={}", self.engine, self.backend, self.dtype, self.temperature, self.k)
    }

    fn same_cell(&self, other: &CellCounts) -> bool {
        (&self.engine, &self.backend, &self.dtype, self.temperature.to_bits(), self.k)
            == (&other.engine, &other.backend, &other.dtype, other.temperature.to_bits(), other.k)
    }

    fn rate(&self) -> f64 {
        self.accepted as f64 / self.proposed as f64
    }
}

/// engine, backend, dtype, temperature bits, k.
type CellKey = (String, String, String, u64, usize);

/// Acceptance counts of every speculative cell.
pub fn cell_counts(rows: &[RunRow]) -> Vec<CellCounts> {
    let mut cells: BTreeMap<CellKey, (u64, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.k > 0) {
        let key = (r.engine.clone(), r.backend.clone(), r.dtype.clone(), r.temperature.to_bits(), r.k);
        let entry = cells.entry(key).or_default();
        entry.0 += r.proposed;
        entry.1 += r.accepted;
    }
    cells
        .into_iter()
        .map(|((engine, backend, dtype, t, k), (proposed, accepted))| CellCounts {
            engine,
            backend,
            dtype,
            temperature: f64::from_bits(t),
            k,
            proposed,
            accepted,
        })
        .collect()
}

impl Baseline {
    pub fn read(path: &Path) -> Result<Self> {
        crate::files::read_json(path)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        crate::files::write_json(path, self)
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

pub fn check(baseline: &Baseline, rows: &[RunRow]) -> Vec<CheckRow> {
    let current = cell_counts(rows);
    baseline
        .cells
        .iter()
        .map(|b| match current.iter().find(|c| c.same_cell(b)) {
            Some(c) => {
                let p = drop_p_value(b, c);
                CheckRow {
                    cell: b.label(),
                    baseline_rate: b.rate(),
                    current_rate: Some(c.rate()),
                    p_value: Some(p),
                    verdict: if p < baseline.significance { Verdict::Drop } else { Verdict::Pass },
                }
            }
            None => CheckRow {
                cell: b.label(),
                baseline_rate: b.rate(),
                current_rate: None,
                p_value: None,
                verdict: Verdict::Missing,
            },
        })
        .collect()
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
        CellCounts {
            engine: "specbench".into(),
            backend: "ndarray".into(),
            dtype: "f32".into(),
            temperature: 1.0,
            k: 2,
            proposed,
            accepted,
        }
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
}
