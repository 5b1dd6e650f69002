//! proptest invariants over every generator × random valid (p, m, n, v, g): validation passes,
//! the simulator terminates, every unit runs exactly once per stage, the peak units in flight
//! equal the SPEC §3 formulas, and the equal-cost bubble equals the closed forms.

use proptest::prelude::*;
use seqpipe_schedule::*;

/// A valid configuration of each kind, by construction.
fn any_config() -> impl Strategy<Value = ScheduleConfig> {
    use ScheduleKind::*;
    prop_oneof![
        (1u32..=6, 1u32..=6, 1u32..=4)
            .prop_map(|(p, m, n)| ScheduleConfig::new(GPipe, p, m).with_slices(n)),
        (1u32..=8, 1u32..=10).prop_map(|(p, m)| ScheduleConfig::new(OneFOneB, p, m)),
        (1u32..=6, 1u32..=3, 2u32..=4).prop_map(|(p, k, v)| ScheduleConfig::new(
            Interleaved,
            p,
            p * k
        )
        .with_chunks(v)),
        (1u32..=6, 1u32..=8, 1u32..=6)
            .prop_map(|(p, m, n)| ScheduleConfig::new(Seq1F1B, p, m).with_slices(n)),
        (1u32..=6, 0usize..6, 1u32..=3, 2u32..=3).prop_map(|(p, d, k, v)| {
            let divisors: Vec<u32> = (1..=p).filter(|x| p % x == 0).collect();
            let n = divisors[d % divisors.len()];
            ScheduleConfig::new(Seq1F1BInterleaved, p, p / n * k)
                .with_slices(n)
                .with_chunks(v)
        }),
        (
            1u32..=5,
            1u32..=3,
            0u32..=6,
            1u32..=4,
            0usize..4,
            any::<bool>()
        )
            .prop_map(|(p, m, extra, v, gi, pick)| {
                let n = if v > 1 { p + extra } else { 1 + extra };
                let lo = if v > 1 { p } else { 1 };
                let groups: Vec<u32> = (lo..=n).filter(|d| n % d == 0).collect();
                let c = ScheduleConfig::new(SlimPipe, p, m)
                    .with_slices(n)
                    .with_chunks(v);
                if pick {
                    c.with_group(groups[gi % groups.len()])
                } else {
                    c
                }
            }),
        (1u32..=8, 1u32..=10).prop_map(|(p, m)| ScheduleConfig::new(ZbH1, p, m)),
        (1u32..=6, 1u32..=3, 0u32..=3, 1u32..=3, 0u32..=6).prop_map(
            |(p, v, extra, blocks, rem)| {
                // Blocks of at least ⌈(p−1)/2⌉ micro-batches when interleaved, the last one included.
                let lo = if v > 1 { (p - 1).div_ceil(2).max(1) } else { 1 };
                let g = lo + extra;
                let rem = if rem >= lo && rem < g { rem } else { 0 };
                ScheduleConfig::new(Gis, p, g * blocks + rem)
                    .with_chunks(v)
                    .with_group(g)
            }
        ),
    ]
}

/// SPEC §3 peak units in flight on stage `r` (warm-up + 1, capped by the units there are).
fn expected_peak(c: &ScheduleConfig, r: u32) -> u32 {
    let (p, m, n, v) = (c.stages, c.microbatches, c.slices, c.chunks);
    let all = m * n * v;
    let peak = match c.kind {
        ScheduleKind::GPipe => all,
        ScheduleKind::OneFOneB => p - r,
        ScheduleKind::Seq1F1B => p - r - 1 + n - 1 + 1,
        ScheduleKind::Interleaved => (v - 1) * p + 2 * (p - r - 1) + 1,
        ScheduleKind::Seq1F1BInterleaved => (v - 1) * p + 2 * (p - r - 1) + (n - 1) + 1,
        ScheduleKind::SlimPipe => n * v + 2 * (p - 1 - r),
        ScheduleKind::ZbH1 => p,
        ScheduleKind::Gis => (v - 1) * c.group.unwrap() + p - r,
    };
    peak.min(all)
}

/// Closed-form bubble ratio with equal units and B = 2F (SPEC §3), where one exists.
fn closed_form_bubble(c: &ScheduleConfig) -> Option<f64> {
    let (p, m, n, v) = (
        c.stages as f64,
        c.microbatches as f64,
        c.slices as f64,
        c.chunks as f64,
    );
    match c.kind {
        ScheduleKind::GPipe
        | ScheduleKind::OneFOneB
        | ScheduleKind::Seq1F1B
        | ScheduleKind::Interleaved
        | ScheduleKind::Seq1F1BInterleaved
        | ScheduleKind::SlimPipe => Some((p - 1.0) / (n * v * m + p - 1.0)),
        ScheduleKind::ZbH1 | ScheduleKind::Gis => None,
    }
}

fn count(s: &Schedule, r: usize, op: Op) -> Vec<u32> {
    let c = &s.config;
    let mut counts = vec![0u32; (c.microbatches * c.slices * c.chunks) as usize];
    for a in s.actions[r].iter().filter(|a| a.op == op) {
        counts[((a.mb.0 * c.slices + a.slice.0) * c.chunks + a.chunk.0) as usize] += 1;
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn generated_schedules_are_valid_and_match_spec(config in any_config()) {
        let s = generate(&config).unwrap();
        let violations = validate(&s);
        prop_assert!(violations.is_empty(), "{}", validate::render_violations(&s, &violations));
        let lowered = lower(&s).unwrap();
        let violations = validate(&lowered);
        prop_assert!(violations.is_empty(), "{}", validate::render_violations(&lowered, &violations));

        // Every unit exactly once per stage: one F and either one B or one I and one W.
        let split = matches!(config.kind, ScheduleKind::ZbH1 | ScheduleKind::Gis);
        for r in 0..s.stages() {
            prop_assert!(count(&s, r, Op::Forward).iter().all(|&k| k == 1));
            let backward_ops: &[Op] = if split { &[Op::BackwardInput, Op::BackwardWeight] } else { &[Op::Backward] };
            for &op in backward_ops {
                prop_assert!(count(&s, r, op).iter().all(|&k| k == 1), "stage {} op {}", r, op);
            }
        }

        let costs = UnitCosts::new(1.0, 2.0);
        let sim = simulate(&s, |a| costs.cost(a), &P2p::free()).unwrap();
        for r in 0..config.stages {
            prop_assert_eq!(sim.stages[r as usize].max_in_flight, expected_peak(&s.config, r), "stage {}", r);
        }
        prop_assert_eq!(sim.max_in_flight(), s.max_in_flight());
        if let Some(expected) = closed_form_bubble(&config) {
            prop_assert!((sim.bubble_ratio - expected).abs() < 1e-12,
                "bubble {} vs closed form {}", sim.bubble_ratio, expected);
        }
        // Busy time is exactly the work: 3 units of time per unit of work on every stage.
        let work = 3.0 * f64::from(config.microbatches * config.slices * config.chunks);
        for st in &sim.stages {
            prop_assert!((st.busy - work).abs() < 1e-9);
            prop_assert_eq!(st.in_flight.last().unwrap().1, 0);
        }
    }

    #[test]
    fn vocabulary_parallel_ops_keep_every_schedule_valid(
        config in any_config(),
        costs in (0.1f64..3.0, 0.1f64..5.0, 0.0f64..2.0),
    ) {
        let lowered = lower(&generate(&config).unwrap()).unwrap();
        let (f, b, vocab) = costs;
        let unit_costs = UnitCosts { vocab, ..UnitCosts::new(f, b) };
        let vp = insert_vocab_parallel(&lowered, |a| unit_costs.cost(a)).unwrap();
        let violations = validate(&vp);
        prop_assert!(violations.is_empty(), "{}", validate::render_violations(&vp, &violations));
        // Every stage meets every unit once per vocabulary op; stripping gives the program back.
        let units = (config.microbatches * config.slices) as usize;
        for list in &vp.actions {
            for op in [Op::VocabEmbed, Op::VocabHead, Op::VocabEmbedGrad] {
                prop_assert_eq!(list.iter().filter(|a| a.op == op).count(), units);
            }
        }
        prop_assert_eq!(&strip_vocab(&vp), &lowered);
        prop_assert_eq!(&insert_vocab_parallel(&vp, |a| unit_costs.cost(a)).unwrap(), &vp);
        prop_assert!(simulate(&vp, |a| unit_costs.cost(a), &P2p::free()).is_ok());
    }

    #[test]
    fn attention_exchange_pairs_keep_every_schedule_valid(
        config in any_config(),
        vocab in any::<bool>(),
        lengths in proptest::collection::vec(1u64..=40, 12),
    ) {
        let lowered = lower(&generate(&config).unwrap()).unwrap();
        let costs = UnitCosts::new(1.0, 2.0);
        // Vocabulary ops first: the exchange then pairs computes around their meetings.
        let base = match vocab {
            true => insert_vocab_parallel(&lowered, |a| costs.cost(a)).unwrap(),
            false => lowered.clone(),
        };
        // Slices of random lengths: heads count tokens and never pass the slice's prefix.
        let bounds: Vec<u64> = std::iter::once(0)
            .chain(lengths.iter().take(config.slices as usize).scan(0, |end, l| {
                *end += l;
                Some(*end)
            }))
            .collect();
        let times = AttentionCosts::new(&bounds, 0.5);
        let (cost, column) = (|a: &Action| times.cost(a), |a: &Action| times.column(a));
        let x = insert_exchange(&base, cost, column, &bounds, ExchangePolicy::Level).unwrap();
        // Keeping only the pairs that shorten it never lengthens the simulated iteration.
        let short = insert_exchange(&base, cost, column, &bounds, ExchangePolicy::Shorten).unwrap();
        let span = |s: &Schedule| simulate(s, exchange_costs(s, cost, column), &P2p::free()).unwrap().makespan;
        prop_assert!(span(&short) <= span(&base) * (1.0 + 1e-12));
        for a in x.iter() {
            let head = a.pair.map_or(0, |p| u64::from(p.head));
            prop_assert!(head <= bounds[a.slice.index()], "{} with bounds {:?}", x.text(a), bounds);
        }
        let violations = validate(&x);
        prop_assert!(violations.is_empty(), "{}", validate::render_violations(&x, &violations));
        prop_assert_eq!(&strip_exchange(&x), &base);
        prop_assert!(insert_vocab_parallel(&x, |a| costs.cost(a)).is_err() || x == base);
        // Heavy and light sides come in pairs, and every mark survives the text form.
        let marked: Vec<&Action> = x.iter().filter(|a| a.pair.is_some()).collect();
        let heavy = marked.iter().filter(|a| a.pair.unwrap().head > 0).count();
        prop_assert_eq!(2 * heavy, marked.len());
        for a in marked {
            let text = x.text(a);
            let back = text.parse::<Compact>().unwrap().resolve(config.stages);
            prop_assert_eq!(back.pair, a.pair, "{}", text);
        }
        let json = serde_json::to_string(&x).unwrap();
        prop_assert_eq!(&serde_json::from_str::<Schedule>(&json).unwrap(), &x);
    }

    #[test]
    fn lowering_is_idempotent_and_strip_inverts_it(config in any_config()) {
        let s = generate(&config).unwrap();
        let lowered = lower(&s).unwrap();
        prop_assert_eq!(&lower(&lowered).unwrap(), &lowered);
        prop_assert_eq!(&strip_comm(&lowered), &s);
        // Every send has exactly one receive of the same data on the peer stage.
        let sends = lowered.iter().filter(|a| a.op.is_send()).count();
        let recvs = lowered.iter().filter(|a| a.op.is_recv()).count();
        prop_assert_eq!(sends, recvs);
        for a in lowered.iter().filter(|a| a.op.is_comm()) {
            prop_assert!(lowered.peer(a).is_some_and(|peer| peer != a.stage));
        }
    }

    #[test]
    fn text_json_and_csv_round_trip(config in any_config()) {
        let s = lower(&generate(&config).unwrap()).unwrap();
        for a in s.iter() {
            let text = s.text(a);
            let compact: Compact = text.parse().unwrap();
            prop_assert_eq!(compact.to_string(), text);
            prop_assert_eq!(compact.resolve(config.stages), *a);
        }
        prop_assert_eq!(&Schedule::from_json(&s.to_json()).unwrap(), &s);
        prop_assert_eq!(&csv::from_csv(&csv::to_csv(&s), s.config, true).unwrap(), &s);
    }

    #[test]
    fn swapping_dependent_actions_is_reported_where_it_happens(
        config in any_config(),
        lowered in any::<bool>(),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut s = generate(&config).unwrap();
        if lowered {
            s = lower(&s).unwrap();
        }
        // Pairs (i, j), i < j, on one stage where the action at j needs the action at i.
        let mut pairs = Vec::new();
        for (r, list) in s.actions.iter().enumerate() {
            for (i, a) in list.iter().enumerate() {
                for (j, b) in list.iter().enumerate().skip(i + 1) {
                    if depends(b, a, &s) {
                        pairs.push((r, i, j));
                    }
                }
            }
        }
        prop_assume!(!pairs.is_empty());
        let (r, i, j) = pairs[pick.index(pairs.len())];
        s.actions[r].swap(i, j);
        let violations = validate(&s);
        prop_assert!(violations.iter().any(|v| v.stage as usize == r && v.position == Some(i)),
            "swap of steps {} and {} on stage {} not reported at step {}:\n{}", i, j, r, i,
            validate::render_violations(&s, &violations));
    }

    #[test]
    fn dropping_a_receive_is_reported(config in any_config(), pick in any::<prop::sample::Index>()) {
        let mut s = lower(&generate(&config).unwrap()).unwrap();
        let recvs: Vec<(usize, usize)> = s.actions.iter().enumerate()
            .flat_map(|(r, l)| l.iter().enumerate().filter(|(_, a)| a.op.is_recv()).map(move |(i, _)| (r, i)))
            .collect();
        prop_assume!(!recvs.is_empty());
        let (r, i) = recvs[pick.index(recvs.len())];
        let dropped = s.actions[r].remove(i);
        let violations = validate(&s);
        // The compute it fed now sits at its step and runs without input; the sender is unmatched.
        prop_assert!(violations.iter().any(|v| v.stage as usize == r && v.position == Some(i)
            && v.rule == Rule::ComputeBeforeRecv));
        let sender = s.peer(&dropped).unwrap();
        prop_assert!(violations.iter().any(|v| v.stage == sender.0 && v.rule == Rule::Unmatched));
    }
}

/// Whether `b` must run after `a` on the same stage (same unit, or neighbouring slices).
fn depends(b: &Action, a: &Action, s: &Schedule) -> bool {
    let same_unit = a.unit() == b.unit();
    let same_seq = a.mb == b.mb && a.chunk == b.chunk;
    let k = b.virtual_stage(s.config.stages).0;
    let last = s.config.virtual_stages() - 1;
    match (a.op, b.op) {
        (Op::Forward, Op::Forward) => same_seq && b.slice.0 == a.slice.0 + 1,
        (Op::Backward, Op::Backward) | (Op::BackwardInput, Op::BackwardInput) => {
            same_seq && b.slice.0 + 1 == a.slice.0
        }
        (Op::Forward, Op::Backward | Op::BackwardInput | Op::SendAct) => same_unit,
        (Op::BackwardInput, Op::BackwardWeight) => same_unit,
        (Op::Backward | Op::BackwardInput, Op::SendGrad) => same_unit,
        (Op::RecvAct, Op::Forward) => same_unit && k > 0,
        (Op::RecvGrad, Op::Backward | Op::BackwardInput) => same_unit && k < last,
        _ => false,
    }
}

proptest! {
    /// The planner's lean path gives the full simulation's bubble bit for bit, with and without
    /// the vocabulary-parallel meetings, over links with latency and bandwidth.
    #[test]
    fn simulate_bubble_is_the_simulations_bubble(
        config in any_config(),
        vocab in any::<bool>(),
        costs in (0.1f64..3.0, 0.1f64..5.0, 0.0f64..2.0, 0.0f64..0.5),
    ) {
        let lowered = lower(&generate(&config).unwrap()).unwrap();
        let (f, b, v, latency) = costs;
        let unit_costs = UnitCosts { vocab: v, ..UnitCosts::new(f, b) };
        let s = match vocab {
            true => insert_vocab_parallel(&lowered, |a| unit_costs.cost(a)).unwrap(),
            false => lowered,
        };
        let p2p = P2p::new(latency, 4.0, MessageBytes::Constant(1.0));
        let full = simulate(&s, |a| unit_costs.cost(a), &p2p).unwrap().bubble_ratio;
        let lean = simulate_bubble(&s, |a| unit_costs.cost(a), &p2p).unwrap();
        prop_assert_eq!(full.to_bits(), lean.to_bits(), "{} vs {}", full, lean);
    }
}
