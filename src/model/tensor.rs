//! The tensor executor: the step as Burn tensor ops on the run's backend and dtype. It runs on
//! the GPU (wgpu), computes in half precision where the device does, and is the reference the
//! host executor is tested against on the CPU (`--projections backend`).

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, s};

use crate::backend::Runtime;
use crate::error::Result;
use crate::model::cache::{DeviceKv, KvCache, Layers};
use crate::model::config::LlamaConfig;
use crate::model::executor::{Dims, Executor};
use crate::model::rope::Rope;
use crate::model::step::Geometry;
use crate::model::weights::{HostTensor, Weight, WeightSource};

/// Storage rows allocated at a layer's first append: enough for short generations without a
/// regrow.
const INITIAL_CAPACITY: usize = 128;

#[derive(Debug)]
pub struct TensorExecutor {
    runtime: Runtime,
}

impl TensorExecutor {
    pub fn new(runtime: &Runtime) -> Self {
        Self { runtime: runtime.clone() }
    }
}

/// Cos and sin `[1, 1, rows, head_dim]` at each row's position, and the mask `[rows, cached +
/// rows]` (true = hidden) where some row does not see every position before it.
pub struct TensorPositions {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: Option<Tensor<2, Bool>>,
}

impl Executor for TensorExecutor {
    type Rows = Tensor<2>;
    type Matrix = Tensor<2>;
    type Norm = Tensor<1>;
    type LayerCache = DeviceKv;
    type Positions = TensorPositions;

    fn load_matrix(
        &self,
        source: &mut impl WeightSource,
        weights: &[Weight],
        config: &LlamaConfig,
    ) -> Result<Tensor<2>> {
        let parts = weights.iter().map(|&w| source.load(w, config)).collect::<Result<Vec<Tensor<2>>>>()?;
        Ok(Tensor::cat(parts, 0))
    }

    fn load_norm(
        &self,
        source: &mut impl WeightSource,
        weight: Weight,
        config: &LlamaConfig,
    ) -> Result<Tensor<1>> {
        source.load(weight, config)
    }

    fn matrix_of(&self, tensor: HostTensor, rows: usize, cols: usize, _name: &str) -> Result<Tensor<2>> {
        Ok(self.upload(tensor.into_f32(), cols).reshape([rows, cols]).cast(self.runtime.dtype()))
    }

    fn norm_of(&self, values: Vec<f32>) -> Tensor<1> {
        let len = values.len();
        Tensor::<1>::from_data(TensorData::new(values, [len]), self.runtime.device())
            .cast(self.runtime.dtype())
    }

    fn matrix_bytes(matrix: &Tensor<2>) -> usize {
        matrix.shape().num_elements() * matrix.dtype().size()
    }

    fn matrix_formats(matrix: &Tensor<2>) -> Vec<&'static str> {
        vec![crate::backend::dtype_name(matrix.dtype())]
    }

    fn new_cache(&self, layers: usize) -> KvCache {
        KvCache::new(Layers::Device(vec![DeviceKv::default(); layers]))
    }

    fn layer_cache(cache: &mut KvCache, layer: usize) -> Option<&mut DeviceKv> {
        match &mut cache.layers {
            Layers::Device(layers) => layers.get_mut(layer),
            Layers::Host(_) => None,
        }
    }

    fn positions(&self, geometry: &Geometry, rope: &Rope) -> TensorPositions {
        let device = self.runtime.device();
        let (rows, half) = (geometry.rows(), rope.half_dim());
        let (cos, sin) = rope.cos_sin(&geometry.positions);
        // Hugging Face concatenates the frequencies with themselves: [f0..f_{d/2}, f0..f_{d/2}].
        let doubled = |values: Vec<f32>| {
            let full: Vec<f32> =
                values.chunks_exact(half).flat_map(|row| row.iter().chain(row)).copied().collect();
            Tensor::<4>::from_data(TensorData::new(full, [1, 1, rows, 2 * half]), device)
                .cast(self.runtime.dtype())
        };
        let total = geometry.start + rows;
        let mask = (rows > 1 || geometry.cached_tree_rows() > 0).then(|| {
            let tree_start = geometry.tree_start;
            let hidden: Vec<bool> = (0..rows)
                .flat_map(|i| (0..total).map(move |p| p >= tree_start && !geometry.sees(i, p - tree_start)))
                .collect();
            Tensor::from_data(TensorData::new(hidden, [rows, total]), device)
        });
        TensorPositions { cos: doubled(cos), sin: doubled(sin), mask }
    }

    fn embed(&self, table: &Tensor<2>, ids: &[u32]) -> Tensor<2> {
        let ids = TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [ids.len()]);
        table.clone().select(0, Tensor::<1, Int>::from_data(ids, self.runtime.device()))
    }

    fn upload(&self, values: Vec<f32>, width: usize) -> Tensor<2> {
        let rows = values.len() / width;
        Tensor::<2>::from_data(TensorData::new(values, [rows, width]), self.runtime.device())
            .cast(self.runtime.dtype())
    }

    fn rms_norm(&self, x: &Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
        let dtype = x.dtype();
        let rms = (x.clone().cast(DType::F32).square().mean_dim(1) + eps).sqrt();
        (x.clone() / rms.cast(dtype)) * weight.clone().unsqueeze()
    }

    /// `x · Wᵀ` computed as `(W · xᵀ)ᵀ`, so that the weights are the contiguous left operand
    /// (`x · Wᵀ` multiplies by a strided view, several times slower on ndarray and on the GPU's
    /// decode shapes; results/gpu/README.md). Flattening the transposed input copies it, so the
    /// right operand is a contiguous `[in, rows]` too.
    fn project(&self, weights: &Tensor<2>, x: &Tensor<2>) -> Tensor<2> {
        let [rows, input] = x.dims();
        let out = weights.dims()[0];
        let x_t = x.clone().transpose().reshape([rows * input]).reshape([input, rows]);
        weights.clone().matmul(x_t).transpose().reshape([rows, out])
    }

    fn attend(
        &self,
        qkv: Tensor<2>,
        cache: &mut DeviceKv,
        geometry: &Geometry,
        positions: &TensorPositions,
        d: &Dims,
    ) -> Tensor<2> {
        let (rows, h, kv, hd) = (geometry.rows(), d.heads, d.kv_heads, d.head_dim);
        let heads = |t: Tensor<2>, n: usize| t.reshape([1, rows, n, hd]).swap_dims(1, 2);
        let [q, k, v]: [Tensor<2>; 3] = qkv
            .split_with_sizes(vec![h * hd, kv * hd, kv * hd], 1)
            .try_into()
            .expect("three sizes give three parts");
        let q = rotate_half(heads(q, h), &positions.cos, &positions.sin);
        let k = rotate_half(heads(k, kv), &positions.cos, &positions.sin);
        let (k, v) = append(cache, geometry.start, k, heads(v, kv));
        let total = k.dims()[2];

        // Grouped-query attention without copying K/V: the `group` query heads that share a KV
        // head are stacked along the row axis, [1, kv, group · rows, d].
        let group = h / kv;
        let q = q.reshape([1, kv, group * rows, hd]);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (hd as f64).sqrt());
        let scores = match &positions.mask {
            Some(mask) => {
                let mask = mask.clone().repeat_dim(0, group).reshape([1, 1, group * rows, total]);
                scores.mask_fill(mask.expand([1, kv, group * rows, total]), f32::NEG_INFINITY)
            }
            None => scores,
        };
        let dtype = scores.dtype();
        let probs = softmax(scores.cast(DType::F32), 3).cast(dtype);
        probs.matmul(v).reshape([1, h, rows, hd]).swap_dims(1, 2).reshape([rows, h * hd])
    }

    fn add(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
        x + y
    }

    fn swiglu(&self, gate_up: Tensor<2>, _intermediate: usize) -> Tensor<2> {
        let [gate, up]: [Tensor<2>; 2] = gate_up.chunk(2, 1).try_into().expect("an even width splits in two");
        silu(gate) * up
    }

    fn last_rows(&self, x: Tensor<2>, n: usize, _width: usize) -> Tensor<2> {
        let rows = x.dims()[0];
        x.slice(s![rows - n..rows, ..])
    }

    fn read(&self, x: &Tensor<2>) -> Vec<f32> {
        x.clone().cast(DType::F32).into_data().try_to_vec::<f32>().expect("read back as f32")
    }
}

/// `x * cos + rotate_half(x) * sin` on `[1, heads, rows, head_dim]`.
fn rotate_half(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let head_dim = x.dims()[3];
    let half = head_dim / 2;
    let x1 = x.clone().slice(s![.., .., .., 0..half]);
    let x2 = x.clone().slice(s![.., .., .., half..head_dim]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Writes this step's keys and values after the `start` cached positions (doubling the
/// storage when full) and returns the whole history as views.
fn append(cache: &mut DeviceKv, start: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let [batch, heads, rows, dim] = k.dims();
    let end = start + rows;
    let (k_store, v_store) = match cache.stores.take() {
        Some((ks, vs)) if ks.dims()[2] >= end => (ks, vs),
        held => {
            let capacity = end.max(INITIAL_CAPACITY).next_power_of_two();
            let empty = || Tensor::<4>::zeros([batch, heads, capacity, dim], &k.device()).cast(k.dtype());
            let (mut ks, mut vs) = (empty(), empty());
            if let Some((old_k, old_v)) = held {
                let kept = s![.., .., 0..start, ..];
                ks = ks.slice_assign(kept, old_k.slice(kept));
                vs = vs.slice_assign(kept, old_v.slice(kept));
            }
            (ks, vs)
        }
    };
    let new = s![.., .., start..end, ..];
    let (k_store, v_store) = (k_store.slice_assign(new, k), v_store.slice_assign(new, v));
    let filled = s![.., .., 0..end, ..];
    let views = (k_store.clone().slice(filled), v_store.clone().slice(filled));
    cache.stores = Some((k_store, v_store));
    views
}
