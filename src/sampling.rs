//! Logits to probabilities (temperature, top-k, top-p, in transformers' order) and seeded
//! sampling, as pure functions over host vectors. Temperature 0 is greedy: a one-hot
//! distribution at the argmax, so the speculative rule needs no special case to be exact.

use rand::Rng;
use rand::distributions::{Distribution, Uniform};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::math::exp;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    pub temperature: f64,
    /// 0 disables top-k.
    #[serde(default)]
    pub top_k: usize,
    /// 1.0 disables top-p.
    #[serde(default = "one")]
    pub top_p: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }

    pub fn with_temperature(temperature: f64) -> Self {
        Self { temperature, ..Self::greedy() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        check_temperature(self.temperature).map_err(Error::InvalidSampling)?;
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidSampling(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }

    /// The distribution tokens are drawn from. `model` ("target", "draft") and `position`
    /// only label the error for a non-finite logit: a single NaN or ±inf would otherwise turn
    /// every probability into NaN, and every acceptance test into a coin with no meaning.
    pub fn probabilities(&self, logits: &[f32], model: &'static str, position: usize) -> Result<Vec<f64>> {
        self.probabilities_banning(logits, &[], model, position)
    }

    /// `probabilities` with the `banned` tokens' logits taken as −∞ (llama.cpp's `--ignore-eos`
    /// bans the end-of-generation tokens so); ids past the vocabulary are ignored.
    pub fn probabilities_banning(
        &self,
        logits: &[f32],
        banned: &[u32],
        model: &'static str,
        position: usize,
    ) -> Result<Vec<f64>> {
        if !logits.iter().all(|x| x.is_finite()) {
            return Err(Error::NonFiniteLogits { model, position });
        }
        let n = logits.len();
        let allowed = |i: usize| !banned.contains(&(i as u32));
        if self.is_greedy() {
            let best = (0..n).filter(|&i| allowed(i)).fold(None, |best: Option<usize>, i| match best {
                Some(b) if logits[b] >= logits[i] => Some(b),
                _ => Some(i),
            });
            let mut p = vec![0.0; n];
            p[best.ok_or(Error::InvalidSampling("every token is banned".into()))?] = 1.0;
            return Ok(p);
        }
        let max = (0..n).filter(|&i| allowed(i)).map(|i| logits[i]).fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return Err(Error::InvalidSampling("every token is banned".into()));
        }
        let mut p = exp_weights(logits, max, (1.0 / self.temperature) as f32);
        for &id in banned {
            if let Some(weight) = p.get_mut(id as usize) {
                *weight = 0.0;
            }
        }
        normalize(&mut p);
        if self.top_k > 0 && self.top_k < n {
            keep_top(&mut p, self.top_k);
        }
        if self.top_p < 1.0 {
            let kept = nucleus_size(&p, self.top_p);
            keep_top(&mut p, kept);
        }
        Ok(p)
    }
}
/// The smallest positive temperature: below about 3e-39 its reciprocal overflows f32, and every
/// weight would be NaN.
pub const MIN_TEMPERATURE: f64 = 1e-30;

/// A temperature the sampler can divide by: 0 (greedy), or at least `MIN_TEMPERATURE`.
pub fn check_temperature(temperature: f64) -> std::result::Result<(), String> {
    if temperature == 0.0 {
        return Ok(());
    }
    if !(temperature.is_finite() && temperature >= MIN_TEMPERATURE) {
        return Err(format!(
            "temperature must be 0 (greedy) or a finite number ≥ {MIN_TEMPERATURE:e}, got {temperature}"
        ));
    }
    Ok(())
}

/// `exp((x − max) · inverse_t)` of every logit, in f32 (the logits' own precision), widened to
/// f64 for the sums and the acceptance test. An exp per vocabulary entry in f64, or libm's f32
/// `expf` (a call per entry), was most of the speculative step's own time at T = 1:
/// `kernels::math::exp` is plain arithmetic, so the loop vectorises.
fn exp_weights(logits: &[f32], max: f32, inverse_t: f32) -> Vec<f64> {
    struct ExpWeights<'a>(&'a [f32], f32, f32);
    impl crate::kernels::cpu::Vectorize for ExpWeights<'_> {
        type Output = Vec<f64>;
        #[inline(always)]
        fn run(self) -> Vec<f64> {
            exp_weights_portable(self.0, self.1, self.2)
        }
    }
    crate::kernels::cpu::vectorized(ExpWeights(logits, max, inverse_t))
}

#[inline(always)]
fn exp_weights_portable(logits: &[f32], max: f32, inverse_t: f32) -> Vec<f64> {
    let mut weights = vec![0.0; logits.len()];
    for (w, &x) in weights.iter_mut().zip(logits) {
        *w = f64::from(exp((x - max) * inverse_t));
    }
    weights
}

/// Index of the largest logit; the first one wins ties, as in `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Scales `p` to sum to 1. By the reciprocal: a multiply per entry instead of a divide (a
/// vocabulary of divides was a measurable share of a sampled speculative step's host time).
pub fn normalize(p: &mut [f64]) {
    let inverse = 1.0 / p.iter().sum::<f64>();
    p.iter_mut().for_each(|x| *x *= inverse);
}

/// Indices sorted by descending probability (stable, so ties keep the lower id first).
fn ranked(p: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order
}

/// Zeroes all but the `k` most likely tokens and renormalises.
fn keep_top(p: &mut [f64], k: usize) {
    for &i in &ranked(p)[k..] {
        p[i] = 0.0;
    }
    normalize(p);
}

/// Size of the smallest set of most likely tokens whose mass reaches `top_p` (at least 1).
fn nucleus_size(p: &[f64], top_p: f64) -> usize {
    let mut mass = 0.0;
    for (n, &i) in ranked(p).iter().enumerate() {
        mass += p[i];
        if mass >= top_p {
            return n + 1;
        }
    }
    p.len()
}

/// Draws an index from the distribution `p`: exactly rand's `WeightedIndex` (the same uniform
/// draw over the same running sums, so the same index for the same generator state), without
/// building its cumulative table: that allocation and pass cost more than the scan on the
/// vocabulary-sized distributions drawn here several times per step. Zero-mass tokens are
/// never drawn.
pub fn sample(p: &[f64], rng: &mut impl Rng) -> u32 {
    let total = p.iter().fold(0.0f64, |sum, &w| sum + w);
    assert!(total > 0.0 && total.is_finite(), "distributions from `probabilities` are finite and sum to 1");
    let chosen = Uniform::new(0.0, total).sample(rng);
    let mut running = 0.0f64;
    for (i, &w) in p[..p.len() - 1].iter().enumerate() {
        running += w;
        if running > chosen {
            return i as u32;
        }
    }
    (p.len() - 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banned_tokens_get_no_probability() {
        let logits = [3.0f32, 1.0, 2.5, -1.0];
        let greedy = SamplingConfig::greedy().probabilities_banning(&logits, &[0], "target", 0).unwrap();
        assert_eq!(greedy, [0.0, 0.0, 1.0, 0.0]);
        let sampled = SamplingConfig::with_temperature(1.0)
            .probabilities_banning(&logits, &[0, 9], "target", 0)
            .unwrap();
        assert_eq!(sampled[0], 0.0);
        assert!((sampled.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let unbanned =
            SamplingConfig::with_temperature(1.0).probabilities(&logits[1..], "target", 0).unwrap();
        sampled[1..].iter().zip(&unbanned).for_each(|(a, b)| assert!((a - b).abs() < 1e-6));
        assert!(SamplingConfig::greedy().probabilities_banning(&[1.0], &[0], "target", 0).is_err());
    }

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_vectorised_exp_weights_are_the_scalar_ones() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let weights = exp_weights(&logits, 9.0, 1.3);
        for (w, &x) in weights.iter().zip(&logits) {
            assert_eq!(*w, f64::from(exp((x - 9.0) * 1.3)));
        }
    }

    #[test]
    fn greedy_is_one_hot_at_the_first_maximum() {
        let p = SamplingConfig::greedy().probabilities(&[0.5, 2.0, 2.0, -1.0], "target", 0).unwrap();
        assert_eq!(p, vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn temperature_one_is_softmax() {
        let p =
            SamplingConfig::with_temperature(1.0).probabilities(&[0.0, (2.0f32).ln()], "target", 0).unwrap();
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-7 && (p[1] - 2.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn top_k_and_top_p_keep_the_head_of_the_distribution() {
        let logits = [(0.1f32).ln(), (0.2f32).ln(), (0.3f32).ln(), (0.4f32).ln()];
        let top2 = SamplingConfig { top_k: 2, ..SamplingConfig::with_temperature(1.0) };
        let p = top2.probabilities(&logits, "target", 0).unwrap();
        assert!((p[3] - 4.0 / 7.0).abs() < 1e-6 && p[0] == 0.0 && p[1] == 0.0);
        // 0.4 + 0.3 = 0.7 reaches top_p = 0.65: the two most likely tokens remain.
        let nucleus = SamplingConfig { top_p: 0.65, ..SamplingConfig::with_temperature(1.0) };
        let p = nucleus.probabilities(&logits, "target", 0).unwrap();
        assert!((p[2] - 3.0 / 7.0).abs() < 1e-6 && p[1] == 0.0);
    }

    #[test]
    fn non_finite_logits_are_an_error_naming_model_and_position_not_a_token() {
        for sampling in [SamplingConfig::greedy(), SamplingConfig::with_temperature(1.0)] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let err = sampling.probabilities(&[0.0, bad, 1.0], "draft", 7).unwrap_err().to_string();
                assert!(err.contains("position 7") && err.contains("draft"), "{err}");
            }
        }
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(SamplingConfig::with_temperature(-0.5).validate().is_err());
        assert!(SamplingConfig { top_p: 0.0, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn sample_draws_what_weighted_index_draws_from_the_same_generator_state() {
        use rand::distributions::WeightedIndex;
        let mut source = ChaCha8Rng::seed_from_u64(11);
        for n in [1, 2, 7, 2048] {
            for _ in 0..50 {
                let mut p: Vec<f64> = (0..n).map(|_| source.r#gen::<f64>().powi(3)).collect();
                p[0] = 0.0;
                if n > 1 {
                    normalize(&mut p);
                } else {
                    p[0] = 1.0;
                }
                let seed = source.r#gen::<u64>();
                let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(seed), ChaCha8Rng::seed_from_u64(seed));
                let reference = WeightedIndex::new(&p).unwrap();
                for _ in 0..20 {
                    assert_eq!(sample(&p, &mut a) as usize, reference.sample(&mut b), "n = {n}");
                }
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_never_draws_zero_mass() {
        let p = [0.0, 0.25, 0.75, 0.0];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[sample(&p, &mut rng) as usize] += 1;
        }
        assert_eq!((counts[0], counts[3]), (0, 0));
        let share = counts[2] as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }
}
