//! Packed documents: attention and RoPE over rows of several documents equal running every
//! document as its own sequence (f64 to ~1e-12), unsliced and along the slice walk, over random
//! document layouts, slicings, GQA ratios and block sizes; bad layouts are errors.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use proptest::prelude::*;
use seqpipe_kernels::*;

const TOL: f64 = 1e-12;

/// Random document starts of `rows` rows of `len` tokens, from `cuts` (sorted, deduplicated).
fn layout(rows: usize, len: usize, cuts: &[Vec<usize>]) -> Documents {
    let starts = (0..rows)
        .map(|r| {
            let mut s: Vec<usize> = std::iter::once(0)
                .chain(cuts[r].iter().map(|c| c % len))
                .collect();
            s.sort_unstable();
            s.dedup();
            s
        })
        .collect();
    Documents::new(starts, len).unwrap()
}

/// The documents of `row` as `(start, end)` token ranges.
fn spans(docs: &Documents, row: usize) -> Vec<(usize, usize)> {
    docs.pieces(row, 0..docs.len())
        .iter()
        .map(|p| (p.start, p.end))
        .collect()
}

fn doc(t: &Tensor, row: usize, (a, e): (usize, usize)) -> Tensor {
    t.narrow(0, row, 1).unwrap().narrow(2, a, e - a).unwrap()
}

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    d_out: Tensor,
}

fn inputs(seed: u64, b: usize, hkv: usize, group: usize, s: usize) -> Inputs {
    let mut rng = SeedRng::new(seed);
    let mut t = |heads: usize| rng.tensor(&[b, heads, s, 4], 1.5);
    Inputs {
        q: t(hkv * group),
        k: t(hkv),
        v: t(hkv),
        d_out: t(hkv * group),
    }
}

fn options(block: usize) -> AttentionOptions {
    AttentionOptions {
        block_size: block,
        ..AttentionOptions::causal(4)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn packed_attention_is_each_document_alone(
        seed in 0u64..1000,
        b in 1usize..3,
        hkv in 1usize..3,
        group in 1usize..3,
        len in 1usize..40,
        cuts in proptest::collection::vec(proptest::collection::vec(0usize..64, 0..6), 2),
        block in prop_oneof![Just(2usize), Just(5), Just(128)],
    ) {
        let docs = layout(b, len, &cuts);
        let x = inputs(seed, b, hkv, group, len);
        let opts = options(block);
        let (out, lse) = attention_forward_documents(&x.q, &x.k, &x.v, &opts, &docs).unwrap();
        let (dq, dk, dv) =
            attention_backward_documents(&x.q, &x.k, &x.v, &out, &lse, &x.d_out, &opts, &docs)
                .unwrap();
        for row in 0..b {
            for span in spans(&docs, row) {
                let at = |t: &Tensor| doc(t, row, span);
                let (o1, l1) = attention_forward(&at(&x.q), &at(&x.k), &at(&x.v), &opts).unwrap();
                assert_close("out", &at(&out), &o1, TOL);
                assert_close("lse", &at(&lse), &l1, TOL);
                let (dq1, dk1, dv1) = attention_backward(
                    &at(&x.q), &at(&x.k), &at(&x.v), &o1, &l1, &at(&x.d_out), &opts,
                )
                .unwrap();
                assert_close("dq", &at(&dq), &dq1, TOL);
                assert_close("dk", &at(&dk), &dk1, TOL);
                assert_close("dv", &at(&dv), &dv1, TOL);
            }
        }
    }

    #[test]
    fn the_slice_walk_over_documents_equals_the_whole_rows(
        seed in 0u64..1000,
        b in 1usize..3,
        group in 1usize..3,
        len in 2usize..40,
        cuts in proptest::collection::vec(proptest::collection::vec(0usize..64, 0..6), 2),
        slice_cuts in proptest::collection::vec(1usize..40, 0..4),
        block in prop_oneof![Just(3usize), Just(128)],
    ) {
        let docs = layout(b, len, &cuts);
        let x = inputs(seed, b, 1, group, len);
        let opts = options(block);
        let (out, lse) = attention_forward_documents(&x.q, &x.k, &x.v, &opts, &docs).unwrap();
        let (dq, dk, dv) =
            attention_backward_documents(&x.q, &x.k, &x.v, &out, &lse, &x.d_out, &opts, &docs)
                .unwrap();
        let mut bounds: Vec<usize> = slice_cuts.iter().map(|c| c % len).filter(|&c| c > 0).collect();
        bounds.extend([0, len]);
        bounds.sort_unstable();
        bounds.dedup();
        let slices: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
        let mut cache = SliceKvCache::new();
        let mut saved = Vec::new();
        for &(start, n) in &slices {
            let at = |t: &Tensor| t.narrow(2, start, n).unwrap();
            let (o, l) = cache.attend_documents(&at(&x.q), &at(&x.k), &at(&x.v), &opts, &docs).unwrap();
            assert_close("sliced out", &o, &at(&out), TOL);
            assert_close("sliced lse", &l, &at(&lse), TOL);
            cache.append(&at(&x.k), &at(&x.v)).unwrap();
            saved.push((o, l));
        }
        // Compared whole: a slice's own gradient can be all but zero (the first token's dq is
        // exactly 0 in exact arithmetic), so a per-slice relative error would measure noise.
        let mut grads = (Vec::new(), Vec::new(), Vec::new());
        for (&(start, n), (o, l)) in slices.iter().zip(&saved).rev() {
            let at = |t: &Tensor| t.narrow(2, start, n).unwrap();
            let (dqj, dkj, dvj) = cache
                .backward_documents(&at(&x.q), o, l, &at(&x.d_out), &opts, &docs)
                .unwrap();
            grads.0.insert(0, dqj);
            grads.1.insert(0, dkj);
            grads.2.insert(0, dvj);
        }
        prop_assert_eq!(cache.slices(), 0);
        assert_close("sliced dq", &Tensor::cat(&grads.0, 2).unwrap(), &dq, TOL);
        assert_close("sliced dk", &Tensor::cat(&grads.1, 2).unwrap(), &dk, TOL);
        assert_close("sliced dv", &Tensor::cat(&grads.2, 2).unwrap(), &dv, TOL);
    }

    #[test]
    fn packed_rope_restarts_at_every_document(
        seed in 0u64..1000,
        len in 1usize..30,
        cuts in proptest::collection::vec(proptest::collection::vec(0usize..64, 0..6), 2),
        offset_cut in 0usize..30,
    ) {
        let docs = layout(2, len, &cuts);
        let rope = Rope::new(4, 64, 10_000.0, DType::F64, &Device::Cpu).unwrap();
        let offset = offset_cut % len;
        let x = SeedRng::new(seed).tensor(&[2, 3, len - offset, 4], 1.0);
        let y = rope.forward_documents(&x, offset, &docs).unwrap();
        let dx = rope.backward_documents(&y, offset, &docs).unwrap();
        assert_close("rotation is orthogonal", &dx, &x, TOL);
        for row in 0..2 {
            for p in docs.pieces(row, offset..len) {
                let span = (p.start - offset, p.end - offset);
                let alone = rope.forward(&doc(&x, row, span), p.position()).unwrap();
                assert_close("rope", &doc(&y, row, span), &alone, TOL);
            }
        }
    }
}

#[test]
fn eos_tokens_end_documents() {
    // Rows of 6 input tokens, end-of-document id 9; an EOS as the last input ends nothing here.
    let tokens = [1, 2, 9, 3, 9, 9, /* row 2 */ 4, 5, 6, 7, 8, 9];
    let docs = Documents::after_eos(&tokens, 2, 6, 9).unwrap();
    assert_eq!(docs.starts(0), &[0, 3, 5]);
    assert_eq!(docs.starts(1), &[0]);
    assert_eq!(docs.count(), 4);
    let pieces = docs.pieces(0, 2..6);
    let ranges: Vec<_> = pieces
        .iter()
        .map(|p| (p.doc_start, p.start, p.end))
        .collect();
    assert_eq!(ranges, [(0, 2, 3), (3, 3, 5), (5, 5, 6)]);
}

#[test]
fn bad_layouts_and_calls_are_errors_that_name_them() {
    let msg = |r: Result<Documents>| r.unwrap_err().to_string();
    assert!(msg(Documents::new(vec![vec![1, 2]], 4)).contains("[1, 2]"));
    assert!(msg(Documents::new(vec![vec![0, 2, 2]], 4)).contains("increase"));
    assert!(msg(Documents::new(vec![vec![0, 4]], 4)).contains("below"));
    assert!(msg(Documents::new(vec![], 4)).contains("0 rows"));
    assert!(msg(Documents::after_eos(&[1, 2, 3], 2, 2, 0)).contains("3 tokens"));
    let docs = Documents::whole(1, 4).unwrap();
    let x = inputs(1, 1, 1, 1, 4);
    let full = AttentionOptions::full(4);
    let e = attention_forward_documents(&x.q, &x.k, &x.v, &full, &docs).unwrap_err();
    assert!(e.to_string().contains("Mask::Causal"), "{e}");
    let two_rows = inputs(1, 2, 1, 1, 4);
    let e = attention_forward_documents(&two_rows.q, &two_rows.k, &two_rows.v, &options(4), &docs)
        .unwrap_err();
    assert!(e.to_string().contains("1 rows × 4 tokens"), "{e}");
}
