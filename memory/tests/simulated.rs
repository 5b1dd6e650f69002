//! The ledger over schedules simulated by the `schedule` crate: in-flight counts and peaks equal
//! the SPEC §5 closed forms (with the simulated clock or the stages' program order as time),
//! curves return to model states, and PipeOffload's acceptance figures for GIS (d = 4, 8, 16;
//! v = 2; g = 4, or 8 at d = 16).

use seqpipe_memory::*;
use seqpipe_schedule::{
    generate, simulate, P2p, ScheduleConfig, ScheduleKind, Simulation, UnitCosts,
};
use seqpipe_slicing::preset;

fn sim(config: ScheduleConfig) -> Simulation {
    let schedule = generate(&config).unwrap();
    let costs = UnitCosts::new(1.0, 2.0);
    simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap()
}

/// A sizer where one unit weighs exactly 1 byte and nothing else is counted.
fn unit_sizer(config: &ScheduleConfig) -> UnitSizer {
    let shape = preset("llama-7b").unwrap();
    let mut act = ActivationModel::new(shape, Parallelism::new(1, 1, 1).unwrap()).unwrap();
    act.logits = LogitsPlacement::VocabSharded;
    act.logits_dtype = Dtype::F8;
    // 1 token of 1 layer weighs bytes_per_token_layer; divide it out below instead.
    UnitSizer {
        per_microbatch: None,
        activation: act,
        layers_per_chunk: 1,
        slices: (0..config.slices as u64).map(|j| (j, 1)).collect(),
        stages: config.stages as usize,
        chunks: config.chunks,
    }
}

/// Peak activation units per stage from the ledger (side terms excluded).
fn ledger_units(sim: &Simulation, sizer: &UnitSizer) -> Vec<f64> {
    units_of_spans(&spans_from_simulation(sim), sizer)
}

/// Peak activation units per stage from the ledger over `spans` (side terms excluded).
fn units_of_spans(spans: &[ComputeSpan], sizer: &UnitSizer) -> Vec<f64> {
    let lives = lives_from_spans(spans).unwrap();
    let events: Vec<_> = events_from_lives(&lives, sizer)
        .unwrap()
        .into_iter()
        .filter(|e| e.unit.starts_with("act "))
        .collect();
    let report = run_ledger(&vec![0.0; sizer.stages], &events).unwrap();
    let unit = sizer.activation.bytes_per_token_layer();
    for s in &report.stages {
        assert_eq!(
            s.final_device(),
            0.0,
            "stage {} does not return to model states",
            s.stage
        );
    }
    report.stages.iter().map(|s| s.peak / unit).collect()
}

#[test]
fn ledger_in_flight_equals_closed_forms() {
    let configs = [
        ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 8),
        ScheduleConfig::new(ScheduleKind::OneFOneB, 3, 2),
        ScheduleConfig::new(ScheduleKind::Interleaved, 4, 8).with_chunks(2),
        ScheduleConfig::new(ScheduleKind::Interleaved, 2, 4).with_chunks(3),
        ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(2),
        ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(4),
        ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 4)
            .with_slices(4)
            .with_chunks(2),
        ScheduleConfig::new(ScheduleKind::SlimPipe, 2, 3)
            .with_slices(4)
            .with_chunks(2),
        ScheduleConfig::new(ScheduleKind::ZbH1, 4, 8),
        ScheduleConfig::new(ScheduleKind::Gis, 4, 8)
            .with_chunks(2)
            .with_group(2),
    ];
    for config in configs {
        let s = sim(config);
        let kind = pipeline_kind(&s.config).unwrap();
        let got = ledger_units(&s, &unit_sizer(&config));
        // A stage's memory depends only on its own program's order, which the simulation keeps:
        // program indices as the clock give the same peaks.
        let ordered = spans_in_program_order(&generate(&config).unwrap());
        assert_eq!(
            units_of_spans(&ordered, &unit_sizer(&config)),
            got,
            "{config:?}"
        );
        for (r, units) in got.iter().enumerate() {
            let closed =
                kind.in_flight_units(config.stages as u64, r as u64, config.microbatches as u64);
            assert_eq!(*units, closed.unwrap() as f64, "{kind} stage {r}");
        }
    }
}

#[test]
fn static_peak_bounds_the_ledger_and_matches_its_activations() {
    // Llama-7B, 4 stages, 16k tokens: the static activation term equals the ledger's activation
    // peak; the static total (with its bounds on side terms) is ≥ the ledger's peak.
    let configs = [
        ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 4)
            .with_slices(4)
            .with_chunks(2),
        ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 4).with_slices(4),
        ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 4),
        ScheduleConfig::new(ScheduleKind::Interleaved, 4, 4).with_chunks(2),
    ];
    for config in configs {
        for policy in [RecomputePolicy::None, RecomputePolicy::Full] {
            for logits in [LogitsPlacement::LastStage, LogitsPlacement::VocabSharded] {
                static_vs_ledger(config, policy, logits);
            }
        }
    }
}

fn static_vs_ledger(config: ScheduleConfig, policy: RecomputePolicy, logits: LogitsPlacement) {
    let s = sim(config);
    let shape = preset("llama-7b").unwrap();
    let mut act = ActivationModel::new(shape, Parallelism::new(2, 1, 1).unwrap())
        .unwrap()
        .with_recompute(policy);
    act.logits = logits;
    let (n, v) = (config.slices as u64, config.chunks as u64);
    let x = 16384 / n;
    let layers = 32 / (4 * v);
    let static_cfg = StaticConfig {
        activation: act,
        states: StateOptions::default(),
        kind: pipeline_kind(&s.config).unwrap(),
        stages: 4,
        microbatches: 4,
        seq_len: 16384,
        offload_fraction: 0.0,
    };
    let mut static_cfg = static_cfg;
    static_cfg.states.vocab = logits;
    let peaks = static_cfg.peaks().unwrap();
    let states: Vec<f64> = peaks.iter().map(|p| p.states.total()).collect();
    let sizer = UnitSizer {
        per_microbatch: None,
        activation: act,
        layers_per_chunk: layers,
        slices: (0..n).map(|j| (j * x, x)).collect(),
        stages: 4,
        chunks: config.chunks,
    };
    let report = ledger_of_simulation(&s, &sizer, &states).unwrap();
    for (p, l) in peaks.iter().zip(&report.stages) {
        assert!(
            l.peak >= l.model_states,
            "peak below model states on stage {}",
            l.stage
        );
        let ctx = format!("{} {policy:?} {logits:?} stage {}", config.kind, l.stage);
        assert!(
            p.total() >= l.peak - 1e-6 * l.peak,
            "{ctx}: static {} < ledger {}",
            p.total(),
            l.peak
        );
        assert!((l.final_device() - l.model_states).abs() < 1e-6 * l.model_states);
    }
    let acts: Vec<f64> = ledger_units(&s, &sizer)
        .iter()
        .map(|u| u * act.bytes_per_token_layer())
        .collect();
    for (p, a) in peaks.iter().zip(acts) {
        let ledger = a;
        if policy == RecomputePolicy::None {
            assert_eq!(p.activations, ledger, "{} stage {}", config.kind, p.stage);
        } else {
            // Kept K/V differ per slice; the static form charges every unit the largest.
            assert!(
                ledger <= p.activations + p.kv_prefix,
                "{} stage {}",
                config.kind,
                p.stage
            );
        }
    }
}

/// Device-0 peak in units of GIS with v = 2 and g = [`gis_group`], m = 16.
fn gis_peak(d: u32, knob: Option<OffloadKnob>) -> (f64, OffloadPlan) {
    let config = ScheduleConfig::new(ScheduleKind::Gis, d, 16)
        .with_chunks(2)
        .with_group(gis_group(d));
    let s = sim(config);
    let sizer = unit_sizer(&config);
    let unit = sizer.activation.bytes_per_token_layer();
    let lives = lives_from_spans(&spans_from_simulation(&s)).unwrap();
    let mut events: Vec<_> = events_from_lives(&lives, &sizer)
        .unwrap()
        .into_iter()
        .filter(|e| e.unit.starts_with("act "))
        .collect();
    // Transfer of one unit takes 0.4 of a forward: k < 1, hideable.
    let plan = match knob {
        Some(k) => plan_offload(&lives, &sizer, k, unit / 0.4).unwrap(),
        None => OffloadPlan {
            transfers: vec![],
            skipped: vec![],
        },
    };
    events.extend(plan.events());
    let report = run_ledger(&vec![0.0; d as usize], &events).unwrap();
    for st in &report.stages {
        assert_eq!(st.final_device(), 0.0);
        assert_eq!(st.curve.last().unwrap().host, 0.0);
    }
    (report.stages[0].peak / unit, plan)
}

/// g = 4, except g = 8 at d = 16: GIS needs g·v ≥ d for data to cycle through the chunks.
fn gis_group(d: u32) -> u32 {
    4.max(d / 2)
}

#[test]
fn gis_offload_acceptance_figures() {
    let (none, _) = gis_peak(8, None);
    assert_eq!(none, 12.0); // d + (v−1)·g
    let (chunk0, plan) = gis_peak(8, Some(OffloadKnob::ModelChunks(1)));
    eprintln!("GIS d=8 v=2 g=4: no offload {none}, chunk 0 offloaded {chunk0}");
    assert!(chunk0 <= 4.0 + 4.0, "{chunk0}"); // (v−1)·g plus a few buffers
    assert!(plan.transfers.iter().all(|t| t.delay == 0.0));
    let mut all = Vec::new();
    for d in [4, 8, 16] {
        let (base, _) = gis_peak(d, None);
        let (full, plan) = gis_peak(d, Some(OffloadKnob::Fraction(1.0)));
        let g = gis_group(d);
        eprintln!(
            "GIS d={d} g={g}: no offload {base}, all chunks offloaded {full}, skipped {}",
            plan.skipped.len()
        );
        assert_eq!(base, (d + g) as f64); // d + (v−1)·g
        all.push(full);
    }
    assert!(all.iter().all(|&p| p <= 5.0), "{all:?}");
    assert!(
        all[2] <= all[0] + 1.0,
        "full-offload peak grows with d: {all:?}"
    );
}

#[test]
fn offload_actions_enter_the_ir_and_hidden_transfers_cost_nothing() {
    use seqpipe_schedule::{validate, Op};
    let config = ScheduleConfig::new(ScheduleKind::Gis, 4, 8)
        .with_chunks(2)
        .with_group(4);
    let base = sim(config);
    let sizer = unit_sizer(&config);
    let unit = sizer.activation.bytes_per_token_layer();
    let lives = lives_from_spans(&spans_from_simulation(&base)).unwrap();
    let costs = UnitCosts::new(1.0, 2.0);
    for (bandwidth, hidden) in [(unit / 0.4, true), (unit / 3.0, false)] {
        let plan = plan_offload(&lives, &sizer, OffloadKnob::Fraction(1.0), bandwidth).unwrap();
        assert!(!plan.transfers.is_empty());
        let with = with_offload_actions(&base, &plan);
        let count = |op| with.iter().filter(|a| a.op == op).count();
        assert_eq!(count(Op::Offload), plan.transfers.len());
        assert_eq!(count(Op::Reload), plan.transfers.len());
        assert!(validate(&with).is_empty(), "{:?}", validate(&with));
        let again = simulate(&with, plan.cost(|a| costs.cost(a)), &P2p::free()).unwrap();
        let delay: f64 = plan.delay_per_stage(4).iter().sum();
        if hidden {
            assert_eq!(delay, 0.0);
            assert_eq!(again.makespan, base.makespan);
        } else {
            // A slow link exposes reloads: the backwards wait and the iteration gets longer.
            assert!(delay > 0.0);
            assert!(again.makespan > base.makespan);
        }
    }
}
