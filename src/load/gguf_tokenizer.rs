//! The tokenizer a GGUF file describes in `tokenizer.ggml.*`, rebuilt as a Hugging Face
//! `tokenizers::Tokenizer` (a tokenizer.json document, so the same crate encodes and decodes for
//! both checkpoint formats), and the chat template it carries.
//!
//! Two vocabulary kinds, as llama.cpp names them:
//! - `gpt2`: byte-level BPE with merges (Llama 3, SmolLM2), split first by the regex that
//!   `tokenizer.ggml.pre` names;
//! - `llama`: SentencePiece BPE (Llama 2, Mistral 7B, TinyLlama): pieces with scores and byte
//!   fallback. llama.cpp merges the adjacent pair whose concatenation scores highest; that is
//!   BPE whose merge ranks follow the merged piece's score, which is how transformers rebuilds
//!   these files too (`GGUFLlamaConverter`). Spaces become `▁`, with one prepended to the text
//!   and after each special token (`tokenizer.ggml.add_space_prefix`, on unless it says not).

use std::collections::HashMap;

use serde_json::json;

use crate::error::Result;
use crate::formats::gguf::{GgufFile, Value};
use crate::tokenizer::ChatTemplate;

/// llama.cpp's token types (`llama_token_type`).
mod token_type {
    pub const NORMAL: u64 = 1;
    pub const UNKNOWN: u64 = 2;
    pub const CONTROL: u64 = 3;
    pub const USER_DEFINED: u64 = 4;
}

/// SentencePiece's word-boundary mark, which stands for a space inside pieces.
const SPACE_MARK: &str = "\u{2581}";

/// Llama 3's pre-tokenizer split (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.*` keys of one file, read once.
struct Vocabulary<'a> {
    file: &'a GgufFile,
    tokens: Vec<&'a str>,
    types: Vec<u64>,
}

impl<'a> Vocabulary<'a> {
    fn read(file: &'a GgufFile) -> Result<Self> {
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match file.metadata.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(values) if values.len() == tokens.len() => {
                values.iter().map(|v| v.as_u64().unwrap_or(token_type::NORMAL)).collect()
            }
            Some(values) => {
                return Err(file.error(format!(
                    "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                    values.len(),
                    tokens.len()
                )));
            }
            None => vec![token_type::NORMAL; tokens.len()],
        };
        Ok(Self { file, tokens, types })
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.file.metadata.get(key).and_then(Value::as_bool)
    }

    fn token_of(&self, key: &str) -> Result<Option<(u64, &'a str)>> {
        let Some(id) = self.file.metadata.get(key).and_then(Value::as_u64) else { return Ok(None) };
        let token = self
            .tokens
            .get(id as usize)
            .ok_or_else(|| self.file.error(format!("`{key}` = {id} is past the vocabulary")))?;
        Ok(Some((id, token)))
    }

    fn vocab_map(&self) -> serde_json::Map<String, serde_json::Value> {
        self.tokens.iter().enumerate().map(|(id, t)| (t.to_string(), json!(id))).collect()
    }

    /// Tokens matched whole in the text before the model runs, as llama.cpp matches them when
    /// it parses special tokens: control, user-defined and unknown ones.
    fn added_tokens(&self) -> Vec<serde_json::Value> {
        self.tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (_, kind))| {
                matches!(**kind, token_type::UNKNOWN | token_type::CONTROL | token_type::USER_DEFINED)
            })
            .map(|(id, (content, kind))| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": *kind != token_type::USER_DEFINED})
            })
            .collect()
    }

    /// BOS before the text when the file asks for it (`tokenizer.ggml.add_bos_token`; llama.cpp
    /// adds it by default for SentencePiece vocabularies, not for byte-level BPE).
    fn post_processor(&self, add_bos_by_default: bool) -> Result<serde_json::Value> {
        let add_bos = self.flag("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_by_default);
        Ok(match (add_bos, self.token_of("tokenizer.ggml.bos_token_id")?) {
            (true, Some((bos, bos_token))) => json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_token: {"id": bos_token, "ids": [bos], "tokens": [bos_token]}}}),
            _ => serde_json::Value::Null,
        })
    }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let values = file
        .metadata
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| file.error(format!("no `{key}` array")))?;
    values
        .iter()
        .map(|v| v.as_str().ok_or_else(|| file.error(format!("`{key}` holds a non-string"))))
        .collect()
}

/// Whether the file says it has no vocabulary (`tokenizer.ggml.model` = `none`).
pub fn has_no_vocabulary(file: &GgufFile) -> bool {
    file.metadata.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("none")
}

/// Rebuilds the tokenizer that the file's `tokenizer.ggml.*` keys describe.
pub fn tokenizer_from(file: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let model = file
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| file.error("no `tokenizer.ggml.model`"))?;
    let vocabulary = Vocabulary::read(file)?;
    let document = match model {
        "gpt2" => byte_level_bpe(&vocabulary)?,
        "llama" => sentencepiece_bpe(&vocabulary)?,
        other => {
            return Err(file.error(format!(
                "`tokenizer.ggml.model` = `{other}`: specbench rebuilds `gpt2` (byte-level BPE) and \
                 `llama` (SentencePiece) tokenizers"
            )));
        }
    };
    document
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| file.error(format!("its tokenizer cannot be rebuilt: {e}")))
}

/// Byte-level BPE with the file's merges and the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(vocabulary: &Vocabulary) -> Result<serde_json::Value> {
    let file = vocabulary.file;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let byte_level =
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = match file.metadata.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default") {
        "default" | "gpt-2" | "gpt2" => byte_level.clone(),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        other => {
            return Err(file.error(format!(
                "`tokenizer.ggml.pre` = `{other}` is not a pre-tokenizer specbench knows (default, gpt-2, smollm, llama-bpe)"
            )));
        }
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": vocabulary.added_tokens(),
        "normalizer": null, "pre_tokenizer": pre, "post_processor": vocabulary.post_processor(false)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocabulary.vocab_map(), "merges": merges},
    }))
}

/// SentencePiece BPE: merges ranked by the merged piece's score, byte fallback, `▁` for spaces.
fn sentencepiece_bpe(vocabulary: &Vocabulary) -> Result<serde_json::Value> {
    let file = vocabulary.file;
    let scores: Vec<f64> = match file.metadata.get("tokenizer.ggml.scores").and_then(Value::as_array) {
        Some(values) if values.len() == vocabulary.tokens.len() => values
            .iter()
            .map(|v| v.as_f64().ok_or_else(|| file.error("`tokenizer.ggml.scores` holds a non-number")))
            .collect::<Result<_>>()?,
        _ => return Err(file.error("`tokenizer.ggml.scores` is missing or not one score per token")),
    };
    let add_space_prefix = vocabulary.flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let unknown = match vocabulary.token_of("tokenizer.ggml.unknown_token_id")? {
        Some((_, token)) => Some(token),
        None => {
            vocabulary.types.iter().position(|&t| t == token_type::UNKNOWN).map(|id| vocabulary.tokens[id])
        }
    };
    let replace_spaces = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE_MARK}, replace_spaces]})
    } else {
        replace_spaces
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": vocabulary.added_tokens(),
        "normalizer": normalizer, "pre_tokenizer": null, "post_processor": vocabulary.post_processor(true)?,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unknown, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocabulary.vocab_map(),
                  "merges": merges_by_score(&vocabulary.tokens, &scores).map_err(|e| file.error(e))?},
    }))
}

/// Pieces longer than this many bytes are not split into merges (each split hashes both halves,
/// so a piece costs the square of its length): SentencePiece vocabularies' longest pieces are
/// runs of 16 word marks, 48 bytes. A longer piece can only be produced whole (as an added token).
const MAX_SPLIT_PIECE_BYTES: usize = 128;
/// The most merges a vocabulary may imply: Llama 2's 32k pieces imply 0.06M; a crafted one of
/// long repeated pieces implies the square of their count.
const MAX_MERGES: usize = 1 << 22;

/// Every split of a piece into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's score (highest first), so BPE applies them in the order llama.cpp's SentencePiece
/// tokenizer does. Splits of one piece keep the order of their halves' ids, as transformers'.
fn merges_by_score(tokens: &[&str], scores: &[f64]) -> std::result::Result<Vec<[String; 2]>, String> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(id, &t)| (t, id)).collect();
    let mut merges: Vec<(f64, usize, usize)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores).filter(|(piece, _)| piece.len() <= MAX_SPLIT_PIECE_BYTES)
    {
        let mut splits: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*ids.get(&piece[..at])?, *ids.get(&piece[at..])?)))
            .collect();
        splits.sort_unstable();
        merges.extend(splits.into_iter().map(|(left, right)| (score, left, right)));
        if merges.len() > MAX_MERGES {
            return Err(format!(
                "its pieces imply more than {MAX_MERGES} merges, past what specbench rebuilds (Llama 2's imply 0.06M)"
            ));
        }
    }
    // Stable: equal scores keep the vocabulary's order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(merges
        .into_iter()
        .map(|(_, left, right)| [tokens[left].to_string(), tokens[right].to_string()])
        .collect())
}

/// The chat template the file carries, if any, with its BOS and EOS token strings.
pub fn chat_template(file: &GgufFile) -> Option<ChatTemplate> {
    let meta = &file.metadata;
    let source = meta.get("tokenizer.chat_template").and_then(Value::as_str)?.to_string();
    let tokens = meta.get("tokenizer.ggml.tokens").and_then(Value::as_array);
    let token = |key: &str| {
        let id = meta.get(key).and_then(Value::as_u64)? as usize;
        tokens?.get(id)?.as_str().map(str::to_string)
    };
    Some(ChatTemplate {
        source,
        bos_token: token("tokenizer.ggml.bos_token_id").unwrap_or_default(),
        eos_token: token("tokenizer.ggml.eos_token_id").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_pieces_scores() {
        // "ab" outranks "bc" whatever their ids; "abc" splits two ways, in the order of the
        // halves' ids; single characters merge nothing.
        let tokens = ["a", "b", "c", "bc", "ab", "abc"];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = merges_by_score(&tokens, &scores).unwrap();
        let names: Vec<String> = merges.iter().map(|[l, r]| format!("{l} {r}")).collect();
        assert_eq!(names, ["a b", "b c", "a bc", "ab c"]);
    }

    #[test]
    fn long_and_repeated_pieces_cost_bounded_time_and_merges() {
        // One 3 MB piece: not split (quadratic before: minutes).
        let long = "a".repeat(3 << 20);
        let tokens = ["a", "aa", long.as_str()];
        let started = std::time::Instant::now();
        assert_eq!(merges_by_score(&tokens, &[0.0; 3]).unwrap().len(), 1);
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
        // Every run of `a` up to 128 bytes and then many of 2..128 other letters: the merges
        // they imply pass the limit and are refused by name instead of filling memory.
        let pieces: Vec<String> = (0..40_000)
            .map(|i| format!("{}{}", char::from(b'a' + (i % 26) as u8), "b".repeat(i % 120 + 1)))
            .collect();
        let mut tokens: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let bs: Vec<String> = (1..=120).map(|n| "b".repeat(n)).collect();
        tokens.extend(bs.iter().map(String::as_str));
        let singles: Vec<String> = (b'a'..=b'z').map(|c| char::from(c).to_string()).collect();
        tokens.extend(singles.iter().map(String::as_str));
        let scores = vec![0.0; tokens.len()];
        match merges_by_score(&tokens, &scores) {
            Ok(merges) => assert!(merges.len() <= MAX_MERGES),
            Err(e) => assert!(e.contains("merges"), "{e}"),
        }
    }
}
