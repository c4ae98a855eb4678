//! Rotary position embeddings in Hugging Face's `rotate_half` layout, with Llama 3 frequency
//! scaling. Angles are computed on the host in f64 for exactly the positions of each forward, so
//! no table sized by the (131k) context is kept; each executor rotates with them.

use crate::error::Result;
use crate::model::config::{LlamaConfig, RopeScalingKind};

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(config: &LlamaConfig) -> Result<Self> {
        let head_dim = config.head_dim();
        let theta = config.rope_theta()?;
        let base: Vec<f64> =
            (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect();
        let inv_freq = match config.rope_kind()? {
            RopeScalingKind::None => base,
            RopeScalingKind::Linear { factor } => base.into_iter().map(|freq| freq / factor).collect(),
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

    /// Half the head dimension: the number of frequencies.
    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// Cos and sin `[positions, head_dim / 2]` of each frequency at each position (angles in
    /// f64, as transformers computes them before casting).
    pub fn cos_sin(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let angles =
            positions.iter().flat_map(|&pos| self.inv_freq.iter().map(move |freq| pos as f64 * freq));
        angles.map(|angle| (angle.cos() as f32, angle.sin() as f32)).unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{CustomDims, RopeParameters};

    fn config_with(scaling: Option<RopeParameters>) -> LlamaConfig {
        let mut config = LlamaConfig::custom(&CustomDims { head_dim: 16, ..Default::default() });
        config.rope_scaling = scaling;
        config
    }

    fn llama3_scaling() -> RopeParameters {
        RopeParameters {
            rope_type: Some("llama3".into()),
            factor: Some(8.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(64),
            ..Default::default()
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
        let scaling = RopeParameters { rope_type: Some("yarn".into()), ..llama3_scaling() };
        let err = Rope::new(&config_with(Some(scaling))).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = Rope::new(&config_with(None)).unwrap().inv_freq;
        let linear =
            RopeParameters { rope_type: Some("linear".into()), factor: Some(4.0), ..Default::default() };
        let scaled = Rope::new(&config_with(Some(linear))).unwrap().inv_freq;
        assert!(plain.iter().zip(&scaled).all(|(p, s)| (p / 4.0 - s).abs() < 1e-15));
    }

    #[test]
    fn transformers_5_rope_parameters_set_theta_and_scaling() {
        let config: LlamaConfig = serde_json::from_str(
            r#"{"vocab_size": 8, "hidden_size": 32, "intermediate_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "dtype": "float32",
                "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}"#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.rope_theta().unwrap(), 500_000.0);
        let mut old_style = config.clone();
        old_style.rope_theta = Some(500_000.0);
        old_style.rope_scaling = old_style.rope_parameters.take();
        assert_eq!(Rope::new(&config).unwrap().inv_freq, Rope::new(&old_style).unwrap().inv_freq);
        // The default theta would be a silent wrong model; a disagreement is an error.
        let mut both = config.clone();
        both.rope_theta = Some(10_000.0);
        assert!(both.rope_theta().unwrap_err().to_string().contains("disagrees"));
    }

    #[test]
    fn keys_of_unimplemented_rope_types_are_errors() {
        let mut params = llama3_scaling();
        params.other.insert("beta_fast".into(), 32.into());
        let err = Rope::new(&config_with(Some(params))).unwrap_err().to_string();
        assert!(err.contains("beta_fast"), "{err}");
    }
}
