//! The `eagle3` drafter: an EAGLE-3 head in SpecForge's checkpoint format, written here with
//! random weights for the tiny fixture target, loads, drafts on the target's features, and
//! leaves greedy output identical to target-only decoding on every backend and k; heads that
//! do not fit their target, or hold what their config does not explain, are errors naming why.

mod common;

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, tensor::TensorView};
use serde_json::json;
use specbench::backend::{Backend, ExecutorKind, Runtime};
use specbench::decoding::draft::DraftLength;
use specbench::decoding::drafters::{DraftContext, DrafterSpec};
use specbench::decoding::{GenerationConfig, autoregressive};
use specbench::load::{LoadedModel, ModelSpec};
use specbench::sampling::SamplingConfig;

/// Tensors by name: shape, little-endian bytes, dtype.
type Tensors = HashMap<String, (Vec<usize>, Vec<u8>, Dtype)>;
/// A change to a head's config and tensors.
type Change = Box<dyn Fn(&mut serde_json::Value, &mut Tensors)>;

const TARGET: &str = "tiny-gqa";
const VOCAB: usize = 320;
const HIDDEN: usize = 64;
const DRAFT_VOCAB: usize = 200;

/// The head's config.json for the tiny target (hidden 64, 4 heads of 16, 2 KV heads).
fn head_config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "vocab_size": VOCAB,
        "draft_vocab_size": DRAFT_VOCAB, "target_hidden_size": HIDDEN, "torch_dtype": "float32",
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [0, 1, 2]},
    })
}

/// Random f32 weights in SpecForge's names; `d2t` sends draft id d to target id 3d/2, so that
/// the draft vocabulary is a scattered subset of the target's.
fn head_tensors(seed: u64) -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut floats = |shape: &[usize], std: f32| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| (rng.r#gen::<f32>() - 0.5) * 2.0 * std).collect();
        (shape.to_vec(), values.iter().flat_map(|v| v.to_le_bytes()).collect(), Dtype::F32)
    };
    let ones =
        |n: usize| (vec![n], [1.0f32].repeat(n).iter().flat_map(|v| v.to_le_bytes()).collect(), Dtype::F32);
    let (h, i, q, kv) = (HIDDEN, 96, 64, 32);
    let mut tensors = HashMap::from([
        ("fc.weight".to_string(), floats(&[h, 3 * h], 0.1)),
        ("midlayer.self_attn.q_proj.weight".into(), floats(&[q, 2 * h], 0.2)),
        ("midlayer.self_attn.k_proj.weight".into(), floats(&[kv, 2 * h], 0.2)),
        ("midlayer.self_attn.v_proj.weight".into(), floats(&[kv, 2 * h], 0.2)),
        ("midlayer.self_attn.o_proj.weight".into(), floats(&[h, q], 0.2)),
        ("midlayer.mlp.gate_proj.weight".into(), floats(&[i, h], 0.2)),
        ("midlayer.mlp.up_proj.weight".into(), floats(&[i, h], 0.2)),
        ("midlayer.mlp.down_proj.weight".into(), floats(&[h, i], 0.2)),
        ("lm_head.weight".into(), floats(&[DRAFT_VOCAB, h], 0.5)),
    ]);
    for norm in [
        "midlayer.input_layernorm.weight",
        "midlayer.hidden_norm.weight",
        "midlayer.post_attention_layernorm.weight",
        "norm.weight",
    ] {
        tensors.insert(norm.into(), ones(h));
    }
    // Draft id d is target id 3d/2 (distinct, all below 300).
    let d2t: Vec<i64> = (0..DRAFT_VOCAB as i64).map(|d| 3 * d / 2 - d).collect();
    tensors.insert(
        "d2t".into(),
        (vec![DRAFT_VOCAB], d2t.iter().flat_map(|v| v.to_le_bytes()).collect(), Dtype::I64),
    );
    let mut t2d = vec![0u8; VOCAB];
    (0..DRAFT_VOCAB).for_each(|d| t2d[3 * d / 2] = 1);
    tensors.insert("t2d".into(), (vec![VOCAB], t2d, Dtype::BOOL));
    tensors
}

fn write_head(dir: &Path, config: &serde_json::Value, tensors: &Tensors) {
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (shape, bytes, dtype))| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors")).unwrap();
}

fn random_head(seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_head(dir.path(), &head_config(), &head_tensors(seed));
    dir
}

fn load(
    target: &LoadedModel,
    head: &Path,
) -> specbench::error::Result<Box<dyn specbench::decoding::drafters::LoadedDrafter>> {
    let spec: DrafterSpec = format!("eagle3:{}", head.display()).parse()?;
    let checkpoint = spec.checkpoint().map(|p| p.parse()).transpose()?;
    spec.load(&DraftContext { target, runtime: target.runtime(), seed: 0, checkpoint: checkpoint.as_ref() })
}

fn config(sampling: SamplingConfig, seed: u64) -> GenerationConfig {
    GenerationConfig { max_new_tokens: 40, sampling, eos_ids: vec![], banned_ids: vec![], seed }
}

/// The target and its head on every backend's default executor, and on flex's tensor executor.
fn targets() -> Vec<(String, LoadedModel)> {
    let mut out: Vec<(String, LoadedModel)> = common::backends()
        .into_iter()
        .map(|(backend, device, _)| (backend.to_string(), common::load_fixture(TARGET, backend, &device)))
        .collect();
    let tensor = Runtime::new(Backend::Flex, "f32").unwrap().with_executor(ExecutorKind::Tensor).unwrap();
    let spec = ModelSpec::Folder(common::fixture_dir(TARGET));
    out.push(("flex, tensor executor".into(), LoadedModel::load(&spec, &tensor, 0).unwrap()));
    out
}

#[test]
fn greedy_output_equals_the_target_alone_on_every_backend_and_k() {
    let head = random_head(1);
    for (backend, target) in targets() {
        let drafter = load(&target, head.path()).unwrap();
        let prompt = common::reference(TARGET).prompt_ids;
        let greedy = config(SamplingConfig::greedy(), 0);
        let expected = autoregressive::generate(&target.model, &prompt, &greedy).unwrap().tokens;
        for k in [1, 2, 3, 5, 8] {
            let out = drafter.generate(&target.model, DraftLength::Fixed(k), &prompt, &greedy).unwrap();
            assert_eq!(out.tokens, expected, "k = {k} on {backend}");
            assert!(out.acceptance.proposed > 0, "the head drafted nothing (k = {k} on {backend})");
        }
        // A one-token prompt: nothing to read before the first step, which drafts nothing.
        let out = drafter.generate(&target.model, DraftLength::Fixed(3), &prompt[..1], &greedy).unwrap();
        let expected = autoregressive::generate(&target.model, &prompt[..1], &greedy).unwrap().tokens;
        assert_eq!(out.tokens, expected, "one-token prompt on {backend}");
    }
}

/// Sampled generation proposes only tokens of the draft vocabulary, and an adaptive schedule
/// runs through it.
#[test]
fn sampled_drafts_come_from_the_draft_vocabulary() {
    let head = random_head(2);
    let (backend, device, _) = common::backends().remove(0);
    let target = common::load_fixture(TARGET, backend, &device);
    let drafter = load(&target, head.path()).unwrap();
    let prompt = common::reference(TARGET).prompt_ids;
    for length in [DraftLength::Fixed(4), DraftLength::Heuristic { start: 2, max: 6 }] {
        let out = drafter
            .generate(&target.model, length, &prompt, &config(SamplingConfig::with_temperature(1.0), 3))
            .unwrap();
        assert_eq!(out.tokens.len(), 40);
        assert!(out.acceptance.proposed > 0);
    }
}

#[test]
fn heads_that_do_not_fit_are_errors_naming_why() {
    let (backend, device, _) = common::backends().remove(0);
    let target = common::load_fixture(TARGET, backend, &device);
    let cases: Vec<(&str, Change, &str)> = vec![
        ("target hidden", Box::new(|c, _| c["target_hidden_size"] = json!(128)), "target_hidden_size"),
        ("vocabulary", Box::new(|c, _| c["vocab_size"] = json!(512)), "vocab_size"),
        (
            "layers",
            Box::new(|c, _| c["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = json!([0, 1, 9])),
            "eagle_aux_hidden_state_layer_ids",
        ),
        ("architecture", Box::new(|c, _| c["architectures"] = json!(["MistralForCausalLM"])), "EAGLE-3"),
        (
            "no aux",
            Box::new(|c, _| c["eagle_config"]["use_aux_hidden_state"] = json!(false)),
            "use_aux_hidden_state",
        ),
        (
            "unimplemented key",
            Box::new(|c, _| c["attn_logit_softcapping"] = json!(50.0)),
            "attn_logit_softcapping",
        ),
        (
            "d2t range",
            Box::new(|_, t| {
                let d2t: Vec<i64> = (0..DRAFT_VOCAB as i64).map(|_| 1000).collect();
                t.insert(
                    "d2t".into(),
                    (vec![DRAFT_VOCAB], d2t.iter().flat_map(|v| v.to_le_bytes()).collect(), Dtype::I64),
                );
            }),
            "d2t",
        ),
        (
            "d2t duplicate",
            Box::new(|_, t| {
                let d2t =
                    vec![0i64; DRAFT_VOCAB].iter().enumerate().map(|(d, _)| -(d as i64)).collect::<Vec<_>>();
                t.insert(
                    "d2t".into(),
                    (vec![DRAFT_VOCAB], d2t.iter().flat_map(|v| v.to_le_bytes()).collect(), Dtype::I64),
                );
            }),
            "two draft tokens",
        ),
        (
            "extra tensor",
            Box::new(|_, t| {
                t.insert("midlayer.extra.weight".into(), (vec![1], vec![0; 4], Dtype::F32));
            }),
            "midlayer.extra.weight",
        ),
        (
            "misshapen",
            Box::new(|_, t| {
                t.insert(
                    "fc.weight".into(),
                    (vec![HIDDEN, HIDDEN], vec![0; HIDDEN * HIDDEN * 4], Dtype::F32),
                );
            }),
            "fc.weight",
        ),
        (
            "missing",
            Box::new(|_, t| {
                t.remove("lm_head.weight");
            }),
            "lm_head.weight",
        ),
    ];
    for (name, change, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, mut tensors) = (head_config(), head_tensors(3));
        change(&mut config, &mut tensors);
        write_head(dir.path(), &config, &tensors);
        let err = load(&target, dir.path()).err().unwrap_or_else(|| panic!("{name}: loaded")).to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
}

/// A head in bf16 (as SpecForge saves them) drafts the same greedy output as the target alone.
#[test]
fn a_bf16_head_loads_and_drafts() {
    let mut tensors = head_tensors(4);
    for (_, (_, bytes, dtype)) in tensors.iter_mut().filter(|(_, (_, _, d))| *d == Dtype::F32) {
        *bytes = bytes
            .chunks_exact(4)
            .flat_map(|b| half::bf16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
            .collect();
        *dtype = Dtype::BF16;
    }
    let dir = tempfile::tempdir().unwrap();
    write_head(dir.path(), &head_config(), &tensors);
    let (backend, device, _) = common::backends().remove(0);
    let target = common::load_fixture(TARGET, backend, &device);
    let drafter = load(&target, dir.path()).unwrap();
    let prompt = common::reference(TARGET).prompt_ids;
    let greedy = config(SamplingConfig::greedy(), 0);
    let expected = autoregressive::generate(&target.model, &prompt, &greedy).unwrap().tokens;
    let out = drafter.generate(&target.model, DraftLength::Fixed(4), &prompt, &greedy).unwrap();
    assert_eq!(out.tokens, expected);
}
