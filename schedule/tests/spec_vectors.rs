//! SPEC §3 / §5 test vectors reproduced by simulation with equal units and `B = 2F`.

use seqpipe_schedule::*;

fn equal_cost_sim(config: ScheduleConfig) -> Simulation {
    let schedule = generate(&config).unwrap();
    let costs = UnitCosts::new(1.0, 2.0);
    simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap()
}

fn percent(x: f64) -> f64 {
    (x * 10000.0).round() / 100.0
}

#[test]
fn seq1f1b_p4_m8_bubbles_and_peaks() {
    // SPEC §3: n = 1/2/4/8 → 27.27 / 15.79 / 8.57 / 4.48 %, first-stage peak 4/5/7/11 slices.
    let expected = [(1, 27.27, 4), (2, 15.79, 5), (4, 8.57, 7), (8, 4.48, 11)];
    for (n, bubble, peak) in expected {
        let sim = equal_cost_sim(ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(n));
        assert_eq!(percent(sim.bubble_ratio), bubble, "n = {n}");
        // Exact closed form (p−1)/(m·n+p−1), not just to two decimals.
        let closed = 3.0 / (8.0 * f64::from(n) + 3.0);
        assert!((sim.bubble_ratio - closed).abs() < 1e-12, "n = {n}");
        assert_eq!(sim.stages[0].max_in_flight, peak, "n = {n}");
        // Every stage idles exactly (p−1)·(F+B) = 9 units.
        for st in &sim.stages {
            assert!((st.idle - 9.0).abs() < 1e-12);
        }
    }
}

#[test]
fn one_f_one_b_matches_seq1f1b_with_one_slice() {
    let a = generate(&ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 8)).unwrap();
    let b = generate(&ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8)).unwrap();
    assert_eq!(a.actions, b.actions);
    let sim = equal_cost_sim(ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 8));
    assert!((sim.bubble_ratio - 3.0 / 11.0).abs() < 1e-12);
    assert_eq!(sim.makespan, 33.0);
}

#[test]
fn interleaved_p16_v5_m16_is_15_79_percent() {
    let sim = equal_cost_sim(ScheduleConfig::new(ScheduleKind::Interleaved, 16, 16).with_chunks(5));
    assert_eq!(percent(sim.bubble_ratio), 15.79);
    assert!((sim.bubble_ratio - 15.0 / 95.0).abs() < 1e-12);
}

#[test]
fn interleaved_peak_on_stage0_is_dv_plus_d_minus_1() {
    // SPEC §5.1: interleaved device 0 holds d·v + d − 1 chunk-micro-batches (when m·v allows).
    let sim = equal_cost_sim(ScheduleConfig::new(ScheduleKind::Interleaved, 4, 16).with_chunks(3));
    assert_eq!(sim.stages[0].max_in_flight, 4 * 3 + 4 - 1);
}

#[test]
fn slimpipe_p8_v10_n8_m16_is_0_54_percent_with_94_units() {
    let sim = equal_cost_sim(
        ScheduleConfig::new(ScheduleKind::SlimPipe, 8, 16)
            .with_slices(8)
            .with_chunks(10),
    );
    assert_eq!(percent(sim.bubble_ratio), 0.54);
    assert!((sim.bubble_ratio - 7.0 / (8.0 * 10.0 * 16.0 + 7.0)).abs() < 1e-12);
    // SPEC §5: n·v + 2(p−1) = 94 units in flight on stage 0.
    assert_eq!(sim.stages[0].max_in_flight, 94);
}

#[test]
fn slimpipe_default_group_is_smallest_divisor_at_least_p() {
    let s = generate(
        &ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 2)
            .with_slices(12)
            .with_chunks(2),
    )
    .unwrap();
    assert_eq!(s.config.group, Some(4));
    let s = generate(
        &ScheduleConfig::new(ScheduleKind::SlimPipe, 5, 2)
            .with_slices(12)
            .with_chunks(2),
    )
    .unwrap();
    assert_eq!(s.config.group, Some(6));
    // Cycle order on stage 0: slices 0..5 on chunk 0, then 0..5 on chunk 1, then 6..11 on chunk 0.
    let first: Vec<String> = s.actions[0].iter().take(13).map(|a| s.text(a)).collect();
    assert_eq!(
        first,
        [
            "0F0.0", "0F0.1", "0F0.2", "0F0.3", "0F0.4", "0F0.5", "5F0.0", "5F0.1", "5F0.2",
            "5F0.3", "5F0.4", "5F0.5", "0F0.6"
        ]
    );
}

#[test]
fn zb_h1_idles_a_third_of_1f1b_at_1f1b_memory() {
    // T_F = T_B(input) = T_W: 1F1B idles 3(p−1), ZB-H1 (p−1) per stage; both peak at p units.
    for (p, m) in [(4, 8), (3, 6), (6, 12)] {
        let costs = UnitCosts::new(1.0, 2.0);
        let run = |kind| {
            let s = generate(&ScheduleConfig::new(kind, p, m)).unwrap();
            simulate(&s, |a| costs.cost(a), &P2p::free()).unwrap()
        };
        let zb = run(ScheduleKind::ZbH1);
        let base = run(ScheduleKind::OneFOneB);
        for (z, b) in zb.stages.iter().zip(&base.stages) {
            assert!(
                (z.idle - f64::from(p - 1)).abs() < 1e-12,
                "p={p} m={m} idle {}",
                z.idle
            );
            assert!((b.idle - 3.0 * f64::from(p - 1)).abs() < 1e-12);
        }
        assert_eq!(zb.stages[0].max_in_flight, base.stages[0].max_in_flight);
        assert_eq!(zb.max_in_flight().into_iter().max(), Some(p));
    }
}

#[test]
fn gis_device0_peak_is_d_plus_v_minus_1_times_g() {
    // SPEC §5.1 / issue #4: d = 8, v = 2, g = 4 → 12 units on device 0.
    let sim = equal_cost_sim(
        ScheduleConfig::new(ScheduleKind::Gis, 8, 16)
            .with_chunks(2)
            .with_group(4),
    );
    assert_eq!(sim.stages[0].max_in_flight, 8 + 4);
    // Fewer units than interleaved 1F1B's d·v + d − 1 = 23.
    let il = equal_cost_sim(ScheduleConfig::new(ScheduleKind::Interleaved, 8, 16).with_chunks(2));
    assert_eq!(il.stages[0].max_in_flight, 23);
}

#[test]
fn seq1f1b_n2_stage0_warmup_order() {
    // Issue #3: stage-0 warm-up of Seq1F1B p=4 m=8 n=2 is F(1a) F(1b) F(2a) F(2b) (1-based).
    let s = generate(&ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(2)).unwrap();
    let warmup: Vec<String> = s.actions[0].iter().take(5).map(|a| s.text(a)).collect();
    assert_eq!(warmup, ["0F0.0", "0F0.1", "0F1.0", "0F1.1", "0F2.0"]);
    assert_eq!(s.text(&s.actions[0][5]), "0B0.1"); // LIFO: slice 1 first
    assert_eq!(s.text(&s.actions[0][7]), "0B0.0");
}

#[test]
fn uniform_slices_with_causal_attention_grow_seq1f1b_bubble() {
    // SPEC §3: with uniform slices and attention = 30 % of compute, Seq1F1B n = 4 (p=4, m=8)
    // bubbles 23.8 % instead of 8.6 % with balanced (equal-cost) slices.
    let (n, attention) = (4usize, 0.3);
    // Cost of slice j ∝ linear part (1/n each) + attention part ∝ (2j+1)/n².
    let forward: Vec<f64> = (0..n)
        .map(|j| (1.0 - attention) / n as f64 + attention * (2 * j + 1) as f64 / (n * n) as f64)
        .collect();
    let table = CostTable::repeated(8, &forward, &vec![0.0; n], 2.0);
    let s =
        generate(&ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(n as u32)).unwrap();
    let sim = simulate(&s, |a| table.cost(a), &P2p::free()).unwrap();
    // The SPEC gives one decimal.
    assert_eq!((sim.bubble_ratio * 1000.0).round() / 10.0, 23.8);
    let balanced = CostTable::repeated(8, &vec![1.0 / n as f64; n], &vec![0.0; n], 2.0);
    let sim = simulate(&s, |a| balanced.cost(a), &P2p::free()).unwrap();
    assert_eq!(percent(sim.bubble_ratio), 8.57);
}
