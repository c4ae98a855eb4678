//! The kinds of drafter, one file each, behind one factory that `run` and `generate` share.
//!
//! A kind is its settings (a serde struct: the keys of its `[[drafters]]` entry) implementing
//! [`DrafterKind`]: how it checks them, describes itself in results, and loads what it keeps
//! across generations ([`LoadedDrafter`], which runs one speculative generation). Adding a kind
//! is its file and one arm of [`DrafterSpec`].
//!
//! - [`model`]: a separate draft checkpoint; [`quantized`]: the target's own weights in another
//!   dtype; [`layer_skip`]: the target with layers left out. All sample from a language model.
//! - [`ngram`]: copies from the context's own n-grams (prompt lookup, llama.cpp's lookup).
//! - [`eagle3`]: an EAGLE-3 head drafting on the target's own hidden states.

pub mod eagle3;
pub mod layer_skip;
pub mod model;
pub mod ngram;
pub mod quantized;

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::draft::{DraftLength, Drafter};
use super::speculative::Speculative;
use super::{Generation, GenerationConfig};
use crate::backend::Runtime;
use crate::error::{Error, Result};
use crate::load::{LoadedModel, ModelSpec};
use crate::model::Llama;

/// A drafter as a config entry or `generate --drafter` names it: its kind (serde's `kind` tag)
/// and that kind's settings. A key of another kind is an error naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DrafterSpec {
    Model(model::ModelSettings),
    Quantized(quantized::QuantizedSettings),
    LayerSkip(layer_skip::LayerSkipSettings),
    Ngram(ngram::NgramSettings),
    Eagle3(eagle3::Eagle3Settings),
}

/// The kinds' names, for messages.
pub const KINDS: &str = "model, quantized, layer_skip, ngram, eagle3";

/// What a kind of drafter does with its settings.
pub trait DrafterKind {
    /// Checks what serde cannot (ranges, one of two keys, dtypes); `key` names a setting in
    /// messages (`drafters[2].min_n`, `--drafter`).
    fn check(&self, key: &dyn Fn(&str) -> String) -> Result<()>;
    /// The checkpoint it drafts with, as written, when it has one of its own.
    fn checkpoint(&self) -> Option<&str> {
        None
    }
    /// What drafts, for the `draft` column of results: the checkpoint, or what the target
    /// becomes.
    fn describe(&self, context: &Describe) -> String;
    /// Loads what it keeps across generations.
    fn load(&self, context: &DraftContext) -> Result<Box<dyn LoadedDrafter>>;
    /// Whether it drafts trees (`Drafter::propose_tree`): it has distributions to draw
    /// several children from.
    fn drafts_trees(&self) -> bool {
        true
    }
}

/// What `describe` may name.
pub struct Describe<'a> {
    pub target: &'a ModelSpec,
    /// The drafter's own checkpoint, resolved.
    pub checkpoint: Option<&'a ModelSpec>,
}

/// What a drafter loads against.
pub struct DraftContext<'a> {
    pub target: &'a LoadedModel,
    pub runtime: &'a Runtime,
    /// The target's seed: a drafter that draws random weights of the target's shape uses it.
    pub seed: u64,
    /// The drafter's own checkpoint, resolved (paths of a config are taken beside it).
    pub checkpoint: Option<&'a ModelSpec>,
}

/// A drafter loaded for a sweep or a generation.
pub trait LoadedDrafter {
    /// The vocabulary it and the target are scored over.
    fn vocab(&self) -> usize;
    /// The model it runs besides the target, if any (its context is checked like the target's).
    fn model(&self) -> Option<&LoadedModel> {
        None
    }
    /// A fresh drafter for one generation of `target`.
    fn drafter<'a>(&'a self, target: &'a Llama) -> Result<Box<dyn Drafter + 'a>>;

    /// One speculative generation of `target` drafted by it.
    fn generate(
        &self,
        target: &Llama,
        length: DraftLength,
        prompt: &[u32],
        config: &GenerationConfig,
    ) -> Result<Generation> {
        let mut drafter = self.drafter(target)?;
        Speculative::new(target, &mut *drafter, self.vocab(), length)?.generate(prompt, config)
    }
}

impl DrafterSpec {
    /// The one place a kind is matched.
    fn kind(&self) -> &dyn DrafterKind {
        match self {
            Self::Model(settings) => settings,
            Self::Quantized(settings) => settings,
            Self::LayerSkip(settings) => settings,
            Self::Ngram(settings) => settings,
            Self::Eagle3(settings) => settings,
        }
    }

    pub fn check(&self, key: &dyn Fn(&str) -> String) -> Result<()> {
        self.kind().check(key)
    }

    /// The `kind` a config gives it (serde's tag, so the two cannot disagree).
    pub fn kind_name(&self) -> String {
        let value = serde_json::to_value(self).expect("a drafter serializes");
        value["kind"].as_str().expect("a tagged enum has its tag").to_string()
    }

    pub fn checkpoint(&self) -> Option<&str> {
        self.kind().checkpoint()
    }

    pub fn describe(&self, context: &Describe) -> String {
        self.kind().describe(context)
    }

    pub fn load(&self, context: &DraftContext) -> Result<Box<dyn LoadedDrafter>> {
        self.kind().load(context)
    }

    pub fn drafts_trees(&self) -> bool {
        self.kind().drafts_trees()
    }
}

/// `generate --drafter`'s short forms: `model:PATH`, `self:DTYPE` (the target quantized),
/// `skip:LAYERS` / `keep:LAYERS` (`4-7,9`), `ngram:MIN-MAX` with an optional `:counts`.
impl FromStr for DrafterSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let (kind, value) = text.split_once(':').unwrap_or((text, ""));
        let spec = match kind {
            "model" => Self::Model(model::ModelSettings { path: value.into(), dtype: None }),
            "self" => Self::Quantized(quantized::QuantizedSettings { dtype: value.into() }),
            "skip" | "keep" => Self::LayerSkip(layer_skip::LayerSkipSettings::from_short(kind, value)),
            "ngram" => Self::Ngram(ngram::NgramSettings::from_short(value).ok_or_else(|| bad_short(text))?),
            "eagle3" => Self::Eagle3(eagle3::Eagle3Settings { path: value.into() }),
            _ => return Err(bad_short(text)),
        };
        spec.check(&|field| format!("--drafter {text} ({field})"))?;
        Ok(spec)
    }
}

fn bad_short(text: &str) -> Error {
    Error::Usage(format!(
        "--drafter `{text}`: write model:PATH, self:DTYPE (q8_0, q4_0, bf16, ...), skip:LAYERS or keep:LAYERS \
         (like 4-7,9), ngram:MIN-MAX[:counts], or eagle3:HEAD_FOLDER"
    ))
}

/// The dtypes a drafter's weights may take.
const DTYPES: [&str; 5] = ["f32", "f16", "bf16", "q8_0", "q4_0"];

pub(crate) fn check_dtype(dtype: &str, key: &str) -> Result<()> {
    if DTYPES.contains(&dtype) {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!("`{key}` is `{dtype}`; choose {}", DTYPES.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_name_every_kind() {
        assert!(matches!("model:drafts/x.gguf".parse::<DrafterSpec>().unwrap(), DrafterSpec::Model(_)));
        assert!(matches!("self:q8_0".parse::<DrafterSpec>().unwrap(), DrafterSpec::Quantized(_)));
        assert!(matches!("skip:4-7".parse::<DrafterSpec>().unwrap(), DrafterSpec::LayerSkip(_)));
        assert!(matches!("keep:0-3".parse::<DrafterSpec>().unwrap(), DrafterSpec::LayerSkip(_)));
        let DrafterSpec::Ngram(ngram) = "ngram:2-4:counts".parse::<DrafterSpec>().unwrap() else {
            panic!("not an n-gram drafter")
        };
        assert_eq!((ngram.min_n, ngram.max_n), (Some(2), Some(4)));
        assert_eq!(ngram.lookup("--drafter").unwrap(), ngram::NgramLookup::Counts);
        for bad in ["medusa", "self:q3", "skip:x", "ngram:3-1", "ngram:1-3:most"] {
            assert!(bad.parse::<DrafterSpec>().is_err(), "{bad}");
        }
    }
}
