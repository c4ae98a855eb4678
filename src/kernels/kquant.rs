//! Products of K-quant rows (q4_k, q5_k, q6_k: what a `Q4_K_M` or `Q5_K_M` file holds) with
//! f32 inputs, in integers as llama.cpp computes them: each input row is quantized once to
//! 8-bit super-blocks of 256 (`Q8_K`: one f32 scale, and the sum of each 16 quants for the
//! formats with minimums); each weight super-block is unpacked to bytes once and meets every
//! input in integer dot products of 16 or 32 elements, scaled per sub-block.
//!
//! The loops are plain Rust over byte arrays, written so that the compiler vectorizes them (an
//! i32 sum of i8 products may be reordered); the AVX2 entry point compiles the same body with
//! AVX2 enabled.

use super::quant::{BlockFormat, QK_K, f16_at, scale_min_k4};

/// An input row quantized to `Q8_K` super-blocks.
#[derive(Debug)]
pub struct Q8KRow {
    d: Vec<f32>,
    qs: Vec<i8>,
    /// Σ of each 16 quants.
    bsums: Vec<i32>,
}

impl Q8KRow {
    /// ggml's `quantize_row_q8_K_ref`: the value of largest magnitude maps to −127.
    pub fn quantize(x: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::matvec::vector_path_available() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { Self::quantize_avx2(x) };
        }
        Self::quantize_portable(x)
    }

    /// The same loops compiled with AVX2, where rounding is `vroundps` rather than a libm call
    /// per value.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_avx2(x: &[f32]) -> Self {
        Self::quantize_portable(x)
    }

    #[inline(always)]
    fn quantize_portable(x: &[f32]) -> Self {
        debug_assert_eq!(x.len() % QK_K, 0);
        let blocks = x.len() / QK_K;
        let mut row =
            Self { d: Vec::with_capacity(blocks), qs: Vec::with_capacity(x.len()), bsums: Vec::new() };
        for block in x.chunks_exact(QK_K) {
            let max = block.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            if max == 0.0 {
                row.d.push(0.0);
                row.qs.extend([0i8; QK_K]);
            } else {
                let iscale = -127.0 / max;
                row.d.push(1.0 / iscale);
                row.qs.extend(block.iter().map(|&v| ((iscale * v).round_ties_even() as i32).min(127) as i8));
            }
        }
        row.bsums = row.qs.chunks_exact(16).map(|g| g.iter().map(|&q| q as i32).sum()).collect();
        row
    }
}

/// Σ w·q over equal-length byte runs, in i32.
#[inline(always)]
fn dot_u8(w: &[u8], q: &[i8]) -> i32 {
    w.iter().zip(q).map(|(&a, &b)| a as i32 * b as i32).sum()
}

#[inline(always)]
fn dot_i8(w: &[i8], q: &[i8]) -> i32 {
    w.iter().zip(q).map(|(&a, &b)| a as i32 * b as i32).sum()
}

/// One weight row against every input row: `out[j]` for input `j`.
pub fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::matvec::vector_path_available() {
        // SAFETY: the CPU has AVX2 (and FMA, F16C).
        return unsafe { multiply_row_avx2(format, weights, rows, out) };
    }
    multiply_row_portable(format, weights, rows, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multiply_row_avx2(format: BlockFormat, weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
    multiply_row_portable(format, weights, rows, out)
}

#[inline(always)]
fn multiply_row_portable(format: BlockFormat, weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
    out.fill(0.0);
    let mut unpacked = [0u8; QK_K];
    for (b, block) in weights.chunks_exact(format.block_bytes()).enumerate() {
        match format {
            BlockFormat::Q4_K | BlockFormat::Q5_K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let scales = &block[4..16];
                if format == BlockFormat::Q4_K {
                    unpack_q4_k(&block[16..144], &mut unpacked);
                } else {
                    unpack_q5_k(&block[16..48], &block[48..176], &mut unpacked);
                }
                let sub: [(i32, i32); 8] = std::array::from_fn(|s| {
                    let (sc, m) = scale_min_k4(s, scales);
                    (sc as i32, m as i32)
                });
                for (o, x) in out.iter_mut().zip(rows) {
                    let q = &x.qs[b * QK_K..][..QK_K];
                    let bsums = &x.bsums[b * 16..][..16];
                    let (mut sumi, mut mins) = (0i32, 0i32);
                    for (s, &(sc, m)) in sub.iter().enumerate() {
                        sumi += sc * dot_u8(&unpacked[32 * s..][..32], &q[32 * s..][..32]);
                        mins += m * (bsums[2 * s] + bsums[2 * s + 1]);
                    }
                    *o += x.d[b] * (d * sumi as f32 - dmin * mins as f32);
                }
            }
            BlockFormat::Q6_K => {
                let signed = unpack_q6_k(&block[..128], &block[128..192], &mut unpacked);
                let scales = &block[192..208];
                let d = f16_at(block, 208);
                for (o, x) in out.iter_mut().zip(rows) {
                    let q = &x.qs[b * QK_K..][..QK_K];
                    let sumi: i32 = (0..16)
                        .map(|g| scales[g] as i8 as i32 * dot_i8(&signed[16 * g..][..16], &q[16 * g..][..16]))
                        .sum();
                    *o += x.d[b] * d * sumi as f32;
                }
            }
            other => unreachable!("{other} is not a K-quant"),
        }
    }
}

/// Q4_K's 128 bytes of nibbles as 256 values 0..15, in element order.
#[inline(always)]
fn unpack_q4_k(qs: &[u8], out: &mut [u8; QK_K]) {
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        for l in 0..32 {
            out[64 * chunk + l] = q[l] & 0x0F;
            out[64 * chunk + 32 + l] = q[l] >> 4;
        }
    }
}

/// Q5_K's nibbles and fifth bits as 256 values 0..31.
#[inline(always)]
fn unpack_q5_k(qh: &[u8], qs: &[u8], out: &mut [u8; QK_K]) {
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        for l in 0..32 {
            out[64 * chunk + l] = (q[l] & 0x0F) | (((qh[l] >> (2 * chunk)) & 1) << 4);
            out[64 * chunk + 32 + l] = (q[l] >> 4) | (((qh[l] >> (2 * chunk + 1)) & 1) << 4);
        }
    }
}

/// Q6_K's low nibbles and high bit pairs as 256 values −32..31 (returned as i8, written over
/// `out`'s bytes).
#[inline(always)]
fn unpack_q6_k<'a>(ql: &[u8], qh: &[u8], out: &'a mut [u8; QK_K]) -> &'a [i8] {
    for half in 0..2 {
        let (ql, qh, out) = (&ql[64 * half..], &qh[32 * half..], &mut out[128 * half..]);
        for l in 0..32 {
            out[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)).wrapping_sub(32);
            out[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)).wrapping_sub(32);
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)).wrapping_sub(32);
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)).wrapping_sub(32);
        }
    }
    // SAFETY: u8 and i8 have one layout; the bytes were written as two's complement values.
    unsafe { std::slice::from_raw_parts(out.as_ptr() as *const i8, QK_K) }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// The integer product equals the dequantized f32 product up to the input's quantization.
    #[test]
    fn k_quant_products_match_dequantized_weights() {
        let cols = 2 * QK_K;
        let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let row = Q8KRow::quantize(&x);
        for format in [BlockFormat::Q4_K, BlockFormat::Q5_K, BlockFormat::Q6_K] {
            // Any bytes are valid blocks once their f16 scales are sane.
            let mut blocks: Vec<u8> =
                (0..2 * format.block_bytes()).map(|i| ((i * 131 + 7) % 251) as u8).collect();
            for block in blocks.chunks_exact_mut(format.block_bytes()) {
                let at = if format == BlockFormat::Q6_K { 208 } else { 0 };
                block[at..at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                if format != BlockFormat::Q6_K {
                    block[2..4].copy_from_slice(&f16::from_f32(0.02).to_le_bytes());
                }
            }
            let mut dense = vec![0.0f32; cols];
            format.dequantize(&blocks, &mut dense);
            let exact: f32 = dense.iter().zip(&x).map(|(w, x)| w * x).sum();
            let mut got = [0.0f32];
            multiply_row(format, &blocks, std::slice::from_ref(&row), &mut got);
            let scale: f32 = dense.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
            assert!((got[0] - exact).abs() < 0.01 * scale, "{format}: {} vs {exact}", got[0]);
            let mut portable = [0.0f32];
            multiply_row_portable(format, &blocks, std::slice::from_ref(&row), &mut portable);
            assert!(
                (portable[0] - got[0]).abs() < 1e-3 * scale,
                "{format}: portable {} vs {}",
                portable[0],
                got[0]
            );
        }
    }
}
