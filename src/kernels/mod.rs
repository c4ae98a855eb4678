//! Host kernels: the projections of the CPU decode path, on weights in host memory: f32 and
//! half-precision rows (`matvec`) and ggml's quantized blocks (`quant`).

pub mod attention;
pub mod cpu;
pub mod kquant;
pub mod math;
pub mod matvec;
pub mod pool;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod x86;

/// `a · b` in eight independent lanes, which the compiler keeps in one vector register (a plain
/// sum is one serial chain it may not reorder).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
