//! The target's own checkpoint loaded again in another dtype (q8_0, q4_0, bf16, ...) as its
//! drafter: self-speculation by quantization.

use serde::{Deserialize, Serialize};

use super::model::LoadedModelDrafter;
use super::{Describe, DraftContext, DrafterKind, LoadedDrafter, check_dtype};
use crate::decoding::pairing::shared_vocab;
use crate::error::Result;
use crate::load::LoadedModel;

/// `kind = "quantized"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedSettings {
    /// The dtype the target's weights draft in.
    pub dtype: String,
}

impl DrafterKind for QuantizedSettings {
    fn check(&self, key: &dyn Fn(&str) -> String) -> Result<()> {
        check_dtype(&self.dtype, &key("dtype"))
    }

    fn describe(&self, context: &Describe) -> String {
        format!("{} as {}", context.target, self.dtype)
    }

    fn load(&self, context: &DraftContext) -> Result<Box<dyn LoadedDrafter>> {
        // The target's seed: a random target's drafter is that target in another dtype.
        let runtime = context.runtime.with_dtype(&self.dtype)?;
        let model = LoadedModel::load(&context.target.spec, &runtime, context.seed)?;
        let vocab = shared_vocab(context.target, context.target)?;
        Ok(Box::new(LoadedModelDrafter { model, vocab }))
    }
}
