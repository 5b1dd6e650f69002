//! Criterion bench: generate + lower + simulate SlimPipe at p = 16, v = 5, n = 64, m = 8
//! (SlimPipe's 2048K configuration; ~164k actions), and each step alone.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use seqpipe_schedule::{generate, lower, simulate, P2p, ScheduleConfig, ScheduleKind, UnitCosts};

fn slimpipe(c: &mut Criterion) {
    let config = ScheduleConfig::new(ScheduleKind::SlimPipe, 16, 8)
        .with_slices(64)
        .with_chunks(5);
    let costs = UnitCosts::new(1.0, 2.0);
    c.bench_function("slimpipe p16 v5 n64 m8: generate+lower+simulate", |b| {
        b.iter(|| {
            let s = lower(&generate(black_box(&config)).unwrap()).unwrap();
            simulate(&s, |a| costs.cost(a), &P2p::free())
                .unwrap()
                .makespan
        })
    });
    let generated = generate(&config).unwrap();
    let lowered = lower(&generated).unwrap();
    c.bench_function("slimpipe p16 v5 n64 m8: generate", |b| {
        b.iter(|| generate(black_box(&config)).unwrap())
    });
    c.bench_function("slimpipe p16 v5 n64 m8: lower", |b| {
        b.iter(|| lower(black_box(&generated)).unwrap())
    });
    c.bench_function("slimpipe p16 v5 n64 m8: simulate", |b| {
        b.iter(|| {
            simulate(black_box(&lowered), |a| costs.cost(a), &P2p::free())
                .unwrap()
                .makespan
        })
    });
}

criterion_group!(benches, slimpipe);
criterion_main!(benches);
