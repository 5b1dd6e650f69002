//! RMSNorm forward (one reduction pass, one output pass) and backward (one pass giving `dx` and
//! accumulating `dw`) (see the module header).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};

use super::{by_dtype, fusable, Real};
use crate::error::Result;

/// `(y, inv_rms)` of `x [.., H]`, `w [H]`, or `None` where the candle-op path must serve.
pub(crate) fn rms_norm_forward(
    x: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    if !fusable(x) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let inv_rms = x.apply_op1_no_bwd(&InvRms { eps })?;
    let y = x.apply_op3_no_bwd(&inv_rms, &w.contiguous()?, &Normalise)?;
    Ok(Some((y, inv_rms)))
}

/// `(dx, dw)` of RMSNorm, or `None` where the candle-op path must serve.
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    w: &Tensor,
    inv_rms: &Tensor,
    dy: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    if !fusable(x) {
        return Ok(None);
    }
    let weight = match w.dtype() {
        DType::F32 => Weight::F32(w.to_vec1()?),
        _ => Weight::F64(w.to_dtype(DType::F64)?.to_vec1()?),
    };
    let op = Backward {
        weight,
        dw: Mutex::new(None),
    };
    let dx = x
        .contiguous()?
        .apply_op3_no_bwd(&inv_rms.contiguous()?, &dy.contiguous()?, &op)?;
    let dw = match op.dw.into_inner().ok().flatten() {
        Some(CpuStorage::F32(v)) => Tensor::from_vec(v, w.dims(), w.device())?,
        Some(CpuStorage::F64(v)) => Tensor::from_vec(v, w.dims(), w.device())?,
        _ => {
            let detail = "rms_norm_backward_cpu left no weight gradient".to_string();
            return Err(crate::KernelError::Shape {
                op: "rms_norm_backward",
                detail,
            });
        }
    };
    Ok(Some((dx, dw)))
}

/// `Σ xᵢ²` with 16 partial sums, so the loop vectorises (a single sum is a dependency chain).
#[inline(always)]
fn sum_of_squares<T: Real>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = *a + v * v;
        }
    }
    let mut total = tail.iter().fold(T::ZERO, |s, &v| s + v * v);
    for a in acc {
        total = total + a;
    }
    total
}

/// `1/√(mean(x²) + ε)` per row of `h`.
fn inv_rms_rows<T: Real>(x: &[T], h: usize, eps: f64) -> Vec<T> {
    struct Rows<'a, T>(&'a [T], usize, f64);
    impl<T: Real> pulp::WithSimd for Rows<'_, T> {
        type Output = Vec<T>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<T> {
            let Rows(x, h, eps) = self;
            let (n, eps) = (T::from_f64(h as f64), T::from_f64(eps));
            let rows = x.chunks(h);
            rows.map(|r| T::ONE / (sum_of_squares(r) / n + eps).sqrt())
                .collect()
        }
    }
    pulp::Arch::new().dispatch(Rows(x, h, eps))
}

/// `x·r·w` per row.
fn normalise_rows<T: Real>(x: &[T], r: &[T], w: &[T]) -> Vec<T> {
    struct Rows<'a, T>(&'a [T], &'a [T], &'a [T]);
    impl<T: Real> pulp::WithSimd for Rows<'_, T> {
        type Output = Vec<T>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<T> {
            let Rows(x, r, w) = self;
            let mut out = vec![T::default(); x.len()];
            for ((o, x), &r) in out.chunks_mut(w.len()).zip(x.chunks(w.len())).zip(r) {
                for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = x * r * w;
                }
            }
            out
        }
    }
    pulp::Arch::new().dispatch(Rows(x, r, w))
}

/// `dx = r·(g − x̂·mean(g·x̂))` per row with `g = dy·w`, `x̂ = x·r`; `dw += dy·x̂` over rows.
fn backward_rows<T: Real>(x: &[T], r: &[T], dy: &[T], w: &[T]) -> (Vec<T>, Vec<T>) {
    struct Rows<'a, T>(&'a [T], &'a [T], &'a [T], &'a [T]);
    impl<T: Real> pulp::WithSimd for Rows<'_, T> {
        type Output = (Vec<T>, Vec<T>);
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> (Vec<T>, Vec<T>) {
            let Rows(x, r, dy, w) = self;
            let h = w.len();
            let n = T::from_f64(h as f64);
            let (mut dx, mut dw) = (vec![T::default(); x.len()], vec![T::ZERO; h]);
            let rows = dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)).zip(r);
            for (((dx, x), dy), &r) in rows {
                let mut acc = [T::ZERO; 16];
                for (j, ((&x, &dy), &w)) in x.iter().zip(dy).zip(w).enumerate() {
                    acc[j % 16] = acc[j % 16] + dy * w * (x * r);
                }
                let mean = acc.iter().fold(T::ZERO, |s, &a| s + a) / n;
                for ((((dx, dw), &x), &dy), &w) in dx.iter_mut().zip(&mut dw).zip(x).zip(dy).zip(w)
                {
                    let xhat = x * r;
                    *dx = (dy * w - xhat * mean) * r;
                    *dw = *dw + dy * xhat;
                }
            }
            (dx, dw)
        }
    }
    pulp::Arch::new().dispatch(Rows(x, r, dy, w))
}

struct InvRms {
    eps: f64,
}

impl CustomOp1 for InvRms {
    fn name(&self) -> &'static str {
        "rms_norm_inv_rms_cpu"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = *lx.dims().last().unwrap_or(&1);
        let eps = self.eps;
        let out = by_dtype(
            self.name(),
            [(x, lx)],
            |[x]| inv_rms_rows(x, h, eps),
            |[x]| inv_rms_rows(x, h, eps),
        )?;
        let mut dims = lx.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = 1;
        }
        Ok((out, Shape::from(dims)))
    }
}

struct Normalise;

impl CustomOp3 for Normalise {
    fn name(&self) -> &'static str {
        "rms_norm_forward_cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        r: &CpuStorage,
        lr: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = by_dtype(
            self.name(),
            [(x, lx), (r, lr), (w, lw)],
            |[x, r, w]| normalise_rows(x, r, w),
            |[x, r, w]| normalise_rows(x, r, w),
        )?;
        Ok((out, lx.shape().clone()))
    }
}

/// The weight, read once per call (it is `[H]`).
enum Weight {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Gives `dx` as the op's output and leaves `dw` in `dw` (an op has one output).
struct Backward {
    weight: Weight,
    dw: Mutex<Option<CpuStorage>>,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "rms_norm_backward_cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        r: &CpuStorage,
        lr: &Layout,
        dy: &CpuStorage,
        ldy: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let inputs = [(x, lx), (r, lr), (dy, ldy)];
        let mut dw = None;
        let dx = match &self.weight {
            Weight::F32(w) => by_dtype(
                op,
                inputs,
                |[x, r, dy]| {
                    let (dx, g) = backward_rows(x, r, dy, w);
                    dw = Some(CpuStorage::F32(g));
                    dx
                },
                |_| Vec::new(),
            )?,
            Weight::F64(w) => by_dtype(
                op,
                inputs,
                |_| Vec::new(),
                |[x, r, dy]| {
                    let (dx, g) = backward_rows(x, r, dy, w);
                    dw = Some(CpuStorage::F64(g));
                    dx
                },
            )?,
        };
        if dw.is_none() {
            candle_core::bail!("{op}: the weight's dtype differs from x's");
        }
        *self
            .dw
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned")))? = dw;
        Ok((dx, lx.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::max_rel;
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn forward_and_backward_match_the_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        // 37 columns: the 16-lane partial sums and their tail both run.
        let x = Tensor::randn(0f64, 1.0, (3, 4, 37), &dev)?;
        let w = Tensor::randn(0f64, 1.0, 37, &dev)?;
        let dy = Tensor::randn(0f64, 1.0, (3, 4, 37), &dev)?;
        let eps = 1e-5;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let xhat = x.broadcast_mul(&r)?;
        let y = xhat.broadcast_mul(&w)?;
        let g = dy.broadcast_mul(&w)?;
        let mean = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (g - xhat.broadcast_mul(&mean)?)?.broadcast_mul(&r)?;
        let dw = (&dy * &xhat)?.reshape(((), 37))?.sum(0)?;
        for (dtype, tol) in [(DType::F64, 1e-14), (DType::F32, 1e-5)] {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let (gy, gr) = rms_norm_forward(&c(&x), &c(&w), eps)?.unwrap();
            assert_eq!(gr.dims(), [3, 4, 1]);
            assert!(max_rel(&gy, &y) < tol, "{dtype:?} y");
            assert!(max_rel(&gr, &r) < tol, "{dtype:?} inv_rms");
            let (gdx, gdw) = rms_norm_backward(&c(&x), &c(&w), &gr, &c(&dy))?.unwrap();
            assert!(max_rel(&gdx, &dx) < tol, "{dtype:?} dx");
            assert_eq!(gdw.dims(), [37]);
            assert!(max_rel(&gdw, &dw) < tol, "{dtype:?} dw");
        }
        Ok(())
    }
}
