//! Model forwards on the committed transformers fixture: one decode step, and one verify
//! forward of k + 1 tokens for k = 1..8, each on a 64-token cache.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use specbench::backend::Backend;
use specbench::decoding::CausalLm;
use specbench::model::{LoadedModel, ModelSpec};

const CONTEXT: usize = 64;

fn forward(c: &mut Criterion) {
    let device = Backend::Ndarray.device().unwrap();
    let spec = ModelSpec::Folder(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gqa").into());
    let model =
        LoadedModel::load(&spec, Backend::Ndarray, &device, burn::tensor::DType::F32, 0).unwrap().model;
    let context: Vec<u32> = (0..CONTEXT as u32).map(|i| 2 + i % 300).collect();
    let mut cache = model.new_cache();
    model.forward_ids(&context, &mut cache).unwrap();

    let mut group = c.benchmark_group("tiny-gqa/ndarray");
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

criterion_group!(benches, forward);
criterion_main!(benches);
