//! Group-interleaved schedule (PipeOffload "GIS"): blocks of `g` consecutive micro-batches; per
//! block, forwards chunk `0..v−1` (each chunk over the whole block), backwards in reverse chunk
//! order as `I` then `W` back to back; repeated `⌈m/g⌉` times (the last block may be short).
//!
//! Stage `r` keeps `(v−1)·g + p − r` units in flight, so device 0 peaks at `p + (v−1)·g`
//! chunk-micro-batches (SPEC §5.1) instead of interleaved 1F1B's `p·v + p − 1`: a small `g` trades
//! bubble for memory. `g` defaults to `min(p, m)`.
//!
//! Constraint (ours, derived): with `v ≥ 2`, every block — the last, short one too — must hold at
//! least `⌈(p−1)/2⌉` micro-batches. Stage 0's forward of chunk `c+1` waits for stage `p−1`'s
//! forward of chunk `c`, which stage `p−1` reaches only after backwards that wait on stage 0's
//! backwards of the previous block; the chain closes into a deadlock unless the in-flight gap
//! between the two ends, `p−1`, is at most two block sizes. Interleaved 1F1B escapes it with a
//! warm-up of `2(p−r−1)`, paying `p−1` more units of memory on stage 0.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{gis, validate};
//! // 4 stages, 4 micro-batches, 2 chunks, blocks of g = 2 micro-batches.
//! let schedule = gis(4, 4, 2, Some(2)).unwrap();
//! assert!(validate(&schedule).is_empty());
//! // Stage r keeps (v−1)·g + p − r units in flight: 6 on stage 0 instead of interleaved's 11.
//! assert_eq!(schedule.max_in_flight(), vec![6, 5, 4, 3]);
//! assert_eq!(gis(4, 8, 2, None).unwrap().config.group, Some(4)); // default g = min(p, m)
//! ```

use crate::error::{Result, ScheduleError};
use crate::gen::core::{
    build_in_flight, check_size, group_interleave, sequence_order, BackwardStyle,
};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// GIS over `p` stages, `m` micro-batches, `v` chunks per stage and blocks of `g` micro-batches.
pub fn gis(stages: u32, microbatches: u32, chunks: u32, group: Option<u32>) -> Result<Schedule> {
    let mut config =
        ScheduleConfig::new(ScheduleKind::Gis, stages, microbatches).with_chunks(chunks);
    config.group = group;
    config.check_positive()?;
    let g = group.unwrap_or(stages.min(microbatches));
    check_group(stages, microbatches, chunks, g)?;
    config.group = Some(g);
    check_size(&config)?;
    let items = sequence_order(microbatches, 1);
    let forwards = group_interleave(&items, g as usize, chunks, false);
    let backwards = group_interleave(&items, g as usize, chunks, true);
    let target = |r: u32| ((chunks - 1) * g + stages - r) as usize;
    build_in_flight(config, &forwards, &backwards, target, BackwardStyle::Split)
}

/// Checks `g` against `m` and, for `v ≥ 2`, the smallest deadlock-free block (module docs).
fn check_group(p: u32, m: u32, v: u32, g: u32) -> Result<()> {
    let min_block = if v > 1 {
        p.saturating_sub(1).div_ceil(2).max(1)
    } else {
        1
    };
    let last = if m % g == 0 { g } else { m % g };
    if g <= m && last >= min_block {
        return Ok(());
    }
    let valid: Vec<String> = (min_block..=m)
        .filter(|&x| m % x == 0 || m % x >= min_block)
        .map(|x| x.to_string())
        .collect();
    let valid = if valid.is_empty() {
        format!("none for m = {m}: use m ≥ {min_block}")
    } else {
        valid.join(", ")
    };
    Err(ScheduleError::Unsupported {
        kind: "gis",
        what: "group size (g)",
        value: g,
        valid: format!(
            "blocks of g micro-batches (m = {m}) must each hold {min_block}..={m}, \
             the last block included, with p = {p}, v = {v}; valid g: {valid}"
        ),
    })
}
