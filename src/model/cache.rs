//! The KV cache lives outside the model so that speculative decoding can roll back rejected
//! draft tokens with `truncate`. Each executor keeps its own layout; storage grows ahead of use,
//! so appending a token copies that token, not the whole history, and a rollback only moves the
//! length.

use burn::tensor::Tensor;

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

    /// Every layer appends the same number of positions, so the length moves once per forward.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
