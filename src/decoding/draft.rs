//! What the speculative decoder asks of a drafter: the `Drafter` interface, the request of one
//! step, the proposal that answers it, and how many tokens each step drafts (`DraftLength`,
//! fixed or adaptive). The kinds of drafter live in `decoding::drafters`, one file each.

use rand_chacha::ChaCha8Rng;

use super::acceptance::DraftDistribution;
use super::tree::{DraftTree, Draws, TreeShape};
use crate::error::{Error, Result};
use crate::metrics::Timings;
use crate::sampling::SamplingConfig;

/// The longest draft a step may ask for.
pub const MAX_K: usize = 64;

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
    /// Tokens the target never generates, which a model drafter does not propose either.
    pub banned: &'a [u32],
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

    /// A tree of drafts continuing `committed` (`tree::grow`), at most `shape` large. Kinds
    /// without a distribution to draw several children from say so.
    fn propose_tree(
        &mut self,
        _committed: &[u32],
        _shape: &TreeShape,
        _draws: &Draws,
        _rng: &mut ChaCha8Rng,
        _timings: &mut Timings,
    ) -> Result<DraftTree> {
        Err(Error::Usage("this drafter drafts chains only; draft trees with a model, quantized, layer_skip or eagle3 drafter".into()))
    }

    /// The target kept `len` tokens, the last of which the drafter has not read: anything it
    /// read past `len - 1` is forgotten.
    fn rollback(&mut self, len: usize);

    /// Target layers whose entering hidden states it reads (`Step::capture`): every target
    /// forward of its generations captures them for `observe`.
    fn feature_layers(&self) -> &[usize] {
        &[]
    }

    /// The target's hidden states at `feature_layers`, each `[rows, hidden]`, for the positions
    /// `start..` it has just fed (the prefill's, then each verify's, before `rollback`).
    fn observe(&mut self, _start: usize, _hidden: &[Vec<f32>]) {}
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
    fn propose_tree(
        &mut self,
        committed: &[u32],
        shape: &TreeShape,
        draws: &Draws,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<DraftTree> {
        (**self).propose_tree(committed, shape, draws, rng, timings)
    }
    fn rollback(&mut self, len: usize) {
        (**self).rollback(len)
    }
    fn feature_layers(&self) -> &[usize] {
        (**self).feature_layers()
    }
    fn observe(&mut self, start: usize, hidden: &[Vec<f32>]) {
        (**self).observe(start, hidden)
    }
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
    /// A tree of drafts per step, verified in one forward (`decoding::tree`).
    Tree(TreeShape),
}

impl DraftLength {
    /// The most tokens a step can draft.
    pub fn max(&self) -> usize {
        match *self {
            Self::Fixed(k) => k,
            Self::Heuristic { max, .. } | Self::Confidence { max, .. } => max,
            Self::Tree(shape) => shape.depth,
        }
    }

    /// The most draft rows one verify feeds (and the cache holds until the step ends): k, or a
    /// tree's budget.
    pub fn rows(&self) -> usize {
        match *self {
            Self::Tree(shape) => shape.budget,
            other => other.max(),
        }
    }

    /// Its name in results: empty for a fixed k (the `k` column says it), else the schedule
    /// and its parameter, as a config writes it (`heuristic:4`, `confidence:0.5`), or the
    /// tree's shape (`tree:budget:16,depth:5,width:4`).
    pub fn schedule(&self) -> String {
        match self {
            Self::Fixed(_) => String::new(),
            Self::Heuristic { start, .. } => format!("heuristic:{start}"),
            Self::Confidence { threshold, .. } => format!("confidence:{threshold}"),
            Self::Tree(shape) => format!("tree:{}", shape.name()),
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
            DraftLength::Confidence { max, .. } | DraftLength::Tree(TreeShape { depth: max, .. }) => max,
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
}
