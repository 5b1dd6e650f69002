//! SwiGLU gating of a Llama FFN: `out = SiLU(gate) · up` with `SiLU(g) = g·σ(g)`.
//!
//! Backward, with `σ = σ(gate)`: `dup = d·SiLU(gate)`, `dgate = d·up·σ·(1 + gate·(1 − σ))`.
//! Both gradients are recomputed from `gate` and `up` (the saved activations) rather than from
//! the output, which is cheaper to keep and cannot lose precision through a division. On CPU,
//! f32 and f64 run as one fused pass each (`fused_cpu`); the candle ops below serve the rest.

use candle_core::{DType, Tensor};

use crate::check::{compute_dtype, same_dtype, same_shape};
use crate::error::Result;

/// `σ(g) = 1/(1 + e^(−g))`, built from elementary ops; saturates to 0 or 1 without NaN.
fn sigmoid(g: &Tensor) -> Result<Tensor> {
    Ok((g.neg()?.exp()? + 1.0)?.recip()?)
}

fn check(op: &'static str, gate: &Tensor, up: &Tensor) -> Result<DType> {
    let ct = compute_dtype(op, "gate", gate)?;
    same_dtype(op, "up", up, gate.dtype())?;
    same_shape(op, ("gate", gate), ("up", up))?;
    Ok(ct)
}

/// `SiLU(gate) · up`, elementwise; `gate` and `up` have the same shape and dtype.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu_forward";
    let ct = check(OP, gate, up)?;
    #[cfg(feature = "cuda")]
    if let Some(out) = crate::cuda::swiglu_forward(gate, up)? {
        return Ok(out);
    }
    if let Some(out) = crate::fused_cpu::swiglu_forward(gate, up)? {
        return Ok(out);
    }
    let g = gate.to_dtype(ct)?;
    let out = ((&g * sigmoid(&g)?)? * up.to_dtype(ct)?)?;
    Ok(out.to_dtype(gate.dtype())?)
}

/// Gradients of [`swiglu_forward`]: returns `(dgate, dup)` for the output gradient `d_out`.
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, d_out: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "swiglu_backward";
    let ct = check(OP, gate, up)?;
    same_dtype(OP, "d_out", d_out, gate.dtype())?;
    same_shape(OP, ("gate", gate), ("d_out", d_out))?;
    #[cfg(feature = "cuda")]
    if let Some(out) = crate::cuda::swiglu_backward(gate, up, d_out)? {
        return Ok(out);
    }
    if let Some(out) = crate::fused_cpu::swiglu_backward(gate, up, d_out)? {
        return Ok(out);
    }
    let (g, u, d) = (gate.to_dtype(ct)?, up.to_dtype(ct)?, d_out.to_dtype(ct)?);
    let s = sigmoid(&g)?;
    let silu = (&g * &s)?;
    let dup = (&d * &silu)?;
    // σ·(1 + g·(1 − σ)) = σ + SiLU·(1 − σ).
    let dsilu = (&s + (silu * (1.0 - &s)?)?)?;
    let dgate = ((d * u)? * dsilu)?;
    Ok((dgate.to_dtype(gate.dtype())?, dup.to_dtype(gate.dtype())?))
}
