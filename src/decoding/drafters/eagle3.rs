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
use crate::decoding::{timed, timed_host};
use crate::error::{Error, Result};
use crate::load::ModelSpec;
use crate::load::eagle3::load_head;
use crate::metrics::Timings;
use crate::model::eagle3::HeadInput;
use crate::model::{Eagle3Head, KvCache, Llama};

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

    /// Runs the head on `ids` (with the target's embedding rows when it has none of its own).
    fn run(&mut self, input: HeadInput, ids: &[u32]) -> Result<crate::model::eagle3::HeadOutput> {
        let embedding = if self.head.has_embedding() { None } else { Some(self.target.embedding_rows(ids)?) };
        self.head.forward(input, ids, embedding, &mut self.cache)
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

    /// The first head forward reads every position the target has fed since the last call
    /// (its features beside the token that followed each); the next ones read the head's own
    /// output.
    fn propose(
        &mut self,
        committed: &[u32],
        request: &DraftRequest,
        rng: &mut ChaCha8Rng,
        timings: &mut Timings,
    ) -> Result<Proposal> {
        let mut proposal = Proposal::default();
        let (fed, width) = (self.features.len() / self.width(), self.width());
        if request.limit == 0 || fed <= self.from_target || committed.len() <= fed {
            return Ok(proposal);
        }
        let banned = self.banned_drafts(request.banned);
        let request = DraftRequest { banned: &banned, ..*request };
        let (start, target) = (self.from_target, self.target);
        let fused = self.features[start * width..fed * width].to_vec();
        let ids = &committed[start + 1..=fed];
        let (mut out, forward) = timed(target, || self.run(HeadInput::Target(fused), ids))?;
        timings.draft += forward;
        self.from_target = fed;
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
            (out, step) = timed(target, || self.run(HeadInput::Own(&last), &[token]))?;
            timings.draft += step;
        }
        Ok(proposal)
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
