//! The host kernel for float weights (f32, bf16, f16): `y = x · Wᵀ` with `W` in PyTorch's
//! `[out, in]` layout, for one input row (a decode step) or many (a verify block, a prefill).
//!
//! The weights are packed once, at load, into groups of `GROUP` output rows stored column by
//! column (`[cols][GROUP]` per group), so that one vector load holds one input column's weights
//! for sixteen outputs. A tile of a few groups by up to `R` input rows then keeps its products
//! in registers as outer products: each step loads the groups' weight vectors once and
//! broadcasts one input value per row, with no horizontal sums and no transposes. A one-row
//! product streams every weight once (decoding is bound by read bandwidth); a many-row product
//! reads each weight vector once per tile of input rows, so the arithmetic, not the weights,
//! bounds a prefill. Every core takes its own run of `ROWS_PER_TASK` rows; the matrix is padded
//! with zero rows to whole runs so that every tile is whole.

use aligned_vec::{AVec, ConstAlign};

use crate::kernels::cpu::{self, Isa};

/// Output rows per group: one AVX-512 vector of f32 (two AVX2 or four NEON vectors).
pub const GROUP: usize = 16;
/// Weight rows per parallel task: long enough runs that each thread streams (and its
/// prefetcher follows) its own region, few enough claims per product (docs/performance.md,
/// "Tuning constants"). A whole number of groups.
const ROWS_PER_TASK: usize = 64;
/// Below this many weights a matrix is multiplied on the calling thread: handing it to the pool
/// costs more than it saves (docs/performance.md, "Tuning constants").
const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;
/// How far ahead in each group's stream to prefetch, in bytes.
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

/// Whether a matrix of `weights` elements is worth the thread pool (see `PARALLEL_MIN_WEIGHTS`).
pub fn worth_parallel(weights: usize) -> bool {
    weights >= PARALLEL_MIN_WEIGHTS
}

/// Float weights `[rows, cols]` packed for the kernel (see the module note), cache-line
/// aligned so that no vector load straddles two lines.
#[derive(Debug)]
pub struct PackedRows<W> {
    data: AVec<W, ConstAlign<64>>,
    rows: usize,
    cols: usize,
}

/// A tile's products: `[group][input row][lane]`.
type Products<const G: usize, const R: usize> = [[[f32; GROUP]; R]; G];

impl<W: WeightElement> PackedRows<W> {
    /// `values: [rows, cols]`, row by row, converted to `W` and packed.
    pub fn pack(values: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols, "weights are not [{rows}, {cols}]");
        let groups = rows.next_multiple_of(ROWS_PER_TASK) / GROUP;
        let packed = (0..groups).flat_map(|group| {
            (0..cols).flat_map(move |col| {
                (group * GROUP..(group + 1) * GROUP)
                    .map(move |row| W::from_f32(if row < rows { values[row * cols + col] } else { 0.0 }))
            })
        });
        Self { data: AVec::from_iter(64, packed), rows, cols }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held, padding included.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<W>()
    }

    /// Row `row` widened to f32, appended to `out`.
    pub fn extend_row(&self, row: usize, out: &mut Vec<f32>) {
        assert!(row < self.rows, "row {row} of {}", self.rows);
        let group = &self.data[row / GROUP * GROUP * self.cols..][..GROUP * self.cols];
        out.extend(group.iter().skip(row % GROUP).step_by(GROUP).map(|w| w.to_f32()));
    }

    /// `out_t: [rows, m]` = these weights times each of the `m` input rows: each task writes
    /// its weight rows' outputs contiguously.
    pub fn multiply_into(&self, x_rows: &[&[f32]], out_t: &mut [f32]) {
        self.multiply_on(cpu::isa(), x_rows, out_t);
    }

    fn multiply_on(&self, isa: Isa, x_rows: &[&[f32]], out_t: &mut [f32]) {
        let m = x_rows.len();
        assert!(x_rows.iter().all(|x| x.len() == self.cols), "input rows are not {} wide", self.cols);
        assert_eq!(out_t.len(), self.rows * m, "output is not [{}, {m}]", self.rows);
        if m == 0 || self.rows == 0 {
            return;
        }
        let task_len = ROWS_PER_TASK * self.cols;
        let task = |i: usize, out: &mut [f32]| {
            multiply_task(isa, &self.data[i * task_len..][..task_len], self.cols, x_rows, out)
        };
        if worth_parallel(self.rows * self.cols) {
            crate::kernels::pool::Pool::global().for_each_chunk(out_t, ROWS_PER_TASK * m, task);
        } else {
            out_t.chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(i, out)| task(i, out));
        }
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

/// Calls tile function `$tile::<W, $g, R>` with the const `R` = `$xs.len()`, one of the counts
/// listed, and scatters its products into `$out`.
macro_rules! tile_of {
    ($tile:ident, $g:literal, [$($r:literal)+], $groups:expr, $cols:expr, $xs:expr, $out:expr, $m:expr, $first:expr) => {
        match $xs.len() {
            $($r => scatter::<$g, $r>(&$tile::<W, $g, $r>($groups, $cols, $xs), $out, $m, $first),)+
            r => unreachable!("no tile of {r} input rows"),
        }
    };
}

/// One task's groups against every input row, into `out: [rows_here, m]`
/// (fewer rows than the groups hold at the end of a padded matrix). The tile shape per
/// instruction set: as many accumulators as its registers hold beside the weight vectors, more
/// groups where there are few input rows (independent chains for a one-row product).
fn multiply_task<W: WeightElement>(isa: Isa, weights: &[W], cols: usize, xs: &[&[f32]], out: &mut [f32]) {
    let m = xs.len();
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY (each tile): the CPU has the tile's features (`cpu::isa`), `groups` holds the
        // tile's groups and every input row is `cols` long.
        Isa::Avx512 if m <= 4 => sweep(weights, cols, xs, out, 4, 4, |groups, xs, out, first| unsafe {
            tile_of!(avx512_tile, 4, [1 2 3 4], groups, cols, xs, out, m, first)
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => sweep(weights, cols, xs, out, 2, 12, |groups, xs, out, first| unsafe {
            tile_of!(avx512_tile, 2, [5 6 7 8 9 10 11 12], groups, cols, xs, out, m, first)
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if m == 1 => sweep(weights, cols, xs, out, 4, 1, |groups, xs, out, first| unsafe {
            tile_of!(avx2_tile, 4, [1], groups, cols, xs, out, m, first)
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if m == 2 => sweep(weights, cols, xs, out, 2, 2, |groups, xs, out, first| unsafe {
            tile_of!(avx2_tile, 2, [2], groups, cols, xs, out, m, first)
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => sweep(weights, cols, xs, out, 1, 6, |groups, xs, out, first| unsafe {
            tile_of!(avx2_tile, 1, [3 4 5 6], groups, cols, xs, out, m, first)
        }),
        _ => sweep(
            weights,
            cols,
            xs,
            out,
            1,
            4,
            |groups, xs, out, first| tile_of!(portable_tile, 1, [1 2 3 4], groups, cols, xs, out, m, first),
        ),
    }
}

/// Every tile of `g` groups by the input-row ranges of `row_tiles(m, most_rows)`, each handed
/// to `tile(groups, input rows, out, first input row)`.
fn sweep<W: WeightElement>(
    weights: &[W],
    cols: usize,
    xs: &[&[f32]],
    out: &mut [f32],
    g: usize,
    most_rows: usize,
    tile: impl Fn(&[W], &[&[f32]], &mut [f32], usize),
) {
    let m = xs.len();
    let rows_here = out.len() / m;
    for (c, groups) in weights.chunks_exact(g * GROUP * cols).enumerate() {
        let first_row = c * g * GROUP;
        if first_row >= rows_here {
            break;
        }
        let out = &mut out[first_row * m..(first_row + g * GROUP).min(rows_here) * m];
        for rows in row_tiles(m, most_rows) {
            tile(groups, &xs[rows.clone()], out, rows.start);
        }
    }
}

/// `0..m` in `ceil(m / most)` ranges of nearly equal length: a last tile of one or two rows
/// would cost a pass over the weights for little work.
fn row_tiles(m: usize, most: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = m.div_ceil(most);
    (0..count).map(move |t| t * m / count..(t + 1) * m / count)
}

/// A tile's products into `out: [rows, m]` at input rows `first..first + R`, rows past the end
/// of `out` (a padded matrix's zero rows) dropped.
fn scatter<const G: usize, const R: usize>(
    products: &Products<G, R>,
    out: &mut [f32],
    m: usize,
    first: usize,
) {
    for (row, out) in out.chunks_exact_mut(m).enumerate() {
        let group = &products[row / GROUP];
        for (j, o) in out[first..first + R].iter_mut().enumerate() {
            *o = group[j][row % GROUP];
        }
    }
}

/// `G` groups by `R` input rows in plain Rust: the reference the vector tiles are tested
/// against, and the path where there are none (the compiler vectorises the lane loop).
fn portable_tile<W: WeightElement, const G: usize, const R: usize>(
    groups: &[W],
    cols: usize,
    xs: &[&[f32]],
) -> Products<G, R> {
    let mut acc = [[[0.0f32; GROUP]; R]; G];
    for (g, acc) in groups.chunks_exact(GROUP * cols).zip(&mut acc) {
        for (k, column) in g.chunks_exact(GROUP).enumerate() {
            let w: [f32; GROUP] = std::array::from_fn(|lane| column[lane].to_f32());
            for (acc, x) in acc.iter_mut().zip(xs) {
                let x = x[k];
                for lane in 0..GROUP {
                    acc[lane] += w[lane] * x;
                }
            }
        }
    }
    acc
}

/// `G` groups by `R` input rows, two 8-lane accumulators per (group, row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_tile<W: WeightElement, const G: usize, const R: usize>(
    groups: &[W],
    cols: usize,
    xs: &[&[f32]],
) -> Products<G, R> {
    use std::arch::x86_64::*;
    debug_assert!(groups.len() == G * GROUP * cols && xs.len() == R && xs.iter().all(|x| x.len() == cols));
    let (w, stride) = (groups.as_ptr(), GROUP * cols);
    let ahead = PREFETCH_AHEAD_BYTES / std::mem::size_of::<W>();
    let mut x = [std::ptr::null::<f32>(); R];
    for (x, row) in x.iter_mut().zip(xs) {
        *x = row.as_ptr();
    }
    let mut acc = [[[_mm256_setzero_ps(); 2]; R]; G];
    for k in 0..cols {
        // SAFETY: k < cols, the length of every input row; each group holds `cols` columns.
        unsafe {
            for (g, acc) in acc.iter_mut().enumerate() {
                let p = w.add(g * stride + k * GROUP);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead) as *const i8);
                let (low, high) = (W::load8(p), W::load8(p.add(8)));
                for (acc, x) in acc.iter_mut().zip(x) {
                    let xv = _mm256_broadcast_ss(&*x.add(k));
                    acc[0] = _mm256_fmadd_ps(low, xv, acc[0]);
                    acc[1] = _mm256_fmadd_ps(high, xv, acc[1]);
                }
            }
        }
    }
    let mut out = [[[0.0f32; GROUP]; R]; G];
    for g in 0..G {
        for j in 0..R {
            // SAFETY: each row of `out` holds sixteen floats.
            unsafe {
                _mm256_storeu_ps(out[g][j].as_mut_ptr(), acc[g][j][0]);
                _mm256_storeu_ps(out[g][j].as_mut_ptr().add(8), acc[g][j][1]);
            }
        }
    }
    out
}

/// `G` groups by `R` input rows, one 16-lane accumulator per (group, row); the broadcast input
/// value is an operand of the multiply-add, not a register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512_tile<W: WeightElement, const G: usize, const R: usize>(
    groups: &[W],
    cols: usize,
    xs: &[&[f32]],
) -> Products<G, R> {
    use std::arch::x86_64::*;
    debug_assert!(groups.len() == G * GROUP * cols && xs.len() == R && xs.iter().all(|x| x.len() == cols));
    let (w, stride) = (groups.as_ptr(), GROUP * cols);
    let ahead = PREFETCH_AHEAD_BYTES / std::mem::size_of::<W>();
    let mut x = [std::ptr::null::<f32>(); R];
    for (x, row) in x.iter_mut().zip(xs) {
        *x = row.as_ptr();
    }
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    for k in 0..cols {
        // SAFETY: k < cols, the length of every input row; each group holds `cols` columns.
        unsafe {
            for (g, acc) in acc.iter_mut().enumerate() {
                let p = w.add(g * stride + k * GROUP);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead) as *const i8);
                let wv = W::load16(p);
                for (acc, x) in acc.iter_mut().zip(x) {
                    *acc = _mm512_fmadd_ps(wv, _mm512_set1_ps(*x.add(k)), *acc);
                }
            }
        }
    }
    let mut out = [[[0.0f32; GROUP]; R]; G];
    for g in 0..G {
        for j in 0..R {
            // SAFETY: each row of `out` holds sixteen floats.
            unsafe { _mm512_storeu_ps(out[g][j].as_mut_ptr(), acc[g][j]) };
        }
    }
    out
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

    /// The paths of this kernel that this CPU runs, the portable one first (ARM's is the
    /// portable one, vectorised by the compiler).
    fn paths() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&isa| isa <= cpu::isa()).collect()
    }

    /// `x: [m, cols]` times the packed weights, `[m, rows]`, on `isa`.
    fn product<W: WeightElement>(isa: Isa, x: &[f32], m: usize, w: &PackedRows<W>) -> Vec<f32> {
        let x_rows: Vec<&[f32]> = x.chunks_exact(w.cols).collect();
        let mut out_t = vec![f32::NAN; w.rows * m];
        w.multiply_on(isa, &x_rows, &mut out_t);
        transpose_outputs(out_t, m, w.rows)
    }

    #[test]
    fn every_path_matches_a_plain_triple_loop_for_every_tile_shape_and_padding() {
        // Rows that fill no group, no task, several tasks; m = 1..30 takes every tile shape of
        // every path and each split into row tiles; the last matrix goes parallel.
        const { assert!(2100 * 97 >= PARALLEL_MIN_WEIGHTS, "the last shape must take the parallel path") };
        for (rows, cols) in [(5, 37), (33, 64), (600, 13), (2100, 97)] {
            let weights = values(rows * cols, 7);
            let packed = PackedRows::<f32>::pack(&weights, rows, cols);
            for m in (1..=30).chain([65]) {
                let x = values(m * cols, m as u32);
                let want = reference(&x, m, &weights, rows, cols);
                for isa in paths() {
                    let got = product(isa, &x, m, &packed);
                    // Every element checked: a NaN fails `<` where a max would have dropped it.
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-3, "{isa:?} rows {rows} cols {cols} m {m}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn half_precision_weights_match_the_triple_loop_on_their_widened_values() {
        fn check<W: WeightElement>(rows: usize, cols: usize) {
            let weights = values(rows * cols, 7);
            let widened: Vec<f32> = weights.iter().map(|&w| W::from_f32(w).to_f32()).collect();
            let packed = PackedRows::<W>::pack(&weights, rows, cols);
            for m in [1, 2, 3, 5, 9, 13] {
                let x = values(m * cols, m as u32);
                for isa in paths() {
                    let got = product(isa, &x, m, &packed);
                    for (a, b) in got.iter().zip(&reference(&x, m, &widened, rows, cols)) {
                        let name = std::any::type_name::<W>();
                        assert!(
                            (a - b).abs() < 1e-3,
                            "{name} {isa:?} rows {rows} cols {cols} m {m}: {a} vs {b}"
                        );
                    }
                }
            }
        }
        for (rows, cols) in [(5, 37), (600, 513)] {
            check::<half::bf16>(rows, cols);
            check::<half::f16>(rows, cols);
        }
    }

    #[test]
    fn rows_read_back_from_the_packing_as_they_went_in() {
        let (rows, cols) = (37, 11);
        let weights = values(rows * cols, 3);
        let packed = PackedRows::<f32>::pack(&weights, rows, cols);
        assert_eq!(packed.bytes(), 64 * cols * 4, "padded to a whole task");
        for row in [0, 15, 16, 36] {
            let mut out = Vec::new();
            packed.extend_row(row, &mut out);
            assert_eq!(out, weights[row * cols..][..cols]);
        }
    }

    #[test]
    fn row_tiles_cover_every_row_once_in_nearly_equal_tiles() {
        for most in [1, 4, 6, 12] {
            for m in 1..100 {
                let tiles: Vec<_> = row_tiles(m, most).collect();
                assert_eq!(tiles.first().unwrap().start, 0);
                assert_eq!(tiles.last().unwrap().end, m);
                assert!(tiles.windows(2).all(|t| t[0].end == t[1].start));
                let (short, long) =
                    (tiles.iter().map(|t| t.len()).min(), tiles.iter().map(|t| t.len()).max());
                assert!(
                    long.unwrap() <= most && long.unwrap() - short.unwrap() <= 1,
                    "m {m} most {most}: {tiles:?}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "input rows are not")]
    fn a_wrong_input_length_is_caught() {
        let packed = PackedRows::<f32>::pack(&[1.0; 6], 2, 3);
        packed.multiply_into(&[&[1.0; 5]], &mut [0.0; 2]);
    }
}
