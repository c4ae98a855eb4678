//! One Llama 3 model for draft and target (RMSNorm, RoPE, grouped-query attention, SwiGLU, tied
//! or untied embeddings): the body of `model::body` on the executor the runtime names.

use burn::tensor::{DType, Device, Tensor, TensorData, s};

use crate::backend::{ExecutorKind, Runtime};
use crate::error::{Error, Result};
use crate::kernels::cpu::{Vectorize, vectorized};
use crate::model::body::{Body, Forward};
use crate::model::cache::KvCache;
use crate::model::config::LlamaConfig;
use crate::model::executor::Executor;
use crate::model::host::HostExecutor;
use crate::model::step::Step;
use crate::model::tensor::TensorExecutor;
use crate::model::weights::WeightSource;

pub struct Llama {
    engine: Engine,
    config: LlamaConfig,
    runtime: Runtime,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama").field("config", &self.config).field("runtime", &self.runtime).finish()
    }
}

// One per model, matched once per step: not worth boxing the tensor executor's handles.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Tensor(Body<TensorExecutor>),
    Host(Body<HostExecutor>),
}

/// A step's logits `[rows, vocab_size]`: on the device, or on the host, row-major.
// Returned once per forward and matched at once: not worth boxing the tensor handle.
#[allow(clippy::large_enum_variant)]
enum Logits {
    Device(Tensor<2>),
    Host(Vec<f32>),
}

/// What `Llama::step` returns, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The first `vocab` logits of each of the step's last `logits_rows` rows.
    pub logits: Vec<Vec<f32>>,
    /// The captured hidden states, in the step's order, each `[rows, hidden]`.
    pub hidden: Vec<Vec<f32>>,
}

/// The host forward as one unit of work for `kernels::cpu::vectorized`.
struct HostForward<'a> {
    body: &'a Body<HostExecutor>,
    step: &'a Step<'a>,
    cache: &'a mut KvCache,
}

impl Vectorize for HostForward<'_> {
    type Output = Result<Forward<Vec<f32>>>;
    #[inline(always)]
    fn run(self) -> Self::Output {
        self.body.forward(self.step, self.cache)
    }
}

impl Llama {
    /// Builds the model from `source`, which names the tensor that is missing or misshapen, on
    /// `runtime`'s executor, device and dtypes.
    pub fn build(config: LlamaConfig, source: &mut impl WeightSource, runtime: &Runtime) -> Result<Self> {
        config.validate()?;
        let engine = match runtime.executor() {
            ExecutorKind::Host => Engine::Host(Body::build(HostExecutor::new(runtime), &config, source)?),
            ExecutorKind::Tensor => {
                Engine::Tensor(Body::build(TensorExecutor::new(runtime), &config, source)?)
            }
        };
        source.finish(&config)?;
        Ok(Self { engine, config, runtime: runtime.clone() })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Bytes of projection and embedding weights held (norms are negligible and not counted):
    /// what one decoded token streams from memory.
    pub fn weight_bytes(&self) -> usize {
        fn bytes<E: Executor>(body: &Body<E>) -> usize {
            body.matrices().map(E::matrix_bytes).sum()
        }
        match &self.engine {
            Engine::Tensor(body) => bytes(body),
            Engine::Host(body) => bytes(body),
        }
    }

    /// How the weights are stored, each kind once (`["q4_1", "q8_0"]` for a GGUF whose layers
    /// are q4_1 and whose embedding is q8_0).
    pub fn weight_formats(&self) -> Vec<&'static str> {
        fn formats<E: Executor>(body: &Body<E>) -> std::collections::BTreeSet<&'static str> {
            body.matrices().flat_map(E::matrix_formats).collect()
        }
        let formats = match &self.engine {
            Engine::Tensor(body) => formats(body),
            Engine::Host(body) => formats(body),
        };
        formats.into_iter().collect()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn device(&self) -> Device {
        self.runtime.device().clone()
    }

    pub fn new_cache(&self) -> KvCache {
        match &self.engine {
            Engine::Tensor(body) => body.new_cache(),
            Engine::Host(body) => body.new_cache(),
        }
    }

    /// Rows `ids` of the embedding table, on the host.
    pub fn embedding_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        self.check_ids(ids)?;
        Ok(match &self.engine {
            Engine::Tensor(body) => body.embedding_rows(ids),
            Engine::Host(body) => body.embedding_rows(ids),
        })
    }

    /// Token ids in (batch 1, each checked against the vocabulary), logits `[seq, vocab]` out,
    /// for positions that follow those held in `cache`.
    pub fn forward_ids(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor<2>> {
        self.forward_last(ids, cache, ids.len())
    }

    /// As `forward_ids`, but logits `[rows, vocab]` of the last `rows` positions only (at most
    /// `ids.len()`): a prompt needs one row, and the LM head is the largest product of a step.
    pub fn forward_last(&self, ids: &[u32], cache: &mut KvCache, rows: usize) -> Result<Tensor<2>> {
        self.forward_skipping(ids, cache, rows, &[])
    }

    /// As `forward_last`, with layer `i` left out wherever `skip[i]` is true (see `Step::skip`).
    pub fn forward_skipping(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        rows: usize,
        skip: &[bool],
    ) -> Result<Tensor<2>> {
        let step = Step { skip, ..Step::new(ids, rows.max(1)) };
        Ok(match self.run(&step, cache)?.0.expect("a step of at least one row asked for logits") {
            Logits::Device(logits) => logits,
            Logits::Host(logits) => {
                let shape = [logits.len() / self.config.vocab_size, self.config.vocab_size];
                Tensor::from_data(TensorData::new(logits, shape), &self.device())
            }
        })
    }

    /// As `forward_skipping`, the first `vocab` logits of each row on the host, for a sampler.
    pub fn logits_skipping(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        rows: usize,
        vocab: usize,
        skip: &[bool],
    ) -> Result<Vec<Vec<f32>>> {
        Ok(self.step(&Step { skip, ..Step::new(ids, rows) }, cache, vocab)?.logits)
    }

    /// Runs `step` after the positions held in `cache`; the first `vocab` logits of each row
    /// asked for and the captured hidden states come back on the host.
    pub fn step(&self, step: &Step, cache: &mut KvCache, vocab: usize) -> Result<StepOutput> {
        let (logits, hidden) = self.run(step, cache)?;
        let logits = match logits {
            None => Vec::new(),
            // Sliced on the device so that only what the sampler reads crosses to the host.
            Some(Logits::Device(logits)) => {
                let flat: Vec<f32> = logits
                    .slice(s![.., 0..vocab])
                    .into_data()
                    .try_to_vec()
                    .expect("logits are read back as f32");
                flat.chunks(vocab).map(<[f32]>::to_vec).collect()
            }
            Some(Logits::Host(logits)) => {
                logits.chunks(self.config.vocab_size).map(|row| row[..vocab].to_vec()).collect()
            }
        };
        Ok(StepOutput { logits, hidden })
    }

    fn run(&self, step: &Step, cache: &mut KvCache) -> Result<(Option<Logits>, Vec<Vec<f32>>)> {
        self.check(step.ids, cache)?;
        Ok(match &self.engine {
            Engine::Tensor(body) => {
                let Forward { logits, hidden } = body.forward(step, cache)?;
                (logits.map(|l| Logits::Device(l.cast(DType::F32))), hidden)
            }
            Engine::Host(body) => {
                let Forward { logits, hidden } = vectorized(HostForward { body, step, cache })?;
                (logits.map(Logits::Host), hidden)
            }
        })
    }

    fn check(&self, ids: &[u32], cache: &KvCache) -> Result<()> {
        self.check_ids(ids)?;
        let end = cache.len().saturating_add(ids.len());
        if end > self.config.max_position_embeddings {
            return Err(Error::ContextOverflow { end, max: self.config.max_position_embeddings });
        }
        Ok(())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab_size = self.config.vocab_size;
        match ids.iter().find(|&&id| id as usize >= vocab_size) {
            Some(&id) => Err(Error::TokenOutOfRange { id, vocab_size }),
            None => Ok(()),
        }
    }
}
