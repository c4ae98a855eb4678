//! The one table of weight names and shapes, and the sources parameters come from: a Hugging
//! Face checkpoint or seeded random values. The model builder asks a source for each `Weight`;
//! it never spells a tensor name itself.

use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};

use crate::error::Result;
use crate::formats::BlockFormat;
use crate::model::config::LlamaConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    Embed,
    FinalNorm,
    LmHead,
    Layer(usize, LayerWeight),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerWeight {
    Query,
    Key,
    Value,
    Output,
    Gate,
    Up,
    Down,
    AttentionNorm,
    MlpNorm,
}

impl Weight {
    /// Name in Hugging Face `LlamaForCausalLM` checkpoints.
    pub fn hf_name(self) -> String {
        match self {
            Weight::Embed => "model.embed_tokens.weight".into(),
            Weight::FinalNorm => "model.norm.weight".into(),
            Weight::LmHead => "lm_head.weight".into(),
            Weight::Layer(i, w) => {
                let suffix = match w {
                    LayerWeight::Query => "self_attn.q_proj",
                    LayerWeight::Key => "self_attn.k_proj",
                    LayerWeight::Value => "self_attn.v_proj",
                    LayerWeight::Output => "self_attn.o_proj",
                    LayerWeight::Gate => "mlp.gate_proj",
                    LayerWeight::Up => "mlp.up_proj",
                    LayerWeight::Down => "mlp.down_proj",
                    LayerWeight::AttentionNorm => "input_layernorm",
                    LayerWeight::MlpNorm => "post_attention_layernorm",
                };
                format!("model.layers.{i}.{suffix}.weight")
            }
        }
    }

    /// Shape as stored by PyTorch (linear weights are `[out, in]`).
    pub fn hf_shape(self, config: &LlamaConfig) -> Vec<usize> {
        let h = config.hidden_size;
        let q = config.num_attention_heads * config.head_dim();
        let kv = config.num_kv_heads() * config.head_dim();
        let i = config.intermediate_size;
        match self {
            Weight::Embed | Weight::LmHead => vec![config.vocab_size, h],
            Weight::FinalNorm => vec![h],
            Weight::Layer(_, w) => match w {
                LayerWeight::Query => vec![q, h],
                LayerWeight::Key | LayerWeight::Value => vec![kv, h],
                LayerWeight::Output => vec![h, q],
                LayerWeight::Gate | LayerWeight::Up => vec![i, h],
                LayerWeight::Down => vec![h, i],
                LayerWeight::AttentionNorm | LayerWeight::MlpNorm => vec![h],
            },
        }
    }

    fn is_norm(self) -> bool {
        matches!(
            self,
            Weight::FinalNorm
                | Weight::Layer(_, LayerWeight::AttentionNorm)
                | Weight::Layer(_, LayerWeight::MlpNorm)
        )
    }
}

/// A weight in host memory, in `hf_shape`: f32 values, or the quantized blocks a GGUF file holds
/// (rows of `cols` elements), which the host kernel multiplies without widening.
#[derive(Debug)]
pub enum HostTensor {
    F32(Vec<f32>),
    /// Values a file stores in f16 or bf16 (`dtype`), widened exactly: the host kernel keeps
    /// them in that precision rather than at twice the bytes.
    Half {
        values: Vec<f32>,
        dtype: DType,
    },
    Blocks {
        format: BlockFormat,
        bytes: Vec<u8>,
        cols: usize,
    },
}

impl HostTensor {
    /// The values as f32, dequantized if need be (for the backend's own matmul).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            Self::F32(values) | Self::Half { values, .. } => values,
            Self::Blocks { format, bytes, cols } => {
                let rows = bytes.len() / format.bytes_for(cols).expect("whole blocks per row");
                let mut values = vec![0.0; rows * cols];
                format.dequantize(&bytes, &mut values);
                values
            }
        }
    }
}

/// Little-endian f32, f16 or bf16 values (`dtype`) as f32: exact, as both checkpoint formats
/// store them.
pub fn floats_from_le_bytes(bytes: &[u8], dtype: DType) -> Vec<f32> {
    let mut values = Vec::with_capacity(bytes.len() / dtype.size());
    extend_floats_from_le_bytes(bytes, dtype, &mut values);
    values
}

/// `floats_from_le_bytes`, appended to `out`.
pub fn extend_floats_from_le_bytes(bytes: &[u8], dtype: DType, out: &mut Vec<f32>) {
    let pairs = || bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    match dtype {
        DType::F16 => out.extend(pairs().map(|bits| half::f16::from_bits(bits).to_f32())),
        DType::BF16 => out.extend(pairs().map(|bits| half::bf16::from_bits(bits).to_f32())),
        DType::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        other => unreachable!("checkpoints hold float tensors in f32, f16 or bf16, not {other:?}"),
    }
}

/// `values` in `hf_shape` as the device tensor `WeightSource::load` returns, cast to `dtype`.
pub fn device_tensor<const D: usize>(
    weight: Weight,
    config: &LlamaConfig,
    values: Vec<f32>,
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    let shape: [usize; D] = weight.hf_shape(config).try_into().expect("weight rank is fixed by the table");
    Tensor::<D>::from_data(TensorData::new(values, shape), device).cast(dtype)
}

/// Where parameters come from. Tensors are returned in `Weight::hf_shape` (linear weights
/// `[out, in]`, as PyTorch stores them) and the run's float dtype.
pub trait WeightSource {
    /// On the device, in the run's dtype and `hf_shape`.
    fn load<const D: usize>(&mut self, weight: Weight, config: &LlamaConfig) -> Result<Tensor<D>>;
    /// In host memory, in `hf_shape` (for the host projection kernel).
    fn load_host(&mut self, weight: Weight, config: &LlamaConfig) -> Result<HostTensor>;
    /// Called once the model is built: a source may refuse parameters the config left unused.
    fn finish(&mut self, _config: &LlamaConfig) -> Result<()> {
        Ok(())
    }
}

/// Seeded random weights with the initialisation transformers uses (normal, std 0.02; norms 1),
/// generated on the device so even the 8B shape never passes through host memory.
pub struct RandomWeights {
    device: Device,
    dtype: DType,
    std: f64,
}

impl RandomWeights {
    pub fn new(device: &Device, dtype: DType, seed: u64) -> Self {
        device.seed(seed);
        Self { device: device.clone(), dtype, std: 0.02 }
    }

    /// A larger standard deviation gives peaked output distributions, which tiny test models
    /// need for greedy decoding to be free of near-ties.
    pub fn with_std(mut self, std: f64) -> Self {
        self.std = std;
        self
    }
}

impl RandomWeights {
    fn draw<const D: usize>(&self, weight: Weight, shape: Vec<usize>) -> Tensor<D> {
        let shape: [usize; D] = shape.try_into().expect("weight rank is fixed by the table");
        if weight.is_norm() {
            Tensor::<D>::ones(shape, &self.device)
        } else {
            Tensor::<D>::random(shape, Distribution::Normal(0.0, self.std), &self.device)
        }
    }
}

impl WeightSource for RandomWeights {
    fn load<const D: usize>(&mut self, weight: Weight, config: &LlamaConfig) -> Result<Tensor<D>> {
        Ok(self.draw::<D>(weight, weight.hf_shape(config)).cast(self.dtype))
    }

    /// Drawn by the device's seeded generator, the same values `load` gives.
    fn load_host(&mut self, weight: Weight, config: &LlamaConfig) -> Result<HostTensor> {
        let shape = weight.hf_shape(config);
        let data = match shape.len() {
            1 => self.draw::<1>(weight, shape).into_data(),
            _ => self.draw::<2>(weight, shape).into_data(),
        };
        Ok(HostTensor::F32(data.try_into_vec::<f32>().expect("random weights are drawn in f32")))
    }
}
