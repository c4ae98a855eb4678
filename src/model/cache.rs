//! The KV cache lives outside the model so that speculative decoding can roll back rejected
//! draft tokens with `truncate`. Keys and values are written into storage allocated ahead
//! (doubling when full), so appending a token copies that token, not the whole history, and a
//! rollback only moves the length.

use burn::tensor::{Tensor, s};

/// Storage rows allocated at the first append: enough for short generations without a regrow.
const INITIAL_CAPACITY: usize = 128;

/// Keys and values per layer, of which the first `len` positions hold data: on the device as
/// `[batch, kv_heads, capacity, head_dim]` for Burn's forward, or in host memory as
/// `[positions, kv_heads · head_dim]` for the host forward (a model uses one of the two).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    host: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], host: vec![Default::default(); num_layers], len: 0 }
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `n` positions; a no-op when `n >= len`. Later appends overwrite the rest.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Writes this forward's keys and values for `layer` after the `len` cached positions and
    /// returns the whole history as views. Every layer appends the same number of positions, so
    /// the length is advanced once per forward by [`KvCache::advance`].
    pub(crate) fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [batch, heads, seq, dim] = k.dims();
        let end = self.len + seq;
        let (k_store, v_store) = match self.layers[layer].take() {
            Some((ks, vs)) if ks.dims()[2] >= end => (ks, vs),
            held => {
                let capacity = end.max(INITIAL_CAPACITY).next_power_of_two();
                let empty = || Tensor::<4>::zeros([batch, heads, capacity, dim], &k.device()).cast(k.dtype());
                let (mut ks, mut vs) = (empty(), empty());
                if let Some((old_k, old_v)) = held {
                    let kept = s![.., .., 0..self.len, ..];
                    ks = ks.slice_assign(kept, old_k.slice(kept));
                    vs = vs.slice_assign(kept, old_v.slice(kept));
                }
                (ks, vs)
            }
        };
        let new = s![.., .., self.len..end, ..];
        let (k_store, v_store) = (k_store.slice_assign(new, k), v_store.slice_assign(new, v));
        let filled = s![.., .., 0..end, ..];
        let views = (k_store.clone().slice(filled), v_store.clone().slice(filled));
        self.layers[layer] = Some((k_store, v_store));
        views
    }

    /// The host forward's `append`: this forward's keys and values `[seq, width]` for `layer`
    /// written after the cached positions; returns the whole history. The vectors grow
    /// geometrically, so a token costs its own copy and, rarely, a regrow.
    pub(crate) fn append_host(
        &mut self,
        layer: usize,
        k: &[f32],
        v: &[f32],
        width: usize,
    ) -> (&[f32], &[f32]) {
        let (keys, values) = &mut self.host[layer];
        for (store, new) in [(&mut *keys, k), (&mut *values, v)] {
            store.truncate(self.len * width);
            store.extend_from_slice(new);
        }
        (keys, values)
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
