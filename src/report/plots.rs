//! Figures for papers, in PNG and SVG. Every figure is a `LineChart` value drawn by one
//! function, so all share axes, fonts and colours.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::profile::cell_profile;
use super::summary::{ALL, SummaryRow, drafted_len_shares};
use crate::error::{Error, Result};
use crate::experiment::rows::{ENGINE, RunRow};

const SIZE: (u32, u32) = (900, 560);
const FONT: &str = "sans-serif";
/// The most x ticks a line chart labels.
const MAX_X_TICKS: usize = 20;

pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A dotted horizontal reference line (e.g. speedup 1).
    pub reference: Option<f64>,
    /// Where the legend goes: upper left, or upper right for falling curves.
    pub legend: SeriesLabelPosition,
}

/// A figure drawn the same way to PNG and SVG.
pub trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

pub struct Series {
    pub label: String,
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    pub line: Line,
    /// (x, low, high) intervals drawn as error bars.
    pub intervals: Vec<(f64, f64, f64)>,
}

/// How a series is drawn: measurements solid with markers, the two predictions in two
/// styles a reader tells apart in print (long dashes with squares; dots with triangles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Solid,
    Dashed,
    Dotted,
}

impl Series {
    fn solid(label: String, color: usize, points: Vec<(f64, f64)>) -> Self {
        Self { label, color, points, line: Line::Solid, intervals: Vec::new() }
    }

    fn dashed(label: String, color: usize, points: Vec<(f64, f64)>) -> Self {
        Self { line: Line::Dashed, ..Self::solid(label, color, points) }
    }

    fn dotted(label: String, color: usize, points: Vec<(f64, f64)>) -> Self {
        Self { line: Line::Dotted, ..Self::solid(label, color, points) }
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
pub fn render(chart: &impl Figure, dir: &Path, name: &str) -> Result<()> {
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
}

/// The dotted horizontal line at `y` (speedup 1) across the chart.
fn reference_line(x0: f64, x1: f64, y: f64) -> DashedLineSeries<std::vec::IntoIter<(f64, f64)>, i32> {
    DashedLineSeries::new(vec![(x0, y), (x1, y)], 2, 4, BLACK.mix(0.4).stroke_width(1))
}

/// Every chart's legend, in one style.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .position(position)
        .draw()
}

/// Labels whole numbers and leaves other tick positions blank.
fn integer_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 { format!("{x:.0}") } else { String::new() }
}

impl Figure for LineChart {
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
        // Every x axis counts (draft length, position, tokens drafted, rows): one tick per whole
        // number, or round steps where that many would crowd the axis (the verify curve's 65).
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(((x1 - x0).round() as usize + 1).min(MAX_X_TICKS))
            .x_label_formatter(&integer_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if let Some(y) = self.reference {
            chart.draw_series(reference_line(x0, x1, y))?;
        }
        for series in &self.series {
            let color = Palette99::pick(series.color).to_rgba();
            let style = color.stroke_width(2);
            match series.line {
                Line::Solid => {
                    chart
                        .draw_series(LineSeries::new(series.points.clone(), style))?
                        .label(&series.label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                    chart.draw_series(series.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
                }
                Line::Dashed => {
                    chart
                        .draw_series(DashedLineSeries::new(series.points.clone(), 8, 5, style))?
                        .label(&series.label)
                        .legend(move |(x, y)| {
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(0, 0), (8, 0)], style)
                                + PathElement::new(vec![(12, 0), (20, 0)], style)
                        });
                    chart.draw_series(
                        series
                            .points
                            .iter()
                            .map(|&p| EmptyElement::at(p) + Rectangle::new([(-3, -3), (3, 3)], style)),
                    )?;
                }
                Line::Dotted => {
                    let thin = color.stroke_width(2);
                    chart
                        .draw_series(DashedLineSeries::new(series.points.clone(), 2, 4, thin))?
                        .label(&series.label)
                        .legend(move |(x, y)| {
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(0, 0), (2, 0)], thin)
                                + PathElement::new(vec![(6, 0), (8, 0)], thin)
                                + PathElement::new(vec![(12, 0), (14, 0)], thin)
                                + PathElement::new(vec![(18, 0), (20, 0)], thin)
                        });
                    chart.draw_series(series.points.iter().map(|&p| TriangleMarker::new(p, 4, thin)))?;
                }
            }
            chart.draw_series(
                series
                    .intervals
                    .iter()
                    .map(|&(x, lo, hi)| ErrorBar::new_vertical(x, lo, (lo + hi) / 2.0, hi, style, 8)),
            )?;
        }
        legend(&mut chart, self.legend.clone())?;
        root.present()
    }
}

/// Grouped bars: one cluster per category, one bar per series, with 95% intervals.
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub bars: Vec<Bars>,
    /// A dotted horizontal reference line (speedup 1).
    pub reference: Option<f64>,
}

/// A value with its 95% interval when there is one.
pub type Estimate = (f64, Option<(f64, f64)>);

pub struct Bars {
    pub label: String,
    pub color: usize,
    /// Per category: the value and its interval.
    pub values: Vec<Option<Estimate>>,
}

impl Figure for BarChart {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let n = self.categories.len();
        let values = self.bars.iter().flat_map(|b| b.values.iter().flatten().map(|(v, _)| *v));
        let y_top =
            (values.chain(self.reference).filter(|y| y.is_finite()).fold(0.0f64, f64::max) * 1.6).max(1e-9);
        let (x0, x1) = (-0.5, n as f64 - 0.5);
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(x0..x1, 0.0..y_top)?;
        let name = |x: &f64| {
            let i = x.round();
            let on_center = (x - i).abs() < 1e-9 && i >= 0.0;
            on_center.then(|| self.categories.get(i as usize).cloned()).flatten().unwrap_or_default()
        };
        chart
            .configure_mesh()
            .y_desc(&self.y_label)
            .x_labels(n)
            .x_label_formatter(&name)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 16))
            .light_line_style(WHITE.mix(0.0))
            .disable_x_mesh()
            .draw()?;
        if let Some(y) = self.reference {
            chart.draw_series(reference_line(x0, x1, y))?;
        }
        let width = 0.8 / self.bars.len().max(1) as f64;
        for (j, bars) in self.bars.iter().enumerate() {
            let color = Palette99::pick(bars.color).to_rgba();
            let left = |i: usize| i as f64 - 0.4 + j as f64 * width;
            let present = || bars.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i, v)));
            chart
                .draw_series(present().map(|(i, (v, _))| {
                    Rectangle::new([(left(i) + 0.1 * width, 0.0), (left(i) + 0.9 * width, v)], color.filled())
                }))?
                .label(&bars.label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
            chart.draw_series(present().filter_map(|(i, (v, ci))| {
                let (lo, hi) = ci?;
                Some(ErrorBar::new_vertical(
                    left(i) + width / 2.0,
                    lo,
                    v,
                    hi.min(y_top),
                    BLACK.stroke_width(1),
                    6,
                ))
            }))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present()
    }
}

/// Speedup of each drafter (rows) at each k (columns), coloured red below 1 and blue above,
/// each cell labelled with its value.
pub struct Heatmap {
    pub title: String,
    pub rows: Vec<String>,
    pub columns: Vec<usize>,
    /// `values[row][column]`.
    pub values: Vec<Vec<Option<f64>>>,
}

/// White at 1, deepening to red at half the speed and to blue at twice it.
fn speedup_color(s: f64) -> RGBColor {
    let t = s.max(1e-9).log2().clamp(-1.0, 1.0);
    let mix = |to: (f64, f64, f64)| {
        let a = t.abs() * 0.75;
        let c = |x: f64| (255.0 * (1.0 - a) + x * a) as u8;
        RGBColor(c(to.0), c(to.1), c(to.2))
    };
    if t < 0.0 { mix((200.0, 40.0, 40.0)) } else { mix((40.0, 80.0, 200.0)) }
}

impl Figure for Heatmap {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let (n_rows, n_cols) = (self.rows.len(), self.columns.len());
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(110)
            .build_cartesian_2d(-0.5..n_cols as f64 - 0.5, -0.5..n_rows as f64 - 0.5)?;
        let at = |x: &f64, names: &dyn Fn(usize) -> Option<String>| {
            let i = x.round();
            ((x - i).abs() < 1e-9 && i >= 0.0).then(|| names(i as usize)).flatten().unwrap_or_default()
        };
        let column = |i: usize| self.columns.get(i).map(|k| k.to_string());
        let row = |i: usize| self.rows.get(n_rows.wrapping_sub(1).wrapping_sub(i)).cloned();
        chart
            .configure_mesh()
            .x_desc("draft length k")
            .x_labels(n_cols)
            .y_labels(n_rows)
            .x_label_formatter(&|x| at(x, &column))
            .y_label_formatter(&|y| at(y, &row))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .disable_mesh()
            .draw()?;
        for (r, values) in self.values.iter().enumerate() {
            let y = (n_rows - 1 - r) as f64;
            for (c, value) in values.iter().enumerate() {
                let Some(s) = value else { continue };
                let x = c as f64;
                chart.draw_series([Rectangle::new(
                    [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                    speedup_color(*s).filled(),
                )])?;
                let text =
                    Text::new(format!("{s:.2}"), (x - 0.2, y + 0.1), (FONT, 15).into_font().color(&BLACK));
                chart.draw_series([text])?;
            }
        }
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
        legend: SeriesLabelPosition::UpperLeft,
    };
    let positions_chart = |title: &str, series| LineChart {
        legend: SeriesLabelPosition::UpperRight,
        ..chart(title, "draft position i", "P(first i drafts accepted) (95% CI)", series, None)
    };
    // Adaptive schedules draft fewer than k at most steps: the chart shows fixed-k cells.
    let fixed_groups: Vec<(String, Vec<&SummaryRow>)> =
        groups.iter().filter(|(_, cells)| cells[0].schedule.is_empty()).cloned().collect();
    let with_iid = fixed_groups.len() <= MAX_GROUPS_WITH_PREDICTIONS;
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
            let stem = super::file_stem(drafter);
            let title = format!("{title}: {drafter}");
            let series = of_own(&speedup_series);
            render(
                &chart(&title, "draft length k", "speedup (95% CI)", series, Some(1.0)),
                dir,
                &format!("speedup_vs_k-{stem}"),
            )?;
            let fixed_own: Vec<_> =
                own_groups.iter().filter(|(_, cells)| cells[0].schedule.is_empty()).cloned().collect();
            let positions = series_of(&fixed_own, &|c, l, cells| position_series(rows, c, l, cells, true));
            if !positions.is_empty() {
                let title = format!("Acceptance by draft position: {drafter}");
                render(&positions_chart(&title, positions), dir, &format!("acceptance_by_position-{stem}"))?;
            }
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
    let positions =
        series_of(&fixed_groups, &|color, label, cells| position_series(rows, color, label, cells, with_iid));
    render(&positions_chart("Acceptance by draft position", positions), dir, "acceptance_by_position")?;
    write_category_bars(summary, dir)?;
    write_heatmaps(summary, dir)?;
    let drafted = each(&|color, label, cells| drafted_series(rows, color, label, cells));
    if drafted.is_empty() {
        return Ok(());
    }
    render(&chart(DRAFTED_TITLE, "tokens drafted", "share of steps", drafted, None), dir, "drafted_len_hist")
}

/// The (engine, backend, dtype, temperature) settings of the speculative cells, in order, with
/// each one's cells over all prompts: the drafters compared on one chart.
fn settings(summary: &[SummaryRow]) -> Vec<(String, Vec<&SummaryRow>)> {
    type Setting = (String, String, String, u64);
    let mut out: Vec<(Setting, Vec<&SummaryRow>)> = Vec::new();
    for r in summary.iter().filter(|r| r.category == ALL && r.k > 0 && r.speedup.is_some()) {
        let key = (r.engine.clone(), r.backend.clone(), r.dtype.clone(), r.temperature.to_bits());
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, cells)) => cells.push(r),
            None => out.push((key, vec![r])),
        }
    }
    out.into_iter()
        .map(|((engine, backend, dtype, t), cells)| {
            (format!("{engine} {backend} {dtype} T={}", f64::from_bits(t)), cells)
        })
        .collect()
}

/// The drafters of a setting's cells, in order of appearance.
fn drafters_of(cells: &[&SummaryRow]) -> Vec<String> {
    let mut drafters: Vec<String> = Vec::new();
    cells.iter().for_each(|r| {
        if !drafters.contains(&r.drafter) {
            drafters.push(r.drafter.clone())
        }
    });
    drafters
}

/// `name`, or `name-<setting>` when a folder has several settings.
fn setting_file(name: &str, setting: &str, count: usize) -> String {
    if count == 1 {
        name.to_string()
    } else {
        format!("{name}-{}", super::file_stem(&setting.replace("T=", "T").replace(' ', "-")))
    }
}

/// `speedup_by_category`: per setting, each drafter at its fastest cell (fixed k or adaptive),
/// its speedup per prompt category with the 95% interval; where the prompts have several
/// categories. Intervals past the axis (a category of two prompts has t = 12.7) are cut at it.
fn write_category_bars(summary: &[SummaryRow], dir: &Path) -> Result<()> {
    let columns = super::task_columns(summary);
    if columns.len() < 2 {
        return Ok(());
    }
    let settings = settings(summary);
    for (setting, cells) in &settings {
        let bars = drafters_of(cells)
            .into_iter()
            .enumerate()
            .map(|(color, drafter)| {
                let own = cells.iter().filter(|r| r.drafter == drafter);
                let fastest = own
                    .max_by(|a, b| a.speedup.partial_cmp(&b.speedup).expect("finite"))
                    .expect("a drafter has cells");
                let key = fastest.cell();
                let values = columns
                    .iter()
                    .map(|column| {
                        let row =
                            summary.iter().find(|r| r.category == column.category && r.cell() == key)?;
                        Some((row.speedup?, row.speedup_ci_low.zip(row.speedup_ci_high)))
                    })
                    .collect();
                let k = match fastest.schedule.is_empty() {
                    true => format!("k={}", fastest.k),
                    false => format!("{} (k ≤ {})", fastest.schedule, fastest.k),
                };
                Bars { label: format!("{drafter} {k}"), color, values }
            })
            .collect();
        let chart = BarChart {
            title: format!("Speedup by prompt category, {setting}"),
            y_label: "speedup (95% CI)".into(),
            categories: columns.iter().map(|column| column.short.clone()).collect(),
            bars,
            reference: Some(1.0),
        };
        render(&chart, dir, &setting_file("speedup_by_category", setting, settings.len()))?;
    }
    Ok(())
}

/// `speedup_heatmap`: per setting, drafter × k of the fixed-k cells' speedup, where more than
/// one drafter ran.
fn write_heatmaps(summary: &[SummaryRow], dir: &Path) -> Result<()> {
    let settings = settings(summary);
    for (setting, cells) in &settings {
        let fixed: Vec<&SummaryRow> = cells.iter().copied().filter(|r| r.schedule.is_empty()).collect();
        let drafters = drafters_of(&fixed);
        if drafters.len() < 2 {
            continue;
        }
        let columns: Vec<usize> =
            fixed.iter().map(|r| r.k).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let values = drafters
            .iter()
            .map(|d| {
                columns
                    .iter()
                    .map(|k| fixed.iter().find(|r| r.drafter == *d && r.k == *k).and_then(|r| r.speedup))
                    .collect()
            })
            .collect();
        let title = format!("Speedup, {setting}");
        render(
            &Heatmap { title, rows: drafters, columns, values },
            dir,
            &setting_file("speedup_heatmap", setting, settings.len()),
        )?;
    }
    Ok(())
}

/// One chart's series: `f` applied to each group, the group's index as its color.
fn series_of(groups: &[(String, Vec<&SummaryRow>)], f: &SeriesOfGroup) -> Vec<Series> {
    groups.iter().enumerate().flat_map(|(color, (label, cells))| f(color, label, cells)).collect()
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
    let points = |of: fn(&SummaryRow) -> Option<f64>| -> Vec<(f64, f64)> {
        cells.iter().filter_map(|r| Some((k_of(r), of(r)?))).collect()
    };
    let theorem = points(|r| r.predicted_speedup);
    if !theorem.is_empty() {
        series.push(Series::dashed(format!("{label} Thm 3.8"), color, theorem));
    }
    let refined = points(|r| r.refined_speedup);
    if !refined.is_empty() {
        series.push(Series::dotted(format!("{label} refined"), color, refined));
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

/// The joint acceptance rate through each draft position of the longest k, with its 95%
/// interval over prompts (specbench rows carry the histograms), against αⁱ when `with_iid`.
fn position_series(
    rows: &[RunRow],
    color: usize,
    label: &str,
    cells: &[&SummaryRow],
    with_iid: bool,
) -> Vec<Series> {
    let longest = cells.iter().max_by_key(|r| r.k).expect("groups are non-empty");
    let Some(profile) = cell_profile(rows, &longest.cell()) else { return Vec::new() };
    let points = profile.positions.iter().map(|p| (p.position as f64, p.joint)).collect();
    let mut series = vec![Series::solid(format!("{label} k={}", longest.k), color, points)];
    series[0].intervals = profile
        .positions
        .iter()
        .filter_map(|p| p.joint_ci.map(|(lo, hi)| (p.position as f64, lo, hi)))
        .collect();
    if let (true, Some(alpha)) = (with_iid, longest.alpha) {
        let iid = (1..=longest.k).map(|i| (i as f64, alpha.powi(i as i32))).collect();
        series.push(Series::dashed(format!("{label} a^i"), color, iid));
    }
    series
}
