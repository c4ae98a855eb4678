//! The host executor: the step as plain loops over `f32` rows in host memory, the projections
//! on specbench's kernels. Burn's CPU backends dispatch each of the ~20 operations of a layer as
//! a separate tensor op with its own allocation and bookkeeping; for the few rows of decoding
//! and verification that fixed cost, not arithmetic, sets the time per token. Here each
//! operation is one pass over its rows, and the whole step is compiled for the vector ISA
//! (`kernels::cpu::vectorized`, from `Llama`).

mod matrix;

pub use matrix::HostMatrix;

use crate::backend::Runtime;
use crate::error::Result;
use crate::kernels::attention::{add_weighted4, dot4};
use crate::kernels::cpu::{Vectorize, vectorized};
use crate::kernels::dot;
use crate::kernels::math::{exp, silu};
use crate::kernels::pool::Pool;
use crate::model::cache::{HostKv, KvCache, Layers};
use crate::model::config::LlamaConfig;
use crate::model::executor::{Dims, Executor};
use crate::model::rope::Rope;
use crate::model::step::Geometry;
use crate::model::weights::{HostTensor, Weight, WeightSource};

/// Attention work (rows × visible positions × heads × head_dim) from which a step's heads are
/// spread over the kernel pool; below it, a head's few microseconds are not worth a hand-off.
const ATTENTION_PARALLEL_MIN: usize = 1 << 14;
/// Rows of a step whose queries of one key/value head meet the cache together in one task.
const ATTENTION_ROWS_PER_TASK: usize = 4;

#[derive(Debug)]
pub struct HostExecutor {
    runtime: Runtime,
}

impl HostExecutor {
    pub fn new(runtime: &Runtime) -> Self {
        Self { runtime: runtime.clone() }
    }
}

/// Cos and sin `[rows, head_dim / 2]` at each row's position.
pub struct HostPositions {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Executor for HostExecutor {
    type Rows = Vec<f32>;
    type Matrix = HostMatrix;
    type Norm = Vec<f32>;
    type LayerCache = HostKv;
    type Positions = HostPositions;

    fn load_matrix(
        &self,
        source: &mut impl WeightSource,
        weights: &[Weight],
        config: &LlamaConfig,
    ) -> Result<HostMatrix> {
        HostMatrix::load(source, weights, config, &self.runtime)
    }

    fn load_norm(
        &self,
        source: &mut impl WeightSource,
        weight: Weight,
        config: &LlamaConfig,
    ) -> Result<Vec<f32>> {
        Ok(source.load_host(weight, config)?.into_f32())
    }

    fn matrix_of(&self, tensor: HostTensor, rows: usize, cols: usize, name: &str) -> Result<HostMatrix> {
        HostMatrix::of(tensor, rows, cols, name, &self.runtime)
    }

    fn norm_of(&self, values: Vec<f32>) -> Vec<f32> {
        values
    }

    fn matrix_bytes(matrix: &HostMatrix) -> usize {
        matrix.bytes()
    }

    fn matrix_formats(matrix: &HostMatrix) -> Vec<&'static str> {
        matrix.formats().collect()
    }

    fn new_cache(&self, layers: usize) -> KvCache {
        KvCache::new(Layers::Host(vec![HostKv::default(); layers]))
    }

    fn layer_cache(cache: &mut KvCache, layer: usize) -> Option<&mut HostKv> {
        match &mut cache.layers {
            Layers::Host(layers) => layers.get_mut(layer),
            Layers::Device(_) => None,
        }
    }

    fn positions(&self, geometry: &Geometry, rope: &Rope) -> HostPositions {
        let (cos, sin) = rope.cos_sin(&geometry.positions);
        HostPositions { cos, sin }
    }

    #[inline(always)]
    fn embed(&self, table: &HostMatrix, ids: &[u32]) -> Vec<f32> {
        let mut x = Vec::with_capacity(ids.len() * table.cols());
        for &id in ids {
            table.extend_row(id as usize, &mut x);
        }
        x
    }

    fn upload(&self, values: Vec<f32>, _width: usize) -> Vec<f32> {
        values
    }

    #[inline(always)]
    fn rms_norm(&self, x: &Vec<f32>, weight: &Vec<f32>, eps: f64) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for (row, out) in x.chunks_exact(weight.len()).zip(out.chunks_exact_mut(weight.len())) {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let inverse = 1.0 / (mean_square + eps as f32).sqrt();
            for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
                *o = w * (v * inverse);
            }
        }
        out
    }

    #[inline(always)]
    fn project(&self, weights: &HostMatrix, x: &Vec<f32>) -> Vec<f32> {
        weights.multiply(x, x.len() / weights.cols())
    }

    #[inline(always)]
    fn attend(
        &self,
        mut qkv: Vec<f32>,
        cache: &mut HostKv,
        geometry: &Geometry,
        positions: &HostPositions,
        d: &Dims,
    ) -> Vec<f32> {
        let (q_width, kv_width, half) = (d.q_width(), d.kv_width(), d.head_dim / 2);
        let (rows, start) = (geometry.rows(), geometry.start);
        let (mut q, mut k, mut v) = (Vec::with_capacity(rows * q_width), Vec::new(), Vec::new());
        for (i, row) in qkv.chunks_exact_mut(q_width + 2 * kv_width).enumerate() {
            let (cos, sin) = (&positions.cos[i * half..][..half], &positions.sin[i * half..][..half]);
            for head in row[..q_width + kv_width].chunks_exact_mut(d.head_dim) {
                rotate_half(head, cos, sin);
            }
            q.extend_from_slice(&row[..q_width]);
            k.extend_from_slice(&row[q_width..q_width + kv_width]);
            v.extend_from_slice(&row[q_width + kv_width..]);
        }
        cache.width = kv_width;
        for (store, new) in [(&mut cache.keys, &k), (&mut cache.values, &v)] {
            store.truncate(start * kv_width);
            store.extend_from_slice(new);
        }
        let heads = Heads {
            q: &q,
            keys: &cache.keys,
            values: &cache.values,
            geometry,
            group: d.heads / d.kv_heads,
            d,
        };
        // One task per block of rows and key/value head, into `[block][kv head][row][group]`
        // (the last block padded), then into the rows' order.
        let group_width = heads.group * d.head_dim;
        let chunk = ATTENTION_ROWS_PER_TASK * group_width;
        let mut blocks = vec![0.0f32; rows.div_ceil(ATTENTION_ROWS_PER_TASK) * d.kv_heads * chunk];
        let rows_of = |task: usize| {
            let first = task / d.kv_heads * ATTENTION_ROWS_PER_TASK;
            (task % d.kv_heads, first..(first + ATTENTION_ROWS_PER_TASK).min(rows))
        };
        if rows * (start + rows) * q_width >= ATTENTION_PARALLEL_MIN {
            Pool::global().for_each_chunk(&mut blocks, chunk, |task, out| {
                let (kv_head, rows) = rows_of(task);
                vectorized(AttendBlock { heads: &heads, kv_head, rows, out })
            });
        } else {
            for (task, out) in blocks.chunks_mut(chunk).enumerate() {
                let (kv_head, rows) = rows_of(task);
                heads.attend_block(kv_head, rows, out);
            }
        }
        let mut out = vec![0.0f32; rows * q_width];
        for (task, block) in blocks.chunks(chunk).enumerate() {
            let (kv_head, rows) = rows_of(task);
            for (i, from) in rows.zip(block.chunks_exact(group_width)) {
                out[i * q_width + kv_head * group_width..][..group_width].copy_from_slice(from);
            }
        }
        out
    }

    #[inline(always)]
    fn add(&self, mut x: Vec<f32>, y: Vec<f32>) -> Vec<f32> {
        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        x
    }

    /// `[rows, intermediate]`, the rows on the pool where there are several.
    #[inline(always)]
    fn swiglu(&self, gate_up: Vec<f32>, intermediate: usize) -> Vec<f32> {
        let rows = gate_up.len() / (2 * intermediate);
        let mut out = vec![0.0f32; rows * intermediate];
        if rows > 1 {
            // A row per task: the exp and the division of a 65-row prefill on one thread were a
            // tenth of its time.
            Pool::global().for_each_chunk(&mut out, intermediate, |r, out| {
                let gate_up = &gate_up[2 * r * intermediate..][..2 * intermediate];
                vectorized(SwiGlu { gate_up, out, intermediate })
            });
        } else {
            SwiGlu { gate_up: &gate_up, out: &mut out, intermediate }.run();
        }
        out
    }

    #[inline(always)]
    fn last_rows(&self, mut x: Vec<f32>, n: usize, width: usize) -> Vec<f32> {
        x.drain(..x.len() - n * width);
        x
    }

    fn read(&self, x: &Vec<f32>) -> Vec<f32> {
        x.clone()
    }
}

/// `x * cos + rotate_half(x) * sin` on one head vector, with `cos`/`sin` of its position
/// `[head_dim / 2]` (Hugging Face's layout: the first half pairs with the second).
#[inline(always)]
fn rotate_half(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] - b * sin[i];
        x2[i] = b * cos[i] + a * sin[i];
    }
}

/// What the attention of one step reads: the rotated queries, the cached keys and values.
struct Heads<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    geometry: &'a Geometry,
    group: usize,
    d: &'a Dims,
}

/// One pool task: the query heads of a block of rows that share one key/value head.
/// `silu(gate) · up` for each row of `gate_up: [rows, 2 · intermediate]` into `out: [rows,
/// intermediate]`.
struct SwiGlu<'a> {
    gate_up: &'a [f32],
    out: &'a mut [f32],
    intermediate: usize,
}

impl Vectorize for SwiGlu<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let rows = self.gate_up.chunks_exact(2 * self.intermediate);
        for (row, out) in rows.zip(self.out.chunks_exact_mut(self.intermediate)) {
            let (gate, up) = row.split_at(self.intermediate);
            for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                *o = silu(*g) * u;
            }
        }
    }
}

struct AttendBlock<'a, 'h> {
    heads: &'a Heads<'h>,
    kv_head: usize,
    rows: std::ops::Range<usize>,
    out: &'a mut [f32],
}

impl Vectorize for AttendBlock<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        self.heads.attend_block(self.kv_head, self.rows, self.out)
    }
}

impl Heads<'_> {
    /// The query heads of `rows` that read key/value head `kv_head`, into `out: [row][group ·
    /// head_dim]`. The queries take turns at each four cached positions, so that those keys and
    /// values are read from memory once for all of them rather than once per query; each query
    /// still sees the same operations in the same order as it would alone (four positions at a
    /// time, then the rest one by one, its own mask, softmax), so a row's result does not depend
    /// on the rows beside it.
    #[inline(always)]
    fn attend_block(&self, kv_head: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        let (d, start) = (self.d, self.geometry.start);
        let (kv_width, offset) = (d.kv_width(), kv_head * d.head_dim);
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let key = |p: usize| &self.keys[p * kv_width + offset..][..d.head_dim];
        let value = |p: usize| &self.values[p * kv_width + offset..][..d.head_dim];
        // Each query: its row, its slice of `q`, the positions it sees (every cached one and, of
        // this step's rows, at most rows 0..=i) and how many of them come in fours.
        let queries: Vec<(usize, &[f32], usize, usize)> = rows
            .clone()
            .flat_map(|i| {
                (0..self.group).map(move |j| {
                    let h = kv_head * self.group + j;
                    let visible = start + i + 1;
                    (i, &self.q[i * d.q_width() + h * d.head_dim..][..d.head_dim], visible, visible / 4 * 4)
                })
            })
            .collect();
        let most = queries.iter().map(|q| q.3).max().unwrap_or(0);
        let mut scores: Vec<Vec<f32>> = queries.iter().map(|q| Vec::with_capacity(q.2)).collect();
        for p in (0..most).step_by(4) {
            let keys = [key(p), key(p + 1), key(p + 2), key(p + 3)];
            for (&(_, query, _, fours), scores) in queries.iter().zip(&mut scores) {
                if p < fours {
                    scores.extend(dot4(query, keys).map(|s| s * scale));
                }
            }
        }
        for (&(i, query, visible, fours), scores) in queries.iter().zip(&mut scores) {
            scores.extend((fours..visible).map(|p| dot(query, key(p)) * scale));
            if self.geometry.visible.is_some() {
                let (tree_start, cached) = (self.geometry.tree_start, self.geometry.cached_tree_rows());
                for c in (0..cached + i).filter(|&c| !self.geometry.sees(i, c)) {
                    scores[tree_start + c] = f32::NEG_INFINITY;
                }
            }
            softmax(scores);
        }
        let mut outs: Vec<&mut [f32]> = out.chunks_exact_mut(d.head_dim).collect();
        for p in (0..most).step_by(4) {
            let values = [value(p), value(p + 1), value(p + 2), value(p + 3)];
            for ((&(.., fours), scores), out) in queries.iter().zip(&scores).zip(&mut outs) {
                if p < fours {
                    add_weighted4(out, [scores[p], scores[p + 1], scores[p + 2], scores[p + 3]], values);
                }
            }
        }
        for ((&(.., fours), scores), out) in queries.iter().zip(&scores).zip(&mut outs) {
            for (p, &weight) in scores.iter().enumerate().skip(fours) {
                for (o, v) in out.iter_mut().zip(value(p)) {
                    *o += weight * v;
                }
            }
        }
    }
}

#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Two passes: a running sum in the first kept the exps from vectorising.
    scores.iter_mut().for_each(|s| *s = exp(*s - max));
    let total: f32 = scores.iter().sum();
    scores.iter_mut().for_each(|s| *s /= total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_compacts_rows() {
        let runtime = Runtime::new(crate::backend::Backend::Ndarray, "f32").unwrap();
        let exec = HostExecutor::new(&runtime);
        let rows = vec![0.0, 1.0, 2.0, 3.0, /* row 2 */ 1.0, -1.0, 1.0, 1.0];
        assert_eq!(exec.swiglu(rows, 2), vec![silu(0.0) * 2.0, silu(1.0) * 3.0, silu(1.0), silu(-1.0)]);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_scores() {
        let mut scores = vec![1000.0, 1000.0, f32::NEG_INFINITY];
        softmax(&mut scores);
        assert_eq!(scores, vec![0.5, 0.5, 0.0]);
    }
}
