//! One generation from one prompt, target-only or speculative with any drafter: what
//! `specbench generate` runs and prints (the text, or one JSON object for parity checks).

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::{MAX_K, MAX_NEW_TOKENS};
use crate::backend::Runtime;
use crate::decoding::draft::DraftLength;
use crate::decoding::drafters::{Describe, DraftContext, DrafterSpec, LoadedDrafter};
use crate::decoding::tree::TreeShape;
use crate::decoding::{Generation, GenerationConfig, autoregressive};
use crate::error::{Error, Result};
use crate::load::{LoadedModel, ModelSpec};
use crate::metrics::{AcceptanceStats, Timings, cost_ratio, expected_accepted_len, predicted_speedup};
use crate::model::Step;
use crate::sampling::SamplingConfig;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    pub model: ModelSpec,
    /// Speculative decoding with this drafter; a draft checkpoint without a dtype runs in the
    /// run's.
    pub drafter: Option<DrafterSpec>,
    pub k: usize,
    /// Draft a tree of this shape per step instead of `k` tokens.
    pub tree: Option<TreeShape>,
    pub prompt: String,
    /// Wrap the prompt as one user turn of the model's chat template.
    pub chat: bool,
    pub max_new_tokens: usize,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Never generate the model's end-of-generation tokens (llama.cpp's `--ignore-eos`).
    pub ban_eos: bool,
    pub stop_token_ids: Vec<u32>,
    pub sampling: SamplingConfig,
    pub seed: u64,
    /// The `top_logits` largest target logits at each of the first `logit_positions` generated
    /// positions (0: none).
    pub top_logits: usize,
    pub logit_positions: usize,
}

impl Request {
    fn length(&self) -> DraftLength {
        self.tree.map_or(DraftLength::Fixed(self.k), DraftLength::Tree)
    }

    /// What each step drafts, for the summary: `k = 4`, or the tree's shape.
    fn drafts(&self) -> String {
        self.tree.map_or_else(|| format!("k = {}", self.k), |shape| format!("tree {}", shape.name()))
    }
}

/// What a generation gives back: the JSON report and the text summary print from it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub draft: Option<String>,
    /// The draft length, for a chain.
    pub k: Option<usize>,
    /// The tree's shape (`budget:16,depth:5,width:4`), for a tree.
    pub tree: Option<String>,
    pub runtime: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub stop_token_ids: Vec<u32>,
    pub accepted_per_call: Vec<usize>,
    /// Seconds per phase.
    pub timings: BTreeMap<&'static str, f64>,
    pub decode_tokens_per_s: f64,
    pub acceptance: Option<AcceptanceStats>,
    pub top_logits: Vec<TopLogits>,
    /// One human-readable paragraph: what ran, speed, and for a drafter acceptance and c.
    #[serde(skip)]
    pub summary: String,
}

/// Runs `request` on `runtime`.
pub fn generate(request: &Request, runtime: &Runtime) -> Result<Report> {
    if request.k == 0 || request.k > MAX_K {
        return Err(Error::Usage(format!(
            "--k {} is out of range: draft lengths go from 1 to {MAX_K}",
            request.k
        )));
    }
    if request.max_new_tokens == 0 || request.max_new_tokens > MAX_NEW_TOKENS {
        return Err(Error::Usage(format!(
            "--max-new-tokens {} is out of range 1..={MAX_NEW_TOKENS}",
            request.max_new_tokens
        )));
    }
    let target = LoadedModel::load(&request.model, runtime, request.seed)?;
    let drafter_spec = request.drafter.clone().map(|spec| match spec {
        DrafterSpec::Model(mut settings) => {
            settings.dtype.get_or_insert_with(|| runtime.weight_name().into());
            DrafterSpec::Model(settings)
        }
        other => other,
    });
    match (&drafter_spec, request.tree) {
        (None, Some(_)) => {
            return Err(Error::Usage("--tree drafts with a drafter: give --drafter or --draft".into()));
        }
        (Some(spec), Some(_)) if !spec.drafts_trees() => {
            return Err(Error::Usage(format!(
                "--tree: a drafter of kind {} drafts chains only; use model, self, skip/keep or eagle3",
                spec.kind_name()
            )));
        }
        _ => {}
    }
    let context = DraftContext { target: &target, runtime, seed: request.seed, checkpoint: None };
    let drafter = drafter_spec.as_ref().map(|spec| spec.load(&context)).transpose()?;
    let prompt = target.tokenizer.encode_prompt(&request.prompt, request.chat)?;
    check_context(&target, drafter.as_deref(), &prompt, request)?;
    let config = GenerationConfig {
        max_new_tokens: request.max_new_tokens,
        sampling: request.sampling,
        eos_ids: if request.ignore_eos { Vec::new() } else { target.stop_ids(&request.stop_token_ids) },
        banned_ids: if request.ban_eos { target.stop_ids(&[]) } else { Vec::new() },
        seed: request.seed,
    };
    let generation = match &drafter {
        None => autoregressive::generate(&target.model, &prompt, &config)?,
        Some(drafter) => drafter.generate(&target.model, request.length(), &prompt, &config)?,
    };
    let draft_model = drafter.as_ref().and_then(|d| d.model());
    let draft = drafter_spec.as_ref().map(|spec| {
        spec.describe(&Describe { target: &target.spec, checkpoint: draft_model.map(|m| &m.spec) })
    });
    let weights = |model: &LoadedModel| model.model.weight_formats().join(" + ");
    let target_label = format!("{} ({} weights)", target.spec, weights(&target));
    let label = match (&draft, draft_model) {
        (None, _) => format!("{target_label} on {}", runtime.describe()),
        (Some(name), Some(d)) => format!(
            "{target_label} + draft {name} ({} weights, {}) on {}",
            weights(d),
            request.drafts(),
            runtime.describe()
        ),
        (Some(name), None) => {
            format!("{target_label} + drafter {name} ({}) on {}", request.drafts(), runtime.describe())
        }
    };
    let speculative = drafter.is_some();
    Ok(Report {
        model: target.spec.to_string(),
        k: speculative.then_some(request.k).filter(|_| request.tree.is_none()),
        tree: request.tree.filter(|_| speculative).map(|shape| shape.name()),
        runtime: runtime.describe(),
        prompt: request.prompt.clone(),
        text: target.tokenizer.decode_continuation(&prompt, &generation.tokens),
        stop_token_ids: config.eos_ids.clone(),
        accepted_per_call: generation.accepted_per_call.clone(),
        timings: seconds_by_phase(&generation.timings),
        decode_tokens_per_s: generation.decode_tokens_per_s(),
        acceptance: speculative.then(|| generation.acceptance.clone()),
        top_logits: top_logits(
            &target,
            &prompt,
            &generation.tokens,
            request.top_logits,
            request.logit_positions,
        )?,
        summary: describe(&label, &generation, speculative, request.tree.is_some()),
        draft,
        prompt_ids: prompt,
        generated_ids: generation.tokens,
    })
}

/// Every position the generation can reach, in both models' context.
fn check_context(
    target: &LoadedModel,
    drafter: Option<&dyn LoadedDrafter>,
    prompt: &[u32],
    request: &Request,
) -> Result<()> {
    let rows = if drafter.is_some() { request.length().rows() } else { 0 };
    let what = format!(
        "the prompt ({} tokens) + --max-new-tokens {} + {rows} draft rows",
        prompt.len(),
        request.max_new_tokens
    );
    let positions = prompt.len() + request.max_new_tokens + rows;
    target.check_context("target", positions, &what)?;
    match drafter.and_then(|d| d.model()) {
        Some(draft) => draft.check_context("draft", positions, &what),
        None => Ok(()),
    }
}

fn seconds_by_phase(t: &Timings) -> BTreeMap<&'static str, f64> {
    [
        ("prefill", t.prefill),
        ("draft", t.draft),
        ("verify", t.verify),
        ("sampling", t.sampling),
        ("other", t.other()),
        ("wall", t.wall),
    ]
    .into_iter()
    .map(|(phase, d)| (phase, d.as_secs_f64()))
    .collect()
}

/// The largest logits of the target where generated token `index` was chosen.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogits {
    /// 0 for the first generated token.
    index: usize,
    ids: Vec<u32>,
    values: Vec<f32>,
}

/// One forward over the prompt and all but the last generated token; the rows that predicted
/// the first `positions` generated tokens, each cut to its `n` largest logits.
fn top_logits(
    target: &LoadedModel,
    prompt: &[u32],
    generated: &[u32],
    n: usize,
    positions: usize,
) -> Result<Vec<TopLogits>> {
    let positions = positions.min(generated.len());
    if n == 0 || positions == 0 {
        return Ok(Vec::new());
    }
    let context: Vec<u32> = prompt.iter().chain(&generated[..positions - 1]).copied().collect();
    let vocab = target.model.config().vocab_size;
    let step = Step::new(&context, positions);
    let rows = target.model.step(&step, &mut target.model.new_cache(), vocab)?.logits;
    Ok(rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            order.truncate(n);
            TopLogits { index, values: order.iter().map(|&i| row[i as usize]).collect(), ids: order }
        })
        .collect())
}

/// A human-readable summary of one generation.
fn describe(label: &str, g: &Generation, speculative: bool, tree: bool) -> String {
    let t = &g.timings;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut lines = vec![
        format!("[{label}]"),
        format!(
            "prefill {} tokens in {:.1} ms; {} new tokens at {:.2} tokens/s",
            g.prompt_tokens,
            ms(t.prefill),
            g.tokens.len(),
            g.decode_tokens_per_s()
        ),
        format!(
            "time: draft {:.1} ms, verify {:.1} ms, sampling {:.1} ms, other {:.1} ms, wall {:.1} ms",
            ms(t.draft),
            ms(t.verify),
            ms(t.sampling),
            ms(t.other()),
            ms(t.wall)
        ),
    ];
    if speculative && tree {
        let a = &g.acceptance;
        let by_depth: Vec<String> = a.per_position().iter().map(|r| format!("{r:.2}")).collect();
        lines.push(format!(
            "tree: {:.2} nodes verified per target call; accepted length ≥ depth d in [{}] of calls",
            a.nodes as f64 / a.target_calls as f64,
            by_depth.join(", ")
        ));
        lines.push(format!(
            "mean accepted length {:.2} tokens per target call; accepted-length histogram {:?}",
            a.mean_accepted_len(),
            a.accepted_len_hist
        ));
    } else if speculative {
        let a = &g.acceptance;
        let c = cost_ratio(t, a);
        let per_position: Vec<String> = a.per_position().iter().map(|r| format!("{r:.2}")).collect();
        lines.push(format!(
            "acceptance: {}/{} drafted tokens accepted (alpha_hat {:.3}), alpha {:.3}, per position [{}]",
            a.accepted,
            a.proposed,
            a.alpha_hat(),
            a.alpha(),
            per_position.join(", ")
        ));
        lines.push(format!(
            "mean accepted length {:.2} tokens per target call (i.i.d. expectation {:.2}); accepted-length histogram {:?}",
            a.mean_accepted_len(),
            expected_accepted_len(a.alpha(), a.k),
            a.accepted_len_hist
        ));
        lines.push(format!(
            "cost ratio c {:.3}; Theorem 3.8 predicts {:.2}x over target-only decoding",
            c,
            predicted_speedup(a.alpha(), c, a.k)
        ));
    }
    lines.join("\n")
}
