//! Decoders. The baseline and the speculative decoder share the sampler, the stopping rule, the
//! prefill and the output type, so their rows compare like with like.

pub mod acceptance;
pub mod autoregressive;
pub mod draft;
pub mod drafters;
pub mod pairing;
pub mod speculative;
pub mod tree;

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::metrics::{AcceptanceStats, Timings};
use crate::model::{KvCache, Llama, Step};
use crate::sampling::SamplingConfig;

/// Logits rows, and the hidden states captured at each asked-for layer (`[rows, hidden]` each).
pub type Captured = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// What a decoder needs from a model: logits for the tokens it feeds, over a cache it can roll
/// back. `Llama` is the real implementation; tests wrap it (e.g. to memoise forwards).
pub trait CausalLm {
    type Cache;

    fn new_cache(&self) -> Self::Cache;
    fn cache_len(cache: &Self::Cache) -> usize;
    fn truncate(cache: &mut Self::Cache, len: usize);
    /// Feeds `tokens` after the cached ones and returns the first `vocab` logits of each of the
    /// last `rows` positions, on the host.
    fn logits(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        rows: usize,
        vocab: usize,
    ) -> Result<Vec<Vec<f32>>>;
    /// As `logits`, with the hidden states entering each layer of `capture` for every fed row
    /// (`Step::capture`), for drafters that read them. A model that cannot say so.
    fn logits_capturing(
        &self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> Result<Captured> {
        if capture.is_empty() {
            return Ok((self.logits(tokens, cache, rows, vocab)?, Vec::new()));
        }
        Err(Error::Usage(
            "this model does not return hidden states; a feature-level drafter needs a Llama target".into(),
        ))
    }
    /// As `logits_capturing` for a tree of `tokens`: `parents` as `Step::parents` (its first
    /// `parents.len() - tokens.len()` entries the tree's rows already cached). A model that
    /// cannot says so.
    fn logits_tree(
        &self,
        _tokens: &[u32],
        _parents: &[Option<usize>],
        _cache: &mut Self::Cache,
        _rows: usize,
        _vocab: usize,
        _capture: &[usize],
    ) -> Result<Captured> {
        Err(Error::Usage("this model does not run draft trees; a tree needs a Llama model".into()))
    }
    /// Keeps the cached positions `start + keep[j]` as `start + j` and drops those after
    /// (`KvCache::keep`): a verified tree's accepted branch.
    fn keep(cache: &mut Self::Cache, start: usize, keep: &[usize]);
    /// Waits for queued device work, so timers measure work done.
    fn sync(&self) -> Result<()>;
    fn vocab_size(&self) -> usize;
}

/// A borrowed model is the model.
impl<T: CausalLm + ?Sized> CausalLm for &T {
    type Cache = T::Cache;

    fn new_cache(&self) -> T::Cache {
        (**self).new_cache()
    }
    fn cache_len(cache: &T::Cache) -> usize {
        T::cache_len(cache)
    }
    fn truncate(cache: &mut T::Cache, len: usize) {
        T::truncate(cache, len)
    }
    fn logits(
        &self,
        tokens: &[u32],
        cache: &mut T::Cache,
        rows: usize,
        vocab: usize,
    ) -> Result<Vec<Vec<f32>>> {
        (**self).logits(tokens, cache, rows, vocab)
    }
    fn logits_capturing(
        &self,
        tokens: &[u32],
        cache: &mut T::Cache,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> Result<Captured> {
        (**self).logits_capturing(tokens, cache, rows, vocab, capture)
    }
    fn logits_tree(
        &self,
        tokens: &[u32],
        parents: &[Option<usize>],
        cache: &mut T::Cache,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> Result<Captured> {
        (**self).logits_tree(tokens, parents, cache, rows, vocab, capture)
    }
    fn keep(cache: &mut T::Cache, start: usize, keep: &[usize]) {
        T::keep(cache, start, keep)
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
}

impl CausalLm for Llama {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }

    fn cache_len(cache: &KvCache) -> usize {
        cache.len()
    }

    fn truncate(cache: &mut KvCache, len: usize) {
        cache.truncate(len);
    }

    fn logits(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: usize,
        vocab: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.logits_skipping(tokens, cache, rows, vocab, &[])
    }

    fn logits_capturing(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> Result<Captured> {
        let output = self.step(&Step { capture, ..Step::new(tokens, rows) }, cache, vocab)?;
        Ok((output.logits, output.hidden))
    }

    fn logits_tree(
        &self,
        tokens: &[u32],
        parents: &[Option<usize>],
        cache: &mut KvCache,
        rows: usize,
        vocab: usize,
        capture: &[usize],
    ) -> Result<Captured> {
        let step = Step { capture, parents: Some(parents), ..Step::new(tokens, rows) };
        let output = self.step(&step, cache, vocab)?;
        Ok((output.logits, output.hidden))
    }

    fn keep(cache: &mut KvCache, start: usize, keep: &[usize]) {
        cache.keep(start, keep);
    }

    fn sync(&self) -> Result<()> {
        self.runtime().sync()
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation stops after emitting any of these.
    pub eos_ids: Vec<u32>,
    /// Tokens never generated: their logits are taken as −∞ by the target and any model
    /// drafter (llama.cpp's `--ignore-eos` bans the end-of-generation tokens so).
    pub banned_ids: Vec<u32>,
    pub seed: u64,
}

impl GenerationConfig {
    fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidSampling("max_new_tokens must be at least 1".into()));
        }
        self.sampling.validate()
    }
}

/// The shared stopping rule: cut `tokens` after the first EOS or at `max_new_tokens`, and say
/// whether generation is over.
fn apply_stop_rule(tokens: &mut Vec<u32>, config: &GenerationConfig) -> bool {
    if let Some(eos) = tokens.iter().position(|t| config.eos_ids.contains(t)) {
        tokens.truncate(eos + 1);
        return true;
    }
    if tokens.len() >= config.max_new_tokens {
        tokens.truncate(config.max_new_tokens);
        return true;
    }
    false
}

/// Feeds all prompt tokens but the last into `cache`: no decoder step needs their logits, and
/// both decoders then start from the same state, so prefill means the same in both.
fn prefill<M: CausalLm>(model: &M, prompt: &[u32], cache: &mut M::Cache) -> Result<()> {
    prefill_capturing(model, prompt, cache, &[]).map(drop)
}

/// `prefill`, returning the hidden states entering each layer of `capture` (`Step::capture`).
fn prefill_capturing<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    cache: &mut M::Cache,
    capture: &[usize],
) -> Result<Vec<Vec<f32>>> {
    match prompt.len() {
        0 => Err(Error::EmptyPrompt),
        1 => Ok(vec![Vec::new(); capture.len()]),
        n => Ok(model.logits_capturing(&prompt[..n - 1], cache, 1, 1, capture)?.1),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub timings: Timings,
    pub acceptance: AcceptanceStats,
    /// Draft tokens accepted at each target call, in order (empty for target-only decoding).
    pub accepted_per_call: Vec<usize>,
}

impl Generation {
    /// This generation followed by `next` (a later turn of the same conversation): tokens,
    /// times and counts of both.
    pub fn then(mut self, next: Generation) -> Generation {
        self.prompt_tokens += next.prompt_tokens;
        self.tokens.extend(next.tokens);
        self.timings += next.timings;
        self.acceptance.absorb(&next.acceptance);
        self.accepted_per_call.extend(next.accepted_per_call);
        self
    }

    /// New tokens per second of decoding (wall time less prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let decode = self.timings.wall.saturating_sub(self.timings.prefill).as_secs_f64();
        self.tokens.len() as f64 / decode.max(f64::MIN_POSITIVE)
    }
}

/// Runs `work` on `model`'s device, waits for it to finish, and returns the elapsed time.
pub fn timed<M: CausalLm, T>(model: &M, work: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let out = work()?;
    model.sync()?;
    Ok((out, start.elapsed()))
}

/// Times host-only work.
pub fn timed_host<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = work();
    (out, start.elapsed())
}
