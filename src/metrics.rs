//! What a generation measured: time split by phase, acceptance counts, and the formulas of
//! Leviathan et al. (2023) that turn them into predictions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Wall-clock time per phase. On asynchronous backends every region ends with a device sync, so
/// the figures are work done, not work queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub prefill: Duration,
    pub draft: Duration,
    /// Target forwards after prefill (verification, or plain decoding for the baseline).
    pub verify: Duration,
    /// Host-side sampling and acceptance tests.
    pub sampling: Duration,
    pub wall: Duration,
}

impl std::ops::AddAssign for Timings {
    fn add_assign(&mut self, other: Self) {
        self.prefill += other.prefill;
        self.draft += other.draft;
        self.verify += other.verify;
        self.sampling += other.sampling;
        self.wall += other.wall;
    }
}

impl Timings {
    /// Wall time in no measured phase (cache bookkeeping, loop overhead).
    pub fn other(&self) -> Duration {
        self.wall.saturating_sub(self.prefill + self.draft + self.verify + self.sampling)
    }
}

/// Acceptance counts of one or many generations with draft length `k` (0 for the baseline).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceStats {
    pub k: usize,
    /// Target forwards after prefill; each yields `accepted + 1` tokens.
    pub target_calls: u64,
    pub proposed: u64,
    pub accepted: u64,
    /// `[i]`: how often draft position `i + 1` was proposed / accepted.
    pub position_proposed: Vec<u64>,
    pub position_accepted: Vec<u64>,
    /// `[n]`: target calls that accepted exactly `n` draft tokens, `n = 0..=k`.
    pub accepted_len_hist: Vec<u64>,
    /// `[n]`: target calls whose block proposed `n` counted draft tokens, `n = 0..=k`: the
    /// draft length actually used, which adaptive schedules and lookup drafters vary.
    #[serde(default)]
    pub drafted_len_hist: Vec<u64>,
    /// Σ over verified positions of β = Σ_x min(p(x), q(x)), and their number.
    pub overlap_sum: f64,
    pub overlap_count: u64,
    /// Draft tokens the target verified: `proposed` for chains (and the positions past a stop
    /// that do not count there), every node for trees.
    #[serde(default)]
    pub nodes: u64,
}

impl AcceptanceStats {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            position_proposed: vec![0; k],
            position_accepted: vec![0; k],
            accepted_len_hist: vec![0; k + 1],
            drafted_len_hist: vec![0; k + 1],
            ..Default::default()
        }
    }

    /// A target-only decoding step.
    pub fn record_plain_step(&mut self) {
        self.target_calls += 1;
    }

    /// A speculative step in which the first `proposed` (≤ k) draft positions (a tree's
    /// levels) count, the first `accepted` of them kept, over `nodes` verified draft tokens;
    /// `overlaps` holds β of each counted position where the acceptance test ran. Positions
    /// past the stop (max_new_tokens, an accepted EOS) do not count: no token there could have
    /// been emitted.
    pub fn record_step(&mut self, proposed: usize, accepted: usize, overlaps: &[f64], nodes: usize) {
        debug_assert!(accepted <= proposed && proposed <= self.k && overlaps.len() <= proposed);
        self.target_calls += 1;
        self.proposed += proposed as u64;
        self.accepted += accepted as u64;
        self.position_proposed[..proposed].iter_mut().for_each(|n| *n += 1);
        self.position_accepted[..accepted].iter_mut().for_each(|n| *n += 1);
        self.accepted_len_hist[accepted] += 1;
        self.drafted_len_hist[proposed] += 1;
        self.overlap_sum += overlaps.iter().sum::<f64>();
        self.overlap_count += overlaps.len() as u64;
        self.nodes += nodes as u64;
    }

    /// Adds the counts of another generation with the same k (a later turn of a conversation).
    pub fn absorb(&mut self, other: &Self) {
        debug_assert_eq!(self.k, other.k);
        self.target_calls += other.target_calls;
        self.proposed += other.proposed;
        self.accepted += other.accepted;
        let add = |into: &mut Vec<u64>, from: &[u64]| {
            into.resize(into.len().max(from.len()), 0);
            into.iter_mut().zip(from).for_each(|(a, b)| *a += b);
        };
        add(&mut self.position_proposed, &other.position_proposed);
        add(&mut self.position_accepted, &other.position_accepted);
        add(&mut self.accepted_len_hist, &other.accepted_len_hist);
        add(&mut self.drafted_len_hist, &other.drafted_len_hist);
        self.overlap_sum += other.overlap_sum;
        self.overlap_count += other.overlap_count;
        self.nodes += other.nodes;
    }

    /// α̂ = accepted / proposed (vLLM's and llama.cpp's "acceptance rate"); NaN without drafts.
    pub fn alpha_hat(&self) -> f64 {
        self.accepted as f64 / self.proposed as f64
    }

    /// α = E[β] over verified positions: Leviathan's acceptance rate. NaN without drafts.
    pub fn alpha(&self) -> f64 {
        self.overlap_sum / self.overlap_count as f64
    }

    /// τ: tokens per target call, the bonus token counted (1.0 for plain decoding).
    pub fn mean_accepted_len(&self) -> f64 {
        (self.accepted + self.target_calls) as f64 / self.target_calls as f64
    }

    /// Acceptance rate of each draft position 1..=k.
    pub fn per_position(&self) -> Vec<f64> {
        self.position_accepted
            .iter()
            .zip(&self.position_proposed)
            .map(|(&a, &p)| a as f64 / p as f64)
            .collect()
    }
}

/// E = (1 − α^(k+1)) / (1 − α): expected tokens per target call under i.i.d. acceptance.
pub fn expected_accepted_len(alpha: f64, k: usize) -> f64 {
    if (1.0 - alpha).abs() < 1e-12 {
        return (k + 1) as f64;
    }
    (1.0 - alpha.powi(k as i32 + 1)) / (1.0 - alpha)
}

/// Leviathan et al., Theorem 3.8: expected wall-time speedup (1 − α^(k+1)) / ((1 − α)(k·c + 1)).
pub fn predicted_speedup(alpha: f64, cost_ratio: f64, k: usize) -> f64 {
    speedup_from_expected(expected_accepted_len(alpha, k), cost_ratio, k as f64)
}

/// Theorem 3.8's ratio from the expected tokens per target call and the mean number of tokens
/// drafted per call: E / (drafted · c + 1) (for a fixed k, drafted = k).
pub fn speedup_from_expected(expected: f64, cost_ratio: f64, drafted: f64) -> f64 {
    expected / (drafted * cost_ratio + 1.0)
}

/// Theorem 3.8 without its assumption that a verify of k + 1 tokens costs one decode step: it
/// costs `verify_steps` of them (a verify curve's t(k + 1) ÷ t(1)), and the draft `cost_per_step`
/// of a step per drafted token: E / (k·c + verify_steps).
pub fn speedup_with_verify_cost(alpha: f64, cost_per_step: f64, k: usize, verify_steps: f64) -> f64 {
    expected_accepted_len(alpha, k) / (k as f64 * cost_per_step + verify_steps)
}

/// c = (draft time per drafted token) / (target time per verify call). Per verify call, not
/// per decode step: Theorem 3.8 assumes the two cost the same, so this c is the one its
/// prediction takes; where a verify of k + 1 tokens costs more than a step, the prediction
/// overestimates, and the summary's target-only tokens/s shows by how much.
pub fn cost_ratio(timings: &Timings, stats: &AcceptanceStats) -> f64 {
    let per_draft = timings.draft.as_secs_f64() / stats.proposed as f64;
    let per_verify = timings.verify.as_secs_f64() / stats.target_calls as f64;
    per_draft / per_verify
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verify_that_costs_one_step_gives_theorem_3_8_and_a_dearer_one_less() {
        for (alpha, c, k) in [(0.8, 0.05, 4), (0.6, 0.2, 1), (0.95, 0.1, 8)] {
            let plain = predicted_speedup(alpha, c, k);
            assert!((speedup_with_verify_cost(alpha, c, k, 1.0) - plain).abs() < 1e-12);
            assert!(speedup_with_verify_cost(alpha, c, k, 1.5) < plain);
        }
    }

    #[test]
    fn expected_length_matches_the_closed_form() {
        assert!((expected_accepted_len(0.5, 1) - 1.5).abs() < 1e-12);
        assert!((expected_accepted_len(0.5, 3) - 1.875).abs() < 1e-12);
        assert_eq!(expected_accepted_len(1.0, 4), 5.0);
        assert_eq!(expected_accepted_len(0.0, 4), 1.0);
    }

    #[test]
    fn predicted_speedup_reproduces_the_paper_example() {
        // α = 0.8, c = 0.05, k = 5: E = (1 − 0.8⁶) / 0.2 = 3.689, divided by 5·0.05 + 1.
        assert!((predicted_speedup(0.8, 0.05, 5) - 2.951).abs() < 1e-3);
        // No drafting cost and perfect acceptance: k + 1 tokens per call.
        assert_eq!(predicted_speedup(1.0, 0.0, 3), 4.0);
    }

    #[test]
    fn statistics_count_positions_and_lengths() {
        let mut stats = AcceptanceStats::new(3);
        stats.record_step(3, 3, &[1.0, 1.0, 1.0], 3);
        stats.record_step(3, 1, &[0.9, 0.2], 3);
        assert_eq!((stats.proposed, stats.accepted, stats.target_calls), (6, 4, 2));
        assert_eq!(stats.per_position(), vec![1.0, 0.5, 0.5]);
        assert_eq!(stats.accepted_len_hist, vec![0, 1, 0, 1]);
        assert!((stats.mean_accepted_len() - 3.0).abs() < 1e-12);
        assert!((stats.alpha() - 4.1 / 5.0).abs() < 1e-12);
        // A last step cut by the stop: only its first position counts.
        stats.record_step(1, 1, &[0.5], 1);
        assert_eq!((stats.proposed, stats.accepted), (7, 5));
        assert_eq!(stats.position_proposed, vec![3, 2, 2]);
        assert_eq!(stats.drafted_len_hist, vec![0, 1, 0, 2]);
    }

    #[test]
    fn absorbing_adds_every_count() {
        let (mut a, mut b) = (AcceptanceStats::new(2), AcceptanceStats::new(2));
        a.record_step(2, 1, &[0.5, 0.25], 2);
        b.record_step(2, 2, &[0.75, 0.5], 2);
        b.record_step(1, 0, &[0.125], 1);
        let mut both = AcceptanceStats::new(2);
        both.record_step(2, 1, &[0.5, 0.25], 2);
        both.record_step(2, 2, &[0.75, 0.5], 2);
        both.record_step(1, 0, &[0.125], 1);
        a.absorb(&b);
        assert_eq!(a, both);
    }

    #[test]
    fn plain_decoding_has_length_one() {
        let mut stats = AcceptanceStats::new(0);
        stats.record_plain_step();
        stats.record_plain_step();
        assert_eq!(stats.mean_accepted_len(), 1.0);
        assert!(stats.alpha_hat().is_nan());
    }
}
