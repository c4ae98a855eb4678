//! The KV cache lives outside the model so that speculative decoding can roll back rejected
//! draft tokens with `truncate`. Each executor keeps its own layout; storage grows ahead of use,
//! so appending a token copies that token, not the whole history, and a rollback only moves the
//! length.

use burn::tensor::{Int, Tensor, TensorData, s};

/// Keys and values per layer, of which the first `len` positions hold data.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Layers,
    len: usize,
}

/// The layout of the executor that made the cache.
#[derive(Debug, Clone)]
pub(crate) enum Layers {
    Host(Vec<HostKv>),
    Device(Vec<DeviceKv>),
}

/// The host executor's layer: `[positions, kv_heads · head_dim]` keys and values, row-major.
#[derive(Debug, Clone, Default)]
pub struct HostKv {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
    /// Floats per position (`kv_heads · head_dim`), set at the first append.
    pub width: usize,
}

/// The tensor executor's layer: `[1, kv_heads, capacity, head_dim]` keys and values on the
/// device, allocated at the first append.
#[derive(Debug, Clone, Default)]
pub struct DeviceKv {
    pub stores: Option<(Tensor<4>, Tensor<4>)>,
}

impl KvCache {
    pub(crate) fn new(layers: Layers) -> Self {
        Self { layers, len: 0 }
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

    /// Keeps the cached positions `start + keep[j]` (ascending, each at least its `j`) as
    /// positions `start + j` and drops every position after them: the accepted branch of a
    /// verified tree, its rows moved down over the rejected ones. Keys carry their RoPE angle,
    /// which is the position of the row's depth, so a kept branch is where a chain would be.
    pub fn keep(&mut self, start: usize, keep: &[usize]) {
        let ascending = keep.windows(2).all(|w| w[0] < w[1]);
        debug_assert!(ascending && start + keep.last().map_or(0, |&k| k + 1) <= self.len);
        let moved = keep.iter().enumerate().filter(|&(j, &k)| j != k).map(|(j, &k)| (start + k, start + j));
        let moved: Vec<(usize, usize)> = moved.collect();
        self.len = start + keep.len();
        if moved.is_empty() {
            return;
        }
        match &mut self.layers {
            Layers::Host(layers) => {
                for layer in layers.iter_mut().filter(|layer| layer.width > 0) {
                    let w = layer.width;
                    for &(from, to) in &moved {
                        layer.keys.copy_within(from * w..(from + 1) * w, to * w);
                        layer.values.copy_within(from * w..(from + 1) * w, to * w);
                    }
                }
            }
            Layers::Device(layers) => {
                for store in layers.iter_mut().filter_map(|layer| layer.stores.as_mut()) {
                    store.0 = gather_positions(store.0.clone(), start, keep);
                    store.1 = gather_positions(store.1.clone(), start, keep);
                }
            }
        }
    }

    /// Every layer appends the same number of positions, so the length moves once per forward.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// `store` (`[1, kv_heads, capacity, head_dim]`) with positions `start + keep[j]` written to
/// `start + j`.
fn gather_positions(store: Tensor<4>, start: usize, keep: &[usize]) -> Tensor<4> {
    if keep.is_empty() {
        return store;
    }
    let ids: Vec<i64> = keep.iter().map(|&k| (start + k) as i64).collect();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [keep.len()]), &store.device());
    let kept = store.clone().select(2, ids);
    store.slice_assign(s![.., .., start..start + keep.len(), ..], kept)
}
