//! SlimPipe: sliced and interleaved, keeping `n·v + 2(p−1−r)` units in flight on stage `r`
//! (forward while fewer are in flight, else backward).
//!
//! Interleaved cycle order: for each micro-batch, for cycle `c = 0..n/g−1`, for chunk
//! `q = 0..v−1`, the forwards of slices `c·g .. c·g+g−1` on chunk `q`; the backward walks each
//! micro-batch's sequence in reverse. `g` is the smallest divisor of `n` that is `≥ p` unless
//! given; with `v > 1` it must divide `n` and be `≥ p` (so a slice has passed all `p` stages of
//! chunk `q` before chunk `q+1` needs it), which requires `n ≥ p`. SlimPipe's experiments use one
//! layer per chunk. Bubble `(p−1)/(n·v·m+p−1)` with equal units and `B = 2F`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{slimpipe, validate};
//! let schedule = slimpipe(2, 2, 4, 2, None).unwrap(); // p = 2, m = 2, n = 4, v = 2
//! assert_eq!(schedule.config.group, Some(2)); // the smallest divisor of n that is ≥ p
//! assert!(validate(&schedule).is_empty());
//! assert_eq!(schedule.max_in_flight(), vec![10, 8]); // n·v + 2(p−1−r)
//! ```

use crate::action::Unit;
use crate::error::{Result, ScheduleError};
use crate::gen::core::{build_in_flight, check_size, BackwardStyle};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// SlimPipe over `p` stages, `m` micro-batches, `n` slices, `v` chunks, cycle group `g`.
pub fn slimpipe(
    stages: u32,
    microbatches: u32,
    slices: u32,
    chunks: u32,
    group: Option<u32>,
) -> Result<Schedule> {
    let mut config = ScheduleConfig::new(ScheduleKind::SlimPipe, stages, microbatches)
        .with_slices(slices)
        .with_chunks(chunks);
    config.group = group;
    config.check_positive()?;
    let g = resolve_group(stages, slices, chunks, group)?;
    config.group = Some(g);
    check_size(&config)?;
    let mut forwards = Vec::new();
    let mut backwards = Vec::new();
    for mb in 0..microbatches {
        let mut seq = Vec::with_capacity((slices * chunks) as usize);
        for cycle in 0..slices / g {
            for q in 0..chunks {
                seq.extend((cycle * g..(cycle + 1) * g).map(|s| Unit::new(mb, s, q)));
            }
        }
        forwards.extend_from_slice(&seq);
        backwards.extend(seq.into_iter().rev());
    }
    let target = |r: u32| (slices * chunks + 2 * (stages - 1 - r)) as usize;
    build_in_flight(config, &forwards, &backwards, target, BackwardStyle::Full)
}

/// Picks or checks the cycle group size `g`.
fn resolve_group(p: u32, n: u32, v: u32, group: Option<u32>) -> Result<u32> {
    if v > 1 && n < p {
        return Err(ScheduleError::Unsupported {
            kind: "slimpipe",
            what: "slices per sequence (n)",
            value: n,
            valid: format!("interleaved SlimPipe (v = {v}) needs n ≥ p = {p}"),
        });
    }
    let Some(g) = group else {
        // Smallest divisor of n that is ≥ p (n itself qualifies); with v = 1 cycles do not matter.
        return Ok(if v == 1 {
            n
        } else {
            (p..=n).find(|d| n % d == 0).unwrap_or(n)
        });
    };
    let valid_groups = || -> String {
        let lo = if v > 1 { p } else { 1 };
        let ok: Vec<String> = (lo..=n)
            .filter(|d| n % d == 0)
            .map(|d| d.to_string())
            .collect();
        ok.join(", ")
    };
    if n % g != 0 || (v > 1 && g < p) {
        return Err(ScheduleError::Unsupported {
            kind: "slimpipe",
            what: "group size (g)",
            value: g,
            valid: format!(
                "g must divide n = {n}{}; valid: {}",
                if v > 1 {
                    format!(" and be ≥ p = {p}")
                } else {
                    String::new()
                },
                valid_groups()
            ),
        });
    }
    Ok(g)
}
