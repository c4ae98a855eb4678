//! The integer products on x86 with 512-bit registers (AVX-512BW and AVX512-VNNI): two weight
//! blocks per register and one `vpdpbusd` for both, so that each (pair of weight blocks, input
//! row) costs about six instructions for 64 multiply-adds, where the 256-bit kernels spend about
//! eight on 32. With a tile of eight input rows sharing each unpacked pair, a verify of k + 1
//! rows is bound by that per-row work, which this halves twice over.

use std::arch::x86_64::*;

use super::kind::{Q4_0, Q4_1, Q5_0, Q5_1};
use super::{BlockFormat, Q8Row, QK};

/// Input rows per pass over a weight row: the accumulators of eight rows and the unpacked pair
/// fit the 32 registers.
const TILE: usize = 8;
const PREFETCH_AHEAD_BYTES: usize = 4096;

/// One weight row in `format` against every quantized input row.
///
/// # Safety
/// The CPU has AVX-512F/BW/VL and AVX512-VNNI (`Extensions::avx512_vnni`); every input row has
/// one block per weight block and its scales widened (`Q8Row::widen_scales`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { for_kind!(format, tiles_of, [], (weights, rows, out)) }
}

/// Tiles of eight rows, then four, two and one: every row's result is computed by the same
/// instructions whatever tile it falls in, so a verify row equals the decode of that row.
#[inline(always)]
unsafe fn tiles_of<const KIND: u8>(weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
    let mut start = 0;
    while start < rows.len() {
        let left = rows.len() - start;
        let (xs, out) = (&rows[start..], &mut out[start..]);
        // SAFETY: the caller's contract.
        start += unsafe {
            match left {
                TILE.. => tile::<KIND, TILE>(weights, xs, out),
                4..TILE => tile::<KIND, 4>(weights, xs, out),
                2..4 => tile::<KIND, 2>(weights, xs, out),
                _ => tile::<KIND, 1>(weights, xs, out),
            }
        };
    }
}

/// The bytes of a block of `KIND`.
const fn block_bytes(kind: u8) -> usize {
    match kind {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

/// Two blocks' weights as 64 bytes, in the order of the input's quants, and what the product
/// needs of them.
struct Pair {
    /// The weights; unsigned for the formats with a minimum, signed for the others.
    weights: __m512i,
    /// |weights| and their sign bits, for the signed formats (`vpdpbusd` takes unsigned × signed
    /// bytes, so the weights' signs move onto the inputs).
    magnitudes: __m512i,
    negative: __mmask64,
    /// Each block's scale eight times over.
    scales: __m512,
    /// Each block's minimum (the formats with one).
    mins: [f32; 2],
}

/// Sixty-four nibbles as bytes: the low nibbles of `a`'s 16 bytes, their high nibbles, then the
/// same of `b`'s.
#[inline(always)]
unsafe fn nibbles(a: *const u8, b: *const u8) -> __m512i {
    // SAFETY: 16 readable bytes at each, and AVX-512BW (the caller's).
    unsafe {
        let both = _mm256_set_m128i(_mm_loadu_si128(b.cast()), _mm_loadu_si128(a.cast()));
        let doubled =
            _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), _mm512_castsi256_si512(both));
        // Shift the second and fourth 16-byte lanes: 16-bit elements 8..16 and 24..32.
        let shifted = _mm512_mask_srli_epi16::<4>(doubled, 0xFF00_FF00, doubled);
        _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F))
    }
}

/// The fifth bits of a Q5 pair (`qh` at `a` and `b`, element j at bit j) as a byte mask.
#[inline(always)]
unsafe fn fifth_bits(a: *const u8, b: *const u8) -> __mmask64 {
    // SAFETY: four readable bytes at each.
    unsafe {
        let low = std::ptr::read_unaligned(a as *const u32) as u64;
        let high = std::ptr::read_unaligned(b as *const u32) as u64;
        low | high << 32
    }
}

/// The pair of blocks at `a` and `b` (the same block twice for a row's odd last block, whose
/// second half then meets zero inputs).
#[inline(always)]
unsafe fn unpack<const KIND: u8>(a: *const u8, b: *const u8) -> Pair {
    // SAFETY: a block of `KIND` at each, and the caller's features.
    unsafe {
        let with_min = KIND == Q4_1 || KIND == Q5_1;
        // Scale (and minimum) of each block, converted together.
        let (ha, hb) = if with_min {
            (std::ptr::read_unaligned(a as *const i32), std::ptr::read_unaligned(b as *const i32))
        } else {
            (
                std::ptr::read_unaligned(a as *const u16) as i32,
                std::ptr::read_unaligned(b as *const u16) as i32,
            )
        };
        let halves = _mm_cvtph_ps(_mm_set_epi32(0, 0, hb, ha));
        // Lanes 0 and 2 hold the scales, 1 and 3 the minimums (or zero).
        let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        let scales = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(halves));
        let mut lanes = [0.0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), halves);
        let mins = [lanes[1], lanes[3]];
        let weights = match KIND {
            Q4_0 => _mm512_sub_epi8(nibbles(a.add(2), b.add(2)), _mm512_set1_epi8(8)),
            Q4_1 => nibbles(a.add(4), b.add(4)),
            Q5_0 => {
                // q − 16: the nibble less 16 where the fifth bit is clear.
                let n = nibbles(a.add(6), b.add(6));
                _mm512_mask_sub_epi8(n, !fifth_bits(a.add(2), b.add(2)), n, _mm512_set1_epi8(16))
            }
            Q5_1 => {
                let n = nibbles(a.add(8), b.add(8));
                _mm512_mask_add_epi8(n, fifth_bits(a.add(4), b.add(4)), n, _mm512_set1_epi8(16))
            }
            _ => _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(a.add(2).cast())),
                _mm256_loadu_si256(b.add(2).cast()),
            ),
        };
        let (magnitudes, negative) =
            if with_min { (weights, 0) } else { (_mm512_abs_epi8(weights), _mm512_movepi8_mask(weights)) };
        Pair { weights, magnitudes, negative, scales, mins }
    }
}

/// `R` input rows against one weight row of format `KIND`; returns `R`.
#[inline(always)]
unsafe fn tile<const KIND: u8, const R: usize>(weights: &[u8], xs: &[Q8Row], out: &mut [f32]) -> usize {
    let blocks = weights.len() / block_bytes(KIND);
    let mut sums = Sums::<R> {
        // SAFETY: inlined only into functions with AVX-512F.
        acc: [unsafe { _mm512_setzero_ps() }; R],
        offsets: [0.0f32; R],
    };
    let xs: [&Q8Row; R] = std::array::from_fn(|j| &xs[j]);
    // SAFETY: the caller's contract; `b` and `b + 1` are blocks of the row.
    unsafe {
        for b in (0..blocks / 2).map(|p| 2 * p) {
            step::<KIND, R, false>(weights, b, &xs, &mut sums);
        }
        if blocks % 2 == 1 {
            step::<KIND, R, true>(weights, blocks - 1, &xs, &mut sums);
        }
    }
    for ((out, acc), offset) in out.iter_mut().zip(sums.acc).zip(sums.offsets) {
        // SAFETY: AVX-512F.
        *out = unsafe { _mm512_reduce_add_ps(acc) } + offset;
    }
    R
}

/// A tile's running sums: sixteen lanes of scaled block products, and the minimums' terms.
struct Sums<const R: usize> {
    acc: [__m512; R],
    offsets: [f32; R],
}

/// Blocks `b` and `b + 1` (or `b` alone, the row's odd last block) against the tile's rows.
/// (A function, not a closure: closures do not inherit the caller's target features, and the
/// intrinsics in one were calls.)
///
/// # Safety
/// As `multiply_row`'s, and `b` (and `b + 1` unless `ALONE`) are whole blocks of `weights`.
#[inline(always)]
unsafe fn step<const KIND: u8, const R: usize, const ALONE: bool>(
    weights: &[u8],
    b: usize,
    xs: &[&Q8Row; R],
    sums: &mut Sums<R>,
) {
    let bytes = block_bytes(KIND);
    let with_min = KIND == Q4_1 || KIND == Q5_1;
    // SAFETY: the contract; every input row has `blocks · QK` quants and `blocks · 8` widened
    // scales; the masked loads of a lone block read only its half.
    unsafe {
        let a = weights.as_ptr().add(b * bytes);
        _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(PREFETCH_AHEAD_BYTES) as *const i8);
        let pair = unpack::<KIND>(a, if ALONE { a } else { a.add(bytes) });
        for (j, x) in xs.iter().enumerate() {
            let (q, d) = (x.qs.as_ptr().add(b * QK), x.wide_d.as_ptr().add(b * 8));
            let (xq, xd) = if ALONE {
                (_mm512_maskz_loadu_epi8(u32::MAX as u64, q.cast()), _mm512_maskz_loadu_ps(0x00FF, d))
            } else {
                (_mm512_loadu_si512(q.cast()), _mm512_loadu_ps(d))
            };
            let dots = if with_min {
                sums.offsets[j] += pair.mins[0] * *x.s.get_unchecked(b);
                if !ALONE {
                    sums.offsets[j] += pair.mins[1] * *x.s.get_unchecked(b + 1);
                }
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), pair.weights, xq)
            } else {
                let signed = _mm512_mask_sub_epi8(xq, pair.negative, _mm512_setzero_si512(), xq);
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), pair.magnitudes, signed)
            };
            let scales = _mm512_mul_ps(pair.scales, xd);
            sums.acc[j] = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(dots), sums.acc[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BlockFormat, Q8Row, QK, dot_q8_scalar};
    use super::*;

    /// Every format, rows with an odd and an even number of blocks, every tile size: the 512-bit
    /// kernel against the portable integer dot, and each row the same whatever its tile.
    #[test]
    fn the_512_bit_kernel_agrees_with_the_scalar_dot_and_with_itself_row_by_row() {
        if !crate::kernels::cpu::extensions().avx512_vnni {
            return;
        }
        for cols in [5 * QK, 6 * QK] {
            let rows: Vec<Q8Row> =
                (0..11).map(|j| Q8Row::quantize(&crate::formats::blocks::testing::values(cols, j))).collect();
            for format in [
                BlockFormat::Q4_0,
                BlockFormat::Q4_1,
                BlockFormat::Q5_0,
                BlockFormat::Q5_1,
                BlockFormat::Q8_0,
            ] {
                let weights = crate::formats::blocks::testing::blocks(format, cols, 99);
                let mut all = [0.0f32; 11];
                // SAFETY: the CPU has AVX512-VNNI with BW and VL; the rows were quantized here.
                unsafe { multiply_row(format, &weights, &rows, &mut all) };
                for (j, x) in rows.iter().enumerate() {
                    let want = dot_q8_scalar(format, &weights, x);
                    assert!((all[j] - want).abs() < 1e-4, "{format} {cols} row {j}: {} vs {want}", all[j]);
                    let mut alone = [0.0f32];
                    // SAFETY: as above.
                    unsafe { multiply_row(format, &weights, std::slice::from_ref(x), &mut alone) };
                    assert_eq!(alone[0].to_bits(), all[j].to_bits(), "{format} {cols} row {j}");
                }
            }
        }
    }
}
