//! Elastic pipelines (InfiniPipe, SPEC §3): 1F1B over heterogeneous micro-batches, and the DP
//! that splits one iteration's sequences into several such pipelines.
//!
//! A micro-batch here is one *sequence group* of the chunker (`seqpipe_slicing::chunk`): a long
//! sequence's chunks (its split slices, then its hybrid tail) or one batched chunk. Micro-batch
//! `mb` therefore has its own slice count `counts[mb]`; a slice is one chunk. Forwards go
//! micro-batch-major with slices ascending, backwards LIFO within a micro-batch and FIFO across,
//! exactly Seq1F1B's orders, and stage `r` keeps `p − r − 1 + N` units in flight with `N` the
//! largest slice count: SPEC §5.2's window `d_p − p + N_split` (1-based `p`). Micro-batches run
//! **longest first** — a 1-chunk micro-batch before a 3-chunk one would stall the steady phase
//! while the 3-chunk one's forwards fill the window — so [`elastic`] sorts them and reports the
//! order.
//!
//! Representation: the schedule's configuration is Seq1F1B with `n = N`; micro-batches with
//! fewer slices simply have fewer units. [`crate::validate_ragged`] checks it against the true
//! counts, which [`ElasticSchedule`] carries; the simulator needs nothing extra (its tables are
//! sized by `N`, a superset).
//!
//! Several pipelines per iteration: with the sequences in longest-first order, [`group_pipelines`]
//! finds the contiguous split minimising `Σ_groups cost(group)` by the SPEC's DP
//! `dp[i+1] = min_k dp[k] + cost(k..i+1)`; the caller's cost includes the per-pipeline fill
//! `δ ≈ (p−1)·mean chunk time` and the recomputation a group needs to fit memory (`None` when it
//! cannot fit at all). Pipelines run one after another with gradient accumulation.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{elastic, group_pipelines};
//! // Three sequence groups of 1, 3 and 2 chunks on 2 stages: run longest first.
//! let pipeline = elastic(2, &[1, 3, 2]).unwrap();
//! assert_eq!(pipeline.order, vec![1, 2, 0]);
//! assert_eq!(pipeline.slice_counts, vec![3, 2, 1]);
//! assert!(pipeline.validate().is_empty());
//! // Split 4 sequences into pipelines costing 3 + len² each: two pairs (5 + 5) beat the rest.
//! let split = group_pipelines(4, None, |r| Some(3.0 + (r.len() * r.len()) as f64)).unwrap();
//! assert_eq!((split.groups, split.cost), (vec![0..2, 2..4], 14.0));
//! ```

use std::ops::Range;

use crate::action::Unit;
use crate::error::{positive, Result, ScheduleError};
use crate::gen::core::{build_in_flight, check_size, BackwardStyle};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};
use crate::validate::{validate_ragged, Violation};

/// An elastic 1F1B pipeline: the schedule plus what its configuration cannot say.
#[derive(Debug, Clone, PartialEq)]
pub struct ElasticSchedule {
    /// The schedule (Seq1F1B configuration with `n` = the largest slice count).
    pub schedule: Schedule,
    /// Slices of each schedule micro-batch, non-increasing.
    pub slice_counts: Vec<u32>,
    /// `order[mb]` = index, in the caller's list, of the group run as micro-batch `mb`.
    pub order: Vec<usize>,
}

impl ElasticSchedule {
    /// Every rule of [`crate::validate`], against the true per-micro-batch slice counts.
    pub fn validate(&self) -> Vec<Violation> {
        validate_ragged(&self.schedule, &self.slice_counts)
    }

    /// The same pipeline with sends and receives inserted ([`crate::lower`]).
    pub fn lowered(&self) -> Result<ElasticSchedule> {
        Ok(ElasticSchedule {
            schedule: crate::lower::lower(&self.schedule)?,
            ..self.clone()
        })
    }
}

/// Indices of `counts` longest first (ties keep the caller's order).
pub fn longest_first(counts: &[u32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
    order
}

/// Elastic 1F1B over `p` stages for groups of `counts[i]` chunks each (see the module docs).
pub fn elastic(stages: u32, counts: &[u32]) -> Result<ElasticSchedule> {
    positive("pipeline stages (p)", stages)?;
    positive("micro-batches (m)", counts.len() as u32)?;
    for &c in counts {
        positive("chunks of a sequence group", c)?;
    }
    let order = longest_first(counts);
    let slice_counts: Vec<u32> = order.iter().map(|&i| counts[i]).collect();
    let widest = slice_counts[0];
    let config =
        ScheduleConfig::new(ScheduleKind::Seq1F1B, stages, counts.len() as u32).with_slices(widest);
    check_size(&config)?;
    let mut forwards = Vec::new();
    let mut backwards = Vec::new();
    for (mb, &n) in slice_counts.iter().enumerate() {
        let mb = mb as u32;
        forwards.extend((0..n).map(|s| Unit::new(mb, s, 0)));
        backwards.extend((0..n).rev().map(|s| Unit::new(mb, s, 0)));
    }
    let target = |r: u32| (stages - r - 1 + widest) as usize;
    let mut schedule = build_in_flight(config, &forwards, &backwards, target, BackwardStyle::Full)?;
    // The schedule itself says which micro-batches have fewer than `n` slices, so that it
    // validates, lowers and runs as it is.
    schedule.slice_counts = Some(slice_counts.clone());
    Ok(ElasticSchedule {
        schedule,
        slice_counts,
        order,
    })
}

/// A split of `0..items` into consecutive pipelines and its total cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    /// Consecutive ranges covering `0..items`, in order.
    pub groups: Vec<Range<usize>>,
    /// `Σ cost(group)`.
    pub cost: f64,
}

/// The DP of SPEC §3: the split of `0..items` into consecutive groups with the least total
/// `cost`; `cost(range)` is `None` for a group that cannot run (e.g. does not fit memory), and a
/// group that cannot run must stay so when items are added in front of it (true of memory with
/// the items longest first); the DP relies on this to stop early.
/// `max_group` bounds group sizes (`None`: no bound) to cap the `O(items²)` cost calls.
pub fn group_pipelines(
    items: usize,
    max_group: Option<usize>,
    cost: impl FnMut(Range<usize>) -> Option<f64>,
) -> Result<Grouping> {
    group_pipelines_bounded(items, max_group, cost, |_| f64::NEG_INFINITY)
}

/// [`group_pipelines`] with a lower bound of each group's cost: a group whose bound cannot
/// beat the best split found so far is not priced. The split and its cost are the same as
/// without the bound (a group priced at or above the best so far is never chosen); only the
/// cost calls are fewer. `lower_bound(range)` must not exceed `cost(range)` where that runs.
pub fn group_pipelines_bounded(
    items: usize,
    max_group: Option<usize>,
    mut cost: impl FnMut(Range<usize>) -> Option<f64>,
    mut lower_bound: impl FnMut(Range<usize>) -> f64,
) -> Result<Grouping> {
    positive("sequences to group", items as u32)?;
    let widest = max_group.unwrap_or(items).max(1);
    // best[i] = (least cost of 0..i, start of its last group).
    let mut best: Vec<(f64, usize)> = vec![(f64::INFINITY, 0); items + 1];
    best[0] = (0.0, 0);
    for end in 1..=items {
        // Longest group last: once `start..end` cannot run, no longer group ending at `end`
        // can (it holds more, and longer, sequences), so the scan stops there.
        for start in (end.saturating_sub(widest)..end).rev() {
            if best[start].0 + lower_bound(start..end) >= best[end].0 {
                continue;
            }
            let Some(c) = cost(start..end).filter(|c| c.is_finite()) else {
                break;
            };
            let total = best[start].0 + c;
            if total < best[end].0 {
                best[end] = (total, start);
            }
        }
        if !best[end].0.is_finite() {
            return Err(ScheduleError::NoFeasibleGrouping { item: end - 1 });
        }
    }
    let mut groups = Vec::new();
    let mut end = items;
    while end > 0 {
        let start = best[end].1;
        groups.push(start..end);
        end = start;
    }
    groups.reverse();
    Ok(Grouping {
        groups,
        cost: best[items].0,
    })
}
