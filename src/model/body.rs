//! The Llama body, written once over an `Executor`: its weights, and the forward of one step
//! (embedding, then per layer RMSNorm → q/k/v → RoPE, cache and attention → output + residual →
//! RMSNorm → gate/up → SwiGLU → down + residual, then the final norm and the LM head).

use crate::error::{Error, Result};
use crate::model::cache::KvCache;
use crate::model::config::LlamaConfig;
use crate::model::executor::{Dims, Executor};
use crate::model::rope::Rope;
use crate::model::step::{Geometry, Step};
use crate::model::weights::{LayerWeight, Weight, WeightSource};

pub struct Body<E: Executor> {
    exec: E,
    embed: E::Matrix,
    layers: Vec<Layer<E>>,
    norm: E::Norm,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<E::Matrix>,
    dims: Dims,
    rope: Rope,
}

struct Layer<E: Executor> {
    attention_norm: E::Norm,
    /// Query, key and value stacked: `(heads + 2 kv_heads) · head_dim` outputs.
    qkv: E::Matrix,
    block: Block<E>,
}

/// A decoder layer from its queries, keys and values on: attention, the output projection added
/// to the residual stream, and the MLP block. Llama's layer and EAGLE-3's (whose q/k/v read the
/// token's embedding beside the feature) differ only before it.
pub(crate) struct Block<E: Executor> {
    pub(crate) output: E::Matrix,
    pub(crate) mlp_norm: E::Norm,
    /// Gate and up stacked: `2 · intermediate` outputs.
    pub(crate) gate_up: E::Matrix,
    pub(crate) down: E::Matrix,
}

impl<E: Executor> Block<E> {
    pub(crate) fn matrices(&self) -> [&E::Matrix; 3] {
        [&self.output, &self.gate_up, &self.down]
    }

    /// The residual stream `x` after the layer whose rows of q/k/v are `qkv`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        exec: &E,
        x: E::Rows,
        qkv: E::Rows,
        cache: &mut E::LayerCache,
        geometry: &Geometry,
        positions: &E::Positions,
        d: &Dims,
    ) -> E::Rows {
        let attention = exec.attend(qkv, cache, geometry, positions, d);
        let x = exec.add(x, exec.project(&self.output, &attention));
        let normed = exec.rms_norm(&x, &self.mlp_norm, d.eps);
        let activated = exec.swiglu(exec.project(&self.gate_up, &normed), d.intermediate);
        exec.add(x, exec.project(&self.down, &activated))
    }
}

/// What a forward returns: the logits `[rows, vocab]` of the step's last `logits_rows` rows
/// (none when it asked for none), and the hidden states it asked to capture, in its order,
/// each `[rows, hidden]` on the host.
pub struct Forward<R> {
    pub logits: Option<R>,
    pub hidden: Vec<Vec<f32>>,
}

impl<E: Executor> Body<E> {
    /// Loads every weight from `source` (in the order random weights are drawn, so that a seed
    /// gives the same model on every executor).
    pub fn build(exec: E, config: &LlamaConfig, source: &mut impl WeightSource) -> Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let w = |kind| Weight::Layer(i, kind);
                let mut matrix = |kinds: &[LayerWeight]| {
                    let weights: Vec<Weight> = kinds.iter().map(|&kind| w(kind)).collect();
                    exec.load_matrix(source, &weights, config)
                };
                let qkv = matrix(&[LayerWeight::Query, LayerWeight::Key, LayerWeight::Value])?;
                let output = matrix(&[LayerWeight::Output])?;
                let gate_up = matrix(&[LayerWeight::Gate, LayerWeight::Up])?;
                let down = matrix(&[LayerWeight::Down])?;
                Ok(Layer {
                    attention_norm: exec.load_norm(source, w(LayerWeight::AttentionNorm), config)?,
                    qkv,
                    block: Block {
                        output,
                        mlp_norm: exec.load_norm(source, w(LayerWeight::MlpNorm), config)?,
                        gate_up,
                        down,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(exec.load_matrix(source, &[Weight::LmHead], config)?)
        };
        let embed = exec.load_matrix(source, &[Weight::Embed], config)?;
        let norm = exec.load_norm(source, Weight::FinalNorm, config)?;
        Ok(Self { exec, embed, layers, norm, lm_head, dims: Dims::of(config), rope: Rope::new(config)? })
    }

    /// Every projection, the embedding and the untied head.
    pub fn matrices(&self) -> impl Iterator<Item = &E::Matrix> {
        let layers = self.layers.iter().flat_map(|l| std::iter::once(&l.qkv).chain(l.block.matrices()));
        layers.chain([&self.embed]).chain(self.lm_head.as_ref())
    }

    pub fn new_cache(&self) -> KvCache {
        self.exec.new_cache(self.layers.len())
    }

    /// Rows `ids` of the embedding table on the host (an EAGLE-3 head reads the target's).
    pub fn embedding_rows(&self, ids: &[u32]) -> Vec<f32> {
        self.exec.read(&self.exec.embed(&self.embed, ids))
    }

    /// Runs `step` after the positions held in `cache` (ids, context and rows checked by the
    /// caller). Inlined so that the host executor compiles it for the vector ISA in one piece.
    #[inline(always)]
    pub fn forward(&self, step: &Step, cache: &mut KvCache) -> Result<Forward<E::Rows>> {
        let (exec, d) = (&self.exec, &self.dims);
        let layers = self.layers.len();
        if let Some(&l) = step.capture.iter().find(|&&l| l > layers) {
            return Err(Error::InvalidConfig(format!(
                "hidden states of layer {l} asked for; the model has {layers} layers (0..={layers})"
            )));
        }
        let geometry = Geometry::of(step, cache.len())?;
        let positions = exec.positions(&geometry, &self.rope);
        let mut hidden = vec![Vec::new(); step.capture.len()];
        let mut x = exec.embed(&self.embed, step.ids);
        for (i, layer) in self.layers.iter().enumerate() {
            capture(exec, &x, i, step.capture, &mut hidden);
            if step.skip.get(i).copied().unwrap_or(false) {
                continue;
            }
            let layer_cache = E::layer_cache(cache, i).ok_or_else(|| {
                Error::Usage("a KV cache made by another executor was passed to this model".into())
            })?;
            let qkv = exec.project(&layer.qkv, &exec.rms_norm(&x, &layer.attention_norm, d.eps));
            x = layer.block.forward(exec, x, qkv, layer_cache, &geometry, &positions, d);
        }
        capture(exec, &x, layers, step.capture, &mut hidden);
        cache.advance(step.ids.len());
        let rows = step.logits_rows.min(step.ids.len());
        let logits = (rows > 0).then(|| {
            let last = exec.rms_norm(&exec.last_rows(x, rows, d.hidden), &self.norm, d.eps);
            exec.project(self.lm_head.as_ref().unwrap_or(&self.embed), &last)
        });
        Ok(Forward { logits, hidden })
    }
}

/// Copies the residual stream entering layer `layer` into each slot that asked for it.
#[inline(always)]
fn capture<E: Executor>(exec: &E, x: &E::Rows, layer: usize, wanted: &[usize], hidden: &mut [Vec<f32>]) {
    for (slot, _) in wanted.iter().enumerate().filter(|&(_, &l)| l == layer) {
        hidden[slot] = exec.read(x);
    }
}
