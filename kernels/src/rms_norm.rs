//! RMSNorm over the last dim: `y = x · r · w` with `r = 1/√(mean(x²) + ε)`.
//!
//! The forward returns `r` (`[.., 1]`, f32, or f64 for f64 input) as the saved activation: it is a
//! single number per row, so the backward needs only `x`, `w` and `r` and never recomputes the
//! reduction. With `x̂ = x·r` and `g = dy·w`:
//! `dx = r · (g − x̂ · mean(g·x̂))`, `dw = Σ_rows dy·x̂`. On CPU, f32 and f64 run fused
//! (`fused_cpu`); the candle ops below serve the rest.

use candle_core::{DType, Tensor, D};

use crate::check::{compute_dtype, last_dim, positive_finite, same_dtype, same_shape};
use crate::error::{KernelError, Result};

/// Checks `weight [H]` against `x [.., H]`; returns the compute dtype.
fn check(op: &'static str, x: &Tensor, weight: &Tensor) -> Result<DType> {
    let ct = compute_dtype(op, "x", x)?;
    same_dtype(op, "weight", weight, x.dtype())?;
    let h = last_dim(op, "x", x)?;
    if weight.dims() != [h] {
        return Err(KernelError::Shape {
            op,
            detail: format!(
                "`weight` {:?} must be [{h}], the last dim of `x` {:?}",
                weight.dims(),
                x.dims()
            ),
        });
    }
    Ok(ct)
}

/// RMSNorm forward: `x [.., H]`, `weight [H]` → (`y [.., H]` in x's dtype, `inv_rms [.., 1]`).
pub fn rms_norm_forward(x: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm_forward";
    let ct = check(OP, x, weight)?;
    positive_finite(OP, "eps", eps)?;
    #[cfg(feature = "cuda")]
    if let Some(out) = crate::cuda::rms_norm_forward(x, weight, eps)? {
        return Ok(out);
    }
    if let Some(out) = crate::fused_cpu::rms_norm_forward(x, weight, eps)? {
        return Ok(out);
    }
    let xc = x.to_dtype(ct)?;
    let inv_rms = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let y = xc
        .broadcast_mul(&inv_rms)?
        .broadcast_mul(&weight.to_dtype(ct)?)?;
    Ok((y.to_dtype(x.dtype())?, inv_rms))
}

/// RMSNorm backward: from `x`, `weight`, the forward's `inv_rms` and `dy` (shape of `x`), returns
/// (`dx` in x's dtype, `dweight [H]` in weight's dtype).
pub fn rms_norm_backward(
    x: &Tensor,
    weight: &Tensor,
    inv_rms: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm_backward";
    let ct = check(OP, x, weight)?;
    same_dtype(OP, "dy", dy, x.dtype())?;
    same_shape(OP, ("x", x), ("dy", dy))?;
    let mut rows = x.dims().to_vec();
    if let Some(last) = rows.last_mut() {
        *last = 1;
    }
    if inv_rms.dims() != rows.as_slice() {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!(
                "`inv_rms` {:?} must be {rows:?} (one value per row of `x` {:?})",
                inv_rms.dims(),
                x.dims()
            ),
        });
    }
    #[cfg(feature = "cuda")]
    if let Some(out) = crate::cuda::rms_norm_backward(x, weight, inv_rms, dy)? {
        return Ok(out);
    }
    if let Some(out) = crate::fused_cpu::rms_norm_backward(x, weight, inv_rms, dy)? {
        return Ok(out);
    }
    let h = x.dims()[x.rank() - 1];
    let (xc, dyc) = (x.to_dtype(ct)?, dy.to_dtype(ct)?);
    let r = inv_rms.to_dtype(ct)?;
    let xhat = xc.broadcast_mul(&r)?;
    let g = dyc.broadcast_mul(&weight.to_dtype(ct)?)?;
    let mean_gx = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
    let dx = (g - xhat.broadcast_mul(&mean_gx)?)?.broadcast_mul(&r)?;
    let dw = (dyc * xhat)?.reshape(((), h))?.sum(0)?;
    Ok((dx.to_dtype(x.dtype())?, dw.to_dtype(weight.dtype())?))
}
