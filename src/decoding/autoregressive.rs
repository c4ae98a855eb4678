//! Target-only decoding: the baseline every speedup is measured against.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{CausalLm, Generation, GenerationConfig, apply_stop_rule, prefill};
use super::{timed, timed_host};
use crate::error::Result;
use crate::metrics::{AcceptanceStats, Timings};
use crate::sampling::sample;

pub fn generate<M: CausalLm>(model: &M, prompt: &[u32], config: &GenerationConfig) -> Result<Generation> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut cache = model.new_cache();
    let mut timings = Timings::default();
    let mut acceptance = AcceptanceStats::new(0);
    let vocab = model.vocab_size();
    let start = Instant::now();

    timings.prefill = timed(model, || prefill(model, prompt, &mut cache))?.1;
    let mut tokens = Vec::new();
    let mut last = *prompt.last().expect("prefill rejects empty prompts");
    loop {
        let (rows, forward) = timed(model, || model.logits(&[last], &mut cache, 1, vocab))?;
        timings.verify += forward;
        acceptance.record_plain_step();
        let position = prompt.len() + tokens.len();
        let (token, sampling) = timed_host(|| {
            let p =
                config.sampling.probabilities_banning(&rows[0], &config.banned_ids, "target", position)?;
            Ok::<_, crate::Error>(sample(&p, &mut rng))
        });
        timings.sampling += sampling;
        last = token?;
        tokens.push(last);
        if apply_stop_rule(&mut tokens, config) {
            break;
        }
    }
    timings.wall = start.elapsed();
    Ok(Generation { prompt_tokens: prompt.len(), tokens, timings, acceptance, accepted_per_call: Vec::new() })
}
