//! `kind = "eagle3"`: an EAGLE-3 head (`model::eagle3`) drafting on the target's own hidden
//! states. Each verify forward captures the target's features at the head's three layers; the
//! head reads them for every position the target has fed, then drafts autoregressively on its
//! own output features. Its cache keeps only positions read from target features: those read
//! from its own are redone from the target's after every verify.

use std::path::PathBuf;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::model::draw;
use super::{Describe, DraftContext, DrafterKind, LoadedDrafter};
use crate::decoding::draft::{DraftRequest, Drafter, Proposal};
use crate::decoding::pairing::shared_vocab;
use crate::decoding::tree::{DraftTree, Draws, TreeShape, grow};
use crate::decoding::{timed, timed_host};
use crate::error::{Error, Result};
use crate::load::ModelSpec;
use crate::load::eagle3::load_head;
use crate::metrics::Timings;
use crate::model::eagle3::{HeadInput, HeadOutput};
use crate::model::{Eagle3Head, KvCache, Llama, Step};

/// `kind = "eagle3"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eagle3Settings {
    /// The head's folder (config.json and model.safetensors, SpecForge's or vLLM's format).
    pub path: String,
}

impl DrafterKind for Eagle3Settings {
    fn check(&self, key: &dyn Fn(&str) -> String) -> Result<()> {
        if self.path.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "`{}` is empty: an eagle3 drafter needs a head",
                key("path")
            )));
        }
        Ok(())
    }

    fn checkpoint(&self) -> Option<&str> {
        Some(&self.path)
    }

    fn describe(&self, context: &Describe) -> String {
        let head = context.checkpoint.map_or_else(|| self.path.clone(), ToString::to_string);
        format!("eagle3 {head}")
    }

    fn load(&self, context: &DraftContext) -> Result<Box<dyn LoadedDrafter>> {
        let dir = match context.checkpoint {
            Some(ModelSpec::Folder(dir)) => dir.clone(),
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "eagle3 head `{other}`: give the head's folder (config.json and model.safetensors)"
                )));
            }
            None => PathBuf::from(&self.path),
        };
        let target = context.target;
        let head = load_head(&dir, target.model.config(), context.runtime)?;
        // The target's own vocabulary, as for the quantized drafter (the head scores the same).
        let vocab = shared_vocab(target, target)?;
        Ok(Box::new(LoadedEagle3 { head, vocab }))
    }
}

struct LoadedEagle3 {
    head: Eagle3Head,
    vocab: usize,
}

impl LoadedDrafter for LoadedEagle3 {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn drafter<'a>(&'a self, target: &'a Llama) -> Result<Box<dyn Drafter + 'a>> {
        Ok(Box::new(Eagle3Drafter::new(&self.head, target, self.vocab)))
    }
}

/// One generation's drafting state.
pub struct Eagle3Drafter<'a> {
    head: &'a Eagle3Head,
    target: &'a Llama,
    /// The shared vocabulary: draft tokens mapped past it are never proposed.
    vocab: usize,
    cache: KvCache,
    /// The target's features `[positions, 3 · target_hidden]` for every position it holds.
    features: Vec<f32>,
    /// Positions of the head's cache read from target features (the rest are its own drafts').
    from_target: usize,
}

impl<'a> Eagle3Drafter<'a> {
    pub fn new(head: &'a Eagle3Head, target: &'a Llama, vocab: usize) -> Self {
        Self { head, target, vocab, cache: head.new_cache(), features: Vec::new(), from_target: 0 }
    }

    fn width(&self) -> usize {
        3 * self.head.config().target_hidden
    }

    /// Runs the head on `step` (with the target's embedding rows when it has none of its own).
    fn run(&mut self, input: HeadInput, step: &Step) -> Result<HeadOutput> {
        run_head(self.head, self.target, &mut self.cache, input, step)
    }

    /// The head's first forward of a step: every position the target has fed since the last
    /// call, read from the target's features beside the token that followed each. `None` when
    /// the target has fed nothing new.
    fn read_target(&mut self, committed: &[u32], timings: &mut Timings) -> Result<Option<HeadOutput>> {
        let (fed, width) = (self.features.len() / self.width(), self.width());
        if fed <= self.from_target || committed.len() <= fed {
            return Ok(None);
        }
        let start = self.from_target;
        let fused = self.features[start * width..fed * width].to_vec();
        let step = Step::new(&committed[start + 1..=fed], 1);
        let target = self.target;
        let (out, forward) = timed(target, || self.run(HeadInput::Target(fused), &step))?;
        timings.draft += forward;
        self.from_target = fed;
        Ok(Some(out))
    }

    /// Logits over the draft vocabulary as logits over the shared one: a token the head cannot
    /// draft gets the lowest finite logit, probability 0 after any softmax.
    fn in_target_vocab(&self, logits: &[f32]) -> Vec<f32> {
        let mut dense = vec![f32::MIN; self.vocab];
        for (&target, &logit) in self.head.target_tokens().iter().zip(logits) {
            if let Some(slot) = dense.get_mut(target as usize) {
                *slot = logit;
            }
        }
        dense
    }

    /// Draft ids the request bans: the banned target tokens and those outside the vocabulary.
    fn banned_drafts(&self, banned: &[u32]) -> Vec<u32> {
        let targets = self.head.target_tokens();
        (0..targets.len() as u32)
            .filter(|&d| {
                let t = targets[d as usize];
                t as usize >= self.vocab || banned.contains(&t)
            })
            .collect()
    }
}

impl Drafter for Eagle3Drafter<'_> {
    fn start(&mut self, _prompt: &[u32], _timings: &mut Timings) -> Result<()> {
        self.cache.reset();
        self.features.clear();
        self.from_target = 0;
        Ok(())
    }

    /// The first head forward reads the target's features (`read_target`); the next ones read
    /// the head's own output.
    fn propose(
        &mut self,
        committed: &[u32],
        request: &DraftRequest,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<Proposal> {
        let mut proposal = Proposal::default();
        if request.limit == 0 {
            return Ok(proposal);
        }
        let Some(mut out) = self.read_target(committed, timings)? else { return Ok(proposal) };
        let banned = self.banned_drafts(request.banned);
        let request = DraftRequest { banned: &banned, ..*request };
        let target = self.target;
        for i in 0..request.limit {
            let (drawn, sampling) = timed_host(|| draw(&out.logits, &request, committed.len() + i, rng));
            timings.sampling += sampling;
            let Some((draft, q)) = drawn? else { break };
            let token = self.head.target_token(draft);
            let mut dense = vec![0.0; self.vocab];
            for (d, p) in q.iter().enumerate().filter(|&(_, &p)| p > 0.0) {
                dense[self.head.target_token(d as u32) as usize] = *p;
            }
            proposal.tokens.push(token);
            proposal.qs.push(dense.into());
            if i + 1 == request.limit {
                break;
            }
            let hidden = self.head.config().layer.hidden_size;
            let last = out.features[out.features.len() - hidden..].to_vec();
            let step;
            (out, step) = timed(target, || self.run(HeadInput::Own(&last), &Step::new(&[token], 1)))?;
            timings.draft += step;
        }
        Ok(proposal)
    }

    /// Each level runs its nodes after the tree's earlier levels in the cache, every node beside
    /// its parent's output feature (the root's: the last target-read row's); the cache is cut
    /// back to the target-read positions after the tree is grown.
    fn propose_tree(
        &mut self,
        committed: &[u32],
        shape: &TreeShape,
        draws: &Draws,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<DraftTree> {
        let Some(out) = self.read_target(committed, timings)? else {
            return Ok(DraftTree::chain(Vec::new(), Vec::new()));
        };
        let hidden = self.head.config().layer.hidden_size;
        let root_feature = out.features[out.features.len() - hidden..].to_vec();
        let root = self.in_target_vocab(&out.logits);
        let base = self.cache.len();
        // Each node's output feature, filled level by level.
        let mut features: Vec<f32> = Vec::new();
        let (head, target) = (self.head, self.target);
        let draft_vocab = head.config().draft_vocab;
        let this = &mut *self;
        let tree = grow(shape, draws, committed.len(), root, rng, timings, |tree, nodes, timings| {
            let input: Vec<f32> = tree.parents[nodes.clone()]
                .iter()
                .flat_map(|parent| match parent {
                    Some(p) => &features[p * hidden..(p + 1) * hidden],
                    None => &root_feature[..],
                })
                .copied()
                .collect();
            let parents = &tree.parents[..nodes.end];
            let step = Step { parents: Some(parents), ..Step::new(&tree.tokens[nodes.clone()], nodes.len()) };
            let (out, forward) =
                timed(target, || run_head(head, target, &mut this.cache, HeadInput::Own(&input), &step))?;
            timings.draft += forward;
            features.extend_from_slice(&out.features);
            Ok(out.logits.chunks_exact(draft_vocab).map(|row| this.in_target_vocab(row)).collect())
        });
        self.cache.truncate(base);
        tree
    }

    fn rollback(&mut self, len: usize) {
        let kept = len.saturating_sub(1);
        self.features.truncate(kept * self.width());
        self.from_target = self.from_target.min(kept);
        self.cache.truncate(self.from_target);
    }

    fn feature_layers(&self) -> &[usize] {
        &self.head.config().aux_layers
    }

    /// Keeps the rows' three layers side by side, in the head's order.
    fn observe(&mut self, start: usize, hidden: &[Vec<f32>]) {
        let per_layer = self.head.config().target_hidden;
        self.features.truncate(start * self.width());
        let rows = hidden.first().map_or(0, |h| h.len() / per_layer);
        for row in 0..rows {
            for layer in hidden {
                self.features.extend_from_slice(&layer[row * per_layer..(row + 1) * per_layer]);
            }
        }
    }
}

/// Runs `head` on `step` after the positions in `cache`, with `target`'s embedding rows when the
/// head has none of its own.
fn run_head(
    head: &Eagle3Head,
    target: &Llama,
    cache: &mut KvCache,
    input: HeadInput,
    step: &Step,
) -> Result<HeadOutput> {
    let embedding = if head.has_embedding() { None } else { Some(target.embedding_rows(step.ids)?) };
    head.forward(input, step, embedding, cache)
}
