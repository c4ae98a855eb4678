//! The CPU forward pass in host memory: the whole Llama step as plain loops over `f32` rows,
//! with the projections on the host kernels. Burn's CPU backends dispatch each of the ~20
//! operations of a layer (norm, reshape, rotary, cache write, attention matmuls, softmax, SiLU,
//! residual adds) as a separate tensor op with its own allocation and bookkeeping; for the few
//! rows of decoding and verification that fixed cost, not arithmetic, set the time per token
//! (half of a decode step on the embedded target, results/profile/2026-11-25-tiny.md). Here a
//! layer is one pass: norm, one stacked q/k/v product, rotary and cache write in place,
//! attention per head, one stacked gate/up product, SiLU, down product.
//!
//! It computes exactly what Burn's forward computes (`Llama` keeps that one for the GPU and as
//! the reference, `--projections backend` on the CPU); the parity tests hold both to
//! transformers.

use crate::backend::Runtime;
use crate::error::Result;
use crate::kernels::attention::{add_weighted4, dot4};
use crate::kernels::dot;
use crate::kernels::pool::Pool;
use crate::model::cache::KvCache;
use crate::model::config::LlamaConfig;
use crate::model::llama::skips;
use crate::model::projection::HostMatrix;
use crate::model::rope::{Rope, rotate_host};
use crate::model::weights::{LayerWeight, Weight, WeightSource};

/// Attention work (rows × visible positions × heads × head_dim) from which a step's heads are
/// spread over the kernel pool: 64 cached positions of the embedded target's 4 heads of 64. Below
/// it, a head's few microseconds are not worth a hand-off.
const ATTENTION_PARALLEL_MIN: usize = 1 << 14;

#[derive(Debug)]
pub struct HostLlama {
    embed: HostMatrix,
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<HostMatrix>,
    dims: Dims,
    rope: Rope,
}

#[derive(Debug)]
struct HostLayer {
    attention_norm: Vec<f32>,
    /// Query, key and value stacked: `(heads + 2 kv_heads) · head_dim` outputs.
    qkv: HostMatrix,
    output: HostMatrix,
    mlp_norm: Vec<f32>,
    /// Gate and up stacked: `2 · intermediate` outputs.
    gate_up: HostMatrix,
    down: HostMatrix,
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    eps: f32,
}

impl Dims {
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

fn norm_weights(source: &mut impl WeightSource, weight: Weight, config: &LlamaConfig) -> Result<Vec<f32>> {
    Ok(source.load_host(weight, config)?.into_f32())
}

impl HostLlama {
    pub fn build(config: &LlamaConfig, source: &mut impl WeightSource, runtime: &Runtime) -> Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let w = |kind| Weight::Layer(i, kind);
                let mut linear = |kinds: &[LayerWeight]| {
                    let weights: Vec<Weight> = kinds.iter().map(|&kind| w(kind)).collect();
                    HostMatrix::load(source, &weights, config, runtime)
                };
                let qkv = linear(&[LayerWeight::Query, LayerWeight::Key, LayerWeight::Value])?;
                let output = linear(&[LayerWeight::Output])?;
                let gate_up = linear(&[LayerWeight::Gate, LayerWeight::Up])?;
                let down = linear(&[LayerWeight::Down])?;
                Ok(HostLayer {
                    attention_norm: norm_weights(source, w(LayerWeight::AttentionNorm), config)?,
                    qkv,
                    output,
                    mlp_norm: norm_weights(source, w(LayerWeight::MlpNorm), config)?,
                    gate_up,
                    down,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(HostMatrix::load(source, &[Weight::LmHead], config, runtime)?)
        };
        let embed = HostMatrix::load(source, &[Weight::Embed], config, runtime)?;
        let norm = norm_weights(source, Weight::FinalNorm, config)?;
        let dims = Dims {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            kv_heads: config.num_kv_heads(),
            head_dim: config.head_dim(),
            intermediate: config.intermediate_size,
            eps: config.rms_norm_eps as f32,
        };
        Ok(Self { embed, layers, norm, lm_head, dims, rope: Rope::new(config)? })
    }

    /// Bytes of projection and embedding weights held.
    pub fn weight_bytes(&self) -> usize {
        self.matrices().map(HostMatrix::bytes).sum()
    }

    /// The storage of every projection and of the embedding.
    pub fn weight_formats(&self) -> std::collections::BTreeSet<&'static str> {
        self.matrices().flat_map(HostMatrix::formats).collect()
    }

    /// Every projection, the embedding and the untied head.
    fn matrices(&self) -> impl Iterator<Item = &HostMatrix> {
        let layers = self.layers.iter().flat_map(|l| [&l.qkv, &l.output, &l.gate_up, &l.down]);
        layers.chain([&self.embed]).chain(self.lm_head.as_ref())
    }

    /// Logits `[rows, vocab]` of the last `rows` of `ids` (checked by the caller), which follow
    /// the positions held in `cache`.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, rows: usize, skip: &[bool]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::matvec::vector_path_available() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { self.forward_avx2(ids, cache, rows, skip) };
        }
        self.forward_portable(ids, cache, rows, skip)
    }

    /// The same step compiled with AVX2 and FMA, so that the loops around the products (norms,
    /// attention's dot products and weighted sums, residual adds) run eight lanes wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, ids: &[u32], cache: &mut KvCache, rows: usize, skip: &[bool]) -> Vec<f32> {
        self.forward_portable(ids, cache, rows, skip)
    }

    #[inline(always)]
    fn forward_portable(&self, ids: &[u32], cache: &mut KvCache, rows: usize, skip: &[bool]) -> Vec<f32> {
        let (seq, start, d) = (ids.len(), cache.len(), self.dims);
        let mut x = Vec::with_capacity(seq * d.hidden);
        for &id in ids {
            self.embed.extend_row(id as usize, &mut x);
        }
        let (cos, sin) = self.rope.host_cos_sin(start, seq);
        let mut normed = vec![0.0; x.len()];
        for (index, layer) in self.layers.iter().enumerate() {
            if skips(skip, index) {
                continue;
            }
            rms_norm(&x, &layer.attention_norm, d.eps, &mut normed);
            let attention = layer.attend(&normed, seq, start, index, cache, &cos, &sin, d);
            add(&mut x, &layer.output.multiply(&attention, seq));
            rms_norm(&x, &layer.mlp_norm, d.eps, &mut normed);
            let mut gate_up = layer.gate_up.multiply(&normed, seq);
            let activated = swiglu(&mut gate_up, d.intermediate);
            add(&mut x, &layer.down.multiply(activated, seq));
        }
        cache.advance(seq);
        let last = &x[(seq - rows) * d.hidden..];
        let normed = &mut normed[..last.len()];
        rms_norm(last, &self.norm, d.eps, normed);
        self.lm_head.as_ref().unwrap_or(&self.embed).multiply(normed, rows)
    }
}

impl HostLayer {
    /// Self-attention of `seq` normed rows at positions `start..`: q/k/v, rotary, the cache
    /// write, and grouped-query attention over every cached position up to each row's own.
    /// Returns `[seq, heads · head_dim]`, before the output projection.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn attend(
        &self,
        normed: &[f32],
        seq: usize,
        start: usize,
        index: usize,
        cache: &mut KvCache,
        cos: &[f32],
        sin: &[f32],
        d: Dims,
    ) -> Vec<f32> {
        let (q_width, kv_width, half) = (d.heads * d.head_dim, d.kv_width(), d.head_dim / 2);
        let mut qkv = self.qkv.multiply(normed, seq);
        let row_width = q_width + 2 * kv_width;
        let (mut q, mut k, mut v) = (Vec::with_capacity(seq * q_width), Vec::new(), Vec::new());
        for (i, row) in qkv.chunks_exact_mut(row_width).enumerate() {
            let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
            for head in row[..q_width + kv_width].chunks_exact_mut(d.head_dim) {
                rotate_host(head, cos, sin);
            }
            q.extend_from_slice(&row[..q_width]);
            k.extend_from_slice(&row[q_width..q_width + kv_width]);
            v.extend_from_slice(&row[q_width + kv_width..]);
        }
        let (keys, values) = cache.append_host(index, &k, &v, kv_width);
        let mut out = vec![0.0f32; seq * q_width];
        let heads = Heads { q: &q, keys, values, start, kv_width, group: d.heads / d.kv_heads, d };
        // One task per row and key/value head: the query heads of a group read the same keys.
        // A decode step's attention was a serial stretch of every layer during which the pool's
        // worker spun idle (a third of a step of the embedded target at 190 cached positions),
        // so it goes to the pool as soon as the work outweighs a hand-off.
        let group_width = heads.group * d.head_dim;
        if seq * (start + seq) * d.heads * d.head_dim >= ATTENTION_PARALLEL_MIN {
            Pool::global().for_each_chunk(&mut out, group_width, |index, out| heads.attend_group(index, out));
        } else {
            for (index, out) in out.chunks_mut(group_width).enumerate() {
                heads.attend_group(index, out);
            }
        }
        out
    }
}

/// What one head's attention reads: the rotated queries, the cached keys and values.
struct Heads<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    start: usize,
    kv_width: usize,
    group: usize,
    d: Dims,
}

impl Heads<'_> {
    /// The query heads of row and key/value head `index` into `out: [group · head_dim]`.
    fn attend_group(&self, index: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::matvec::vector_path_available() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { self.attend_group_avx2(index, out) };
        }
        self.attend_group_portable(index, out)
    }

    /// Compiled with AVX2 and FMA: a pool task is not inlined into the AVX2 forward.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_group_avx2(&self, index: usize, out: &mut [f32]) {
        self.attend_group_portable(index, out)
    }

    #[inline(always)]
    fn attend_group_portable(&self, index: usize, out: &mut [f32]) {
        let mut scores = Vec::with_capacity(self.start + self.q.len() / (self.d.heads * self.d.head_dim));
        for (j, out) in out.chunks_exact_mut(self.d.head_dim).enumerate() {
            self.attend(index * self.group + j, out, &mut scores);
        }
    }

    /// Head `slot` (row `slot / heads`, head `slot % heads`) into `out: [head_dim]`; `scores` is
    /// scratch reused across heads.
    #[inline(always)]
    fn attend(&self, slot: usize, out: &mut [f32], scores: &mut Vec<f32>) {
        let d = self.d;
        let (i, h) = (slot / d.heads, slot % d.heads);
        let query = &self.q[i * d.heads * d.head_dim + h * d.head_dim..][..d.head_dim];
        let offset = (h / self.group) * d.head_dim;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        // Causal: row i sits at position start + i and sees every position up to it.
        let visible = self.start + i + 1;
        let key = |p: usize| &self.keys[p * self.kv_width + offset..][..d.head_dim];
        let value = |p: usize| &self.values[p * self.kv_width + offset..][..d.head_dim];
        scores.clear();
        let fours = visible / 4 * 4;
        for p in (0..fours).step_by(4) {
            let dots = dot4(query, [key(p), key(p + 1), key(p + 2), key(p + 3)]);
            scores.extend(dots.map(|s| s * scale));
        }
        scores.extend((fours..visible).map(|p| dot(query, key(p)) * scale));
        softmax(scores);
        for p in (0..fours).step_by(4) {
            let w = [scores[p], scores[p + 1], scores[p + 2], scores[p + 3]];
            add_weighted4(out, w, [value(p), value(p + 1), value(p + 2), value(p + 3)]);
        }
        for (p, &weight) in scores.iter().enumerate().skip(fours) {
            for (o, v) in out.iter_mut().zip(value(p)) {
                *o += weight * v;
            }
        }
    }
}

/// Hugging Face's `LlamaRMSNorm`: `x / sqrt(mean(x²) + eps) · weight`, row by row, in f32.
#[inline(always)]
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    for (row, out) in x.chunks_exact(weight.len()).zip(out.chunks_exact_mut(weight.len())) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        let inverse = 1.0 / (mean_square + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = w * (v * inverse);
        }
    }
}

#[inline(always)]
fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    scores.iter_mut().for_each(|s| *s /= total);
}

/// `silu(gate) · up` for rows `[gate | up]` of `2 · intermediate`, written over each row's gate
/// half and returned compacted as `[seq, intermediate]`.
#[inline(always)]
fn swiglu(gate_up: &mut Vec<f32>, intermediate: usize) -> &[f32] {
    let rows = gate_up.len() / (2 * intermediate);
    for r in 0..rows {
        let (gate, up) = gate_up[2 * r * intermediate..][..2 * intermediate].split_at_mut(intermediate);
        for (g, u) in gate.iter_mut().zip(up.iter()) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        gate_up.copy_within(2 * r * intermediate..(2 * r + 1) * intermediate, r * intermediate);
    }
    gate_up.truncate(rows * intermediate);
    gate_up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_compacts_rows() {
        let mut rows = vec![0.0, 1.0, 2.0, 3.0, /* row 2 */ 1.0, -1.0, 1.0, 1.0];
        let out = swiglu(&mut rows, 2).to_vec();
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert_eq!(out, vec![silu(0.0) * 2.0, silu(1.0) * 3.0, silu(1.0), silu(-1.0)]);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_scores() {
        let mut scores = vec![1000.0, 1000.0, f32::NEG_INFINITY];
        softmax(&mut scores);
        assert_eq!(scores, vec![0.5, 0.5, 0.0]);
    }
}
