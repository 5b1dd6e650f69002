//! Sliced attention equivalence (SPEC §4): forward slice by slice against the KV prefix, backward
//! in reverse slice order with prefix-gradient accumulation, equals full-sequence causal attention
//! (f64 to ~1e-12, f32 to ~1e-5 relative), over random splits, GQA ratios and block sizes; and
//! so does the walk with SlimPipe's exchange (a slice's oldest cached tokens attended by a
//! partner with no mask, merged by log-sum-exp; their gradients from the partner's backward with
//! the merged `out`, `lse`).

mod common;

use candle_core::{DType, Tensor};
use common::*;
use proptest::prelude::*;
use seqpipe_kernels::*;

struct Case {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    d_out: Tensor,
}

fn case(seed: u64, b: usize, hkv: usize, group: usize, s: usize, d: usize, dtype: DType) -> Case {
    let mut rng = SeedRng::new(seed);
    let h = hkv * group;
    let mut t = |shape: &[usize]| rng.tensor(shape, 1.5).to_dtype(dtype).unwrap();
    Case {
        q: t(&[b, h, s, d]),
        k: t(&[b, hkv, s, d]),
        v: t(&[b, hkv, s, d]),
        d_out: t(&[b, h, s, d]),
    }
}

/// The first `head` cached tokens a slice starting at `start` hands to an exchange partner
/// (SlimPipe), or none: here about half its prefix on every other slice.
fn exchanged_head(exchange: bool, j: usize, start: usize) -> Option<usize> {
    (exchange && start > 0 && j % 2 == 1).then(|| start.div_ceil(2))
}

/// A slice's forward with the cached tokens `0..head` attended by the "partner" (no mask) and
/// merged with the rest.
fn attend_exchanged(
    cache: &SliceKvCache,
    [q, k, v]: [&Tensor; 3],
    opts: &AttentionOptions,
    head: usize,
) -> (Tensor, Tensor) {
    let (k_head, v_head) = cache.head(head).unwrap();
    let unmasked = AttentionOptions {
        mask: Mask::None,
        ..*opts
    };
    let (o1, l1) = cache.attend_tail(q, k, v, opts, head).unwrap();
    let (o2, l2) = attention_forward(q, &k_head, &v_head, &unmasked).unwrap();
    merge_attention(&o1, &l1, &o2, &l2).unwrap()
}

/// Runs the slice walk over `lengths` (summing to the sequence length); returns the concatenated
/// out, lse, dq, dk, dv.
fn walk(c: &Case, lengths: &[usize], opts: &AttentionOptions) -> [Tensor; 5] {
    walk_with(c, lengths, opts, false)
}

/// [`walk`], with SlimPipe's exchange on every other slice when `exchange`.
fn walk_with(c: &Case, lengths: &[usize], opts: &AttentionOptions, exchange: bool) -> [Tensor; 5] {
    let mut cache = SliceKvCache::new();
    let mut starts = Vec::new();
    let mut fwd = Vec::new();
    let mut start = 0;
    for &len in lengths {
        assert_eq!(cache.cached_tokens(), start);
        let q = c.q.narrow(2, start, len).unwrap();
        let k = c.k.narrow(2, start, len).unwrap();
        let v = c.v.narrow(2, start, len).unwrap();
        // Odd slices take the two-step path (attend, which must leave the cache alone, then
        // append); both must walk to full attention's results.
        if let Some(head) = exchanged_head(exchange, starts.len(), start) {
            fwd.push(attend_exchanged(&cache, [&q, &k, &v], opts, head));
            cache.append(&k, &v).unwrap();
        } else if starts.len() % 2 == 1 {
            fwd.push(cache.attend(&q, &k, &v, opts).unwrap());
            assert_eq!(cache.cached_tokens(), start, "attend changed the cache");
            cache.append(&k, &v).unwrap();
        } else {
            fwd.push(cache.forward(&q, &k, &v, opts).unwrap());
        }
        starts.push(start);
        start += len;
    }
    let mut grads = Vec::new();
    for (j, &len) in lengths.iter().enumerate().rev() {
        let q = c.q.narrow(2, starts[j], len).unwrap();
        let d_out = c.d_out.narrow(2, starts[j], len).unwrap();
        // Even slices are recomputed mid-walk (a checkpointed slice): attending to the prefix
        // before it with its own K/V must give its forward's results bit for bit.
        let (out, lse) = if j % 2 == 0 {
            assert_eq!(cache.last_slice_tokens(), len);
            let k = c.k.narrow(2, starts[j], len).unwrap();
            let v = c.v.narrow(2, starts[j], len).unwrap();
            let again = cache
                .without_last()
                .unwrap()
                .attend(&q, &k, &v, opts)
                .unwrap();
            for (a, b) in [(&again.0, &fwd[j].0), (&again.1, &fwd[j].1)] {
                assert_eq!(rel_err(a, b), 0.0, "recomputed slice {j} differs");
            }
            again
        } else {
            fwd[j].clone()
        };
        let unmasked = AttentionOptions {
            mask: Mask::None,
            ..*opts
        };
        let partner = |k: &Tensor, v: &Tensor| {
            attention_backward_unrounded(&q, k, v, &out, &lse, &d_out, &unmasked)
        };
        let step = match exchanged_head(exchange, j, starts[j]) {
            Some(head) => cache.backward_split(&q, &out, &lse, &d_out, opts, head, partner),
            None => cache.backward(&q, &out, &lse, &d_out, opts),
        };
        grads.push(step.unwrap());
        assert_eq!(cache.pending_grad_tokens(), starts[j]);
    }
    assert_eq!(cache.slices(), 0);
    grads.reverse();
    let cat = |ts: Vec<&Tensor>, dim| Tensor::cat(&ts, dim).unwrap();
    [
        cat(fwd.iter().map(|f| &f.0).collect(), 2),
        cat(fwd.iter().map(|f| &f.1).collect(), 2),
        cat(grads.iter().map(|g| &g.0).collect(), 2),
        cat(grads.iter().map(|g| &g.1).collect(), 2),
        cat(grads.iter().map(|g| &g.2).collect(), 2),
    ]
}

fn full(c: &Case, opts: &AttentionOptions) -> [Tensor; 5] {
    let (out, lse) = attention_forward(&c.q, &c.k, &c.v, opts).unwrap();
    let (dq, dk, dv) = attention_backward(&c.q, &c.k, &c.v, &out, &lse, &c.d_out, opts).unwrap();
    [out, lse, dq, dk, dv]
}

fn assert_equivalent(c: &Case, lengths: &[usize], block: usize, tol: f64) {
    let d = c.q.dims()[3];
    let opts = AttentionOptions {
        block_size: block,
        ..AttentionOptions::causal(d)
    };
    let whole = full(c, &opts);
    for exchange in [false, true] {
        let sliced = walk_with(c, lengths, &opts, exchange);
        for (name, (a, b)) in ["out", "lse", "dq", "dk", "dv"]
            .iter()
            .zip(sliced.iter().zip(&whole))
        {
            let e = rel_err(a, b);
            assert!(e <= tol, "{name}: sliced (exchange {exchange}) vs full relative error {e:.3e} > {tol:.0e} (slices {lengths:?}, block {block})");
        }
    }
}

#[test]
fn four_uneven_slices_f64() {
    let c = case(21, 2, 2, 3, 23, 8, DType::F64);
    assert_equivalent(&c, &[9, 6, 5, 3], 4, 1e-12);
}

#[test]
fn four_uneven_slices_f32() {
    let c = case(22, 1, 2, 2, 37, 16, DType::F32);
    assert_equivalent(&c, &[5, 13, 11, 8], 8, 1e-5);
}

#[test]
fn full_attention_matches_the_composite_oracle_too() {
    // Ties the walk to an independent reference, not just to our own full-sequence call.
    let c = case(23, 1, 1, 2, 10, 4, DType::F64);
    let opts = AttentionOptions {
        block_size: 3,
        ..AttentionOptions::causal(4)
    };
    let [out, ..] = walk(&c, &[4, 1, 5], &opts);
    assert_close(
        "out",
        &out,
        &attention_composite(&c.q, &c.k, &c.v, opts.scale, true),
        1e-12,
    );
}

/// A random split of `s` tokens into 1..=max_slices non-empty slices.
fn split(s: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| 1 + c % (s - 1).max(1))
        .filter(|&p| p < s)
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut lengths = Vec::new();
    let mut prev = 0;
    for p in points.into_iter().chain(std::iter::once(s)) {
        lengths.push(p - prev);
        prev = p;
    }
    lengths
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_splits_match_full_attention(
        seed in any::<u64>(),
        b in 1usize..=2,
        hkv in 1usize..=2,
        group in 1usize..=3,
        s in 2usize..=24,
        d in prop::sample::select(vec![2usize, 4, 8]),
        block in 1usize..=9,
        cuts in prop::collection::vec(any::<usize>(), 0..5),
        f32_case in any::<bool>(),
    ) {
        let (dtype, tol) = if f32_case { (DType::F32, 1e-5) } else { (DType::F64, 1e-12) };
        let c = case(seed, b, hkv, group, s, d, dtype);
        assert_equivalent(&c, &split(s, &cuts), block, tol);
    }
}
