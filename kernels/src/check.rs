//! Argument checks shared by the ops, and the dtype rule: bf16 and f32 compute in f32, f64 in f64.
//!
//! Doing every check up front, before any candle call, is what lets bad input come back as a
//! [`KernelError`] naming the shapes instead of a candle error from deep inside a block loop.

use candle_core::{DType, Tensor};

use crate::error::{KernelError, Result};

/// The dtypes every op accepts.
const SUPPORTED: &str = "f32, bf16 or f64";

/// The dtype an op computes in for inputs of `dtype`: f32 for f32 and bf16 (bf16 only stores; sums
/// and matmuls accumulate in f32, and candle's CPU matmul has no bf16 kernel), f64 for f64 (the test
/// oracle).
pub(crate) fn compute_dtype(op: &'static str, name: &'static str, t: &Tensor) -> Result<DType> {
    compute_dtype_of(op, name, t.dtype())
}

/// [`compute_dtype`] for a dtype given on its own (e.g. a table built for inputs of that dtype).
pub(crate) fn compute_dtype_of(
    op: &'static str,
    name: &'static str,
    dtype: DType,
) -> Result<DType> {
    match dtype {
        DType::F32 | DType::BF16 => Ok(DType::F32),
        DType::F64 => Ok(DType::F64),
        dtype => Err(KernelError::DType {
            op,
            name,
            dtype,
            expected: SUPPORTED.to_string(),
        }),
    }
}

/// `t` must have exactly `dtype` (the dtype of the op's first argument).
pub(crate) fn same_dtype(
    op: &'static str,
    name: &'static str,
    t: &Tensor,
    dtype: DType,
) -> Result<()> {
    if t.dtype() == dtype {
        Ok(())
    } else {
        Err(KernelError::DType {
            op,
            name,
            dtype: t.dtype(),
            expected: format!("{dtype:?}, the dtype of the op's first input"),
        })
    }
}

/// The dims of `t`, which must have `rank` dims laid out as `layout`.
pub(crate) fn dims<'a>(
    op: &'static str,
    name: &'static str,
    t: &'a Tensor,
    rank: usize,
    layout: &'static str,
) -> Result<&'a [usize]> {
    let d = t.dims();
    if d.len() == rank {
        Ok(d)
    } else {
        Err(KernelError::Rank {
            op,
            name,
            expected: rank,
            layout,
            shape: d.to_vec(),
        })
    }
}

/// `a` and `b` must have the same shape.
pub(crate) fn same_shape(op: &'static str, a: (&str, &Tensor), b: (&str, &Tensor)) -> Result<()> {
    if a.1.dims() == b.1.dims() {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            detail: format!(
                "`{}` {:?} and `{}` {:?} must have the same shape",
                a.0,
                a.1.dims(),
                b.0,
                b.1.dims()
            ),
        })
    }
}

/// A tensor needs at least one dimension (the feature axis) for row-wise ops.
pub(crate) fn last_dim(op: &'static str, name: &'static str, t: &Tensor) -> Result<usize> {
    match t.dims().last() {
        Some(&n) => Ok(n),
        None => Err(KernelError::Rank {
            op,
            name,
            expected: 1,
            layout: "at least [.., features]",
            shape: Vec::new(),
        }),
    }
}

/// A size parameter that must be at least 1.
pub(crate) fn positive(op: &'static str, what: &'static str, value: usize) -> Result<()> {
    if value >= 1 {
        Ok(())
    } else {
        Err(KernelError::Param {
            op,
            what,
            value: value.to_string(),
            valid: "at least 1".to_string(),
        })
    }
}

/// A scalar parameter that must be finite and strictly positive.
pub(crate) fn positive_finite(op: &'static str, what: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(KernelError::Param {
            op,
            what,
            value: value.to_string(),
            valid: "finite and > 0".to_string(),
        })
    }
}
