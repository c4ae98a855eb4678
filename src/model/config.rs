//! `LlamaConfig` mirrors Hugging Face `config.json`; presets are constructors with the exact
//! shapes of released Llama 3 models.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// transformers 4.x: `rope_theta` and `rope_scaling` at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5.x: both in one `rope_parameters` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Every other key. Most are metadata (`transformers_version`, `dtype`/`torch_dtype`,
    /// `use_cache`, ...); `validate` rejects those that would change the computation.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `eos_token_id` is a number in base checkpoints and a list in instruct ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `rope_scaling` (4.x) or `rope_parameters` (5.x, which also holds `rope_theta`). HF writes
/// the kind as `rope_type` (current) or `type` (older files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Keys of rope types specbench does not implement (yarn's `beta_fast`, ...): an error.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl RopeParameters {
    /// The rope type; files that omit it mean `default`.
    pub fn kind(&self) -> &str {
        self.rope_type.as_deref().unwrap_or("default")
    }
}

/// Top-level keys of other Llama-family configs that change the math when set to anything but
/// the value given (`None`: when present and not null). specbench implements none of them, so
/// each is an error rather than a silent default.
const UNIMPLEMENTED_KEYS: &[(&str, Option<&str>)] = &[
    ("sliding_window", None),
    ("use_sliding_window", Some("false")),
    ("partial_rotary_factor", Some("1.0")),
    ("attn_logit_softcapping", None),
    ("final_logit_softcapping", None),
    ("logits_scaling", Some("1.0")),
    ("embedding_multiplier", Some("1.0")),
    ("residual_multiplier", Some("1.0")),
    ("attention_multiplier", None),
    ("query_pre_attn_scalar", None),
    ("use_qk_norm", Some("false")),
    ("qk_layernorm", Some("false")),
    ("no_rope_layers", None),
    ("tie_encoder_decoder", Some("false")),
];

/// Larger than any model that exists (10¹³): a bigger config is a typo or a damaged file, and
/// its sizes would overflow the products that allocate tensors.
const MAX_PARAMETERS: f64 = 1e13;

/// transformers' `LlamaConfig` default.
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let config = Self::parse_file(path)?;
        config.validate()?;
        Ok(config)
    }

    /// The keys of `path`, not yet validated (a config that embeds Llama's keys in its own).
    pub fn parse_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::MissingFile { path: path.to_path_buf(), what: "config.json" });
        }
        let text = crate::files::read_text(path)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::MalformedFile { path: path.to_path_buf(), message: e.to_string() })
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }

    /// Parameter count, embeddings counted once when tied. In f64, so that no size read from
    /// a file can overflow it.
    pub fn num_parameters(&self) -> f64 {
        let f = |n: usize| n as f64;
        let (h, i, v) = (f(self.hidden_size), f(self.intermediate_size), f(self.vocab_size));
        let q = f(self.num_attention_heads) * f(self.head_dim());
        let kv = f(self.num_kv_heads()) * f(self.head_dim());
        let attention = h * q + 2.0 * h * kv + q * h;
        let mlp = 3.0 * h * i;
        let layer = attention + mlp + 2.0 * h;
        let head = if self.tie_word_embeddings { 0.0 } else { v * h };
        v * h + f(self.num_hidden_layers) * layer + h + head
    }

    /// Rejects what this implementation does not compute, instead of producing silent garbage.
    pub fn validate(&self) -> Result<()> {
        if let Some(arch) = &self.architectures
            && !arch.iter().any(|a| a == "LlamaForCausalLM")
        {
            return Err(Error::Unsupported(format!(
                "architecture {arch:?}; specbench implements LlamaForCausalLM"
            )));
        }
        if let Some(kind) = &self.model_type
            && kind != "llama"
        {
            return Err(Error::Unsupported(format!("model_type `{kind}`; specbench implements `llama`")));
        }
        if self.hidden_act != "silu" {
            return Err(Error::Unsupported(format!("hidden_act `{}`; Llama uses `silu`", self.hidden_act)));
        }
        if self.attention_bias || self.mlp_bias {
            return Err(Error::Unsupported("attention_bias / mlp_bias = true; Llama 3 has no biases".into()));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::InvalidConfig(format!("`{key}` must be positive")));
        }
        if self.num_parameters() > MAX_PARAMETERS {
            return Err(Error::InvalidConfig(format!(
                "the config describes {:.3e} parameters, more than the {MAX_PARAMETERS:.0e} specbench accepts",
                self.num_parameters()
            )));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return Err(Error::InvalidConfig(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::InvalidConfig(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            )));
        }
        self.check_unimplemented_keys()?;
        self.rope_kind()?;
        Ok(())
    }

    /// `rope_theta` wherever the file put it: 5.x `rope_parameters`, 4.x top level (or inside
    /// `rope_scaling`, as some exporters write it), else transformers' default. Two places
    /// that disagree are an error, not a guess.
    pub fn rope_theta(&self) -> Result<f64> {
        let places = [
            ("rope_parameters.rope_theta", self.rope_parameters.as_ref().and_then(|r| r.rope_theta)),
            ("rope_theta", self.rope_theta),
            ("rope_scaling.rope_theta", self.rope_scaling.as_ref().and_then(|r| r.rope_theta)),
        ];
        let given: Vec<(&str, f64)> = places.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).collect();
        if let Some((key, theta)) = given.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::InvalidConfig(format!(
                "`{key}` = {theta}: the RoPE base must be a positive number"
            )));
        }
        if let Some(((a, x), (b, y))) = given.first().zip(given.iter().find(|(_, v)| *v != given[0].1)) {
            return Err(Error::InvalidConfig(format!("`{a}` = {x} disagrees with `{b}` = {y}")));
        }
        let theta = given.first().map_or(DEFAULT_ROPE_THETA, |(_, v)| *v);
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::InvalidConfig(format!("rope_theta must be a finite number > 1, got {theta}")));
        }
        Ok(theta)
    }

    /// The rope scaling parameters: 5.x `rope_parameters`, else 4.x `rope_scaling`. Both present
    /// with different types is ambiguous, and an error.
    pub fn rope_scaling(&self) -> Result<Option<&RopeParameters>> {
        match (&self.rope_parameters, &self.rope_scaling) {
            (Some(new), Some(old)) if new.kind() != old.kind() => Err(Error::InvalidConfig(format!(
                "`rope_parameters` says rope type `{}` but `rope_scaling` says `{}`",
                new.kind(),
                old.kind()
            ))),
            (Some(new), _) => Ok(Some(new)),
            (None, old) => Ok(old.as_ref()),
        }
    }

    fn check_unimplemented_keys(&self) -> Result<()> {
        for (key, harmless) in UNIMPLEMENTED_KEYS {
            let Some(value) = self.other.get(*key) else { continue };
            let is_harmless = match harmless {
                None => value.is_null(),
                Some(expected) => {
                    value.is_null()
                        || value.as_bool().is_some_and(|b| expected.parse::<bool>() == Ok(b))
                        || value.as_f64().zip(expected.parse::<f64>().ok()).is_some_and(|(a, b)| a == b)
                }
            };
            if !is_harmless {
                return Err(Error::Unsupported(format!(
                    "config key `{key}` = {value} changes the computation and specbench does not implement it"
                )));
            }
        }
        Ok(())
    }

    pub fn llama3_2_1b() -> Self {
        Self::llama3(128_256, 2048, 8192, 16, 32, 8, 64, true, 32.0)
    }

    pub fn llama3_2_3b() -> Self {
        Self::llama3(128_256, 3072, 8192, 28, 24, 8, 128, true, 32.0)
    }

    pub fn llama3_1_8b() -> Self {
        Self::llama3(128_256, 4096, 14_336, 32, 32, 8, 128, false, 8.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn llama3(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        head_dim: usize,
        tie_word_embeddings: bool,
        rope_factor: f64,
    ) -> Self {
        Self {
            architectures: Some(vec!["LlamaForCausalLM".into()]),
            model_type: Some("llama".into()),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: Some(head_dim),
            rope_theta: Some(500_000.0),
            rope_scaling: Some(RopeParameters {
                rope_type: Some("llama3".into()),
                factor: Some(rope_factor),
                low_freq_factor: Some(1.0),
                high_freq_factor: Some(4.0),
                original_max_position_embeddings: Some(8192),
                ..Default::default()
            }),
            rope_parameters: None,
            rms_norm_eps: 1e-5,
            tie_word_embeddings,
            max_position_embeddings: 131_072,
            bos_token_id: Some(128_000),
            eos_token_id: Some(TokenIds::Many(vec![128_001, 128_008, 128_009])),
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
            other: BTreeMap::new(),
        }
    }

    /// A small Llama with the given dimensions, for tests and custom random presets.
    pub fn custom(dims: &CustomDims) -> Self {
        Self {
            architectures: Some(vec!["LlamaForCausalLM".into()]),
            model_type: Some("llama".into()),
            vocab_size: dims.vocab,
            hidden_size: dims.hidden,
            intermediate_size: dims.intermediate,
            num_hidden_layers: dims.layers,
            num_attention_heads: dims.heads,
            num_key_value_heads: Some(dims.kv_heads),
            head_dim: Some(dims.head_dim),
            rope_theta: Some(DEFAULT_ROPE_THETA),
            rope_scaling: None,
            rope_parameters: None,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: dims.tied,
            max_position_embeddings: dims.max_positions,
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
            other: BTreeMap::new(),
        }
    }
}

/// `eos_token_id` of a `generation_config.json` (a number, a list or null), which is what
/// transformers' `generate` stops on; `None` when the file or the key is absent.
pub fn generation_eos_ids(path: &Path) -> Result<Option<Vec<u32>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let config: Value = crate::files::read_json(path)?;
    match config.get("eos_token_id") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Vec::new())),
        Some(ids) => {
            serde_json::from_value::<TokenIds>(ids.clone()).map(|ids| Some(ids.to_vec())).map_err(|_| {
                Error::MalformedFile {
                    path: path.to_path_buf(),
                    message: format!("`eos_token_id` is {ids}, not a token id or a list of them"),
                }
            })
        }
    }
}

/// Dimensions of a custom random model: `random:custom,hidden=256,layers=4,...`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomDims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tied: bool,
    pub max_positions: usize,
}

impl Default for CustomDims {
    fn default() -> Self {
        Self {
            vocab: 512,
            hidden: 128,
            intermediate: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            tied: true,
            max_positions: 2048,
        }
    }
}

impl CustomDims {
    /// Parses `key=value` pairs separated by commas; unknown keys are an error.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut dims = Self::default();
        for pair in spec.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Error::InvalidConfig(format!("custom model spec `{pair}` is not key=value"))
            })?;
            let number = || {
                value.parse::<usize>().map_err(|_| {
                    Error::InvalidConfig(format!("custom model `{key}`: `{value}` is not a number"))
                })
            };
            match key {
                "vocab" => dims.vocab = number()?,
                "hidden" => dims.hidden = number()?,
                "intermediate" => dims.intermediate = number()?,
                "layers" => dims.layers = number()?,
                "heads" => dims.heads = number()?,
                "kv_heads" => dims.kv_heads = number()?,
                "head_dim" => dims.head_dim = number()?,
                "max_positions" => dims.max_positions = number()?,
                "tied" => {
                    dims.tied = value.parse().map_err(|_| {
                        Error::InvalidConfig(format!("custom model `tied`: `{value}` is not true/false"))
                    })?
                }
                _ => {
                    return Err(Error::InvalidConfig(format!(
                        "unknown custom model key `{key}` (vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, tied, max_positions)"
                    )));
                }
            }
        }
        Ok(dims)
    }
}

/// The rope types of transformers' Llama that specbench computes. Others (`dynamic`, `yarn`,
/// `longrope`) are an error naming them.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScalingKind {
    None,
    /// Positions divided by `factor` (equivalently, every frequency).
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl LlamaConfig {
    /// The rope type as specbench computes it; unimplemented types and keys are errors.
    pub fn rope_kind(&self) -> Result<RopeScalingKind> {
        use RopeScalingKind as Kind;
        let Some(scaling) = self.rope_scaling()? else {
            return Ok(Kind::None);
        };
        let needs =
            |name: &str| Error::InvalidConfig(format!("rope type `{}` needs `{name}`", scaling.kind()));
        let kind = match scaling.kind() {
            "default" => Kind::None,
            "linear" => Kind::Linear { factor: scaling.factor.ok_or_else(|| needs("factor"))? },
            "llama3" => Kind::Llama3 {
                factor: scaling.factor.ok_or_else(|| needs("factor"))?,
                low_freq_factor: scaling.low_freq_factor.ok_or_else(|| needs("low_freq_factor"))?,
                high_freq_factor: scaling.high_freq_factor.ok_or_else(|| needs("high_freq_factor"))?,
                original_max_position_embeddings: scaling
                    .original_max_position_embeddings
                    .ok_or_else(|| needs("original_max_position_embeddings"))?,
            },
            other => {
                return Err(Error::Unsupported(format!(
                    "rope_scaling type `{other}`; supported: default, linear, llama3"
                )));
            }
        };
        if let Some(key) = scaling.other.keys().next() {
            return Err(Error::Unsupported(format!(
                "rope key `{key}` is not part of rope type `{}` as specbench implements it",
                scaling.kind()
            )));
        }
        match kind {
            Kind::Linear { factor } | Kind::Llama3 { factor, .. } if !(factor.is_finite() && factor >= 1.0) => {
                Err(Error::InvalidConfig(format!("rope scaling factor must be ≥ 1, got {factor}")))
            }
            Kind::Llama3 { low_freq_factor, high_freq_factor, original_max_position_embeddings, .. }
                if !(low_freq_factor > 0.0 && high_freq_factor > low_freq_factor)
                    || original_max_position_embeddings == 0 =>
            {
                Err(Error::InvalidConfig(
                    "rope_scaling: need 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0"
                        .into(),
                ))
            }
            kind => Ok(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_parameter_counts() {
        // Rounded counts from the model cards: 1.24B, 3.21B, 8.03B.
        let billions = |c: LlamaConfig| c.num_parameters() / 1e9;
        assert!((billions(LlamaConfig::llama3_2_1b()) - 1.236).abs() < 0.01);
        assert!((billions(LlamaConfig::llama3_2_3b()) - 3.213).abs() < 0.01);
        assert!((billions(LlamaConfig::llama3_1_8b()) - 8.030).abs() < 0.01);
    }

    #[test]
    fn eos_may_be_a_number_or_a_list() {
        let one: TokenIds = serde_json::from_str("7").unwrap();
        let many: TokenIds = serde_json::from_str("[7, 9]").unwrap();
        assert_eq!(one.to_vec(), vec![7]);
        assert_eq!(many.to_vec(), vec![7, 9]);
    }

    #[test]
    fn stop_tokens_come_from_generation_config_when_it_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation_config.json");
        assert_eq!(generation_eos_ids(&path).unwrap(), None);
        for (text, expected) in [
            (r#"{"eos_token_id": 2}"#, Some(vec![2])),
            (r#"{"eos_token_id": [2, 9]}"#, Some(vec![2, 9])),
            (r#"{"eos_token_id": null}"#, Some(vec![])),
            (r#"{"bos_token_id": 1}"#, None),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(generation_eos_ids(&path).unwrap(), expected, "{text}");
        }
        std::fs::write(&path, r#"{"eos_token_id": "x"}"#).unwrap();
        assert!(generation_eos_ids(&path).unwrap_err().to_string().contains("generation_config.json"));
    }

    #[test]
    fn custom_spec_rejects_unknown_keys() {
        let dims = CustomDims::parse("hidden=64,layers=3,tied=false").unwrap();
        assert_eq!((dims.hidden, dims.layers, dims.tied), (64, 3, false));
        let err = CustomDims::parse("hiddn=64").unwrap_err().to_string();
        assert!(err.contains("hiddn"), "{err}");
    }

    #[test]
    fn keys_that_change_the_math_are_errors_and_metadata_is_not() {
        let mut config = LlamaConfig::custom(&CustomDims::default());
        config.other.insert("transformers_version".into(), "5.24.0".into());
        config.other.insert("dtype".into(), "bfloat16".into());
        config.other.insert("sliding_window".into(), Value::Null);
        config.other.insert("partial_rotary_factor".into(), 1.0.into());
        config.validate().unwrap();
        for (key, value) in [("sliding_window", Value::from(4096)), ("partial_rotary_factor", 0.5.into())] {
            let mut bad = config.clone();
            bad.other.insert(key.into(), value);
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn gqa_head_counts_must_divide() {
        let mut config = LlamaConfig::custom(&CustomDims::default());
        config.num_key_value_heads = Some(3);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("multiple of num_key_value_heads"), "{err}");
    }
}
