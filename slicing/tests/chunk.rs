//! Invariants of the elastic chunker (SPEC §2.3) and of the length distributions.

use proptest::prelude::*;
use seqpipe_slicing::*;

fn fitted() -> CostModel {
    // Attention-heavy at long context, linear-heavy at short: both terms matter.
    CostModel::fitted(1e-9, 1e-4, 1e-3).unwrap()
}

/// Every token of every sequence in exactly one piece, pieces in range.
fn assert_exact_cover(lengths: &[u64], c: &Chunking) {
    let mut pieces: Vec<Vec<(u64, u64)>> = vec![Vec::new(); lengths.len()];
    for chunk in &c.chunks {
        for p in &chunk.pieces {
            assert!(p.end > p.start, "empty piece {p:?}");
            pieces[p.seq].push((p.start, p.end));
        }
    }
    for (seq, list) in pieces.iter_mut().enumerate() {
        list.sort_unstable();
        let mut at = 0;
        for &(s, e) in list.iter() {
            assert_eq!(s, at, "sequence {seq}: gap or overlap at token {at}");
            at = e;
        }
        assert_eq!(at, lengths[seq], "sequence {seq} not fully covered");
    }
}

/// A tail slice: the final piece of a sequence that was split (it does not start at 0).
fn tails_in(lengths: &[u64], chunk: &Chunk) -> usize {
    chunk
        .pieces
        .iter()
        .filter(|p| p.start > 0 && p.end == lengths[p.seq])
        .count()
}

fn batch() -> impl Strategy<Value = (Vec<u64>, usize, u64)> {
    (
        prop::collection::vec(1u64..=40_000, 1..40),
        1usize..=8,
        0u64..20_000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn chunking_covers_and_respects_budgets((lengths, k, slack) in batch()) {
        let cost = fitted();
        let longest = *lengths.iter().max().unwrap();
        let k = k.min(longest as usize);
        let first = balanced(longest, k, 1, &cost).unwrap().lengths()[0];
        let c = chunk(&lengths, &cost, k, first + slack).unwrap();
        assert_exact_cover(&lengths, &c);
        prop_assert!(c.time_budget >= c.initial_time_budget);
        prop_assert_eq!(c.relaxations == 0, c.time_budget == c.initial_time_budget);
        let tol = 1e-9 * c.time_budget;
        for (i, ch) in c.chunks.iter().enumerate() {
            prop_assert!(ch.tokens() <= c.token_budget, "chunk {} over T_m", i);
            prop_assert!(ch.time <= c.time_budget + tol, "chunk {} time {} > {}", i, ch.time, c.time_budget);
            prop_assert!(tails_in(&lengths, ch) <= 1, "chunk {} holds two tails", i);
            let first_piece = ch.pieces[0];
            match ch.kind {
                ChunkKind::Batched => prop_assert!(ch.pieces.iter().all(|p| p.start == 0 && p.end == lengths[p.seq])),
                ChunkKind::Split => {
                    prop_assert_eq!(ch.pieces.len(), 1);
                    prop_assert!(first_piece.end < lengths[first_piece.seq]);
                }
                ChunkKind::Hybrid => prop_assert!(first_piece.start > 0 && first_piece.end == lengths[first_piece.seq]),
            }
            prop_assert_eq!(ch.context, if ch.kind == ChunkKind::Batched { 0 } else { first_piece.start });
        }
        // Groups: each long sequence's chunks in slice order, the hybrid last; all chunks once.
        let mut seen = vec![false; c.chunks.len()];
        for g in c.groups() {
            for w in g.windows(2) {
                let (a, b) = (&c.chunks[w[0]].pieces[0], &c.chunks[w[1]].pieces[0]);
                prop_assert_eq!(a.seq, b.seq);
                prop_assert_eq!(a.end, b.start);
            }
            for i in g {
                prop_assert!(!seen[i]);
                seen[i] = true;
            }
        }
        prop_assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn split_chunks_cost_the_budget((lengths, k, _slack) in batch()) {
        // Split chunks lie on the mesh of the longest sequence: each costs what its mesh slice costs.
        let cost = fitted();
        let longest = *lengths.iter().max().unwrap();
        let k = k.min(longest as usize);
        let c = chunk(&lengths, &cost, k, longest).unwrap();
        for ch in c.chunks.iter().filter(|ch| ch.kind == ChunkKind::Split) {
            let p = ch.pieces[0];
            let j = c.mesh.iter().position(|&b| b == p.start).unwrap();
            prop_assert_eq!(c.mesh[j + 1], p.end);
        }
    }
}

#[test]
fn relaxation_fires_and_is_reported() {
    // One long sequence in 2 slices leaves one tail bucket; 20 short sequences that fit the
    // token budget together but not the time budget force T_t up instead of a new bucket.
    let cost = CostModel::fitted(0.0, 1.0, 0.0).unwrap(); // time = tokens
    let mut lengths = vec![1000u64];
    lengths.extend(std::iter::repeat_n(20, 20));
    let c = chunk(&lengths, &cost, 2, 1000).unwrap();
    assert_eq!(c.initial_time_budget, 500.0);
    assert_eq!(c.mesh, vec![0, 500, 1000]);
    // Tail = 500 tokens; shorts fit its token room (900 ≥ 500 + 400) but not the time budget.
    assert!(c.relaxations > 0);
    assert_eq!(c.time_budget, 900.0);
    assert_eq!(c.chunks.len(), 2);
    assert_eq!(c.chunks[1].kind, ChunkKind::Hybrid);
    assert_eq!(c.chunks[1].pieces.len(), 21);
}

#[test]
fn full_buckets_open_batched_chunks() {
    let cost = CostModel::fitted(0.0, 1.0, 0.0).unwrap();
    // T_m = one sequence: every sequence opens its own batched chunk, no relaxation.
    let c = chunk(&[300, 300, 300, 300], &cost, 1, 300).unwrap();
    assert_eq!(c.relaxations, 0);
    assert_eq!(c.chunks.len(), 4);
    assert!(c.chunks.iter().all(|ch| ch.kind == ChunkKind::Batched));
    // T_m = two sequences: the second relaxes T_t to 600 (token room left), the third finds
    // every bucket token-full and opens a new one.
    let c = chunk(&[300, 300, 300, 300], &cost, 1, 600).unwrap();
    assert_eq!(
        (c.relaxations, c.time_budget, c.chunks.len()),
        (1, 600.0, 2)
    );
}

#[test]
fn token_budget_below_a_slice_is_an_error() {
    let err = chunk(&[10_000, 50], &fitted(), 2, 100).unwrap_err();
    assert!(
        matches!(err, SlicingError::TokenBudgetTooSmall { budget: 100, .. }),
        "{err}"
    );
    assert!(chunk(&[], &fitted(), 2, 100).is_err());
    assert!(chunk(&[0, 5], &fitted(), 1, 100).is_err());
}

#[test]
fn distributions_parse_sample_and_truncate() {
    let d: LengthDist = "dist:lognormal:mu=8,sigma=1.5".parse().unwrap();
    assert_eq!(
        d,
        LengthDist::LogNormal {
            mu: 8.0,
            sigma: 1.5
        }
    );
    let a = d.sample(500, 8192, 7).unwrap();
    assert_eq!(
        a,
        d.sample(500, 8192, 7).unwrap(),
        "seeded sampling must repeat"
    );
    assert!(a.iter().all(|&l| (1..=8192).contains(&l)));
    // Rejection, not clamping: the cap is not a point mass.
    assert!(a.iter().filter(|&&l| l == 8192).count() < 5);
    let p: LengthDist = "powerlaw:alpha=1.1,min=256".parse().unwrap();
    let b = p.sample(500, 32768, 1).unwrap();
    assert!(b.iter().all(|&l| (256..=32768).contains(&l)));
    let median = {
        let mut s = b.clone();
        s.sort_unstable();
        s[250]
    };
    // Pareto median = min · 2^(1/alpha) ≈ 479 before truncation; truncation lowers it slightly.
    assert!((400..=520).contains(&median), "median {median}");
    for bad in [
        "lognormal:mu=8",
        "lognormal:mu=8,sigma=0",
        "gamma:k=1",
        "powerlaw:alpha=1,min=1,x=2",
    ] {
        assert!(bad.parse::<LengthDist>().is_err(), "{bad}");
    }
    let hopeless = LengthDist::PowerLaw {
        alpha: 1.0,
        min: 1e6,
    };
    assert!(hopeless.sample(3, 1000, 0).is_err());
}

#[test]
fn lengths_parse_from_lines_and_jsonl() {
    assert_eq!(
        parse_lengths("4096\n\n# c\n 17 \n", None).unwrap(),
        vec![4096, 17]
    );
    let jsonl = "{\"len\": 12, \"x\": 1}\n{\"len\": \"abc\"}\n{\"len\": [1,2]}\n";
    assert_eq!(parse_lengths(jsonl, Some("len")).unwrap(), vec![12, 3, 2]);
    let err = parse_lengths("5\nx\n", None).unwrap_err();
    assert!(
        matches!(err, SlicingError::BadLengthLine { line: 2, .. }),
        "{err}"
    );
    assert!(parse_lengths("{\"n\": 1}", Some("len")).is_err());
    assert!(parse_lengths("0", None).is_err());
    assert!(parse_lengths("", None).is_err());
}
