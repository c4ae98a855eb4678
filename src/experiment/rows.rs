//! `runs.csv`: one row per prompt × cell × repeat, appended and flushed as each finishes so an
//! interrupted sweep loses nothing. Other engines write rows in the same schema.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub engine: String,
    pub backend: String,
    pub dtype: String,
    pub target: String,
    /// Empty for target-only rows.
    pub draft: String,
    pub prompt_id: String,
    pub category: String,
    pub temperature: f64,
    /// 0 for the target-only baseline.
    pub k: usize,
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
    /// Accepted count per draft position, `;`-separated (empty for other engines).
    #[serde(default)]
    pub position_accepted: String,
    /// Target calls per accepted length 0..=k, `;`-separated.
    #[serde(default)]
    pub accepted_len_hist: String,
    /// Σβ and the number of verified positions, so α aggregates exactly across rows.
    #[serde(default)]
    pub overlap_sum: Option<f64>,
    #[serde(default)]
    pub overlap_count: Option<u64>,
}

/// Identifies a row within a sweep: what resume skips and merge deduplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub engine: String,
    pub backend: String,
    pub temperature_bits: u64,
    pub k: usize,
    pub prompt_id: String,
    pub repeat: usize,
}

impl RunRow {
    pub fn key(&self) -> RowKey {
        RowKey {
            engine: self.engine.clone(),
            backend: self.backend.clone(),
            temperature_bits: self.temperature.to_bits(),
            k: self.k,
            prompt_id: self.prompt_id.clone(),
            repeat: self.repeat,
        }
    }
}

pub fn join_counts(counts: &[u64]) -> String {
    counts.iter().map(u64::to_string).collect::<Vec<_>>().join(";")
}

pub fn split_counts(text: &str) -> Vec<u64> {
    text.split(';').filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// Reads every complete row. A final line cut short by a crash is ignored, not an error.
pub fn read_rows(path: &Path) -> Result<Vec<RunRow>> {
    let text = crate::files::read_text(path)?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    csv::Reader::from_reader(complete.as_bytes())
        .deserialize()
        .enumerate()
        .map(|(i, row)| {
            row.map_err(|e| Error::MalformedFile {
                path: path.to_path_buf(),
                message: format!("row {}: {e}", i + 1),
            })
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
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        if path.exists() {
            let text = std::fs::read(path).map_err(io)?;
            let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < text.len() {
                std::fs::write(path, &text[..complete]).map_err(io)?;
            }
        }
        let is_new = !path.exists() || std::fs::metadata(path).map_err(io)?.len() == 0;
        let mut writer = Self {
            path: path.to_path_buf(),
            file: OpenOptions::new().create(true).append(true).open(path).map_err(io)?,
        };
        if is_new {
            let mut header = csv::WriterBuilder::new().has_headers(true).from_writer(Vec::new());
            // The csv crate writes a header with the first record: serialize a blank row and
            // keep only the header line.
            header.serialize(RunRow::default()).map_err(|e| writer.csv_error(e))?;
            let bytes = header.into_inner().map_err(|e| writer.csv_error(e.into_error().into()))?;
            let first_line = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
            writer.write_bytes(&bytes[..first_line])?;
        }
        Ok(writer)
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
            .map_err(|source| Error::Io { path: self.path.clone(), source })
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
    fn counts_round_trip() {
        assert_eq!(split_counts(&join_counts(&[3, 0, 7])), vec![3, 0, 7]);
        assert!(split_counts("").is_empty());
    }
}
