//! Speculative decoding (Leviathan et al. 2023, Algorithm 1): a drafter proposes up to `k`
//! tokens, the target scores all of them plus one in one forward, and modified rejection
//! sampling keeps the target's (processed) distribution exactly. The target's cache and the
//! drafter are rolled back to the kept prefix after every step.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::acceptance::{AcceptanceRule, RejectionSampling, verify_block};
use super::draft::{DraftLength, DraftRequest, Drafter, Schedule};
use super::{CausalLm, Generation, GenerationConfig, apply_stop_rule, prefill_capturing};
use super::{timed, timed_host};
use crate::error::{Error, Result};
use crate::metrics::{AcceptanceStats, Timings};

/// A target and its drafter, scored over a shared vocabulary of `vocab` tokens.
pub struct Speculative<'a, T: CausalLm, D: Drafter> {
    target: &'a T,
    drafter: D,
    vocab: usize,
    length: DraftLength,
}

impl<'a, T: CausalLm, D: Drafter> Speculative<'a, T, D> {
    pub fn new(target: &'a T, drafter: D, vocab: usize, length: DraftLength) -> Result<Self> {
        if length.max() == 0 {
            return Err(Error::InvalidSampling("draft length k must be at least 1".into()));
        }
        if target.vocab_size() < vocab {
            return Err(Error::VocabMismatch(format!(
                "target scores {} tokens, fewer than the shared vocabulary of {vocab}",
                target.vocab_size()
            )));
        }
        Ok(Self { target, drafter, vocab, length })
    }

    pub fn generate(&mut self, prompt: &[u32], config: &GenerationConfig) -> Result<Generation> {
        self.generate_with_rule(prompt, config, &RejectionSampling)
    }

    pub fn generate_with_rule(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        rule: &(impl AcceptanceRule + ?Sized),
    ) -> Result<Generation> {
        config.validate()?;
        let (target, vocab) = (self.target, self.vocab);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut target_cache = target.new_cache();
        let mut timings = Timings::default();
        let mut acceptance = AcceptanceStats::new(self.length.max());
        let mut schedule = Schedule::new(self.length);
        let start = Instant::now();

        let capture = self.drafter.feature_layers().to_vec();
        let (hidden, prefill) =
            timed(target, || prefill_capturing(target, prompt, &mut target_cache, &capture))?;
        timings.prefill = prefill;
        self.drafter.start(prompt, &mut timings)?;
        self.drafter.observe(0, &hidden);
        // Every token whose successor is known; the target's cache holds a prefix of it.
        let mut committed = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut accepted_per_call = Vec::new();
        loop {
            // Algorithm 1, lines 1–4: the drafter's guesses. None past max_new_tokens: a token
            // there could never be emitted.
            let request = DraftRequest {
                limit: schedule.next_limit().min(config.max_new_tokens - tokens.len()),
                sampling: &config.sampling,
                min_confidence: schedule.min_confidence(),
                banned: &config.banned_ids,
            };
            let proposal = self.drafter.propose(&committed, &request, &mut rng, &mut timings)?;
            let (drafts, qs) = (&proposal.tokens, &proposal.qs);
            let k = drafts.len();

            // Line 5: the target scores all k + 1 prefixes in one forward.
            let cached = T::cache_len(&target_cache);
            let mut feed = committed[cached..].to_vec();
            feed.extend_from_slice(drafts);
            let ((rows, hidden), verify) =
                timed(target, || target.logits_capturing(&feed, &mut target_cache, k + 1, vocab, &capture))?;
            timings.verify += verify;
            self.drafter.observe(cached, &hidden);

            // Lines 6–12: accepted prefix, then the resampled or bonus token.
            let (outcome, sampling) = timed_host(|| {
                let target_at = |i: usize| {
                    config.sampling.probabilities_banning(
                        &rows[i],
                        &config.banned_ids,
                        "target",
                        committed.len() + i,
                    )
                };
                verify_block(rule, target_at, qs, drafts, &mut rng)
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
            schedule.update(k, outcome.accepted);

            let kept = drafts[..outcome.accepted].iter().copied().chain([outcome.next]);
            tokens.extend(kept.clone());
            committed.extend(kept);
            // The newest token has not been fed to the target or the drafter yet.
            T::truncate(&mut target_cache, committed.len() - 1);
            self.drafter.rollback(committed.len());
            if apply_stop_rule(&mut tokens, config) {
                break;
            }
        }
        timings.wall = start.elapsed();
        Ok(Generation { prompt_tokens: prompt.len(), tokens, timings, acceptance, accepted_per_call })
    }
}
