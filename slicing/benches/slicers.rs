//! Criterion bench of the slicers on Seq1F1B/SlimPipe-sized requests.

use criterion::{criterion_group, criterion_main, Criterion};
use seqpipe_slicing::{balanced, preset, uniform, CostModel, Padding};
use std::hint::black_box;

fn slicers(c: &mut Criterion) {
    let cost = CostModel::flops(&preset("llama-70b").unwrap()).unwrap();
    c.bench_function("balanced 512k n=64 q=8", |b| {
        b.iter(|| balanced(black_box(512 * 1024), black_box(64), 8, &cost).unwrap())
    });
    c.bench_function("balanced 32k n=4 q=1", |b| {
        b.iter(|| balanced(black_box(32 * 1024), black_box(4), 1, &cost).unwrap())
    });
    c.bench_function("uniform padded 2M n=256 q=128", |b| {
        b.iter(|| {
            uniform(
                black_box(2 * 1024 * 1024 - 7),
                black_box(256),
                128,
                Padding::ToMultiple,
                &cost,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, slicers);
criterion_main!(benches);
