//! Projection weights in host memory for the host executor: f32, bf16 or f16 rows multiplied
//! by `kernels::matvec`, or ggml's quantized blocks multiplied by `kernels::quant`.

use burn::tensor::DType;

use crate::backend::Runtime;
use crate::error::{Error, Result};
use crate::formats::BlockFormat;
use crate::kernels::matvec::{PackedRows, transpose_outputs};
use crate::kernels::quant::QuantMatrix;
use crate::model::config::LlamaConfig;
use crate::model::weights::{HostTensor, Weight, WeightSource};

/// Weights `[rows, cols]` = `[out, in]` in host memory, PyTorch's layout: one or more parts
/// stacked along the output dimension, each in one storage (a GGUF file may keep, say, q and k
/// in q4_k and v in q6_k; parts of one storage are merged into one).
#[derive(Debug)]
pub struct HostMatrix {
    parts: Vec<HostWeights>,
    rows: usize,
    cols: usize,
}

/// One part's weights: f32, or bf16/f16 at half the bytes to stream, packed for the float
/// kernel; or quantized blocks.
#[derive(Debug)]
enum HostWeights {
    F32(PackedRows<f32>),
    Bf16(PackedRows<half::bf16>),
    F16(PackedRows<half::f16>),
    Blocks(QuantMatrix),
}

impl HostWeights {
    fn floats(values: &[f32], dtype: DType, cols: usize) -> Self {
        let rows = values.len() / cols;
        match dtype {
            DType::BF16 => Self::Bf16(PackedRows::pack(values, rows, cols)),
            DType::F16 => Self::F16(PackedRows::pack(values, rows, cols)),
            _ => Self::F32(PackedRows::pack(values, rows, cols)),
        }
    }

    fn rows(&self) -> usize {
        match self {
            Self::F32(w) => w.rows(),
            Self::Bf16(w) => w.rows(),
            Self::F16(w) => w.rows(),
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
            Self::F32(w) => w.bytes(),
            Self::Bf16(w) => w.bytes(),
            Self::F16(w) => w.bytes(),
            Self::Blocks(q) => q.bytes(),
        }
    }

    /// `out_t: [rows, m]` = these weights times each input row.
    fn multiply_into(&self, x_rows: &[&[f32]], out_t: &mut [f32]) {
        match self {
            Self::F32(w) => w.multiply_into(x_rows, out_t),
            Self::Bf16(w) => w.multiply_into(x_rows, out_t),
            Self::F16(w) => w.multiply_into(x_rows, out_t),
            Self::Blocks(q) => q.multiply_into(x_rows, out_t),
        }
    }

    /// Row `row`, appended to `out` as f32.
    fn extend_row(&self, row: usize, out: &mut Vec<f32>) {
        match self {
            Self::F32(w) => w.extend_row(row, out),
            Self::Bf16(w) => w.extend_row(row, out),
            Self::F16(w) => w.extend_row(row, out),
            Self::Blocks(q) => q.extend_row(row, out),
        }
    }
}

/// Parts being gathered while loading: consecutive weights of one storage are concatenated.
enum Pending {
    Floats(Vec<f32>, DType),
    Blocks(BlockFormat, Vec<u8>),
}

impl Pending {
    /// `tensor`, rows of `cols`, in the storage the run asks for: float weights in the runtime's
    /// weight dtype (a file's f16/bf16 in its own, under an f32 run), or quantized when it asks
    /// for a block format; a checkpoint's own quantized blocks as they are.
    fn of(tensor: HostTensor, cols: usize, name: &str, runtime: &Runtime) -> Result<Self> {
        Ok(match (tensor, runtime.quantize()) {
            (HostTensor::F32(values) | HostTensor::Half { values, .. }, Some(format)) => {
                if !cols.is_multiple_of(format.block_len()) {
                    return Err(Error::InvalidConfig(format!(
                        "{} cannot be quantized to {format}: its rows of {cols} do not fill blocks of {}",
                        name,
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
                    name
                )));
            }
            (HostTensor::Blocks { format, bytes, .. }, _) => Pending::Blocks(format, bytes),
        })
    }
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
            let tensor = Pending::of(source.load_host(weight, config)?, input, &weight.hf_name(), runtime)?;
            match (pending.last_mut(), tensor) {
                (Some(Pending::Floats(all, a)), Pending::Floats(values, b)) if *a == b => all.extend(values),
                (Some(Pending::Blocks(a, all)), Pending::Blocks(b, bytes)) if *a == b => all.extend(bytes),
                (_, tensor) => pending.push(tensor),
            }
            (rows, cols) = (rows + out, input);
        }
        Ok(Self::assemble(pending, rows, cols))
    }

    /// One weight `[rows, cols]` that a loader assembled itself (`name` for messages), stored as
    /// `load` stores a weight.
    pub(crate) fn of(
        tensor: HostTensor,
        rows: usize,
        cols: usize,
        name: &str,
        runtime: &Runtime,
    ) -> Result<Self> {
        Ok(Self::assemble(vec![Pending::of(tensor, cols, name, runtime)?], rows, cols))
    }

    fn assemble(pending: Vec<Pending>, rows: usize, cols: usize) -> Self {
        let parts = pending
            .into_iter()
            .map(|part| match part {
                Pending::Floats(values, dtype) => HostWeights::floats(&values, dtype, cols),
                Pending::Blocks(format, bytes) => {
                    let part_rows = bytes.len() / format.bytes_for(cols).expect("whole blocks per row");
                    HostWeights::Blocks(QuantMatrix::new(format, bytes, part_rows, cols))
                }
            })
            .collect();
        Self { parts, rows, cols }
    }

    /// The width of a row: the input size.
    pub fn cols(&self) -> usize {
        self.cols
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
            let (here, after) = rest.split_at_mut(part.rows() * m);
            part.multiply_into(&x_rows, here);
            rest = after;
        }
        transpose_outputs(out_t, m, self.rows)
    }

    /// Row `row`, appended to `out` as f32.
    pub(crate) fn extend_row(&self, mut row: usize, out: &mut Vec<f32>) {
        for part in &self.parts {
            let rows = part.rows();
            if row < rows {
                return part.extend_row(row, out);
            }
            row -= rows;
        }
        panic!("row past the matrix");
    }
}
