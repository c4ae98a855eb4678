//! `runs.csv`: one row per prompt × cell × repeat, appended and flushed as each finishes so an
//! interrupted sweep loses nothing. Other engines write rows in the same schema.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `engine` of rows specbench itself measured (peers write their own name).
pub const ENGINE: &str = "specbench";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub engine: String,
    pub backend: String,
    pub dtype: String,
    pub target: String,
    /// What drafted: a checkpoint, or what the target became (empty for target-only rows).
    pub draft: String,
    /// The drafter's name in the config (`draft` for `[models.draft]`; empty for target-only
    /// rows).
    #[serde(default)]
    pub drafter: String,
    pub prompt_id: String,
    pub category: String,
    pub temperature: f64,
    /// 0 for the target-only baseline; the most a step may draft for adaptive schedules.
    pub k: usize,
    /// Empty for a fixed k; else the adaptive schedule (`heuristic:4`, `confidence:0.5`).
    #[serde(default)]
    pub schedule: String,
    pub repeat: usize,
    pub seed: u64,
    pub new_tokens: usize,
    /// Target forwards after prefill.
    pub target_calls: u64,
    pub proposed: u64,
    pub accepted: u64,
    pub alpha_hat: Option<f64>,
    pub alpha: Option<f64>,
    pub mean_accepted_len: f64,
    pub prefill_s: f64,
    pub draft_s: f64,
    pub verify_s: f64,
    /// Host sampling and everything else outside the model forwards.
    pub other_s: f64,
    pub wall_s: f64,
    /// new_tokens / wall_s: end to end, prefill of both models included.
    pub tokens_per_s: f64,
    /// Proposed count per draft position, `;`-separated (positions past the stop are not
    /// proposed; empty for other engines and older rows).
    #[serde(default)]
    pub position_proposed: String,
    /// Accepted count per draft position, `;`-separated (empty for other engines).
    #[serde(default)]
    pub position_accepted: String,
    /// Target calls per accepted length 0..=k, `;`-separated.
    #[serde(default)]
    pub accepted_len_hist: String,
    /// Target calls per number of draft tokens proposed 0..=k, `;`-separated: the draft length
    /// actually used.
    #[serde(default)]
    pub drafted_len_hist: String,
    /// Σβ and the number of verified positions, so α aggregates exactly across rows.
    #[serde(default)]
    pub overlap_sum: Option<f64>,
    #[serde(default)]
    pub overlap_count: Option<u64>,
    /// Draft tokens the target verified, summed over calls: a tree's every node (a chain's
    /// `proposed`, with positions past a stop). Empty for other engines and older rows.
    #[serde(default)]
    pub nodes: Option<u64>,
}

/// One cell of a sweep: the rows summary, baseline and check group together. The one
/// definition of a cell's identity; -0.0 and 0.0 are one temperature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellKey {
    pub engine: String,
    pub backend: String,
    pub dtype: String,
    /// Empty for the target-only baseline.
    #[serde(default)]
    pub drafter: String,
    /// Empty for a fixed k.
    #[serde(default)]
    pub schedule: String,
    pub temperature: f64,
    /// 0 for the target-only baseline.
    pub k: usize,
}

impl CellKey {
    pub fn new(engine: &str, backend: &str, dtype: &str, temperature: f64, k: usize) -> Self {
        Self {
            engine: engine.into(),
            backend: backend.into(),
            dtype: dtype.into(),
            drafter: String::new(),
            schedule: String::new(),
            temperature: temperature + 0.0,
            k,
        }
    }

    pub fn with_drafter(self, drafter: &str, schedule: &str) -> Self {
        Self { drafter: drafter.into(), schedule: schedule.into(), ..self }
    }

    /// The target-only cell that this cell's speedup is measured against.
    pub fn baseline(&self) -> Self {
        Self { k: 0, drafter: String::new(), schedule: String::new(), ..self.clone() }
    }

    /// The drafter and its draft length in words: `draft k=3`, `ngram heuristic:4 (k ≤ 8)`.
    pub fn draft_label(&self) -> String {
        match (self.k, self.schedule.is_empty()) {
            (0, _) => "target only".into(),
            (k, true) => format!("{} k={k}", self.drafter),
            // A tree's shape names its depth.
            (_, false) if self.schedule.starts_with("tree:") => format!("{} {}", self.drafter, self.schedule),
            (k, false) => format!("{} {} (k ≤ {k})", self.drafter, self.schedule),
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{} {} {} T={} {}",
            self.engine,
            self.backend,
            self.dtype,
            self.temperature,
            self.draft_label()
        )
    }

    fn identity(&self) -> (&str, &str, &str, &str, &str, u64, usize) {
        let t = (self.temperature + 0.0).to_bits();
        (&self.engine, &self.backend, &self.dtype, &self.drafter, &self.schedule, t, self.k)
    }
}

impl PartialEq for CellKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}
impl Eq for CellKey {}
impl std::hash::Hash for CellKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}
impl PartialOrd for CellKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
/// Temperatures are finite and ≥ 0, whose bit patterns sort as their values.
impl Ord for CellKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.identity().cmp(&other.identity())
    }
}

/// Identifies a row within a sweep: what resume skips and merge deduplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub cell: CellKey,
    pub prompt_id: String,
    pub repeat: usize,
}

/// The largest draft length a row may carry (the config allows less): a larger one is a damaged
/// file, and the summary allocates per position.
const MAX_ROW_K: usize = 1024;

impl RunRow {
    pub fn cell(&self) -> CellKey {
        CellKey::new(&self.engine, &self.backend, &self.dtype, self.temperature, self.k)
            .with_drafter(&self.drafter, &self.schedule)
    }

    pub fn key(&self) -> RowKey {
        RowKey { cell: self.cell(), prompt_id: self.prompt_id.clone(), repeat: self.repeat }
    }

    /// What the summary relies on: sizes within bounds, counts that add up, finite times.
    fn check(&self) -> std::result::Result<(), String> {
        if self.k > MAX_ROW_K {
            return Err(format!("k = {} is larger than {MAX_ROW_K}", self.k));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature {} is not a finite number ≥ 0", self.temperature));
        }
        if self.accepted > self.proposed {
            return Err(format!("accepted {} exceeds proposed {}", self.accepted, self.proposed));
        }
        let times =
            [self.prefill_s, self.draft_s, self.verify_s, self.other_s, self.wall_s, self.tokens_per_s];
        if times.iter().any(|t| !t.is_finite() || *t < 0.0) {
            return Err("a time or speed is negative or not finite".into());
        }
        for (name, list, max) in [
            ("position_proposed", &self.position_proposed, self.k),
            ("position_accepted", &self.position_accepted, self.k),
            ("accepted_len_hist", &self.accepted_len_hist, self.k + 1),
            ("drafted_len_hist", &self.drafted_len_hist, self.k + 1),
        ] {
            let entries: Vec<&str> = list.split(';').filter(|s| !s.is_empty()).collect();
            if entries.len() > max {
                return Err(format!("{name} has {} entries, more than k = {} allows", entries.len(), self.k));
            }
            if entries.iter().any(|s| s.parse::<u64>().is_err()) {
                return Err(format!("{name} `{list}` is not a list of counts"));
            }
        }
        Ok(())
    }
}

pub fn join_counts(counts: &[u64]) -> String {
    counts.iter().map(u64::to_string).collect::<Vec<_>>().join(";")
}

pub fn split_counts(text: &str) -> Vec<u64> {
    text.split(';').filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// Reads every complete row, each checked (`RunRow::check`). A final line cut short by a crash
/// is ignored, not an error.
pub fn read_rows(path: &Path) -> Result<Vec<RunRow>> {
    let text = crate::files::read_text(path)?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    csv::Reader::from_reader(complete.as_bytes())
        .deserialize()
        .enumerate()
        .map(|(i, row): (usize, csv::Result<RunRow>)| {
            let malformed = |message: String| Error::MalformedFile {
                path: path.to_path_buf(),
                message: format!("row {}: {message}", i + 1),
            };
            let row = row.map_err(|e| malformed(e.to_string()))?;
            row.check().map_err(malformed)?;
            Ok(row)
        })
        .collect()
}

/// Appends rows to `runs.csv`, one flushed line at a time.
pub struct RowWriter {
    path: PathBuf,
    file: File,
}

impl RowWriter {
    /// Opens `path` for appending. An existing file is first cut back to its last complete
    /// line (a crash can leave half a row); a new one gets the header.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |op| crate::files::io_error(op, path);
        if path.exists() {
            let text = std::fs::read(path).map_err(io("read"))?;
            let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < text.len() {
                std::fs::write(path, &text[..complete]).map_err(io("write"))?;
            }
        }
        let is_new = !path.exists() || std::fs::metadata(path).map_err(io("read"))?.len() == 0;
        let mut writer = Self {
            path: path.to_path_buf(),
            file: OpenOptions::new().create(true).append(true).open(path).map_err(io("open for writing"))?,
        };
        let header = writer.header()?;
        if is_new {
            writer.write_bytes(header.as_bytes())?;
        } else {
            // Rows appended under another header would land in the wrong columns.
            let text = crate::files::read_text(path)?;
            let found = text.split_inclusive('\n').next().unwrap_or_default();
            if found != header {
                return Err(Error::MalformedFile {
                    path: path.to_path_buf(),
                    message: "its columns are not those this specbench writes (made by an older version?); \
                              rows cannot be appended to it: run the sweep into a new folder"
                        .into(),
                });
            }
        }
        Ok(writer)
    }

    /// The header line, as the csv crate writes it with the first record: a blank row is
    /// serialized and only the header line kept.
    fn header(&self) -> Result<String> {
        let mut header = csv::WriterBuilder::new().has_headers(true).from_writer(Vec::new());
        header.serialize(RunRow::default()).map_err(|e| self.csv_error(e))?;
        let bytes = header.into_inner().map_err(|e| self.csv_error(e.into_error().into()))?;
        let first_line = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
        Ok(String::from_utf8_lossy(&bytes[..first_line]).into_owned())
    }

    pub fn append(&mut self, row: &RunRow) -> Result<()> {
        let mut line = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
        line.serialize(row).map_err(|e| self.csv_error(e))?;
        let bytes = line.into_inner().map_err(|e| self.csv_error(e.into_error().into()))?;
        self.write_bytes(&bytes)
    }

    /// One `write` per line and a flush to the OS: a killed process leaves whole rows.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .and_then(|_| self.file.flush())
            .map_err(crate::files::io_error("write", &self.path))
    }

    fn csv_error(&self, e: csv::Error) -> Error {
        Error::MalformedFile { path: self.path.clone(), message: e.to_string() }
    }
}

/// Keys present in `rows`, for resume.
pub fn done_keys(rows: &[RunRow]) -> HashSet<RowKey> {
    rows.iter().map(RunRow::key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prompt: &str, k: usize) -> RunRow {
        RunRow { engine: "specbench".into(), prompt_id: prompt.into(), k, ..RunRow::default() }
    }

    #[test]
    fn rows_round_trip_and_a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.csv");
        let mut writer = RowWriter::open(&path).unwrap();
        writer.append(&row("a", 0)).unwrap();
        writer.append(&row("b", 2)).unwrap();
        drop(writer);
        // Simulate a crash halfway through a third row.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"specbench,ndarray,f32").unwrap();
        assert_eq!(read_rows(&path).unwrap(), vec![row("a", 0), row("b", 2)]);
        // Reopening cuts the torn line, and new rows follow whole ones.
        let mut writer = RowWriter::open(&path).unwrap();
        writer.append(&row("c", 1)).unwrap();
        let prompts: Vec<String> = read_rows(&path).unwrap().into_iter().map(|r| r.prompt_id).collect();
        assert_eq!(prompts, ["a", "b", "c"]);
    }

    #[test]
    fn rows_are_not_appended_under_another_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.csv");
        std::fs::write(&path, "engine,backend,k\nspecbench,ndarray,0\n").unwrap();
        let err = RowWriter::open(&path).err().expect("another header").to_string();
        assert!(err.contains("runs.csv") && err.contains("columns"), "{err}");
    }

    #[test]
    fn counts_round_trip() {
        assert_eq!(split_counts(&join_counts(&[3, 0, 7])), vec![3, 0, 7]);
        assert!(split_counts("").is_empty());
    }
}
