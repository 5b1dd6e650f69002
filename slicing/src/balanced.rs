//! Compute-balanced slicing (Seq1F1B `uniform_comp`, SPEC §2.2).
//!
//! Walk from the end of the sequence: with `P` the end of the part not yet sliced, solve
//! `C(x, P) = target` for the slice length `x`, round it down to a multiple of `q`, and move `P`
//! back by `x`. The first slice takes what is left. `C` is quadratic in `x`
//! (`a·x² − b·x + c = 0` with `a = per_pair/2`, `b = per_pair·P + per_token`), so the smaller root
//! is exact; we evaluate it as `2c / (b + √(b² − 4ac))`, the same root without the cancellation
//! of `b − √(b² − 4ac)` when attention is small next to the linear terms.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{balanced, CostModel};
//! // Pure attention cost (`T(s) = s²`): later slices see a longer prefix, so they are shorter.
//! let cost = CostModel::fitted(1.0, 0.0, 0.0).unwrap();
//! let plan = balanced(1024, 4, 1, &cost).unwrap();
//! assert_eq!(plan.lengths(), vec![514, 211, 162, 137]);
//! // Costs within 2 % of each other (uniform 256-token slices: the last costs 7× the first).
//! assert!(plan.max_min_cost_ratio() < 1.02);
//! ```

use crate::cost::CostModel;
use crate::error::{Result, SlicingError};
use crate::plan::{SliceMethod, SlicePlan};
use crate::uniform::{check_request, plan_from_lengths};

/// Length `x` of the slice ending at `end` whose forward cost is `target`; `None` if even
/// `[0, end)` costs less (which the walk in [`balanced`] never asks for).
pub fn length_for_cost(cost: &CostModel, end: u64, target: f64) -> Option<f64> {
    let a = cost.per_pair / 2.0;
    let b = cost.per_pair * end as f64 + cost.per_token;
    let c = target - cost.per_slice;
    if c <= 0.0 {
        return Some(0.0);
    }
    let discriminant = b * b - 4.0 * a * c;
    if discriminant < 0.0 {
        return None;
    }
    Some(2.0 * c / (b + discriminant.sqrt()))
}

/// Cuts `seq_len` tokens into `slices` slices of equal forward cost under `cost`, every slice but
/// the first a multiple of `multiple` (the TP size when sequence parallelism is on, else 1).
pub fn balanced(seq_len: u64, slices: usize, multiple: u64, cost: &CostModel) -> Result<SlicePlan> {
    check_request(seq_len, slices, multiple)?;
    let fixed = slices as f64 * cost.per_slice;
    let target = (cost.sequence(seq_len) - cost.per_slice + fixed) / slices as f64;
    let mut lengths = vec![0u64; slices];
    let mut end = seq_len;
    for index in (1..slices).rev() {
        let exact = length_for_cost(cost, end, target).unwrap_or(end as f64);
        // Never take so much that an earlier slice would be left without a token.
        let room = end.saturating_sub(index as u64);
        let rounded = (exact.min(room as f64) / multiple as f64).floor() as u64 * multiple;
        if rounded == 0 {
            return Err(SlicingError::EmptySliceAfterRounding {
                multiple,
                slice: index,
                unrounded: exact,
                largest_valid: largest_working_multiple(seq_len, slices, cost, multiple),
            });
        }
        lengths[index] = rounded;
        end -= rounded;
    }
    lengths[0] = end;
    Ok(plan_from_lengths(
        SliceMethod::Balanced,
        seq_len,
        multiple,
        &lengths,
        cost,
    ))
}

/// The largest multiple below `failed` for which [`balanced`] leaves no slice empty (0 if none).
fn largest_working_multiple(seq_len: u64, slices: usize, cost: &CostModel, failed: u64) -> u64 {
    let mut q = failed.saturating_sub(1).min(seq_len / slices as u64);
    while q > 0 {
        if balanced(seq_len, slices, q, cost).is_ok() {
            return q;
        }
        q /= 2;
    }
    0
}
