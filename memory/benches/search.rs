//! Criterion bench of the planner's search (Llama-70B, 512K, 256 H100) and of one ledger run.

use criterion::{criterion_group, criterion_main, Criterion};
use seqpipe_memory::{gpu_preset, search, SearchSpace};
use seqpipe_slicing::preset;
use std::hint::black_box;

fn planner(c: &mut Criterion) {
    let gpu = gpu_preset("h100").unwrap();
    let space = SearchSpace {
        shape: preset("llama-70b").unwrap(),
        seq_len: 512 * 1024,
        gpus: 256,
        global_batch: 64,
        gpu,
        budget_bytes: gpu.memory_bytes,
        efficiency: 0.5.into(),
        max_tp: 8,
        max_cp: 8,
        min_stages: 2,
    };
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    group.bench_function("search llama-70b 512k 256xh100", |b| {
        b.iter(|| search(black_box(&space)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
