//! Figures for papers, in PNG and SVG. Every figure is a `LineChart` value drawn by one
//! function, so all share axes, fonts and colours.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::summary::{ALL, SummaryRow, drafted_len_shares, position_acceptance};
use crate::error::{Error, Result};
use crate::experiment::rows::{ENGINE, RunRow};

const SIZE: (u32, u32) = (900, 560);
const FONT: &str = "sans-serif";

pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A dotted horizontal reference line (e.g. speedup 1).
    pub reference: Option<f64>,
}

pub struct Series {
    pub label: String,
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// (x, low, high) intervals drawn as error bars.
    pub intervals: Vec<(f64, f64, f64)>,
}

impl Series {
    fn solid(label: String, color: usize, points: Vec<(f64, f64)>) -> Self {
        Self { label, color, points, dashed: false, intervals: Vec::new() }
    }

    fn dashed(label: String, color: usize, points: Vec<(f64, f64)>) -> Self {
        Self { dashed: true, ..Self::solid(label, color, points) }
    }
}

/// Registers the bundled font once: plotters finds no system fonts without fontconfig.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../assets/DejaVuSans.ttf"),
        )
        .unwrap_or_else(|_| panic!("the bundled DejaVuSans.ttf is a valid font"));
    });
}

fn plot_error(path: &Path, e: impl std::fmt::Debug) -> Error {
    Error::Plot(format!("{}: {e:?}", path.display()))
}

/// Writes `name.png` and `name.svg` into `dir`.
pub fn render(chart: &LineChart, dir: &Path, name: &str) -> Result<()> {
    register_font();
    let png = dir.join(format!("{name}.png"));
    chart.draw(BitMapBackend::new(&png, SIZE).into_drawing_area()).map_err(|e| plot_error(&png, e))?;
    let svg = dir.join(format!("{name}.svg"));
    chart.draw(SVGBackend::new(&svg, SIZE).into_drawing_area()).map_err(|e| plot_error(&svg, e))?;
    Ok(())
}

impl LineChart {
    fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        let xs = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1).chain(s.intervals.iter().flat_map(|i| [i.1, i.2])));
        let (x_min, x_max) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
        let y_max = ys.chain(self.reference).filter(|y| y.is_finite()).fold(0.0f64, f64::max);
        let (x_min, x_max) = if x_min.is_finite() { (x_min, x_max) } else { (0.0, 1.0) };
        ((x_min - 0.5, x_max + 0.5), (0.0, (y_max * 1.15).max(1e-9)))
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let ((x0, x1), (y0, y1)) = self.bounds();
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if let Some(y) = self.reference {
            chart.draw_series(DashedLineSeries::new(
                vec![(x0, y), (x1, y)],
                2,
                4,
                BLACK.mix(0.4).stroke_width(1),
            ))?;
        }
        for series in &self.series {
            let color = Palette99::pick(series.color).to_rgba();
            let style = color.stroke_width(2);
            if series.dashed {
                chart
                    .draw_series(DashedLineSeries::new(series.points.clone(), 6, 5, style))?
                    .label(&series.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], style));
            } else {
                chart
                    .draw_series(LineSeries::new(series.points.clone(), style))?
                    .label(&series.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                chart.draw_series(series.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
            chart.draw_series(
                series
                    .intervals
                    .iter()
                    .map(|&(x, lo, hi)| ErrorBar::new_vertical(x, lo, (lo + hi) / 2.0, hi, style, 8)),
            )?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()
    }
}

/// The (engine, backend, dtype, drafter, schedule, temperature) groups of speculative cells,
/// each with its rows by k, labelled by the parts that differ between groups (a run of one
/// backend and dtype does not repeat them in every legend entry). An adaptive schedule is a
/// group of one cell, drawn at the draft length it used on average.
fn groups(summary: &[SummaryRow]) -> Vec<(String, Vec<&SummaryRow>)> {
    let cells: Vec<&SummaryRow> = summary.iter().filter(|s| s.category == ALL && s.k > 0).collect();
    let parts = |row: &SummaryRow| -> [String; 6] {
        [
            row.engine.clone(),
            row.backend.clone(),
            row.dtype.clone(),
            row.drafter.clone(),
            row.schedule.clone(),
            format!("T={}", row.temperature),
        ]
    };
    let varies: Vec<bool> =
        (0..6).map(|i| cells.iter().any(|row| parts(row)[i] != parts(cells[0])[i])).collect();
    let mut out: Vec<(String, Vec<&SummaryRow>)> = Vec::new();
    for row in cells {
        let shown: Vec<String> = parts(row)
            .into_iter()
            .zip(&varies)
            .filter(|(part, varies)| **varies && !part.is_empty())
            .map(|(part, _)| part)
            .collect();
        let label = if shown.is_empty() { row.drafter.clone() } else { shown.join(" ") };
        match out.iter_mut().find(|(l, _)| *l == label) {
            Some((_, rows)) => rows.push(row),
            None => out.push((label, vec![row])),
        }
    }
    out
}

/// Beyond this many groups the combined speedup chart shows measurements only; each drafter's
/// own chart keeps the predictions.
const MAX_GROUPS_WITH_PREDICTIONS: usize = 4;

const DRAFTED_TITLE: &str = "Tokens drafted per step (adaptive draft lengths)";

/// Builds one chart's series for a group: (color, label, the group's cells by k).
type SeriesOfGroup<'a> = dyn Fn(usize, &str, &[&SummaryRow]) -> Vec<Series> + 'a;

/// The four charts of a result folder, each from the summary's speculative cells grouped by
/// engine, backend, dtype and temperature (one color per group).
pub fn write_all(summary: &[SummaryRow], rows: &[RunRow], dir: &Path) -> Result<()> {
    crate::files::create_dir(dir)?;
    let groups = groups(summary);
    let chart = |title: &str, x: &str, y: &str, series: Vec<Series>, reference| LineChart {
        title: title.into(),
        x_label: x.into(),
        y_label: y.into(),
        series,
        reference,
    };
    let each = |f: &SeriesOfGroup| series_of(&groups, f);
    let measured_only = |color: usize, label: &str, cells: &[&SummaryRow]| {
        speedup_series(color, label, cells).into_iter().take(1).collect::<Vec<_>>()
    };
    let combined: &SeriesOfGroup =
        if groups.len() > MAX_GROUPS_WITH_PREDICTIONS { &measured_only } else { &speedup_series };
    let title = "Speedup over target-only decoding";
    render(
        &chart(title, "draft length k", "speedup (95% CI)", each(combined), Some(1.0)),
        dir,
        "speedup_vs_k",
    )?;
    let drafters: std::collections::BTreeSet<&str> = summary.iter().map(|r| r.drafter.as_str()).collect();
    let drafters: Vec<&str> = drafters.into_iter().filter(|d| !d.is_empty()).collect();
    if drafters.len() > 1 {
        for drafter in drafters {
            let own: Vec<SummaryRow> = summary.iter().filter(|r| r.drafter == drafter).cloned().collect();
            let own_groups = self::groups(&own);
            let of_own = |f: &SeriesOfGroup| series_of(&own_groups, f);
            let stem = file_stem(drafter);
            let title = format!("{title}: {drafter}");
            let series = of_own(&speedup_series);
            render(
                &chart(&title, "draft length k", "speedup (95% CI)", series, Some(1.0)),
                dir,
                &format!("speedup_vs_k-{stem}"),
            )?;
            let drafted = of_own(&|c, l, cells| drafted_series(rows, c, l, cells));
            if !drafted.is_empty() {
                let title = format!("{DRAFTED_TITLE}: {drafter}");
                let chart = chart(&title, "tokens drafted", "share of steps", drafted, None);
                render(&chart, dir, &format!("drafted_len_hist-{stem}"))?;
            }
        }
    }
    render(
        &chart("Decoding speed", "draft length k", "tokens/s", each(&speed_series), None),
        dir,
        "tokens_per_s",
    )?;
    render(
        &chart(
            "Tokens per target call",
            "draft length k",
            "mean accepted length",
            each(&length_series),
            Some(1.0),
        ),
        dir,
        "accepted_len_vs_k",
    )?;
    let positions = each(&|color, label, cells| position_series(rows, color, label, cells));
    render(
        &chart("Acceptance by draft position", "draft position", "acceptance rate", positions, None),
        dir,
        "acceptance_by_position",
    )?;
    let drafted = each(&|color, label, cells| drafted_series(rows, color, label, cells));
    if drafted.is_empty() {
        return Ok(());
    }
    render(&chart(DRAFTED_TITLE, "tokens drafted", "share of steps", drafted, None), dir, "drafted_len_hist")
}

/// One chart's series: `f` applied to each group, the group's index as its color.
fn series_of(groups: &[(String, Vec<&SummaryRow>)], f: &SeriesOfGroup) -> Vec<Series> {
    groups.iter().enumerate().flat_map(|(color, (label, cells))| f(color, label, cells)).collect()
}

/// A drafter's name as part of a file name.
fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Where a cell sits on the draft-length axis: its k, or for an adaptive schedule the mean
/// number of tokens it drafted per step.
fn k_of(row: &SummaryRow) -> f64 {
    match (row.schedule.is_empty(), row.mean_drafted) {
        (false, Some(drafted)) => drafted,
        _ => row.k as f64,
    }
}

/// Measured speedup with its interval, Theorem 3.8's prediction, and the refined prediction
/// from the measured verify cost.
fn speedup_series(color: usize, label: &str, cells: &[&SummaryRow]) -> Vec<Series> {
    let measured: Vec<(f64, f64)> = cells.iter().filter_map(|r| Some((k_of(r), r.speedup?))).collect();
    let mut series = vec![Series::solid(format!("{label} measured"), color, measured)];
    series[0].intervals =
        cells.iter().filter_map(|r| Some((k_of(r), r.speedup_ci_low?, r.speedup_ci_high?))).collect();
    for (name, of) in [
        ("Thm 3.8", (|r: &SummaryRow| r.predicted_speedup) as fn(&SummaryRow) -> Option<f64>),
        ("refined", |r: &SummaryRow| r.refined_speedup),
    ] {
        let points: Vec<(f64, f64)> = cells.iter().filter_map(|r| Some((k_of(r), of(r)?))).collect();
        if !points.is_empty() {
            series.push(Series::dashed(format!("{label} {name}"), color, points));
        }
    }
    series
}

/// Speculative tokens/s by k, and the target-only level.
fn speed_series(color: usize, label: &str, cells: &[&SummaryRow]) -> Vec<Series> {
    let mut series = vec![Series::solid(
        format!("{label} speculative"),
        color,
        cells.iter().map(|r| (k_of(r), r.tokens_per_s)).collect(),
    )];
    if let Some(base) = cells[0].baseline_tokens_per_s {
        let ks = [k_of(cells[0]), k_of(cells[cells.len() - 1])];
        series.push(Series::dashed(
            format!("{label} target-only"),
            color,
            ks.iter().map(|&k| (k, base)).collect(),
        ));
    }
    series
}

/// τ by k against E = (1 − α^(k+1)) / (1 − α).
fn length_series(color: usize, label: &str, cells: &[&SummaryRow]) -> Vec<Series> {
    let mut series = vec![Series::solid(
        format!("{label} measured"),
        color,
        cells.iter().map(|r| (k_of(r), r.mean_accepted_len)).collect(),
    )];
    let expected: Vec<(f64, f64)> =
        cells.iter().filter_map(|r| Some((k_of(r), r.expected_accepted_len?))).collect();
    if !expected.is_empty() {
        series.push(Series::dashed(format!("{label} (1-a^(k+1))/(1-a)"), color, expected));
    }
    series
}

/// For an adaptive schedule's cell, the share of steps that drafted 0..=k tokens (specbench rows
/// carry the histogram); nothing for fixed k, which drafts k at every step.
fn drafted_series(rows: &[RunRow], color: usize, label: &str, cells: &[&SummaryRow]) -> Vec<Series> {
    let cell = cells[0];
    if cell.schedule.is_empty() || cell.engine != ENGINE {
        return Vec::new();
    }
    let key = cell.cell();
    let cell_rows: Vec<&RunRow> = rows.iter().filter(|r| r.cell() == key).collect();
    let Some(shares) = drafted_len_shares(cell.k, &cell_rows) else { return Vec::new() };
    let points = shares.into_iter().enumerate().map(|(n, share)| (n as f64, share)).collect();
    vec![Series::solid(label.to_string(), color, points)]
}

/// Acceptance at each draft position of the longest k (specbench rows carry it), against αⁱ.
fn position_series(rows: &[RunRow], color: usize, label: &str, cells: &[&SummaryRow]) -> Vec<Series> {
    let longest = cells.iter().max_by_key(|r| r.k).expect("groups are non-empty");
    if longest.engine != ENGINE {
        return Vec::new();
    }
    let points = position_acceptance(rows, &longest.cell())
        .iter()
        .enumerate()
        .map(|(i, &r)| ((i + 1) as f64, r))
        .collect();
    let mut series = vec![Series::solid(format!("{label} k={}", longest.k), color, points)];
    if let Some(alpha) = longest.alpha {
        let iid = (1..=longest.k).map(|i| (i as f64, alpha.powi(i as i32))).collect();
        series.push(Series::dashed(format!("{label} a^i"), color, iid));
    }
    series
}
