//! The whole model once through the portable kernels (`SPECBENCH_KERNELS=portable`, read once
//! per process, hence a child process): the same greedy output and logits as the vector kernels
//! this CPU runs, for every weight type the embedded models and GGUF fixtures hold. On a CPU
//! without a vector path both runs are portable and the test says nothing new, but still runs.

mod common;

fn generate(model: &str, portable: bool, extra: &[&str]) -> serde_json::Value {
    let mut command = common::specbench_command();
    command
        .args(["generate", "--model", model, "--backend", "flex", "--prompt", "The quick brown fox"])
        .args(["--max-new-tokens", "12", "--json", "--top-logits", "4", "--logit-positions", "4"])
        .args(extra);
    if portable {
        command.env("SPECBENCH_KERNELS", "portable");
    } else {
        command.env_remove("SPECBENCH_KERNELS");
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{model}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn top_logit_values(report: &serde_json::Value) -> Vec<f64> {
    let mut values = Vec::new();
    for position in report["top_logits"].as_array().unwrap() {
        values.extend(position["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()));
    }
    values
}

#[test]
fn the_portable_kernels_compute_what_the_vector_kernels_do() {
    let root = env!("CARGO_MANIFEST_DIR");
    let gguf = |name: &str| format!("{root}/tests/fixtures/tiny-gguf/target-{name}.gguf");
    let mut cases: Vec<(String, Vec<&str>)> =
        ["bf16", "q8_0", "q4_0", "q4_1", "q4_k_m"].into_iter().map(|name| (gguf(name), vec![])).collect();
    let tiny = format!("{root}/models/tiny/target");
    cases.push((tiny.clone(), vec![]));
    cases.push((tiny.clone(), vec!["--dtype", "q4_0"]));
    cases.push((tiny, vec!["--drafter", "self:q8_0", "--k", "3"]));
    for (model, extra) in &cases {
        let (vector, portable) = (generate(model, false, extra), generate(model, true, extra));
        assert!(portable["runtime"].as_str().unwrap().contains("portable"), "{}", portable["runtime"]);
        assert_eq!(vector["generated_ids"], portable["generated_ids"], "{model} {extra:?}");
        let (v, p) = (top_logit_values(&vector), top_logit_values(&portable));
        assert!(!v.is_empty() && v.iter().all(|x| x.is_finite()), "{model}: no top logits in {vector}");
        let diff = v.iter().zip(&p).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        // Quantized products quantize their input rows: an upstream difference in the last bit
        // (sums in another order) can move an element by a whole quantization step, so they
        // agree less closely than float weights (the kernels themselves agree to float rounding,
        // kernels::quant's tests).
        let quantized = !(model.ends_with("bf16.gguf") || model.ends_with("target")) || !extra.is_empty();
        let tolerance = if quantized { 3e-2 } else { 2e-3 };
        assert!(diff < tolerance, "{model} {extra:?}: top logits differ by {diff}");
    }
}
