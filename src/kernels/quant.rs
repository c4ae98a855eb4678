//! Products of a matrix of ggml blocks (`formats::blocks`) with a few f32 rows
//! (`QuantMatrix::multiply_into`).
//!
//! The products follow llama.cpp: each input row is quantized once to 8-bit blocks of 32
//! (`Q8_0`, or `Q8_1` with the block's sum for the formats with an offset), and each weight
//! block meets its input block in integer arithmetic, scaled once per block. That is what lets a
//! 4-bit matrix be streamed at 4.5–5 bits per weight rather than widened to 32 first (q5_0 and
//! q5_1 add each element's fifth bit from a 32-bit mask as it is unpacked). The K-quants meet
//! 8-bit super-blocks of 256 (`kernels::kquant`).

use half::f16;

use crate::formats::blocks::{BlockFormat, QK, f16_at};
use crate::kernels::kquant::Q8KRow;

/// An input row quantized to 8-bit blocks of 32, as llama.cpp's vector code quantizes
/// activations (`quantize_row_q8_0/q8_1` on AVX: `q = x · 127/max|x|` rounded half to even;
/// the reference quantizer's `x · (1/d)` rounded half away differs in the last bit now and then,
/// and a 30-layer model amplifies that to 0.1 in the logits): per block the scale `d` (rounded
/// through f16, as ggml stores it) and `s = d · Σq` for the formats with an offset.
#[derive(Debug, Default)]
pub struct Q8Row {
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<i8>,
}

impl Q8Row {
    pub fn quantize(x: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C.
            return unsafe { Self::quantize_avx2(x) };
        }
        Self::quantize_portable(x)
    }

    /// llama.cpp's AVX2 `quantize_row_q8_0`: eight lanes for the maximum, the scaling, the
    /// rounding (`vroundps`, half to even) and the packing to bytes. The same loops left to the
    /// compiler stayed scalar in the maximum and the saturating casts: 60 ns a block, 4% of a
    /// decode step of the embedded target, during which the pool's worker waits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quantize_avx2(x: &[f32]) -> Self {
        use std::arch::x86_64::*;
        debug_assert_eq!(x.len() % QK, 0);
        let blocks = x.len() / QK;
        let mut row =
            Self { d: Vec::with_capacity(blocks), s: Vec::with_capacity(blocks), qs: vec![0; x.len()] };
        let sign = _mm256_set1_ps(-0.0);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (block, qs) in x.chunks_exact(QK).zip(row.qs.chunks_exact_mut(QK)) {
            // SAFETY: each block holds 32 values and 32 bytes.
            unsafe {
                let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block.as_ptr().add(8 * i)));
                let abs = v.map(|v| _mm256_andnot_ps(sign, v));
                let max8 = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
                let max4 = _mm_max_ps(_mm256_extractf128_ps::<1>(max8), _mm256_castps256_ps128(max8));
                let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
                let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
                let d = amax / 127.0;
                let id = _mm256_set1_ps(if amax == 0.0 { 0.0 } else { 127.0 / amax });
                let q = v.map(|v| {
                    _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                        _mm256_mul_ps(v, id),
                    ))
                });
                let sum8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let sum4 = _mm_add_epi32(_mm256_extracti128_si256::<1>(sum8), _mm256_castsi256_si128(sum8));
                let sum2 = _mm_add_epi32(sum4, _mm_unpackhi_epi64(sum4, sum4));
                let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum2, _mm_shuffle_epi32::<1>(sum2)));
                // Packing interleaves 128-bit lanes; the permutation puts the bytes back in order.
                let bytes =
                    _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
                _mm256_storeu_si256(qs.as_mut_ptr().cast(), _mm256_permutevar8x32_epi32(bytes, order));
                row.d.push(f16::from_f32(d).to_f32());
                row.s.push(f16::from_f32(sum as f32 * d).to_f32());
            }
        }
        row
    }

    #[inline(always)]
    fn quantize_portable(x: &[f32]) -> Self {
        debug_assert_eq!(x.len() % QK, 0);
        let mut row = Self {
            d: Vec::with_capacity(x.len() / QK),
            s: Vec::with_capacity(x.len() / QK),
            qs: vec![0; x.len()],
        };
        for (block, qs) in x.chunks_exact(QK).zip(row.qs.chunks_exact_mut(QK)) {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
            for (q, &v) in qs.iter_mut().zip(block) {
                *q = (v * id).round_ties_even() as i8;
            }
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            row.d.push(f16::from_f32(d).to_f32());
            row.s.push(f16::from_f32(sum as f32 * d).to_f32());
        }
        row
    }
}

/// A matrix `[rows, cols]` of quantized blocks, each row `cols / block_len` blocks, in
/// PyTorch's `[out, in]` layout.
#[derive(Debug)]
pub struct QuantMatrix {
    format: BlockFormat,
    blocks: aligned_vec::AVec<u8, aligned_vec::ConstAlign<64>>,
    rows: usize,
    cols: usize,
}

impl QuantMatrix {
    /// `blocks` must hold exactly `rows` rows of `cols` elements.
    pub fn new(format: BlockFormat, blocks: &[u8], rows: usize, cols: usize) -> Self {
        assert_eq!(format.bytes_for(cols).map(|b| b * rows), Some(blocks.len()), "{format} [{rows}, {cols}]");
        Self { format, blocks: aligned_vec::AVec::from_slice(64, blocks), rows, cols }
    }

    pub fn format(&self) -> BlockFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.blocks.len() / self.rows
    }

    /// Row `row`, dequantized and appended to `out`.
    pub fn extend_row(&self, row: usize, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.cols, 0.0);
        let bytes = self.row_bytes();
        self.format.dequantize(&self.blocks[row * bytes..][..bytes], &mut out[start..]);
    }

    /// Bytes of blocks held.
    pub fn bytes(&self) -> usize {
        self.blocks.len()
    }

    /// `out_t: [rows, m]` (transposed) = this matrix times each of the `m` input rows, on the
    /// thread pool when the matrix is large enough to be worth it.
    pub fn multiply_into(&self, x_rows: &[&[f32]], out_t: &mut [f32]) {
        self.multiply_on(x_rows, out_t, crate::kernels::matvec::worth_parallel(self.rows * self.cols));
    }

    fn multiply_on(&self, x_rows: &[&[f32]], out_t: &mut [f32], parallel: bool) {
        let m = x_rows.len();
        let inputs = Inputs::prepare(self.format, x_rows);
        let bytes = self.row_bytes();
        let pool = crate::kernels::pool::Pool::global();
        let tasks = tasks_per_thread(self.rows * self.cols) * pool.threads();
        let rows_per_task = if parallel { self.rows.div_ceil(tasks).max(8) } else { self.rows };
        let task = |chunk: usize, out: &mut [f32]| {
            let weights = &self.blocks[chunk * rows_per_task * bytes..][..out.len() / m * bytes];
            inputs.multiply_rows(self.format, weights, bytes, out);
        };
        if parallel {
            pool.for_each_chunk(out_t, rows_per_task * m, task);
        } else {
            task(0, out_t);
        }
    }
}

/// Below this many weights a product is split into one pool task per thread, above it into four.
/// Four balance the threads' shares when one is slowed by anything else; for the small,
/// cache-resident matrices of draft-sized models each extra task's hand-off (a claim and a
/// completion on cache lines both threads write) costs more than the balance saves
/// (docs/performance.md, "Tuning constants").
const BALANCED_MIN_WEIGHTS: usize = 1 << 20;

fn tasks_per_thread(weights: usize) -> usize {
    if weights < BALANCED_MIN_WEIGHTS { 1 } else { 4 }
}

/// The input rows in the form the weight format multiplies with.
enum Inputs {
    Q8(Vec<Q8Row>),
    Q8K(Vec<Q8KRow>),
}

impl Inputs {
    fn prepare(format: BlockFormat, x_rows: &[&[f32]]) -> Self {
        match format {
            BlockFormat::Q4_0
            | BlockFormat::Q4_1
            | BlockFormat::Q5_0
            | BlockFormat::Q5_1
            | BlockFormat::Q8_0 => Self::Q8(x_rows.iter().map(|x| Q8Row::quantize(x)).collect()),
            BlockFormat::Q4_K | BlockFormat::Q5_K | BlockFormat::Q6_K => {
                Self::Q8K(x_rows.iter().map(|x| Q8KRow::quantize(x)).collect())
            }
        }
    }

    /// Weight rows of `row_bytes` each against every input row: `out[r · m + j]` for weight row
    /// `r` and input `j`.
    fn multiply_rows(&self, format: BlockFormat, weights: &[u8], row_bytes: usize, out: &mut [f32]) {
        let m = match self {
            Self::Q8(rows) => rows.len(),
            Self::Q8K(rows) => rows.len(),
        };
        for (weights, out) in weights.chunks_exact(row_bytes).zip(out.chunks_mut(m)) {
            match self {
                Self::Q8(rows) => {
                    #[cfg(target_arch = "x86_64")]
                    if crate::kernels::cpu::has_avx2() {
                        // SAFETY: the CPU has AVX2, FMA and F16C; every input row has one block
                        // per weight block.
                        unsafe { avx2::multiply_row(format, weights, rows, out) };
                        continue;
                    }
                    #[cfg(target_arch = "aarch64")]
                    if crate::kernels::cpu::isa() == crate::kernels::cpu::Isa::Neon {
                        neon::multiply_row(format, weights, rows, out);
                        continue;
                    }
                    for (o, x) in out.iter_mut().zip(rows) {
                        *o = dot_q8_scalar(format, weights, x);
                    }
                }
                Self::Q8K(rows) => crate::kernels::kquant::multiply_row(format, weights, rows, out),
            }
        }
    }
}

/// A weight row in `format` against an f32 row, one dequantized block at a time: the exact
/// product the integer kernels are tested against.
#[cfg(test)]
fn dot_dequantized(format: BlockFormat, weights: &[u8], x: &[f32]) -> f32 {
    let mut buffer = [0.0f32; crate::formats::blocks::QK_K];
    let len = format.block_len();
    let mut sum = 0.0;
    for (block, x) in weights.chunks_exact(format.block_bytes()).zip(x.chunks_exact(len)) {
        format.dequantize(block, &mut buffer[..len]);
        sum += crate::kernels::dot(&buffer[..len], x);
    }
    sum
}

/// The portable integer dot product, also the reference the vector path is tested against.
fn dot_q8_scalar(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
    let blocks = weights.chunks_exact(format.block_bytes());
    let mut sum = 0.0f32;
    for (b, block) in blocks.enumerate() {
        let xq = &x.qs[b * QK..][..QK];
        // Σ q·x in integers, and the block's minimum for the formats with one.
        let (dot, min) = match format {
            BlockFormat::Q8_0 => {
                (block[2..34].iter().zip(xq).map(|(&w, &q)| w as i8 as i32 * q as i32).sum::<i32>(), None)
            }
            BlockFormat::Q4_0 => (nibble_dot(&block[2..18], xq, 8), None),
            BlockFormat::Q4_1 => (nibble_dot(&block[4..20], xq, 0), Some(f16_at(block, 2))),
            BlockFormat::Q5_0 => (five_bit_dot(&block[2..22], xq, 16), None),
            BlockFormat::Q5_1 => (five_bit_dot(&block[4..24], xq, 0), Some(f16_at(block, 2))),
            _ => unreachable!("only 8-bit-input formats reach dot_q8"),
        };
        sum += f16_at(block, 0) * x.d[b] * dot as f32 + min.map_or(0.0, |m| m * x.s[b]);
    }
    sum
}

/// Σ (nibble − offset) · q over a block: low nibbles are elements 0..16, high ones 16..32.
fn nibble_dot(qs: &[u8], xq: &[i8], offset: i32) -> i32 {
    qs.iter()
        .enumerate()
        .map(|(j, &q)| {
            ((q & 0x0F) as i32 - offset) * xq[j] as i32 + ((q >> 4) as i32 - offset) * xq[j + 16] as i32
        })
        .sum()
}

/// Σ (q − offset) · x over a Q5 block's `qh` (the fifth bits, element j at bit j) and nibbles.
fn five_bit_dot(qh_qs: &[u8], xq: &[i8], offset: i32) -> i32 {
    let qh = u32::from_le_bytes([qh_qs[0], qh_qs[1], qh_qs[2], qh_qs[3]]);
    let fifth = |j: usize| (((qh >> j) & 1) << 4) as i32;
    qh_qs[4..20]
        .iter()
        .enumerate()
        .map(|(j, &q)| {
            let low = ((q & 0x0F) as i32 | fifth(j)) - offset;
            let high = ((q >> 4) as i32 | fifth(j + 16)) - offset;
            low * xq[j] as i32 + high * xq[j + 16] as i32
        })
        .sum()
}

/// The formats with 8-bit-input kernels as const-generic parameters, so that each vector kernel
/// is compiled once per format and no block branches on it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod kind {
    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q8_0: u8 = 2;
    pub const Q5_0: u8 = 3;
    pub const Q5_1: u8 = 4;
}

/// `$call::<KIND, $konst…>($arg…)` for `$format`'s kind (`kind`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! for_kind {
    ($format:expr, $call:ident, [$($konst:ident),*], ($($arg:expr),*)) => {
        match $format {
            BlockFormat::Q4_0 => $call::<{ super::kind::Q4_0 } $(, $konst)*>($($arg),*),
            BlockFormat::Q4_1 => $call::<{ super::kind::Q4_1 } $(, $konst)*>($($arg),*),
            BlockFormat::Q5_0 => $call::<{ super::kind::Q5_0 } $(, $konst)*>($($arg),*),
            BlockFormat::Q5_1 => $call::<{ super::kind::Q5_1 } $(, $konst)*>($($arg),*),
            BlockFormat::Q8_0 => $call::<{ super::kind::Q8_0 } $(, $konst)*>($($arg),*),
            _ => unreachable!("only 8-bit-input formats have integer kernels"),
        }
    };
}

/// The integer products on ARM: each block's Σ q·x in NEON registers (`sdot` where the CPU has
/// the dot product extension, widening multiplies elsewhere), then the block scaled and summed
/// in the portable path's order, so that the result equals `dot_q8_scalar` bit for bit.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::kind::{Q4_0, Q4_1, Q5_0, Q8_0};
    use super::{BlockFormat, Q8Row, QK};

    pub(super) fn multiply_row(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
        let sdot = crate::kernels::cpu::extensions().dotprod;
        for (o, x) in out.iter_mut().zip(rows) {
            // SAFETY: NEON is AArch64's baseline; `sdot` only where the CPU has it. Every input
            // row has one block of 32 per weight block.
            *o =
                unsafe { if sdot { dot_sdot(format, weights, x) } else { dot_widening(format, weights, x) } };
        }
    }

    #[target_feature(enable = "dotprod")]
    pub(super) unsafe fn dot_sdot(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
        // SAFETY: as `multiply_row`'s.
        unsafe { dot::<true>(format, weights, x) }
    }

    pub(super) unsafe fn dot_widening(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
        // SAFETY: as `multiply_row`'s.
        unsafe { dot::<false>(format, weights, x) }
    }

    #[inline(always)]
    unsafe fn dot<const SDOT: bool>(format: BlockFormat, weights: &[u8], x: &Q8Row) -> f32 {
        // SAFETY: as `multiply_row`'s.
        unsafe { for_kind!(format, dot_of, [SDOT], (format, weights, x)) }
    }

    #[inline(always)]
    unsafe fn dot_of<const KIND: u8, const SDOT: bool>(
        format: BlockFormat,
        weights: &[u8],
        x: &Q8Row,
    ) -> f32 {
        let mut sum = 0.0f32;
        for (b, block) in weights.chunks_exact(format.block_bytes()).enumerate() {
            // SAFETY: a block of `format` and 32 input bytes at `b · QK`.
            unsafe {
                let xq = x.qs.as_ptr().add(b * QK);
                let (x0, x1) = (vld1q_s8(xq), vld1q_s8(xq.add(16)));
                let p = block.as_ptr();
                let ((w0, w1), min) = match KIND {
                    Q8_0 => ((vld1q_s8(p.add(2).cast()), vld1q_s8(p.add(18).cast())), None),
                    Q4_0 => (nibbles(p.add(2), 8), None),
                    Q4_1 => (nibbles(p.add(4), 0), Some(f16_load(p.add(2)))),
                    Q5_0 => (five_bits(p.add(2), 16), None),
                    _ => (five_bits(p.add(4), 0), Some(f16_load(p.add(2)))),
                };
                let acc = dot16::<SDOT>(dot16::<SDOT>(vdupq_n_s32(0), w0, x0), w1, x1);
                let dot = vaddvq_s32(acc);
                let (xd, xs) = (*x.d.get_unchecked(b), *x.s.get_unchecked(b));
                // The portable path's expression, in its order.
                sum += f16_load(p) * xd * dot as f32 + min.map_or(0.0, |m| m * xs);
            }
        }
        sum
    }

    /// `acc` plus the sums of four products of `a` and `b` in each lane.
    #[inline(always)]
    unsafe fn dot16<const SDOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: `sdot` is reached only from `dot_sdot`, compiled for the dot product extension.
        unsafe {
            if SDOT {
                sdot(acc, a, b)
            } else {
                let low = vmull_s8(vget_low_s8(a), vget_low_s8(b));
                let high = vmull_high_s8(a, b);
                vpadalq_s16(vpadalq_s16(acc, low), high)
            }
        }
    }

    /// `sdot` through inline assembly: its intrinsic (`vdotq_s32`) is not stable Rust yet.
    #[target_feature(enable = "dotprod")]
    #[inline]
    unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: the CPU has the dot product extension (the caller's target feature).
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// The f16 at `p` as f32, by the conversion every AArch64 CPU has (`fcvt`; exact, as
    /// `half`'s is): `half` converts in software unless built for FEAT_FP16, a call per block.
    #[inline(always)]
    unsafe fn f16_load(p: *const u8) -> f32 {
        let out: f32;
        // SAFETY: two readable bytes at `p` (any alignment: `ldr h` of a byte address).
        unsafe {
            std::arch::asm!(
                "ldr {h:h}, [{p}]",
                "fcvt {out:s}, {h:h}",
                p = in(reg) p,
                h = out(vreg) _,
                out = lateout(vreg) out,
                options(pure, readonly, nostack, preserves_flags)
            );
        }
        out
    }

    /// 16 bytes of nibbles as elements 0..16 (low) and 16..32 (high), less `offset`.
    #[inline(always)]
    unsafe fn nibbles(qs: *const u8, offset: u8) -> (int8x16_t, int8x16_t) {
        // SAFETY: 16 readable bytes at `qs`.
        unsafe {
            let q = vld1q_u8(qs);
            let low = vsubq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), vdupq_n_u8(offset));
            let high = vsubq_u8(vshrq_n_u8::<4>(q), vdupq_n_u8(offset));
            (vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high))
        }
    }

    /// A Q5 block's `qh` (element j's fifth bit at bit j) and nibbles as elements 0..16 and
    /// 16..32, less `offset`.
    #[inline(always)]
    unsafe fn five_bits(qh_qs: *const u8, offset: u8) -> (int8x16_t, int8x16_t) {
        const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        // SAFETY: 4 bytes of `qh` and 16 of nibbles at `qh_qs`.
        unsafe {
            let qh = std::slice::from_raw_parts(qh_qs, 4);
            let bit = vld1q_u8(BIT.as_ptr());
            // Each byte of `qh` spread over eight lanes, tested against its own bit.
            let fifth = |lo: u8, hi: u8| {
                let spread = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
                vandq_u8(vtstq_u8(spread, bit), vdupq_n_u8(0x10))
            };
            let q = vld1q_u8(qh_qs.add(4));
            let low = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), fifth(qh[0], qh[1]));
            let high = vorrq_u8(vshrq_n_u8::<4>(q), fifth(qh[2], qh[3]));
            let offset = vdupq_n_u8(offset);
            (vreinterpretq_s8_u8(vsubq_u8(low, offset)), vreinterpretq_s8_u8(vsubq_u8(high, offset)))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::{BlockFormat, Q8Row, QK, dot_q8_scalar};
        use super::*;

        /// Both NEON variants (`sdot` where this CPU has it) equal the portable dot bit for bit,
        /// for every format.
        #[test]
        fn neon_kernels_equal_the_scalar_dot_bit_for_bit() {
            let cols = 6 * QK;
            let rows: Vec<Q8Row> =
                (0..5).map(|j| Q8Row::quantize(&crate::formats::blocks::testing::values(cols, j))).collect();
            for format in [
                BlockFormat::Q4_0,
                BlockFormat::Q4_1,
                BlockFormat::Q5_0,
                BlockFormat::Q5_1,
                BlockFormat::Q8_0,
            ] {
                let weights = crate::formats::blocks::testing::blocks(format, cols, 99);
                for x in &rows {
                    let want = dot_q8_scalar(format, &weights, x);
                    // SAFETY: NEON is the baseline.
                    assert_eq!(
                        unsafe { dot_widening(format, &weights, x) }.to_bits(),
                        want.to_bits(),
                        "{format}"
                    );
                    if crate::kernels::cpu::extensions().dotprod {
                        // SAFETY: the CPU has the dot product extension.
                        assert_eq!(
                            unsafe { dot_sdot(format, &weights, x) }.to_bits(),
                            want.to_bits(),
                            "{format} sdot"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockFormat, Q8Row, QK};
    use crate::kernels::x86::f16_at;

    /// Input rows per pass over a weight row: each unpacked weight block serves all of them.
    const TILE: usize = 4;
    const PREFETCH_AHEAD_BYTES: usize = 4096;

    use super::kind::{Q4_0, Q4_1, Q5_0, Q5_1};

    // How 32 unsigned × signed bytes are summed into i32 lanes: AVX2's `vpmaddubsw` +
    // `vpmaddwd`, or one `vpdpbusd`, VEX-encoded (AVX-VNNI: Intel since Alder Lake, AMD Zen 5) or
    // EVEX-encoded on 256-bit registers (AVX512-VNNI with AVX512VL: Intel since Cascade Lake, AMD
    // Zen 4).
    const DOT_AVX2: u8 = 0;
    const DOT_AVX_VNNI: u8 = 1;
    const DOT_AVX512_VNNI: u8 = 2;

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
            } else if extensions.avx512_vnni {
                multiply_row_avx512_vnni(format, weights, rows, out)
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

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn multiply_row_avx512_vnni(format: BlockFormat, weights: &[u8], rows: &[Q8Row], out: &mut [f32]) {
        // SAFETY: the caller's contract.
        unsafe { tiles::<DOT_AVX512_VNNI>(format, weights, rows, out) }
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
                DOT_AVX512_VNNI => _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
                _ => _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
            };
            _mm256_cvtepi32_ps(sums)
        }
    }

    /// `TILE` or fewer input rows (`R`) against one weight row of format `KIND`.
    #[inline(always)]
    unsafe fn tile<const KIND: u8, const R: usize, const DOT: u8>(
        weights: &[u8],
        xs: &[Q8Row],
        out: &mut [f32],
    ) {
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
                        let high =
                            _mm256_andnot_si256(fifth_bits(block.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
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
            for format in [
                BlockFormat::Q4_0,
                BlockFormat::Q4_1,
                BlockFormat::Q5_0,
                BlockFormat::Q5_1,
                BlockFormat::Q8_0,
            ] {
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
                if crate::kernels::cpu::extensions().avx512_vnni {
                    let mut out = [0.0f32; 7];
                    // SAFETY: and AVX512-VNNI with AVX512VL here.
                    unsafe { multiply_row_avx512_vnni(format, &weights, &rows, &mut out) };
                    variants.push(("avx512-vnni", out));
                }
                for (name, got) in variants {
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-4, "{format} {name}: {g} vs {w}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::blocks::testing::{blocks, values};

    #[test]
    fn input_rows_quantize_alike_on_the_vector_and_the_portable_path() {
        // Random rows, a zero block, and halves that round to even (0.5 · 127/127 steps).
        let mut x = values(8 * QK, 3);
        x[QK..2 * QK].fill(0.0);
        for (i, v) in x[2 * QK..3 * QK].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { (i as f32 % 5.0) - 2.5 };
        }
        let (vector, portable) = (Q8Row::quantize(&x), Q8Row::quantize_portable(&x));
        assert_eq!(vector.qs, portable.qs);
        assert_eq!(vector.d, portable.d);
        assert_eq!(vector.s, portable.s);
    }

    #[test]
    fn the_vector_dot_agrees_with_the_scalar_one_and_with_dequantized_weights() {
        let cols = 8 * QK;
        let x = values(cols, 11);
        let row = Q8Row::quantize(&x);
        let cases = [
            (BlockFormat::Q8_0, BlockFormat::Q8_0.quantize(&values(cols, 5)).unwrap()),
            (BlockFormat::Q4_0, BlockFormat::Q4_0.quantize(&values(cols, 5)).unwrap()),
            (BlockFormat::Q4_1, blocks(BlockFormat::Q4_1, cols, 5)),
            (BlockFormat::Q5_0, blocks(BlockFormat::Q5_0, cols, 5)),
            (BlockFormat::Q5_1, blocks(BlockFormat::Q5_1, cols, 5)),
        ];
        for (format, weights) in cases {
            let scalar = dot_q8_scalar(format, &weights, &row);
            let mut vector = [0.0f32];
            Inputs::Q8(vec![Q8Row::quantize(&x)]).multiply_rows(format, &weights, weights.len(), &mut vector);
            let vector = vector[0];
            let exact = dot_dequantized(format, &weights, &x);
            assert!((scalar - vector).abs() < 1e-4, "{format}: {scalar} vs {vector}");
            // Quantizing the input costs at most half a step of 1/127 of each block's maximum.
            assert!((scalar - exact).abs() < 0.05, "{format}: {scalar} vs {exact}");
        }
    }

    #[test]
    fn a_matrix_product_matches_row_by_row_dots_serial_and_parallel() {
        let (rows, cols) = (37, 4 * QK);
        let weights = BlockFormat::Q4_0.quantize(&values(rows * cols, 9)).unwrap();
        let matrix = QuantMatrix::new(BlockFormat::Q4_0, &weights, rows, cols);
        let xs: Vec<Vec<f32>> = (0..3).map(|j| values(cols, j)).collect();
        let x_rows: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let (mut serial, mut parallel) = (vec![0.0; rows * 3], vec![0.0; rows * 3]);
        matrix.multiply_on(&x_rows, &mut serial, false);
        matrix.multiply_on(&x_rows, &mut parallel, true);
        assert_eq!(serial, parallel);
        let row_bytes = weights.len() / rows;
        for r in 0..rows {
            for j in 0..3 {
                let weights = &weights[r * row_bytes..][..row_bytes];
                let want = dot_q8_scalar(BlockFormat::Q4_0, weights, &Q8Row::quantize(&xs[j]));
                assert!((serial[r * 3 + j] - want).abs() < 1e-4, "row {r} input {j}");
            }
        }
    }
}
