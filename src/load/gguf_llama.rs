//! A Llama model in a GGUF file, as llama.cpp writes it: `llama.*` metadata into `LlamaConfig`,
//! `blk.N.*` tensors handed out under our weight table (quantized blocks stay blocks), and the
//! stop tokens. The tokenizer is `gguf_tokenizer`'s.

use std::collections::HashSet;
use std::path::Path;

use burn::tensor::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, TensorInfo, TensorType, Value};
use crate::model::config::{LlamaConfig, RopeParameters, TokenIds};
use crate::model::weights::{
    HostTensor, LayerWeight, Weight, WeightSource, device_tensor, extend_floats_from_le_bytes,
};

/// A GGUF Llama checkpoint, its tensors handed out by our weight names.
pub struct GgufCheckpoint {
    file: GgufFile,
    used: HashSet<String>,
    device: Device,
    dtype: DType,
}

/// llama.cpp's tensor name for each weight.
fn gguf_name(weight: Weight) -> String {
    match weight {
        Weight::Embed => "token_embd.weight".into(),
        Weight::FinalNorm => "output_norm.weight".into(),
        Weight::LmHead => "output.weight".into(),
        Weight::Layer(i, w) => {
            let suffix = match w {
                LayerWeight::Query => "attn_q",
                LayerWeight::Key => "attn_k",
                LayerWeight::Value => "attn_v",
                LayerWeight::Output => "attn_output",
                LayerWeight::Gate => "ffn_gate",
                LayerWeight::Up => "ffn_up",
                LayerWeight::Down => "ffn_down",
                LayerWeight::AttentionNorm => "attn_norm",
                LayerWeight::MlpNorm => "ffn_norm",
            };
            format!("blk.{i}.{suffix}.weight")
        }
    }
}

impl GgufCheckpoint {
    pub fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self { file: GgufFile::open(path)?, used: HashSet::new(), device: device.clone(), dtype })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn info(&self, weight: Weight, config: &LlamaConfig) -> Result<(String, &TensorInfo)> {
        let name = gguf_name(weight);
        let info = self
            .file
            .tensors
            .get(&name)
            .ok_or_else(|| self.file.error(format!("tensor `{name}` is missing")))?;
        let expected = weight.hf_shape(config);
        if info.torch_shape() != expected {
            return Err(Error::ShapeMismatch { name, expected, found: info.torch_shape() });
        }
        Ok((name, info))
    }

    /// The heads whose rows llama.cpp's converter interleaved, for the query and key weights.
    fn permuted_heads(weight: Weight, config: &LlamaConfig) -> Option<usize> {
        match weight {
            Weight::Layer(_, LayerWeight::Query) => Some(config.num_attention_heads),
            Weight::Layer(_, LayerWeight::Key) => Some(config.num_kv_heads()),
            _ => None,
        }
    }
}

/// llama.cpp's converter stores each query/key head's rows as pairs `(i, i + d/2)` side by side
/// (the rotary layout of Meta's original code); Hugging Face's layout has the halves apart.
/// Returns the rows in Hugging Face order, each `row_len` long (bytes of blocks, or values).
fn unpermute_rows<T: Copy>(data: &[T], heads: usize, row_len: usize) -> Vec<T> {
    let rows = data.len() / row_len;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for row in 0..rows {
        let (head, within) = (row / head_dim, row % head_dim);
        let (j, i) = (within / half, within % half);
        let source = head * head_dim + 2 * i + j;
        out.extend_from_slice(&data[source * row_len..][..row_len]);
    }
    out
}

impl WeightSource for GgufCheckpoint {
    fn load<const D: usize>(&mut self, weight: Weight, config: &LlamaConfig) -> Result<Tensor<D>> {
        let values = self.load_host(weight, config)?.into_f32();
        Ok(device_tensor(weight, config, values, &self.device, self.dtype))
    }

    fn load_host(&mut self, weight: Weight, config: &LlamaConfig) -> Result<HostTensor> {
        let (name, info) = self.info(weight, config)?;
        // Floats are decoded straight from the map, a piece at a time: no copy of the file's
        // bytes beside them.
        let floats = |dtype: DType| {
            let mut values = Vec::with_capacity(info.byte_range().len() / dtype.size());
            self.file.read_out(info, |piece| extend_floats_from_le_bytes(piece, dtype, &mut values));
            values
        };
        let mut tensor = match info.kind {
            TensorType::F32 => HostTensor::F32(floats(DType::F32)),
            TensorType::F16 => HostTensor::Half { values: floats(DType::F16), dtype: DType::F16 },
            TensorType::Bf16 => HostTensor::Half { values: floats(DType::BF16), dtype: DType::BF16 },
            // Rows along the last dimension: a 1-D norm in a block type is one row.
            TensorType::Blocks(format) => {
                let cols = info.torch_shape().last().copied().unwrap_or(0);
                let bytes = self.file.copy_out(info);
                if !format.scales_finite(&bytes) {
                    return Err(self
                        .file
                        .error(format!("tensor `{name}` has a NaN or infinite block scale")));
                }
                HostTensor::Blocks { format, bytes, cols }
            }
        };
        if let Some(heads) = Self::permuted_heads(weight, config) {
            let rows = info.torch_shape()[0];
            if rows % (2 * heads) != 0 {
                return Err(self
                    .file
                    .error(format!("tensor `{name}`: {rows} rows do not split into {heads} heads")));
            }
            match &mut tensor {
                HostTensor::F32(values) | HostTensor::Half { values, .. } => {
                    *values = unpermute_rows(values, heads, values.len() / rows)
                }
                HostTensor::Blocks { bytes, .. } => *bytes = unpermute_rows(bytes, heads, bytes.len() / rows),
            }
        }
        if let HostTensor::F32(values) | HostTensor::Half { values, .. } = &tensor
            && !values.iter().all(|v| v.is_finite())
        {
            return Err(self.file.error(format!("tensor `{name}` holds a NaN or infinite value")));
        }
        self.used.insert(name);
        Ok(tensor)
    }

    fn finish(&mut self, _config: &LlamaConfig) -> Result<()> {
        let unused: Vec<String> =
            self.file.tensors.keys().filter(|name| !self.used.contains(*name)).cloned().collect();
        if unused.is_empty() {
            return Ok(());
        }
        Err(Error::UnusedTensors {
            dir: self.file.path().to_path_buf(),
            names: unused,
            why: "the `llama.*` metadata describes no such tensors; the file and its metadata disagree"
                .into(),
        })
    }
}

/// Reads the model configuration from the `llama.*` keys, refusing what specbench does not
/// compute (another architecture, experts, partial rotary, rope scaling other than linear,
/// Llama 3.1's frequency-factor tensor).
pub fn config_from(file: &GgufFile) -> Result<LlamaConfig> {
    let meta = &file.metadata;
    let arch = meta
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| file.error("no `general.architecture`"))?;
    if arch != "llama" {
        return Err(file.error(format!(
            "`general.architecture` is `{arch}`; specbench runs Llama-architecture models (`llama`) only"
        )));
    }
    let number = |key: &str| -> Result<Option<u64>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().map(Some).ok_or_else(|| file.error(format!("`{key}` = {v:?} is not a count")))
            }
        }
    };
    let required = |key: &str| -> Result<usize> {
        number(key)?.map(|v| v as usize).ok_or_else(|| file.error(format!("metadata `{key}` is missing")))
    };
    let float = |key: &str| -> Result<Option<f64>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| file.error(format!("`{key}` = {v:?} is not a number")))
            }
        }
    };
    if number("llama.expert_count")?.unwrap_or(0) > 0 {
        return Err(file.error("`llama.expert_count` > 0: mixture-of-experts models are not supported"));
    }
    if file.tensors.contains_key("rope_freqs.weight") {
        return Err(file.error(
            "tensor `rope_freqs.weight` (Llama 3.1 rope frequency factors) is not supported; \
             use the Hugging Face folder, whose config.json gives the llama3 rope parameters",
        ));
    }
    let tokens = meta.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(<[Value]>::len);
    let hidden = required("llama.embedding_length")?;
    let heads = required("llama.attention.head_count")?;
    let vocab = match number("llama.vocab_size")? {
        Some(v) => v as usize,
        None => tokens.ok_or_else(|| file.error("neither `llama.vocab_size` nor `tokenizer.ggml.tokens`"))?,
    };
    let head_dim = number("llama.attention.key_length")?.map(|v| v as usize).unwrap_or(hidden / heads.max(1));
    if let Some(value_length) = number("llama.attention.value_length")?
        && value_length as usize != head_dim
    {
        return Err(file.error("`llama.attention.value_length` differs from the key length: not a Llama"));
    }
    if let Some(rotary) = number("llama.rope.dimension_count")?
        && rotary as usize != head_dim
    {
        return Err(file.error(format!(
            "`llama.rope.dimension_count` = {rotary} rotates part of each {head_dim}-wide head: partial rotary is not supported"
        )));
    }
    let rope_scaling = match meta.get("llama.rope.scaling.type").map(|v| v.as_str()) {
        None | Some(Some("none")) => None,
        Some(Some("linear")) => Some(RopeParameters {
            rope_type: Some("linear".into()),
            factor: Some(
                float("llama.rope.scaling.factor")?
                    .ok_or_else(|| file.error("linear rope scaling without `llama.rope.scaling.factor`"))?,
            ),
            ..Default::default()
        }),
        Some(other) => {
            return Err(file.error(format!(
                "`llama.rope.scaling.type` = {other:?} is not supported (none, linear are)"
            )));
        }
    };
    let token_id = |key: &str| -> Result<Option<u32>> {
        number(key)?
            .map(|v| u32::try_from(v).map_err(|_| file.error(format!("`{key}` = {v} is not a token id"))))
            .transpose()
    };
    let stop_ids: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|key| token_id(key).transpose())
        .collect::<Result<_>>()?;
    let config = LlamaConfig {
        architectures: Some(vec!["LlamaForCausalLM".into()]),
        model_type: Some("llama".into()),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: required("llama.feed_forward_length")?,
        num_hidden_layers: required("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(number("llama.attention.head_count_kv")?.map_or(heads, |v| v as usize)),
        head_dim: Some(head_dim),
        rope_theta: Some(float("llama.rope.freq_base")?.unwrap_or(crate::model::config::DEFAULT_ROPE_THETA)),
        rope_scaling,
        rope_parameters: None,
        rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| file.error("metadata `llama.attention.layer_norm_rms_epsilon` is missing"))?,
        tie_word_embeddings: !file.tensors.contains_key("output.weight"),
        max_position_embeddings: required("llama.context_length")?,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: Some(TokenIds::Many(stop_ids)),
        hidden_act: "silu".into(),
        attention_bias: false,
        mlp_bias: false,
        other: Default::default(),
    };
    config.validate().map_err(|e| file.error(e.to_string()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_undoes_llama_cpps_converter_permutation() {
        // Two heads of four rows, one byte per row: the converter's `permute` maps Hugging Face
        // rows (h, j, i) to (h, i, j); here rows are numbered by their Hugging Face position.
        let hf: Vec<u8> = (0..8).collect();
        let converted: Vec<u8> = vec![0, 2, 1, 3, 4, 6, 5, 7];
        assert_eq!(unpermute_rows(&converted, 2, 1), hf);
    }
}
