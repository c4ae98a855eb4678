//! Products of K-quant rows (q4_k, q5_k, q6_k: what a `Q4_K_M` or `Q5_K_M` file holds) with
//! f32 inputs, in integers as llama.cpp computes them: each input row is quantized once to
//! 8-bit super-blocks of 256 (`Q8_K`: one f32 scale, and the sum of each 16 quants for the
//! formats with minimums); each weight super-block is unpacked to bytes once and meets every
//! input in integer dot products of 16 or 32 elements, scaled per sub-block.
//!
//! The unpacking is plain Rust over byte arrays that the compiler vectorizes; the scaled dot
//! products of a super-block are AVX2 (`vpmaddubsw` + `vpmaddwd`, as llama.cpp's
//! `ggml_vec_dot_q*_K_q8_K`) where the CPU has it: left to the compiler they came out scalar or
//! SSE2-wide (the embedded target's Q4_K_M file decoded at 0.3× llama.cpp). Integer sums are
//! exact, so both paths give the same products.

use crate::formats::blocks::{BlockFormat, QK_K, f16_at, scale_min_k4};
use crate::kernels::cpu::{Vectorize, vectorized};

/// An input row quantized to `Q8_K` super-blocks.
#[derive(Debug)]
pub struct Q8KRow {
    d: Vec<f32>,
    qs: Vec<i8>,
    /// Σ of each 16 quants.
    bsums: Vec<i32>,
}

impl Q8KRow {
    /// ggml's `quantize_row_q8_K_ref`: the value of largest magnitude maps to −127. Compiled
    /// for the vector ISA, where rounding is `vroundps` rather than a libm call per value.
    pub fn quantize(x: &[f32]) -> Self {
        struct Quantize<'a>(&'a [f32]);
        impl Vectorize for Quantize<'_> {
            type Output = Q8KRow;
            #[inline(always)]
            fn run(self) -> Q8KRow {
                Q8KRow::quantize_portable(self.0)
            }
        }
        vectorized(Quantize(x))
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

/// One weight row against every input row: `out[j]` for input `j`.
pub fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::has_avx2() {
        // SAFETY: the CPU has AVX2 (and FMA, F16C).
        return unsafe { multiply_row_avx2(format, weights, rows, out) };
    }
    multiply_row_with::<false>(format, weights, rows, out)
}

/// A function per row: with the loop over a task's rows inside it, the task ran slower.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multiply_row_avx2(format: BlockFormat, weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
    multiply_row_with::<true>(format, weights, rows, out)
}

/// One weight row against every input row (`out[j]` for input `j`), with the sub-block dots on
/// AVX2 (`VECTOR`, only where the CPU has it) or portable.
#[inline(always)]
fn multiply_row_with<const VECTOR: bool>(
    format: BlockFormat,
    weights: &[u8],
    rows: &[Q8KRow],
    out: &mut [f32],
) {
    out.fill(0.0);
    let mut unpacked = [0u8; QK_K];
    for (b, block) in weights.chunks_exact(format.block_bytes()).enumerate() {
        match format {
            BlockFormat::Q4_K | BlockFormat::Q5_K => {
                let (d, dmin) = (scale_at::<VECTOR>(block, 0), scale_at::<VECTOR>(block, 2));
                let scales = &block[4..16];
                if format == BlockFormat::Q4_K {
                    unpack_q4_k(&block[16..144], &mut unpacked);
                } else {
                    unpack_q5_k(&block[16..48], &block[48..176], &mut unpacked);
                }
                let (mut sc, mut m) = ([0i16; 8], [0i32; 8]);
                for s in 0..8 {
                    let (scale, min) = scale_min_k4(s, scales);
                    (sc[s], m[s]) = (scale as i16, min as i32);
                }
                for (o, x) in out.iter_mut().zip(rows) {
                    let q = &x.qs[b * QK_K..][..QK_K];
                    let bsums = &x.bsums[b * 16..][..16];
                    let sumi = dots::<VECTOR, 32>(&unpacked, q, &sc);
                    let mins: i32 = (0..8).map(|s| m[s] * (bsums[2 * s] + bsums[2 * s + 1])).sum();
                    *o += x.d[b] * (d * sumi as f32 - dmin * mins as f32);
                }
            }
            BlockFormat::Q6_K => {
                unpack_q6_k(&block[..128], &block[128..192], &mut unpacked);
                let sc: [i16; 16] = std::array::from_fn(|g| block[192 + g] as i8 as i16);
                let d = scale_at::<VECTOR>(block, 208);
                for (o, x) in out.iter_mut().zip(rows) {
                    let q = &x.qs[b * QK_K..][..QK_K];
                    let bsums = &x.bsums[b * 16..][..16];
                    // The weights were unpacked as 0..63: Σ (w − 32)·q = Σ w·q − 32 Σ q.
                    let offset: i32 = (0..16).map(|g| sc[g] as i32 * bsums[g]).sum();
                    let sumi = dots::<VECTOR, 16>(&unpacked, q, &sc) - 32 * offset;
                    *o += x.d[b] * d * sumi as f32;
                }
            }
            other => unreachable!("{other} is not a K-quant"),
        }
    }
}

/// The f16 scale at byte `at` of a block: by F16C in a register on the vector path (the `half`
/// crate's conversion is a call per value, 3% of a decode step of the embedded Q4_K_M file).
#[inline(always)]
fn scale_at<const VECTOR: bool>(block: &[u8], at: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if VECTOR {
        assert!(at + 2 <= block.len());
        // SAFETY: two bytes in bounds; VECTOR is only set where the CPU has F16C.
        return unsafe { crate::kernels::x86::f16_at(block.as_ptr().add(at)) };
    }
    f16_at(block, at)
}

/// `Σ_g scales[g] · (w · q over group g)` for a super-block in groups of `GROUP` (32 for Q4_K and
/// Q5_K, 16 for Q6_K): `QK_K / GROUP` scales, unsigned weights below 64.
#[inline(always)]
fn dots<const VECTOR: bool, const GROUP: usize>(w: &[u8; QK_K], q: &[i8], scales: &[i16]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if VECTOR {
        // SAFETY: VECTOR is only set on the AVX2 path; q holds a whole super-block.
        return unsafe { avx2::dots::<GROUP>(w, q, scales) };
    }
    let group = |g: usize| w[GROUP * g..][..GROUP].iter().zip(&q[GROUP * g..][..GROUP]);
    (0..QK_K / GROUP)
        .map(|g| scales[g] as i32 * group(g).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>())
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::QK_K;

    /// 32 weights and 32 quants at a time: `vpmaddubsw` gives sixteen pair sums (below 2 · 63 · 127,
    /// no saturation), `vpmaddwd` scales them, eight per group of 16 or sixteen per group of 32.
    ///
    /// # Safety
    /// The CPU has AVX2; `q` holds `QK_K` values and `scales` `QK_K / GROUP`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots<const GROUP: usize>(w: &[u8; QK_K], q: &[i8], scales: &[i16]) -> i32 {
        debug_assert!(q.len() >= QK_K && scales.len() >= QK_K / GROUP);
        let mut acc = _mm256_setzero_si256();
        for c in 0..QK_K / 32 {
            // SAFETY: 32 · c + 32 ≤ QK_K, and the scale indices below are within QK_K / GROUP.
            unsafe {
                let pairs = _mm256_maddubs_epi16(
                    _mm256_loadu_si256(w.as_ptr().add(32 * c).cast()),
                    _mm256_loadu_si256(q.as_ptr().add(32 * c).cast()),
                );
                let scale = if GROUP == 32 {
                    _mm256_set1_epi16(*scales.get_unchecked(c))
                } else {
                    // The low 128 bits hold group 2c, the high ones group 2c + 1.
                    _mm256_set_m128i(
                        _mm_set1_epi16(*scales.get_unchecked(2 * c + 1)),
                        _mm_set1_epi16(*scales.get_unchecked(2 * c)),
                    )
                };
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale));
            }
        }
        let quad = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
        _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<1>(pair)))
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

/// Q6_K's low nibbles and high bit pairs as 256 values 0..63 (the stored value; the weight is
/// that less 32).
#[inline(always)]
fn unpack_q6_k(ql: &[u8], qh: &[u8], out: &mut [u8; QK_K]) {
    for half in 0..2 {
        let (ql, qh, out) = (&ql[64 * half..], &qh[32 * half..], &mut out[128 * half..]);
        for l in 0..32 {
            out[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            out[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
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
            // The integer sums are exact: the vector path (where this CPU has it) and the
            // portable one agree to the bit.
            let mut portable = [0.0f32];
            multiply_row_with::<false>(format, &blocks, std::slice::from_ref(&row), &mut portable);
            assert_eq!(
                portable[0].to_bits(),
                got[0].to_bits(),
                "{format}: portable {} vs {}",
                portable[0],
                got[0]
            );
        }
    }
}
