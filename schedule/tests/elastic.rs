//! Elastic pipelines: validity, simulation, Seq1F1B equivalence and the grouping DP.

use proptest::prelude::*;
use seqpipe_schedule::*;

/// Every split of `0..n` into consecutive groups (as group end points).
fn all_splits(n: usize) -> Vec<Vec<std::ops::Range<usize>>> {
    (0u32..1 << (n - 1))
        .map(|mask| {
            let mut groups = Vec::new();
            let mut start = 0;
            for i in 1..n {
                if mask & (1 << (i - 1)) != 0 {
                    groups.push(start..i);
                    start = i;
                }
            }
            groups.push(start..n);
            groups
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn elastic_validates_and_simulates(
        p in 1u32..=6,
        counts in prop::collection::vec(1u32..=5, 1..10),
        costs in prop::collection::vec(0.5f64..3.0, 50),
    ) {
        let e = elastic(p, &counts).unwrap();
        prop_assert!(e.slice_counts.windows(2).all(|w| w[0] >= w[1]), "not longest first");
        let mut sorted = e.order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..counts.len()).collect::<Vec<_>>());
        let v = e.validate();
        prop_assert!(v.is_empty(), "{}", validate::render_violations(&e.schedule, &v));
        let lowered = e.lowered().unwrap();
        let v = lowered.validate();
        prop_assert!(v.is_empty(), "lowered: {:?}", v);
        // Per-(mb, slice) costs, heterogeneous like real chunks.
        let forward: Vec<Vec<f64>> = e.slice_counts.iter().enumerate()
            .map(|(mb, &n)| (0..n as usize).map(|s| costs[(mb * 5 + s) % costs.len()]).collect())
            .collect();
        let table = CostTable { bytes: forward.clone(), forward, backward_factor: 2.0, weight_share: 0.5 };
        let sim = simulate(&e.schedule, |a| table.cost(a), &P2p::free()).unwrap();
        let work: f64 = table.forward.iter().flatten().sum::<f64>() * 3.0;
        // Stage 0 does all its work and waits for the rest; the makespan is at least its work.
        prop_assert!(sim.makespan >= work - 1e-9);
        let widest = e.slice_counts[0];
        for (r, &peak) in e.schedule.max_in_flight().iter().enumerate() {
            prop_assert!(peak <= p - r as u32 - 1 + widest, "stage {} holds {} units", r, peak);
        }
    }

    #[test]
    fn uniform_counts_are_seq1f1b(p in 1u32..=6, m in 1u32..=8, n in 1u32..=4) {
        let e = elastic(p, &vec![n; m as usize]).unwrap();
        let s = seq1f1b(p, m, n).unwrap();
        prop_assert_eq!(&e.schedule.actions, &s.actions);
    }

    #[test]
    fn grouping_dp_is_optimal(
        weights in prop::collection::vec(0.1f64..5.0, 1..9),
        delta in 0.0f64..4.0,
        cap in 1.0f64..15.0,
    ) {
        // Cost: fill δ plus the square of the group's work; infeasible above a cap.
        let cost = |r: std::ops::Range<usize>| {
            let w: f64 = weights[r].iter().sum();
            (w <= cap).then_some(delta + w * w)
        };
        let brute = all_splits(weights.len())
            .into_iter()
            .filter_map(|g| g.iter().map(|r| cost(r.clone())).sum::<Option<f64>>())
            .fold(f64::INFINITY, f64::min);
        match group_pipelines(weights.len(), None, cost) {
            Ok(g) => {
                prop_assert!((g.cost - brute).abs() <= 1e-9 * brute.max(1.0));
                prop_assert_eq!(g.groups.first().unwrap().start, 0);
                prop_assert_eq!(g.groups.last().unwrap().end, weights.len());
                prop_assert!(g.groups.windows(2).all(|w| w[0].end == w[1].start));
                let recomputed: f64 = g.groups.iter().map(|r| cost(r.clone()).unwrap()).sum();
                prop_assert!((recomputed - g.cost).abs() <= 1e-9 * g.cost.max(1.0));
            }
            Err(ScheduleError::NoFeasibleGrouping { item }) => {
                prop_assert!(brute.is_infinite());
                prop_assert!(weights[item] > cap || item > 0);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    /// A lower bound of the cost prices fewer groups and finds the same split.
    #[test]
    fn a_lower_bound_prices_fewer_groups_and_changes_nothing(
        weights in prop::collection::vec(0.1f64..5.0, 1..12),
        delta in 0.0f64..4.0,
        cap in 1.0f64..25.0,
        widest in 1usize..6,
    ) {
        let calls = std::cell::Cell::new(0);
        let cost = |r: std::ops::Range<usize>| {
            calls.set(calls.get() + 1);
            let w: f64 = weights[r].iter().sum();
            (w <= cap).then_some(delta + w * w)
        };
        let plain = group_pipelines(weights.len(), Some(widest), cost);
        let unbounded = calls.replace(0);
        let bound = |r: std::ops::Range<usize>| weights[r].iter().sum::<f64>().powi(2);
        let bounded = group_pipelines_bounded(weights.len(), Some(widest), cost, bound);
        prop_assert!(calls.get() <= unbounded);
        match (plain, bounded) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.groups, b.groups);
                prop_assert_eq!(a.cost.to_bits(), b.cost.to_bits());
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

#[test]
fn elastic_sorts_longest_first_and_rejects_bad_input() {
    let e = elastic(4, &[1, 3, 2, 3]).unwrap();
    assert_eq!(e.slice_counts, vec![3, 3, 2, 1]);
    assert_eq!(e.order, vec![1, 3, 2, 0]);
    assert!(elastic(0, &[1]).is_err());
    assert!(elastic(2, &[]).is_err());
    assert!(elastic(2, &[2, 0]).is_err());
}

#[test]
fn ragged_validation_catches_a_missing_slice() {
    let e = elastic(2, &[3, 1]).unwrap();
    // Claiming micro-batch 1 has 2 slices: its slice 1 is never run.
    let v = validate_ragged(&e.schedule, &[3, 2]);
    assert!(v.iter().any(|v| v.rule == Rule::MissingForward), "{v:?}");
    // A count above the configuration's n, or the wrong number of counts, is reported.
    assert!(!validate_ragged(&e.schedule, &[4, 1]).is_empty());
    assert!(!validate_ragged(&e.schedule, &[3]).is_empty());
    // The schedule carries its counts, so plain validation, lowering and a JSON round trip
    // keep them; stripped of them, n = 3 everywhere flags micro-batch 1's absent slices.
    assert_eq!(e.schedule.slice_counts.as_deref(), Some(&[3, 1][..]));
    assert!(validate(&e.schedule).is_empty());
    assert!(e.validate().is_empty());
    let lowered = seqpipe_schedule::Lowered::check(lower(&e.schedule).unwrap()).unwrap();
    assert_eq!(lowered.slice_counts(), vec![3, 1]);
    let json = serde_json::to_string(&*lowered).unwrap();
    let back: seqpipe_schedule::Schedule = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, &*lowered);
    let mut stripped = e.schedule.clone();
    stripped.slice_counts = None;
    assert!(!validate(&stripped).is_empty());
}
