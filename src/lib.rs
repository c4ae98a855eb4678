//! specbench: research and benchmarking harness for speculative decoding of Llama-architecture
//! models on Burn.

pub mod backend;
pub mod decoding;
pub mod error;
pub mod experiment;
pub mod files;
pub mod formats;
pub mod kernels;
pub mod load;
pub mod measure;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sampling;
pub mod tokenizer;

pub use error::{Error, Result};
