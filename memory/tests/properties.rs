//! proptest invariants over simulated schedules: peak ≥ model states, offloading and recomputing
//! never raise the peak, and every curve returns to model states at the end of the iteration.

use proptest::prelude::*;
use seqpipe_memory::*;
use seqpipe_schedule::{generate, simulate, P2p, ScheduleConfig, ScheduleKind, UnitCosts};
use seqpipe_slicing::preset;

/// Valid schedule configurations by construction.
fn any_config() -> impl Strategy<Value = ScheduleConfig> {
    (0usize..4, 1u32..=4, 1u32..=3, 1u32..=2, 1u32..=2).prop_map(|(kind, p, k, v, x)| {
        let m = p * k;
        match kind {
            0 => ScheduleConfig::new(ScheduleKind::OneFOneB, p, m),
            1 => ScheduleConfig::new(ScheduleKind::Seq1F1B, p, m).with_slices(x + 1),
            2 => ScheduleConfig::new(ScheduleKind::Interleaved, p, m).with_chunks(v + 1),
            _ => ScheduleConfig::new(ScheduleKind::SlimPipe, p, k)
                .with_slices(p * x)
                .with_chunks(v),
        }
    })
}

fn report(
    config: ScheduleConfig,
    policy: RecomputePolicy,
    states: f64,
    offload: Option<f64>,
) -> LedgerReport {
    let schedule = generate(&config).unwrap();
    let costs = UnitCosts::new(1.0, 2.0);
    let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
    let shape = preset("gpt-1.3b").unwrap();
    let act = ActivationModel::new(shape, Parallelism::new(1, 1, 1).unwrap())
        .unwrap()
        .with_recompute(policy);
    let n = config.slices as u64;
    let sizer = UnitSizer {
        per_microbatch: None,
        activation: act,
        layers_per_chunk: 2,
        slices: (0..n).map(|j| (j * 512, 512)).collect(),
        stages: config.stages as usize,
        chunks: config.chunks,
    };
    let lives = lives_from_spans(&spans_from_simulation(&sim)).unwrap();
    let mut events = events_from_lives(&lives, &sizer).unwrap();
    if let Some(f) = offload {
        let unit = sizer
            .unit_bytes(&UnitKey {
                mb: 0,
                slice: 0,
                chunk: 0,
            })
            .unwrap();
        let plan = plan_offload(&lives, &sizer, OffloadKnob::Fraction(f), unit / 0.3).unwrap();
        events.extend(plan.events());
    }
    run_ledger(&vec![states; config.stages as usize], &events).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ledger_invariants(config in any_config(), states in 0.0f64..1e9, f in 0.0f64..=1.0) {
        let plain = report(config, RecomputePolicy::None, states, None);
        let offloaded = report(config, RecomputePolicy::None, states, Some(f));
        let selective = report(config, RecomputePolicy::Selective, states, None);
        let full = report(config, RecomputePolicy::Full, states, None);
        for r in 0..config.stages as usize {
            for rep in [&plain, &offloaded, &selective, &full] {
                let s = &rep.stages[r];
                prop_assert!(s.peak >= s.model_states);
                let end = s.curve.last().unwrap();
                prop_assert!((end.device - s.model_states).abs() <= 1e-6 * s.model_states.max(1.0));
                prop_assert!(end.host.abs() <= 1e-6);
            }
            let tol = 1e-9 * plain.stages[r].peak;
            prop_assert!(offloaded.stages[r].peak <= plain.stages[r].peak + tol);
            prop_assert!(selective.stages[r].peak <= plain.stages[r].peak + tol);
            prop_assert!(full.stages[r].peak <= selective.stages[r].peak + tol);
        }
    }
}
