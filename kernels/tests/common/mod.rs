//! Test helpers: seeded random tensors, error measures, finite differences and composite-op
//! oracles built from candle primitives whose autograd is known to work.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var, D};

/// splitmix64: a tiny seeded generator, so every test is reproducible without an RNG crate.
pub struct SeedRng(u64);

impl SeedRng {
    pub fn new(seed: u64) -> Self {
        SeedRng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
    /// f64 tensor with entries uniform in [-scale, scale).
    pub fn tensor(&mut self, shape: &[usize], scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n).map(|_| self.uniform() * scale).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }
}

/// max |a − b| / max(max |b|, tiny): one relative error for a whole tensor.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch in rel_err");
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let diff = (a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    diff / scale.max(1e-300)
}

#[track_caller]
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let e = rel_err(got, want);
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:.1e}");
}

/// Σ (t ⊙ w) as f64.
pub fn dot(t: &Tensor, w: &Tensor) -> f64 {
    (t.to_dtype(DType::F64).unwrap() * w.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Central-difference directional derivative of `f` at `x` along `u`.
pub fn directional(f: &dyn Fn(&Tensor) -> f64, x: &Tensor, u: &Tensor, h: f64) -> f64 {
    let xp = (x + (u * h).unwrap()).unwrap();
    let xm = (x - (u * h).unwrap()).unwrap();
    (f(&xp) - f(&xm)) / (2.0 * h)
}

/// Checks `<grad, u>` against finite differences of `f` for a random direction `u`.
#[track_caller]
pub fn check_fd(
    name: &str,
    f: &dyn Fn(&Tensor) -> f64,
    x: &Tensor,
    grad: &Tensor,
    rng: &mut SeedRng,
) {
    let u = rng.tensor(x.dims(), 1.0);
    let fd = directional(f, x, &u, 1e-5);
    let an = dot(grad, &u);
    let err = (fd - an).abs() / an.abs().max(fd.abs()).max(1e-8);
    assert!(
        err < 1e-6,
        "{name}: finite difference {fd:.12e} vs analytic {an:.12e} (rel {err:.2e})"
    );
}

pub fn var(t: &Tensor) -> Var {
    Var::from_tensor(t).unwrap()
}

/// Softmax over the last dim from primitives (candle's fused softmax drops gradients).
pub fn softmax_composite(x: &Tensor) -> Tensor {
    let m = x.max_keepdim(D::Minus1).unwrap().detach();
    let e = x.broadcast_sub(&m).unwrap().exp().unwrap();
    let s = e.sum_keepdim(D::Minus1).unwrap();
    e.broadcast_div(&s).unwrap()
}

/// Reference attention from primitives: full score matrix, additive bottom-right causal mask,
/// K/V repeated for GQA. Returns `[b, h, sq, d]`.
pub fn attention_composite(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Tensor {
    let (b, h, sq, d) = q.dims4().unwrap();
    let (_, hkv, sk, _) = k.dims4().unwrap();
    let g = h / hkv;
    let rep = |t: &Tensor| {
        t.unsqueeze(2)
            .unwrap()
            .broadcast_as((b, hkv, g, sk, d))
            .unwrap()
            .reshape((b, h, sk, d))
            .unwrap()
    };
    let (k, v) = (rep(k), rep(v));
    let mut s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * scale).unwrap();
    if causal {
        let bias: Vec<f64> = (0..sq)
            .flat_map(|i| {
                (0..sk).map(move |j| {
                    if j + sq <= sk + i {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                })
            })
            .collect();
        let bias = Tensor::from_vec(bias, (sq, sk), &Device::Cpu)
            .unwrap()
            .to_dtype(q.dtype())
            .unwrap();
        s = s.broadcast_add(&bias).unwrap();
    }
    softmax_composite(&s)
        .matmul(&v.contiguous().unwrap())
        .unwrap()
}

/// Log-sum-exp of the reference scores, `[b, h, sq]`.
pub fn attention_lse_composite(q: &Tensor, k: &Tensor, scale: f64, causal: bool) -> Tensor {
    let (b, h, sq, d) = q.dims4().unwrap();
    let (_, hkv, sk, _) = k.dims4().unwrap();
    let g = h / hkv;
    let k = k
        .unsqueeze(2)
        .unwrap()
        .broadcast_as((b, hkv, g, sk, d))
        .unwrap()
        .reshape((b, h, sk, d))
        .unwrap();
    let mut s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * scale).unwrap();
    if causal {
        let bias: Vec<f64> = (0..sq)
            .flat_map(|i| {
                (0..sk).map(move |j| {
                    if j + sq <= sk + i {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                })
            })
            .collect();
        let bias = Tensor::from_vec(bias, (sq, sk), &Device::Cpu)
            .unwrap()
            .to_dtype(q.dtype())
            .unwrap();
        s = s.broadcast_add(&bias).unwrap();
    }
    let m = s.max_keepdim(D::Minus1).unwrap();
    let l = s
        .broadcast_sub(&m)
        .unwrap()
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    (m + l).unwrap().squeeze(3).unwrap()
}
