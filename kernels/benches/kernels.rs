//! Criterion benches (short settings) of attention forward+backward and fused cross-entropy at a
//! few slice/prefix sizes, next to candle's own f32 matmul, the CPU ceiling for these kernels.
//!
//! Throughput is reported in "elements" that are FLOPs, so criterion's `Gelem/s` reads as GFLOP/s.
//! Counted FLOPs are the useful ones: attention `4·b·h·d·pairs` forward and twice that backward
//! (visible query–key pairs only), cross-entropy `2·n·V·H` forward and `4·n·V·H` backward, matmul
//! `2·m·n·k`. Recomputation inside the backward is not counted.
//!
//! Run: `cargo bench -p seqpipe-kernels --bench kernels -- --quick` (or without `--quick`; the
//! groups already use 10 samples over 2 s).

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use seqpipe_kernels::*;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn short<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// Query–key pairs a causal bottom-right slice of `sq` queries over `sk` keys computes.
fn causal_pairs(sq: usize, sk: usize) -> u64 {
    (sq * (sk - sq) + sq * (sq + 1) / 2) as u64
}

fn attention(c: &mut Criterion) {
    let mut g = short(c, "attention fwd+bwd f32 (h=8, hkv=2, d=64)");
    // (slice, prefix incl. slice): a first slice, later slices of a long sequence, a whole sequence.
    for (sq, sk) in [(256, 256), (256, 1024), (512, 2048), (1024, 1024)] {
        let (b, h, hkv, d) = (1, 8, 2, 64);
        let q = randn(&[b, h, sq, d]);
        let k = randn(&[b, hkv, sk, d]);
        let v = randn(&[b, hkv, sk, d]);
        let d_out = randn(&[b, h, sq, d]);
        let opts = AttentionOptions::causal(d);
        let pairs = causal_pairs(sq, sk) * (b * h) as u64;
        g.throughput(Throughput::Elements(12 * d as u64 * pairs));
        g.bench_function(format!("sq={sq} sk={sk}"), |bench| {
            bench.iter(|| {
                let (out, lse) = attention_forward(&q, &k, &v, &opts).unwrap();
                black_box(attention_backward(&q, &k, &v, &out, &lse, &d_out, &opts).unwrap())
            })
        });
    }
    g.finish();
}

/// The tile edge trades matmul efficiency against wasted work on diagonal tiles and cache reuse.
fn attention_blocks(c: &mut Criterion) {
    let mut g = short(
        c,
        "attention fwd+bwd f32 block sweep (h=8, hkv=2, d=64, sq=sk=1024)",
    );
    let (b, h, hkv, d, s) = (1, 8, 2, 64, 1024);
    let q = randn(&[b, h, s, d]);
    let k = randn(&[b, hkv, s, d]);
    let v = randn(&[b, hkv, s, d]);
    let d_out = randn(&[b, h, s, d]);
    g.throughput(Throughput::Elements(
        12 * d as u64 * causal_pairs(s, s) * (b * h) as u64,
    ));
    for block in [64, 128, 256, 512] {
        let opts = AttentionOptions {
            block_size: block,
            ..AttentionOptions::causal(d)
        };
        g.bench_function(format!("block={block}"), |bench| {
            bench.iter(|| {
                let (out, lse) = attention_forward(&q, &k, &v, &opts).unwrap();
                black_box(attention_backward(&q, &k, &v, &out, &lse, &d_out, &opts).unwrap())
            })
        });
    }
    g.finish();
}

fn cross_entropy(c: &mut Criterion) {
    let mut g = short(c, "cross-entropy fwd+bwd f32 (H=512, vocab block 4096)");
    for (n, vocab) in [(256, 8192), (1024, 8192), (512, 32000)] {
        let hd = 512;
        let h = randn(&[n, hd]);
        let w = (randn(&[vocab, hd]) * 0.05).unwrap();
        let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap();
        g.throughput(Throughput::Elements(6 * (n * vocab * hd) as u64));
        g.bench_function(format!("n={n} V={vocab}"), |bench| {
            bench.iter(|| {
                let (_, saved) = cross_entropy_forward(&h, &w, &t, None, n as f64, 4096).unwrap();
                black_box(cross_entropy_backward(&h, &w, &t, None, &saved, n as f64, 4096).unwrap())
            })
        });
    }
    g.finish();
}

fn matmul_ceiling(c: &mut Criterion) {
    let mut g = short(c, "candle matmul f32 (ceiling)");
    for n in [256, 512, 1024] {
        let a = randn(&[n, n]);
        let b = randn(&[n, n]);
        g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
        g.bench_function(format!("{n}x{n}x{n}"), |bench| {
            bench.iter(|| black_box(a.matmul(&b).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    attention,
    attention_blocks,
    cross_entropy,
    matmul_ceiling
);
criterion_main!(benches);
