//! The integer products on x86 with 512-bit registers (AVX-512BW and AVX512-VNNI): four weight
//! rows side by side in each register, sixteen bytes of each, against one input block broadcast
//! to all four (the matrix stores each four rows' blocks interleaved, `Layout::Interleaved`, so
//! that they are read in order). A block of 32 weights of four rows then meets an input row in
//! two `vpdpbusd`, and the conversion, scaling and accumulation that follow serve all four rows
//! at once: about nine instructions per input row for 128 multiply-adds, where one weight row per
//! register spent about seven for 64. The weight side (loads, unpacking, scales) is shared by a
//! tile of eight input rows.

use std::arch::x86_64::*;

use super::kind::{Q4_0, Q4_1, Q5_0, Q5_1};
use super::{BlockFormat, Q8Row};

/// Weight rows side by side in a register.
const WEIGHT_ROWS: usize = 4;
/// Input rows per pass over a group of weight rows (sixteen spilled registers and were slower).
const TILE: usize = 8;
const PREFETCH_AHEAD_BYTES: usize = 4096;

/// `rows` weight rows of `row_bytes` each, interleaved in groups of four (the last padded),
/// against every input row: `out[r · m + j]` for weight row `r` and input `j`.
///
/// # Safety
/// The CPU has AVX-512F/BW/VL and AVX512-VNNI (`Extensions::avx512_vnni`); `weights` holds
/// `rows.div_ceil(4)` interleaved groups; every input row has one block per weight block.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn multiply_rows(
    format: BlockFormat,
    weights: &[u8],
    row_bytes: usize,
    rows: usize,
    xs: &[Q8Row],
    out: &mut [f32],
) {
    // SAFETY: the caller's contract.
    unsafe { for_kind!(format, groups_of, [], (weights, row_bytes, rows, xs, out)) }
}

/// Each group of four weight rows in tiles of eight input rows, then four, two and one. A weight
/// row's lanes and an input row's accumulator see the same instructions whatever group and tile
/// they fall in, so every product is the same bits however the rows are split: a verify row
/// equals the decode of that row, and the thread count changes nothing.
#[inline(always)]
unsafe fn groups_of<const KIND: u8>(
    weights: &[u8],
    row_bytes: usize,
    rows: usize,
    xs: &[Q8Row],
    out: &mut [f32],
) {
    let m = xs.len();
    for (g, group) in weights.chunks_exact(WEIGHT_ROWS * row_bytes).enumerate() {
        let (first, blocks) = (g * WEIGHT_ROWS, row_bytes / block_bytes(KIND));
        let real = WEIGHT_ROWS.min(rows - first);
        let mut start = 0;
        while start < m {
            let tile = &xs[start..];
            let mut sums = [[0.0f32; WEIGHT_ROWS]; TILE];
            // SAFETY: the caller's contract.
            let r = unsafe {
                match tile.len() {
                    TILE.. => tile_of::<KIND, TILE>(group, blocks, tile, &mut sums),
                    4..TILE => tile_of::<KIND, 4>(group, blocks, tile, &mut sums),
                    2..4 => tile_of::<KIND, 2>(group, blocks, tile, &mut sums),
                    _ => tile_of::<KIND, 1>(group, blocks, tile, &mut sums),
                }
            };
            for (j, sums) in sums[..r].iter().enumerate() {
                for (i, &sum) in sums[..real].iter().enumerate() {
                    out[(first + i) * m + start + j] = sum;
                }
            }
            start += r;
        }
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

/// Block `b` of four weight rows as the input rows meet it.
struct Block {
    /// Sixteen weights of each row per register: elements 0..16 (`low`) and 16..32 (`high`);
    /// their magnitudes where the format is signed (`vpdpbusd` multiplies unsigned by signed
    /// bytes, so the weights' signs move onto the inputs), the weights themselves otherwise.
    low: __m512i,
    high: __m512i,
    low_negative: __mmask64,
    high_negative: __mmask64,
    /// Each row's scale in its four lanes.
    scales: __m512,
    /// Each row's minimum in the first of its lanes (the formats with one).
    mins: __m512,
}

/// Sixteen bytes at each of four pointers, side by side.
#[inline(always)]
unsafe fn four(p: [*const u8; WEIGHT_ROWS]) -> __m512i {
    // SAFETY: sixteen readable bytes at each (the caller's), AVX-512F.
    unsafe {
        let v = _mm512_castsi128_si512(_mm_loadu_si128(p[0].cast()));
        let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p[1].cast()));
        let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p[2].cast()));
        _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p[3].cast()))
    }
}

/// Sixteen bytes of nibbles at each of four pointers as weights, side by side: the low nibbles
/// (elements 0..16), then the high ones (16..32). (A function, not a closure: a closure does not
/// inherit its caller's target features, and its intrinsics became calls.)
#[inline(always)]
unsafe fn nibbles(p: [*const u8; WEIGHT_ROWS]) -> (__m512i, __m512i) {
    // SAFETY: as `four`'s.
    unsafe {
        let q = four(p);
        let low4 = _mm512_set1_epi8(0x0F);
        (_mm512_and_si512(q, low4), _mm512_and_si512(_mm512_srli_epi16::<4>(q), low4))
    }
}

/// Sixteen bits of each row's 32-bit fifth-bit mask (`qh`), starting at `shift`, side by side.
#[inline(always)]
unsafe fn fifth_bits(p: [*const u8; WEIGHT_ROWS], shift: u32) -> __mmask64 {
    let mut mask = 0u64;
    for (i, p) in p.iter().enumerate() {
        // SAFETY: four readable bytes at each (the caller's).
        let bits = unsafe { std::ptr::read_unaligned(*p as *const u32) };
        mask |= (((bits >> shift) & 0xFFFF) as u64) << (16 * i);
    }
    mask
}

/// Block `b` of the four rows of an interleaved `group`.
///
/// # Safety
/// The caller's features; `b` is a block of every row.
#[inline(always)]
unsafe fn unpack<const KIND: u8>(group: &[u8], b: usize) -> Block {
    let with_min = KIND == Q4_1 || KIND == Q5_1;
    let bytes = block_bytes(KIND);
    // SAFETY: every offset below lies in block `b` of its row.
    unsafe {
        let base = group.as_ptr().add(b * WEIGHT_ROWS * bytes);
        let at = |offset: usize| -> [*const u8; WEIGHT_ROWS] {
            [0, 1, 2, 3].map(|i| base.add(i * bytes + offset))
        };
        // The four blocks are one run of bytes, read in order: the lines that far ahead.
        for line in (0..WEIGHT_ROWS * bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_AHEAD_BYTES + line) as *const i8);
        }
        // Scale (and minimum) of each row, converted together: [d0, m0, d1, m1, …] or
        // [d0, 0, d1, 0, …].
        let header = at(0).map(|p| {
            if with_min {
                std::ptr::read_unaligned(p as *const i32)
            } else {
                std::ptr::read_unaligned(p as *const u16) as i32
            }
        });
        let halves = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_set_epi32(
            header[3], header[2], header[1], header[0],
        )));
        let scales =
            _mm512_permutexvar_ps(_mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0), halves);
        let mins = _mm512_maskz_permutexvar_ps(
            0x1111,
            _mm512_set_epi32(0, 0, 0, 7, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 1),
            halves,
        );
        let (low, high) = match KIND {
            Q4_0 => {
                let (low, high) = nibbles(at(2));
                let eight = _mm512_set1_epi8(8);
                (_mm512_sub_epi8(low, eight), _mm512_sub_epi8(high, eight))
            }
            Q4_1 => nibbles(at(4)),
            Q5_0 => {
                // q − 16: the nibble less 16 where the fifth bit is clear.
                let (low, high) = nibbles(at(6));
                let sixteen = _mm512_set1_epi8(16);
                let (low_set, high_set) = (fifth_bits(at(2), 0), fifth_bits(at(2), 16));
                (
                    _mm512_mask_sub_epi8(low, !low_set, low, sixteen),
                    _mm512_mask_sub_epi8(high, !high_set, high, sixteen),
                )
            }
            Q5_1 => {
                let (low, high) = nibbles(at(8));
                let sixteen = _mm512_set1_epi8(16);
                let (low_set, high_set) = (fifth_bits(at(4), 0), fifth_bits(at(4), 16));
                (
                    _mm512_mask_add_epi8(low, low_set, low, sixteen),
                    _mm512_mask_add_epi8(high, high_set, high, sixteen),
                )
            }
            _ => (four(at(2)), four(at(18))),
        };
        if with_min {
            Block { low, high, low_negative: 0, high_negative: 0, scales, mins }
        } else {
            Block {
                low: _mm512_abs_epi8(low),
                high: _mm512_abs_epi8(high),
                low_negative: _mm512_movepi8_mask(low),
                high_negative: _mm512_movepi8_mask(high),
                scales,
                mins,
            }
        }
    }
}

/// `R` input rows against the four weight rows of an interleaved `group` of `blocks` blocks
/// each, into `sums[j][i]` for input `j` and weight row `i`; returns `R`.
#[inline(always)]
unsafe fn tile_of<const KIND: u8, const R: usize>(
    group: &[u8],
    blocks: usize,
    xs: &[Q8Row],
    sums: &mut [[f32; WEIGHT_ROWS]; TILE],
) -> usize {
    let with_min = KIND == Q4_1 || KIND == Q5_1;
    // SAFETY: the caller's features.
    let mut acc = [unsafe { _mm512_setzero_ps() }; R];
    for b in 0..blocks {
        // SAFETY: block `b` of every weight row; every input row has `blocks` blocks.
        unsafe {
            let block = unpack::<KIND>(group, b);
            for (j, x) in xs[..R].iter().enumerate() {
                let q = x.qs.as_ptr().add(32 * b);
                let low = _mm512_broadcast_i32x4(_mm_loadu_si128(q.cast()));
                let high = _mm512_broadcast_i32x4(_mm_loadu_si128(q.add(16).cast()));
                let zero = _mm512_setzero_si512();
                let (low, high) = if with_min {
                    (low, high)
                } else {
                    (
                        _mm512_mask_sub_epi8(low, block.low_negative, zero, low),
                        _mm512_mask_sub_epi8(high, block.high_negative, zero, high),
                    )
                };
                let dots = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, block.low, low), block.high, high);
                let scales = _mm512_mul_ps(block.scales, _mm512_set1_ps(*x.d.get_unchecked(b)));
                acc[j] = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(dots), acc[j]);
                if with_min {
                    acc[j] = _mm512_fmadd_ps(block.mins, _mm512_set1_ps(*x.s.get_unchecked(b)), acc[j]);
                }
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(acc) {
        let mut lanes = [0.0f32; 16];
        // SAFETY: AVX-512F; `lanes` holds sixteen floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        for (sum, lanes) in sums.iter_mut().zip(lanes.chunks_exact(4)) {
            *sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        }
    }
    R
}

#[cfg(test)]
mod tests {
    use super::super::{BlockFormat, Q8Row, QK, QuantMatrix, dot_q8_scalar};

    /// Every format, rows of an odd and an even number of blocks, weight rows not a multiple of
    /// four, every tile size, through the interleaved matrix: against the portable integer dot,
    /// and each product the same bits whether its input row and its weight row are multiplied
    /// alone or with others.
    #[test]
    fn the_512_bit_kernel_agrees_with_the_scalar_dot_and_with_itself_row_by_row() {
        if !crate::kernels::cpu::extensions().avx512_vnni {
            return;
        }
        let (m, weight_rows) = (11, 7);
        for cols in [5 * QK, 6 * QK] {
            let inputs: Vec<Vec<f32>> =
                (0..m).map(|j| crate::formats::blocks::testing::values(cols, j as u32)).collect();
            let x_rows: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            for format in [
                BlockFormat::Q4_0,
                BlockFormat::Q4_1,
                BlockFormat::Q5_0,
                BlockFormat::Q5_1,
                BlockFormat::Q8_0,
            ] {
                let weights = crate::formats::blocks::testing::blocks(format, weight_rows * cols, 99);
                let row_bytes = weights.len() / weight_rows;
                let matrix = QuantMatrix::new(format, weights.clone(), weight_rows, cols);
                let mut all = vec![0.0f32; weight_rows * m];
                matrix.multiply_on(&x_rows, &mut all, false);
                for r in 0..weight_rows {
                    let row = &weights[r * row_bytes..][..row_bytes];
                    let alone = QuantMatrix::new(format, row.to_vec(), 1, cols);
                    for (j, x) in x_rows.iter().enumerate() {
                        let got = all[r * m + j];
                        let want = dot_q8_scalar(format, row, &Q8Row::quantize(x));
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{format} {cols} row {r} input {j}: {got} vs {want}"
                        );
                        let mut one = [0.0f32];
                        alone.multiply_on(std::slice::from_ref(x), &mut one, false);
                        assert_eq!(one[0].to_bits(), got.to_bits(), "{format} {cols} row {r} input {j}");
                    }
                }
                // Dequantizing a row reads the interleaved blocks back in order.
                let (mut from_matrix, mut from_file) = (Vec::new(), vec![0.0f32; cols]);
                matrix.extend_row(5, &mut from_matrix);
                format.dequantize(&weights[5 * row_bytes..][..row_bytes], &mut from_file);
                assert_eq!(from_matrix, from_file, "{format}");
            }
        }
    }
}
