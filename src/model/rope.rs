//! Rotary position embeddings in Hugging Face's `rotate_half` layout, with Llama 3 frequency
//! scaling. Angles are computed on the host in f64 for exactly the positions of each forward, so
//! no table sized by the (131k) context is kept on the device.

use burn::tensor::{Device, Tensor, TensorData, s};

use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScalingKind {
    None,
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl RopeScalingKind {
    pub fn from_config(config: &LlamaConfig) -> Result<Self> {
        let Some(scaling) = &config.rope_scaling else {
            return Ok(Self::None);
        };
        match scaling.rope_type.as_str() {
            "default" => Ok(Self::None),
            "llama3" => {
                let field = |name: &str, value: Option<f64>| {
                    value.ok_or_else(|| {
                        Error::InvalidConfig(format!("rope_scaling of type llama3 needs `{name}`"))
                    })
                };
                let kind = Self::Llama3 {
                    factor: field("factor", scaling.factor)?,
                    low_freq_factor: field("low_freq_factor", scaling.low_freq_factor)?,
                    high_freq_factor: field("high_freq_factor", scaling.high_freq_factor)?,
                    original_max_position_embeddings: scaling.original_max_position_embeddings.ok_or_else(
                        || {
                            Error::InvalidConfig(
                                "rope_scaling of type llama3 needs `original_max_position_embeddings`".into(),
                            )
                        },
                    )?,
                };
                if let Self::Llama3 { low_freq_factor, high_freq_factor, .. } = kind
                    && high_freq_factor <= low_freq_factor
                {
                    return Err(Error::InvalidConfig(
                        "rope_scaling: high_freq_factor must exceed low_freq_factor".into(),
                    ));
                }
                Ok(kind)
            }
            other => {
                Err(Error::Unsupported(format!("rope_scaling type `{other}`; supported: llama3, default")))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(config: &LlamaConfig) -> Result<Self> {
        let head_dim = config.head_dim();
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        let inv_freq = match RopeScalingKind::from_config(config)? {
            RopeScalingKind::None => base,
            RopeScalingKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_len = original_max_position_embeddings as f64;
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                base.into_iter()
                    .map(|freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_freq_wavelen {
                            freq
                        } else if wavelen > low_freq_wavelen {
                            freq / factor
                        } else {
                            let smooth =
                                (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        };
        Ok(Self { inv_freq })
    }

    /// Cos and sin of shape `[1, 1, len, head_dim]` for positions `start..start + len`.
    pub fn cos_sin(&self, start: usize, len: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half * 2);
        let mut sin = Vec::with_capacity(len * half * 2);
        for pos in start..start + len {
            // HF concatenates the frequencies with themselves: [f0..f_{d/2}, f0..f_{d/2}].
            for _ in 0..2 {
                for freq in &self.inv_freq {
                    let angle = pos as f64 * freq;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [1, 1, len, half * 2];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// `x * cos + rotate_half(x) * sin` on `[batch, heads, seq, head_dim]`.
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let head_dim = x.dims()[3];
    let half = head_dim / 2;
    let x1 = x.clone().slice(s![.., .., .., 0..half]);
    let x2 = x.clone().slice(s![.., .., .., half..head_dim]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let dtype = x.dtype();
    x * cos.clone().cast(dtype) + rotated * sin.clone().cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{CustomDims, RopeScaling};

    fn config_with(scaling: Option<RopeScaling>) -> LlamaConfig {
        let mut config = LlamaConfig::custom(&CustomDims { head_dim: 16, ..Default::default() });
        config.rope_scaling = scaling;
        config
    }

    fn llama3_scaling() -> RopeScaling {
        RopeScaling {
            rope_type: "llama3".into(),
            factor: Some(8.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(64),
        }
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let plain = Rope::new(&config_with(None)).unwrap().inv_freq;
        let scaled = Rope::new(&config_with(Some(llama3_scaling()))).unwrap().inv_freq;
        // Wavelength 2π < 16 (= 64 / high_freq_factor): untouched.
        assert_eq!(plain[0], scaled[0]);
        // The longest wavelength (≈ 2π·10⁴·⁷⁵/¹·⁶ ≫ 64): divided by the factor.
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-15);
    }

    #[test]
    fn unknown_rope_type_is_an_error() {
        let scaling = RopeScaling { rope_type: "yarn".into(), ..llama3_scaling() };
        let err = Rope::new(&config_with(Some(scaling))).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }
}
