//! The event simulator: point-to-point latency and bandwidth, deadlock reports, cost errors and the
//! units-in-flight curve.

use seqpipe_schedule::*;

fn one_f_one_b(p: u32, m: u32) -> Schedule {
    lower(&generate(&ScheduleConfig::new(ScheduleKind::OneFOneB, p, m)).unwrap()).unwrap()
}

#[test]
fn latency_and_bandwidth_delay_every_hop() {
    // p = 2, m = 1: F on stage 0 [0,1], hop, F on stage 1, B on stage 1 (2), hop, B on stage 0 (2).
    let s = one_f_one_b(2, 1);
    let costs = UnitCosts::new(1.0, 2.0);
    let free = simulate(&s, |a| costs.cost(a), &P2p::free()).unwrap();
    assert_eq!(free.makespan, 6.0);
    let bytes = |a: &Action| if a.op == Op::SendAct { 100.0 } else { 300.0 };
    let p2p = P2p::new(0.5, 200.0, MessageBytes::PerMessage(&bytes));
    let sim = simulate(&s, |a| costs.cost(a), &p2p).unwrap();
    // Activation hop 0.5 + 100/200 = 1, gradient hop 0.5 + 300/200 = 2.
    assert!((sim.makespan - 9.0).abs() < 1e-12, "{}", sim.makespan);
    let recv = sim.timeline[0]
        .iter()
        .find(|t| t.action.op == Op::RecvGrad)
        .unwrap();
    assert_eq!((recv.start, recv.end, recv.wait), (1.0, 7.0, 6.0));
    assert!((sim.stages[0].busy - 3.0).abs() < 1e-12);
    assert!((sim.stages[0].idle - 6.0).abs() < 1e-12);
}

#[test]
fn constant_message_size_and_comm_cost() {
    let s = one_f_one_b(3, 2);
    let mut costs = UnitCosts::new(1.0, 2.0);
    costs.comm = 0.25;
    let p2p = P2p::new(0.0, 4.0, MessageBytes::Constant(2.0));
    let sim = simulate(&s, |a| costs.cost(a), &p2p).unwrap();
    // Busy time counts the local comm cost; waits are idle.
    let comm_actions = s.actions[1].iter().filter(|a| a.op.is_comm()).count() as f64;
    assert!((sim.stages[1].busy - (2.0 * 3.0 + 0.25 * comm_actions)).abs() < 1e-12);
    let free = simulate(&s, |a| UnitCosts::new(1.0, 2.0).cost(a), &P2p::free()).unwrap();
    assert!(sim.makespan > free.makespan);
}

#[test]
fn deadlock_names_every_waiting_stage() {
    // Stage 0 asks for the gradient before sending the activation stage 1 needs.
    let mut s = one_f_one_b(2, 1);
    let recv = s.actions[0]
        .iter()
        .position(|a| a.op == Op::RecvGrad)
        .unwrap();
    let a = s.actions[0].remove(recv);
    s.actions[0].insert(0, a);
    let e = simulate(&s, |_| 1.0, &P2p::free()).unwrap_err();
    let ScheduleError::Deadlock { blocked } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(blocked.len(), 2);
    assert_eq!(
        (blocked[0].stage, blocked[0].position, blocked[0].waits_for),
        (0, 0, Some(1))
    );
    assert_eq!(
        (blocked[1].stage, blocked[1].position, blocked[1].waits_for),
        (1, 0, Some(0))
    );
    assert_eq!(
        e.to_string(),
        "deadlock: stage 0 waits at step 0 in 0RECV_B0 for stage 1; stage 1 waits at step 0 in 1RECV_F0 for stage 0"
    );
    // The planner's lean path stops the same way.
    let lean = simulate_bubble(&s, |_| 1.0, &P2p::free()).unwrap_err();
    assert_eq!(lean.to_string(), e.to_string());
}

#[test]
fn bad_costs_and_p2p_are_errors() {
    let s = one_f_one_b(2, 2);
    let e = simulate(
        &s,
        |a| if a.op == Op::Backward { f64::NAN } else { 1.0 },
        &P2p::free(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, ScheduleError::BadCost { what: "duration", action, .. } if action == "1B0"),
        "{e:?}"
    );
    let e = simulate(&s, |_| -1.0, &P2p::free()).unwrap_err();
    assert!(e.to_string().contains("finite and non-negative"));
    let e = simulate(
        &s,
        |_| 1.0,
        &P2p::new(0.0, 0.0, MessageBytes::Constant(1.0)),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        ScheduleError::BadP2p {
            what: "bandwidth",
            ..
        }
    ));
    let e = simulate(
        &s,
        |_| 1.0,
        &P2p::new(-1.0, 1.0, MessageBytes::Constant(1.0)),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        ScheduleError::BadP2p {
            what: "latency",
            ..
        }
    ));
    let e = simulate(
        &s,
        |_| 1.0,
        &P2p::new(0.0, 1.0, MessageBytes::Constant(-5.0)),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        ScheduleError::BadCost {
            what: "message bytes",
            ..
        }
    ));
}

#[test]
fn duplicate_send_is_an_error() {
    let mut s = one_f_one_b(2, 1);
    let send = s.actions[0][1];
    assert_eq!(send.op, Op::SendAct);
    s.actions[0].insert(2, send);
    let e = simulate(&s, |_| 1.0, &P2p::free()).unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::Unmatched {
                stage: 0,
                position: 2,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn in_flight_curve_of_stage0_1f1b() {
    let s = one_f_one_b(2, 3);
    let costs = UnitCosts::new(1.0, 2.0);
    let sim = simulate(&s, |a| costs.cost(a), &P2p::free()).unwrap();
    // Stage 0 holds two micro-batches at most (warm-up 1 + 1); the curve starts with F0 at 0 and
    // ends empty, with strictly increasing times.
    let curve = &sim.stages[0].in_flight;
    assert_eq!(curve.first(), Some(&(0.0, 1)));
    assert_eq!(sim.stages[0].max_in_flight, 2);
    assert_eq!(curve.last().map(|p| p.1), Some(0));
    assert!(curve.windows(2).all(|w| w[0].0 < w[1].0), "{curve:?}");
    // Last stage never holds more than one.
    assert_eq!(sim.stages[1].max_in_flight, 1);
}

#[test]
fn timeline_lists_every_action_with_ordered_times() {
    let s = lower(
        &generate(
            &ScheduleConfig::new(ScheduleKind::SlimPipe, 3, 2)
                .with_slices(3)
                .with_chunks(2),
        )
        .unwrap(),
    )
    .unwrap();
    let sim = simulate(
        &s,
        |a| {
            if a.op.is_compute() {
                1.0 + f64::from(a.slice.0)
            } else {
                0.0
            }
        },
        &P2p::free(),
    )
    .unwrap();
    for (r, list) in sim.timeline.iter().enumerate() {
        assert_eq!(list.len(), s.actions[r].len());
        for (t, a) in list.iter().zip(&s.actions[r]) {
            assert_eq!(t.action, *a);
            assert!(t.start <= t.end);
        }
        assert!(list.windows(2).all(|w| w[0].end <= w[1].start));
    }
}

#[test]
fn core_use_is_one_minus_bubble_with_a_core_per_stage_and_stretches_with_fewer() {
    let s = one_f_one_b(4, 8);
    let costs = UnitCosts::new(1.0, 2.0);
    let sim = simulate(&s, |a| costs.cost(a), &P2p::free()).unwrap();
    assert!((sim.core_use(4) - (1.0 - sim.bubble_ratio)).abs() < 1e-12);
    // One core: some stage always computes, so the core never idles.
    assert!((sim.core_use(1) - 1.0).abs() < 1e-12, "{}", sim.core_use(1));
    // Two cores: between the two, and above the four-core figure.
    let two = sim.core_use(2);
    assert!(two > sim.core_use(4) && two < 1.0, "{two}");
    // p = 2, m = 1 on one core: work 6 (F 1 + 1, B 2 + 2) done back to back.
    let lone = one_f_one_b(2, 1);
    let sim = simulate(&lone, |a| costs.cost(a), &P2p::free()).unwrap();
    assert!((sim.core_use(1) - 1.0).abs() < 1e-12);
    assert!((sim.core_use(2) - 0.5).abs() < 1e-12);
}
