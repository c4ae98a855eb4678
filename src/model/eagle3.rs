//! EAGLE-3's draft head (Li et al. 2025), as SpecForge (`LlamaForCausalLMEagle3`) and vLLM
//! (`Eagle3LlamaForCausalLM`) define it: `fc` fuses the target's hidden states at a low, a middle
//! and a high layer into one feature; one Llama decoder layer whose queries, keys and values read
//! [input_layernorm(embedding of the next token); hidden_norm(feature)] and whose residual stream
//! starts at the feature (or at its norm, `norm_before_residual`); `norm` and `lm_head` over a
//! draft vocabulary, mapped to the target's by `d2t`. Its output before `norm` is the feature of
//! its next draft. Written over `Executor`, its layer after q/k/v is Llama's own `Block`.

use std::path::Path;

use serde::Deserialize;

use crate::backend::{ExecutorKind, Runtime};
use crate::error::{Error, Result};
use crate::kernels::cpu::{Vectorize, vectorized};
use crate::model::body::Block;
use crate::model::cache::KvCache;
use crate::model::config::LlamaConfig;
use crate::model::executor::{Dims, Executor};
use crate::model::host::HostExecutor;
use crate::model::rope::Rope;
use crate::model::step::{Geometry, Step};
use crate::model::tensor::TensorExecutor;
use crate::model::weights::HostTensor;

/// The checkpoint architectures that name an EAGLE-3 head.
const ARCHITECTURES: [&str; 2] = ["LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM"];

/// A head's config.json: its layer's Llama keys, and EAGLE-3's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Eagle3Config {
    /// The head's layer (`num_hidden_layers` = 1; `vocab_size` is the target's).
    pub layer: LlamaConfig,
    pub draft_vocab: usize,
    /// The target's hidden size (the fused features are three of it).
    pub target_hidden: usize,
    /// The target layers whose entering hidden states are fused (vLLM's indexing: Hugging Face's
    /// `hidden_states[l]`).
    pub aux_layers: Vec<usize>,
    pub norm_before_residual: bool,
    /// An RMSNorm (`input_norm.weight`) over the fused features before `fc`.
    pub norm_before_fc: bool,
    /// Whether `lm_head` reads `norm`'s output (SpecForge's `norm_output`) or the layer's.
    pub norm_output: bool,
}

#[derive(Debug, Default, Deserialize)]
struct EagleKeys {
    draft_vocab_size: Option<usize>,
    target_hidden_size: Option<usize>,
    eagle_aux_hidden_state_layer_ids: Option<Vec<usize>>,
    norm_before_residual: Option<bool>,
    norm_before_fc: Option<bool>,
    norm_output: Option<bool>,
    fc_norm: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct EagleSection {
    eagle_aux_hidden_state_layer_ids: Option<Vec<usize>>,
    use_aux_hidden_state: Option<bool>,
}

impl Eagle3Config {
    /// Reads `path`; the target's config fills what a head may leave out (its hidden size, and
    /// vLLM's default layers 2, L/2, L − 3), and must agree with what it states.
    pub fn from_file(path: &Path, target: &LlamaConfig) -> Result<Self> {
        let mut layer = LlamaConfig::parse_file(path)?;
        let invalid = |message: String| Error::InvalidConfig(format!("{}: {message}", path.display()));
        if let Some(arch) = layer.architectures.take()
            && !arch.iter().any(|a| ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(invalid(format!(
                "architecture {arch:?} is not an EAGLE-3 head ({})",
                ARCHITECTURES.join(", ")
            )));
        }
        let take =
            |layer: &mut LlamaConfig, key: &str| layer.other.remove(key).unwrap_or(serde_json::Value::Null);
        let keys = serde_json::json!({
            "draft_vocab_size": take(&mut layer, "draft_vocab_size"),
            "target_hidden_size": take(&mut layer, "target_hidden_size"),
            "eagle_aux_hidden_state_layer_ids": take(&mut layer, "eagle_aux_hidden_state_layer_ids"),
            "norm_before_residual": take(&mut layer, "norm_before_residual"),
            "norm_before_fc": take(&mut layer, "norm_before_fc"),
            "norm_output": take(&mut layer, "norm_output"),
            "fc_norm": take(&mut layer, "fc_norm"),
        });
        let keys: EagleKeys = serde_json::from_value(keys).map_err(|e| invalid(e.to_string()))?;
        let section = take(&mut layer, "eagle_config");
        let section: EagleSection = if section.is_null() {
            EagleSection::default()
        } else {
            serde_json::from_value(section).map_err(|e| invalid(format!("eagle_config: {e}")))?
        };
        if keys.fc_norm == Some(true) {
            return Err(invalid(
                "fc_norm = true (an RMSNorm per fused layer before fc) is not implemented".into(),
            ));
        }
        if section.use_aux_hidden_state == Some(false) {
            return Err(invalid("eagle_config.use_aux_hidden_state = false (a head on the last layer alone) is not implemented".into()));
        }
        if layer.other.contains_key("transformer_layer_config") {
            return Err(invalid("the speculators format (`transformer_layer_config`) is not read; give a SpecForge or vLLM checkpoint".into()));
        }
        layer.validate().map_err(|e| invalid(e.to_string()))?;
        if layer.num_hidden_layers != 1 {
            return Err(invalid(format!(
                "num_hidden_layers = {}; an EAGLE-3 head has one layer",
                layer.num_hidden_layers
            )));
        }
        let layers = target.num_hidden_layers;
        let aux_layers =
            match (keys.eagle_aux_hidden_state_layer_ids, section.eagle_aux_hidden_state_layer_ids) {
                (Some(a), Some(b)) if a != b => {
                    return Err(invalid(format!(
                        "eagle_aux_hidden_state_layer_ids {a:?} and eagle_config's {b:?} disagree"
                    )));
                }
                (Some(ids), _) | (None, Some(ids)) => ids,
                (None, None) => vec![2, layers / 2, layers.saturating_sub(3)],
            };
        if aux_layers.len() != 3 || aux_layers.iter().any(|&l| l > layers) {
            return Err(invalid(format!(
                "eagle_aux_hidden_state_layer_ids {aux_layers:?}: need three layers of the target's 0..={layers}"
            )));
        }
        let config = Self {
            draft_vocab: keys.draft_vocab_size.unwrap_or(layer.vocab_size),
            target_hidden: keys.target_hidden_size.unwrap_or(target.hidden_size),
            aux_layers,
            norm_before_residual: keys.norm_before_residual.unwrap_or(false),
            norm_before_fc: keys.norm_before_fc.unwrap_or(false),
            norm_output: keys.norm_output.unwrap_or(true),
            layer,
        };
        config.check_target(target).map_err(|e| invalid(e.to_string()))?;
        Ok(config)
    }

    fn check_target(&self, target: &LlamaConfig) -> Result<()> {
        if self.target_hidden != target.hidden_size {
            return Err(Error::InvalidConfig(format!(
                "target_hidden_size {} but the target's hidden size is {}",
                self.target_hidden, target.hidden_size
            )));
        }
        if self.layer.vocab_size != target.vocab_size {
            return Err(Error::VocabMismatch(format!(
                "the head's vocab_size is {}, the target's {}",
                self.layer.vocab_size, target.vocab_size
            )));
        }
        if self.draft_vocab == 0 || self.draft_vocab > self.layer.vocab_size {
            return Err(Error::InvalidConfig(format!(
                "draft_vocab_size {} must be in 1..={}",
                self.draft_vocab, self.layer.vocab_size
            )));
        }
        Ok(())
    }

    /// Shape of each tensor a head holds, by its SpecForge name.
    pub fn shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (h, d) = (self.layer.hidden_size, Dims::of(&self.layer));
        let (i, qkv_in) = (self.layer.intermediate_size, 2 * h);
        let mut shapes = vec![
            ("fc.weight", vec![h, 3 * self.target_hidden]),
            ("midlayer.input_layernorm.weight", vec![h]),
            ("midlayer.hidden_norm.weight", vec![h]),
            ("midlayer.self_attn.q_proj.weight", vec![d.q_width(), qkv_in]),
            ("midlayer.self_attn.k_proj.weight", vec![d.kv_width(), qkv_in]),
            ("midlayer.self_attn.v_proj.weight", vec![d.kv_width(), qkv_in]),
            ("midlayer.self_attn.o_proj.weight", vec![h, d.q_width()]),
            ("midlayer.post_attention_layernorm.weight", vec![h]),
            ("midlayer.mlp.gate_proj.weight", vec![i, h]),
            ("midlayer.mlp.up_proj.weight", vec![i, h]),
            ("midlayer.mlp.down_proj.weight", vec![h, i]),
            ("norm.weight", vec![h]),
            ("lm_head.weight", vec![self.draft_vocab, h]),
        ];
        if self.norm_before_fc {
            shapes.push(("input_norm.weight", vec![3 * self.target_hidden]));
        }
        shapes
    }
}

/// Where a head's tensors come from, by name.
pub trait HeadSource {
    /// Float tensor `name`, checked against `shape`.
    fn floats(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor>;
    /// Integer tensor `name` of `len` elements, or `None` when the checkpoint has none.
    fn integers(&mut self, name: &str, len: usize) -> Result<Option<Vec<i64>>>;
    fn contains(&self, name: &str) -> bool;
}

/// A head loaded on the runtime's executor.
pub struct Eagle3Head {
    engine: Engine,
    config: Eagle3Config,
    /// Target id of each draft id.
    draft_to_target: Vec<u32>,
}

// One per head, matched once per step.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Tensor(HeadBody<TensorExecutor>),
    Host(HeadBody<HostExecutor>),
}

struct HeadBody<E: Executor> {
    exec: E,
    fc_norm: Option<E::Norm>,
    fc: E::Matrix,
    /// The head's own embedding when its checkpoint holds one; else the target's is passed in.
    embed: Option<E::Matrix>,
    embed_norm: E::Norm,
    feature_norm: E::Norm,
    /// The columns of q/k/v that read the embedding, and those that read the feature.
    embed_qkv: E::Matrix,
    feature_qkv: E::Matrix,
    block: Block<E>,
    /// `None` where `lm_head` reads the layer's output itself (`norm_output = false`).
    norm: Option<E::Norm>,
    lm_head: E::Matrix,
    dims: Dims,
    rope: Rope,
    norm_before_residual: bool,
}

/// What one head forward reads per row: the feature, and the token whose embedding goes beside it.
pub enum HeadInput<'a> {
    /// The target's hidden states at the aux layers, concatenated per row (`3 · target_hidden`).
    Target(Vec<f32>),
    /// The head's own previous output features (`hidden`).
    Own(&'a [f32]),
}

/// One forward's results on the host.
pub struct HeadOutput {
    /// `[rows, hidden]`: the features its next draft reads.
    pub features: Vec<f32>,
    /// `[logits_rows, draft_vocab]`: the step's last rows' logits over the draft vocabulary.
    pub logits: Vec<f32>,
}

impl Eagle3Head {
    pub fn build(config: Eagle3Config, source: &mut impl HeadSource, runtime: &Runtime) -> Result<Self> {
        let d2t = source.integers("d2t", config.draft_vocab)?;
        let draft_to_target = draft_to_target(d2t, config.draft_vocab, config.layer.vocab_size)?;
        let engine = match runtime.executor() {
            ExecutorKind::Host => Engine::Host(HeadBody::build(HostExecutor::new(runtime), &config, source)?),
            ExecutorKind::Tensor => {
                Engine::Tensor(HeadBody::build(TensorExecutor::new(runtime), &config, source)?)
            }
        };
        Ok(Self { engine, config, draft_to_target })
    }

    pub fn config(&self) -> &Eagle3Config {
        &self.config
    }

    pub fn new_cache(&self) -> KvCache {
        match &self.engine {
            Engine::Tensor(body) => body.exec.new_cache(1),
            Engine::Host(body) => body.exec.new_cache(1),
        }
    }

    /// Whether it embeds tokens itself (else `forward` takes the target's embedding rows).
    pub fn has_embedding(&self) -> bool {
        match &self.engine {
            Engine::Tensor(body) => body.embed.is_some(),
            Engine::Host(body) => body.embed.is_some(),
        }
    }

    /// Runs rows of `input` beside the tokens of `step` (its `ids`, `logits_rows` and tree
    /// `parents`; with `embedding`, their rows of the target's embedding, when the head has none
    /// of its own) after the positions in `cache`.
    pub fn forward(
        &self,
        input: HeadInput,
        step: &Step,
        embedding: Option<Vec<f32>>,
        cache: &mut KvCache,
    ) -> Result<HeadOutput> {
        let end = cache.len() + step.ids.len();
        if end > self.config.layer.max_position_embeddings {
            return Err(Error::ContextOverflow { end, max: self.config.layer.max_position_embeddings });
        }
        let forward = HeadForward { input, step, embedding, cache };
        match &self.engine {
            Engine::Tensor(body) => body.forward(forward),
            Engine::Host(body) => vectorized(HostHeadForward { body, forward }),
        }
    }

    /// The target token of draft token `draft`.
    pub fn target_token(&self, draft: u32) -> u32 {
        self.draft_to_target[draft as usize]
    }

    /// The target token of each draft token, in draft order.
    pub fn target_tokens(&self) -> &[u32] {
        &self.draft_to_target
    }
}

/// `d2t` (target id = draft id + d2t[draft id]) as target ids, each in the vocabulary and
/// distinct; without `d2t` the draft vocabulary is the target's.
fn draft_to_target(d2t: Option<Vec<i64>>, draft_vocab: usize, vocab: usize) -> Result<Vec<u32>> {
    let Some(d2t) = d2t else {
        if draft_vocab != vocab {
            return Err(Error::InvalidConfig(format!(
                "draft_vocab_size {draft_vocab} differs from vocab_size {vocab} but the checkpoint has no d2t map"
            )));
        }
        return Ok((0..vocab as u32).collect());
    };
    let mut seen = vec![false; vocab];
    d2t.iter()
        .enumerate()
        .map(|(draft, &offset)| {
            let target = (draft as i64).checked_add(offset).filter(|t| (0..vocab as i64).contains(t));
            let Some(target) = target else {
                return Err(Error::InvalidConfig(format!(
                    "d2t maps draft token {draft} to {draft} + {offset}, outside the vocabulary of {vocab}"
                )));
            };
            if std::mem::replace(&mut seen[target as usize], true) {
                return Err(Error::InvalidConfig(format!(
                    "d2t maps two draft tokens to target token {target}"
                )));
            }
            Ok(target as u32)
        })
        .collect()
}

struct HeadForward<'a> {
    input: HeadInput<'a>,
    step: &'a Step<'a>,
    embedding: Option<Vec<f32>>,
    cache: &'a mut KvCache,
}

/// The host forward as one unit of work for `kernels::cpu::vectorized`.
struct HostHeadForward<'a> {
    body: &'a HeadBody<HostExecutor>,
    forward: HeadForward<'a>,
}

impl Vectorize for HostHeadForward<'_> {
    type Output = Result<HeadOutput>;
    #[inline(always)]
    fn run(self) -> Self::Output {
        self.body.forward(self.forward)
    }
}

impl<E: Executor> HeadBody<E> {
    fn build(exec: E, config: &Eagle3Config, source: &mut impl HeadSource) -> Result<Self> {
        let shapes = config.shapes();
        let shape = |name: &str| shapes.iter().find(|(n, _)| *n == name).expect("a head tensor").1.clone();
        let h = config.layer.hidden_size;
        let mut read = |name: &str| source.floats(name, &shape(name));
        let matrix = |tensor: HostTensor, name: &str| {
            let s = shape(name);
            exec.matrix_of(tensor, s[0], s[1], name)
        };
        let fc = matrix(read("fc.weight")?, "fc.weight")?;
        let o = "midlayer.self_attn.o_proj.weight";
        let output = matrix(read(o)?, o)?;
        let (gate, up) = ("midlayer.mlp.gate_proj.weight", "midlayer.mlp.up_proj.weight");
        let gate_up = stack(read(gate)?, read(up)?);
        let gate_up = exec.matrix_of(gate_up, 2 * config.layer.intermediate_size, h, gate)?;
        let down = "midlayer.mlp.down_proj.weight";
        let down = matrix(read(down)?, down)?;
        let lm_head = matrix(read("lm_head.weight")?, "lm_head.weight")?;
        let (mut embed_half, mut feature_half) = (Vec::new(), Vec::new());
        for name in ["q_proj", "k_proj", "v_proj"].map(|p| format!("midlayer.self_attn.{p}.weight")) {
            for row in read(&name)?.into_f32().chunks_exact(2 * h) {
                embed_half.extend_from_slice(&row[..h]);
                feature_half.extend_from_slice(&row[h..]);
            }
        }
        let qkv_rows = embed_half.len() / h;
        let embed_qkv =
            exec.matrix_of(HostTensor::F32(embed_half), qkv_rows, h, "midlayer.self_attn.qkv (embedding)")?;
        let feature_qkv =
            exec.matrix_of(HostTensor::F32(feature_half), qkv_rows, h, "midlayer.self_attn.qkv (feature)")?;
        let mut norm = |name: &str| Ok::<_, Error>(exec.norm_of(read(name)?.into_f32()));
        let embed_norm = norm("midlayer.input_layernorm.weight")?;
        let feature_norm = norm("midlayer.hidden_norm.weight")?;
        let mlp_norm = norm("midlayer.post_attention_layernorm.weight")?;
        let final_norm = norm("norm.weight")?;
        let fc_norm = config.norm_before_fc.then(|| norm("input_norm.weight")).transpose()?;
        let embed_name = "embed_tokens.weight";
        let embed = if source.contains(embed_name) {
            let tensor = source.floats(embed_name, &[config.layer.vocab_size, h])?;
            Some(exec.matrix_of(tensor, config.layer.vocab_size, h, embed_name)?)
        } else {
            None
        };
        Ok(Self {
            fc_norm,
            fc,
            embed,
            embed_norm,
            feature_norm,
            embed_qkv,
            feature_qkv,
            block: Block { output, mlp_norm, gate_up, down },
            norm: config.norm_output.then_some(final_norm),
            lm_head,
            dims: Dims::of(&config.layer),
            rope: Rope::new(&config.layer)?,
            norm_before_residual: config.norm_before_residual,
            exec,
        })
    }

    #[inline(always)]
    fn forward(&self, forward: HeadForward) -> Result<HeadOutput> {
        let HeadForward { input, step, embedding, cache } = forward;
        let ids = step.ids;
        let (exec, d) = (&self.exec, &self.dims);
        let feature = match input {
            HeadInput::Target(fused) => {
                let width = fused.len() / ids.len();
                let fused = exec.upload(fused, width);
                let fused = match &self.fc_norm {
                    Some(weight) => exec.rms_norm(&fused, weight, d.eps),
                    None => fused,
                };
                exec.project(&self.fc, &fused)
            }
            HeadInput::Own(features) => exec.upload(features.to_vec(), d.hidden),
        };
        let embedded = match (&self.embed, embedding) {
            (Some(table), _) => exec.embed(table, ids),
            (None, Some(rows)) => exec.upload(rows, d.hidden),
            (None, None) => {
                return Err(Error::Usage("an EAGLE-3 head without embeddings needs the target's".into()));
            }
        };
        let geometry = Geometry::of(step, cache.len())?;
        let positions = exec.positions(&geometry, &self.rope);
        let normed_feature = exec.rms_norm(&feature, &self.feature_norm, d.eps);
        let qkv = exec.add(
            exec.project(&self.embed_qkv, &exec.rms_norm(&embedded, &self.embed_norm, d.eps)),
            exec.project(&self.feature_qkv, &normed_feature),
        );
        let residual = if self.norm_before_residual { normed_feature } else { feature };
        let layer_cache = E::layer_cache(cache, 0).ok_or_else(|| {
            Error::Usage("a KV cache made by another executor was passed to this head".into())
        })?;
        let x = self.block.forward(exec, residual, qkv, layer_cache, &geometry, &positions, d);
        cache.advance(ids.len());
        let features = exec.read(&x);
        let last = exec.last_rows(x, step.logits_rows.max(1), d.hidden);
        let last = match &self.norm {
            Some(weight) => exec.rms_norm(&last, weight, d.eps),
            None => last,
        };
        let logits = exec.read(&exec.project(&self.lm_head, &last));
        Ok(HeadOutput { features, logits })
    }
}

/// Two weights stacked along the output dimension, in the wider of their precisions.
fn stack(a: HostTensor, b: HostTensor) -> HostTensor {
    match (a, b) {
        (HostTensor::Half { mut values, dtype }, HostTensor::Half { values: more, dtype: other })
            if dtype == other =>
        {
            values.extend(more);
            HostTensor::Half { values, dtype }
        }
        (a, b) => {
            let mut values = a.into_f32();
            values.extend(b.into_f32());
            HostTensor::F32(values)
        }
    }
}
