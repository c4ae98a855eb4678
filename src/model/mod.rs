//! Llama-architecture models: configuration, weights, the body written once over two
//! executors, and the KV cache. Knows no file format: `load` reads checkpoints into a
//! `WeightSource`.

pub mod body;
pub mod cache;
pub mod config;
pub mod eagle3;
pub mod executor;
pub mod host;
pub mod llama;
pub mod rope;
pub mod step;
pub mod tensor;
pub mod weights;

pub use cache::KvCache;
pub use config::{CustomDims, LlamaConfig};
pub use eagle3::{Eagle3Config, Eagle3Head};
pub use llama::{Llama, StepOutput};
pub use step::Step;
