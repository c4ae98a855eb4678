//! Speculative decoding (Leviathan et al. 2023, Algorithm 1): a drafter proposes up to `k`
//! tokens, the target scores all of them plus one in one forward, and modified rejection
//! sampling keeps the target's (processed) distribution exactly. A tree of drafts goes through
//! the same step (`decoding::tree`): one forward with a tree mask, a walk down its accepted
//! branch. The target's cache and the drafter are rolled back to the kept branch after every
//! step.

use std::borrow::Cow;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::acceptance::{AcceptanceRule, RejectionSampling};
use super::draft::{DraftLength, DraftRequest, Drafter, Schedule};
use super::tree::{DraftTree, Draws, TreeShape, verify_tree};
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
            // Algorithm 1, lines 1–4: the drafter's guesses, a chain or a tree. None past
            // max_new_tokens: a token there could never be emitted.
            let room = config.max_new_tokens - tokens.len();
            let tree = match self.length {
                DraftLength::Tree(shape) => {
                    let shape = TreeShape { depth: shape.depth.min(room), ..shape };
                    let draws = Draws { sampling: &config.sampling, banned: &config.banned_ids };
                    self.drafter.propose_tree(&committed, &shape, &draws, &mut rng, &mut timings)?
                }
                _ => {
                    let request = DraftRequest {
                        limit: schedule.next_limit().min(room),
                        sampling: &config.sampling,
                        min_confidence: schedule.min_confidence(),
                        banned: &config.banned_ids,
                    };
                    let proposal = self.drafter.propose(&committed, &request, &mut rng, &mut timings)?;
                    DraftTree::chain(proposal.tokens, proposal.qs)
                }
            };
            let n = tree.len();

            // Line 5: the target scores the committed tokens it lacks and every node in one
            // forward; row 0 is the last committed token's, row i + 1 node i's.
            let cached = T::cache_len(&target_cache);
            let tail = committed.len() - cached;
            let mut feed = committed[cached..].to_vec();
            feed.extend_from_slice(&tree.tokens);
            let ((rows, hidden), verify) = timed(target, || {
                if tree.is_chain() {
                    return target.logits_capturing(&feed, &mut target_cache, n + 1, vocab, &capture);
                }
                let parents: Vec<Option<usize>> = (0..tail)
                    .map(|i| i.checked_sub(1))
                    .chain(tree.parents.iter().map(|p| Some(p.map_or(tail - 1, |p| tail + p))))
                    .collect();
                target.logits_tree(&feed, &parents, &mut target_cache, n + 1, vocab, &capture)
            })?;
            timings.verify += verify;

            // Lines 6–12: the accepted branch, then the resampled or bonus token.
            let depths = tree.depths();
            let (outcome, sampling) = timed_host(|| {
                let target_at = |c: usize| {
                    let depth = c.checked_sub(1).map_or(0, |node| depths[node]);
                    config.sampling.probabilities_banning(
                        &rows[c],
                        &config.banned_ids,
                        "target",
                        committed.len() + depth,
                    )
                };
                verify_tree(rule, target_at, &tree, &mut rng)
            });
            timings.sampling += sampling;
            let outcome = outcome?;
            let branch: Vec<u32> = outcome.path.iter().map(|&node| tree.tokens[node]).collect();

            // The target keeps the branch's rows where a chain would have them; the drafter
            // reads the same rows' hidden states.
            let kept: Vec<usize> = (0..tail).chain(outcome.path.iter().map(|&node| tail + node)).collect();
            T::keep(&mut target_cache, cached, &kept);
            self.drafter.observe(cached, &rows_of(&hidden, tail + n, &kept));

            // Draft positions after an accepted end-of-sequence token are never emitted.
            let depth = tree.depth();
            let counted = branch.iter().position(|t| config.eos_ids.contains(t)).map_or(depth, |eos| eos + 1);
            let overlaps = &outcome.overlaps[..outcome.overlaps.len().min(counted)];
            let accepted = branch.len().min(counted);
            acceptance.record_step(counted, accepted, overlaps, n);
            accepted_per_call.push(accepted);
            schedule.update(n, branch.len());

            tokens.extend(branch.iter().copied().chain([outcome.next]));
            committed.extend(branch.iter().copied().chain([outcome.next]));
            // The newest token has not been fed to the target or the drafter yet.
            self.drafter.rollback(committed.len());
            if apply_stop_rule(&mut tokens, config) {
                break;
            }
        }
        timings.wall = start.elapsed();
        Ok(Generation { prompt_tokens: prompt.len(), tokens, timings, acceptance, accepted_per_call })
    }
}

/// Rows `kept` of each captured layer (`[rows, hidden]` each); a chain's leading rows as they are.
fn rows_of<'h>(hidden: &'h [Vec<f32>], rows: usize, kept: &[usize]) -> Cow<'h, [Vec<f32>]> {
    if kept.iter().enumerate().all(|(j, &k)| j == k) {
        return Cow::Borrowed(hidden);
    }
    let select = |layer: &Vec<f32>| {
        let width = layer.len() / rows;
        kept.iter().flat_map(|&row| &layer[row * width..(row + 1) * width]).copied().collect()
    };
    Cow::Owned(hidden.iter().map(select).collect())
}
