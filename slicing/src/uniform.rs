//! Uniform slicing (SlimPipe): `n` slices of (nearly) equal length.
//!
//! Two ways to deal with a length that does not divide evenly:
//! - [`Padding::None`]: slice lengths are multiples of `q` and differ by at most one `q`; the
//!   first slice also takes the `S mod q` leftover tokens. Extra units go to the earliest slices,
//!   whose attention is cheapest.
//! - [`Padding::ToMultiple`]: SlimPipe's rule: the slice length is `⌈S/n⌉` rounded up to a
//!   multiple of `q` and the sequence is padded at the end to `n` such slices.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{uniform, CostModel, Padding};
//! let cost = CostModel::fitted(0.0, 1.0, 0.0).unwrap();
//! // Without padding, lengths are multiples of 2 and the extra units go to the earliest slices.
//! let plan = uniform(10, 3, 2, Padding::None, &cost).unwrap();
//! assert_eq!(plan.lengths(), vec![4, 4, 2]);
//! // SlimPipe's rule: equal slices of ⌈10/3⌉ = 4 tokens, 2 tokens of padding at the end.
//! let padded = uniform(10, 3, 1, Padding::ToMultiple, &cost).unwrap();
//! assert_eq!((padded.lengths(), padded.padding()), (vec![4, 4, 4], 2));
//! ```

use serde::{Deserialize, Serialize};

use crate::cost::CostModel;
use crate::error::{Result, SlicingError};
use crate::plan::{Slice, SliceMethod, SlicePlan};

/// What to do when the sequence does not split into equal multiples of `q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Unequal by at most one unit of `q`; no padding.
    #[default]
    None,
    /// Equal slices, padding appended to the end of the sequence.
    ToMultiple,
}

/// Checks the parts of a slicing request every slicer shares.
pub(crate) fn check_request(seq_len: u64, slices: usize, multiple: u64) -> Result<()> {
    if seq_len == 0 {
        return Err(SlicingError::NotPositive {
            what: "sequence length",
            value: seq_len.to_string(),
        });
    }
    if slices == 0 {
        return Err(SlicingError::NotPositive {
            what: "number of slices",
            value: slices.to_string(),
        });
    }
    if multiple == 0 {
        return Err(SlicingError::NotPositive {
            what: "rounding multiple",
            value: multiple.to_string(),
        });
    }
    if slices as u64 > seq_len {
        return Err(SlicingError::TooManySlices {
            slices,
            tokens: seq_len,
        });
    }
    Ok(())
}

/// Builds a plan from slice lengths, first to last.
pub(crate) fn plan_from_lengths(
    method: SliceMethod,
    seq_len: u64,
    multiple: u64,
    lengths: &[u64],
    cost: &CostModel,
) -> SlicePlan {
    let mut start = 0;
    let slices = lengths
        .iter()
        .enumerate()
        .map(|(index, &len)| {
            let slice = Slice {
                index,
                start,
                end: start + len,
                cost: cost.forward(start, start + len),
            };
            start += len;
            slice
        })
        .collect();
    SlicePlan {
        method,
        seq_len,
        padded_len: start,
        multiple,
        slices,
    }
}

/// Cuts `seq_len` tokens into `slices` uniform slices whose lengths are multiples of `multiple`.
pub fn uniform(
    seq_len: u64,
    slices: usize,
    multiple: u64,
    padding: Padding,
    cost: &CostModel,
) -> Result<SlicePlan> {
    check_request(seq_len, slices, multiple)?;
    let n = slices as u64;
    let lengths = match padding {
        Padding::None => unpadded_lengths(seq_len, n, multiple)?,
        Padding::ToMultiple => vec![padded_length(seq_len, n, multiple)?; slices],
    };
    Ok(plan_from_lengths(
        SliceMethod::Uniform,
        seq_len,
        multiple,
        &lengths,
        cost,
    ))
}

fn unpadded_lengths(seq_len: u64, n: u64, multiple: u64) -> Result<Vec<u64>> {
    let units = seq_len / multiple;
    let leftover = seq_len % multiple;
    let (base, extra) = (units / n, units % n);
    let lengths: Vec<u64> = (0..n)
        .map(|i| (base + u64::from(i < extra)) * multiple + if i == 0 { leftover } else { 0 })
        .collect();
    if let Some(empty) = lengths.iter().position(|&l| l == 0) {
        return Err(SlicingError::EmptySliceAfterRounding {
            multiple,
            slice: empty,
            unrounded: seq_len as f64 / n as f64,
            largest_valid: seq_len / n,
        });
    }
    Ok(lengths)
}

fn round_up(x: u64, multiple: u64) -> u64 {
    x.div_ceil(multiple) * multiple
}

fn padded_length(seq_len: u64, n: u64, multiple: u64) -> Result<u64> {
    let even = seq_len.div_ceil(n);
    // The last slice must still hold a real token: (n-1) full slices must not cover the sequence.
    let works = |q: u64| (n - 1) * round_up(even, q) < seq_len;
    let len = round_up(even, multiple);
    if works(multiple) {
        return Ok(len);
    }
    let largest_valid = (1..multiple.min(even + 1))
        .rev()
        .find(|&q| works(q))
        .unwrap_or(0);
    Err(SlicingError::PaddingOnlySlice {
        tokens: seq_len,
        slices: n as usize,
        slice_len: len,
        multiple,
        largest_valid,
    })
}
