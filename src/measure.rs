//! Measurements of the engine itself, for the GPU suite and for docs/performance.md: the
//! device's read bandwidth, and the cost of one forward of 1..n tokens on a filled cache (decode is n = 1; a
//! verify of k drafts is n = k + 1). Every timed region ends with a device sync.

use std::time::{Duration, Instant};

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::Runtime;
use crate::decoding::CausalLm;
use crate::error::{Error, Result};
use crate::load::LoadedModel;

/// Columns of the bandwidth buffer: each row is summed on its own, so the reduction reads every
/// byte once and writes one value per 16 KiB. (A single sum over a whole buffer of 2²⁴ ones
/// returned 262132 on wgpu/lavapipe here, so the result is checked, and rows keep each reduction
/// small.)
const BANDWIDTH_COLUMNS: usize = 4096;

/// The read bandwidth in GB/s that `runtime`'s projections see: the best of `repeats` row sums
/// over a buffer of about `bytes` f32 ones, each result checked. On the host kernels that is a
/// sum in host memory on the kernels' own thread pool (a Burn reduction on flex reads slower
/// than the kernels stream: no floor for them); elsewhere a sum on the device.
pub fn read_bandwidth(runtime: &Runtime, bytes: usize, repeats: usize) -> Result<f64> {
    // The buffer sits in host memory on the CPU backends: refused, not aborted, when it cannot.
    let available = crate::files::available_memory_bytes().filter(|_| runtime.backend().uses_host_memory());
    if let Some(available) = available.filter(|&a| bytes as u64 > a / 2) {
        let gib = |b: f64| b / (1u64 << 30) as f64;
        return Err(Error::InsufficientMemory {
            what: format!("a bandwidth buffer of {bytes} bytes (at most half the free memory)"),
            needed_gib: gib(bytes as f64),
            available_gib: gib(available as f64),
        });
    }
    if runtime.executor() == crate::backend::ExecutorKind::Host {
        return Ok(host_read_bandwidth(bytes, repeats));
    }
    let rows = (bytes / 4 / BANDWIDTH_COLUMNS).max(1);
    let buffer = Tensor::<2>::ones([rows, BANDWIDTH_COLUMNS], runtime.device());
    let unavailable =
        |reason: String| Error::BackendUnavailable { backend: runtime.backend().name().into(), reason };
    runtime.sync()?;
    let mut best = Duration::MAX;
    // One untimed pass compiles the kernel (wgpu) and faults the pages in (CPU).
    for pass in 0..=repeats.max(1) {
        let start = Instant::now();
        let sums = buffer.clone().sum_dim(1);
        runtime.sync()?;
        let elapsed = start.elapsed();
        let sums = sums
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| unavailable(format!("{e:?}")))?;
        if let Some(wrong) = sums.iter().find(|&&v| v != BANDWIDTH_COLUMNS as f32) {
            return Err(unavailable(format!("a row sum of {BANDWIDTH_COLUMNS} ones returned {wrong}")));
        }
        if pass > 0 {
            best = best.min(elapsed);
        }
    }
    Ok((rows * BANDWIDTH_COLUMNS * 4) as f64 / best.as_secs_f64() / 1e9)
}

fn host_read_bandwidth(bytes: usize, repeats: usize) -> f64 {
    let rows = (bytes / 4 / BANDWIDTH_COLUMNS).max(1);
    let buffer = vec![1.0f32; rows * BANDWIDTH_COLUMNS];
    let pool = crate::kernels::pool::Pool::global();
    let mut sums = vec![0.0f32; rows];
    let rows_per_task = rows.div_ceil(4 * pool.threads());
    let mut best = Duration::MAX;
    // One untimed pass faults the pages in.
    for pass in 0..=repeats.max(1) {
        let start = Instant::now();
        pool.for_each_chunk(&mut sums, rows_per_task, |task, sums| {
            let rows = &buffer[task * rows_per_task * BANDWIDTH_COLUMNS..][..sums.len() * BANDWIDTH_COLUMNS];
            for (sum, row) in sums.iter_mut().zip(rows.chunks_exact(BANDWIDTH_COLUMNS)) {
                *sum = crate::kernels::dot(row, &ONES);
            }
        });
        if pass > 0 {
            best = best.min(start.elapsed());
        }
        assert!(sums.iter().all(|&s| s == BANDWIDTH_COLUMNS as f32), "a row sum of ones went wrong");
    }
    (rows * BANDWIDTH_COLUMNS * 4) as f64 / best.as_secs_f64() / 1e9
}

/// The other operand of the host sums: a dot product with ones reads the buffer once, in the
/// eight-lane loop the kernels use.
static ONES: [f32; BANDWIDTH_COLUMNS] = [1.0; BANDWIDTH_COLUMNS];

/// One row of `forward.csv` (and of `verify_curve.csv`, where llama.cpp's rows sit beside
/// ours): a forward of `tokens` tokens after `cache_len` cached ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardCost {
    pub engine: String,
    pub model: String,
    pub backend: String,
    pub dtype: String,
    pub cache_len: usize,
    pub tokens: usize,
    /// Median over the repeats.
    pub seconds: f64,
    /// `seconds` over the one-token figure of the same run.
    pub ratio_to_one: f64,
    /// Bytes of weights one forward reads (every parameter once, in the run's dtype).
    pub weight_bytes: f64,
}

/// The most rows `forward_costs` times in one forward, and the most lengths it takes.
pub const MAX_FORWARD_ROWS: usize = 256;

/// `1-16,32,64`: row counts and inclusive ranges, comma-separated, each in
/// 1..=`MAX_FORWARD_ROWS`; sorted, without repeats.
pub fn parse_row_counts(text: &str) -> std::result::Result<Vec<usize>, String> {
    let number = |s: &str| -> std::result::Result<usize, String> {
        match s.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_FORWARD_ROWS).contains(&n) => Ok(n),
            _ => Err(format!("{s:?} is not a row count in 1..={MAX_FORWARD_ROWS}")),
        }
    };
    let mut counts = std::collections::BTreeSet::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (number(low)?, number(high)?);
                if low > high {
                    return Err(format!("{part:?} is an empty range"));
                }
                counts.extend(low..=high);
            }
            None => {
                counts.insert(number(part)?);
            }
        }
    }
    Ok(counts.into_iter().collect())
}

/// Median time of a forward of each of `rows` tokens (and of one, which every ratio is taken
/// to) on a cache of `cache_len` tokens. The lengths take turns within each repeat, so that a
/// machine's drift (a noisy neighbour, a clock step) falls on all of them alike rather than on
/// the lengths measured while it lasted.
pub fn forward_costs(
    model: &LoadedModel,
    cache_len: usize,
    rows: &[usize],
    repeats: usize,
) -> Result<Vec<ForwardCost>> {
    let llama = &model.model;
    let vocab = llama.config().vocab_size as u32;
    let token = |i: usize| 3 + (i as u32 * 7919) % (vocab - 3).max(1);
    let context: Vec<u32> = (0..cache_len.max(1)).map(token).collect();
    let mut cache = llama.new_cache();
    llama.logits(&context, &mut cache, 1, 1)?;
    let mut lengths: Vec<usize> = rows.iter().copied().chain([1]).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut times = vec![Vec::with_capacity(repeats); lengths.len()];
    for pass in 0..=repeats.max(1) {
        for (tokens, times) in lengths.iter().zip(&mut times) {
            let feed: Vec<u32> = (0..*tokens).map(|i| token(cache_len + i)).collect();
            let start = Instant::now();
            llama.logits(&feed, &mut cache, 1, 1)?;
            llama.sync()?;
            // The first pass warms the caches and the pool.
            if pass > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
            cache.truncate(context.len());
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    let runtime: &Runtime = model.runtime();
    let weight_bytes = llama.weight_bytes() as f64;
    Ok(lengths
        .iter()
        .zip(&medians)
        .filter(|(tokens, _)| rows.contains(tokens))
        .map(|(&tokens, &seconds)| ForwardCost {
            engine: crate::experiment::rows::ENGINE.into(),
            model: model.spec.to_string(),
            backend: runtime.backend().name().into(),
            dtype: runtime.weight_name().into(),
            cache_len: context.len(),
            tokens,
            seconds,
            ratio_to_one: seconds / medians[0],
            weight_bytes,
        })
        .collect())
}

/// One row of `bandwidth.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    pub backend: String,
    pub device: String,
    pub bytes: usize,
    pub gb_per_s: f64,
}

/// Appends `rows` to the CSV file at `path`, with a header when the file is new.
pub fn append_csv<T: Serialize>(path: &std::path::Path, rows: &[T]) -> Result<()> {
    let is_new = !path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(crate::files::io_error("open for writing", path))?;
    let mut writer = csv::WriterBuilder::new().has_headers(is_new).from_writer(file);
    let failed = |e: csv::Error| Error::MalformedFile { path: path.to_path_buf(), message: e.to_string() };
    for row in rows {
        writer.serialize(row).map_err(failed)?;
    }
    writer.flush().map_err(crate::files::io_error("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::load::ModelSpec;

    #[test]
    fn a_forward_curve_has_one_row_per_length_relative_to_one_token() {
        let runtime = Runtime::new(Backend::Ndarray, "f32").unwrap();
        let spec: ModelSpec = "random:custom".parse().unwrap();
        let model = LoadedModel::load(&spec, &runtime, 0).unwrap();
        let rows = forward_costs(&model, 8, &[1, 2, 3], 1).unwrap();
        assert_eq!(rows.iter().map(|r| r.tokens).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(rows[0].ratio_to_one, 1.0);
        // One row is timed for the ratios even when it is not asked for.
        let without_one = forward_costs(&model, 8, &[2], 1).unwrap();
        assert_eq!(without_one.len(), 1);
        assert!(without_one[0].ratio_to_one > 0.0);
        assert!(rows.iter().all(|r| r.seconds > 0.0 && r.cache_len == 8 && r.weight_bytes > 0.0));
        assert!(read_bandwidth(&runtime, 1 << 20, 2).unwrap() > 0.0);
    }

    #[test]
    fn row_counts_take_lists_and_ranges_and_refuse_the_rest() {
        assert_eq!(parse_row_counts("1-4,9,32,3").unwrap(), [1, 2, 3, 4, 9, 32]);
        assert_eq!(parse_row_counts("64").unwrap(), [64]);
        for bad in ["", "0", "4-2", "1-300", "x", "1,,2", "-3"] {
            assert!(parse_row_counts(bad).is_err(), "{bad:?}");
        }
    }
}
