//! EAGLE-3 heads with random weights, written in SpecForge's checkpoint format for a target's
//! shape, as the `eagle3` drafter reads them.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, tensor::TensorView};
use serde_json::json;

/// Tensors by name: shape, little-endian bytes, dtype.
pub type Tensors = HashMap<String, (Vec<usize>, Vec<u8>, Dtype)>;

/// A head's dimensions: its layer's (which match the target's hidden size here), the target's
/// vocabulary, its draft vocabulary and the target layers it reads.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub draft_vocab: usize,
    pub aux_layers: [usize; 3],
    /// Spread of the random weights: larger gives more peaked draft distributions.
    pub std: f32,
}

impl HeadShape {
    pub fn config(&self) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": self.hidden, "intermediate_size": self.intermediate, "num_hidden_layers": 1,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
            "vocab_size": self.vocab, "draft_vocab_size": self.draft_vocab, "target_hidden_size": self.hidden,
            "torch_dtype": "float32",
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": self.aux_layers},
        })
    }

    /// Random f32 weights in SpecForge's names; draft token d is target token
    /// d · vocab / draft_vocab, a scattered subset of the target's vocabulary.
    pub fn tensors(&self, seed: u64) -> Tensors {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut floats = |shape: &[usize], std: f32| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| (rng.r#gen::<f32>() - 0.5) * 2.0 * std).collect();
            (shape.to_vec(), values.iter().flat_map(|v| v.to_le_bytes()).collect(), Dtype::F32)
        };
        let (h, i, s) = (self.hidden, self.intermediate, self.std);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut tensors = Tensors::from([
            ("fc.weight".to_string(), floats(&[h, 3 * h], s / 2.0)),
            ("midlayer.self_attn.q_proj.weight".into(), floats(&[q, 2 * h], s)),
            ("midlayer.self_attn.k_proj.weight".into(), floats(&[kv, 2 * h], s)),
            ("midlayer.self_attn.v_proj.weight".into(), floats(&[kv, 2 * h], s)),
            ("midlayer.self_attn.o_proj.weight".into(), floats(&[h, q], s)),
            ("midlayer.mlp.gate_proj.weight".into(), floats(&[i, h], s)),
            ("midlayer.mlp.up_proj.weight".into(), floats(&[i, h], s)),
            ("midlayer.mlp.down_proj.weight".into(), floats(&[h, i], s)),
            ("lm_head.weight".into(), floats(&[self.draft_vocab, h], 2.5 * s)),
        ]);
        let ones = |n: usize| (vec![n], 1.0f32.to_le_bytes().repeat(n), Dtype::F32);
        for norm in [
            "midlayer.input_layernorm.weight",
            "midlayer.hidden_norm.weight",
            "midlayer.post_attention_layernorm.weight",
            "norm.weight",
        ] {
            tensors.insert(norm.into(), ones(h));
        }
        let target = |d: usize| d * self.vocab / self.draft_vocab;
        let d2t: Vec<i64> = (0..self.draft_vocab).map(|d| (target(d) - d) as i64).collect();
        self.insert_d2t(&mut tensors, &d2t);
        let mut t2d = vec![0u8; self.vocab];
        (0..self.draft_vocab).for_each(|d| t2d[target(d)] = 1);
        tensors.insert("t2d".into(), (vec![self.vocab], t2d, Dtype::BOOL));
        tensors
    }

    pub fn insert_d2t(&self, tensors: &mut Tensors, d2t: &[i64]) {
        let bytes = d2t.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert("d2t".into(), (vec![d2t.len()], bytes, Dtype::I64));
    }

    /// A random head of this shape in a new folder.
    pub fn write_random(&self, seed: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &self.config(), &self.tensors(seed));
        dir
    }
}

pub fn write(dir: &Path, config: &serde_json::Value, tensors: &Tensors) {
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (shape, bytes, dtype))| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors")).unwrap();
}
