//! Mutation fuzzing of everything specbench reads from disk: safetensors headers, GGUF headers,
//! config.json, experiment TOML, runs.csv and baseline files. Each input is damaged at random (seeded) and
//! fed to the real reader; any result is fine except a panic. Bounded in iterations and time so
//! that CI runs it every time.
//!
//! A hand-written mutator rather than cargo-fuzz (nightly only) or proptest (whose shrinking
//! buys nothing here and whose generators would have to rebuild these formats): the mutations
//! that matter are byte and number damage to real files, which a few lines do.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specbench::backend::{Backend, Runtime};
use specbench::experiment::config::ExperimentConfig;
use specbench::experiment::rows::read_rows;
use specbench::load::{LoadedModel, ModelSpec};
use specbench::model::LlamaConfig;
use specbench::report::regression::Baseline;
use specbench::report::summary::summarize;

const ITERATIONS: usize = 400;
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// Numbers that break naive size arithmetic.
const NUMBERS: &[&str] =
    &["0", "-1", "1e308", "NaN", "18446744073709551615", "4294967296", "9999999999", "0.0", "-0.0", "3"];
const BYTES: &[u8] = b"\0\xff9-\"{}[],:;\n.e";

fn mutate(input: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        if out.is_empty() {
            out.push(b'{');
        }
        let at = rng.gen_range(0..out.len());
        match rng.gen_range(0..7) {
            0 => out[at] ^= 1 << rng.gen_range(0..8),
            1 => out[at] = BYTES[rng.gen_range(0..BYTES.len())],
            2 => out.insert(at, BYTES[rng.gen_range(0..BYTES.len())]),
            3 => {
                let end = (at + rng.gen_range(1..16)).min(out.len());
                out.drain(at..end);
            }
            4 => out.truncate(at),
            5 => {
                // Replace the number that starts at or after `at` with a nasty one.
                if let Some(start) = out[at..].iter().position(u8::is_ascii_digit).map(|p| p + at) {
                    let end = out[start..]
                        .iter()
                        .position(|b| !b.is_ascii_digit() && *b != b'.')
                        .map_or(out.len(), |p| p + start);
                    let number = NUMBERS[rng.gen_range(0..NUMBERS.len())].as_bytes();
                    out.splice(start..end, number.iter().copied());
                }
            }
            _ => {
                let end = (at + rng.gen_range(1..32)).min(out.len());
                let chunk = out[at..end].to_vec();
                let to = rng.gen_range(0..out.len());
                out.splice(to..to, chunk);
            }
        }
    }
    out
}

/// Runs `check` on `ITERATIONS` mutations of `input` (seeded by `seed`), failing on the first
/// panic with the input that caused it.
fn fuzz(name: &str, seed: u64, input: &[u8], mut check: impl FnMut(&[u8])) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now();
    let mut runs = 0;
    while runs < ITERATIONS && start.elapsed() < TIME_LIMIT {
        let mutated = mutate(input, &mut rng);
        if catch_unwind(AssertUnwindSafe(|| check(&mutated))).is_err() {
            panic!("{name}: a mutated input panicked:\n{}", String::from_utf8_lossy(&mutated));
        }
        runs += 1;
    }
    assert!(runs >= 50, "{name}: only {runs} inputs in {TIME_LIMIT:?}");
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn load(dir: &Path, runtime: &Runtime) {
    let _ = LoadedModel::load(&ModelSpec::Folder(dir.to_path_buf()), runtime, 0);
}

#[test]
fn fuzz_safetensors_headers() {
    let dir = common::copy_fixture("tiny-gqa");
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let runtime = Runtime::new(Backend::Ndarray, "f32").unwrap();
    fuzz("safetensors header", 1, &bytes[..header_end], |header| {
        let mut damaged = header.to_vec();
        damaged.extend_from_slice(&bytes[header_end..]);
        write(&file, &damaged);
        load(dir.path(), &runtime);
    });
}

/// The header of a GGUF file made by llama.cpp (metadata, the tokenizer's vocabulary and merges,
/// tensor infos), damaged and loaded as a whole model with its data section after it.
#[test]
fn fuzz_gguf_headers() {
    let bytes = std::fs::read(common::fixture_dir("tiny-gguf/target-q4_0.gguf")).unwrap();
    let header_end = specbench::formats::gguf::parse(&bytes).unwrap().data_start;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.gguf");
    let runtime = Runtime::new(Backend::Ndarray, "f32").unwrap();
    fuzz("GGUF header", 6, &bytes[..header_end], |header| {
        let mut damaged = header.to_vec();
        damaged.extend_from_slice(&bytes[header_end..]);
        write(&file, &damaged);
        let _ = LoadedModel::load(&ModelSpec::Gguf(file.clone()), &runtime, 0);
    });
}

#[test]
fn fuzz_config_json() {
    let dir = common::copy_fixture("tiny-gqa");
    let file = dir.path().join("config.json");
    let text = std::fs::read(&file).unwrap();
    let runtime = Runtime::new(Backend::Ndarray, "f32").unwrap();
    fuzz("config.json", 2, &text, |config| {
        write(&file, config);
        if LlamaConfig::from_file(&file).is_ok() {
            load(dir.path(), &runtime);
        }
    });
}

#[test]
fn fuzz_experiment_toml() {
    let text = std::fs::read(common::fixture_dir("sweep.toml")).unwrap();
    fuzz("experiment TOML", 3, &text, |config| {
        if let Ok(config) = ExperimentConfig::parse(&String::from_utf8_lossy(config)) {
            let _ = config.cells();
        }
    });
}

#[test]
fn fuzz_runs_csv_and_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["run", common::fixture_dir("sweep.toml").to_str().unwrap(), "--out"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs = tmp.path().join("run/runs.csv");
    let rows = std::fs::read(&runs).unwrap();
    let damaged = tmp.path().join("runs.csv");
    fuzz("runs.csv", 4, &rows, |csv| {
        write(&damaged, csv);
        if let Ok(rows) = read_rows(&damaged) {
            let _ = summarize(&rows);
        }
    });
    let baseline = std::fs::read(common::fixture_dir("sweep.baseline.json")).unwrap();
    let damaged = tmp.path().join("baseline.json");
    fuzz("baseline", 5, &baseline, |json| {
        write(&damaged, json);
        if let Ok(baseline) = Baseline::read(&damaged) {
            let _ = specbench::report::regression::check(&baseline, &tmp.path().join("run"));
        }
    });
}
