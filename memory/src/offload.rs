//! The PipeOffload planner (SPEC §5.1): which units go to host, when each transfer runs, and what
//! it costs, over a simulated timeline.
//!
//! - Which: the longest-lived units first (idle time between forward end and backward start);
//!   the knob is a fraction or a count of units, or whole model chunks (`ModelChunks(1)` =
//!   "offload chunk 0").
//! - When: out in the first send slot after the forward; back in the latest receive slot that
//!   ends one backward-duration before the backward starts (or, when the link is booked up, the
//!   first free one after). A unit whose life until then cannot hold both transfers and one slot
//!   on host is skipped: offloading it saves no memory.
//! - Host link: one per stage, time cut into alternating send/receive slots of one unit's transfer
//!   time (`bytes / bandwidth` of the largest chosen unit), one transfer per slot.
//! - Cost: a reload that ends after its backward starts delays that backward by the difference;
//!   a hidden transfer costs nothing. [`with_offload_actions`] puts the plan into the schedule IR
//!   and [`OffloadPlan::cost`] charges the delays when it is simulated again.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{lives_from_spans, plan_offload, spans_from_simulation, OffloadKnob};
//! use seqpipe_memory::{ActivationModel, Parallelism, UnitSizer};
//! use seqpipe_schedule::{one_f_one_b, simulate, P2p, UnitCosts};
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&one_f_one_b(2, 4).unwrap(), |a| costs.cost(a), &P2p::free()).unwrap();
//! let lives = lives_from_spans(&spans_from_simulation(&sim)).unwrap();
//! let shape = seqpipe_slicing::preset("llama-7b").unwrap();
//! let act = ActivationModel::new(shape, Parallelism::new(1, 1, 1).unwrap()).unwrap();
//! let bandwidth = act.bytes_per_token_layer() / 0.25; // a unit's copy takes 0.25 of a forward
//! let slices = vec![(0, 1)];
//! let sizer = UnitSizer { activation: act, layers_per_chunk: 1, slices, per_microbatch: None, stages: 2, chunks: 1 };
//! // Offload the longest-lived unit (one token through one layer) of each stage.
//! let plan = plan_offload(&lives, &sizer, OffloadKnob::Count(1), bandwidth).unwrap();
//! let t = &plan.transfers[..];
//! assert_eq!((t.len(), t[0].stage, t[0].unit.mb), (1, 0, 1)); // stage 0's micro-batch 1
//! assert_eq!((t[0].offload, t[0].reload, t[0].delay), ((2.0, 2.25), (4.75, 5.0), 0.0));
//! assert_eq!(plan.skipped.len(), 1); // stage 1's longest life is too short to gain anything
//! ```

use std::collections::{HashMap, HashSet};

use seqpipe_schedule::{Action, Op, Schedule, Simulation, Stage, Unit};
use serde::{Deserialize, Serialize};

use crate::error::{MemoryError, Result};
use crate::ledger::{MemEvent, MemOp};
use crate::lives::{UnitKey, UnitLife, UnitSizer};

/// How much to offload, per stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum OffloadKnob {
    /// This fraction of each stage's units (rounded down), longest-lived first.
    Fraction(f64),
    /// This many units per stage, longest-lived first.
    Count(usize),
    /// Every unit of model chunks `0..k` (the earliest, longest-lived chunks).
    ModelChunks(u32),
}

/// One planned round trip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    /// Stage.
    pub stage: usize,
    /// Unit.
    pub unit: UnitKey,
    /// Bytes moved each way.
    pub bytes: f64,
    /// Offload `(start, end)`.
    pub offload: (f64, f64),
    /// Reload `(start, end)`.
    pub reload: (f64, f64),
    /// Time the unit's backward waits for the reload (0 when hidden).
    pub delay: f64,
}

/// The plan: transfers and skipped candidates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadPlan {
    /// Planned round trips.
    pub transfers: Vec<Transfer>,
    /// Candidates skipped because their lifespan is too short.
    pub skipped: Vec<(usize, UnitKey)>,
}

fn choose(lives: &[&UnitLife], knob: OffloadKnob) -> Result<Vec<usize>> {
    let mut order: Vec<usize> = (0..lives.len()).collect();
    order.sort_by(|&a, &b| lives[b].lifespan().total_cmp(&lives[a].lifespan()));
    Ok(match knob {
        OffloadKnob::Fraction(f) => {
            if !(0.0..=1.0).contains(&f) {
                return Err(MemoryError::OutOfRange {
                    what: "offload fraction",
                    value: f,
                    range: "[0, 1]",
                });
            }
            let count = (f * lives.len() as f64 + 1e-9).floor() as usize;
            order.truncate(count);
            order
        }
        OffloadKnob::Count(c) => {
            order.truncate(c);
            order
        }
        OffloadKnob::ModelChunks(k) => order
            .into_iter()
            .filter(|&i| lives[i].unit.chunk < k)
            .collect(),
    })
}

/// Plans offloads of `lives` (all stages) with units sized by `sizer`, over a host link of
/// `bandwidth` bytes per time unit of the timeline.
pub fn plan_offload(
    lives: &[UnitLife],
    sizer: &UnitSizer,
    knob: OffloadKnob,
    bandwidth: f64,
) -> Result<OffloadPlan> {
    if bandwidth.is_nan() || bandwidth <= 0.0 {
        return Err(MemoryError::OutOfRange {
            what: "host-link bandwidth",
            value: bandwidth,
            range: "(0, ∞]",
        });
    }
    let stages = lives.iter().map(|l| l.stage + 1).max().unwrap_or(0);
    let mut plan = OffloadPlan {
        transfers: Vec::new(),
        skipped: Vec::new(),
    };
    for stage in 0..stages {
        let mine: Vec<&UnitLife> = lives.iter().filter(|l| l.stage == stage).collect();
        let chosen = choose(&mine, knob)?;
        let bytes: Vec<f64> = chosen
            .iter()
            .map(|&i| sizer.unit_bytes(&mine[i].unit))
            .collect::<Result<_>>()?;
        let slot = bytes.iter().fold(0.0, |a: f64, &b| a.max(b)) / bandwidth;
        plan_stage(&mine, &chosen, &bytes, slot, &mut plan);
    }
    Ok(plan)
}

/// Slot `k` covers `[k·slot, (k+1)·slot)`; even slots send, odd slots receive.
fn plan_stage(
    lives: &[&UnitLife],
    chosen: &[usize],
    bytes: &[f64],
    slot: f64,
    plan: &mut OffloadPlan,
) {
    if slot == 0.0 {
        // Nothing to move or an infinitely fast link: transfers are instantaneous and unordered.
        for (c, &i) in chosen.iter().enumerate() {
            let l = lives[i];
            let back = l.backward.0 - (l.backward.1 - l.backward.0);
            if back <= l.forward.1 {
                plan.skipped.push((l.stage, l.unit));
                continue;
            }
            plan.transfers.push(Transfer {
                stage: l.stage,
                unit: l.unit,
                bytes: bytes[c],
                offload: (l.forward.1, l.forward.1),
                reload: (back, back),
                delay: 0.0,
            });
        }
        return;
    }
    let mut used: HashSet<u64> = HashSet::new();
    let first_free = |used: &HashSet<u64>, from: f64, parity: u64| {
        let mut k = (from / slot).ceil() as u64;
        while k % 2 != parity || used.contains(&k) {
            k += 1;
        }
        k
    };
    // Offloads in forward order so earlier forwards get earlier send slots.
    let mut by_forward: Vec<usize> = (0..chosen.len()).collect();
    by_forward.sort_by(|&a, &b| {
        lives[chosen[a]]
            .forward
            .1
            .total_cmp(&lives[chosen[b]].forward.1)
    });
    let mut out_slot = vec![0u64; chosen.len()];
    for &c in &by_forward {
        let k = first_free(&used, lives[chosen[c]].forward.1, 0);
        used.insert(k);
        out_slot[c] = k;
    }
    // Reloads latest-deadline first, each in the latest free receive slot before its deadline.
    let mut by_deadline = by_forward.clone();
    let deadline = |c: usize| {
        let l = lives[chosen[c]];
        l.backward.0 - (l.backward.1 - l.backward.0)
    };
    by_deadline.sort_by(|&a, &b| deadline(b).total_cmp(&deadline(a)));
    for c in by_deadline {
        let life = lives[chosen[c]];
        // Too short a life: out, one slot on host, back in does not fit before the deadline.
        if deadline(c) - life.forward.1 < 3.0 * slot {
            used.remove(&out_slot[c]);
            plan.skipped.push((life.stage, life.unit));
            continue;
        }
        // The latest free receive slot before the deadline, leaving a gap after the offload (or
        // the unit is never off the device); failing that, the first free one after it, which
        // may delay the backward.
        let earliest = out_slot[c] + 3;
        let latest_end = (deadline(c) / slot).floor().max(0.0) as u64;
        let mut k = latest_end.saturating_sub(1);
        while k >= earliest && (k % 2 != 1 || used.contains(&k)) {
            k -= 1;
        }
        if k < earliest {
            k = earliest.max(latest_end);
            while k % 2 != 1 || used.contains(&k) {
                k += 1;
            }
        }
        used.insert(k);
        let t = |k: u64| k as f64 * slot;
        let reload = (t(k), t(k + 1));
        plan.transfers.push(Transfer {
            stage: life.stage,
            unit: life.unit,
            bytes: bytes[c],
            offload: (t(out_slot[c]), t(out_slot[c] + 1)),
            reload,
            delay: (reload.1 - life.backward.0).max(0.0),
        });
    }
    plan.transfers
        .sort_by(|a, b| a.offload.0.total_cmp(&b.offload.0));
}

impl OffloadPlan {
    /// Ledger events of the plan: bytes leave the device when an offload ends and return when a
    /// reload starts.
    pub fn events(&self) -> Vec<MemEvent> {
        self.transfers
            .iter()
            .flat_map(|t| {
                let name = format!("act {}", t.unit);
                [
                    MemEvent {
                        time: t.offload.1,
                        stage: t.stage,
                        op: MemOp::Offload,
                        unit: name.clone(),
                        bytes: t.bytes,
                    },
                    MemEvent {
                        time: t.reload.0,
                        stage: t.stage,
                        op: MemOp::Reload,
                        unit: name,
                        bytes: t.bytes,
                    },
                ]
            })
            .collect()
    }

    /// Total backward delay per stage.
    pub fn delay_per_stage(&self, stages: usize) -> Vec<f64> {
        let mut d = vec![0.0; stages];
        for t in &self.transfers {
            if let Some(slot) = d.get_mut(t.stage) {
                *slot += t.delay;
            }
        }
        d
    }

    /// A cost function for re-simulating the schedule with [`with_offload_actions`]: offload and
    /// reload actions are free (they run on the copy engine) and each backward that waits for its
    /// reload is charged the wait.
    pub fn cost<'a, F: Fn(&Action) -> f64 + 'a>(&'a self, base: F) -> impl Fn(&Action) -> f64 + 'a {
        let delays: HashMap<(u32, UnitKey), f64> = self
            .transfers
            .iter()
            .map(|t| ((t.stage as u32, t.unit), t.delay))
            .collect();
        move |a: &Action| match a.op {
            Op::Offload | Op::Reload => 0.0,
            Op::Backward | Op::BackwardInput => {
                base(a) + delays.get(&(a.stage.0, key(a))).copied().unwrap_or(0.0)
            }
            _ => base(a),
        }
    }
}

fn key(a: &Action) -> UnitKey {
    UnitKey {
        mb: a.mb.0,
        slice: a.slice.0,
        chunk: a.chunk.0,
    }
}

/// The simulated (lowered) schedule with the plan's actions: `OFFLOAD` right after the unit's
/// forward, `RELOAD` before the first action the simulation started at or after the reload's
/// start (and never after the unit's backward).
pub fn with_offload_actions(sim: &Simulation, plan: &OffloadPlan) -> Schedule {
    let mut actions = Vec::with_capacity(sim.timeline.len());
    for (stage, timed) in sim.timeline.iter().enumerate() {
        let mine: Vec<&Transfer> = plan.transfers.iter().filter(|t| t.stage == stage).collect();
        let mut list = Vec::with_capacity(timed.len() + 2 * mine.len());
        let mut reloaded: HashSet<UnitKey> = HashSet::new();
        for t in timed {
            let a = t.action;
            for tr in &mine {
                let is_backward = a.op.makes_input_grad() && key(&a) == tr.unit;
                if !reloaded.contains(&tr.unit) && (t.start >= tr.reload.0 || is_backward) {
                    reloaded.insert(tr.unit);
                    list.push(reload_action(stage, tr.unit));
                }
            }
            list.push(a);
            if a.op == Op::Forward && mine.iter().any(|tr| tr.unit == key(&a)) {
                list.push(a.with_op(Op::Offload));
            }
        }
        actions.push(list);
    }
    Schedule {
        config: sim.config,
        lowered: true,
        actions,
        slice_counts: sim.slice_counts.clone(),
    }
}

fn reload_action(stage: usize, u: UnitKey) -> Action {
    Action::new(
        Stage(stage as u32),
        Unit::new(u.mb, u.slice, u.chunk),
        Op::Reload,
    )
}
