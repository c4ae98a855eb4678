//! The speculative decoder against its guarantees: greedy output identical to target-only
//! greedy decoding, the target distribution preserved (chi-square, with negative controls that
//! must fail), and acceptance statistics that agree with the theory.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;

use burn::tensor::Device;
use rand_chacha::ChaCha8Rng;
use specbench::backend::Backend;
use specbench::decoding::acceptance::{
    AcceptanceRule, DraftDistribution, RejectionSampling, Verdict, verify_token,
};
use specbench::decoding::draft::{DraftLength, Drafter};
use specbench::decoding::drafters::eagle3::Eagle3Drafter;
use specbench::decoding::drafters::layer_skip::LayerSkip;
use specbench::decoding::drafters::model::ModelDrafter;
use specbench::decoding::drafters::ngram::{NgramDrafter, NgramLookup};
use specbench::decoding::pairing::shared_vocab;
use specbench::decoding::speculative::Speculative;
use specbench::decoding::tree::TreeShape;
use specbench::decoding::{Captured, CausalLm, GenerationConfig, autoregressive};
use specbench::load::eagle3::load_head;
use specbench::metrics::expected_accepted_len;
use specbench::model::Llama;
use specbench::sampling::{SamplingConfig, sample};
use statrs::distribution::{ChiSquared, ContinuousCDF};

fn config(sampling: SamplingConfig, max_new_tokens: usize, seed: u64) -> GenerationConfig {
    GenerationConfig { max_new_tokens, sampling, eos_ids: vec![], banned_ids: vec![], seed }
}

/// Speculative decoding with `draft` as a model drafter and a fixed k.
fn with_draft<'a, T: CausalLm, D: CausalLm>(
    target: &'a T,
    draft: &'a D,
    vocab: usize,
    k: usize,
) -> Speculative<'a, T, ModelDrafter<&'a D>> {
    Speculative::new(target, ModelDrafter::new(draft, vocab).unwrap(), vocab, DraftLength::Fixed(k)).unwrap()
}

fn ndarray() -> Device {
    Backend::Ndarray.device().unwrap()
}

#[test]
fn greedy_equivalence_on_the_transformers_fixture_pair() {
    for (backend, device, _) in common::backends() {
        let target = common::load_fixture("tiny-gqa", backend, &device);
        let draft = common::load_fixture("tiny-untied-bf16", backend, &device);
        let vocab = shared_vocab(&target, &draft).unwrap();
        let prompt = common::reference("tiny-gqa").prompt_ids;
        let greedy = config(SamplingConfig::greedy(), 40, 0);
        let expected = autoregressive::generate(&target.model, &prompt, &greedy).unwrap().tokens;
        for k in 1..=8 {
            let mut spec = with_draft(&target.model, &draft.model, vocab, k);
            let out = spec.generate(&prompt, &greedy).unwrap();
            assert_eq!(out.tokens, expected, "k = {k} on {backend}");
        }
        for shape in TREES {
            let drafter = ModelDrafter::new(&draft.model, vocab).unwrap();
            let mut spec = Speculative::new(&target.model, drafter, vocab, DraftLength::Tree(shape)).unwrap();
            let out = spec.generate(&prompt, &greedy).unwrap();
            assert_eq!(out.tokens, expected, "{shape:?} on {backend}");
        }
    }
}

/// Tree shapes of the greedy tests: narrow and deep, wide and shallow, and large.
const TREES: [TreeShape; 3] = [
    TreeShape { budget: 6, depth: 5, width: 2 },
    TreeShape { budget: 8, depth: 2, width: 4 },
    TreeShape { budget: 24, depth: 6, width: 4 },
];

/// Greedy speculative output equals greedy target-only output for every drafter kind and draft
/// length schedule, on the embedded pair (a trained 6-layer target, so drafts are accepted and
/// rejected both): the separate draft, the target quantized to q8_0 and q4_0 on load, the target
/// without layers 3–4, and n-gram lookup; each at k = 1 and 5, heuristic and confidence.
#[test]
fn greedy_equivalence_for_every_drafter_and_schedule() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let load = |name: &str, dtype: &str| {
        let runtime = specbench::backend::Runtime::new(Backend::Ndarray, dtype).unwrap();
        specbench::load::LoadedModel::load(&specbench::load::ModelSpec::Folder(root.join(name)), &runtime, 0)
            .unwrap()
    };
    let target = load("target", "f32");
    let (draft, q8, q4) = (load("draft", "f32"), load("target", "q8_0"), load("target", "q4_0"));
    let skipping = LayerSkip::new(&target.model, &[3, 4]).unwrap();
    let vocab = shared_vocab(&target, &draft).unwrap();
    let lengths = [
        DraftLength::Fixed(1),
        DraftLength::Fixed(5),
        DraftLength::Heuristic { start: 2, max: 6 },
        DraftLength::Confidence { threshold: 0.6, max: 6 },
    ];
    // Code that repeats itself, so that lookup finds matches.
    let text =
        "    def __init__(self, name):\n        self.name = name\n\n    def __repr__(self):\n        return";
    let prompt = target.tokenizer.encode(text).unwrap();
    let greedy = config(SamplingConfig::greedy(), 48, 0);
    let expected = autoregressive::generate(&target.model, &prompt, &greedy).unwrap().tokens;
    let check = |name: &str, length: DraftLength, out: specbench::decoding::Generation| {
        assert_eq!(out.tokens, expected, "{name}, {length:?}");
        assert!(out.acceptance.accepted > 0, "{name}, {length:?}: nothing accepted, a vacuous test");
    };
    for length in lengths {
        let run = |drafter: &mut dyn Drafter| {
            Speculative::new(&target.model, drafter, vocab, length)
                .unwrap()
                .generate(&prompt, &greedy)
                .unwrap()
        };
        check("draft", length, run(&mut ModelDrafter::new(&draft.model, vocab).unwrap()));
        check("q8_0", length, run(&mut ModelDrafter::new(&q8.model, vocab).unwrap()));
        check("q4_0", length, run(&mut ModelDrafter::new(&q4.model, vocab).unwrap()));
        check("layer skip", length, run(&mut ModelDrafter::new(&skipping, vocab).unwrap()));
        check("ngram", length, run(&mut NgramDrafter::new(1, 3, NgramLookup::Latest).unwrap()));
        check("ngram counts", length, run(&mut NgramDrafter::new(1, 4, NgramLookup::Counts).unwrap()));
    }
    // Trees for every kind that drafts them; each verified more nodes than levels.
    for shape in TREES {
        let length = DraftLength::Tree(shape);
        let run = |drafter: &mut dyn Drafter| {
            let out = Speculative::new(&target.model, drafter, vocab, length)
                .unwrap()
                .generate(&prompt, &greedy)
                .unwrap();
            assert!(out.acceptance.nodes > out.acceptance.proposed, "{length:?}: no tree was drafted");
            out
        };
        check("draft", length, run(&mut ModelDrafter::new(&draft.model, vocab).unwrap()));
        check("q8_0", length, run(&mut ModelDrafter::new(&q8.model, vocab).unwrap()));
        check("q4_0", length, run(&mut ModelDrafter::new(&q4.model, vocab).unwrap()));
        check("layer skip", length, run(&mut ModelDrafter::new(&skipping, vocab).unwrap()));
    }
    let tree = DraftLength::Tree(TREES[0]);
    let lookup = NgramDrafter::new(1, 3, NgramLookup::Latest).unwrap();
    let err = Speculative::new(&target.model, lookup, vocab, tree).unwrap().generate(&prompt, &greedy);
    assert!(err.unwrap_err().to_string().contains("chains only"));
}

/// In f16 and bf16, a verify forward of k + 1 tokens rounds differently from one-token
/// forwards, so where the target's top two logits lie within rounding of each other the two
/// decodings may part ways. What must hold: every token greedy speculative decoding emits is the
/// target's arg-max up to that rounding, and it matches target-only greedy decoding up to the
/// first such near-tie.
#[test]
fn greedy_equivalence_in_half_precision() {
    for (backend, device, dtype, tolerance) in common::half_precision_backends() {
        let target = common::load_fixture_in("tiny-gqa", backend, &device, dtype);
        let draft = common::load_fixture_in("tiny-untied-bf16", backend, &device, dtype);
        let vocab = shared_vocab(&target, &draft).unwrap();
        let prompt = common::reference("tiny-gqa").prompt_ids;
        let greedy = config(SamplingConfig::greedy(), 32, 0);
        let expected = autoregressive::generate(&target.model, &prompt, &greedy).unwrap().tokens;
        for k in [1, 2, 4, 8] {
            let mut speculative = with_draft(&target.model, &draft.model, vocab, k);
            let out = speculative.generate(&prompt, &greedy).unwrap().tokens;
            let context: Vec<u32> = prompt.iter().chain(&out).copied().collect();
            let logits =
                common::to_vec(target.model.forward_ids(&context, &mut target.model.new_cache()).unwrap());
            let rows: Vec<&[f32]> = logits.chunks_exact(vocab).skip(prompt.len() - 1).collect();
            let mut agreeing = true;
            for (i, (&token, row)) in out.iter().zip(&rows).enumerate() {
                let best = common::max_finite(row);
                let margin = best - row[token as usize];
                assert!(
                    margin <= tolerance,
                    "k = {k} on {backend}/{dtype:?}: token {i} is {margin} below the best"
                );
                let runner_up = row.iter().copied().filter(|&v| v < best).fold(f32::NEG_INFINITY, f32::max);
                agreeing &= best - runner_up > tolerance;
                if agreeing {
                    assert_eq!(
                        token, expected[i],
                        "k = {k} on {backend}/{dtype:?}: token {i} without a near-tie"
                    );
                }
            }
        }
    }
}

#[test]
fn greedy_equivalence_on_a_random_pair_with_a_similar_draft() {
    let target = common::random_model(
        "vocab=64,hidden=64,intermediate=128,layers=3,heads=4,kv_heads=2,head_dim=16",
        11,
        0.3,
    );
    let draft = common::random_model(
        "vocab=64,hidden=32,intermediate=64,layers=1,heads=2,kv_heads=1,head_dim=16",
        12,
        0.3,
    );
    let prompt = [3, 14, 15, 9, 2, 6];
    let greedy = config(SamplingConfig::greedy(), 48, 0);
    let expected = autoregressive::generate(&target, &prompt, &greedy).unwrap().tokens;
    for k in 1..=8 {
        let out = with_draft(&target, &draft, 64, k).generate(&prompt, &greedy).unwrap();
        assert_eq!(out.tokens, expected, "k = {k}");
    }
    // The draft equal to the target accepts every greedy proposal.
    let out = with_draft(&target, &target, 64, 4).generate(&prompt, &greedy).unwrap();
    assert_eq!(out.tokens, expected);
    assert_eq!(out.acceptance.accepted, out.acceptance.proposed);
}

#[test]
fn draft_equals_target_accepts_everything() {
    let device = ndarray();
    let target = common::load_fixture("tiny-gqa", Backend::Ndarray, &device);
    let prompt = common::reference("tiny-gqa").prompt_ids;
    for (sampling, k) in [(SamplingConfig::with_temperature(1.0), 4), (SamplingConfig::greedy(), 6)] {
        let mut spec = with_draft(&target.model, &target.model, 320, k);
        let out = spec.generate(&prompt, &config(sampling, 60, 5)).unwrap();
        let a = &out.acceptance;
        assert_eq!(a.alpha_hat(), 1.0, "{sampling:?}");
        assert!((a.alpha() - 1.0).abs() < 1e-6, "alpha {}", a.alpha());
        // Every call keeps k drafts and the bonus token, except the last, which drafts only
        // the tokens left before max_new_tokens (60 = 8 · 7 + 4 at k = 6; 60 = 12 · 5 at k = 4).
        let full_calls = (60 / (k + 1)) as u64;
        assert_eq!(a.accepted_len_hist[k], full_calls, "{sampling:?}");
        assert_eq!(a.target_calls, full_calls + u64::from(60 % (k + 1) != 0), "{sampling:?}");
        assert_eq!(out.tokens.len(), 60);
    }
}

/// The parents of a chain of `n` rows.
fn chain(n: usize) -> Vec<Option<usize>> {
    (0..n).map(|i| i.checked_sub(1)).collect()
}

/// Real tiny models behind a memo: each distinct prefix is run through the model once, so
/// tens of thousands of runs of the real engine loop take seconds.
struct Memoized<'a, M: CausalLm = Llama> {
    model: &'a M,
    rows: RefCell<HashMap<Vec<u32>, Vec<f32>>>,
    /// The captured layers' rows at the last position of each prefix (one capture set per test).
    hidden: RefCell<HashMap<Vec<u32>, Vec<Vec<f32>>>>,
}

impl<'a, M: CausalLm> Memoized<'a, M> {
    fn new(model: &'a M) -> Self {
        Self { model, rows: RefCell::default(), hidden: RefCell::default() }
    }

    /// Next-token logits after `prefix`.
    fn next(&self, prefix: &[u32]) -> Vec<f32> {
        if let Some(row) = self.rows.borrow().get(prefix) {
            return row.clone();
        }
        let mut cache = self.model.new_cache();
        let all = self.model.logits(prefix, &mut cache, 1, self.model.vocab_size()).unwrap();
        self.rows.borrow_mut().insert(prefix.to_vec(), all[0].clone());
        all[0].clone()
    }
}

impl<M: CausalLm> CausalLm for Memoized<'_, M> {
    type Cache = Vec<u32>;

    fn new_cache(&self) -> Vec<u32> {
        Vec::new()
    }
    fn cache_len(cache: &Vec<u32>) -> usize {
        cache.len()
    }
    fn truncate(cache: &mut Vec<u32>, len: usize) {
        cache.truncate(len);
    }
    fn logits(
        &self,
        tokens: &[u32],
        cache: &mut Vec<u32>,
        rows: usize,
        vocab: usize,
    ) -> specbench::Result<Vec<Vec<f32>>> {
        Ok(self.logits_tree(tokens, &chain(tokens.len()), cache, rows, vocab, &[])?.0)
    }
    fn logits_capturing(
        &self,
        tokens: &[u32],
        cache: &mut Vec<u32>,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> specbench::Result<Captured> {
        self.logits_tree(tokens, &chain(tokens.len()), cache, rows, vocab, capture)
    }
    /// Each row's prefix is the cached tokens and its ancestors; hidden states memoised per
    /// prefix too (a row's depend on the tokens up to it only).
    fn logits_tree(
        &self,
        tokens: &[u32],
        parents: &[Option<usize>],
        cache: &mut Vec<u32>,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> specbench::Result<Captured> {
        // The tree's rows: its cached ones, then `tokens`; each row's prefix is what comes before
        // the tree and the row's ancestors.
        let cached = parents.len() - tokens.len();
        let before = cache.len() - cached;
        let tree: Vec<u32> = cache[before..].iter().chain(tokens).copied().collect();
        let mut prefixes: Vec<Vec<u32>> = Vec::with_capacity(tree.len());
        for (t, &token) in tree.iter().enumerate() {
            let mut prefix = parents[t].map_or_else(|| cache[..before].to_vec(), |p| prefixes[p].clone());
            prefix.push(token);
            prefixes.push(prefix);
        }
        cache.extend_from_slice(tokens);
        let prefixes = prefixes.split_off(cached);
        let logits = prefixes[tokens.len() - rows..]
            .iter()
            .map(|prefix| self.next(prefix)[..vocab].to_vec())
            .collect();
        let mut hidden = vec![Vec::new(); capture.len()];
        if capture.is_empty() {
            return Ok((logits, hidden));
        }
        for prefix in &prefixes {
            if !self.hidden.borrow().contains_key(prefix) {
                let (_, all) =
                    self.model.logits_capturing(prefix, &mut self.model.new_cache(), 1, 1, capture)?;
                let width = all[0].len() / prefix.len();
                for row in 0..prefix.len() {
                    let layers = all.iter().map(|h| h[row * width..(row + 1) * width].to_vec()).collect();
                    self.hidden.borrow_mut().insert(prefix[..=row].to_vec(), layers);
                }
            }
            for (slot, layer) in hidden.iter_mut().zip(&self.hidden.borrow()[prefix]) {
                slot.extend_from_slice(layer);
            }
        }
        Ok((logits, hidden))
    }
    fn keep(cache: &mut Vec<u32>, start: usize, keep: &[usize]) {
        let kept: Vec<u32> = keep.iter().map(|&k| cache[start + k]).collect();
        cache.truncate(start);
        cache.extend(kept);
    }
    fn sync(&self) -> specbench::Result<()> {
        Ok(())
    }
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
}

const VOCAB: usize = 12;
const RUNS: u64 = 20_000;
const PROMPT: [u32; 3] = [1, 7, 4];

const TINY_TARGET: &str = "vocab=12,hidden=32,intermediate=64,layers=2,heads=4,kv_heads=2,head_dim=8";

/// An EAGLE-3 head for `TINY_TARGET`.
const EAGLE3_HEAD: common::heads::HeadShape = common::heads::HeadShape {
    vocab: VOCAB,
    hidden: 32,
    intermediate: 48,
    heads: 4,
    kv_heads: 2,
    head_dim: 8,
    draft_vocab: 9,
    aux_layers: [0, 1, 2],
    std: 0.5,
};

fn tiny_vocab_pair() -> (Llama, Llama) {
    let target = common::random_model(TINY_TARGET, 21, 0.35);
    let draft = common::random_model(
        "vocab=12,hidden=16,intermediate=32,layers=1,heads=2,kv_heads=1,head_dim=8",
        22,
        0.35,
    );
    (target, draft)
}

/// Exact target distribution of the first two generated tokens, by enumeration.
fn exact_first_two(target: &Memoized, prompt: &[u32], sampling: &SamplingConfig) -> Vec<f64> {
    let p1 = sampling.probabilities(&target.next(prompt), "target", 0).unwrap();
    let mut joint = vec![0.0; VOCAB * VOCAB];
    for x1 in 0..VOCAB {
        let mut prefix = prompt.to_vec();
        prefix.push(x1 as u32);
        let p2 = sampling.probabilities(&target.next(&prefix), "target", 0).unwrap();
        for x2 in 0..VOCAB {
            joint[x1 * VOCAB + x2] = p1[x1] * p2[x2];
        }
    }
    joint
}

/// Chi-square goodness of fit of the first two tokens of `RUNS` seeded runs against `expected`.
/// Bins expected fewer than 5 times are pooled. Returns the p-value.
fn first_two_p_value(
    target: &Memoized,
    draft: &Memoized,
    sampling: SamplingConfig,
    k: usize,
    rule: &(impl AcceptanceRule + ?Sized),
) -> f64 {
    let drafter = ModelDrafter::new(draft, VOCAB).unwrap();
    drafter_p_value(target, drafter, &PROMPT, sampling, DraftLength::Fixed(k), rule)
}

/// `first_two_p_value` for any drafter, schedule and prompt.
fn drafter_p_value(
    target: &Memoized,
    drafter: impl Drafter,
    prompt: &[u32],
    sampling: SamplingConfig,
    length: DraftLength,
    rule: &(impl AcceptanceRule + ?Sized),
) -> f64 {
    let expected = exact_first_two(target, prompt, &sampling);
    let mut spec = Speculative::new(target, drafter, VOCAB, length).unwrap();
    let mut counts = vec![0u64; VOCAB * VOCAB];
    for seed in 0..RUNS {
        let out = spec.generate_with_rule(prompt, &config(sampling, 2, seed), rule).unwrap();
        counts[out.tokens[0] as usize * VOCAB + out.tokens[1] as usize] += 1;
    }
    let (mut statistic, mut bins, mut pooled_expected, mut pooled_observed) = (0.0, 0, 0.0, 0.0);
    for (&p, &observed) in expected.iter().zip(&counts) {
        // An outcome the target cannot produce (top-p and top-k cut tokens to probability 0)
        // must never occur; pooled with other small bins it could hide.
        if p == 0.0 && observed > 0 {
            return 0.0;
        }
        let e = p * RUNS as f64;
        if e >= 5.0 {
            statistic += (observed as f64 - e).powi(2) / e;
            bins += 1;
        } else {
            pooled_expected += e;
            pooled_observed += observed as f64;
        }
    }
    if pooled_expected > 0.0 {
        statistic += (pooled_observed - pooled_expected).powi(2) / pooled_expected.max(1e-9);
        bins += 1;
    }
    1.0 - ChiSquared::new((bins - 1) as f64).unwrap().cdf(statistic)
}

/// The deliberately wrong rules that the same harness must catch.
struct AlwaysAccept;
impl AcceptanceRule for AlwaysAccept {
    fn verify(&self, _: &[f64], _: &DraftDistribution, _: u32, _: &mut ChaCha8Rng) -> Verdict {
        Verdict::Accepted
    }
}

/// The right test, but a rejected position is redrawn from p instead of norm(max(0, p − q)).
struct ResampleFromTarget;
impl AcceptanceRule for ResampleFromTarget {
    fn verify(&self, p: &[f64], q: &DraftDistribution, token: u32, rng: &mut ChaCha8Rng) -> Verdict {
        match verify_token(p, q, token, rng) {
            Verdict::Accepted => Verdict::Accepted,
            Verdict::Rejected { .. } => Verdict::Rejected { token: sample(p, rng) },
        }
    }
}

fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}

#[test]
fn distribution_preserved_and_wrong_rules_detected() {
    let (target, draft) = tiny_vocab_pair();
    let (target, draft) = (Memoized::new(&target), Memoized::new(&draft));
    let t1 = SamplingConfig::with_temperature(1.0);
    // Precondition: the draft is clearly different from the target.
    let (p, q) = (
        t1.probabilities(&target.next(&PROMPT), "target", 0).unwrap(),
        t1.probabilities(&draft.next(&PROMPT), "target", 0).unwrap(),
    );
    let tv = total_variation(&p, &q);
    assert!(tv > 0.2, "draft too close to the target for a meaningful test (TV {tv:.3})");

    let cases = [
        ("temperature 1", t1, 2),
        ("temperature 0.6", SamplingConfig::with_temperature(0.6), 3),
        ("top-p 0.8", SamplingConfig { top_p: 0.8, ..t1 }, 2),
        ("temperature 1.4, top-k 6", SamplingConfig { top_k: 6, ..SamplingConfig::with_temperature(1.4) }, 1),
    ];
    for (name, sampling, k) in cases {
        let p_value = first_two_p_value(&target, &draft, sampling, k, &RejectionSampling);
        println!("rejection sampling, {name}, k = {k}: p = {p_value:.4}");
        assert!(p_value > 1e-3, "{name}: speculative output differs from the target (p = {p_value:.2e})");
    }
    for (name, sampling, k) in
        [("temperature 1", t1, 2), ("top-p 0.8", SamplingConfig { top_p: 0.8, ..t1 }, 2)]
    {
        let always = first_two_p_value(&target, &draft, sampling, k, &AlwaysAccept);
        let from_p = first_two_p_value(&target, &draft, sampling, k, &ResampleFromTarget);
        println!(
            "negative controls, {name}: always-accept p = {always:.2e}, resample-from-p p = {from_p:.2e}"
        );
        assert!(always < 1e-3, "{name}: the test failed to detect always-accept (p = {always})");
        assert!(from_p < 1e-3, "{name}: the test failed to detect resampling from p (p = {from_p})");
    }
}

/// Trees through the chi-square test: several children per node, drawn without replacement and
/// verified by recursive rejection sampling, keep the target distribution over both levels;
/// accepting the first child, or resampling from the target after the last rejection, does not.
#[test]
fn tree_drafts_keep_the_target_distribution() {
    let (target, draft) = tiny_vocab_pair();
    let (target, draft) = (Memoized::new(&target), Memoized::new(&draft));
    let t1 = SamplingConfig::with_temperature(1.0);
    let wide = DraftLength::Tree(TreeShape { budget: 8, depth: 2, width: 4 });
    let narrow = DraftLength::Tree(TreeShape { budget: 3, depth: 2, width: 2 });
    let model = || ModelDrafter::new(&draft, VOCAB).unwrap();
    let cases = [
        ("temperature 1, budget 8, width 4", t1, wide),
        ("top-p 0.8, budget 8, width 4", SamplingConfig { top_p: 0.8, ..t1 }, wide),
        ("temperature 0.6, budget 3, width 2", SamplingConfig::with_temperature(0.6), narrow),
    ];
    for (name, sampling, tree) in cases {
        let p_value = drafter_p_value(&target, model(), &PROMPT, sampling, tree, &RejectionSampling);
        println!("tree, {name}: p = {p_value:.4}");
        assert!(p_value > 1e-3, "{name}: tree output differs from the target (p = {p_value:.2e})");
    }
    let always = drafter_p_value(&target, model(), &PROMPT, t1, wide, &AlwaysAccept);
    let from_p = drafter_p_value(&target, model(), &PROMPT, t1, narrow, &ResampleFromTarget);
    println!("tree negative controls: always-accept p = {always:.2e}, resample-from-p p = {from_p:.2e}");
    assert!(always < 1e-3, "the test failed to detect always-accept on a tree (p = {always})");
    assert!(from_p < 1e-3, "the test failed to detect resampling from p on a tree (p = {from_p})");
}

/// Every drafter kind and both adaptive schedules through the same chi-square test, each with
/// the always-accept negative control that must fail: the quantized target (q4_0, quantized on
/// load), the target with a layer skipped, n-gram lookup (certain proposals) on a prompt that
/// repeats itself, a separate draft under the heuristic and the confidence schedule, and an
/// EAGLE-3 head (random weights) whose draft vocabulary holds 9 of the 12 tokens.
#[test]
fn every_drafter_kind_and_schedule_keeps_the_target_distribution() {
    let (target, draft) = tiny_vocab_pair();
    let quantized = common::random_model_on(
        TINY_TARGET,
        21,
        0.35,
        &specbench::backend::Runtime::new(Backend::Ndarray, "q4_0").unwrap(),
    );
    let skipping = LayerSkip::new(&target, &[1]).unwrap();
    let memo = Memoized::new(&target);
    let (draft, quantized, skipping) =
        (Memoized::new(&draft), Memoized::new(&quantized), Memoized::new(&skipping));
    let t1 = SamplingConfig::with_temperature(1.0);
    // The n-gram drafter proposes after the repeated [7, 4]: the prompt ends in 4, so the
    // first position drafts [1, 7, ...] whatever was sampled before.
    let repeating: [u32; 6] = [1, 7, 4, 1, 7, 4];
    // Counted lookup needs two occurrences of a 1- or 2-gram before it proposes.
    let thrice: [u32; 9] = [1, 7, 4, 1, 7, 4, 1, 7, 4];
    let ngram = || NgramDrafter::new(1, 2, NgramLookup::Latest).unwrap();
    let counts = || NgramDrafter::new(1, 2, NgramLookup::Counts).unwrap();
    let model = |m| ModelDrafter::new(m, VOCAB).unwrap();
    let heuristic = DraftLength::Heuristic { start: 1, max: 3 };
    let confidence = DraftLength::Confidence { threshold: 0.3, max: 3 };
    let fixed = DraftLength::Fixed(2);
    type PValue<'a> = &'a dyn Fn(&dyn AcceptanceRule) -> f64;
    let head_dir = EAGLE3_HEAD.write_random(23);
    let head = load_head(head_dir.path(), target.config(), target.runtime()).unwrap();
    let tree = DraftLength::Tree(TreeShape { budget: 6, depth: 2, width: 3 });
    let cases: [(&str, PValue); 10] = [
        ("quantized q4_0, k = 2", &|rule| {
            drafter_p_value(&memo, model(&quantized), &PROMPT, t1, fixed, rule)
        }),
        ("layer skip, k = 2", &|rule| {
            drafter_p_value(&memo, ModelDrafter::new(&skipping, VOCAB).unwrap(), &PROMPT, t1, fixed, rule)
        }),
        ("ngram, k = 2", &|rule| drafter_p_value(&memo, ngram(), &repeating, t1, fixed, rule)),
        ("ngram counts, k = 2", &|rule| drafter_p_value(&memo, counts(), &thrice, t1, fixed, rule)),
        ("draft, heuristic", &|rule| drafter_p_value(&memo, model(&draft), &PROMPT, t1, heuristic, rule)),
        ("draft, confidence 0.3", &|rule| {
            drafter_p_value(&memo, model(&draft), &PROMPT, t1, confidence, rule)
        }),
        ("eagle3 head, k = 2", &|rule| {
            drafter_p_value(&memo, Eagle3Drafter::new(&head, &target, VOCAB), &PROMPT, t1, fixed, rule)
        }),
        ("eagle3 head, tree", &|rule| {
            drafter_p_value(&memo, Eagle3Drafter::new(&head, &target, VOCAB), &PROMPT, t1, tree, rule)
        }),
        ("quantized q4_0, tree", &|rule| drafter_p_value(&memo, model(&quantized), &PROMPT, t1, tree, rule)),
        ("layer skip, tree", &|rule| {
            drafter_p_value(&memo, ModelDrafter::new(&skipping, VOCAB).unwrap(), &PROMPT, t1, tree, rule)
        }),
    ];
    for (name, p_value) in cases {
        let right = p_value(&RejectionSampling);
        let wrong = p_value(&AlwaysAccept);
        println!("{name}: rejection sampling p = {right:.4}, always-accept p = {wrong:.2e}");
        assert!(right > 1e-3, "{name}: speculative output differs from the target (p = {right:.2e})");
        assert!(wrong < 1e-3, "{name}: the test failed to detect always-accept (p = {wrong})");
    }
    // Both lookups did propose on that prompt (the test above is not vacuous for n-grams).
    for (drafter, prompt) in [(ngram(), &repeating[..]), (counts(), &thrice[..])] {
        let mut spec = Speculative::new(&memo, drafter, VOCAB, fixed).unwrap();
        let out = spec.generate(prompt, &config(SamplingConfig::greedy(), 8, 0)).unwrap();
        assert!(out.acceptance.proposed > 0);
    }
}

/// A model whose next-token logits never depend on the context: acceptance is then i.i.d.
/// across positions, the assumption behind E = (1 − α^(k+1)) / (1 − α).
struct ContextFree(Vec<f32>);

impl CausalLm for ContextFree {
    type Cache = usize;
    fn new_cache(&self) -> usize {
        0
    }
    fn cache_len(cache: &usize) -> usize {
        *cache
    }
    fn truncate(cache: &mut usize, len: usize) {
        *cache = (*cache).min(len);
    }
    fn logits(
        &self,
        tokens: &[u32],
        cache: &mut usize,
        rows: usize,
        vocab: usize,
    ) -> specbench::Result<Vec<Vec<f32>>> {
        *cache += tokens.len();
        Ok(vec![self.0[..vocab].to_vec(); rows])
    }
    fn keep(cache: &mut usize, start: usize, keep: &[usize]) {
        *cache = start + keep.len();
    }
    fn sync(&self) -> specbench::Result<()> {
        Ok(())
    }
    fn vocab_size(&self) -> usize {
        self.0.len()
    }
}

/// z for a two-sided 99.9% interval: wide enough that a correct engine fails once in a
/// thousand seeds, narrow enough to catch an off-by-one in the counting.
const Z: f64 = 3.29;

#[test]
fn mean_accepted_length_matches_the_iid_expectation() {
    let target = ContextFree(vec![2.0, 1.5, 0.5, 0.0, -1.0, 1.0]);
    let draft = ContextFree(vec![1.0, 2.0, 0.0, 0.5, 0.0, 0.0]);
    for k in [1, 3, 5] {
        let mut spec = with_draft(&target, &draft, 6, k);
        let out = spec.generate(&[0], &config(SamplingConfig::with_temperature(1.0), 20_000, 7)).unwrap();
        let a = &out.acceptance;
        let steps = a.target_calls as f64;
        let tau = a.mean_accepted_len();
        let second_moment = a
            .accepted_len_hist
            .iter()
            .enumerate()
            .map(|(n, &c)| ((n + 1) as f64).powi(2) * c as f64)
            .sum::<f64>()
            / steps;
        let se = ((second_moment - tau * tau) / steps).sqrt();
        let expected = expected_accepted_len(a.alpha(), k);
        println!("k = {k}: tau {tau:.4} ± {se:.4}, E {expected:.4}, alpha {:.4}", a.alpha());
        assert!((tau - expected).abs() <= Z * se, "k = {k}: tau {tau} vs E {expected} (se {se})");
        // Under i.i.d. acceptance, position i accepts with probability α^i.
        for (i, rate) in a.per_position().iter().enumerate() {
            let expected = a.alpha().powi(i as i32 + 1);
            let se = (expected * (1.0 - expected) / steps).sqrt();
            assert!((rate - expected).abs() <= Z * se, "k = {k}, position {}: {rate} vs {expected}", i + 1);
        }
    }
}

#[test]
fn alpha_hat_agrees_with_alpha_on_a_long_run() {
    // With k = 1 every proposal is tested, so E[α̂] = α exactly.
    let device = ndarray();
    let target = common::load_fixture("tiny-gqa", Backend::Ndarray, &device);
    let draft = common::load_fixture("tiny-untied-bf16", Backend::Ndarray, &device);
    let prompt = common::reference("tiny-gqa").prompt_ids;
    let mut spec = with_draft(&target.model, &draft.model, 320, 1);
    let out = spec.generate(&prompt, &config(SamplingConfig::with_temperature(1.0), 200, 3)).unwrap();
    let a = &out.acceptance;
    let n = a.proposed as f64;
    let se = (a.alpha() * (1.0 - a.alpha()) / n).sqrt();
    println!("alpha_hat {:.4}, alpha {:.4}, n {n}, se {se:.4}", a.alpha_hat(), a.alpha());
    assert!(n >= 100.0);
    assert!(
        (a.alpha_hat() - a.alpha()).abs() <= Z * se,
        "alpha_hat {} vs alpha {}",
        a.alpha_hat(),
        a.alpha()
    );
}

/// Banning tokens (llama.cpp's `--ignore-eos`) changes the target's distribution for drafter
/// and target alike: greedy speculative output still equals greedy target-only output, and
/// neither emits a banned token.
#[test]
fn greedy_equivalence_with_banned_tokens() {
    let device = ndarray();
    let target = common::load_fixture("tiny-gqa", Backend::Ndarray, &device);
    let draft = common::load_fixture("tiny-untied-bf16", Backend::Ndarray, &device);
    let vocab = shared_vocab(&target, &draft).unwrap();
    let prompt = common::reference("tiny-gqa").prompt_ids;
    let plain = config(SamplingConfig::greedy(), 24, 0);
    let unbanned = autoregressive::generate(&target.model, &prompt, &plain).unwrap().tokens;
    // Ban the three tokens greedy decoding emits most.
    let mut counts: HashMap<u32, usize> = HashMap::new();
    unbanned.iter().for_each(|t| *counts.entry(*t).or_default() += 1);
    let mut by_count: Vec<(u32, usize)> = counts.into_iter().collect();
    by_count.sort_by_key(|(t, c)| (std::cmp::Reverse(*c), *t));
    let banned: Vec<u32> = by_count.iter().take(3).map(|(t, _)| *t).collect();
    let greedy = GenerationConfig { banned_ids: banned.clone(), ..plain };
    let expected = autoregressive::generate(&target.model, &prompt, &greedy).unwrap().tokens;
    assert!(expected.iter().all(|t| !banned.contains(t)), "{expected:?} {banned:?}");
    assert_ne!(expected, unbanned);
    for k in [1, 3, 6] {
        let out = with_draft(&target.model, &draft.model, vocab, k).generate(&prompt, &greedy).unwrap();
        assert_eq!(out.tokens, expected, "k = {k}");
    }
    for shape in TREES {
        let drafter = ModelDrafter::new(&draft.model, vocab).unwrap();
        let mut spec = Speculative::new(&target.model, drafter, vocab, DraftLength::Tree(shape)).unwrap();
        assert_eq!(spec.generate(&prompt, &greedy).unwrap().tokens, expected, "{shape:?}");
    }
}
