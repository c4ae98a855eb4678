//! The `eagle3` drafter: an EAGLE-3 head in SpecForge's checkpoint format, written here with
//! random weights for the tiny fixture target, loads, drafts on the target's features, and
//! leaves greedy output identical to target-only decoding on every backend, executor and k;
//! heads that do not fit their target, or hold what their config does not explain, are errors
//! naming why. (The chi-square test of sampled output is in tests/speculative.rs.)

mod common;

use std::path::Path;

use common::heads::{self, HeadShape, Tensors};
use safetensors::Dtype;
use serde_json::json;
use specbench::backend::{Backend, ExecutorKind, Runtime};
use specbench::decoding::draft::DraftLength;
use specbench::decoding::drafters::{DraftContext, DrafterSpec};
use specbench::decoding::tree::TreeShape;
use specbench::decoding::{GenerationConfig, autoregressive};
use specbench::load::{LoadedModel, ModelSpec};
use specbench::model::Step;
use specbench::sampling::SamplingConfig;

/// A change to a head's config and tensors.
type Change = Box<dyn Fn(&mut serde_json::Value, &mut Tensors)>;

const TARGET: &str = "tiny-gqa";
/// A head for the tiny target (hidden 64, 4 heads of 16, 2 KV heads, vocabulary 320).
const HEAD: HeadShape = HeadShape {
    vocab: 320,
    hidden: 64,
    intermediate: 96,
    heads: 4,
    kv_heads: 2,
    head_dim: 16,
    draft_vocab: 200,
    aux_layers: [0, 1, 2],
    std: 0.2,
};

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
    let head = HEAD.write_random(1);
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
        for shape in
            [TreeShape { budget: 8, depth: 3, width: 3 }, TreeShape { budget: 20, depth: 6, width: 4 }]
        {
            let out = drafter.generate(&target.model, DraftLength::Tree(shape), &prompt, &greedy).unwrap();
            assert_eq!(out.tokens, expected, "{shape:?} on {backend}");
            assert!(
                out.acceptance.nodes > out.acceptance.proposed,
                "no tree drafted ({shape:?} on {backend})"
            );
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
    let head = HEAD.write_random(2);
    let (backend, device, _) = common::backends().remove(0);
    let target = common::load_fixture(TARGET, backend, &device);
    let drafter = load(&target, head.path()).unwrap();
    let prompt = common::reference(TARGET).prompt_ids;
    let tree = DraftLength::Tree(TreeShape { budget: 10, depth: 4, width: 3 });
    for length in [DraftLength::Fixed(4), DraftLength::Heuristic { start: 2, max: 6 }, tree] {
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
        ("d2t range", Box::new(|_, t| HEAD.insert_d2t(t, &[1000; 200])), "d2t"),
        (
            "d2t duplicate",
            // Every draft token to target token 0.
            Box::new(|_, t| HEAD.insert_d2t(t, &(0..200).map(|d| -d).collect::<Vec<i64>>())),
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
                t.insert("fc.weight".into(), (vec![64, 64], vec![0; 64 * 64 * 4], Dtype::F32));
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
        let (mut config, mut tensors) = (HEAD.config(), HEAD.tensors(3));
        change(&mut config, &mut tensors);
        heads::write(dir.path(), &config, &tensors);
        let err = load(&target, dir.path()).err().unwrap_or_else(|| panic!("{name}: loaded")).to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
}

/// A head in bf16 (as SpecForge saves them) drafts the same greedy output as the target alone.
#[test]
fn a_bf16_head_loads_and_drafts() {
    let mut tensors = HEAD.tensors(4);
    for (_, (_, bytes, dtype)) in tensors.iter_mut().filter(|(_, (_, _, d))| *d == Dtype::F32) {
        *bytes = bytes
            .chunks_exact(4)
            .flat_map(|b| half::bf16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
            .collect();
        *dtype = Dtype::BF16;
    }
    let dir = tempfile::tempdir().unwrap();
    heads::write(dir.path(), &HEAD.config(), &tensors);
    let (backend, device, _) = common::backends().remove(0);
    let target = common::load_fixture(TARGET, backend, &device);
    let drafter = load(&target, dir.path()).unwrap();
    let prompt = common::reference(TARGET).prompt_ids;
    let greedy = config(SamplingConfig::greedy(), 0);
    let expected = autoregressive::generate(&target.model, &prompt, &greedy).unwrap().tokens;
    let out = drafter.generate(&target.model, DraftLength::Fixed(4), &prompt, &greedy).unwrap();
    assert_eq!(out.tokens, expected);
}

/// The head against SpecForge's own `LlamaForCausalLMEagle3` (scripts/make_eagle3_fixture.py):
/// seven rows of fused target features (target hidden 48, head hidden 64) in one causal pass,
/// every row's output features and the last row's draft logits, on both executors.
#[test]
fn the_head_computes_what_specforge_computes() {
    use specbench::model::eagle3::HeadInput;
    use specbench::model::{CustomDims, LlamaConfig};
    let dir = common::fixture_dir("eagle3-specforge");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let floats = |key: &str| -> Vec<f32> {
        reference[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
    };
    let ids: Vec<u32> =
        reference["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let target = LlamaConfig::custom(
        &CustomDims::parse("vocab=320,hidden=48,intermediate=64,layers=4,heads=4,kv_heads=2,head_dim=12")
            .unwrap(),
    );
    let host = Runtime::new(Backend::Flex, "f32").unwrap();
    let tensor = host.clone().with_executor(ExecutorKind::Tensor).unwrap();
    for runtime in [host, tensor] {
        let head = specbench::load::eagle3::load_head(&dir, &target, &runtime).unwrap();
        assert!(head.has_embedding());
        let mut cache = head.new_cache();
        let step = Step::new(&ids, ids.len());
        let out = head.forward(HeadInput::Target(floats("features")), &step, None, &mut cache).unwrap();
        let (expected_out, expected_logits) = (floats("output"), floats("logits"));
        let what = format!("{:?}", runtime.executor());
        assert!(common::max_abs_diff(&out.features, &expected_out) < 1e-4, "features on {what}");
        assert!(common::max_abs_diff(&out.logits, &expected_logits) < 1e-4, "logits on {what}");
        assert_eq!(head.target_token(5), 7, "d2t: draft 5 is target 3 · 5 / 2");
    }
}
