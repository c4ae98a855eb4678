//! The host projection kernel on Llama-3.2-1B's largest shapes, in weight bytes read per second:
//! compare with the machine's read bandwidth (experiments/decode_vs_torch.py measures it).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use specbench::kernels::matvec::matmul_transposed;

fn matvec(c: &mut Criterion) {
    let mut group = c.benchmark_group("host matvec, f32");
    // The LM head (1 GiB) is the shape that cannot hide in the last-level cache.
    let shapes = [
        ("mlp up 8192x2048", 8192, 2048),
        ("mlp down 2048x8192", 2048, 8192),
        ("lm head 128256x2048", 128256, 2048),
    ];
    for (name, rows, cols) in shapes {
        let weight: Vec<f32> = (0..rows * cols).map(|i| (i % 17) as f32 * 0.01).collect();
        group.throughput(Throughput::Bytes((rows * cols * 4) as u64));
        for m in [1, 5, 9] {
            let x: Vec<f32> = (0..m * cols).map(|i| (i % 13) as f32 * 0.1).collect();
            group.bench_function(BenchmarkId::new(name, format!("{m} rows")), |b| {
                b.iter(|| matmul_transposed(&x, m, &weight, rows, cols))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matvec);
criterion_main!(benches);
