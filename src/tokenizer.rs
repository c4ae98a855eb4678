//! Text in and out. Checkpoints bring a Hugging Face `tokenizer.json`; random-weight presets
//! have none and use raw bytes as token ids, so a prompt still means something.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub enum Tokenizer {
    /// With the file it came from, which its errors name.
    HuggingFace(Box<tokenizers::Tokenizer>, PathBuf),
    /// Token id = byte value; `bos` is prepended when the model has one.
    Bytes { bos: Option<u32> },
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::MissingFile { path: path.to_path_buf(), what: "tokenizer.json" });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Self::HuggingFace(Box::new(inner), path.to_path_buf()))
    }

    /// Encodes with the tokenizer's own special tokens (BOS for Llama 3).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::HuggingFace(t, path) => t
                .encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Tokenizer { path: path.clone(), message: e.to_string() }),
            Self::Bytes { bos } => Ok(bos.iter().copied().chain(text.bytes().map(u32::from)).collect()),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Self::HuggingFace(t, _) => t.decode(ids, true).unwrap_or_else(|_| format!("{ids:?}")),
            Self::Bytes { .. } => {
                let bytes: Vec<u8> = ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// The string of token `id`, or `None` past the tokenizer's vocabulary.
    pub fn token(&self, id: u32) -> Option<String> {
        match self {
            Self::HuggingFace(t, _) => t.id_to_token(id),
            Self::Bytes { .. } => u8::try_from(id).ok().map(|b| format!("<0x{b:02X}>")),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::HuggingFace(t, _) => t.get_vocab_size(true),
            Self::Bytes { .. } => 256,
        }
    }
}
