//! Modified rejection sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023) as pure
//! functions over host probability vectors. `p` is the target's processed distribution, `q` the
//! drafter's, both over the same vocabulary: a model's probabilities, or all mass on one token
//! for a deterministic drafter (n-gram lookup), for which the rule reduces to accepting with
//! probability p(x) and resampling from p with x removed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::sampling::{normalize, sample};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The draft token stands.
    Accepted,
    /// The draft token is rejected and `token`, drawn from norm(max(0, p − q)), replaces it.
    Rejected { token: u32 },
}

/// The distribution a draft token was drawn from.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftDistribution {
    /// A model's processed probabilities over the vocabulary.
    Dense(Vec<f64>),
    /// A deterministic proposal: probability one on this token. Kept sparse, so that a
    /// model-free drafter costs no vocabulary-sized vector per token.
    Certain(u32),
}

impl DraftDistribution {
    pub fn probability(&self, token: u32) -> f64 {
        match self {
            Self::Dense(q) => q[token as usize],
            Self::Certain(x) => {
                if *x == token {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

impl DraftDistribution {
    /// What the next draw without replacement comes from: `token` removed, the rest
    /// renormalised (all zero when nothing is left), over `len` tokens.
    pub fn without(&self, token: u32, len: usize) -> Self {
        let mut q = match self {
            Self::Dense(q) => q.clone(),
            Self::Certain(x) => {
                let mut q = vec![0.0; len];
                q[*x as usize] = 1.0;
                q
            }
        };
        q[token as usize] = 0.0;
        if q.iter().sum::<f64>() > 0.0 {
            normalize(&mut q);
        }
        Self::Dense(q)
    }
}

impl From<Vec<f64>> for DraftDistribution {
    fn from(q: Vec<f64>) -> Self {
        Self::Dense(q)
    }
}

/// min(1, p(x) / q(x)). A token the draft could not have drawn (q(x) = 0) is accepted exactly
/// when the target allows it.
pub fn acceptance_probability(p: &[f64], q: &DraftDistribution, token: u32) -> f64 {
    let (px, qx) = (p[token as usize], q.probability(token));
    if px <= 0.0 {
        0.0
    } else if qx <= 0.0 {
        1.0
    } else {
        (px / qx).min(1.0)
    }
}

/// norm(max(0, p − q)): the distribution a rejected position is resampled from. When p ≤ q
/// everywhere (only possible up to rounding, as both sum to 1) it falls back to p.
pub fn residual(p: &[f64], q: &DraftDistribution) -> Vec<f64> {
    let mut r: Vec<f64> = match q {
        DraftDistribution::Dense(q) => p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect(),
        // max(0, p(x) − 1) = 0 at x; p elsewhere.
        DraftDistribution::Certain(x) => {
            let mut r = p.to_vec();
            r[*x as usize] = 0.0;
            r
        }
    };
    if r.iter().sum::<f64>() <= 0.0 {
        return p.to_vec();
    }
    normalize(&mut r);
    r
}

/// β = Σ_x min(p(x), q(x)) = 1 − TV(p, q): the probability this position accepts.
pub fn overlap(p: &[f64], q: &DraftDistribution) -> f64 {
    match q {
        DraftDistribution::Dense(q) => p.iter().zip(q).map(|(a, b)| a.min(*b)).sum(),
        DraftDistribution::Certain(x) => p[*x as usize],
    }
}

/// How a speculative step decides on each draft token. `RejectionSampling` is the exact rule;
/// the trait exists so that research variants (and the tests' deliberately wrong rules) run
/// through the very same engine.
pub trait AcceptanceRule {
    fn verify(&self, p: &[f64], q: &DraftDistribution, token: u32, rng: &mut ChaCha8Rng) -> Verdict;
}

/// Leviathan et al. (2023), Algorithm 1: keeps the target distribution exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectionSampling;

impl AcceptanceRule for RejectionSampling {
    fn verify(&self, p: &[f64], q: &DraftDistribution, token: u32, rng: &mut ChaCha8Rng) -> Verdict {
        verify_token(p, q, token, rng)
    }
}

/// One accept/reject test for draft token `token` drawn from `q`: accept when r ≤ p(x)/q(x)
/// (lines 6–7), else resample from norm(max(0, p − q)) (lines 10, 12).
pub fn verify_token(p: &[f64], q: &DraftDistribution, token: u32, rng: &mut impl Rng) -> Verdict {
    let r: f64 = rng.r#gen();
    if r < acceptance_probability(p, q, token) {
        Verdict::Accepted
    } else {
        Verdict::Rejected { token: sample(&residual(p, q), rng) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn dense(q: &[f64]) -> DraftDistribution {
        DraftDistribution::Dense(q.to_vec())
    }

    #[test]
    fn a_token_the_target_forbids_is_never_accepted() {
        let (p, q) = ([0.0, 0.5, 0.5], dense(&[0.9, 0.05, 0.05]));
        assert_eq!(acceptance_probability(&p, &q, 0), 0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..1000 {
            assert_ne!(verify_token(&p, &q, 0, &mut rng), Verdict::Accepted);
        }
    }

    #[test]
    fn identical_distributions_always_accept() {
        let p = [0.1, 0.2, 0.7];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for token in 0..3 {
            for _ in 0..200 {
                assert_eq!(verify_token(&p, &dense(&p), token, &mut rng), Verdict::Accepted);
            }
        }
        assert!((overlap(&p, &dense(&p)) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn acceptance_is_the_probability_ratio_capped_at_one() {
        let (p, q) = ([0.2, 0.8], dense(&[0.5, 0.5]));
        assert!((acceptance_probability(&p, &q, 0) - 0.4).abs() < 1e-12);
        assert_eq!(acceptance_probability(&p, &q, 1), 1.0);
    }

    #[test]
    fn residual_keeps_only_where_the_target_exceeds_the_draft() {
        // p − q = [−0.3, 0.1, 0.2] → max(0, ·) = [0, 0.1, 0.2] → [0, 1/3, 2/3].
        let r = residual(&[0.2, 0.3, 0.5], &dense(&[0.5, 0.2, 0.3]));
        assert_eq!(r[0], 0.0);
        assert!((r[1] - 1.0 / 3.0).abs() < 1e-12 && (r[2] - 2.0 / 3.0).abs() < 1e-12);
        // A rejected token has q > p, so the residual never proposes it again.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..500 {
            match verify_token(&[0.2, 0.3, 0.5], &dense(&[0.5, 0.2, 0.3]), 0, &mut rng) {
                Verdict::Rejected { token } => assert_ne!(token, 0),
                Verdict::Accepted => {}
            }
        }
    }

    #[test]
    fn residual_falls_back_to_the_target_when_p_never_exceeds_q() {
        let p = [0.5, 0.5];
        assert_eq!(residual(&p, &dense(&[0.5, 0.5])), p.to_vec());
    }

    #[test]
    fn greedy_one_hot_distributions_accept_only_the_target_argmax() {
        let (p, q_agree, q_differ) = ([0.0, 1.0, 0.0], dense(&[0.0, 1.0, 0.0]), dense(&[1.0, 0.0, 0.0]));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(verify_token(&p, &q_agree, 1, &mut rng), Verdict::Accepted);
        assert_eq!(verify_token(&p, &q_differ, 0, &mut rng), Verdict::Rejected { token: 1 });
        assert_eq!(overlap(&p, &q_differ), 0.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_verdicts() {
        let (p, q) = ([0.3, 0.3, 0.4], dense(&[0.6, 0.2, 0.2]));
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..50).map(|_| verify_token(&p, &q, 0, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
    }

    #[test]
    fn a_certain_proposal_is_a_one_hot_distribution() {
        let p = [0.1, 0.6, 0.3];
        for x in 0..3u32 {
            let mut one_hot = vec![0.0; 3];
            one_hot[x as usize] = 1.0;
            let (certain, one_hot) = (DraftDistribution::Certain(x), dense(&one_hot));
            assert_eq!(acceptance_probability(&p, &certain, x), acceptance_probability(&p, &one_hot, x));
            assert_eq!(overlap(&p, &certain), overlap(&p, &one_hot));
            let (a, b) = (residual(&p, &certain), residual(&p, &one_hot));
            assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-15), "{a:?} vs {b:?}");
            assert_eq!(a[x as usize], 0.0);
        }
    }
}
