//! The operations a Llama step is made of, at the grain of a fused CPU loop: the body
//! (`model::body`) is written once over this trait, and each executor implements it once: Burn's
//! tensor ops (`model::tensor`: the GPU, half-precision compute, the reference on the CPU) or
//! specbench's host loops and kernels (`model::host`: the CPU in f32).

use crate::error::Result;
use crate::model::cache::KvCache;
use crate::model::config::LlamaConfig;
use crate::model::rope::Rope;
use crate::model::step::Geometry;
use crate::model::weights::{HostTensor, Weight, WeightSource};

/// The sizes the operations need.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub eps: f64,
}

impl Dims {
    pub fn of(config: &LlamaConfig) -> Self {
        Self {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            kv_heads: config.num_kv_heads(),
            head_dim: config.head_dim(),
            intermediate: config.intermediate_size,
            eps: config.rms_norm_eps,
        }
    }

    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

pub trait Executor: Sized {
    /// Activations `[rows, width]`, row-major.
    type Rows;
    /// A projection's weights `[out, in]` (several stacked along `out`), or the embedding.
    type Matrix;
    /// A norm's weight `[hidden]`.
    type Norm;
    /// One layer's keys and values, in this executor's layout.
    type LayerCache;
    /// A forward's positions and visibility, prepared once for every layer.
    type Positions;

    /// `weights` stacked along the output dimension, in `runtime`'s storage.
    fn load_matrix(
        &self,
        source: &mut impl WeightSource,
        weights: &[Weight],
        config: &LlamaConfig,
    ) -> Result<Self::Matrix>;
    fn load_norm(
        &self,
        source: &mut impl WeightSource,
        weight: Weight,
        config: &LlamaConfig,
    ) -> Result<Self::Norm>;
    /// A matrix `[rows, cols]` that a loader assembled itself (`name` for messages), stored as
    /// `load_matrix` stores weights.
    fn matrix_of(&self, tensor: HostTensor, rows: usize, cols: usize, name: &str) -> Result<Self::Matrix>;
    fn norm_of(&self, values: Vec<f32>) -> Self::Norm;
    /// Bytes a matrix holds, and how it stores them (`f32`, `q4_k`, ...).
    fn matrix_bytes(matrix: &Self::Matrix) -> usize;
    fn matrix_formats(matrix: &Self::Matrix) -> Vec<&'static str>;

    /// An empty cache of `layers` layers in this executor's layout.
    fn new_cache(&self, layers: usize) -> KvCache;
    /// Layer `layer` of `cache`, or `None` when the cache was made by the other executor.
    fn layer_cache(cache: &mut KvCache, layer: usize) -> Option<&mut Self::LayerCache>;

    fn positions(&self, geometry: &Geometry, rope: &Rope) -> Self::Positions;

    /// Rows `ids` of the embedding table.
    fn embed(&self, table: &Self::Matrix, ids: &[u32]) -> Self::Rows;
    /// Host rows `[rows, width]`, row-major, as activations.
    fn upload(&self, values: Vec<f32>, width: usize) -> Self::Rows;
    /// Hugging Face's `LlamaRMSNorm`, row by row.
    fn rms_norm(&self, x: &Self::Rows, weight: &Self::Norm, eps: f64) -> Self::Rows;
    /// `x · Wᵀ`.
    fn project(&self, weights: &Self::Matrix, x: &Self::Rows) -> Self::Rows;
    /// Rows of stacked q/k/v in, attention out `[rows, heads · head_dim]`: RoPE at each row's
    /// position, keys and values appended to `cache` after `geometry.start`, grouped-query
    /// attention over the cached positions and the rows each row sees.
    fn attend(
        &self,
        qkv: Self::Rows,
        cache: &mut Self::LayerCache,
        geometry: &Geometry,
        positions: &Self::Positions,
        dims: &Dims,
    ) -> Self::Rows;
    /// `x + y`.
    fn add(&self, x: Self::Rows, y: Self::Rows) -> Self::Rows;
    /// Rows `[gate | up]` of `2 · intermediate` to `silu(gate) · up`.
    fn swiglu(&self, gate_up: Self::Rows, intermediate: usize) -> Self::Rows;
    /// The last `n` rows of `x`, `width` wide.
    fn last_rows(&self, x: Self::Rows, n: usize, width: usize) -> Self::Rows;
    /// `x` as f32 on the host, row-major.
    fn read(&self, x: &Self::Rows) -> Vec<f32>;
}
