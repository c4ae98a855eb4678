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
/// PyTorch's `[out, in]` layout; where the 512-bit kernels multiply it (`avx512`), with the
/// blocks of each four rows interleaved (`Layout::Interleaved`).
#[derive(Debug)]
pub struct QuantMatrix {
    format: BlockFormat,
    blocks: Vec<u8>,
    layout: Layout,
    rows: usize,
    cols: usize,
}

/// How a matrix's blocks lie in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Row after row, as the file stores them.
    Rows,
    /// Rows in groups of four, the group's blocks in the order block 0 of each row, block 1 of
    /// each row, …; the last group padded with copies of the last row. The 512-bit kernels read
    /// four rows' blocks side by side: from row-major storage those were four streams a page
    /// apart, which the hardware prefetcher does not follow, and decode ran 20% slower.
    Interleaved,
}

impl QuantMatrix {
    /// `blocks` must hold exactly `rows` rows of `cols` elements. They are kept, not copied:
    /// where the kernel wants rows interleaved, each group of rows is rearranged in place.
    pub fn new(format: BlockFormat, mut blocks: Vec<u8>, rows: usize, cols: usize) -> Self {
        let row_bytes = format.bytes_for(cols).unwrap_or(0);
        assert_eq!(
            Some(row_bytes * rows),
            Some(blocks.len()).filter(|_| row_bytes > 0),
            "{format} [{rows}, {cols}]"
        );
        let layout = if interleaves(format) { Layout::Interleaved } else { Layout::Rows };
        if layout == Layout::Interleaved {
            // The last group is filled up with copies of the last row.
            for _ in rows..rows.next_multiple_of(GROUP) {
                blocks.extend_from_within((rows - 1) * row_bytes..rows * row_bytes);
            }
            let block = format.block_bytes();
            let mut rows_of_group = vec![0u8; GROUP * row_bytes];
            for group in blocks.chunks_exact_mut(GROUP * row_bytes) {
                rows_of_group.copy_from_slice(group);
                for (b, out) in group.chunks_exact_mut(GROUP * block).enumerate() {
                    for (i, out) in out.chunks_exact_mut(block).enumerate() {
                        out.copy_from_slice(&rows_of_group[i * row_bytes + b * block..][..block]);
                    }
                }
            }
        }
        Self { format, blocks, layout, rows, cols }
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
        self.format.bytes_for(self.cols).unwrap_or(0)
    }

    /// Row `row`, dequantized and appended to `out`.
    pub fn extend_row(&self, row: usize, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.cols, 0.0);
        let bytes = self.row_bytes();
        match self.layout {
            Layout::Rows => self.format.dequantize(&self.blocks[row * bytes..][..bytes], &mut out[start..]),
            Layout::Interleaved => {
                let (block, len) = (self.format.block_bytes(), self.format.block_len());
                let group = &self.blocks[row / GROUP * GROUP * bytes..][..GROUP * bytes];
                for (b, out) in out[start..].chunks_exact_mut(len).enumerate() {
                    self.format.dequantize(&group[(b * GROUP + row % GROUP) * block..][..block], out);
                }
            }
        }
    }

    /// Bytes of blocks held (with an interleaved matrix's padding rows).
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
        // Whole groups of four rows per task, so that an interleaved group is never split.
        let rows_per_task =
            if parallel { self.rows.div_ceil(tasks).max(8).next_multiple_of(GROUP) } else { self.rows };
        let task = |chunk: usize, out: &mut [f32]| {
            let rows = out.len() / m;
            let stored = if self.layout == Layout::Interleaved { rows.next_multiple_of(GROUP) } else { rows };
            let weights = &self.blocks[chunk * rows_per_task * bytes..][..stored * bytes];
            inputs.multiply_rows(self.format, weights, bytes, out);
        };
        if parallel {
            pool.for_each_chunk(out_t, rows_per_task * m, task);
        } else {
            task(0, out_t);
        }
    }
}

/// Rows per group of an interleaved matrix.
const GROUP: usize = 4;

/// Whether matrices of `format` are stored interleaved: where the 512-bit kernels multiply them.
fn interleaves(format: BlockFormat) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::extensions().avx512_vnni {
        return matches!(
            format,
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0 | BlockFormat::Q5_1 | BlockFormat::Q8_0
        );
    }
    let _ = format;
    false
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
    /// `r` and input `j`; `weights` interleaved (with its last group padded) where the 512-bit
    /// kernels run (`interleaves`).
    fn multiply_rows(&self, format: BlockFormat, weights: &[u8], row_bytes: usize, out: &mut [f32]) {
        let m = match self {
            Self::Q8(rows) => rows.len(),
            Self::Q8K(rows) => rows.len(),
        };
        #[cfg(target_arch = "x86_64")]
        if let Self::Q8(rows) = self
            && crate::kernels::cpu::extensions().avx512_vnni
        {
            // SAFETY: the CPU has AVX512-VNNI with BW and VL, so `weights` is interleaved; every
            // input row has one block per weight block.
            return unsafe { avx512::multiply_rows(format, weights, row_bytes, out.len() / m, rows, out) };
        }
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

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

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
            QuantMatrix::new(format, weights.clone(), 1, cols).multiply_on(
                &[x.as_slice()],
                &mut vector,
                false,
            );
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
        let matrix = QuantMatrix::new(BlockFormat::Q4_0, weights.clone(), rows, cols);
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
