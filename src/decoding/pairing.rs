//! Draft and target must speak the same vocabulary, or acceptance compares unrelated tokens.

use crate::error::{Error, Result};
use crate::load::LoadedModel;
use crate::tokenizer::Tokenizer;

/// The vocabulary both models are scored over. Checkpoints often pad their embedding past the
/// tokenizer (e.g. to a multiple of 64); such rows are no token, so they are masked out by
/// scoring only the first `tokenizer size` logits of each model.
pub fn shared_vocab(target: &LoadedModel, draft: &LoadedModel) -> Result<usize> {
    let (t_rows, d_rows) = (target.model.config().vocab_size, draft.model.config().vocab_size);
    let vocab = match (&target.tokenizer, &draft.tokenizer) {
        (Tokenizer::Bytes { .. }, Tokenizer::Bytes { .. }) => {
            // Random-weight presets: no tokenizer, so the embeddings define the vocabulary.
            if t_rows != d_rows {
                return Err(Error::VocabMismatch(format!(
                    "target has {t_rows} embedding rows, draft {d_rows}"
                )));
            }
            t_rows
        }
        (Tokenizer::HuggingFace { .. }, Tokenizer::HuggingFace { .. }) => {
            compare_tokenizers(&target.tokenizer, &draft.tokenizer)?
        }
        _ => {
            return Err(Error::VocabMismatch(
                "one model has a tokenizer.json and the other is a random preset without one".into(),
            ));
        }
    };
    for (role, rows) in [("target", t_rows), ("draft", d_rows)] {
        if rows < vocab {
            return Err(Error::VocabMismatch(format!(
                "{role} has {rows} embedding rows but its tokenizer has {vocab} tokens"
            )));
        }
    }
    Ok(vocab)
}

/// Same size and the same string for every id; the error names the first id that differs.
fn compare_tokenizers(target: &Tokenizer, draft: &Tokenizer) -> Result<usize> {
    let (t_size, d_size) = (target.vocab_size(), draft.vocab_size());
    for id in 0..t_size.max(d_size) as u32 {
        let (t, d) = (target.token(id), draft.token(id));
        if t != d {
            let show = |s: Option<String>| s.map_or("<none>".to_string(), |s| format!("{s:?}"));
            return Err(Error::VocabMismatch(format!(
                "first differing token id {id}: target {} vs draft {} (tokenizer sizes {t_size} and {d_size})",
                show(t),
                show(d)
            )));
        }
    }
    Ok(t_size)
}
