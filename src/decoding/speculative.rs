//! Speculative decoding (Leviathan et al. 2023, Algorithm 1): the draft proposes `k` tokens
//! with its own cache, the target scores all `k + 1` positions in one forward, and modified
//! rejection sampling keeps the target's (processed) distribution exactly. Both caches are
//! rolled back to the kept prefix after every step.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::acceptance::{AcceptanceRule, RejectionSampling, verify_block};
use super::{CausalLm, Generation, GenerationConfig, apply_stop_rule, prefill};
use crate::error::{Error, Result};
use crate::metrics::{AcceptanceStats, Timings, timed, timed_host};
use crate::sampling::sample;

/// A target and its draft, scored over a shared vocabulary of `vocab` tokens.
pub struct Speculative<'a, T: CausalLm, D: CausalLm> {
    target: &'a T,
    draft: &'a D,
    vocab: usize,
    k: usize,
}

impl<'a, T: CausalLm, D: CausalLm> Speculative<'a, T, D> {
    pub fn new(target: &'a T, draft: &'a D, vocab: usize, k: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidSampling("draft length k must be at least 1".into()));
        }
        for (role, rows) in [("target", target.vocab_size()), ("draft", draft.vocab_size())] {
            if rows < vocab {
                return Err(Error::VocabMismatch(format!(
                    "{role} scores {rows} tokens, fewer than the shared vocabulary of {vocab}"
                )));
            }
        }
        Ok(Self { target, draft, vocab, k })
    }

    pub fn generate(&self, prompt: &[u32], config: &GenerationConfig) -> Result<Generation> {
        self.generate_with_rule(prompt, config, &RejectionSampling)
    }

    pub fn generate_with_rule(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
        rule: &impl AcceptanceRule,
    ) -> Result<Generation> {
        config.validate()?;
        let (target, vocab) = (self.target, self.vocab);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut target_cache = target.new_cache();
        let mut draft_cache = self.draft.new_cache();
        let mut timings = Timings::default();
        let mut acceptance = AcceptanceStats::new(self.k);
        let start = Instant::now();

        timings.prefill = timed(target, || prefill(target, prompt, &mut target_cache))?.1
            + timed(self.draft, || prefill(self.draft, prompt, &mut draft_cache))?.1;
        // Every token whose successor is known; each cache holds a prefix of it.
        let mut committed = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut accepted_per_call = Vec::new();
        loop {
            // No draft past max_new_tokens: a token there could never be emitted.
            let k = self.k.min(config.max_new_tokens - tokens.len());
            // Algorithm 1, lines 1–4: k guesses from the draft.
            let (drafts, qs) =
                self.draft_guesses(k, &committed, &mut draft_cache, config, &mut rng, &mut timings)?;

            // Line 5: the target scores all k + 1 prefixes in one forward.
            let mut feed = committed[T::cache_len(&target_cache)..].to_vec();
            feed.extend_from_slice(&drafts);
            let (rows, verify) = timed(target, || target.logits(&feed, &mut target_cache, k + 1, vocab))?;
            timings.verify += verify;

            // Lines 6–12: accepted prefix, then the resampled or bonus token.
            let (outcome, sampling) = timed_host(|| {
                let ps = rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| config.sampling.probabilities(row, "target", committed.len() + i))
                    .collect::<Result<Vec<_>>>()?;
                Ok::<_, Error>(verify_block(rule, &ps, &qs, &drafts, &mut rng))
            });
            timings.sampling += sampling;
            let outcome = outcome?;
            // Draft positions after an accepted end-of-sequence token are never emitted.
            let counted = drafts[..outcome.accepted]
                .iter()
                .position(|t| config.eos_ids.contains(t))
                .map_or(k, |eos| eos + 1);
            let overlaps = &outcome.overlaps[..outcome.overlaps.len().min(counted)];
            let accepted = outcome.accepted.min(counted);
            acceptance.record_step(counted, accepted, overlaps);
            accepted_per_call.push(accepted);

            let kept = drafts[..outcome.accepted].iter().copied().chain([outcome.next]);
            tokens.extend(kept.clone());
            committed.extend(kept);
            // The newest token has not been fed to either model yet.
            T::truncate(&mut target_cache, committed.len() - 1);
            D::truncate(&mut draft_cache, committed.len() - 1);
            if apply_stop_rule(&mut tokens, config) {
                break;
            }
        }
        timings.wall = start.elapsed();
        Ok(Generation { prompt_tokens: prompt.len(), tokens, timings, acceptance, accepted_per_call })
    }

    /// Algorithm 1, lines 1–4: samples `k` draft tokens and keeps the draft distribution `q` of
    /// each. The first forward also feeds whatever committed tokens the draft cache lacks (after
    /// a fully accepted block, the last draft token was sampled but never fed).
    fn draft_guesses(
        &self,
        k: usize,
        committed: &[u32],
        cache: &mut D::Cache,
        config: &GenerationConfig,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<(Vec<u32>, Vec<Vec<f64>>)> {
        let mut drafts: Vec<u32> = Vec::with_capacity(k);
        let mut qs = Vec::with_capacity(k);
        for i in 0..k {
            let feed = match drafts.last() {
                Some(&token) => vec![token],
                None => committed[D::cache_len(cache)..].to_vec(),
            };
            let (rows, forward) = timed(self.draft, || self.draft.logits(&feed, cache, 1, self.vocab))?;
            timings.draft += forward;
            let (drawn, sampling) = timed_host(|| {
                let q = config.sampling.probabilities(&rows[0], "draft", committed.len() + i)?;
                let token = sample(&q, rng);
                Ok::<_, Error>((token, q))
            });
            timings.sampling += sampling;
            let (token, q) = drawn?;
            drafts.push(token);
            qs.push(q);
        }
        Ok((drafts, qs))
    }
}
