//! The host kernel for the few-row products of decoding: `y = x · Wᵀ` with `W` in PyTorch's
//! `[out, in]` layout and `x` holding a handful of rows.
//!
//! Decoding one token reads every weight once and does two flops per weight, so its speed is
//! the speed of streaming the weights from memory. Burn's CPU backends do not reach it on these
//! shapes: ndarray's matrixmultiply repacks the whole weight matrix on every call and runs its
//! 8-row micro-kernel on one real row; flex's matrix–vector path runs on one thread, and one
//! core alone cannot draw the machine's read bandwidth. Here every core streams its own block
//! of contiguous weight rows, and each row, once in cache, is dotted with up to `TILE` input
//! rows before the next is read, so a verify block of k + 1 tokens costs about one token.

#[cfg(target_arch = "x86_64")]
use crate::kernels::cpu;

/// Input rows per block: with two weight rows that is eight accumulators, which fit the 16 AVX
/// registers beside the loaded vectors.
const TILE: usize = 4;
/// f32 lanes per AVX vector.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 8;
/// How far ahead in each weight row to prefetch, in bytes: worth ~5% of read bandwidth here on
/// top of the hardware prefetcher, which handles four interleaved streams less well.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD_BYTES: usize = 4096;

/// A weight element the kernel multiplies: f32, or bf16/f16 widened to f32 in registers, so a
/// half-precision matrix is streamed at half the bytes and accumulated in f32.
pub trait WeightElement: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(value: f32) -> Self;
    /// Eight elements at `ptr` as f32 lanes.
    ///
    /// # Safety
    /// `ptr` points at eight readable elements and the CPU has AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen elements at `ptr` as f32 lanes.
    ///
    /// # Safety
    /// `ptr` points at sixteen readable elements and the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512;
}

impl WeightElement for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(ptr) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(ptr) }
    }
}

impl WeightElement for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(value: f32) -> Self {
        half::bf16::from_f32(value)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32: widen each to 32 bits and shift it up.
        // SAFETY: the caller's contract; eight bf16 are 16 bytes.
        unsafe {
            let halves = _mm_loadu_si128(ptr as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; sixteen bf16 are 32 bytes.
        unsafe {
            let halves = _mm256_loadu_si256(ptr as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        }
    }
}

impl WeightElement for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(value: f32) -> Self {
        half::f16::from_f32(value)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; F16C converts eight halves at once.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(ptr as *const __m128i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; sixteen halves are 32 bytes.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(ptr as *const __m256i)) }
    }
}

/// Weight rows per parallel task: long enough runs of contiguous rows that each thread streams
/// (and its prefetcher follows) one region, few enough claims per product (docs/performance.md,
/// "Tuning constants").
const ROWS_PER_TASK: usize = 64;
/// Below this many weights a matrix is multiplied on the calling thread: handing it to the pool
/// costs more than it saves (docs/performance.md, "Tuning constants").
const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;

/// Whether a matrix of `weights` elements is worth the thread pool (see `PARALLEL_MIN_WEIGHTS`).
pub fn worth_parallel(weights: usize) -> bool {
    weights >= PARALLEL_MIN_WEIGHTS
}

/// `x: [m, cols]` times `weight: [rows, cols]` transposed, into `[m, rows]`.
pub fn matmul_transposed<W: WeightElement>(
    x: &[f32],
    m: usize,
    weight: &[W],
    rows: usize,
    cols: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), m * cols, "input is not [{m}, {cols}]");
    assert_eq!(weight.len(), rows * cols, "weight is not [{rows}, {cols}]");
    if m == 0 || rows == 0 {
        return Vec::new();
    }
    let x_rows: Vec<&[f32]> = x.chunks_exact(cols).collect();
    let mut out_t = vec![0.0f32; rows * m];
    multiply_rows_into(&x_rows, weight, cols, &mut out_t);
    transpose_outputs(out_t, m, rows)
}

/// `out_t: [rows, m]` = `weight: [rows, cols]` times each of the `m` input rows: each task
/// writes its weight rows' outputs contiguously.
pub fn multiply_rows_into<W: WeightElement>(x_rows: &[&[f32]], weight: &[W], cols: usize, out_t: &mut [f32]) {
    let m = x_rows.len();
    if m == 0 || weight.is_empty() {
        return;
    }
    debug_assert_eq!(out_t.len() / m * cols, weight.len());
    let task = |(block, out): (usize, &mut [f32])| {
        let rows_here = out.len() / m;
        let weight = &weight[block * ROWS_PER_TASK * cols..][..rows_here * cols];
        multiply_block(weight, cols, x_rows, out);
    };
    if worth_parallel(weight.len()) {
        crate::kernels::pool::Pool::global()
            .for_each_chunk(out_t, ROWS_PER_TASK * m, |i, out| task((i, out)));
    } else {
        out_t.chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(task);
    }
}

/// `[rows, m]` to `[m, rows]` (nothing to move for one row), sixteen rows at a time: element by
/// element, each write of a long matrix (an MLP's 3072 rows, the head's 49152) landed in another
/// cache line, and a prefill of 65 rows spent a seventh of its time here.
pub fn transpose_outputs(out_t: Vec<f32>, m: usize, rows: usize) -> Vec<f32> {
    const BLOCK: usize = 16;
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0.0f32; m * rows];
    for (b, block) in out_t.chunks(BLOCK * m).enumerate() {
        let height = block.len() / m;
        for j in 0..m {
            let run = &mut out[j * rows + b * BLOCK..][..height];
            for (r, o) in run.iter_mut().enumerate() {
                *o = block[r * m + j];
            }
        }
    }
    out
}

/// Weight rows `[rows_here, cols]` against every input row into `out: [rows_here, m]`: blocks of
/// `RW` weight rows by `R` input rows, so that each loaded vector serves several products and
/// several weight streams are in flight at once.
fn multiply_block<W: WeightElement>(weight: &[W], cols: usize, x_rows: &[&[f32]], out: &mut [f32]) {
    let m = x_rows.len();
    for (block, out) in weight.chunks(4 * cols).zip(out.chunks_mut(4 * m)) {
        if block.len() < 4 * cols {
            // The last few rows of a matrix whose height is not a multiple of 4.
            for (i, w) in block.chunks_exact(cols).enumerate() {
                for (j, x) in x_rows.iter().enumerate() {
                    out[i * m + j] = dot(w, x);
                }
            }
            continue;
        }
        let ws: [&[W]; 4] = std::array::from_fn(|i| &block[i * cols..][..cols]);
        for (t, xs) in x_rows.chunks(TILE).enumerate() {
            match xs.len() {
                1 => scatter(out, m, t, &dot_block::<W, 4, 1>(&ws, xs)),
                2 => scatter(out, m, t, &dot_block::<W, 4, 2>(&ws, xs)),
                3 => {
                    scatter(out, m, t, &dot_block::<W, 2, 3>(&ws[..2], xs));
                    scatter(&mut out[2 * m..], m, t, &dot_block::<W, 2, 3>(&ws[2..], xs));
                }
                _ => {
                    scatter(out, m, t, &dot_block::<W, 2, 4>(&ws[..2], xs));
                    scatter(&mut out[2 * m..], m, t, &dot_block::<W, 2, 4>(&ws[2..], xs));
                }
            }
        }
    }
}

/// Writes a block's products `[RW][R]` for input tile `t` into `out: [rows, m]`.
fn scatter<const RW: usize, const R: usize>(out: &mut [f32], m: usize, t: usize, block: &[[f32; R]; RW]) {
    for (i, row) in block.iter().enumerate() {
        out[i * m + t * TILE..][..R].copy_from_slice(row);
    }
}

fn dot_block<W: WeightElement, const RW: usize, const R: usize>(
    ws: &[&[W]],
    xs: &[&[f32]],
) -> [[f32; R]; RW] {
    debug_assert!(ws.len() == RW && xs.len() == R);
    debug_assert!(ws.iter().all(|w| w.len() == ws[0].len()) && xs.iter().all(|x| x.len() == ws[0].len()));
    #[cfg(target_arch = "x86_64")]
    if cpu::has_avx512() {
        // SAFETY: the CPU has the features the function is compiled for, and all rows have
        // one length.
        return unsafe { dot_block_avx512::<W, RW, R>(ws, xs) };
    }
    #[cfg(target_arch = "x86_64")]
    if cpu::has_avx2() {
        // SAFETY: as above.
        return unsafe { dot_block_avx2::<W, RW, R>(ws, xs) };
    }
    std::array::from_fn(|i| std::array::from_fn(|j| dot(ws[i], xs[j])))
}

fn dot<W: WeightElement>(w: &[W], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

/// One 8-lane accumulator per (weight row, input row) pair; each vector is loaded once per step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_block_avx2<W: WeightElement, const RW: usize, const R: usize>(
    ws: &[&[W]],
    xs: &[&[f32]],
) -> [[f32; R]; RW] {
    use std::arch::x86_64::*;
    let n = ws[0].len();
    let split = n / LANES * LANES;
    let mut acc = [[_mm256_setzero_ps(); R]; RW];
    let w_ptrs: [*const W; RW] = std::array::from_fn(|i| ws[i].as_ptr());
    let ahead = PREFETCH_AHEAD_BYTES / std::mem::size_of::<W>();
    let x_ptrs: [*const f32; R] = std::array::from_fn(|j| xs[j].as_ptr());
    let mut k = 0;
    while k < split {
        // SAFETY: k + 8 <= n, the length of every row.
        unsafe {
            let xv: [__m256; R] = std::array::from_fn(|j| _mm256_loadu_ps(x_ptrs[j].add(k)));
            for i in 0..RW {
                _mm_prefetch::<_MM_HINT_T0>(w_ptrs[i].wrapping_add(k + ahead) as *const i8);
                let wv = W::load8(w_ptrs[i].add(k));
                for j in 0..R {
                    acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
                }
            }
        }
        k += LANES;
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let mut lanes = [0.0f32; LANES];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
            lanes.iter().sum::<f32>() + dot(&ws[i][split..], &xs[j][split..])
        })
    })
}

/// `dot_block_avx2` sixteen lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_block_avx512<W: WeightElement, const RW: usize, const R: usize>(
    ws: &[&[W]],
    xs: &[&[f32]],
) -> [[f32; R]; RW] {
    use std::arch::x86_64::*;
    const WIDE: usize = 16;
    let n = ws[0].len();
    let split = n / WIDE * WIDE;
    let mut acc = [[_mm512_setzero_ps(); R]; RW];
    let w_ptrs: [*const W; RW] = std::array::from_fn(|i| ws[i].as_ptr());
    let ahead = PREFETCH_AHEAD_BYTES / std::mem::size_of::<W>();
    let x_ptrs: [*const f32; R] = std::array::from_fn(|j| xs[j].as_ptr());
    let mut k = 0;
    while k < split {
        // SAFETY: k + 16 <= n, the length of every row.
        unsafe {
            let xv: [__m512; R] = std::array::from_fn(|j| _mm512_loadu_ps(x_ptrs[j].add(k)));
            for i in 0..RW {
                _mm_prefetch::<_MM_HINT_T0>(w_ptrs[i].wrapping_add(k + ahead) as *const i8);
                let wv = W::load16(w_ptrs[i].add(k));
                for j in 0..R {
                    acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
                }
            }
        }
        k += WIDE;
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|j| _mm512_reduce_add_ps(acc[i][j]) + dot(&ws[i][split..], &xs[j][split..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * rows];
        for i in 0..m {
            for r in 0..rows {
                out[i * rows + r] =
                    (0..cols).map(|c| x[i * cols + c] as f64 * w[r * cols + c] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn matches_a_plain_triple_loop_for_every_tile_remainder_and_lane_tail() {
        // cols = 37 leaves a lane tail; m = 1..9 covers full tiles and each remainder; rows
        // that do not fill the last task block; the last matrix is large enough to go parallel.
        const { assert!(2100 * 513 >= PARALLEL_MIN_WEIGHTS, "the last shape must take the parallel path") };
        for (rows, cols) in [(5, 37), (33, 64), (600, 513), (2100, 513)] {
            let w = values(rows * cols, 7);
            for m in 1..=9 {
                let x = values(m * cols, m as u32);
                let got = matmul_transposed(&x, m, &w, rows, cols);
                let want = reference(&x, m, &w, rows, cols);
                // Every element checked: a NaN fails `<` where a max would have dropped it.
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-3, "rows {rows} cols {cols} m {m}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn half_precision_weights_match_the_triple_loop_on_their_widened_values() {
        fn check<W: WeightElement>(rows: usize, cols: usize) {
            let weights: Vec<W> = values(rows * cols, 7).into_iter().map(W::from_f32).collect();
            let widened: Vec<f32> = weights.iter().map(|w| w.to_f32()).collect();
            for m in [1, 2, 3, 5, 9] {
                let x = values(m * cols, m as u32);
                let got = matmul_transposed(&x, m, &weights, rows, cols);
                for (a, b) in got.iter().zip(&reference(&x, m, &widened, rows, cols)) {
                    assert!(
                        (a - b).abs() < 1e-3,
                        "{} rows {rows} cols {cols} m {m}: {a} vs {b}",
                        std::any::type_name::<W>()
                    );
                }
            }
        }
        for (rows, cols) in [(5, 37), (600, 513)] {
            check::<half::bf16>(rows, cols);
            check::<half::f16>(rows, cols);
        }
    }

    #[test]
    fn the_vector_path_agrees_with_the_scalar_dot() {
        let (w, x) = (values(600, 1), values(900, 2));
        let (ws, xs): (Vec<&[f32]>, Vec<&[f32]>) =
            (w.chunks_exact(300).collect(), x.chunks_exact(300).collect());
        let check = |block: [[f32; 3]; 2]| {
            for (i, row) in block.iter().enumerate() {
                for (j, got) in row.iter().enumerate() {
                    let want = dot(ws[i], xs[j]);
                    assert!((got - want).abs() < 1e-3, "{got} vs {want}");
                }
            }
        };
        check(dot_block::<f32, 2, 3>(&ws, &xs));
        // Each vector width on its own, whichever `dot_block` picks on this CPU.
        #[cfg(target_arch = "x86_64")]
        if cpu::has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C; the rows have one length.
            check(unsafe { dot_block_avx2::<f32, 2, 3>(&ws, &xs) });
        }
        #[cfg(target_arch = "x86_64")]
        if cpu::has_avx512() {
            // SAFETY: the CPU has AVX-512F; the rows have one length.
            check(unsafe { dot_block_avx512::<f32, 2, 3>(&ws, &xs) });
        }
    }

    #[test]
    #[should_panic(expected = "input is not")]
    fn a_wrong_input_length_is_caught() {
        matmul_transposed(&[1.0; 5], 1, &[1.0; 6], 2, 3);
    }
}
