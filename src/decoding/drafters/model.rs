//! A language model as drafter: a separate draft checkpoint (this kind), or the target's own
//! weights in another dtype (`quantized`) or with layers left out (`layer_skip`), all through
//! [`ModelDrafter`].

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Describe, DraftContext, DrafterKind, LoadedDrafter, check_dtype};
use crate::decoding::draft::{DraftRequest, Drafter, Proposal};
use crate::decoding::pairing::shared_vocab;
use crate::decoding::tree::{DraftTree, Draws, TreeShape, grow};
use crate::decoding::{CausalLm, prefill, timed, timed_host};
use crate::error::{Error, Result};
use crate::load::LoadedModel;
use crate::metrics::Timings;
use crate::model::Llama;
use crate::sampling::sample;

/// `kind = "model"`: a checkpoint of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// The draft checkpoint, as `models.target.path`.
    pub path: String,
    /// Its dtype (f32 when absent).
    #[serde(default)]
    pub dtype: Option<String>,
}

impl ModelSettings {
    pub fn dtype(&self) -> &str {
        self.dtype.as_deref().unwrap_or("f32")
    }
}

impl DrafterKind for ModelSettings {
    fn check(&self, key: &dyn Fn(&str) -> String) -> Result<()> {
        if self.path.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "`{}` is empty: a model drafter needs a checkpoint",
                key("path")
            )));
        }
        check_dtype(self.dtype(), &key("dtype"))
    }

    fn checkpoint(&self) -> Option<&str> {
        Some(&self.path)
    }

    fn describe(&self, context: &Describe) -> String {
        context.checkpoint.map_or_else(|| self.path.clone(), ToString::to_string)
    }

    fn load(&self, context: &DraftContext) -> Result<Box<dyn LoadedDrafter>> {
        let spec = match context.checkpoint {
            Some(spec) => spec.clone(),
            None => self.path.parse()?,
        };
        // Another seed keeps a random draft from being a copy of a random target.
        let model = LoadedModel::load(
            &spec,
            &context.runtime.with_dtype(self.dtype())?,
            context.seed.wrapping_add(1),
        )?;
        let vocab = shared_vocab(context.target, &model)?;
        Ok(Box::new(LoadedModelDrafter { model, vocab }))
    }
}

/// A draft model, loaded once for every generation.
pub(super) struct LoadedModelDrafter {
    pub(super) model: LoadedModel,
    pub(super) vocab: usize,
}

impl LoadedDrafter for LoadedModelDrafter {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn model(&self) -> Option<&LoadedModel> {
        Some(&self.model)
    }

    fn drafter<'a>(&'a self, _: &'a Llama) -> Result<Box<dyn Drafter + 'a>> {
        Ok(Box::new(ModelDrafter::new(&self.model.model, self.vocab)?))
    }
}

/// A language model as drafter (Leviathan et al. 2023, Algorithm 1, lines 1–4), over the first
/// `vocab` tokens it scores.
/// `M` is a model (`&Llama`) or a view of one that the drafter owns (`LayerSkip`).
pub struct ModelDrafter<M: CausalLm> {
    model: M,
    cache: M::Cache,
    vocab: usize,
}

impl<M: CausalLm> ModelDrafter<M> {
    pub fn new(model: M, vocab: usize) -> Result<Self> {
        let rows = model.vocab_size();
        if rows < vocab {
            return Err(Error::VocabMismatch(format!(
                "draft scores {rows} tokens, fewer than the shared vocabulary of {vocab}"
            )));
        }
        let cache = model.new_cache();
        Ok(Self { model, cache, vocab })
    }
}

impl<M: CausalLm> Drafter for ModelDrafter<M> {
    fn start(&mut self, prompt: &[u32], timings: &mut Timings) -> Result<()> {
        M::truncate(&mut self.cache, 0);
        timings.prefill += timed(&self.model, || prefill(&self.model, prompt, &mut self.cache))?.1;
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
                timed(&self.model, || self.model.logits(&feed, &mut self.cache, 1, self.vocab))?;
            timings.draft += forward;
            let (drawn, sampling) = timed_host(|| draw(&rows[0], request, committed.len() + i, rng));
            timings.sampling += sampling;
            let Some((token, q)) = drawn? else { break };
            proposal.tokens.push(token);
            proposal.qs.push(q.into());
        }
        Ok(proposal)
    }

    /// The committed tokens the cache lacks first (the last one's row is the root's), then
    /// each level's nodes after the tree's earlier levels in the cache, which is cut back to
    /// the committed tokens after the tree is grown.
    fn propose_tree(
        &mut self,
        committed: &[u32],
        shape: &TreeShape,
        draws: &Draws,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<DraftTree> {
        let feed = committed[M::cache_len(&self.cache)..].to_vec();
        let (mut rows, forward) =
            timed(&self.model, || self.model.logits(&feed, &mut self.cache, 1, self.vocab))?;
        timings.draft += forward;
        let (model, cache, vocab) = (&self.model, &mut self.cache, self.vocab);
        let base = M::cache_len(cache);
        let tree =
            grow(shape, draws, committed.len(), rows.remove(0), rng, timings, |tree, nodes, timings| {
                let (tokens, parents) = (&tree.tokens[nodes.clone()], &tree.parents[..nodes.end]);
                let ((rows, _), forward) =
                    timed(model, || model.logits_tree(tokens, parents, cache, nodes.len(), vocab, &[]))?;
                timings.draft += forward;
                Ok(rows)
            });
        M::truncate(cache, base);
        tree
    }

    fn rollback(&mut self, len: usize) {
        M::truncate(&mut self.cache, len.saturating_sub(1));
    }
}

/// A draft token from `logits` (a row over the shared vocabulary, for `position`) and the
/// distribution it was drawn from, or `None` where the request's confidence floor stops the
/// draft.
pub(super) fn draw(
    logits: &[f32],
    request: &DraftRequest,
    position: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Option<(u32, Vec<f64>)>> {
    if request.min_confidence.is_some_and(|least| confidence(logits) < least) {
        return Ok(None);
    }
    let q = request.sampling.probabilities_banning(logits, request.banned, "draft", position)?;
    Ok(Some((sample(&q, rng), q)))
}

/// The largest probability of softmax(`logits`) at temperature 1: 1 / Σ exp(l − max).
fn confidence(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    1.0 / logits.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_the_top_softmax_probability() {
        assert!((confidence(&[0.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!(confidence(&[10.0, 0.0, 0.0]) > 0.99);
    }
}
