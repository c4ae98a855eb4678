//! The integer products on x86 with 256-bit registers, where the CPU lacks AVX512-VNNI
//! (`avx512`): AVX2, and `vpdpbusd` where AVX-VNNI has it.

use std::arch::x86_64::*;

use super::{BlockFormat, Q8Row, QK};
use crate::kernels::x86::f16_at;

/// Input rows per pass over a weight row: each unpacked weight block serves all of them.
const TILE: usize = 4;
const PREFETCH_AHEAD_BYTES: usize = 4096;

use super::kind::{Q4_0, Q4_1, Q5_0, Q5_1};

// How 32 unsigned × signed bytes are summed into i32 lanes: AVX2's `vpmaddubsw` +
// `vpmaddwd`, or one VEX-encoded `vpdpbusd` (AVX-VNNI: Intel since Alder Lake, AMD Zen 5).
const DOT_AVX2: u8 = 0;
const DOT_AVX_VNNI: u8 = 1;

/// One weight row in `format` against every quantized input row, `TILE` rows per pass.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; every input row has one block per weight block.
pub(super) unsafe fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    let extensions = crate::kernels::cpu::extensions();
    // SAFETY: the caller's contract, and the VNNI extension where it is used.
    unsafe {
        if extensions.avx_vnni {
            multiply_row_avx_vnni(format, weights, rows, out)
        } else {
            multiply_row_avx2(format, weights, rows, out)
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multiply_row_avx2(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { tiles::<DOT_AVX2>(format, weights, rows, out) }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn multiply_row_avx_vnni(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { tiles::<DOT_AVX_VNNI>(format, weights, rows, out) }
}

/// Inlined into each entry point above, so that it is compiled with that one's features.
#[inline(always)]
unsafe fn tiles<const DOT: u8>(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { for_kind!(format, tiles_of, [DOT], (weights, rows, out)) }
}

#[inline(always)]
unsafe fn tiles_of<const KIND: u8, const DOT: u8>(weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    for (xs, out) in rows.chunks(TILE).zip(out.chunks_mut(TILE)) {
        // SAFETY: the caller's contract.
        unsafe {
            match xs.len() {
                1 => tile::<KIND, 1, DOT>(weights, xs, out),
                2 => tile::<KIND, 2, DOT>(weights, xs, out),
                3 => tile::<KIND, 3, DOT>(weights, xs, out),
                _ => tile::<KIND, 4, DOT>(weights, xs, out),
            }
        }
    }
}

/// The first four f16 values at `ptr` (a block's scale and minimum, for the formats with
/// one), converted by F16C from one 8-byte load. Two `f16_at` calls here compiled to 16-bit
/// inserts into a register still holding the previous block's value, which chained every
/// block's load to the one before: with this, SmolLM2 decodes 25–35% faster in q5_1 and
/// 5–15% in q4_1 (A/B, alternating runs). The scale-only formats keep `f16_at`, where the
/// chain did not form and this was no faster.
#[inline(always)]
unsafe fn halves(ptr: *const u8) -> __m128 {
    // SAFETY: the caller's contract: eight readable bytes, and F16C.
    unsafe { _mm_cvtph_ps(_mm_loadl_epi64(ptr as *const __m128i)) }
}

/// Thirty-two nibbles as bytes: the low nibbles of 16 bytes, then the high ones.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    unsafe {
        let packed = _mm_loadu_si128(qs as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }
}

/// A Q5 block's 32 fifth bits (element j at bit j) as bytes: 0xFF where the bit is set
/// (llama.cpp's `bytes_from_bits_32`).
#[inline(always)]
unsafe fn fifth_bits(qh: *const u8) -> __m256i {
    unsafe {
        let bits = std::ptr::read_unaligned(qh as *const i32);
        // Byte i takes the byte of `bits` holding bit i ...
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        // ... and is all ones once every other bit is set too.
        let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1))
    }
}

/// Σ u·s over 32 unsigned × signed bytes, as eight i32 lanes converted to f32.
#[inline(always)]
unsafe fn dot_unsigned<const DOT: u8>(u: __m256i, s: __m256i) -> __m256 {
    unsafe {
        let sums = match DOT {
            DOT_AVX_VNNI => _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s),
            _ => _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
        };
        _mm256_cvtepi32_ps(sums)
    }
}

/// `TILE` or fewer input rows (`R`) against one weight row of format `KIND`.
#[inline(always)]
unsafe fn tile<const KIND: u8, const R: usize, const DOT: u8>(weights: &[u8], xs: &[Q8Row], out: &mut [f32]) {
    let bytes = match KIND {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    };
    // The formats with a minimum: unsigned weights, the minimum times Σx added per block.
    let with_min = KIND == Q4_1 || KIND == Q5_1;
    let blocks = weights.len() / bytes;
    // SAFETY: inlined only into functions with AVX2.
    let mut acc = [unsafe { _mm256_setzero_ps() }; R];
    let mut offsets = [0.0f32; R];
    let xs: [&Q8Row; R] = std::array::from_fn(|j| &xs[j]);
    let w = weights.as_ptr();
    for b in 0..blocks {
        // SAFETY: `b < blocks` whole blocks of `bytes`; every input row has `blocks` scales
        // and `blocks · QK` quants (the caller's contract).
        unsafe {
            let block = w.add(b * bytes);
            // The hardware prefetcher alone left the loads stalled at a third of the
            // machine's read bandwidth; asking for the line 4 KiB ahead (as the f32 kernel
            // does) keeps it streaming. Prefetching past the end is harmless.
            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD_BYTES) as *const i8);
            let (d, min) = if with_min {
                let header = halves(block);
                (_mm_cvtss_f32(header), _mm_cvtss_f32(_mm_movehdup_ps(header)))
            } else {
                (f16_at(block), 0.0)
            };
            // The weight bytes and, for the signed formats, their magnitudes: `maddubs`
            // multiplies unsigned by signed, so the weights' signs move onto the inputs.
            let (wv, magnitude) = match KIND {
                Q4_1 => (nibbles(block.add(4)), _mm256_setzero_si256()),
                Q4_0 => {
                    let v = _mm256_sub_epi8(nibbles(block.add(2)), _mm256_set1_epi8(8));
                    (v, _mm256_sign_epi8(v, v))
                }
                Q5_1 => {
                    let fifth = _mm256_and_si256(fifth_bits(block.add(4)), _mm256_set1_epi8(0x10));
                    (_mm256_or_si256(nibbles(block.add(8)), fifth), _mm256_setzero_si256())
                }
                Q5_0 => {
                    // q − 16 is the nibble where the fifth bit is set, and the nibble with
                    // 0xF0 (− 16 as a signed byte) where it is not.
                    let high = _mm256_andnot_si256(fifth_bits(block.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
                    let v = _mm256_or_si256(nibbles(block.add(6)), high);
                    (v, _mm256_sign_epi8(v, v))
                }
                _ => {
                    let v = _mm256_loadu_si256(block.add(2) as *const __m256i);
                    (v, _mm256_sign_epi8(v, v))
                }
            };
            for j in 0..R {
                let x = xs[j];
                let xq = _mm256_loadu_si256(x.qs.as_ptr().add(b * QK) as *const __m256i);
                let products = if with_min {
                    offsets[j] += min * *x.s.get_unchecked(b);
                    dot_unsigned::<DOT>(wv, xq)
                } else {
                    dot_unsigned::<DOT>(magnitude, _mm256_sign_epi8(xq, wv))
                };
                let scale = _mm256_set1_ps(d * *x.d.get_unchecked(b));
                acc[j] = _mm256_fmadd_ps(scale, products, acc[j]);
            }
        }
    }
    for j in 0..R {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[j]) };
        out[j] = lanes.iter().sum::<f32>() + offsets[j];
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BlockFormat, Q8Row, QK, dot_q8_scalar};
    use super::*;

    /// Both vector variants (whichever this CPU runs) against the portable integer dot, for
    /// every format and tile size.
    #[test]
    fn avx2_and_vnni_kernels_agree_with_the_scalar_dot() {
        if !crate::kernels::cpu::has_avx2() {
            return;
        }
        let cols = 6 * QK;
        let values = |seed: u32| -> Vec<f32> {
            (0..cols)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        let rows: Vec<Q8Row> = (0..7).map(|j| Q8Row::quantize(&values(j))).collect();
        for format in
            [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q5_0, BlockFormat::Q5_1, BlockFormat::Q8_0]
        {
            let weights = crate::formats::blocks::testing::blocks(format, cols, 99);
            let want: Vec<f32> = rows.iter().map(|x| dot_q8_scalar(format, &weights, x)).collect();
            let mut variants = vec![("avx2", [0.0f32; 7])];
            // SAFETY: has_avx2() checked AVX2, FMA and F16C.
            unsafe { multiply_row_avx2(format, &weights, &rows, &mut variants[0].1) };
            if crate::kernels::cpu::extensions().avx_vnni {
                let mut out = [0.0f32; 7];
                // SAFETY: and AVX-VNNI here.
                unsafe { multiply_row_avx_vnni(format, &weights, &rows, &mut out) };
                variants.push(("avx-vnni", out));
            }
            for (name, got) in variants {
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "{format} {name}: {g} vs {w}");
                }
            }
        }
    }
}
