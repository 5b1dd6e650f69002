//! Linear layer as separate functions: forward, input gradient (B) and weight gradient (W), plus
//! the optional bias's forward and gradient. Zero-bubble schedules run B as soon as the output
//! gradient arrives and defer W to fill pipeline bubbles, so the gradients must not be tied to one
//! call. A bias never enters the input gradient, so B is the same with or without one.
//!
//! Shapes: `x [.., in]`, `w [out, in]` (PyTorch/HF layout), `y [.., out]`. bf16 is computed in f32
//! and returned as bf16.

use candle_core::{DType, Tensor};

use crate::check::{compute_dtype, dims, last_dim, same_dtype};
use crate::error::{KernelError, Result};

/// Flattens `[.., n]` to `[rows, n]` (copying only when the layout is not contiguous).
fn rows(t: &Tensor, ct: DType) -> Result<Tensor> {
    let n = *t.dims().last().unwrap_or(&0);
    let r = t.elem_count().checked_div(n).unwrap_or(0);
    Ok(t.to_dtype(ct)?.contiguous()?.reshape((r, n))?)
}

/// The shape `[.., n]` with the last dim of `t` replaced by `n`.
fn with_last(t: &Tensor, n: usize) -> Vec<usize> {
    let mut d = t.dims().to_vec();
    if let Some(last) = d.last_mut() {
        *last = n;
    }
    d
}

/// Checks `w [out, in]` against the last dim of `x` (named `x_name`, which must equal `w_dim`).
fn check_weight(
    op: &'static str,
    x: (&str, &Tensor),
    w: &Tensor,
    w_dim: usize,
) -> Result<(usize, usize)> {
    let wd = dims(op, "w", w, 2, "[out, in]")?;
    let xl = last_dim(op, "x", x.1)?;
    if xl != wd[w_dim] {
        return Err(KernelError::Shape {
            op,
            detail: format!(
                "`{}` {:?} has last dim {xl} but `w` {:?} needs {}",
                x.0,
                x.1.dims(),
                w.dims(),
                wd[w_dim]
            ),
        });
    }
    Ok((wd[0], wd[1]))
}

/// `y = x · wᵀ`: `x [.., in]`, `w [out, in]` → `y [.., out]`.
pub fn linear_forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_forward";
    let ct = compute_dtype(OP, "x", x)?;
    same_dtype(OP, "w", w, x.dtype())?;
    let (out, _) = check_weight(OP, ("x", x), w, 1)?;
    let y = rows(x, ct)?.matmul(&w.to_dtype(ct)?.t()?)?;
    Ok(y.reshape(with_last(x, out))?.to_dtype(x.dtype())?)
}

/// Input gradient `dx = dy · w`: `dy [.., out]`, `w [out, in]` → `dx [.., in]`.
pub fn linear_backward_input(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_input";
    let ct = compute_dtype(OP, "dy", dy)?;
    same_dtype(OP, "w", w, dy.dtype())?;
    let (_, inp) = check_weight(OP, ("dy", dy), w, 0)?;
    let dx = rows(dy, ct)?.matmul(&w.to_dtype(ct)?)?;
    Ok(dx.reshape(with_last(dy, inp))?.to_dtype(dy.dtype())?)
}

/// Weight gradient `dw = dyᵀ · x` summed over all leading dims: `x [.., in]`, `dy [.., out]` →
/// `dw [out, in]`, in the dtype of `x`.
pub fn linear_backward_weight(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_weight";
    let ct = compute_dtype(OP, "x", x)?;
    same_dtype(OP, "dy", dy, x.dtype())?;
    last_dim(OP, "x", x)?;
    last_dim(OP, "dy", dy)?;
    let (xd, dyd) = (x.dims(), dy.dims());
    if xd[..xd.len() - 1] != dyd[..dyd.len() - 1] {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!("`x` {xd:?} and `dy` {dyd:?} must agree in all dims but the last"),
        });
    }
    let dw = rows(dy, ct)?.t()?.matmul(&rows(x, ct)?)?;
    Ok(dw.to_dtype(x.dtype())?)
}

/// Checks a bias `b [out]` against the weight's output width `out`.
fn check_bias(op: &'static str, b: &Tensor, out: usize) -> Result<()> {
    let bd = dims(op, "b", b, 1, "[out]")?;
    if bd[0] != out {
        return Err(KernelError::Shape {
            op,
            detail: format!("`b` {:?} must have the weight's {out} outputs", b.dims()),
        });
    }
    Ok(())
}

/// `y = x · wᵀ + b`: [`linear_forward`] with the bias `b [out]` added to every row (in the
/// compute dtype, then rounded once, as PyTorch's `F.linear` does).
pub fn linear_forward_biased(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_forward_biased";
    let ct = compute_dtype(OP, "x", x)?;
    same_dtype(OP, "b", b, x.dtype())?;
    same_dtype(OP, "w", w, x.dtype())?;
    let (out, _) = check_weight(OP, ("x", x), w, 1)?;
    check_bias(OP, b, out)?;
    let y = rows(x, ct)?
        .matmul(&w.to_dtype(ct)?.t()?)?
        .broadcast_add(&b.to_dtype(ct)?)?;
    Ok(y.reshape(with_last(x, out))?.to_dtype(x.dtype())?)
}

/// Bias gradient `db = Σ dy` over all leading dims: `dy [.., out]` → `db [out]`, in the dtype of
/// `dy` (summed in the compute dtype).
pub fn linear_backward_bias(dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_bias";
    let ct = compute_dtype(OP, "dy", dy)?;
    last_dim(OP, "dy", dy)?;
    Ok(rows(dy, ct)?.sum(0)?.to_dtype(dy.dtype())?)
}
