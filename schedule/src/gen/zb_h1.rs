//! Zero-bubble ZB-H1 (Qi et al.): the backward is split into the input gradient `I` (on the
//! critical path) and the weight gradient `W` (free to move). Stage `r` runs 1F1B's warm-up of
//! `min(p−r−1, m)` forwards, then `F I` pairs where stage `r` holds its first `r` weight gradients
//! back (`F I W` afterwards), then the remaining `I W`, then the held-back `W`s, which fill the
//! cool-down bubble.
//!
//! Counting a unit in flight until its `W`, every stage peaks at `min(p, m)` units — 1F1B's peak —
//! and with `T_F = T_I = T_W` each stage idles `(p−1)·T_F` instead of 1F1B's `3(p−1)·T_F`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{simulate, zb_h1, P2p, UnitCosts};
//! let schedule = zb_h1(4, 8).unwrap();
//! assert_eq!(schedule.max_in_flight(), vec![4, 4, 4, 4]); // 1F1B's peak, min(p, m)
//! // F = I = W = 1: each stage idles (p−1) = 3 instead of 1F1B's 9.
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! assert!(sim.stages.iter().all(|s| s.idle == 3.0));
//! assert_eq!(sim.makespan, 27.0);
//! ```

use std::collections::VecDeque;

use crate::action::{Action, Op, Unit};
use crate::error::Result;
use crate::gen::core::check_size;
use crate::ids::Stage;
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// ZB-H1 over `p` stages and `m` micro-batches.
pub fn zb_h1(stages: u32, microbatches: u32) -> Result<Schedule> {
    let config = ScheduleConfig::new(ScheduleKind::ZbH1, stages, microbatches);
    config.check_positive()?;
    check_size(&config)?;
    let actions = (0..stages)
        .map(|r| program(stages, microbatches, r))
        .collect();
    Ok(Schedule {
        config,
        lowered: false,
        actions,
        slice_counts: None,
    })
}

fn program(p: u32, m: u32, r: u32) -> Vec<Action> {
    let stage = Stage(r);
    let act = |mb: u32, op| Action::new(stage, Unit::new(mb, 0, 0), op);
    let warmup = (p - r - 1).min(m);
    let mut out: Vec<Action> = (0..warmup).map(|mb| act(mb, Op::Forward)).collect();
    let mut pending_w = VecDeque::new();
    for k in 0..m - warmup {
        out.push(act(warmup + k, Op::Forward));
        out.push(act(k, Op::BackwardInput));
        pending_w.push_back(k);
        // Stage r delays its weight gradients by r steps: the later the stage, the longer its
        // cool-down bubble, which the held-back Ws then fill.
        if k >= r {
            if let Some(w) = pending_w.pop_front() {
                out.push(act(w, Op::BackwardWeight));
            }
        }
    }
    for k in m - warmup..m {
        out.push(act(k, Op::BackwardInput));
        pending_w.push_back(k);
        if let Some(w) = pending_w.pop_front() {
            out.push(act(w, Op::BackwardWeight));
        }
    }
    out.extend(pending_w.into_iter().map(|w| act(w, Op::BackwardWeight)));
    out
}
