//! The target itself with some of its layers left out as its drafter (self-speculative
//! decoding, Zhang et al. 2024): the same weights, embedding and head, read in place.

use serde::{Deserialize, Serialize};

use super::model::ModelDrafter;
use super::{Describe, DraftContext, DrafterKind, LoadedDrafter};
use crate::decoding::draft::Drafter;
use crate::decoding::pairing::shared_vocab;
use crate::decoding::{Captured, CausalLm};
use crate::error::{Error, Result};
use crate::model::{KvCache, Llama, Step};

/// `kind = "layer_skip"`: one of `skip` (the layers left out) and `layers` (the layers kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSkipSettings {
    /// The layers left out, as indices and ranges (`[10, 11]`, or `"8-11"`).
    #[serde(default)]
    pub skip: Option<LayerList>,
    /// The layers kept instead (`"0-11"`); every other layer is skipped.
    #[serde(default)]
    pub layers: Option<LayerList>,
}

impl LayerSkipSettings {
    /// `skip:RANGES` or `keep:RANGES`.
    pub(super) fn from_short(verb: &str, ranges: &str) -> Self {
        let list = Some(LayerList::Ranges(ranges.into()));
        if verb == "skip" { Self { skip: list, layers: None } } else { Self { skip: None, layers: list } }
    }

    /// Which layers, once checked.
    pub fn selection(&self, key: &dyn Fn(&str) -> String) -> Result<LayerSelection> {
        match (&self.skip, &self.layers) {
            (Some(list), None) => Ok(LayerSelection::Skip(list.indices(&key("skip"))?)),
            (None, Some(list)) => Ok(LayerSelection::Keep(list.indices(&key("layers"))?)),
            _ => Err(Error::InvalidConfig(format!(
                "give one of `{}` (layers left out) or `{}` (layers kept)",
                key("skip"),
                key("layers")
            ))),
        }
    }
}

impl DrafterKind for LayerSkipSettings {
    fn check(&self, key: &dyn Fn(&str) -> String) -> Result<()> {
        self.selection(key).map(drop)
    }

    fn describe(&self, context: &Describe) -> String {
        let selection = self.selection(&|field| field.to_string()).expect("checked when loaded");
        format!("{} {}", context.target, selection.describe())
    }

    fn load(&self, context: &DraftContext) -> Result<Box<dyn LoadedDrafter>> {
        let target = &context.target.model;
        let layers = target.config().num_hidden_layers;
        let selection = self.selection(&|field| field.to_string())?;
        if let LayerSelection::Keep(keep) = &selection
            && let Some(bad) = keep.iter().find(|&&i| i >= layers)
        {
            return Err(Error::InvalidConfig(format!(
                "layer {bad} cannot be kept: the target has layers 0..{layers}"
            )));
        }
        let skip = selection.skipped(layers);
        // Checked here, once, rather than at the first generation.
        LayerSkip::new(target, &skip)?;
        Ok(Box::new(LoadedLayerSkip { skip, vocab: shared_vocab(context.target, context.target)? }))
    }
}

struct LoadedLayerSkip {
    skip: Vec<usize>,
    vocab: usize,
}

impl LoadedDrafter for LoadedLayerSkip {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn drafter<'a>(&'a self, target: &'a Llama) -> Result<Box<dyn Drafter + 'a>> {
        Ok(Box::new(ModelDrafter::new(LayerSkip::new(target, &self.skip)?, self.vocab)?))
    }
}

/// Layer indices as a list (`[0, 1, 5]`) or ranges in a string (`"0-3,5"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerList {
    Indices(Vec<usize>),
    Ranges(String),
}

impl LayerList {
    fn indices(&self, key: &str) -> Result<Vec<usize>> {
        let ranges = match self {
            Self::Indices(list) => return Ok(list.clone()),
            Self::Ranges(text) => text,
        };
        let bad = |part: &str| {
            Error::InvalidConfig(format!(
                "`{key}` = \"{ranges}\": `{part}` is not a layer index or a range like 0-11"
            ))
        };
        let mut out = Vec::new();
        for part in ranges.split(',').map(str::trim) {
            let (from, to) = part.split_once('-').unwrap_or((part, part));
            let (from, to): (usize, usize) =
                (from.trim().parse().map_err(|_| bad(part))?, to.trim().parse().map_err(|_| bad(part))?);
            if from > to || to > 1 << 16 {
                return Err(bad(part));
            }
            out.extend(from..=to);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LayerSelection {
    Skip(Vec<usize>),
    Keep(Vec<usize>),
}

impl LayerSelection {
    /// The skipped layers of a target with `layers` layers.
    pub fn skipped(&self, layers: usize) -> Vec<usize> {
        match self {
            Self::Skip(skip) => skip.clone(),
            Self::Keep(keep) => (0..layers).filter(|i| !keep.contains(i)).collect(),
        }
    }

    pub fn describe(&self) -> String {
        let (verb, list) = match self {
            Self::Skip(list) => ("skipping", list),
            Self::Keep(list) => ("keeping", list),
        };
        format!("{verb} layers {}", ranges_text(list))
    }
}

/// `[0, 1, 2, 5]` as `0-2,5`.
fn ranges_text(list: &[usize]) -> String {
    let mut sorted = list.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    parts.join(",")
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
    fn logits_tree(
        &self,
        tokens: &[u32],
        parents: &[Option<usize>],
        cache: &mut KvCache,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> Result<Captured> {
        let step = Step { skip: &self.skip, capture, parents: Some(parents), ..Step::new(tokens, rows) };
        let output = self.model.step(&step, cache, vocab)?;
        Ok((output.logits, output.hidden))
    }
    fn keep(cache: &mut KvCache, start: usize, keep: &[usize]) {
        cache.keep(start, keep);
    }
    fn sync(&self) -> Result<()> {
        self.model.sync()
    }
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
}
