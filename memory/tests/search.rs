//! The planner's search on the acceptance case: Llama-70B, 512K tokens, 256 H100s.

use seqpipe_memory::*;
use seqpipe_slicing::preset;

fn space() -> SearchSpace {
    let gpu = gpu_preset("h100").unwrap();
    SearchSpace {
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
    }
}

#[test]
fn llama70b_512k_best_plan_is_slimpipe_and_1f1b_does_not_fit() {
    let evals = search(&space()).unwrap();
    let best = evals[0];
    assert!(best.fits(), "{best:?}");
    assert!(best.peak_bytes <= 80e9);
    assert!(
        matches!(best.candidate.kind, PipelineKind::SlimPipe { .. }),
        "best is {}",
        best.candidate.kind
    );
    // 1F1B without recomputation or offload fits nowhere.
    let plain_1f1b: Vec<_> = evals
        .iter()
        .filter(|e| {
            e.candidate.kind == PipelineKind::OneF1B
                && e.candidate.recompute == RecomputePolicy::None
                && e.candidate.offload_fraction == 0.0
        })
        .collect();
    assert!(!plain_1f1b.is_empty());
    assert!(plain_1f1b.iter().all(|e| !e.fits()));
    // Fitting plans come first.
    let fit = evals.iter().take_while(|e| e.fits()).count();
    assert!(evals[fit..].iter().all(|e| !e.fits()));
    // Fitting plans are ordered by MFU in 0.1 % steps.
    let step = |e: &Evaluation| (e.mfu * 1000.0).round();
    assert!(evals[..fit].windows(2).all(|w| step(&w[0]) >= step(&w[1])));
}

#[test]
fn evaluation_is_consistent_with_the_static_peak() {
    let s = space();
    let c = Candidate {
        kind: PipelineKind::OneF1B,
        stages: 8,
        parallel: Parallelism::new(8, 4, 1).unwrap(),
        microbatches: 64,
        recompute: RecomputePolicy::Full,
        offload_fraction: 0.0,
    };
    let e = evaluate(&s, &c).unwrap();
    // Activations: 1F1B full recompute keeps L layers × s tokens × 2H/(t·c) on stage 0.
    let acts = 80.0 * 524288.0 * 2.0 * 8192.0 / 32.0;
    assert!(e.peak_bytes > acts && e.peak_bytes > e.states_bytes);
    assert_eq!(e.bubble, 7.0 / 71.0);
    // MFU = efficiency × (1 − bubble) / (1 + recompute share) < efficiency.
    assert!(e.mfu < 0.5 * (1.0 - e.bubble) && e.mfu > 0.3);
    let mut bad = s;
    bad.efficiency = 0.0.into();
    assert!(search(&bad).is_err());
    bad.efficiency = Efficiency {
        linear: 0.5,
        attention: 1.5,
    };
    let e = search(&bad).unwrap_err().to_string();
    assert!(
        e.contains("attention efficiency") && e.contains("1.5"),
        "{e}"
    );
}

/// The attention core runs at its own efficiency: at 512K it carries most of the FLOPs, so a
/// slower attention lengthens the step by nearly its share, and equal efficiencies give the
/// one-constant model's figures exactly.
#[test]
fn attention_efficiency_weighs_by_the_attention_share() {
    let s = space();
    let c = Candidate {
        kind: PipelineKind::OneF1B,
        stages: 4,
        parallel: Parallelism::new(8, 4, 1).unwrap(),
        microbatches: 8,
        recompute: RecomputePolicy::Full,
        offload_fraction: 0.0,
    };
    let base = evaluate(&s, &c).unwrap();
    let same = evaluate(
        &SearchSpace {
            efficiency: Efficiency::uniform(0.5),
            ..s
        },
        &c,
    )
    .unwrap();
    assert_eq!(base.mfu, same.mfu);
    let slow = SearchSpace {
        efficiency: Efficiency {
            linear: 0.5,
            attention: 0.25,
        },
        ..s
    };
    let slower = evaluate(&slow, &c).unwrap();
    assert!(
        slower.step_time > 1.5 * base.step_time,
        "{} vs {}",
        slower.step_time,
        base.step_time
    );
    assert!(slower.step_time < 2.0 * base.step_time);
}
