//! Elastic planning: the window model, its recomputation program, and whole plans.

use proptest::prelude::*;
use seqpipe_memory::elastic_compare::*;
use seqpipe_memory::elastic_plan::*;
use seqpipe_memory::recompute::ChunkMem;
use seqpipe_memory::window::*;
use seqpipe_schedule::{elastic, Op};
use seqpipe_slicing::LengthDist;

/// Independent replay: bytes alive on each stage after each forward, with `ckpt(r, mb, slice)`.
fn replay_peaks(
    e: &seqpipe_schedule::ElasticSchedule,
    mem: &[Vec<ChunkMem>],
    layers: u64,
    ckpt: impl Fn(usize, usize, usize) -> u64,
) -> Vec<f64> {
    e.schedule
        .actions
        .iter()
        .enumerate()
        .map(|(r, list)| {
            let (mut now, mut peak) = (0.0f64, 0.0f64);
            for a in list {
                let c = &mem[a.mb.index()][a.slice.index()];
                let k = ckpt(r, a.mb.index(), a.slice.index()) as f64;
                let bytes = c.per_layer * (layers as f64 - k) + c.kept_per_layer * k + c.fixed;
                if a.op == Op::Forward {
                    now += bytes;
                    peak = peak.max(now);
                } else if a.op == Op::Backward {
                    now -= bytes;
                }
            }
            peak
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn alive_chunks_fill_the_spec_window(p in 1usize..=6, counts in prop::collection::vec(1u32..=5, 1..10)) {
        let e = elastic(p as u32, &counts).unwrap();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let n_split = e.slice_counts[0] as usize;
        for (r, steps) in alive_after_forwards(&e.schedule).iter().enumerate() {
            let most = steps.iter().map(Vec::len).max().unwrap();
            prop_assert_eq!(most, window(p, r, n_split).min(total), "stage {}", r);
        }
    }

    /// The grouping DP's replay finds the least uniform checkpoint count the program's
    /// feasibility scan finds, or none where full recomputation does not fit either.
    #[test]
    fn replayed_uniform_checkpoints_are_the_programs(
        p in 1usize..=5,
        counts in prop::collection::vec(1u32..=4, 1..7),
        sizes in prop::collection::vec((1.0f64..10.0, 0.0f64..1.0), 20),
        layers in 1u64..=8,
        tight in 0.1f64..1.2,
    ) {
        let e = elastic(p as u32, &counts).unwrap();
        let mem: Vec<Vec<ChunkMem>> = e.slice_counts.iter().enumerate().map(|(mb, &n)| {
            (0..n as usize).map(|s| {
                let (x, kept) = sizes[(mb * 3 + s) % sizes.len()];
                ChunkMem { sequence: mb, per_layer: x, kept_per_layer: x * kept, fixed: 0.5 }
            }).collect()
        }).collect();
        let logits: Vec<Vec<f64>> = mem.iter().map(|row| vec![0.25; row.len()]).collect();
        let no_ckpt = replay_peaks(&e, &mem, layers, |_, _, _| 0);
        let budgets: Vec<f64> = no_ckpt.iter().map(|b| b * tight).collect();
        let inputs = WindowInputs {
            counts: &e.slice_counts, mem: &mem, layers_per_stage: layers,
            budgets: &budgets, last_stage_fixed: &logits,
        };
        let problem = window_problem(&e.schedule, &inputs).unwrap();
        prop_assert_eq!(
            uniform_checkpoints_replayed(&e.schedule, &inputs).unwrap(),
            uniform_checkpoints(&problem)
        );
    }

    #[test]
    fn recompute_plan_fits_every_stage(
        p in 1usize..=4,
        counts in prop::collection::vec(1u32..=3, 1..5),
        sizes in prop::collection::vec(1.0f64..10.0, 20),
        tight in 0.3f64..1.2,
    ) {
        let e = elastic(p as u32, &counts).unwrap();
        let layers = 3u64;
        let mem: Vec<Vec<ChunkMem>> = e.slice_counts.iter().enumerate().map(|(mb, &n)| {
            (0..n as usize).map(|s| {
                let x = sizes[(mb * 3 + s) % sizes.len()];
                ChunkMem { sequence: mb, per_layer: x, kept_per_layer: x / 4.0, fixed: 0.5 }
            }).collect()
        }).collect();
        let logits: Vec<Vec<f64>> = mem.iter().map(|row| vec![0.25; row.len()]).collect();
        let no_ckpt = replay_peaks(&e, &mem, layers, |_, _, _| 0);
        let budgets: Vec<f64> = no_ckpt.iter().map(|b| b * tight).collect();
        let problem = window_problem(&e.schedule, &WindowInputs {
            counts: &e.slice_counts, mem: &mem, layers_per_stage: layers,
            budgets: &budgets, last_stage_fixed: &logits,
        }).unwrap();
        let mut offset = vec![0usize; counts.len()];
        for mb in 1..counts.len() { offset[mb] = offset[mb - 1] + e.slice_counts[mb - 1] as usize; }
        match problem.solve() {
            Ok(plan) => {
                let ckpt = |r: usize, mb: usize, s: usize| plan.diagonal[problem.var[r][offset[mb] + s]];
                let mut replay = replay_peaks(&e, &mem, layers, ckpt);
                if let Some(last) = replay.last_mut() {
                    // The replay leaves logits out; the program charges them on the last stage.
                    let most = stage_peaks(&problem, &plan.diagonal, p)[p - 1];
                    prop_assert!(*last <= most + 1e-9);
                    *last = most;
                }
                for r in 0..p {
                    prop_assert!(replay[r] <= budgets[r] * (1.0 + 1e-9), "stage {} peak {} > {}", r, replay[r], budgets[r]);
                }
                let uniform = uniform_checkpoints(&problem).unwrap();
                prop_assert!(plan.recomputed_layers <= uniform * problem.weights.iter().sum::<u64>());
                if let Ok(brute) = problem.brute_force(200_000) {
                    prop_assert_eq!(brute.recomputed_layers, plan.recomputed_layers);
                }
            }
            Err(_) => prop_assert!(uniform_checkpoints(&problem).is_none()),
        }
    }
}

#[test]
fn packing_is_first_fit_decreasing_and_complete() {
    let bins = pack(&[5, 9, 3, 7, 1], 10);
    assert_eq!(bins, vec![vec![9, 1], vec![7, 3], vec![5]]);
}

#[test]
fn plans_fit_memory_and_account_every_token() {
    let setup = default_setup(4, 48 * 1024).unwrap();
    let lengths = LengthDist::LogNormal {
        mu: 8.5,
        sigma: 1.4,
    }
    .sample(32, setup.context, 3)
    .unwrap();
    let (elastic, chunking) = plan_elastic(&lengths, &setup, &[2, 4, 8]).unwrap().unwrap();
    let tokens: u64 = chunking.chunks.iter().map(|c| c.tokens()).sum();
    assert_eq!(tokens, lengths.iter().sum::<u64>());
    assert_eq!(elastic.units.iter().sum::<usize>(), chunking.chunks.len());
    for r in [
        Some(elastic),
        plan_packed(&lengths, &setup, &[1, 4]).unwrap(),
    ] {
        let r = r.expect("fits");
        assert!(
            r.peaks.iter().all(|&b| b <= setup.device_bytes),
            "{:?}",
            r.peaks
        );
        assert!(r.bubble_ratio > 0.0 && r.bubble_ratio < 1.0);
    }
}

/// The acceptance table (≈ 1 min): `cargo test -p seqpipe-memory --test elastic -- --ignored --nocapture`.
#[test]
#[ignore = "slow; prints the issue #9 comparison table"]
fn comparison_table() {
    check_table(128);
}

#[test]
fn comparison_table_small() {
    check_table(24);
}

fn check_table(sequences: usize) {
    let rows: Vec<CompareRow> = default_cases(sequences, 1)
        .iter()
        .map(|c| compare(c).unwrap())
        .collect();
    println!("{}", render(&rows));
    for r in &rows {
        for m in [&r.elastic, &r.seq1f1b, &r.packed] {
            let m = m.as_ref().expect("every method fits this budget");
            let device = default_setup(r.case.stages, r.case.context)
                .unwrap()
                .device_bytes;
            assert!(m.peaks.iter().all(|&b| b <= device * (1.0 + 1e-9)));
        }
    }
}
