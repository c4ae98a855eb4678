//! The library's error type: every bad input is named here with what was expected and found.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "model folder {0} does not exist (expected a Hugging Face checkpoint folder with config.json, *.safetensors and tokenizer.json)"
    )]
    MissingModelDir(PathBuf),
    #[error("{what} not found: {path}")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed {path}: {message}")]
    MalformedFile { path: PathBuf, message: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("corrupt or truncated safetensors file {path}: {message}")]
    CorruptSafetensors { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?} from config.json")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}` has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedTensorDtype { name: String, dtype: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("backend `{0}` is not compiled into this binary; rebuild with `--features {0}`")]
    BackendNotCompiled(String),
    #[error("unknown backend `{0}`; choose one of: {1}")]
    UnknownBackend(String, String),
    #[error("backend `{backend}` is unavailable: {reason}")]
    BackendUnavailable { backend: String, reason: String },
    #[error("dtype {dtype} is not supported by backend `{backend}`")]
    DtypeUnsupported { dtype: String, backend: String },
    #[error("unknown model preset `{0}`; presets: {1}")]
    UnknownPreset(String, String),
    #[error("{what} needs about {needed_gib:.1} GiB but only {available_gib:.1} GiB of memory is available")]
    InsufficientMemory { what: String, needed_gib: f64, available_gib: f64 },
    #[error("position {end} is past the model's context length {max}")]
    ContextOverflow { end: usize, max: usize },
    #[error("forward called with start_pos {start_pos} but the KV cache holds {cache_len} tokens")]
    PositionMismatch { start_pos: usize, cache_len: usize },
    #[error("the model produced non-finite logits (NaN or inf) at position {position}")]
    NonFiniteLogits { position: usize },
    #[error("draft and target vocabularies differ: {0}")]
    VocabMismatch(String),
    #[error("invalid sampling parameters: {0}")]
    InvalidSampling(String),
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("cannot draw plot {0}")]
    Plot(String),
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
}
