//! Helpers shared by the integration tests: committed fixtures and the backends to run on.
#![allow(dead_code)]

pub mod heads;

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};
use specbench::backend::{Backend, Runtime, dtype_name};
use specbench::load::{LoadedModel, ModelSpec};

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Copies the files of folder `from` into `to` (which must exist).
pub fn copy_files(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A writable copy of a fixture checkpoint.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_files(&fixture_dir(name), dir.path());
    dir
}

/// Every backend compiled into this test binary, with the logits tolerance it is held to
/// against transformers' f32 CPU reference.
pub fn backends() -> Vec<(Backend, Device, f32)> {
    let mut out = vec![
        (Backend::Ndarray, Backend::Ndarray.device().unwrap(), 1e-4),
        (Backend::Flex, Backend::Flex.device().unwrap(), 1e-4),
    ];
    if Backend::Wgpu.is_compiled() {
        let device = Backend::Wgpu
            .device()
            .expect("the wgpu feature is on but no adapter works (install mesa-vulkan-drivers)");
        out.push((Backend::Wgpu, device, 1e-3));
    }
    out
}

pub fn load_fixture(name: &str, backend: Backend, device: &Device) -> LoadedModel {
    load_fixture_in(name, backend, device, DType::F32)
}

/// `device` is `backend`'s (the one `backends()` made); the runtime makes the same one.
pub fn load_fixture_in(name: &str, backend: Backend, _device: &Device, dtype: DType) -> LoadedModel {
    let spec = ModelSpec::Folder(fixture_dir(name));
    LoadedModel::load(&spec, &Runtime::new(backend, dtype_name(dtype)).unwrap(), 0).unwrap()
}

/// Every (backend, half-precision dtype) pair this build and machine run, with the logits
/// tolerance against transformers' f32 reference: rounding to an 11-bit (f16) or 8-bit (bf16)
/// mantissa at every layer, on logits of magnitude ~5. flex runs both everywhere, so the list
/// is never empty; ndarray runs them as half-precision weights on the host kernel.
pub fn half_precision_backends() -> Vec<(Backend, Device, DType, f32)> {
    let mut out = Vec::new();
    for (backend, device, _) in backends() {
        for (dtype, tolerance) in [(DType::F16, 5e-2), (DType::BF16, 2.5e-1)] {
            if Runtime::new(backend, dtype_name(dtype)).is_ok() {
                out.push((backend, device.clone(), dtype, tolerance));
            }
        }
    }
    assert!(out.iter().any(|(b, ..)| *b == Backend::Flex), "flex runs f16 and bf16");
    out
}

pub struct Reference {
    pub vocab_size: usize,
    pub tokens: Vec<u32>,
    pub logits: Vec<f32>,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_continuation: Vec<u32>,
}

pub fn reference(name: &str) -> Reference {
    let path = fixture_dir(&format!("{name}.reference.json"));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    Reference {
        vocab_size: json["vocab_size"].as_u64().unwrap() as usize,
        tokens: ids("tokens"),
        logits: json["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
        prompt: json["prompt"].as_str().unwrap().to_string(),
        prompt_ids: ids("prompt_ids"),
        greedy_continuation: ids("greedy_continuation"),
    }
}

/// The largest |a − b|; NaN when any difference is NaN (a plain `f32::max` fold would drop it
/// and let NaN logits pass any tolerance).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() || m.is_nan() { f32::NAN } else { m.max(d) })
}

/// The largest value of a row of logits, which must all be finite.
pub fn max_finite(row: &[f32]) -> f32 {
    assert!(row.iter().all(|v| v.is_finite()), "non-finite logits");
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

pub fn to_vec(t: burn::tensor::Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

/// A seeded random Llama of the given dimensions on ndarray (Burn's matmul); a large `std`
/// gives peaked distributions.
pub fn random_model(dims: &str, seed: u64, std: f64) -> specbench::model::Llama {
    use specbench::backend::ExecutorKind;
    let runtime = Runtime::new(Backend::Ndarray, "f32").unwrap().with_executor(ExecutorKind::Tensor).unwrap();
    random_model_on(dims, seed, std, &runtime)
}

/// The same random model (same dims and seed give the same weights) on `runtime`: e.g. with a
/// quantized dtype, the target's quantized copy.
pub fn random_model_on(dims: &str, seed: u64, std: f64, runtime: &Runtime) -> specbench::model::Llama {
    use specbench::model::weights::RandomWeights;
    use specbench::model::{CustomDims, Llama, LlamaConfig};
    let config = LlamaConfig::custom(&CustomDims::parse(dims).unwrap());
    let mut source = RandomWeights::new(runtime.device(), DType::F32, seed).with_std(std);
    Llama::build(config, &mut source, runtime).unwrap()
}

/// A GGUF fixture decoded into what `formats::gguf::write::to_bytes` writes back: its metadata
/// in key order and its tensors with their bytes, for tests that rewrite a part of it.
pub fn gguf_parts(
    name: &str,
) -> (Vec<(String, specbench::formats::gguf::Value)>, Vec<specbench::formats::gguf::write::Tensor>) {
    use specbench::formats::gguf::{parse, write::Tensor};
    let bytes = std::fs::read(fixture_dir(name)).unwrap();
    let parsed = parse(&bytes).unwrap();
    let tensors = parsed
        .tensors
        .iter()
        .map(|(name, info)| Tensor {
            name: name.clone(),
            dims: info.dims.clone(),
            ggml_type: info.kind.ggml_type(),
            data: bytes[info.byte_range()].to_vec(),
        })
        .collect();
    (parsed.metadata.into_iter().collect(), tensors)
}

/// A command that starts the specbench binary: directly, or through `SPECBENCH_TEST_RUNNER`
/// (the emulator, `qemu-aarch64 -L /usr/aarch64-linux-gnu`, where the tests are cross-compiled
/// for another architecture; scripts/test.sh).
pub fn specbench_command() -> std::process::Command {
    let binary = env!("CARGO_BIN_EXE_specbench");
    let runner = std::env::var("SPECBENCH_TEST_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    match parts.next() {
        Some(program) => {
            let mut command = std::process::Command::new(program);
            command.args(parts).arg(binary);
            command
        }
        None => std::process::Command::new(binary),
    }
}
