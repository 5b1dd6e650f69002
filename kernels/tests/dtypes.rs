//! f32 and bf16 inputs compute in f32 and agree with the f64 results to their precision.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use seqpipe_kernels::*;

fn cast(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap()
}

/// Runs attention forward + backward in `dtype` on inputs rounded to `dtype`, against f64 on the
/// same rounded inputs, so only the computation's rounding is measured.
fn attention_in(dtype: DType, tol: f64) {
    let mut rng = SeedRng::new(41);
    let opts = AttentionOptions {
        block_size: 8,
        ..AttentionOptions::causal(16)
    };
    let round = |t: Tensor| cast(&cast(&t, dtype), DType::F64);
    let q = round(rng.tensor(&[1, 4, 12, 16], 1.0));
    let k = round(rng.tensor(&[1, 2, 30, 16], 1.0));
    let v = round(rng.tensor(&[1, 2, 30, 16], 1.0));
    let r = round(rng.tensor(&[1, 4, 12, 16], 1.0));
    let (o64, l64) = attention_forward(&q, &k, &v, &opts).unwrap();
    let g64 = attention_backward(&q, &k, &v, &o64, &l64, &r, &opts).unwrap();
    let [q, k, v, r] = [&q, &k, &v, &r].map(|t| cast(t, dtype));
    let (o, l) = attention_forward(&q, &k, &v, &opts).unwrap();
    assert_eq!((o.dtype(), l.dtype()), (dtype, DType::F32));
    let g = attention_backward(&q, &k, &v, &o, &l, &r, &opts).unwrap();
    assert_eq!(g.1.dtype(), dtype);
    assert_close("out", &o, &o64, tol);
    assert_close("lse", &l, &l64, tol);
    assert_close("dq", &g.0, &g64.0, tol * 4.0);
    assert_close("dk", &g.1, &g64.1, tol * 4.0);
    assert_close("dv", &g.2, &g64.2, tol * 4.0);
}

#[test]
fn attention_f32_and_bf16() {
    attention_in(DType::F32, 1e-6);
    // bf16 keeps 8 bits of mantissa: outputs are rounded once at the end (2^-8 ≈ 4e-3).
    attention_in(DType::BF16, 8e-3);
}

#[test]
fn row_ops_and_cross_entropy_in_bf16() {
    let mut rng = SeedRng::new(42);
    let bf = |t: &Tensor| cast(t, DType::BF16);
    let x = cast(&bf(&rng.tensor(&[3, 8], 2.0)), DType::F64);
    let w = cast(&bf(&rng.tensor(&[8], 1.0)), DType::F64);
    let (y64, _) = rms_norm_forward(&x, &w, 1e-6).unwrap();
    let (y, inv) = rms_norm_forward(&bf(&x), &bf(&w), 1e-6).unwrap();
    assert_eq!((y.dtype(), inv.dtype()), (DType::BF16, DType::F32));
    assert_close("rms_norm", &y, &y64, 8e-3);
    assert_close(
        "swiglu",
        &swiglu_forward(&bf(&x), &bf(&x)).unwrap(),
        &swiglu_forward(&x, &x).unwrap(),
        8e-3,
    );
    let wl = cast(&bf(&rng.tensor(&[5, 8], 1.0)), DType::F64);
    assert_close(
        "linear",
        &linear_forward(&bf(&x), &bf(&wl)).unwrap(),
        &linear_forward(&x, &wl).unwrap(),
        8e-3,
    );
    let t = Tensor::new(&[1u32, 4, 0], &Device::Cpu).unwrap();
    let (l64, _) = cross_entropy_forward(&x, &wl, &t, None, 3.0, 2).unwrap();
    let (l, saved) = cross_entropy_forward(&bf(&x), &bf(&wl), &t, None, 3.0, 2).unwrap();
    assert_eq!(saved.lse.dtype(), DType::F32);
    assert!((l - l64).abs() < 1e-5 * l64.abs(), "{l} vs {l64}"); // f32 accumulation, exact inputs
    let rope = Rope::new(8, 4, 1e4, DType::BF16, &Device::Cpu).unwrap();
    let rope64 = Rope::new(8, 4, 1e4, DType::F64, &Device::Cpu).unwrap();
    let xr = x.reshape((1, 1, 3, 8)).unwrap();
    assert_close(
        "rope",
        &rope.forward(&bf(&xr), 1).unwrap(),
        &rope64.forward(&xr, 1).unwrap(),
        8e-3,
    );
}
