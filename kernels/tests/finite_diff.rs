//! Every backward against central finite differences in f64 on small shapes (acceptance (b)).
//!
//! Each check contracts the op's output with a fixed random tensor `r` to get a scalar, and
//! compares its derivative along a random direction with `<grad, direction>`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use seqpipe_kernels::*;

#[test]
fn linear_gradients() {
    let mut rng = SeedRng::new(11);
    let (x, w, r) = (
        rng.tensor(&[3, 4], 1.0),
        rng.tensor(&[2, 4], 1.0),
        rng.tensor(&[3, 2], 1.0),
    );
    let dx = linear_backward_input(&r, &w).unwrap();
    let dw = linear_backward_weight(&x, &r).unwrap();
    check_fd(
        "dx",
        &|x| dot(&linear_forward(x, &w).unwrap(), &r),
        &x,
        &dx,
        &mut rng,
    );
    check_fd(
        "dw",
        &|w| dot(&linear_forward(&x, w).unwrap(), &r),
        &w,
        &dw,
        &mut rng,
    );
}

#[test]
fn rms_norm_gradients() {
    let mut rng = SeedRng::new(12);
    let (x, w, r) = (
        rng.tensor(&[2, 2, 6], 1.0),
        rng.tensor(&[6], 1.0),
        rng.tensor(&[2, 2, 6], 1.0),
    );
    let (_, inv) = rms_norm_forward(&x, &w, 1e-5).unwrap();
    let (dx, dw) = rms_norm_backward(&x, &w, &inv, &r).unwrap();
    check_fd(
        "dx",
        &|x| dot(&rms_norm_forward(x, &w, 1e-5).unwrap().0, &r),
        &x,
        &dx,
        &mut rng,
    );
    check_fd(
        "dw",
        &|w| dot(&rms_norm_forward(&x, w, 1e-5).unwrap().0, &r),
        &w,
        &dw,
        &mut rng,
    );
}

#[test]
fn rope_gradient() {
    let mut rng = SeedRng::new(13);
    let rope = Rope::new(6, 32, 10_000.0, DType::F64, &Device::Cpu).unwrap();
    let (x, r) = (
        rng.tensor(&[1, 2, 4, 6], 1.0),
        rng.tensor(&[1, 2, 4, 6], 1.0),
    );
    let dx = rope.backward(&r, 19).unwrap();
    check_fd(
        "dx",
        &|x| dot(&rope.forward(x, 19).unwrap(), &r),
        &x,
        &dx,
        &mut rng,
    );
}

#[test]
fn swiglu_gradients() {
    let mut rng = SeedRng::new(14);
    let (g, u, r) = (
        rng.tensor(&[4, 5], 3.0),
        rng.tensor(&[4, 5], 1.0),
        rng.tensor(&[4, 5], 1.0),
    );
    let (dg, du) = swiglu_backward(&g, &u, &r).unwrap();
    check_fd(
        "dgate",
        &|g| dot(&swiglu_forward(g, &u).unwrap(), &r),
        &g,
        &dg,
        &mut rng,
    );
    check_fd(
        "dup",
        &|u| dot(&swiglu_forward(&g, u).unwrap(), &r),
        &u,
        &du,
        &mut rng,
    );
}

#[test]
fn attention_gradients() {
    let mut rng = SeedRng::new(15);
    let opts = AttentionOptions {
        scale: 0.5,
        mask: Mask::Causal,
        block_size: 3,
    };
    let q = rng.tensor(&[1, 4, 4, 3], 1.0);
    let k = rng.tensor(&[1, 2, 7, 3], 1.0);
    let v = rng.tensor(&[1, 2, 7, 3], 1.0);
    let r = rng.tensor(&[1, 4, 4, 3], 1.0);
    let (out, lse) = attention_forward(&q, &k, &v, &opts).unwrap();
    let (dq, dk, dv) = attention_backward(&q, &k, &v, &out, &lse, &r, &opts).unwrap();
    let f =
        |q: &Tensor, k: &Tensor, v: &Tensor| dot(&attention_forward(q, k, v, &opts).unwrap().0, &r);
    check_fd("dq", &|q| f(q, &k, &v), &q, &dq, &mut rng);
    check_fd("dk", &|k| f(&q, k, &v), &k, &dk, &mut rng);
    check_fd("dv", &|v| f(&q, &k, v), &v, &dv, &mut rng);
}

#[test]
fn cross_entropy_gradients() {
    let mut rng = SeedRng::new(16);
    let (h, w) = (rng.tensor(&[5, 4], 1.0), rng.tensor(&[9, 4], 1.0));
    let t = Tensor::new(&[3u32, 8, 0, 3, 5], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[1u8, 1, 0, 1, 1], &Device::Cpu).unwrap();
    let (_, saved) = cross_entropy_forward(&h, &w, &t, Some(&mask), 8.0, 4).unwrap();
    let (dh, dw) = cross_entropy_backward(&h, &w, &t, Some(&mask), &saved, 8.0, 4).unwrap();
    let f = |h: &Tensor, w: &Tensor| {
        cross_entropy_forward(h, w, &t, Some(&mask), 8.0, 4)
            .unwrap()
            .0
    };
    check_fd("d_hidden", &|h| f(h, &w), &h, &dh, &mut rng);
    check_fd("d_lm_head", &|w| f(&h, w), &w, &dw, &mut rng);
}

#[test]
fn merge_is_differentiable_through_its_parts() {
    // The merged output is the attention over the union of keys; its gradient w.r.t. each part's
    // keys must equal the split backward with the merged out/lse (SlimPipe's exchange backward).
    let mut rng = SeedRng::new(17);
    let q = rng.tensor(&[1, 2, 3, 4], 1.0);
    let k = rng.tensor(&[1, 1, 8, 4], 1.0);
    let v = rng.tensor(&[1, 1, 8, 4], 1.0);
    let r = rng.tensor(&[1, 2, 3, 4], 1.0);
    let causal = AttentionOptions {
        scale: 0.5,
        mask: Mask::Causal,
        block_size: 2,
    };
    let full = AttentionOptions {
        mask: Mask::None,
        ..causal
    };
    let merged = |k: &Tensor| {
        let (oa, la) = attention_forward(
            &q,
            &k.narrow(2, 0, 3).unwrap(),
            &v.narrow(2, 0, 3).unwrap(),
            &full,
        )
        .unwrap();
        let (ob, lb) = attention_forward(
            &q,
            &k.narrow(2, 3, 5).unwrap(),
            &v.narrow(2, 3, 5).unwrap(),
            &causal,
        )
        .unwrap();
        merge_attention(&oa, &la, &ob, &lb).unwrap()
    };
    let (out, lse) = merged(&k);
    let (_, dk_a, _) = attention_backward(
        &q,
        &k.narrow(2, 0, 3).unwrap(),
        &v.narrow(2, 0, 3).unwrap(),
        &out,
        &lse,
        &r,
        &full,
    )
    .unwrap();
    let (_, dk_b, _) = attention_backward(
        &q,
        &k.narrow(2, 3, 5).unwrap(),
        &v.narrow(2, 3, 5).unwrap(),
        &out,
        &lse,
        &r,
        &causal,
    )
    .unwrap();
    let dk = Tensor::cat(&[dk_a, dk_b], 2).unwrap();
    check_fd(
        "dk through merge",
        &|k| dot(&merged(k).0, &r),
        &k,
        &dk,
        &mut rng,
    );
}
