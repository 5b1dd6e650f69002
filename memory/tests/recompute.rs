//! The recomputation planner: the MILP optimum equals brute force on small instances, plans fit,
//! recomputing never raises usage, infeasible budgets are named, and a hand-checked instance.

use proptest::prelude::*;
use seqpipe_memory::*;

fn chunk(sequence: usize, per_layer: f64, kept: f64) -> ChunkMem {
    ChunkMem {
        sequence,
        per_layer,
        kept_per_layer: kept,
        fixed: 0.0,
    }
}

#[test]
fn one_stage_hand_checked() {
    // One stage, window 1: each chunk alone. Chunk costs 10/layer, keeps 2/layer, 3 layers:
    // 30 bytes at no recompute; budget 20 needs ⌈10/8⌉ = 2 checkpointed layers per chunk.
    let chunks = [chunk(0, 10.0, 2.0), chunk(1, 10.0, 2.0)];
    let p = RecomputeProblem::build(&chunks, 3, &[20.0], &[]).unwrap();
    assert_eq!(p.weights, vec![1, 1]);
    let plan = p.solve().unwrap();
    assert_eq!(plan.per_stage, vec![vec![2, 2]]);
    assert_eq!(plan.recomputed_layers, 4);
    // A generous budget recomputes nothing.
    let p = RecomputeProblem::build(&chunks, 3, &[30.0], &[]).unwrap();
    assert_eq!(p.solve().unwrap().recomputed_layers, 0);
}

#[test]
fn anti_diagonals_tie_stages() {
    // Two stages, three single-chunk sequences: stage 0 keeps 2 alive, stage 1 keeps 1.
    let chunks = [chunk(0, 1.0, 0.0), chunk(1, 1.0, 0.0), chunk(2, 1.0, 0.0)];
    let p = RecomputeProblem::build(&chunks, 2, &[100.0, 100.0], &[]).unwrap();
    // ckpt(r, k) = 𝒞[f2b[k] + d − 1 − r] with f2b[k] = k: stage 0 chunk k → k + 1, stage 1
    // chunk k → k, so stage 1's chunk k shares a variable with stage 0's chunk k − 1.
    assert_eq!(p.var, vec![vec![1, 2, 3], vec![0, 1, 2]]);
    assert_eq!(p.weights, vec![1, 2, 2, 1]);
    let max_alive = |r: usize| {
        p.constraints
            .iter()
            .filter(|c| c.stage == r)
            .map(|c| c.terms.len())
            .max()
            .unwrap()
    };
    assert_eq!((max_alive(0), max_alive(1)), (2, 1));
}

#[test]
fn split_sequences_stay_alive_together() {
    // One 3-slice sequence on two stages: its last slice is backwarded first, so every slice is
    // alive at once on both stages (window d − r + N_split − 1).
    let chunks = [chunk(0, 1.0, 0.0), chunk(0, 1.0, 0.0), chunk(0, 1.0, 0.0)];
    let p = RecomputeProblem::build(&chunks, 1, &[10.0, 10.0], &[]).unwrap();
    for r in 0..2 {
        let most = p
            .constraints
            .iter()
            .filter(|c| c.stage == r)
            .map(|c| c.terms.len())
            .max();
        assert_eq!(most, Some(3));
    }
}

#[test]
fn infeasible_budget_names_stage_and_excess() {
    let chunks = [chunk(0, 10.0, 4.0)];
    let p = RecomputeProblem::build(&chunks, 2, &[5.0], &[]).unwrap();
    match p.solve().unwrap_err() {
        MemoryError::Infeasible {
            stage, over_bytes, ..
        } => {
            assert_eq!(stage, 0);
            assert_eq!(over_bytes, 3.0);
        }
        e => panic!("{e}"),
    }
    let big = RecomputeProblem::build(&[chunk(0, 1.0, 0.0); 8], 9, &[100.0; 4], &[]).unwrap();
    assert!(matches!(
        big.brute_force(1000),
        Err(MemoryError::TooLarge { .. })
    ));
}

fn instance() -> impl Strategy<Value = (Vec<ChunkMem>, u64, Vec<f64>)> {
    (1usize..=3, 1usize..=4, 1u64..=3).prop_flat_map(|(d, n, layers)| {
        (
            prop::collection::vec((0usize..=1, 1u32..=20, 0u32..=10, 0u32..=5), n),
            Just(layers),
            prop::collection::vec(0.0f64..=1.0, d),
        )
            .prop_map(move |(raw, layers, fracs)| {
                let mut seq = 0;
                let chunks: Vec<ChunkMem> = raw
                    .iter()
                    .enumerate()
                    .map(|(k, &(new_seq, per, kept_pct, fixed))| {
                        if k > 0 && new_seq == 1 {
                            seq += 1;
                        }
                        let per = per as f64;
                        ChunkMem {
                            sequence: seq,
                            per_layer: per,
                            kept_per_layer: per * kept_pct as f64 / 10.0,
                            fixed: fixed as f64,
                        }
                    })
                    .collect();
                // Budgets between everything checkpointed (all of a stage's chunks) and nothing.
                let all: f64 = chunks
                    .iter()
                    .map(|c| c.per_layer * layers as f64 + c.fixed)
                    .sum();
                let low: f64 = chunks
                    .iter()
                    .map(|c| c.kept_per_layer * layers as f64 + c.fixed)
                    .sum();
                let budgets = fracs.iter().map(|f| low + f * (all - low)).collect();
                (chunks, layers, budgets)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn milp_equals_brute_force((chunks, layers, budgets) in instance()) {
        let p = RecomputeProblem::build(&chunks, layers, &budgets, &[]).unwrap();
        let exact = p.brute_force(1 << 16);
        let milp = p.solve();
        match (exact, milp) {
            (Ok(e), Ok(m)) => {
                prop_assert_eq!(e.recomputed_layers, m.recomputed_layers);
                prop_assert!(p.feasible(&m.diagonal));
                // Recomputing never raises any step's usage.
                let none = vec![0; p.weights.len()];
                for c in &p.constraints {
                    prop_assert!(c.usage(&m.diagonal) <= c.usage(&none));
                }
            }
            (Err(MemoryError::Infeasible { .. }), Err(MemoryError::Infeasible { .. })) => {}
            (e, m) => prop_assert!(false, "brute force {:?} vs milp {:?}", e, m),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The polynomial plan is feasible, never better than the optimum (that would be a wrong
    /// optimum or an infeasible plan), and locally minimal: no variable can drop one layer.
    #[test]
    fn relaxed_plan_is_feasible_and_locally_minimal((chunks, layers, budgets) in instance()) {
        let p = RecomputeProblem::build(&chunks, layers, &budgets, &[]).unwrap();
        match (p.brute_force(1 << 16), p.solve_relaxed()) {
            (Ok(e), Ok(r)) => {
                prop_assert!(p.feasible(&r.diagonal));
                prop_assert!(r.recomputed_layers >= e.recomputed_layers);
                for v in 0..r.diagonal.len() {
                    if r.diagonal[v] > 0 {
                        let mut lower = r.diagonal.clone();
                        lower[v] -= 1;
                        prop_assert!(!p.feasible(&lower), "variable {} could drop a layer", v);
                    }
                }
            }
            (Err(MemoryError::Infeasible { .. }), Err(MemoryError::Infeasible { .. })) => {}
            (e, r) => prop_assert!(false, "brute force {:?} vs relaxed {:?}", e, r),
        }
    }
}
