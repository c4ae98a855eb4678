//! Checkpoint formats, each read into the one `WeightSource` interface the architecture builds
//! from: Hugging Face folders (`folder`: config.json, safetensors, tokenizer.json) and GGUF files
//! (`gguf` the container, `gguf_llama` its Llama metadata and tensors, `gguf_tokenizer` its
//! tokenizer and chat template).

pub mod folder;
pub mod gguf;
pub mod gguf_llama;
pub mod gguf_tokenizer;
