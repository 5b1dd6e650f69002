//! Merging two attentions of the same queries over disjoint key ranges by log-sum-exp (SPEC §4).
//!
//! If `(out_a, lse_a)` attends to keys `A` and `(out_b, lse_b)` to keys `B`, attention over `A ∪ B`
//! is `lse = log(e^lse_a + e^lse_b)`, `out = e^(lse_a − lse)·out_a + e^(lse_b − lse)·out_b`. SlimPipe
//! uses it to fold the attention a light rank computed for a heavy rank's oldest KV back into the
//! heavy rank's own. Computed around `max(lse_a, lse_b)` so that neither exponential overflows.

use candle_core::Tensor;

use crate::check::{compute_dtype, same_dtype};
use crate::error::{KernelError, Result};

/// Merges two partial attentions: `out_* [.., d]` (same shape and dtype), `lse_* [..]` (f32 or
/// f64, one per query row). Returns (`out` in out_a's dtype, `lse` in the compute dtype).
/// Each partial must have seen at least one key (finite `lse`).
pub fn merge_attention(
    out_a: &Tensor,
    lse_a: &Tensor,
    out_b: &Tensor,
    lse_b: &Tensor,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "merge_attention";
    let ct = compute_dtype(OP, "out_a", out_a)?;
    same_dtype(OP, "out_b", out_b, out_a.dtype())?;
    compute_dtype(OP, "lse_a", lse_a)?;
    compute_dtype(OP, "lse_b", lse_b)?;
    let od = out_a.dims();
    let rows_ok = |l: &Tensor| !od.is_empty() && l.dims() == &od[..od.len() - 1];
    if out_b.dims() != od || !rows_ok(lse_a) || !rows_ok(lse_b) {
        let detail = format!(
            "`out_a` {od:?} and `out_b` {:?} must match, and `lse_a` {:?}, `lse_b` {:?} must be \
             their shape without the last dim",
            out_b.dims(),
            lse_a.dims(),
            lse_b.dims()
        );
        return Err(KernelError::Shape { op: OP, detail });
    }
    let (la, lb) = (lse_a.to_dtype(ct)?, lse_b.to_dtype(ct)?);
    let m = la.maximum(&lb)?;
    let wa = (&la - &m)?.exp()?;
    let wb = (&lb - &m)?.exp()?;
    let sum = (&wa + &wb)?;
    let lse = (m + sum.log()?)?;
    let wa = (wa / &sum)?.unsqueeze(od.len() - 1)?;
    let wb = (wb / &sum)?.unsqueeze(od.len() - 1)?;
    let out =
        (out_a.to_dtype(ct)?.broadcast_mul(&wa)? + out_b.to_dtype(ct)?.broadcast_mul(&wb)?)?;
    Ok((out.to_dtype(out_a.dtype())?, lse))
}
