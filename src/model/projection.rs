//! Linear projections and the embedding table, multiplied either by the backend or, on the CPU
//! backends, by specbench's host kernels (`kernels::matvec` for float weights, `kernels::quant`
//! for quantized blocks), which stream the weights at memory bandwidth where Burn's CPU matmuls
//! do not (see `matvec` for why).

use std::fmt;
use std::str::FromStr;

use aligned_vec::{AVec, ConstAlign};
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::backend::{Backend, Runtime};
use crate::error::{Error, Result};
use crate::kernels::matvec::{WeightElement, multiply_rows_into, transpose_outputs};
use crate::kernels::quant::{BlockFormat, QuantMatrix};
use crate::model::config::LlamaConfig;
use crate::model::weights::{HostTensor, Weight, WeightSource};

/// Who multiplies a model's linear layers and LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectionKernel {
    /// Burn's matmul on the run's backend.
    Backend,
    /// specbench's multi-threaded f32 kernel on weights kept in host memory.
    Host,
}

impl ProjectionKernel {
    /// The host kernel wherever it applies (a CPU backend running f32) and this CPU has its
    /// vector path; the backend elsewhere.
    pub fn default_for(backend: Backend, dtype: DType) -> Self {
        if Self::host_applies(backend, dtype) && crate::kernels::matvec::vector_path_available() {
            Self::Host
        } else {
            Self::Backend
        }
    }

    fn host_applies(backend: Backend, dtype: DType) -> bool {
        backend.uses_host_memory() && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Backend => "backend",
            Self::Host => "host",
        }
    }

    /// Refuses the host kernel where it cannot run: on a GPU.
    pub fn check(self, backend: Backend, dtype: DType) -> Result<()> {
        if self == Self::Host && !Self::host_applies(backend, dtype) {
            return Err(Error::Usage(format!(
                "the host projection kernel needs a CPU backend in f32, bf16 or f16, not {backend}/{}",
                crate::backend::dtype_name(dtype)
            )));
        }
        Ok(())
    }
}

impl fmt::Display for ProjectionKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProjectionKernel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "backend" => Ok(Self::Backend),
            "host" => Ok(Self::Host),
            other => Err(Error::Usage(format!("projection kernel `{other}`; choose backend or host"))),
        }
    }
}

/// Weights `[rows, cols]` = `[out, in]` in host memory, PyTorch's layout: one or more parts
/// stacked along the output dimension, each in one storage (a GGUF file may keep, say, q and k
/// in q4_k and v in q6_k; parts of one storage are merged into one).
#[derive(Debug)]
pub struct HostMatrix {
    parts: Vec<HostWeights>,
    rows: usize,
    cols: usize,
}

/// One part's weights: f32, or bf16/f16 at half the bytes to stream, aligned to cache lines so
/// that no vector load straddles two; or quantized blocks.
#[derive(Debug)]
enum HostWeights {
    F32(AVec<f32, ConstAlign<64>>),
    Bf16(AVec<half::bf16, ConstAlign<64>>),
    F16(AVec<half::f16, ConstAlign<64>>),
    Blocks(QuantMatrix),
}

impl HostWeights {
    fn floats(values: &[f32], dtype: DType) -> Self {
        fn aligned<W: WeightElement>(values: &[f32]) -> AVec<W, ConstAlign<64>> {
            AVec::from_iter(64, values.iter().map(|&v| W::from_f32(v)))
        }
        match dtype {
            DType::BF16 => Self::Bf16(aligned(values)),
            DType::F16 => Self::F16(aligned(values)),
            _ => Self::F32(aligned(values)),
        }
    }

    fn rows(&self, cols: usize) -> usize {
        match self {
            Self::F32(w) => w.len() / cols,
            Self::Bf16(w) => w.len() / cols,
            Self::F16(w) => w.len() / cols,
            Self::Blocks(q) => q.rows(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::F32(_) => "f32",
            Self::Bf16(_) => "bf16",
            Self::F16(_) => "f16",
            Self::Blocks(q) => q.format().name(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::F32(w) => w.len() * 4,
            Self::Bf16(w) => w.len() * 2,
            Self::F16(w) => w.len() * 2,
            Self::Blocks(q) => q.bytes(),
        }
    }

    /// `out_t: [rows, m]` = these weights times each input row.
    fn multiply_into(&self, x_rows: &[&[f32]], cols: usize, out_t: &mut [f32]) {
        match self {
            Self::F32(w) => multiply_rows_into(x_rows, w, cols, out_t),
            Self::Bf16(w) => multiply_rows_into(x_rows, w, cols, out_t),
            Self::F16(w) => multiply_rows_into(x_rows, w, cols, out_t),
            Self::Blocks(q) => q.multiply_into(x_rows, out_t),
        }
    }

    /// Row `row` of a `cols`-wide matrix, appended to `out` as f32.
    fn extend_row(&self, row: usize, cols: usize, out: &mut Vec<f32>) {
        fn widen<W: WeightElement>(w: &[W], out: &mut Vec<f32>) {
            out.extend(w.iter().map(|v| v.to_f32()));
        }
        let range = row * cols..(row + 1) * cols;
        match self {
            Self::F32(w) => out.extend_from_slice(&w[range]),
            Self::Bf16(w) => widen(&w[range], out),
            Self::F16(w) => widen(&w[range], out),
            Self::Blocks(q) => q.extend_row(row, out),
        }
    }
}

/// Parts being gathered while loading: consecutive weights of one storage are concatenated.
enum Pending {
    Floats(Vec<f32>, DType),
    Blocks(BlockFormat, Vec<u8>),
}

impl HostMatrix {
    /// `weights` stacked along the output dimension (one matrix when there is one weight). Float
    /// weights are held in the runtime's weight dtype (a file's f16/bf16 in its own, under an f32
    /// run), or quantized on load when it asks for a block format; a checkpoint's own quantized
    /// blocks are kept as they are.
    pub(crate) fn load(
        source: &mut impl WeightSource,
        weights: &[Weight],
        config: &LlamaConfig,
        runtime: &Runtime,
    ) -> Result<Self> {
        let (mut rows, mut cols) = (0, 0);
        let mut pending: Vec<Pending> = Vec::new();
        for &weight in weights {
            let [out, input]: [usize; 2] =
                weight.hf_shape(config).try_into().expect("projections and embeddings are matrices");
            let tensor = match (source.load_host(weight, config)?, runtime.quantize()) {
                (HostTensor::F32(values) | HostTensor::Half { values, .. }, Some(format)) => {
                    if !input.is_multiple_of(format.block_len()) {
                        return Err(Error::InvalidConfig(format!(
                            "{} cannot be quantized to {format}: its rows of {input} do not fill blocks of {}",
                            weight.hf_name(),
                            format.block_len()
                        )));
                    }
                    Pending::Blocks(format, format.quantize(&values).expect("whole blocks per row"))
                }
                (HostTensor::F32(values), None) => Pending::Floats(values, runtime.weight_dtype()),
                // A file's f16/bf16 stays as stored unless the run asks for another half type.
                (HostTensor::Half { values, dtype }, None) => {
                    let wanted = runtime.weight_dtype();
                    Pending::Floats(values, if wanted == DType::F32 { dtype } else { wanted })
                }
                (HostTensor::Blocks { format, .. }, Some(wanted)) if format != wanted => {
                    return Err(Error::InvalidConfig(format!(
                        "{} is already quantized to {format}; quantizing it again to {wanted} would compound \
                         the loss: run this checkpoint with dtype f32 (its own types)",
                        weight.hf_name()
                    )));
                }
                (HostTensor::Blocks { format, bytes, .. }, _) => Pending::Blocks(format, bytes),
            };
            match (pending.last_mut(), tensor) {
                (Some(Pending::Floats(all, a)), Pending::Floats(values, b)) if *a == b => all.extend(values),
                (Some(Pending::Blocks(a, all)), Pending::Blocks(b, bytes)) if *a == b => all.extend(bytes),
                (_, tensor) => pending.push(tensor),
            }
            (rows, cols) = (rows + out, input);
        }
        let parts = pending
            .into_iter()
            .map(|part| match part {
                Pending::Floats(values, dtype) => HostWeights::floats(&values, dtype),
                Pending::Blocks(format, bytes) => {
                    let part_rows = bytes.len() / format.bytes_for(cols).expect("whole blocks per row");
                    HostWeights::Blocks(QuantMatrix::new(format, &bytes, part_rows, cols))
                }
            })
            .collect();
        Ok(Self { parts, rows, cols })
    }

    /// Bytes held in memory.
    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(HostWeights::bytes).sum()
    }

    /// The storage of each part: `f32`, `bf16`, `q4_k`, ...
    pub(crate) fn formats(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.parts.iter().map(HostWeights::name)
    }

    /// `x: [m, cols]` to `[m, rows]` (products accumulate in f32).
    pub(crate) fn multiply(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        let x_rows: Vec<&[f32]> = x.chunks_exact(self.cols).collect();
        let mut out_t = vec![0.0f32; self.rows * m];
        let mut rest = out_t.as_mut_slice();
        for part in &self.parts {
            let (here, after) = rest.split_at_mut(part.rows(self.cols) * m);
            part.multiply_into(&x_rows, self.cols, here);
            rest = after;
        }
        transpose_outputs(out_t, m, self.rows)
    }

    /// `x: [.., cols]` to `[.., rows]`, in `x`'s dtype (products accumulate in f32).
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, cols] = x.dims();
        debug_assert_eq!(cols, self.cols);
        let (device, dtype) = (x.device(), x.dtype());
        let out = self.multiply(&host_f32(x.into_data()), batch * seq);
        let out = Tensor::<3>::from_data(TensorData::new(out, [batch, seq, self.rows]), &device);
        if dtype == DType::F32 { out } else { out.cast(dtype) }
    }

    /// Row `row`, appended to `out` as f32.
    pub(crate) fn extend_row(&self, mut row: usize, out: &mut Vec<f32>) {
        for part in &self.parts {
            let rows = part.rows(self.cols);
            if row < rows {
                return part.extend_row(row, self.cols, out);
            }
            row -= rows;
        }
        panic!("row past the matrix");
    }
}

fn host_f32(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().try_into_vec::<f32>().expect("converted to f32")
}

/// A linear layer without bias, or several that read the same input stacked into one (q, k and
/// v; gate and up): one pass over the input and one dispatch instead of three or two.
// A Burn tensor handle is a few hundred bytes, held once per layer: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Projection {
    /// `[out, in]`, multiplied as `W · xᵀ` (see `times_transposed`).
    Backend(Tensor<2>),
    Host(HostMatrix),
}

impl Projection {
    /// The outputs of `weights`, concatenated in that order.
    pub fn load(
        source: &mut impl WeightSource,
        weights: &[Weight],
        config: &LlamaConfig,
        runtime: &Runtime,
    ) -> Result<Self> {
        Ok(match runtime.kernel() {
            ProjectionKernel::Backend => {
                let parts =
                    weights.iter().map(|&w| source.load(w, config)).collect::<Result<Vec<Tensor<2>>>>()?;
                Self::Backend(Tensor::cat(parts, 0))
            }
            ProjectionKernel::Host => Self::Host(HostMatrix::load(source, weights, config, runtime)?),
        })
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Backend(weight) => weight.shape().num_elements() * weight.dtype().size(),
            Self::Host(matrix) => matrix.bytes(),
        }
    }

    /// How the weights are stored.
    pub fn formats(&self) -> Vec<&'static str> {
        match self {
            Self::Backend(weight) => vec![crate::backend::dtype_name(weight.dtype())],
            Self::Host(matrix) => matrix.formats().collect(),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Backend(weight) => times_transposed(weight, x),
            Self::Host(matrix) => matrix.forward(x),
        }
    }
}

/// `x · Wᵀ` for `x: [batch, seq, in]` and `W: [out, in]`, computed as `(W · xᵀ)ᵀ` so that the
/// weights are the contiguous left operand. x · Wᵀ would multiply by a strided view, several
/// times slower on ndarray. x · W with W stored `[in, out]` (the layout before) is what Burn's
/// GPU matmul handled worst at decode shapes: on an H200 (wgpu, Vulkan) its autotuner ran each
/// projection of the 8B shape through a tiled unit kernel at 47–163 GB/s (the 128256-wide LM
/// head, same kernel, at 1 TB/s), 166 ms per token; `W · xᵀ` decoded it in 44 ms
/// (results/gpu/README.md). On ndarray it nearly doubles Burn's decode too (A/B, `specbench
/// generate --projections backend`: embedded target 117–144 → 171–206 tokens/s, SmolLM2 5.2 → 9.7).
fn times_transposed(weight: &Tensor<2>, x: Tensor<3>) -> Tensor<3> {
    let [batch, seq, input] = x.dims();
    let out = weight.dims()[0];
    let rows = batch * seq;
    // Flattening the transposed view copies it, so the right operand is a contiguous [in, rows]:
    // as a strided view, a verify of 2-16 rows took 6.9 decode steps on the H200
    // (results/gpu/2026-11-26-h200-gemv-view). Contiguous, it is not yet measured on a GPU; on
    // ndarray the embedded pair's k = 4 loop runs 7-37% faster than with the `[in, out]` layout.
    let x_t = x.reshape([rows, input]).transpose().reshape([rows * input]).reshape([input, rows]);
    weight.clone().matmul(x_t).transpose().reshape([batch, seq, out])
}

/// The token embedding `[vocab, hidden]`, which is also the LM head when the two are tied.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Embedding {
    Backend(Tensor<2>),
    /// With the dtype the backend computes in, which looked-up rows are cast to.
    Host(HostMatrix, DType),
}

impl Embedding {
    pub fn load(source: &mut impl WeightSource, config: &LlamaConfig, runtime: &Runtime) -> Result<Self> {
        Ok(match runtime.kernel() {
            ProjectionKernel::Backend => Self::Backend(source.load(Weight::Embed, config)?),
            ProjectionKernel::Host => {
                Self::Host(HostMatrix::load(source, &[Weight::Embed], config, runtime)?, runtime.dtype())
            }
        })
    }

    /// Bytes of the table held.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Backend(table) => table.shape().num_elements() * table.dtype().size(),
            Self::Host(table, _) => table.bytes(),
        }
    }

    /// The rows of `tokens: [batch, seq]`, as `[batch, seq, hidden]`.
    pub fn lookup(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Self::Backend(table) => burn::tensor::module::embedding(table.clone(), tokens),
            Self::Host(table, dtype) => {
                let [batch, seq] = tokens.dims();
                let device = tokens.device();
                let ids = tokens
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .expect("token ids are integers");
                let mut rows = Vec::with_capacity(ids.len() * table.cols);
                for id in ids {
                    table.extend_row(id as usize, &mut rows);
                }
                let rows = Tensor::<3>::from_data(TensorData::new(rows, [batch, seq, table.cols]), &device);
                if *dtype == DType::F32 { rows } else { rows.cast(*dtype) }
            }
        }
    }

    /// The tied LM head: `x · Eᵀ`.
    pub fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Backend(table) => times_transposed(table, x),
            Self::Host(table, _) => table.forward(x),
        }
    }
}
