//! What most generators share: unit orders and the in-flight-target loop of the 1F1B family.
//!
//! Every 1F1B-like schedule (1F1B, Seq1F1B, interleaved, Seq1F1B-I, SlimPipe, GIS, even GPipe) is
//! one forward order, one backward order — the same on every stage — and a per-stage target of
//! units in flight: run the next forward while fewer than `target` units are in flight, otherwise
//! the next backward. A warm-up of `w` forwards followed by 1F1B pairs is exactly target `w + 1`,
//! so the SPEC §3 warm-up formulas translate one to one.

use crate::action::{Action, Op, Unit};
use crate::error::{Result, ScheduleError};
use crate::ids::Stage;
use crate::schedule::{Schedule, ScheduleConfig};

/// Refuse configurations whose lowered schedule would exceed this many actions (memory guard).
pub const MAX_ACTIONS: u64 = 20_000_000;

/// How a backward is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackwardStyle {
    /// One full backward (`B`).
    Full,
    /// Input gradient then weight gradient, back to back (`I`, `W`).
    Split,
}

/// Fails if the lowered schedule would be unreasonably large.
pub(crate) fn check_size(config: &ScheduleConfig) -> Result<()> {
    // Per unit and stage: forward, up to two backward pieces, and up to four sends/receives.
    let units = u64::from(config.stages)
        * u64::from(config.microbatches)
        * u64::from(config.slices)
        * u64::from(config.chunks);
    let actions = units.saturating_mul(7);
    if actions > MAX_ACTIONS {
        return Err(ScheduleError::TooLarge {
            actions,
            limit: MAX_ACTIONS,
        });
    }
    Ok(())
}

/// `(micro-batch, slice)` pairs micro-batch-major, slices ascending: the order sequences enter.
pub(crate) fn sequence_order(m: u32, n: u32) -> Vec<(u32, u32)> {
    (0..m).flat_map(|mb| (0..n).map(move |s| (mb, s))).collect()
}

/// `(micro-batch, slice)` pairs micro-batch-major, slices descending: the LIFO backward order.
pub(crate) fn lifo_order(m: u32, n: u32) -> Vec<(u32, u32)> {
    (0..m)
        .flat_map(|mb| (0..n).rev().map(move |s| (mb, s)))
        .collect()
}

/// Megatron-style grouping: for each run of `group` consecutive items, visit every chunk (in
/// ascending order, or descending for backward) and, per chunk, the run's items in order.
pub(crate) fn group_interleave(
    items: &[(u32, u32)],
    group: usize,
    chunks: u32,
    descending_chunks: bool,
) -> Vec<Unit> {
    let mut out = Vec::with_capacity(items.len() * chunks as usize);
    for run in items.chunks(group.max(1)) {
        let chunk_order: Vec<u32> = if descending_chunks {
            (0..chunks).rev().collect()
        } else {
            (0..chunks).collect()
        };
        for c in chunk_order {
            out.extend(run.iter().map(|&(mb, s)| Unit::new(mb, s, c)));
        }
    }
    out
}

/// One stage's program from shared orders and its in-flight target.
pub(crate) fn in_flight_program(
    config: &ScheduleConfig,
    stage: u32,
    forwards: &[Unit],
    backwards: &[Unit],
    target: usize,
    style: BackwardStyle,
) -> Result<Vec<Action>> {
    let stage_id = Stage(stage);
    let (n, v) = (config.slices as usize, config.chunks as usize);
    let dense = |u: &Unit| (u.mb.index() * n + u.slice.index()) * v + u.chunk.index();
    let mut forwarded = vec![false; config.microbatches as usize * n * v];
    let mut out = Vec::with_capacity(forwards.len() * 3);
    let (mut fi, mut bi, mut in_flight) = (0, 0, 0usize);
    while bi < backwards.len() {
        if fi < forwards.len() && in_flight < target.max(1) {
            let u = forwards[fi];
            forwarded[dense(&u)] = true;
            out.push(Action::new(stage_id, u, Op::Forward));
            fi += 1;
            in_flight += 1;
            continue;
        }
        let u = backwards[bi];
        if !forwarded[dense(&u)] {
            return Err(ScheduleError::Inconsistent {
                kind: config.kind.name(),
                stage,
                unit: format!("{u:?}"),
            });
        }
        match style {
            BackwardStyle::Full => out.push(Action::new(stage_id, u, Op::Backward)),
            BackwardStyle::Split => {
                out.push(Action::new(stage_id, u, Op::BackwardInput));
                out.push(Action::new(stage_id, u, Op::BackwardWeight));
            }
        }
        bi += 1;
        in_flight -= 1;
    }
    Ok(out)
}

/// Builds a schedule whose stages all follow the same orders, with target `target(r)` on stage `r`.
pub(crate) fn build_in_flight(
    config: ScheduleConfig,
    forwards: &[Unit],
    backwards: &[Unit],
    target: impl Fn(u32) -> usize,
    style: BackwardStyle,
) -> Result<Schedule> {
    let actions = (0..config.stages)
        .map(|r| in_flight_program(&config, r, forwards, backwards, target(r), style))
        .collect::<Result<Vec<_>>>()?;
    Ok(Schedule {
        config,
        lowered: false,
        actions,
        slice_counts: None,
    })
}

/// Rejects a parameter a kind does not take (anything but 1).
pub(crate) fn require_one(
    kind: &'static str,
    what: &'static str,
    value: u32,
    instead: &str,
) -> Result<()> {
    if value == 1 {
        return Ok(());
    }
    Err(ScheduleError::Unsupported {
        kind,
        what,
        value,
        valid: format!("{kind} only takes {what} = 1; {instead}"),
    })
}
