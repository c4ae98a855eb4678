//! Checkpoint formats, each read into the one `WeightSource` interface the architecture builds
//! from: Hugging Face folders (`folder`: config.json, safetensors, tokenizer.json) and GGUF files
//! (`gguf` the container, `gguf_llama` its Llama metadata, tensors and tokenizer).

pub mod folder;
pub mod gguf;
pub mod gguf_llama;
