//! One speculative step's host-side parts (the acceptance rule over a Llama-3-sized vocabulary)
//! and whole speculative generations on the committed fixture pair.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use specbench::backend::{Backend, Runtime};
use specbench::decoding::GenerationConfig;
use specbench::decoding::acceptance::{DraftDistribution, RejectionSampling};
use specbench::decoding::draft::DraftLength;
use specbench::decoding::drafters::model::ModelDrafter;
use specbench::decoding::speculative::Speculative;
use specbench::decoding::tree::{DraftTree, verify_tree};
use specbench::load::{LoadedModel, ModelSpec};
use specbench::sampling::SamplingConfig;

fn distribution(vocab: usize, shift: usize) -> Vec<f64> {
    let logits: Vec<f32> =
        (0..vocab).map(|i| (((i + shift) * 2_654_435_761) % 1000) as f32 / 100.0).collect();
    SamplingConfig::with_temperature(1.0).probabilities(&logits, "target", 0).unwrap()
}

fn rejection_rule(c: &mut Criterion) {
    let vocab = 128_256;
    let mut group = c.benchmark_group("rejection rule, vocab 128256");
    for k in [1, 4, 8] {
        let ps: Vec<Vec<f64>> = (0..=k).map(|i| distribution(vocab, i)).collect();
        let qs: Vec<DraftDistribution> = (0..k).map(|i| distribution(vocab, i + 7).into()).collect();
        let chain = DraftTree::chain((0..k as u32).collect(), qs);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        group.bench_function(BenchmarkId::new("verify_tree (chain)", k), |b| {
            b.iter(|| verify_tree(&RejectionSampling, |i| Ok(&ps[i]), &chain, &mut rng).unwrap())
        });
    }
    group.bench_function("probabilities (softmax, T=0.7, top-p 0.9)", |b| {
        let logits: Vec<f32> = (0..vocab).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let sampling = SamplingConfig { top_p: 0.9, ..SamplingConfig::with_temperature(0.7) };
        b.iter(|| sampling.probabilities(&logits, "target", 0).unwrap())
    });
    group.finish();
}

fn speculative_generation(c: &mut Criterion) {
    let runtime = Runtime::new(Backend::Ndarray, "f32").unwrap();
    let load = |name: &str| {
        let spec = ModelSpec::Folder(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")).into());
        LoadedModel::load(&spec, &runtime, 0).unwrap()
    };
    let (target, draft) = (load("tiny-gqa"), load("tiny-untied-bf16"));
    let prompt = target.tokenizer.encode("The quick brown fox").unwrap();
    let config = GenerationConfig {
        max_new_tokens: 16,
        sampling: SamplingConfig::with_temperature(1.0),
        eos_ids: vec![],
        banned_ids: vec![],
        seed: 0,
    };
    let mut group = c.benchmark_group("speculative generation, 16 tokens, tiny fixtures");
    for k in [1, 4] {
        let drafter = ModelDrafter::new(&draft.model, 320).unwrap();
        let mut spec = Speculative::new(&target.model, drafter, 320, DraftLength::Fixed(k)).unwrap();
        group.bench_function(BenchmarkId::new("k", k), |b| {
            b.iter(|| spec.generate(&prompt, &config).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, rejection_rule, speculative_generation);
criterion_main!(benches);
