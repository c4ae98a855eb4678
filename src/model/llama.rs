//! One Llama 3 implementation for draft and target: RMSNorm, RoPE, grouped-query attention,
//! SwiGLU, tied or untied embeddings.

use burn::module::Param;
use burn::nn::RmsNorm;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData, s};

use crate::backend::Runtime;
use crate::error::{Error, Result};
use crate::model::cache::KvCache;
use crate::model::config::LlamaConfig;
use crate::model::host::HostLlama;
use crate::model::projection::{Embedding, Projection, ProjectionKernel};
use crate::model::rope::{Rope, apply_rotary};
use crate::model::weights::{LayerWeight, Weight, WeightSource};

#[derive(Debug)]
pub struct Llama {
    engine: Engine,
    config: LlamaConfig,
    runtime: Runtime,
}

/// Who runs the forward pass: Burn's tensor ops (the GPU, half-precision compute, and the
/// reference on the CPU with `--projections backend`), or the host path (`host`) wherever the
/// host kernels multiply and the compute is f32.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Engine {
    Burn(BurnLlama),
    Host(HostLlama),
}

#[derive(Debug)]
struct BurnLlama {
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<Projection>,
    rope: Rope,
}

#[derive(Debug)]
struct DecoderLayer {
    attention_norm: RmsNorm,
    attention: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

#[derive(Debug)]
struct Attention {
    /// Query, key and value stacked: `[.., (heads + 2 kv_heads) · head_dim]` out.
    qkv: Projection,
    output: Projection,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

#[derive(Debug)]
struct Mlp {
    /// Gate and up stacked: `[.., 2 · intermediate]` out.
    gate_up: Projection,
    down: Projection,
}

fn rms_norm(source: &mut impl WeightSource, weight: Weight, config: &LlamaConfig) -> Result<RmsNorm> {
    Ok(RmsNorm { gamma: Param::from_tensor(source.load(weight, config)?), epsilon: config.rms_norm_eps })
}

impl Llama {
    /// Builds the model from `source`, which names the tensor that is missing or misshapen, on
    /// `runtime` (whose device and dtype `source` produces), its projections multiplied by the
    /// runtime's kernel.
    pub fn build(config: LlamaConfig, source: &mut impl WeightSource, runtime: &Runtime) -> Result<Self> {
        config.validate()?;
        let engine = if runtime.kernel() == ProjectionKernel::Host && runtime.dtype() == DType::F32 {
            Engine::Host(HostLlama::build(&config, source, runtime)?)
        } else {
            Engine::Burn(BurnLlama::build(&config, source, runtime)?)
        };
        source.finish(&config)?;
        Ok(Self { engine, config, runtime: runtime.clone() })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Bytes of projection and embedding weights held (norms are negligible and not counted):
    /// what one decoded token streams from memory.
    pub fn weight_bytes(&self) -> usize {
        match &self.engine {
            Engine::Burn(burn) => burn.weight_bytes(),
            Engine::Host(host) => host.weight_bytes(),
        }
    }

    /// How the projection weights are stored, each kind once (`["q4_1", "q8_0"]` for a GGUF
    /// whose layers are q4_1 and whose embedding is q8_0).
    pub fn weight_formats(&self) -> Vec<&'static str> {
        match &self.engine {
            Engine::Burn(burn) => {
                let formats: std::collections::BTreeSet<_> =
                    burn.projections().flat_map(Projection::formats).collect();
                formats.into_iter().collect()
            }
            Engine::Host(host) => host.weight_formats().into_iter().collect(),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn device(&self) -> Device {
        self.runtime.device().clone()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    /// Token ids in (batch 1, each checked against the vocabulary), logits `[seq, vocab]` out,
    /// for positions that follow those held in `cache`.
    pub fn forward_ids(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor<2>> {
        self.forward_last(ids, cache, ids.len())
    }

    /// As `forward_ids`, but logits `[rows, vocab]` of the last `rows` positions only (at most
    /// `ids.len()`): a prompt needs one row, and the LM head is the largest product of a step.
    pub fn forward_last(&self, ids: &[u32], cache: &mut KvCache, rows: usize) -> Result<Tensor<2>> {
        self.forward_skipping(ids, cache, rows, &[])
    }

    /// As `forward_last`, with layer `i` left out wherever `skip[i]` is true (layers past the
    /// end of `skip` run): the residual stream passes it unchanged and its cache stays empty.
    pub fn forward_skipping(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        rows: usize,
        skip: &[bool],
    ) -> Result<Tensor<2>> {
        Ok(match self.forward_rows(ids, cache, rows, skip)? {
            Logits::Device(logits) => logits,
            Logits::Host(logits) => {
                let shape = [logits.len() / self.config.vocab_size, self.config.vocab_size];
                Tensor::from_data(TensorData::new(logits, shape), &self.device())
            }
        })
    }

    /// As `forward_skipping`, the first `vocab` logits of each row on the host, for a sampler.
    /// The host engine's logits are already there: they are not wrapped in a tensor to be read
    /// back (that copy was 6% of a step of the embedded pair).
    pub fn logits_skipping(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        rows: usize,
        vocab: usize,
        skip: &[bool],
    ) -> Result<Vec<Vec<f32>>> {
        Ok(match self.forward_rows(ids, cache, rows, skip)? {
            Logits::Device(logits) => {
                // Sliced on the device so that only what the sampler reads crosses to the host.
                let flat: Vec<f32> = logits
                    .slice(s![.., 0..vocab])
                    .into_data()
                    .try_to_vec()
                    .expect("logits are read back as f32");
                flat.chunks(vocab).map(<[f32]>::to_vec).collect()
            }
            Logits::Host(logits) => {
                logits.chunks(self.config.vocab_size).map(|row| row[..vocab].to_vec()).collect()
            }
        })
    }

    fn forward_rows(&self, ids: &[u32], cache: &mut KvCache, rows: usize, skip: &[bool]) -> Result<Logits> {
        if ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab_size = self.config.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab_size });
        }
        let end = cache.len() + ids.len();
        if end > self.config.max_position_embeddings {
            return Err(Error::ContextOverflow { end, max: self.config.max_position_embeddings });
        }
        let rows = rows.min(ids.len());
        Ok(match &self.engine {
            Engine::Burn(burn) => {
                let data = TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, ids.len()]);
                let logits = burn
                    .forward(Tensor::<2, Int>::from_data(data, &self.device()), cache, skip)
                    .squeeze_dim::<2>(0);
                Logits::Device(logits.slice(s![ids.len() - rows..ids.len(), ..]))
            }
            Engine::Host(host) => Logits::Host(host.forward(ids, cache, rows, skip)),
        })
    }
}

/// A forward's logits `[rows, vocab_size]`: on the device (Burn), or on the host, row-major.
// Returned once per forward and matched at once: not worth boxing the tensor handle.
#[allow(clippy::large_enum_variant)]
enum Logits {
    Device(Tensor<2>),
    Host(Vec<f32>),
}

impl BurnLlama {
    fn build(config: &LlamaConfig, source: &mut impl WeightSource, runtime: &Runtime) -> Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::build(config, i, source, runtime))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(Projection::load(source, &[Weight::LmHead], config, runtime)?)
        };
        let embed = Embedding::load(source, config, runtime)?;
        let norm = rms_norm(source, Weight::FinalNorm, config)?;
        Ok(Self { embed, layers, norm, lm_head, rope: Rope::new(config)? })
    }

    fn weight_bytes(&self) -> usize {
        self.projections().map(Projection::bytes).sum::<usize>() + self.embed.bytes()
    }

    /// Every projection and the untied head (the embedding is not a `Projection`).
    fn projections(&self) -> impl Iterator<Item = &Projection> {
        let layers = self
            .layers
            .iter()
            .flat_map(|l| [&l.attention.qkv, &l.attention.output, &l.mlp.gate_up, &l.mlp.down]);
        layers.chain(self.lm_head.as_ref())
    }

    /// Logits `[batch, seq, vocab]` (f32) for every position of `tokens: [batch, seq]`, which
    /// follow the positions held in `cache`.
    fn forward(&self, tokens: Tensor<2, Int>, cache: &mut KvCache, skip: &[bool]) -> Tensor<3> {
        let [_, seq] = tokens.dims();
        let start_pos = cache.len();
        let device = tokens.device();
        let (cos, sin) = self.rope.cos_sin(start_pos, seq, &device);
        let mask = (seq > 1).then(|| causal_mask(start_pos, seq, &device));
        let mut x = self.embed.lookup(tokens);
        for (i, layer) in self.layers.iter().enumerate().filter(|(i, _)| !skips(skip, *i)) {
            x = layer.forward(x, i, cache, &cos, &sin, mask.as_ref());
        }
        cache.advance(seq);
        let x = self.norm.forward(x);
        let logits = match &self.lm_head {
            Some(head) => head.forward(x),
            None => self.embed.logits(x),
        };
        logits.cast(DType::F32)
    }
}

/// Whether layer `i` is left out (see `Llama::forward_skipping`).
pub(crate) fn skips(skip: &[bool], i: usize) -> bool {
    skip.get(i).copied().unwrap_or(false)
}

/// The rectangular causal mask `[seq, start + seq]` (true = hidden): query `i` sits at
/// position `start + i` and sees every key up to it, cached ones included.
fn causal_mask(start: usize, seq: usize, device: &Device) -> Tensor<2, Bool> {
    let total = start + seq;
    let hidden: Vec<bool> = (0..seq).flat_map(|i| (0..total).map(move |j| j > start + i)).collect();
    Tensor::from_data(TensorData::new(hidden, [seq, total]), device)
}

impl DecoderLayer {
    fn build(
        config: &LlamaConfig,
        i: usize,
        source: &mut impl WeightSource,
        runtime: &Runtime,
    ) -> Result<Self> {
        let w = |kind| Weight::Layer(i, kind);
        let attention_norm = rms_norm(source, w(LayerWeight::AttentionNorm), config)?;
        let mlp_norm = rms_norm(source, w(LayerWeight::MlpNorm), config)?;
        let mut linear = |kinds: &[LayerWeight]| {
            let weights: Vec<Weight> = kinds.iter().map(|&kind| w(kind)).collect();
            Projection::load(source, &weights, config, runtime)
        };
        Ok(Self {
            attention_norm,
            attention: Attention {
                qkv: linear(&[LayerWeight::Query, LayerWeight::Key, LayerWeight::Value])?,
                output: linear(&[LayerWeight::Output])?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_kv_heads(),
                head_dim: config.head_dim(),
            },
            mlp_norm,
            mlp: Mlp {
                gate_up: linear(&[LayerWeight::Gate, LayerWeight::Up])?,
                down: linear(&[LayerWeight::Down])?,
            },
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        index: usize,
        cache: &mut KvCache,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let h =
            x.clone() + self.attention.forward(self.attention_norm.forward(x), index, cache, cos, sin, mask);
        h.clone() + self.mlp.forward(self.mlp_norm.forward(h))
    }
}

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        layer: usize,
        cache: &mut KvCache,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, d]).swap_dims(1, 2);
        let [q, k, v]: [Tensor<3>; 3] = self
            .qkv
            .forward(x)
            .split_with_sizes(vec![h * d, kv * d, kv * d], 2)
            .try_into()
            .expect("three sizes give three parts");
        let q = apply_rotary(heads(q, h), cos, sin);
        let k = apply_rotary(heads(k, kv), cos, sin);
        let v = heads(v, kv);
        let (k, v) = cache.append(layer, k, v);
        let total = k.dims()[2];

        // Grouped-query attention without copying K/V: the `group` query heads that share a KV
        // head are stacked along the sequence axis, [b, kv, group * seq, d].
        let group = h / kv;
        let q = q.reshape([batch, kv, group * seq, d]);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (d as f64).sqrt());
        let scores = match mask {
            Some(mask) => {
                let mask = mask.clone().repeat_dim(0, group).reshape([1, 1, group * seq, total]);
                scores.mask_fill(mask.expand([batch, kv, group * seq, total]), f32::NEG_INFINITY)
            }
            None => scores,
        };
        let dtype = scores.dtype();
        let probs = softmax(scores.cast(DType::F32), 3).cast(dtype);
        let out = probs.matmul(v).reshape([batch, h, seq, d]).swap_dims(1, 2);
        self.output.forward(out.reshape([batch, seq, h * d]))
    }
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [gate, up]: [Tensor<3>; 2] =
            self.gate_up.forward(x).chunk(2, 2).try_into().expect("an even width splits in two");
        self.down.forward(silu(gate) * up)
    }
}
