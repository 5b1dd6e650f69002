//! proptest invariants over random shapes, offsets, GQA ratios and block sizes, against the
//! composite-op oracle in f64.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use proptest::prelude::*;
use seqpipe_kernels::*;

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// [`rel_err`], except against a reference that is zero up to round-off (below 1e-9 of
/// `natural`, the size the gradient would have): then `max |got − want| / natural`.
fn grad_err(got: &Tensor, want: &Tensor, natural: f64) -> f64 {
    if max_abs(want) <= 1e-9 * natural {
        max_abs(&(got - want).unwrap()) / natural
    } else {
        rel_err(got, want)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Attention of a slice of `sq` queries at any offset into a prefix, any GQA ratio, any block.
    #[test]
    fn attention_matches_oracle(
        seed in any::<u64>(),
        b in 1usize..=2,
        hkv in 1usize..=3,
        group in 1usize..=3,
        sq in 1usize..=9,
        earlier in 0usize..=12,
        d in 1usize..=6,
        block in 1usize..=10,
        causal in any::<bool>(),
    ) {
        let mut rng = SeedRng::new(seed);
        let (h, sk) = (hkv * group, sq + earlier);
        let q = rng.tensor(&[b, h, sq, d], 2.0);
        let k = rng.tensor(&[b, hkv, sk, d], 2.0);
        let v = rng.tensor(&[b, hkv, sk, d], 1.0);
        let r = rng.tensor(&[b, h, sq, d], 1.0);
        let opts = AttentionOptions {
            scale: 0.7,
            mask: if causal { Mask::Causal } else { Mask::None },
            block_size: block,
        };
        let (qv, kv, vv) = (var(&q), var(&k), var(&v));
        let want = attention_composite(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), 0.7, causal);
        let grads = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (out, lse) = attention_forward(&q, &k, &v, &opts).unwrap();
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &out, &lse, &r, &opts).unwrap();
        prop_assert!(rel_err(&out, &want) < 1e-12);
        prop_assert!(rel_err(&lse, &attention_lse_composite(&q, &k, 0.7, causal)) < 1e-12);
        // dq and dk vanish exactly when every query row sees a single key (dS ≡ 0): then both
        // sides hold only round-off and are compared on the gradients' natural scale instead.
        let natural = 0.7 * d as f64 * max_abs(&r) * max_abs(&v) * max_abs(&q).max(max_abs(&k));
        prop_assert!(grad_err(&dq, grads.get(qv.as_tensor()).unwrap(), natural) < 1e-11);
        prop_assert!(grad_err(&dk, grads.get(kv.as_tensor()).unwrap(), natural) < 1e-11);
        prop_assert!(rel_err(&dv, grads.get(vv.as_tensor()).unwrap()) < 1e-11);
    }

    /// Splitting the keys at any point and merging by log-sum-exp gives the whole attention, and
    /// the split backward with the merged out/lse sums to the whole backward (SlimPipe exchange).
    #[test]
    fn merge_of_split_keys_is_whole_attention(
        seed in any::<u64>(),
        group in 1usize..=3,
        sq in 1usize..=6,
        earlier in 1usize..=10,
        cut_at in any::<usize>(),
        block in 1usize..=5,
    ) {
        let mut rng = SeedRng::new(seed);
        let sk = sq + earlier;
        let cut = 1 + cut_at % earlier; // keys 0..cut are wholly before every query
        let q = rng.tensor(&[1, 2 * group, sq, 4], 1.5);
        let k = rng.tensor(&[1, 2, sk, 4], 1.5);
        let v = rng.tensor(&[1, 2, sk, 4], 1.0);
        let r = rng.tensor(&[1, 2 * group, sq, 4], 1.0);
        let causal = AttentionOptions { scale: 0.5, mask: Mask::Causal, block_size: block };
        let none = AttentionOptions { mask: Mask::None, ..causal };
        let part = |t: &Tensor, a: usize, n: usize| t.narrow(2, a, n).unwrap();
        let (oa, la) = attention_forward(&q, &part(&k, 0, cut), &part(&v, 0, cut), &none).unwrap();
        let (ob, lb) = attention_forward(&q, &part(&k, cut, sk - cut), &part(&v, cut, sk - cut), &causal).unwrap();
        let (out, lse) = merge_attention(&oa, &la, &ob, &lb).unwrap();
        let (want_out, want_lse) = attention_forward(&q, &k, &v, &causal).unwrap();
        prop_assert!(rel_err(&out, &want_out) < 1e-12);
        prop_assert!(rel_err(&lse, &want_lse) < 1e-12);
        let (dqa, dka, dva) = attention_backward(&q, &part(&k, 0, cut), &part(&v, 0, cut), &out, &lse, &r, &none).unwrap();
        let (dqb, dkb, dvb) = attention_backward(&q, &part(&k, cut, sk - cut), &part(&v, cut, sk - cut), &out, &lse, &r, &causal).unwrap();
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &want_out, &want_lse, &r, &causal).unwrap();
        prop_assert!(rel_err(&(dqa + dqb).unwrap(), &dq) < 1e-12);
        prop_assert!(rel_err(&Tensor::cat(&[dka, dkb], 2).unwrap(), &dk) < 1e-12);
        prop_assert!(rel_err(&Tensor::cat(&[dva, dvb], 2).unwrap(), &dv) < 1e-12);
    }

    /// RoPE of a slice at offset `a` is the slice `a..a+s` of RoPE over the whole sequence, and the
    /// backward undoes the forward (a rotation is orthogonal).
    #[test]
    fn rope_slices_agree_with_the_whole(
        seed in any::<u64>(),
        half in 1usize..=4,
        total in 1usize..=20,
        a_raw in any::<usize>(),
        s_raw in any::<usize>(),
    ) {
        let mut rng = SeedRng::new(seed);
        let d = 2 * half;
        let a = a_raw % total;
        let s = 1 + s_raw % (total - a);
        let rope = Rope::new(d, total, 10_000.0, DType::F64, &Device::Cpu).unwrap();
        let x = rng.tensor(&[2, 3, total, d], 1.0);
        let whole = rope.forward(&x, 0).unwrap();
        let sliced = rope.forward(&x.narrow(2, a, s).unwrap(), a).unwrap();
        prop_assert!(rel_err(&sliced, &whole.narrow(2, a, s).unwrap()) < 1e-14);
        prop_assert!(rel_err(&rope.backward(&whole, 0).unwrap(), &x) < 1e-14);
    }

    /// The vocabulary block size changes nothing but rounding; the loss adds up over any split of
    /// the tokens when each part uses the whole normaliser.
    #[test]
    fn cross_entropy_is_block_and_split_invariant(
        seed in any::<u64>(),
        n in 2usize..=10,
        hd in 1usize..=6,
        vocab in 1usize..=20,
        block in 1usize..=24,
        split_raw in any::<usize>(),
    ) {
        let mut rng = SeedRng::new(seed);
        let h = rng.tensor(&[n, hd], 2.0);
        let w = rng.tensor(&[vocab, hd], 2.0);
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
        let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap();
        let norm = n as f64;
        let (whole, _) = cross_entropy_forward(&h, &w, &t, None, norm, vocab).unwrap();
        let (blocked, _) = cross_entropy_forward(&h, &w, &t, None, norm, block).unwrap();
        prop_assert!((whole - blocked).abs() <= 1e-12 * whole.abs().max(1.0));
        let c = 1 + split_raw % (n - 1);
        let (l1, _) = cross_entropy_forward(&h.narrow(0, 0, c).unwrap(), &w, &t.narrow(0, 0, c).unwrap(), None, norm, block).unwrap();
        let (l2, _) = cross_entropy_forward(&h.narrow(0, c, n - c).unwrap(), &w, &t.narrow(0, c, n - c).unwrap(), None, norm, block).unwrap();
        prop_assert!((l1 + l2 - whole).abs() <= 1e-12 * whole.abs().max(1.0));
    }
}

#[test]
fn masked_tokens_contribute_nothing_and_may_hold_any_target() {
    let mut rng = SeedRng::new(31);
    let (h, w) = (rng.tensor(&[4, 3], 1.0), rng.tensor(&[5, 3], 1.0));
    let t = Tensor::new(&[1u32, u32::MAX, 4, 2], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[1f32, 0.0, 1.0, 1.0], &Device::Cpu).unwrap();
    let (loss, saved) = cross_entropy_forward(&h, &w, &t, Some(&mask), 3.0, 2).unwrap();
    let keep = Tensor::new(&[0u32, 2, 3], &Device::Cpu).unwrap();
    let (h3, t3) = (
        h.index_select(&keep, 0).unwrap(),
        t.index_select(&keep, 0).unwrap(),
    );
    let (want, saved3) = cross_entropy_forward(&h3, &w, &t3, None, 3.0, 2).unwrap();
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    let (dh, dw) = cross_entropy_backward(&h, &w, &t, Some(&mask), &saved, 3.0, 2).unwrap();
    let (dh3, dw3) = cross_entropy_backward(&h3, &w, &t3, None, &saved3, 3.0, 2).unwrap();
    assert_close("d_lm_head", &dw, &dw3, 1e-12);
    assert_close(
        "d_hidden kept rows",
        &dh.index_select(&keep, 0).unwrap(),
        &dh3,
        1e-12,
    );
    let masked_row = dh
        .narrow(0, 1, 1)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(masked_row, 0.0);
}
