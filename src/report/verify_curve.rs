//! The verify curve: what one forward of n rows costs against a forward of one, per engine and
//! model, from `verify_curve.csv` (rows of `specbench bench forward --rows`, and llama.cpp's
//! `llama-bench` figures in the same columns: experiments/verify_curve.sh), as a table in
//! `verify_curve.md` and a plot, `plots/verify_curve`. A verify of k drafts is a forward of
//! k + 1 rows; Theorem 3.8 assumes it costs one row's time. The table's second part is that
//! theorem with each verify's measured cost instead: the best k and its speedup for a few
//! acceptance rates and draft costs.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::SeriesLabelPosition;

use super::plots::{Line, LineChart, Series, render};
use crate::error::{Error, Result};
use crate::measure::ForwardCost;

/// The file the curve is read from, in a result folder.
pub const FILE: &str = "verify_curve.csv";

/// The row counts the table shows, where measured: k + 1 for k = 1, 2, 4, 8, 16, 32, 64.
const TABLE_ROWS: [usize; 7] = [2, 3, 5, 9, 17, 33, 65];

/// The (α, c) pairs the prediction table shows: c in decode steps per drafted token.
const PREDICTED_FOR: [(f64, f64); 4] = [(0.6, 0.05), (0.8, 0.05), (0.9, 0.05), (0.8, 0.2)];

/// Reads `dir/verify_curve.csv` and writes `verify_curve.md` and `plots/verify_curve`.
pub fn write(dir: &Path) -> Result<()> {
    let path = dir.join(FILE);
    let costs = read(&path)?;
    let curves = curves(&costs);
    crate::files::write_text(&dir.join("verify_curve.md"), &markdown(&curves))?;
    let plots = dir.join("plots");
    crate::files::create_dir(&plots)?;
    render(&chart(&curves), &plots, "verify_curve")
}

fn read(path: &Path) -> Result<Vec<ForwardCost>> {
    let text = crate::files::read_text(path)?;
    let costs: Vec<ForwardCost> = csv::Reader::from_reader(text.as_bytes())
        .deserialize()
        .enumerate()
        .map(|(i, row)| {
            row.map_err(|e: csv::Error| Error::MalformedFile {
                path: path.to_path_buf(),
                message: format!("row {}: {e}", i + 1),
            })
        })
        .collect::<Result<_>>()?;
    match costs.iter().find(|c| !(c.seconds > 0.0 && c.seconds.is_finite() && c.tokens > 0)) {
        Some(bad) => Err(Error::MalformedFile {
            path: path.to_path_buf(),
            message: format!(
                "{} {}: {} rows in {} s is not a time",
                bad.engine, bad.model, bad.tokens, bad.seconds
            ),
        }),
        None if costs.is_empty() => {
            Err(Error::MalformedFile { path: path.to_path_buf(), message: "no rows".into() })
        }
        None => Ok(costs),
    }
}

/// One engine's curve on one model at one context: (rows, seconds), by rows.
type Curves = BTreeMap<(String, String, usize), BTreeMap<usize, f64>>;

/// The curves, each model named by its file name; a length measured twice keeps its last row.
fn curves(costs: &[ForwardCost]) -> Curves {
    let mut curves = Curves::new();
    for c in costs {
        let model =
            Path::new(&c.model).file_name().map_or(c.model.clone(), |n| n.to_string_lossy().into_owned());
        curves.entry((model, c.engine.clone(), c.cache_len)).or_default().insert(c.tokens, c.seconds);
    }
    curves
}

fn markdown(curves: &Curves) -> String {
    let shown: Vec<usize> =
        TABLE_ROWS.into_iter().filter(|n| curves.values().any(|curve| curve.contains_key(n))).collect();
    let mut out = String::from(
        "# Verify curve\n\nTime of one forward of n rows after `context` cached positions ÷ the time of one row \
         (a verify of k drafts is n = k + 1 rows; Theorem 3.8 assumes 1.0). One row in milliseconds.\n\n",
    );
    out += "| model | engine | context | 1 row (ms) |";
    out += &shown.iter().map(|n| format!(" {n} |")).collect::<String>();
    out += "\n|---|---|---|---|";
    out += &"---|".repeat(shown.len());
    out += "\n";
    for ((model, engine, context), curve) in curves {
        let one = curve.get(&1).copied();
        out += &format!(
            "| {model} | {engine} | {context} | {} |",
            one.map_or("—".into(), |s| format!("{:.2}", s * 1e3))
        );
        for n in &shown {
            out += &match (curve.get(n), one) {
                (Some(s), Some(one)) => format!(" {:.2} |", s / one),
                _ => " — |".into(),
            };
        }
        out += "\n";
    }
    out += &predictions(curves);
    out
}

/// Theorem 3.8 with the curve's verify costs: for each (α, c) of `PREDICTED_FOR`, the best k
/// among the measured lengths and its speedup over target-only decoding.
fn predictions(curves: &Curves) -> String {
    let mut out = String::from(
        "\n## What the curve predicts\n\nTheorem 3.8 with each verify's measured cost instead of one decode step: \
         speedup = E(α, k) / (k·c + t(k + 1) ÷ t(1)), c the draft's time per drafted token in decode steps; \
         the best k among the measured lengths, and its speedup.\n\n| model | engine | context |",
    );
    out += &PREDICTED_FOR.iter().map(|(a, c)| format!(" α = {a}, c = {c} |")).collect::<String>();
    out += "\n|---|---|---|";
    out += &"---|".repeat(PREDICTED_FOR.len());
    out += "\n";
    for ((model, engine, context), curve) in curves {
        let Some(&one) = curve.get(&1) else { continue };
        out += &format!("| {model} | {engine} | {context} |");
        for &(alpha, cost) in &PREDICTED_FOR {
            let best = curve
                .iter()
                .filter(|&(&n, _)| n >= 2)
                .map(|(&n, &s)| {
                    (crate::metrics::speedup_with_verify_cost(alpha, cost, n - 1, s / one), n - 1)
                })
                .max_by(|a, b| a.0.total_cmp(&b.0));
            out += &best.map_or(" — |".into(), |(speedup, k)| format!(" {speedup:.2}× (k = {k}) |"));
        }
        out += "\n";
    }
    out
}

fn chart(curves: &Curves) -> LineChart {
    let models: Vec<&String> = {
        let mut models: Vec<&String> = curves.keys().map(|(m, ..)| m).collect();
        models.dedup();
        models
    };
    let series = curves
        .iter()
        .filter_map(|((model, engine, context), curve)| {
            let one = *curve.get(&1)?;
            let color = models.iter().position(|m| *m == model).unwrap_or(0);
            let points = curve.iter().map(|(&n, &s)| (n as f64, s / one)).collect();
            let line = if engine == crate::experiment::rows::ENGINE { Line::Solid } else { Line::Dashed };
            Some(Series {
                label: format!("{model}, {engine} (context {context})"),
                color,
                points,
                line,
                intervals: Vec::new(),
            })
        })
        .collect();
    LineChart {
        title: "Cost of one forward of n rows".into(),
        x_label: "rows in the forward (a verify of k drafts: k + 1)".into(),
        y_label: "time ÷ one row".into(),
        series,
        reference: Some(1.0),
        legend: SeriesLabelPosition::UpperLeft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(engine: &str, tokens: usize, seconds: f64) -> ForwardCost {
        ForwardCost {
            engine: engine.into(),
            model: "models/m.gguf".into(),
            backend: "flex".into(),
            dtype: "f32".into(),
            cache_len: 190,
            tokens,
            seconds,
            ratio_to_one: 0.0,
            weight_bytes: 1.0,
        }
    }

    #[test]
    fn the_curve_is_tabled_and_drawn_per_engine_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let rows = [
            cost("specbench", 1, 0.004),
            cost("specbench", 9, 0.008),
            cost("llama.cpp", 1, 0.005),
            cost("llama.cpp", 9, 0.0125),
        ];
        crate::measure::append_csv(&path, &rows).unwrap();
        write(dir.path()).unwrap();
        let table = std::fs::read_to_string(dir.path().join("verify_curve.md")).unwrap();
        assert!(table.contains("| m.gguf | specbench | 190 | 4.00 | 2.00 |"), "{table}");
        assert!(table.contains("| m.gguf | llama.cpp | 190 | 5.00 | 2.50 |"), "{table}");
        // α = 0.6, c = 0.05, k = 8 with a verify of two steps: (1 − 0.6⁹) / 0.4 / (0.4 + 2.0).
        let want = (1.0 - 0.6f64.powi(9)) / 0.4 / 2.4;
        assert!(table.contains(&format!("| m.gguf | specbench | 190 | {want:.2}× (k = 8) |")), "{table}");
        assert!(dir.path().join("plots/verify_curve.svg").exists());
        crate::measure::append_csv(&path, &[cost("specbench", 3, f64::NAN)]).unwrap();
        let message = write(dir.path()).unwrap_err().to_string();
        assert!(message.contains(FILE) && message.contains("not a time"), "{message}");
    }
}
