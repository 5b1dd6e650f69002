//! proptest invariants of the slicers over presets, lengths, slice counts and multiples.

use proptest::prelude::*;
use seqpipe_slicing::*;

fn any_preset() -> impl Strategy<Value = ModelShape> {
    (0..PRESETS.len()).prop_map(|i| PRESETS[i].shape)
}

/// Exact cover of `[0, padded_len)`, in order, no slice empty.
fn assert_covers(plan: &SlicePlan) {
    let mut expected_start = 0;
    for (i, s) in plan.slices.iter().enumerate() {
        assert_eq!(s.index, i);
        assert_eq!(
            s.start,
            expected_start,
            "slice {i} does not start where slice {} ended",
            i.max(1) - 1
        );
        assert!(s.end > s.start, "slice {i} is empty");
        expected_start = s.end;
    }
    assert_eq!(expected_start, plan.padded_len);
    assert!(plan.padded_len >= plan.seq_len);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn balanced_slices_cover_and_balance(
        shape in any_preset(),
        n in 1usize..=64,
        q_pow in 0u32..=7,
        units in 4u64..=2048,
        extra in 0u64..128,
    ) {
        let q = 1u64 << q_pow;
        let seq_len = units * n as u64 * q + extra;
        let cost = CostModel::flops(&shape).unwrap();
        let plan = balanced(seq_len, n, q, &cost).unwrap();
        prop_assert_eq!(plan.len(), n);
        prop_assert_eq!(plan.padded_len, seq_len);
        assert_covers(&plan);
        for s in &plan.slices[1..] {
            prop_assert_eq!(s.len() % q, 0, "slice {} has length {} (q = {})", s.index, s.len(), q);
        }
        // Stated tolerance: rounding each later slice down by less than q tokens costs it at most
        // the price of q tokens at the sequence end; the first slice absorbs all n-1 shortfalls.
        let target = cost.sequence(seq_len) / n as f64;
        let q_tokens = cost.forward(seq_len - q, seq_len);
        for s in &plan.slices {
            let allowed = if s.index == 0 { (n as f64 - 1.0) * q_tokens } else { q_tokens };
            prop_assert!((s.cost - target).abs() <= allowed * (1.0 + 1e-9) + 1e-6 * target,
                "slice {} cost {} vs target {} (allowed {})", s.index, s.cost, target, allowed);
        }
        // Later slices are never longer than earlier ones' tail: attention grows along the sequence.
        for w in plan.slices[1..].windows(2) {
            prop_assert!(w[1].len() <= w[0].len() + q);
        }
    }

    #[test]
    fn uniform_unpadded_differs_by_at_most_one_unit(
        shape in any_preset(),
        n in 1usize..=64,
        q_pow in 0u32..=7,
        seq_len in 1u64..=1_000_000,
    ) {
        let q = 1u64 << q_pow;
        prop_assume!(seq_len / q >= n as u64);
        let cost = CostModel::flops(&shape).unwrap();
        let plan = uniform(seq_len, n, q, Padding::None, &cost).unwrap();
        prop_assert_eq!(plan.len(), n);
        assert_covers(&plan);
        prop_assert_eq!(plan.padding(), 0);
        let leftover = seq_len % q;
        let units: Vec<u64> = plan.slices.iter().map(|s| s.len() - if s.index == 0 { leftover } else { 0 }).collect();
        for u in &units {
            prop_assert_eq!(u % q, 0);
        }
        let (max, min) = (units.iter().max().unwrap(), units.iter().min().unwrap());
        prop_assert!(max - min <= q, "unit lengths {:?}", units);
    }

    #[test]
    fn uniform_padded_slices_are_equal(
        n in 1usize..=64,
        q_pow in 0u32..=8,
        seq_len in 1u64..=1_000_000,
    ) {
        let q = 1u64 << q_pow;
        let cost = CostModel::fitted(1e-9, 1e-6, 1e-4).unwrap();
        match uniform(seq_len, n, q, Padding::ToMultiple, &cost) {
            Ok(plan) => {
                assert_covers(&plan);
                let len = plan.slices[0].len();
                prop_assert!(plan.slices.iter().all(|s| s.len() == len));
                prop_assert_eq!(len % q, 0);
                prop_assert!(plan.padding() < len, "a whole slice of padding");
                prop_assert!(len >= seq_len.div_ceil(n as u64));
            }
            Err(SlicingError::PaddingOnlySlice { largest_valid, .. }) => {
                if largest_valid > 0 {
                    prop_assert!(uniform(seq_len, n, largest_valid, Padding::ToMultiple, &cost).is_ok());
                }
            }
            Err(e) => prop_assert!(n as u64 > seq_len, "unexpected error {e}"),
        }
    }

    #[test]
    fn fitted_costs_balance_too(
        a1 in 1e-12f64..1e-8, a2 in 1e-8f64..1e-5, beta in 0.0f64..1e-3,
        n in 1usize..=16, seq_len in 1024u64..=200_000,
    ) {
        let cost = CostModel::fitted(a1, a2, beta).unwrap();
        let plan = balanced(seq_len, n, 1, &cost).unwrap();
        assert_covers(&plan);
        let target = plan.total_cost() / n as f64;
        let one_token = cost.forward(seq_len - 1, seq_len) - cost.per_slice;
        for s in &plan.slices {
            prop_assert!((s.cost - target).abs() <= n as f64 * one_token + 1e-9 * target);
        }
    }
}
