//! Every backward against candle autograd over composite ops, in f64 (SPEC acceptance (a)).
//!
//! The oracle is built only from primitives whose autograd works (matmul, exp, sums, cat, narrow,
//! gather) or from candle's `*_slow` composites; the fused ops that drop gradients are not used.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::*;
use seqpipe_kernels::*;

const TOL: f64 = 1e-12;

#[test]
fn linear_matches_autograd() {
    let mut rng = SeedRng::new(1);
    let (x, w, r) = (
        rng.tensor(&[2, 3, 5], 1.0),
        rng.tensor(&[4, 5], 1.0),
        rng.tensor(&[2, 3, 4], 1.0),
    );
    let (xv, wv) = (var(&x), var(&w));
    let y = xv
        .as_tensor()
        .broadcast_matmul(&wv.as_tensor().t().unwrap())
        .unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("y", &linear_forward(&x, &w).unwrap(), &y, TOL);
    assert_close(
        "dx",
        &linear_backward_input(&r, &w).unwrap(),
        grads.get(xv.as_tensor()).unwrap(),
        TOL,
    );
    assert_close(
        "dw",
        &linear_backward_weight(&x, &r).unwrap(),
        grads.get(wv.as_tensor()).unwrap(),
        TOL,
    );
}

#[test]
fn biased_linear_matches_autograd() {
    let mut rng = SeedRng::new(11);
    let (x, w, b, r) = (
        rng.tensor(&[2, 3, 5], 1.0),
        rng.tensor(&[4, 5], 1.0),
        rng.tensor(&[4], 1.0),
        rng.tensor(&[2, 3, 4], 1.0),
    );
    let (xv, wv, bv) = (var(&x), var(&w), var(&b));
    let y = xv
        .as_tensor()
        .broadcast_matmul(&wv.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(bv.as_tensor())
        .unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("y", &linear_forward_biased(&x, &w, &b).unwrap(), &y, TOL);
    assert_close(
        "db",
        &linear_backward_bias(&r).unwrap(),
        grads.get(bv.as_tensor()).unwrap(),
        TOL,
    );
    // The bias leaves the input and weight gradients what they are without it.
    assert_close(
        "dx",
        &linear_backward_input(&r, &w).unwrap(),
        grads.get(xv.as_tensor()).unwrap(),
        TOL,
    );
    assert_close(
        "dw",
        &linear_backward_weight(&x, &r).unwrap(),
        grads.get(wv.as_tensor()).unwrap(),
        TOL,
    );
}

#[test]
fn rms_norm_matches_rms_norm_slow() {
    let mut rng = SeedRng::new(2);
    let (x, w, r) = (
        rng.tensor(&[2, 3, 8], 2.0),
        rng.tensor(&[8], 1.0),
        rng.tensor(&[2, 3, 8], 1.0),
    );
    let eps = 1.0 / 1024.0; // exact in f32, which rms_norm_slow takes
    let (xv, wv) = (var(&x), var(&w));
    let y = candle_nn::ops::rms_norm_slow(xv.as_tensor(), wv.as_tensor(), eps as f32).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (got, inv_rms) = rms_norm_forward(&x, &w, eps).unwrap();
    assert_eq!(inv_rms.dims(), &[2, 3, 1]);
    assert_close("y", &got, &y, TOL);
    let (dx, dw) = rms_norm_backward(&x, &w, &inv_rms, &r).unwrap();
    assert_close("dx", &dx, grads.get(xv.as_tensor()).unwrap(), TOL);
    assert_close("dw", &dw, grads.get(wv.as_tensor()).unwrap(), TOL);
}

/// Independent cos/sin tables `[positions, d/2]` for `rope_slow`.
fn tables(d: usize, offset: usize, s: usize, theta: f64) -> (Tensor, Tensor) {
    let angles: Vec<f64> = (offset..offset + s)
        .flat_map(|p| (0..d / 2).map(move |i| p as f64 / theta.powf(2.0 * i as f64 / d as f64)))
        .collect();
    let a = Tensor::from_vec(angles, (s, d / 2), &Device::Cpu).unwrap();
    (a.cos().unwrap(), a.sin().unwrap())
}

#[test]
fn rope_matches_rope_slow_with_offset() {
    let mut rng = SeedRng::new(3);
    let (b, h, s, d, offset, theta) = (2, 3, 5, 8, 7, 500_000.0);
    let (x, r) = (
        rng.tensor(&[b, h, s, d], 1.0),
        rng.tensor(&[b, h, s, d], 1.0),
    );
    let (cos, sin) = tables(d, offset, s, theta);
    let xv = var(&x);
    let y = candle_nn::rotary_emb::rope_slow(xv.as_tensor(), &cos, &sin).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let rope = Rope::new(d, 16, theta, DType::F64, &Device::Cpu).unwrap();
    assert_close("y", &rope.forward(&x, offset).unwrap(), &y, TOL);
    assert_close(
        "dx",
        &rope.backward(&r, offset).unwrap(),
        grads.get(xv.as_tensor()).unwrap(),
        TOL,
    );
}

#[test]
fn swiglu_matches_autograd() {
    let mut rng = SeedRng::new(4);
    let (g, u, r) = (
        rng.tensor(&[3, 7], 4.0),
        rng.tensor(&[3, 7], 1.0),
        rng.tensor(&[3, 7], 1.0),
    );
    let (gv, uv) = (var(&g), var(&u));
    let gt = gv.as_tensor();
    let sig = (gt.neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .recip()
        .unwrap();
    let y = ((gt * sig).unwrap() * uv.as_tensor()).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("y", &swiglu_forward(&g, &u).unwrap(), &y, TOL);
    let (dg, du) = swiglu_backward(&g, &u, &r).unwrap();
    assert_close("dgate", &dg, grads.get(gt).unwrap(), TOL);
    assert_close("dup", &du, grads.get(uv.as_tensor()).unwrap(), TOL);
}

/// Attention of `sq` queries on `sk` keys, `h` query heads on `hkv` KV heads, against the oracle.
fn attention_case(
    seed: u64,
    (b, h, hkv, sq, sk, d): (usize, usize, usize, usize, usize, usize),
    block: usize,
    causal: bool,
) {
    let mut rng = SeedRng::new(seed);
    let q = rng.tensor(&[b, h, sq, d], 1.5);
    let k = rng.tensor(&[b, hkv, sk, d], 1.5);
    let v = rng.tensor(&[b, hkv, sk, d], 1.0);
    let r = rng.tensor(&[b, h, sq, d], 1.0);
    let opts = AttentionOptions {
        scale: 0.3,
        mask: if causal { Mask::Causal } else { Mask::None },
        block_size: block,
    };
    let (qv, kv, vv) = (var(&q), var(&k), var(&v));
    let want = attention_composite(
        qv.as_tensor(),
        kv.as_tensor(),
        vv.as_tensor(),
        opts.scale,
        causal,
    );
    let grads = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (out, lse) = attention_forward(&q, &k, &v, &opts).unwrap();
    assert_close("out", &out, &want, TOL);
    assert_close(
        "lse",
        &lse,
        &attention_lse_composite(&q, &k, opts.scale, causal),
        TOL,
    );
    let (dq, dk, dv) = attention_backward(&q, &k, &v, &out, &lse, &r, &opts).unwrap();
    assert_close("dq", &dq, grads.get(qv.as_tensor()).unwrap(), TOL);
    assert_close("dk", &dk, grads.get(kv.as_tensor()).unwrap(), TOL);
    assert_close("dv", &dv, grads.get(vv.as_tensor()).unwrap(), TOL);
}

#[test]
fn attention_causal_gqa_prefix_matches_autograd() {
    // 5 queries against 13 keys (8 earlier tokens), 6 query heads on 2 KV heads, blocks of 4.
    attention_case(5, (2, 6, 2, 5, 13, 4), 4, true);
}

#[test]
fn attention_full_sequence_and_unmasked_match_autograd() {
    attention_case(6, (1, 4, 4, 9, 9, 8), 2, true);
    attention_case(7, (1, 4, 1, 6, 11, 8), 4, false);
    attention_case(8, (2, 2, 2, 7, 3, 4), 64, false);
}

/// Reference cross-entropy from primitives: full logits, log-softmax, gather.
fn cross_entropy_composite(h: &Tensor, w: &Tensor, t: &Tensor, mask: &Tensor, norm: f64) -> Tensor {
    let logits = h.matmul(&w.t().unwrap()).unwrap();
    let m = logits.max_keepdim(D::Minus1).unwrap().detach();
    let z = logits.broadcast_sub(&m).unwrap();
    let lse = z
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let logp = z.broadcast_sub(&lse).unwrap();
    let picked = logp
        .gather(&t.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    ((picked * mask).unwrap().sum_all().unwrap() * (-1.0 / norm)).unwrap()
}

#[test]
fn cross_entropy_matches_autograd() {
    let mut rng = SeedRng::new(9);
    let (n, hd, vocab, norm) = (6, 5, 11, 17.0);
    let (h, w) = (rng.tensor(&[n, hd], 2.0), rng.tensor(&[vocab, hd], 2.0));
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
    let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap();
    let mask = Tensor::new(&[1.0f64, 0.0, 1.0, 1.0, 0.0, 1.0], &Device::Cpu).unwrap();
    let (hv, wv) = (var(&h), var(&w));
    let want = cross_entropy_composite(hv.as_tensor(), wv.as_tensor(), &t, &mask, norm);
    let grads = want.backward().unwrap();
    for block in [1, 4, 11, 64] {
        let (loss, saved) = cross_entropy_forward(&h, &w, &t, Some(&mask), norm, block).unwrap();
        let want_loss = want.to_scalar::<f64>().unwrap();
        assert!(
            (loss - want_loss).abs() <= TOL * want_loss.abs(),
            "block {block}: {loss} vs {want_loss}"
        );
        let (dh, dw) =
            cross_entropy_backward(&h, &w, &t, Some(&mask), &saved, norm, block).unwrap();
        assert_close("d_hidden", &dh, grads.get(hv.as_tensor()).unwrap(), TOL);
        assert_close("d_lm_head", &dw, grads.get(wv.as_tensor()).unwrap(), TOL);
        let dh_b =
            cross_entropy_backward_input(&h, &w, &t, Some(&mask), &saved, norm, block).unwrap();
        let dw_w =
            cross_entropy_backward_weight(&h, &w, &t, Some(&mask), &saved, norm, block).unwrap();
        assert_close("B half", &dh_b, &dh, 0.0);
        assert_close("W half", &dw_w, &dw, 0.0);
    }
}
