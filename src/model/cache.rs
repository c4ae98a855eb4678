//! The KV cache lives outside the model so that speculative decoding can roll back rejected
//! draft tokens with `truncate`.

use burn::tensor::{Tensor, s};

/// Keys and values per layer, each `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], len: 0 }
    }

    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `n` positions; a no-op when `n >= len`.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        for layer in &mut self.layers {
            *layer = match layer.take() {
                Some(_) if n == 0 => None,
                Some((k, v)) => Some((k.slice(s![.., .., 0..n, ..]), v.slice(s![.., .., 0..n, ..]))),
                None => None,
            };
        }
        self.len = n;
    }

    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Appends this forward's keys and values for `layer` and returns the whole history.
    /// Every layer appends the same number of positions, so the length is advanced once per
    /// forward by [`KvCache::advance`].
    pub(crate) fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let updated = match self.layers[layer].take() {
            Some((k_old, v_old)) => (Tensor::cat(vec![k_old, k], 2), Tensor::cat(vec![v_old, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some(updated.clone());
        updated
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
