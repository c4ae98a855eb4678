//! File formats, knowing no model: GGUF containers and ggml's weight blocks.

pub mod blocks;
pub mod gguf;

pub use blocks::BlockFormat;
