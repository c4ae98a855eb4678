//! Drafters: whatever proposes the tokens a speculative step verifies. A drafter keeps its own
//! state (a model's KV cache, nothing for lookup) over one generation, proposes up to a given
//! number of tokens with the distribution each was drawn from, and forgets what the target
//! rejected. The speculative decoder and its exactness do not depend on which drafter it is.
//!
//! - [`ModelDrafter`] samples from a language model: a separate draft checkpoint, the target's
//!   own weights at another dtype, or the target with layers skipped ([`LayerSkip`]).
//! - [`NgramDrafter`] copies what followed the latest earlier occurrence of the context's last
//!   n tokens (prompt lookup), looking up again past the end of a copy, or proposes the
//!   continuation seen most often after them (llama.cpp's `llama-lookup`); its proposals are
//!   certain (one-hot `q`).

use std::collections::HashMap;
use std::ops::Range;

use rand_chacha::ChaCha8Rng;

use super::acceptance::DraftDistribution;
use super::{CausalLm, prefill};
use super::{timed, timed_host};
use crate::error::{Error, Result};
use crate::metrics::Timings;
use crate::model::{KvCache, Llama};
use crate::sampling::{SamplingConfig, sample};

/// What one speculative step asks of its drafter.
#[derive(Debug, Clone, Copy)]
pub struct DraftRequest<'a> {
    /// Propose at most this many tokens.
    pub limit: usize,
    pub sampling: &'a SamplingConfig,
    /// Stop before a token the drafter is less sure of than this (llama.cpp's `--draft-p-min`):
    /// a model drafter's confidence is the largest probability of its own softmax at
    /// temperature 1, whatever the sampling temperature, so that it means something at T = 0.
    pub min_confidence: Option<f64>,
}

/// Draft tokens and the distribution each was drawn from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    pub qs: Vec<DraftDistribution>,
}

pub trait Drafter {
    /// Begins a generation: forgets the last one and reads all of `prompt` but its last token
    /// (the time goes to `timings.prefill`).
    fn start(&mut self, prompt: &[u32], timings: &mut Timings) -> Result<()>;

    /// Up to `request.limit` tokens continuing `committed` (the prompt and every token kept so
    /// far; its last token the drafter has not read yet). Model time goes to `timings.draft`,
    /// host sampling to `timings.sampling`.
    fn propose(
        &mut self,
        committed: &[u32],
        request: &DraftRequest,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<Proposal>;

    /// The target kept `len` tokens, the last of which the drafter has not read: anything it
    /// read past `len - 1` is forgotten.
    fn rollback(&mut self, len: usize);
}

impl<D: Drafter + ?Sized> Drafter for &mut D {
    fn start(&mut self, prompt: &[u32], timings: &mut Timings) -> Result<()> {
        (**self).start(prompt, timings)
    }
    fn propose(
        &mut self,
        committed: &[u32],
        request: &DraftRequest,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<Proposal> {
        (**self).propose(committed, request, rng, timings)
    }
    fn rollback(&mut self, len: usize) {
        (**self).rollback(len)
    }
}

/// A language model as drafter (Leviathan et al. 2023, Algorithm 1, lines 1–4), over the first
/// `vocab` tokens it scores.
pub struct ModelDrafter<'a, M: CausalLm> {
    model: &'a M,
    cache: M::Cache,
    vocab: usize,
}

impl<'a, M: CausalLm> ModelDrafter<'a, M> {
    pub fn new(model: &'a M, vocab: usize) -> Result<Self> {
        let rows = model.vocab_size();
        if rows < vocab {
            return Err(Error::VocabMismatch(format!(
                "draft scores {rows} tokens, fewer than the shared vocabulary of {vocab}"
            )));
        }
        Ok(Self { model, cache: model.new_cache(), vocab })
    }
}

impl<M: CausalLm> Drafter for ModelDrafter<'_, M> {
    fn start(&mut self, prompt: &[u32], timings: &mut Timings) -> Result<()> {
        M::truncate(&mut self.cache, 0);
        timings.prefill += timed(self.model, || prefill(self.model, prompt, &mut self.cache))?.1;
        Ok(())
    }

    /// The first forward also feeds whatever committed tokens the cache lacks (after a fully
    /// accepted block, the last draft token was sampled but never fed).
    fn propose(
        &mut self,
        committed: &[u32],
        request: &DraftRequest,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<Proposal> {
        let mut proposal = Proposal::default();
        for i in 0..request.limit {
            let feed = match proposal.tokens.last() {
                Some(&token) => vec![token],
                None => committed[M::cache_len(&self.cache)..].to_vec(),
            };
            let (rows, forward) =
                timed(self.model, || self.model.logits(&feed, &mut self.cache, 1, self.vocab))?;
            timings.draft += forward;
            let (drawn, sampling) = timed_host(|| {
                if request.min_confidence.is_some_and(|least| confidence(&rows[0]) < least) {
                    return Ok(None);
                }
                let q = request.sampling.probabilities(&rows[0], "draft", committed.len() + i)?;
                Ok::<_, Error>(Some((sample(&q, rng), q)))
            });
            timings.sampling += sampling;
            let Some((token, q)) = drawn? else { break };
            proposal.tokens.push(token);
            proposal.qs.push(q.into());
        }
        Ok(proposal)
    }

    fn rollback(&mut self, len: usize) {
        M::truncate(&mut self.cache, len.saturating_sub(1));
    }
}

/// The largest probability of softmax(`logits`) at temperature 1: 1 / Σ exp(l − max).
fn confidence(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    1.0 / logits.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>()
}

/// The target with some of its layers skipped (self-speculative decoding, Zhang et al. 2024):
/// the same weights, embedding and head, read in place; its own KV cache holds the layers it runs.
#[derive(Debug)]
pub struct LayerSkip<'a> {
    model: &'a Llama,
    skip: Vec<bool>,
}

impl<'a> LayerSkip<'a> {
    /// `skip`: the layer indices left out (at least one layer must remain).
    pub fn new(model: &'a Llama, skip: &[usize]) -> Result<Self> {
        let layers = model.config().num_hidden_layers;
        if let Some(&bad) = skip.iter().find(|&&i| i >= layers) {
            return Err(Error::InvalidConfig(format!(
                "layer {bad} cannot be skipped: the target has layers 0..{layers}"
            )));
        }
        let mut mask = vec![false; layers];
        skip.iter().for_each(|&i| mask[i] = true);
        if mask.iter().all(|&s| s) {
            return Err(Error::InvalidConfig(format!("skipping all {layers} layers leaves no model")));
        }
        Ok(Self { model, skip: mask })
    }
}

/// The target's own cache and calls, with only the forward changed.
impl CausalLm for LayerSkip<'_> {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        self.model.new_cache()
    }
    fn cache_len(cache: &KvCache) -> usize {
        <Llama as CausalLm>::cache_len(cache)
    }
    fn truncate(cache: &mut KvCache, len: usize) {
        <Llama as CausalLm>::truncate(cache, len)
    }
    fn logits(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: usize,
        vocab: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.model.logits_skipping(tokens, cache, rows, vocab, &self.skip)
    }
    fn sync(&self) -> Result<()> {
        self.model.sync()
    }
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
}

/// How an n-gram drafter picks what follows the context's last n tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NgramLookup {
    /// Copy what followed the latest earlier occurrence (prompt lookup).
    Latest,
    /// The continuation seen most often after it, one token at a time, when enough occurrences
    /// agree (llama.cpp's `llama-lookup`, see [`NgramCounts`]).
    Counts,
}

impl NgramLookup {
    /// Its name in configs and results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Counts => "counts",
        }
    }
}

/// Model-free drafting from the context's own n-grams, for n from `max_n` down to `min_n`:
/// prompt lookup (Saxena 2023; transformers' `prompt_lookup_num_tokens`, vLLM's `ngram`) or
/// llama.cpp's n-gram statistics. No model, so proposals are certain and cost only the search.
#[derive(Debug, Clone, PartialEq)]
pub struct NgramDrafter {
    min_n: usize,
    max_n: usize,
    /// `Some` for [`NgramLookup::Counts`].
    counts: Option<NgramCounts>,
}

impl NgramDrafter {
    pub fn new(min_n: usize, max_n: usize, lookup: NgramLookup) -> Result<Self> {
        if min_n == 0 || min_n > max_n {
            return Err(Error::InvalidConfig(format!(
                "n-gram sizes {min_n}..={max_n}: need 1 ≤ min_n ≤ max_n"
            )));
        }
        let counts = (lookup == NgramLookup::Counts).then(NgramCounts::default);
        Ok(Self { min_n, max_n, counts })
    }

    /// Up to `limit` tokens after `context`: what followed the latest earlier occurrence of its
    /// longest matching suffix, and where that copy reaches the end of the context, what
    /// followed the suffix of the context with the copy appended, and so on. Without the second
    /// lookup a match near the end (a period-3 repetition, say) could only propose up to the end
    /// (on SmolLM2 it proposed 0.5–2.4 tokens per step at k = 6; llama-lookup looks up again
    /// after every drafted token).
    fn draft_latest(&self, context: &[u32], limit: usize) -> Vec<u32> {
        let mut extended = context.to_vec();
        let end = context.len() + limit;
        while extended.len() < end {
            let more = self.continuation(&extended, end - extended.len());
            if more.is_empty() {
                break;
            }
            extended.extend_from_within(more);
        }
        extended.split_off(context.len())
    }

    /// Where in `context` what followed the latest earlier occurrence of its longest matching
    /// suffix lies (at most `limit` tokens; empty without a match).
    fn continuation(&self, context: &[u32], limit: usize) -> Range<usize> {
        let len = context.len();
        for n in (self.min_n..=self.max_n.min(len.saturating_sub(1))).rev() {
            let suffix = &context[len - n..];
            // Latest first: nearby repetitions (a loop body, a list) predict best.
            if let Some(start) = (0..len - n).rev().find(|&s| &context[s..s + n] == suffix) {
                let from = start + n;
                return from..(from + limit).min(len);
            }
        }
        0..0
    }

    /// Up to `limit` tokens after `context`, each the confident continuation (by `counts`) of
    /// the longest suffix that has one, the drafted tokens included in the suffix.
    fn draft_counted(&self, counts: &NgramCounts, context: &[u32], limit: usize) -> Vec<u32> {
        let mut extended = context.to_vec();
        while extended.len() < context.len() + limit {
            let len = extended.len();
            let next = (self.min_n..=self.max_n.min(len))
                .rev()
                .find_map(|n| counts.confident_next(&extended[len - n..]));
            match next {
                Some(token) => extended.push(token),
                None => break,
            }
        }
        extended.split_off(context.len())
    }
}

/// How often each token followed each n-gram of the tokens committed so far, as llama.cpp's
/// `common_ngram_cache` counts them for `llama-lookup`. A continuation is proposed when the
/// n-gram was seen often enough and the most frequent continuation holds a large enough share:
/// llama.cpp's "lax" thresholds for its context cache (at least 2, 2, 1, 1 occurrences and a 66,
/// 50, 50, 50% share for n = 1, 2, 3, 4; n > 4 as 4). llama.cpp breaks ties between equally
/// frequent continuations by hash-map order; here the latest seen wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NgramCounts {
    /// n-gram → continuation → (count, position last seen).
    table: HashMap<Vec<u32>, HashMap<u32, (u32, usize)>>,
    /// How many committed tokens have been counted.
    counted: usize,
}

impl NgramCounts {
    const MIN_OCCURRENCES: [u32; 4] = [2, 2, 1, 1];
    const MIN_PERCENT: [u32; 4] = [66, 50, 50, 50];

    /// Counts the continuations of `committed` not counted yet, for n-grams of `sizes`.
    fn observe(&mut self, committed: &[u32], sizes: std::ops::RangeInclusive<usize>) {
        if committed.len() < self.counted {
            // Another context than the one counted: start over.
            *self = Self::default();
        }
        for at in self.counted.max(1)..committed.len() {
            for n in sizes.clone().filter(|&n| n <= at) {
                let seen = self.table.entry(committed[at - n..at].to_vec()).or_default();
                let entry = seen.entry(committed[at]).or_insert((0, at));
                *entry = (entry.0 + 1, at);
            }
        }
        self.counted = committed.len();
    }

    /// The most frequent continuation of `ngram`, if it passes the thresholds for its size.
    fn confident_next(&self, ngram: &[u32]) -> Option<u32> {
        let seen = self.table.get(ngram)?;
        let total: u32 = seen.values().map(|&(count, _)| count).sum();
        let (&token, &(count, _)) = seen.iter().max_by_key(|&(_, &(count, last))| (count, last))?;
        let size = ngram.len().min(4) - 1;
        (total >= Self::MIN_OCCURRENCES[size] && 100 * count >= Self::MIN_PERCENT[size] * total)
            .then_some(token)
    }
}

impl Drafter for NgramDrafter {
    fn start(&mut self, _: &[u32], _: &mut Timings) -> Result<()> {
        if let Some(counts) = &mut self.counts {
            *counts = NgramCounts::default();
        }
        Ok(())
    }

    fn propose(
        &mut self,
        committed: &[u32],
        request: &DraftRequest,
        _: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<Proposal> {
        let (tokens, search) = timed_host(|| {
            if let Some(counts) = &mut self.counts {
                counts.observe(committed, self.min_n..=self.max_n);
            }
            match &self.counts {
                None => self.draft_latest(committed, request.limit),
                Some(counts) => self.draft_counted(counts, committed, request.limit),
            }
        });
        timings.draft += search;
        let qs = tokens.iter().map(|&t| DraftDistribution::Certain(t)).collect();
        Ok(Proposal { tokens, qs })
    }

    fn rollback(&mut self, _: usize) {}
}

/// How many tokens each step drafts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DraftLength {
    Fixed(usize),
    /// transformers' `num_assistant_tokens_schedule = "heuristic"`: start at `start`, +2 after a
    /// block accepted in full, −1 (never below 1) otherwise; here also never above `max`, and
    /// restarted with each generation.
    Heuristic {
        start: usize,
        max: usize,
    },
    /// Up to `max` tokens, stopping before the first the drafter is less sure of than
    /// `threshold` (see [`DraftRequest::min_confidence`]).
    Confidence {
        threshold: f64,
        max: usize,
    },
}

impl DraftLength {
    /// The most tokens a step can draft.
    pub fn max(&self) -> usize {
        match *self {
            Self::Fixed(k) => k,
            Self::Heuristic { max, .. } | Self::Confidence { max, .. } => max,
        }
    }

    /// Its name in results: empty for a fixed k (the `k` column says it), else the schedule
    /// and its parameter, as a config writes it (`heuristic:4`, `confidence:0.5`).
    pub fn schedule(&self) -> String {
        match self {
            Self::Fixed(_) => String::new(),
            Self::Heuristic { start, .. } => format!("heuristic:{start}"),
            Self::Confidence { threshold, .. } => format!("confidence:{threshold}"),
        }
    }

    /// Parses a schedule name (`heuristic:START`, `confidence:THRESHOLD`) capped at `max`.
    pub fn parse_schedule(text: &str, max: usize) -> std::result::Result<Self, String> {
        let (name, value) = text.split_once(':').ok_or_else(|| {
            format!("`{text}`: write `heuristic:START` (a first draft length) or `confidence:THRESHOLD` (in (0, 1))")
        })?;
        match name {
            "heuristic" => match value.parse::<usize>() {
                Ok(start) if (1..=max).contains(&start) => Ok(Self::Heuristic { start, max }),
                _ => Err(format!("`{text}`: the start must be a draft length in 1..={max} (the largest k)")),
            },
            "confidence" => match value.parse::<f64>() {
                Ok(threshold) if threshold > 0.0 && threshold < 1.0 => {
                    Ok(Self::Confidence { threshold, max })
                }
                _ => Err(format!("`{text}`: the threshold must be a probability in (0, 1)")),
            },
            other => Err(format!("`{text}`: unknown schedule `{other}`; choose heuristic or confidence")),
        }
    }
}

/// A generation's draft length as it adapts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    length: DraftLength,
    current: usize,
}

impl Schedule {
    pub(super) fn new(length: DraftLength) -> Self {
        let current = match length {
            DraftLength::Fixed(k) => k,
            DraftLength::Heuristic { start, .. } => start,
            DraftLength::Confidence { max, .. } => max,
        };
        Self { length, current }
    }

    pub(super) fn next_limit(&self) -> usize {
        self.current
    }

    pub(super) fn min_confidence(&self) -> Option<f64> {
        match self.length {
            DraftLength::Confidence { threshold, .. } => Some(threshold),
            _ => None,
        }
    }

    /// After a block of `drafted` tokens of which `accepted` were kept.
    pub(super) fn update(&mut self, drafted: usize, accepted: usize) {
        if let DraftLength::Heuristic { max, .. } = self.length {
            self.current = if drafted > 0 && accepted == drafted {
                (self.current + 2).min(max)
            } else {
                self.current.saturating_sub(1).max(1)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_lookup_copies_what_followed_the_latest_longest_match() {
        let drafter = NgramDrafter::new(1, 3, NgramLookup::Latest).unwrap();
        let copied = |drafter: &NgramDrafter, context: &[u32], limit| {
            context[drafter.continuation(context, limit)].to_vec()
        };
        // "1 2 3" occurred twice; the latest occurrence (followed by 9 8) wins.
        let context = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 7, 1, 2, 3];
        assert_eq!(copied(&drafter, &context, 2), [9, 8]);
        assert_eq!(copied(&drafter, &context, 10), [9, 8, 7, 1, 2, 3]);
        // No 3-gram or 2-gram match: falls back to the last token alone.
        assert_eq!(copied(&drafter, &[5, 6, 7, 5, 8, 6, 9, 7], 3), [5, 8, 6]);
        // Below min_n nothing is proposed.
        assert!(
            copied(&NgramDrafter::new(2, 3, NgramLookup::Latest).unwrap(), &[5, 6, 7, 5, 8, 6, 9, 7], 3)
                .is_empty()
        );
        assert!(copied(&drafter, &[4], 3).is_empty());
        assert!(
            NgramDrafter::new(0, 2, NgramLookup::Latest).is_err()
                && NgramDrafter::new(3, 2, NgramLookup::Counts).is_err()
        );
    }

    #[test]
    fn ngram_drafts_look_up_again_past_the_end_of_a_copy() {
        let drafter = NgramDrafter::new(1, 2, NgramLookup::Latest).unwrap();
        // The latest "1 2" is followed only by "3 1 2" before the end; the lookup continues
        // from the drafted suffix.
        let context = [1, 2, 3, 1, 2, 3, 1, 2];
        assert_eq!(context[drafter.continuation(&context, 6)], [3, 1, 2]);
        assert_eq!(drafter.draft_latest(&context, 6), [3, 1, 2, 3, 1, 2]);
        assert_eq!(drafter.draft_latest(&context, 2), [3, 1]);
        // Nothing matches: nothing proposed.
        assert!(drafter.draft_latest(&[7, 8, 9], 4).is_empty());
    }

    /// Drafts with counts over `context`, as a step of a generation that committed it would.
    fn counted(drafter: &mut NgramDrafter, context: &[u32], limit: usize) -> Vec<u32> {
        let counts = drafter.counts.as_mut().unwrap();
        counts.observe(context, drafter.min_n..=drafter.max_n);
        let counts = drafter.counts.as_ref().unwrap();
        drafter.draft_counted(counts, context, limit)
    }

    #[test]
    fn ngram_counts_propose_the_most_frequent_continuation_that_passes_llama_cpps_thresholds() {
        let mut drafter = NgramDrafter::new(1, 2, NgramLookup::Counts).unwrap();
        // After 5: 6 twice, 7 once (67% ≥ 66% of 3 for a 1-gram); after 6: 5 twice; then the
        // 2-gram "5 6" (followed by 5 both times) decides, not the 1-gram "6".
        let context = [5, 6, 5, 7, 5, 6, 5];
        assert_eq!(counted(&mut drafter, &context, 4), [6, 5, 6, 5]);
        // Counting is incremental: one more "5 7" makes 6 vs 7 a 50% share, below 66% for a
        // 1-gram, and "7 5" was seen once, below the two occurrences a 2-gram needs.
        let more = [5, 6, 5, 7, 5, 6, 5, 7, 5];
        assert!(counted(&mut drafter, &more, 4).is_empty());
        // A 1-gram seen once is not enough either; a different context starts over.
        assert!(counted(&mut drafter, &[1, 2, 1], 3).is_empty());
        assert_eq!(counted(&mut drafter, &[1, 2, 1, 2, 1], 3), [2, 1, 2]);
    }

    #[test]
    fn the_heuristic_schedule_grows_by_two_and_shrinks_by_one() {
        let mut s = Schedule::new(DraftLength::Heuristic { start: 3, max: 6 });
        s.update(3, 3);
        assert_eq!(s.next_limit(), 5);
        s.update(5, 5);
        assert_eq!(s.next_limit(), 6);
        s.update(6, 2);
        assert_eq!(s.next_limit(), 5);
        for _ in 0..10 {
            s.update(1, 0);
        }
        assert_eq!(s.next_limit(), 1);
    }

    #[test]
    fn schedules_parse_and_name_themselves() {
        let h = DraftLength::parse_schedule("heuristic:4", 8).unwrap();
        assert_eq!(
            (h, h.schedule(), h.max()),
            (DraftLength::Heuristic { start: 4, max: 8 }, "heuristic:4".into(), 8)
        );
        let c = DraftLength::parse_schedule("confidence:0.5", 6).unwrap();
        assert_eq!(c.schedule(), "confidence:0.5");
        for bad in ["heuristic", "heuristic:0", "heuristic:9", "confidence:1.5", "confidence:x", "greedy:1"] {
            assert!(DraftLength::parse_schedule(bad, 8).is_err(), "{bad}");
        }
    }

    #[test]
    fn confidence_is_the_top_softmax_probability() {
        assert!((confidence(&[0.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!(confidence(&[10.0, 0.0, 0.0]) > 0.99);
    }
}
