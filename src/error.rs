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
    /// `op` says what failed ("read", "write", "create", ...). The OS error is part of the
    /// message and deliberately not a `source`, so that error chains print it once.
    #[error("cannot {op} {path}: {cause}")]
    Io { op: &'static str, path: PathBuf, cause: std::io::Error },
    #[error("malformed {path}: {message}")]
    MalformedFile { path: PathBuf, message: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A command used in a way that cannot work: a wrong `--shard`, a folder that already holds
    /// a run, folders that cannot be merged or checked against each other.
    #[error("{0}")]
    Usage(String),
    #[error("corrupt or truncated safetensors file {path}: {message}")]
    CorruptSafetensors { path: PathBuf, message: String },
    /// A GGUF file that cannot be read as one, or whose metadata and tensors disagree; the
    /// message names the key or tensor.
    #[error("GGUF file {path}: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?} from the model's config")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error(
        "checkpoint {dir} holds tensors the model does not use ({count}: {list}): {why}",
        count = names.len(),
        list = crate::error::first_few(names)
    )]
    UnusedTensors { dir: PathBuf, names: Vec<String>, why: String },
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
    #[error("the {model} model produced a non-finite logit (NaN or ±inf) at position {position}")]
    NonFiniteLogits { model: &'static str, position: usize },
    #[error("draft and target vocabularies differ: {0}")]
    VocabMismatch(String),
    #[error("invalid sampling parameters: {0}")]
    InvalidSampling(String),
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("cannot draw plot {0}")]
    Plot(String),
    #[error("{dir} is being written by {owner} (lock file .lock); wait for it to finish or stop it")]
    FolderLocked { dir: PathBuf, owner: String },
    #[error("{dir} holds a run of other models: {what}; resume and merge only join rows of the same models")]
    ModelIdentityMismatch { dir: PathBuf, what: String },
    /// An error during one generation of a sweep, with the prompt and cell it happened in.
    #[error("{context}: {cause}")]
    InCell { context: String, cause: Box<Error> },
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
}

/// The first names of a list and how many more there are, for one-line messages.
pub fn first_few(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut out = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        out += &format!(" and {} more", names.len() - SHOWN);
    }
    out
}
