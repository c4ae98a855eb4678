//! The model against Hugging Face transformers on the same checkpoints (tests/fixtures, made by
//! scripts/make_fixtures.py), and the KV cache against the full-sequence forward.

mod common;

use burn::tensor::s;
use common::{backends, load_fixture, max_abs_diff, reference, to_vec};
use specbench::decoding::{GenerationConfig, autoregressive};
use specbench::sampling::SamplingConfig;

// tiny-tf5 is saved by transformers 5 (`rope_parameters`, `dtype`); the others by 4.46.
const FIXTURES: [&str; 3] = ["tiny-gqa", "tiny-untied-bf16", "tiny-tf5"];

#[test]
fn parity_transformers_logits() {
    for (backend, device, tolerance) in backends() {
        for name in FIXTURES {
            let model = load_fixture(name, backend, &device).model;
            let reference = reference(name);
            let mut cache = model.new_cache();
            let logits = to_vec(model.forward_ids(&reference.tokens, &mut cache).unwrap());
            let diff = max_abs_diff(&logits, &reference.logits);
            println!("{name} on {backend}: max |logits - transformers| = {diff:.2e}");
            assert!(diff <= tolerance, "{name} on {backend}: {diff} > {tolerance}");
        }
    }
}

/// Half precision against the f32 reference: logits within the dtype's tolerance, and the same
/// top token wherever the reference's lead over the runner-up is wider than that tolerance
/// (closer calls may flip under rounding without anything being wrong).
/// The host projection kernel and Burn's matmul compute the same f32 model on both CPU
/// backends (the transformers parity above runs whichever is the default).
#[test]
fn host_kernel_and_backend_matmul_agree_on_the_cpu() {
    use specbench::backend::ExecutorKind;
    use specbench::backend::{Backend, Runtime};
    use specbench::load::{LoadedModel, ModelSpec};
    for backend in [Backend::Ndarray, Backend::Flex] {
        for name in FIXTURES {
            let spec = ModelSpec::Folder(common::fixture_dir(name));
            let logits = |kernel| {
                let runtime = Runtime::new(backend, "f32").unwrap().with_executor(kernel).unwrap();
                let model = LoadedModel::load(&spec, &runtime, 0).unwrap().model;
                to_vec(model.forward_ids(&reference(name).tokens, &mut model.new_cache()).unwrap())
            };
            let diff = max_abs_diff(&logits(ExecutorKind::Host), &logits(ExecutorKind::Tensor));
            assert!(diff <= 1e-4, "{name} on {backend}: host vs backend projections differ by {diff}");
        }
    }
}

#[test]
fn parity_transformers_half_precision() {
    for (backend, device, dtype, tolerance) in common::half_precision_backends() {
        for name in FIXTURES {
            let model = common::load_fixture_in(name, backend, &device, dtype).model;
            let reference = reference(name);
            let logits = to_vec(model.forward_ids(&reference.tokens, &mut model.new_cache()).unwrap());
            let diff = max_abs_diff(&logits, &reference.logits);
            println!("{name} on {backend}/{dtype:?}: max |logits - transformers f32| = {diff:.2e}");
            assert!(diff <= tolerance, "{name} on {backend}/{dtype:?}: {diff} > {tolerance}");
            let vocab = reference.vocab_size;
            for (position, (ours, theirs)) in
                logits.chunks_exact(vocab).zip(reference.logits.chunks_exact(vocab)).enumerate()
            {
                let (best, lead) = top_with_lead(theirs);
                if lead > 2.0 * tolerance {
                    assert_eq!(top_with_lead(ours).0, best, "{name} on {backend}/{dtype:?} at {position}");
                }
            }
        }
    }
}

/// The arg-max and its lead over the second-best value.
fn top_with_lead(row: &[f32]) -> (usize, f32) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    (order[0], row[order[0]] - row[order[1]])
}

#[test]
fn parity_transformers_greedy_continuation() {
    for (backend, device, _) in backends() {
        for name in FIXTURES {
            let loaded = load_fixture(name, backend, &device);
            let reference = reference(name);
            assert_eq!(loaded.tokenizer.encode(&reference.prompt).unwrap(), reference.prompt_ids);
            let config = GenerationConfig {
                max_new_tokens: reference.greedy_continuation.len(),
                sampling: SamplingConfig::greedy(),
                eos_ids: vec![],
                banned_ids: vec![],
                seed: 0,
            };
            let out = autoregressive::generate(&loaded.model, &reference.prompt_ids, &config).unwrap();
            assert_eq!(out.tokens, reference.greedy_continuation, "{name} on {backend}");
        }
    }
}

#[test]
fn parity_transformers_kv_cache_matches_full_forward() {
    for (backend, device, _) in backends() {
        for name in FIXTURES {
            let model = load_fixture(name, backend, &device).model;
            let tokens = reference(name).tokens;
            let full = to_vec(model.forward_ids(&tokens, &mut model.new_cache()).unwrap());
            let mut cache = model.new_cache();
            let stepwise: Vec<f32> =
                tokens.iter().flat_map(|&t| to_vec(model.forward_ids(&[t], &mut cache).unwrap())).collect();
            let diff = max_abs_diff(&full, &stepwise);
            assert!(diff <= 1e-5, "{name} on {backend}: one-token decoding differs by {diff}");
            assert_eq!(cache.len(), tokens.len());
        }
    }
}

#[test]
fn parity_transformers_multi_token_forward_on_a_filled_cache() {
    for (backend, device, _) in backends() {
        for name in FIXTURES {
            let model = load_fixture(name, backend, &device).model;
            let tokens = reference(name).tokens;
            let (prefix, chunk) = tokens.split_at(7);

            let mut cache = model.new_cache();
            model.forward_ids(prefix, &mut cache).unwrap();
            let together = to_vec(model.forward_ids(chunk, &mut cache).unwrap());

            let mut cache = model.new_cache();
            model.forward_ids(prefix, &mut cache).unwrap();
            let one_by_one: Vec<f32> =
                chunk.iter().flat_map(|&t| to_vec(model.forward_ids(&[t], &mut cache).unwrap())).collect();
            let diff = max_abs_diff(&together, &one_by_one);
            assert!(diff <= 1e-5, "{name} on {backend}: verify-style forward differs by {diff}");
        }
    }
}

#[test]
fn parity_transformers_truncate_forgets_dropped_tokens() {
    for (backend, device, _) in backends() {
        for name in FIXTURES {
            let model = load_fixture(name, backend, &device).model;
            let tokens = reference(name).tokens;
            let rejected = [5, 6, 7, 8];
            let (kept, continuation) = (&tokens[..9], &tokens[9..]);

            let mut cache = model.new_cache();
            model.forward_ids(kept, &mut cache).unwrap();
            model.forward_ids(&rejected, &mut cache).unwrap();
            cache.truncate(kept.len());
            assert_eq!(cache.len(), kept.len());
            let after_rollback = to_vec(model.forward_ids(continuation, &mut cache).unwrap());

            let mut fresh = model.new_cache();
            model.forward_ids(kept, &mut fresh).unwrap();
            let never_fed = to_vec(model.forward_ids(continuation, &mut fresh).unwrap());
            let diff = max_abs_diff(&after_rollback, &never_fed);
            assert!(diff <= 1e-5, "{name} on {backend}: rollback leaves a trace of {diff}");

            cache.reset();
            assert!(cache.is_empty());
            let full = model.forward_ids(&tokens, &mut cache).unwrap();
            let last_rows = to_vec(full.slice(s![9.., ..]));
            assert!(max_abs_diff(&last_rows, &never_fed) <= 1e-5, "{name} on {backend}: reset");
        }
    }
}

#[test]
fn forward_rejects_token_ids_outside_the_vocabulary_and_positions_past_the_context() {
    let (backend, device, _) = backends().remove(0);
    let model = load_fixture("tiny-gqa", backend, &device).model;
    let mut cache = model.new_cache();
    let err = model.forward_ids(&[1, 320], &mut cache).unwrap_err().to_string();
    assert!(err.contains("320") && err.contains("vocabulary"), "{err}");
    assert_eq!(cache.len(), 0, "a refused forward must not touch the cache");
    let err = model.forward_ids(&[5; 257], &mut cache).unwrap_err().to_string();
    assert!(err.contains("257") && err.contains("256"), "{err}");
}

/// `generate --json` on the fixtures: the ids are transformers' greedy continuation, and the top
/// logit at every position is the token chosen there.
fn generate_json(model: &std::path::Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_specbench"))
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn generate_json_reports_transformers_greedy_ids_and_top_logits() {
    for name in FIXTURES {
        let reference = reference(name);
        let n = reference.greedy_continuation.len().to_string();
        let report = generate_json(
            &common::fixture_dir(name),
            &reference.prompt,
            &["--max-new-tokens", &n, "--ignore-eos", "--top-logits", "3", "--logit-positions", &n],
        );
        assert_eq!(ids(&report["prompt_ids"]), reference.prompt_ids, "{name}");
        assert_eq!(ids(&report["generated_ids"]), reference.greedy_continuation, "{name}");
        let top = report["top_logits"].as_array().unwrap();
        assert_eq!(top.len(), reference.greedy_continuation.len());
        for (i, (position, &token)) in top.iter().zip(&reference.greedy_continuation).enumerate() {
            assert_eq!(ids(&position["ids"])[0], token, "{name}: position {i}");
            let values: Vec<f64> =
                position["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert!(values.windows(2).all(|w| w[0] >= w[1]), "{name}: {values:?}");
        }
    }
}

#[test]
fn generation_stops_on_the_models_own_stop_tokens_and_extra_ones() {
    let reference = reference("tiny-gqa");
    let dir = common::copy_fixture("tiny-gqa");
    let generate = |extra: &[&str]| {
        let report =
            generate_json(dir.path(), &reference.prompt, &[&["--max-new-tokens", "12"], extra].concat());
        (ids(&report["generated_ids"]), ids(&report["stop_token_ids"]))
    };
    // config.json's eos_token_id (1) alone: the tokenizer's other special tokens do not stop it.
    let (full, stops) = generate(&[]);
    assert_eq!(stops, vec![1]);
    assert_eq!(full, reference.greedy_continuation[..12]);
    // generation_config.json, as transformers reads it, takes precedence.
    let third = full[2];
    std::fs::write(dir.path().join("generation_config.json"), format!("{{\"eos_token_id\": [{third}]}}"))
        .unwrap();
    let (cut, stops) = generate(&[]);
    assert_eq!(stops, vec![third]);
    assert_eq!(cut, full[..=full.iter().position(|&t| t == third).unwrap()]);
    // --stop-token-id adds one.
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    let second = full[1];
    let (cut, _) = generate(&["--stop-token-id", &second.to_string()]);
    assert_eq!(cut, full[..=full.iter().position(|&t| t == second).unwrap()]);
}
