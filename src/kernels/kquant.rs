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
//! exact, so both paths give the same products. Where the CPU has AVX-512 (BW, VL) a tile of
//! input rows meets each super-block unpacked into registers (`avx512`), with the float sums in
//! lanes until the row ends: the same integers, summed in another order.

use crate::formats::blocks::{BlockFormat, QK_K, f16_at, scale_min_k4};
use crate::kernels::cpu::{Vectorize, vectorized};

/// An input row quantized to `Q8_K` super-blocks.
#[derive(Debug)]
pub struct Q8KRow {
    d: Vec<f32>,
    qs: Vec<i8>,
    /// Σ of each 16 quants (at most 16 · 127 in magnitude).
    bsums: Vec<i16>,
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
        row.bsums = row.qs.chunks_exact(16).map(|g| g.iter().map(|&q| q as i16).sum()).collect();
        row
    }
}

/// One weight row against every input row: `out[j]` for input `j`.
pub fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::has_avx512() {
        // SAFETY: the CPU has AVX-512F, BW and VL (and AVX2, FMA, F16C).
        return unsafe { avx512::multiply_row(format, weights, rows, out) };
    }
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
                    let mins: i32 =
                        (0..8).map(|s| m[s] * (bsums[2 * s] as i32 + bsums[2 * s + 1] as i32)).sum();
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
                    let offset: i32 = (0..16).map(|g| sc[g] as i32 * bsums[g] as i32).sum();
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

/// The K-quant products 512 bits wide, for a tile of input rows: each super-block is unpacked
/// once into four registers with its sub-block scales spread over the 16-bit lanes they
/// multiply, and each input row then costs four `vpmaddubsw` + `vpmaddwd` pairs, one `vpmaddwd`
/// of its sixteen sums against the minimums, and two multiply-adds, with the float sums kept in
/// lanes until the row ends (the AVX2 path reduces every super-block and sums the minimums in
/// scalar code: about three times the instructions per row).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BlockFormat, Q8KRow, QK_K};
    use crate::kernels::x86::f16_at;

    /// Input rows per pass over a weight row.
    const TILE: usize = 8;

    const Q4_K: u8 = 0;
    const Q5_K: u8 = 1;
    const Q6_K: u8 = 2;

    /// One weight row against every input row.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VL, AVX2, FMA and F16C; every input row has one super-block
    /// per weight super-block.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
        // SAFETY: the caller's contract.
        unsafe {
            match format {
                BlockFormat::Q4_K => tiles::<Q4_K>(weights, rows, out),
                BlockFormat::Q5_K => tiles::<Q5_K>(weights, rows, out),
                BlockFormat::Q6_K => tiles::<Q6_K>(weights, rows, out),
                other => unreachable!("{other} is not a K-quant"),
            }
        }
    }

    /// Tiles of eight rows, then four, two and one: every row's result is computed by the same
    /// instructions whatever tile it falls in.
    #[inline(always)]
    unsafe fn tiles<const KIND: u8>(weights: &[u8], rows: &[Q8KRow], out: &mut [f32]) {
        let mut start = 0;
        while start < rows.len() {
            let (xs, out) = (&rows[start..], &mut out[start..]);
            // SAFETY: the caller's contract.
            start += unsafe {
                match xs.len() {
                    TILE.. => tile::<KIND, TILE>(weights, xs, out),
                    4..TILE => tile::<KIND, 4>(weights, xs, out),
                    2..4 => tile::<KIND, 2>(weights, xs, out),
                    _ => tile::<KIND, 1>(weights, xs, out),
                }
            };
        }
    }

    const fn block_bytes(kind: u8) -> usize {
        match kind {
            Q4_K => 144,
            Q5_K => 176,
            _ => 210,
        }
    }

    /// For each 64 weights, the index of the scale of each i16 lane of their 32 pair sums (lane
    /// l covers weights 2l and 2l + 1), for scales per `group` weights.
    const fn spread(group: usize) -> [[i16; 32]; 4] {
        let mut out = [[0i16; 32]; 4];
        let mut c = 0;
        while c < 4 {
            let mut l = 0;
            while l < 32 {
                out[c][l] = ((64 * c + 2 * l) / group) as i16;
                l += 1;
            }
            c += 1;
        }
        out
    }
    static SPREAD_32: [[i16; 32]; 4] = spread(32);
    static SPREAD_16: [[i16; 32]; 4] = spread(16);
    /// Each of the eight minimums (lanes 8..16 after the scales) twice: one per 16 quants.
    static MINS_TWICE: [i16; 16] = [8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15];

    /// A weight super-block as the rows meet it.
    struct SuperBlock {
        /// The 256 weights as unsigned bytes (Q6_K's stored 0..63, the weight plus 32).
        weights: [__m512i; 4],
        /// For each 64 weights, the scale of each one's sub-block in the 16-bit lane of its
        /// pair.
        scales: [__m512i; 4],
        /// What multiplies the input's sixteen sums of 16: each sub-block's minimum twice (Q4_K,
        /// Q5_K), or each group's scale (Q6_K, whose stored weights carry + 32).
        mins: __m256i,
        d: f32,
        /// The float scale of the minimum term: the block's `dmin`, or 32 · `d` for Q6_K.
        dmin: f32,
    }

    /// Q4_K's and Q5_K's twelve bytes of 6-bit scales and minimums as sixteen i16 lanes: the
    /// eight scales, then the eight minimums (llama.cpp's `utmp` shuffle).
    #[inline(always)]
    unsafe fn scales_and_mins(packed: *const u8) -> __m256i {
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const LOW2: u32 = 0x0303_0303;
        // SAFETY: twelve readable bytes (the caller's), and AVX2.
        unsafe {
            let word = |i: usize| std::ptr::read_unaligned(packed.add(4 * i) as *const u32);
            let (u0, u1, u2) = (word(0), word(1), word(2));
            let scales_high = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
            let mins_high = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
            let bytes =
                _mm_set_epi32(mins_high as i32, (u1 & LOW6) as i32, scales_high as i32, (u0 & LOW6) as i32);
            _mm256_cvtepu8_epi16(bytes)
        }
    }

    /// Thirty-two bytes of nibbles as the 64 weights they hold: the low nibbles, then the high.
    #[inline(always)]
    unsafe fn nibbles(qs: *const u8) -> __m512i {
        // SAFETY: 32 readable bytes, and AVX-512F.
        unsafe {
            let y = _mm256_loadu_si256(qs.cast());
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y), _mm256_srli_epi16::<4>(y));
            _mm512_and_si512(both, _mm512_set1_epi8(0x0F))
        }
    }

    /// `block` unpacked into registers.
    ///
    /// # Safety
    /// As `multiply_row`'s; a whole super-block of `KIND` at `block`.
    #[inline(always)]
    unsafe fn unpack<const KIND: u8>(block: *const u8) -> SuperBlock {
        // SAFETY: every offset below lies in a super-block of `KIND`; the caller's features.
        unsafe {
            let mut weights = [_mm512_setzero_si512(); 4];
            let (sc, mins, d, dmin, spread) = if KIND == Q6_K {
                let (ql, qh) = (block, block.add(128));
                let low2 = _mm512_set1_epi8(3);
                for (c, weights) in weights.iter_mut().enumerate() {
                    // Weights 64c..64c + 64: nibbles of ql's half, two bits of each qh byte.
                    let (half, odd) = (c / 2, c % 2 == 1);
                    let l = _mm512_loadu_si512(ql.add(64 * half).cast());
                    let h = _mm256_loadu_si256(qh.add(32 * half).cast());
                    let (low, high) = if odd {
                        let high = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(_mm256_srli_epi16::<4>(h)),
                            _mm256_srli_epi16::<6>(h),
                        );
                        (_mm512_srli_epi16::<4>(l), high)
                    } else {
                        (l, _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<2>(h)))
                    };
                    let low = _mm512_and_si512(low, _mm512_set1_epi8(0x0F));
                    *weights = _mm512_or_si512(low, _mm512_slli_epi16::<4>(_mm512_and_si512(high, low2)));
                }
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(192).cast()));
                let d = f16_at(block.add(208));
                (sc, sc, d, 32.0 * d, &SPREAD_16)
            } else {
                let qs = block.add(if KIND == Q4_K { 16 } else { 48 });
                for (c, weights) in weights.iter_mut().enumerate() {
                    *weights = nibbles(qs.add(32 * c));
                }
                if KIND == Q5_K {
                    // Weight 64c + l has its fifth bit at bit 2c of qh[l], and 64c + 32 + l at
                    // bit 2c + 1.
                    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(block.add(16).cast()));
                    for (c, weights) in weights.iter_mut().enumerate() {
                        let bit = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(_mm256_set1_epi8(1 << (2 * c))),
                            _mm256_set1_epi8(1 << (2 * c + 1)),
                        );
                        let set = _mm512_test_epi8_mask(qh, bit);
                        *weights = _mm512_mask_add_epi8(*weights, set, *weights, _mm512_set1_epi8(16));
                    }
                }
                let both = scales_and_mins(block.add(4));
                let mins = _mm256_permutexvar_epi16(_mm256_loadu_si256(MINS_TWICE.as_ptr().cast()), both);
                (both, mins, f16_at(block), f16_at(block.add(2)), &SPREAD_32)
            };
            let sc = _mm512_castsi256_si512(sc);
            let mut scales = [_mm512_setzero_si512(); 4];
            for c in 0..4 {
                scales[c] = _mm512_permutexvar_epi16(_mm512_loadu_si512(spread[c].as_ptr().cast()), sc);
            }
            SuperBlock { weights, scales, mins, d, dmin }
        }
    }

    /// `R` input rows against one weight row of `KIND`; returns `R`.
    #[inline(always)]
    unsafe fn tile<const KIND: u8, const R: usize>(weights: &[u8], xs: &[Q8KRow], out: &mut [f32]) -> usize {
        let blocks = weights.len() / block_bytes(KIND);
        // SAFETY: the caller's features.
        let (mut sums, mut min_sums) = unsafe { ([_mm512_setzero_ps(); R], [_mm256_setzero_ps(); R]) };
        for b in 0..blocks {
            // SAFETY: the caller's contract: super-block `b` of the row, and of every input row.
            unsafe {
                let block = unpack::<KIND>(weights.as_ptr().add(b * block_bytes(KIND)));
                for (j, x) in xs[..R].iter().enumerate() {
                    let q = x.qs.as_ptr().add(b * QK_K);
                    let mut dots = _mm512_setzero_si512();
                    for c in 0..4 {
                        let pairs =
                            _mm512_maddubs_epi16(block.weights[c], _mm512_loadu_si512(q.add(64 * c).cast()));
                        dots = _mm512_add_epi32(dots, _mm512_madd_epi16(pairs, block.scales[c]));
                    }
                    let xd = *x.d.get_unchecked(b);
                    sums[j] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), _mm512_set1_ps(block.d * xd), sums[j]);
                    let bsums = _mm256_loadu_si256(x.bsums.as_ptr().add(16 * b).cast());
                    let mins = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, block.mins));
                    min_sums[j] = _mm256_fmadd_ps(mins, _mm256_set1_ps(block.dmin * xd), min_sums[j]);
                }
            }
        }
        for ((out, sum), min_sum) in out.iter_mut().zip(sums).zip(min_sums) {
            let mut lanes = [0.0f32; 8];
            // SAFETY: AVX-512F; `lanes` holds eight floats.
            *out = unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), min_sum);
                _mm512_reduce_add_ps(sum)
            } - lanes.iter().sum::<f32>();
        }
        R
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

    /// `blocks` super-blocks of `format` with any bytes for quants and sane f16 scales.
    fn super_blocks(format: BlockFormat, blocks: usize, seed: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> =
            (0..blocks * format.block_bytes()).map(|i| ((i * 131 + 7 + seed * 17) % 251) as u8).collect();
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            let at = if format == BlockFormat::Q6_K { 208 } else { 0 };
            block[at..at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
            if format != BlockFormat::Q6_K {
                block[2..4].copy_from_slice(&f16::from_f32(0.02).to_le_bytes());
            }
        }
        bytes
    }

    /// The integer product equals the dequantized f32 product up to the input's quantization.
    #[test]
    fn k_quant_products_match_dequantized_weights() {
        let cols = 2 * QK_K;
        let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let row = Q8KRow::quantize(&x);
        for format in [BlockFormat::Q4_K, BlockFormat::Q5_K, BlockFormat::Q6_K] {
            let blocks = super_blocks(format, 2, 0);
            let mut dense = vec![0.0f32; cols];
            format.dequantize(&blocks, &mut dense);
            let exact: f32 = dense.iter().zip(&x).map(|(w, x)| w * x).sum();
            let mut got = [0.0f32];
            multiply_row(format, &blocks, std::slice::from_ref(&row), &mut got);
            let scale: f32 = dense.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
            assert!((got[0] - exact).abs() < 0.01 * scale, "{format}: {} vs {exact}", got[0]);
            // The integer sums are exact: the AVX2 path (where this CPU has it) and the portable
            // one agree to the bit; the 512-bit one sums the floats in another order.
            let mut portable = [0.0f32];
            multiply_row_with::<false>(format, &blocks, std::slice::from_ref(&row), &mut portable);
            #[cfg(target_arch = "x86_64")]
            if crate::kernels::cpu::has_avx2() {
                let mut avx2 = [0.0f32];
                // SAFETY: the CPU has AVX2, FMA and F16C.
                unsafe { multiply_row_avx2(format, &blocks, std::slice::from_ref(&row), &mut avx2) };
                assert_eq!(
                    portable[0].to_bits(),
                    avx2[0].to_bits(),
                    "{format}: {} vs {}",
                    portable[0],
                    avx2[0]
                );
            }
            assert!((portable[0] - got[0]).abs() <= 1e-5 * scale, "{format}: {} vs {}", portable[0], got[0]);
        }
    }

    /// The 512-bit tiles against the portable product, for every format and tile size, and each
    /// row the same whatever tile it falls in.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_512_bit_tiles_agree_with_the_portable_product_row_by_row() {
        if !crate::kernels::cpu::has_avx512() {
            return;
        }
        let cols = 3 * QK_K;
        let rows: Vec<Q8KRow> =
            (0..11).map(|j| Q8KRow::quantize(&crate::formats::blocks::testing::values(cols, j))).collect();
        for format in [BlockFormat::Q4_K, BlockFormat::Q5_K, BlockFormat::Q6_K] {
            let weights = super_blocks(format, 3, 5);
            let mut all = [0.0f32; 11];
            // SAFETY: the CPU has AVX-512F, BW and VL.
            unsafe { avx512::multiply_row(format, &weights, &rows, &mut all) };
            let mut portable = [0.0f32; 11];
            multiply_row_with::<false>(format, &weights, &rows, &mut portable);
            for (j, x) in rows.iter().enumerate() {
                assert!(
                    (all[j] - portable[j]).abs() < 1e-3,
                    "{format} row {j}: {} vs {}",
                    all[j],
                    portable[j]
                );
                let mut alone = [0.0f32];
                // SAFETY: as above.
                unsafe { avx512::multiply_row(format, &weights, std::slice::from_ref(x), &mut alone) };
                assert_eq!(alone[0].to_bits(), all[j].to_bits(), "{format} row {j}");
            }
        }
    }
}
