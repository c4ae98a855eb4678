//! Host kernels: the projections of the CPU decode path, on weights in host memory: f32 and
//! half-precision rows (`matvec`) and ggml's quantized blocks (`quant`).

pub mod matvec;
pub mod pool;
pub mod quant;
