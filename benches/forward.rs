//! Model forwards on the committed transformers fixture: one decode step, and one verify
//! forward of k + 1 tokens for k = 1..8, each on a 64-token cache, for every CPU backend side by
//! side (`SPECBENCH_BENCH_BACKENDS=ndarray,flex,wgpu` picks others).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use specbench::backend::{Backend, Runtime};
use specbench::decoding::CausalLm;
use specbench::load::{LoadedModel, ModelSpec};

const CONTEXT: usize = 64;

fn backends() -> Vec<Backend> {
    let names = std::env::var("SPECBENCH_BENCH_BACKENDS").unwrap_or_else(|_| "ndarray,flex".into());
    names.split(',').map(|name| name.trim().parse().unwrap()).collect()
}

fn forward(c: &mut Criterion) {
    let spec = ModelSpec::Folder(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gqa").into());
    let context: Vec<u32> = (0..CONTEXT as u32).map(|i| 2 + i % 300).collect();
    for backend in backends() {
        let runtime = Runtime::new(backend, "f32").unwrap();
        let model = LoadedModel::load(&spec, &runtime, 0).unwrap().model;
        let mut cache = model.new_cache();
        model.forward_ids(&context, &mut cache).unwrap();

        let mut group = c.benchmark_group(format!("tiny-gqa/{backend}"));
        for tokens in 1..=9usize {
            let feed: Vec<u32> = (0..tokens as u32).map(|i| 10 + i).collect();
            let name = if tokens == 1 { "decode".to_string() } else { format!("verify k={}", tokens - 1) };
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    let rows = model.logits(&feed, &mut cache, tokens, 320).unwrap();
                    cache.truncate(CONTEXT);
                    rows
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
