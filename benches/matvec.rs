//! The host projection kernel on Llama-3.2-1B's largest shapes, in weight bytes read per second:
//! compare with the machine's read bandwidth (experiments/decode_vs_torch.py measures it).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use specbench::formats::BlockFormat;
use specbench::kernels::matvec::PackedRows;
use specbench::kernels::quant::QuantMatrix;

fn matvec(c: &mut Criterion) {
    let mut group = c.benchmark_group("host matvec, f32");
    // The LM head (1 GiB) is the shape that cannot hide in the last-level cache.
    let shapes = [
        ("mlp up 8192x2048", 8192, 2048),
        ("mlp down 2048x8192", 2048, 8192),
        ("lm head 128256x2048", 128256, 2048),
    ];
    for (name, rows, cols) in shapes {
        let values: Vec<f32> = (0..rows * cols).map(|i| (i % 17) as f32 * 0.01).collect();
        let weight = PackedRows::<f32>::pack(&values, rows, cols);
        group.throughput(Throughput::Bytes((rows * cols * 4) as u64));
        for m in [1, 5, 9, 65] {
            let x: Vec<f32> = (0..m * cols).map(|i| (i % 13) as f32 * 0.1).collect();
            let x_rows: Vec<&[f32]> = x.chunks(cols).collect();
            let mut out = vec![0.0; rows * m];
            group.bench_function(BenchmarkId::new(name, format!("{m} rows")), |b| {
                b.iter(|| weight.multiply_into(&x_rows, &mut out))
            });
        }
    }
    group.finish();
}

/// The quantized kernels on SmolLM2-135M's shapes (its q4_1 MLP and its q8_0 tied head) and
/// Llama-3.2-1B's (q4_0 and the K-quants of a Q4_K_M file), in weight bytes read per second.
fn quantized(c: &mut Criterion) {
    let mut group = c.benchmark_group("host quantized matvec");
    let shapes = [
        ("q4_1 mlp up 1536x576", BlockFormat::Q4_1, 1536, 576),
        ("q8_0 mlp up 1536x576", BlockFormat::Q8_0, 1536, 576),
        ("q4_0 mlp up 1536x576", BlockFormat::Q4_0, 1536, 576),
        ("q4_0 mlp up 8192x2048", BlockFormat::Q4_0, 8192, 2048),
        ("q4_k attention 2048x2048", BlockFormat::Q4_K, 2048, 2048),
        ("q6_k attention 2048x2048", BlockFormat::Q6_K, 2048, 2048),
        ("q8_0 lm head 49152x576", BlockFormat::Q8_0, 49152, 576),
    ];
    for (name, format, rows, cols) in shapes {
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        // q4_1 blocks are made from q4_0's: any bytes are valid blocks.
        let blocks = match format {
            BlockFormat::Q4_1 => BlockFormat::Q4_0
                .quantize(&values)
                .unwrap()
                .chunks(18)
                .flat_map(|b| [b, &b[..2]].concat())
                .collect(),
            BlockFormat::Q4_K | BlockFormat::Q6_K => k_quant_blocks(format, rows * cols),
            _ => format.quantize(&values).unwrap(),
        };
        group.throughput(Throughput::Bytes(blocks.len() as u64));
        let matrix = QuantMatrix::new(format, blocks, rows, cols);
        for m in [1, 5, 9, 65] {
            let x: Vec<f32> = (0..m * cols).map(|i| (i % 13) as f32 * 0.1).collect();
            let x_rows: Vec<&[f32]> = x.chunks(cols).collect();
            let mut out = vec![0.0; rows * m];
            group.bench_function(BenchmarkId::new(name, format!("{m} rows")), |b| {
                b.iter(|| matrix.multiply_into(&x_rows, &mut out))
            });
        }
    }
    group.finish();
}

/// Any bytes are valid K-quant super-blocks once their f16 scales are sane.
fn k_quant_blocks(format: BlockFormat, weights: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> =
        (0..weights / 256 * format.block_bytes()).map(|i| ((i * 131 + 7) % 251) as u8).collect();
    for block in bytes.chunks_exact_mut(format.block_bytes()) {
        // d ≈ 0.006 (and dmin ≈ 0.02 where there is one).
        let (at, len) = if format == BlockFormat::Q6_K { (208, 2) } else { (0, 4) };
        block[at..at + len].copy_from_slice(&[0x1f, 0x1e, 0x1f, 0x25][..len]);
    }
    bytes
}

criterion_group!(benches, matvec, quantized);
criterion_main!(benches);
