//! Event simulation of a lowered schedule under the trainer's execution model.
//!
//! Each stage runs its list in order, one action at a time. A send never blocks: its data arrives
//! at the peer `latency + bytes / bandwidth` after the send ends. A receive blocks its stage until
//! the matching data has arrived, then takes its own duration. Links have no contention (each
//! message sees the full bandwidth). Durations come from the caller's cost function, so slices of
//! different length, heterogeneous micro-batches and offload/reload costs all fit.
//!
//! Bubble: a stage's idle time within the makespan (waiting in receives or after its last action),
//! divided by the makespan; overall, the idle time of all stages over `p × makespan`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{one_f_one_b, simulate, MessageBytes, P2p, UnitCosts};
//! let costs = UnitCosts::new(1.0, 2.0);
//! // Every message: latency 0.5 plus 500 kB at 1 MB per time unit, so 1.0 in all.
//! let p2p = P2p::new(0.5, 1e6, MessageBytes::Constant(5e5));
//! let sim = simulate(&one_f_one_b(2, 1).unwrap(), |a| costs.cost(a), &p2p).unwrap();
//! assert_eq!(sim.makespan, 8.0); // F [0, 1), message, F [2, 3), B [3, 5), message, B [6, 8)
//! assert_eq!(sim.timeline[1][0].wait, 2.0); // stage 1 waits in 1RECV_F0
//! assert_eq!((sim.stages[0].busy, sim.stages[0].idle), (3.0, 5.0));
//! ```

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::action::{Action, Op};
use crate::error::{Blocked, Result, ScheduleError};
use crate::lower::lower;
use crate::schedule::{Schedule, ScheduleConfig};

mod index;

use index::{MessageIndex, VocabMeetings};

/// Size of each message.
#[derive(Clone, Copy)]
pub enum MessageBytes<'a> {
    /// Every message has this many bytes.
    Constant(f64),
    /// Bytes of the message a send action transmits.
    PerMessage(&'a dyn Fn(&Action) -> f64),
}

/// Point-to-point cost: `latency + bytes / bandwidth` per message.
#[derive(Clone, Copy)]
pub struct P2p<'a> {
    /// Fixed cost per message, in the cost function's time unit.
    pub latency: f64,
    /// Bytes per time unit (`f64::INFINITY` = transfers take no time beyond the latency).
    pub bandwidth: f64,
    /// Message sizes.
    pub bytes: MessageBytes<'a>,
}

impl P2p<'static> {
    /// Free communication: messages arrive the moment they are sent.
    pub fn free() -> Self {
        P2p {
            latency: 0.0,
            bandwidth: f64::INFINITY,
            bytes: MessageBytes::Constant(0.0),
        }
    }
}

impl<'a> P2p<'a> {
    /// Latency plus bandwidth with one message size for all.
    pub fn new(latency: f64, bandwidth: f64, bytes: MessageBytes<'a>) -> Self {
        P2p {
            latency,
            bandwidth,
            bytes,
        }
    }

    fn check(&self) -> Result<()> {
        if !(self.latency.is_finite() && self.latency >= 0.0) {
            return Err(ScheduleError::BadP2p {
                what: "latency",
                valid: "finite and ≥ 0",
                value: self.latency,
            });
        }
        // NaN fails this test too.
        if self.bandwidth.is_nan() || self.bandwidth <= 0.0 {
            return Err(ScheduleError::BadP2p {
                what: "bandwidth",
                valid: "> 0 (infinity allowed)",
                value: self.bandwidth,
            });
        }
        Ok(())
    }

    /// Transfer time of the message a send action transmits.
    pub fn transfer_time(&self, send: &Action, text: impl Fn() -> String) -> Result<f64> {
        let bytes = match self.bytes {
            MessageBytes::Constant(b) => b,
            MessageBytes::PerMessage(f) => f(send),
        };
        if !(bytes.is_finite() && bytes >= 0.0) {
            return Err(ScheduleError::BadCost {
                what: "message bytes",
                action: text(),
                value: bytes,
            });
        }
        Ok(self.latency
            + if bytes == 0.0 {
                0.0
            } else {
                bytes / self.bandwidth
            })
    }
}

/// One action with its simulated times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    /// The action.
    pub action: Action,
    /// When the stage reached it.
    pub start: f64,
    /// When it finished.
    pub end: f64,
    /// Part of `end − start` spent blocked waiting for data (receives only).
    pub wait: f64,
}

impl Timed {
    /// Time the stage was actually working on the action.
    pub fn busy(&self) -> f64 {
        self.end - self.start - self.wait
    }
}

/// Per-stage figures of a simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Sum of the stage's action durations.
    pub busy: f64,
    /// `makespan − busy`.
    pub idle: f64,
    /// `idle / makespan` (0 for an empty schedule).
    pub bubble_ratio: f64,
    /// Largest number of units in flight (forward started, last backward piece not finished).
    pub max_in_flight: u32,
    /// Units in flight over time: `(t, count)` from `t` until the next point.
    pub in_flight: Vec<(f64, u32)>,
}

/// The result of [`simulate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Simulation {
    /// Configuration of the simulated schedule.
    pub config: ScheduleConfig,
    /// The schedule's per-micro-batch slice counts, where they differ ([`Schedule::slice_counts`]).
    pub slice_counts: Option<Vec<u32>>,
    /// Per stage, every action of the lowered schedule in list order with its times.
    pub timeline: Vec<Vec<Timed>>,
    /// End of the last action.
    pub makespan: f64,
    /// Per-stage figures.
    pub stages: Vec<StageStats>,
    /// Idle time of all stages over `p × makespan`.
    pub bubble_ratio: f64,
}

impl Simulation {
    /// Largest units-in-flight per stage.
    pub fn max_in_flight(&self) -> Vec<u32> {
        self.stages.iter().map(|s| s.max_in_flight).collect()
    }

    /// The share of `cores` processors the schedule keeps busy when its stages share them (stage
    /// threads on a CPU): the simulated timeline, stretched wherever more stages compute at once
    /// than there are cores (they take turns), divides its work `W` as `W ÷ (cores × stretched
    /// makespan)`. With a core per stage it is `1 − bubble`. Waits for data are not work.
    pub fn core_use(&self, cores: usize) -> f64 {
        let cores = cores.max(1) as f64;
        // (time, +1 start / −1 end) of every stretch of work.
        let mut edges: Vec<(f64, i32)> = Vec::new();
        let mut work = 0.0;
        for t in self.timeline.iter().flatten() {
            let start = t.start + t.wait;
            if t.end > start {
                edges.push((start, 1));
                edges.push((t.end, -1));
                work += t.end - start;
            }
        }
        edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut busy, mut last, mut stretched) = (0i32, 0.0, 0.0);
        for (time, step) in edges {
            let span = time - last;
            stretched += span * (f64::from(busy) / cores).max(1.0);
            busy += step;
            last = time;
        }
        stretched += (self.makespan - last).max(0.0);
        match stretched > 0.0 {
            true => work / (cores * stretched),
            false => 0.0,
        }
    }
}

/// Simulates a schedule (lowering it first if it is not lowered) with per-action durations from
/// `cost` and messages priced by `p2p`. Errors: invalid durations or sizes, unmatched or duplicate
/// sends, and deadlock (naming every waiting stage).
pub fn simulate<F: Fn(&Action) -> f64>(
    schedule: &Schedule,
    cost: F,
    p2p: &P2p,
) -> Result<Simulation> {
    let sched = prepared(schedule, p2p)?;
    let timeline = timeline_of(&sched, &cost, p2p)?;
    Ok(summarise(
        sched.config,
        sched.slice_counts.clone(),
        timeline,
    ))
}

/// [`simulate`]'s timeline alone, without the per-stage figures: for the passes that place
/// actions by it ([`Span::of`] gives its makespan and busy times).
pub fn simulate_timeline<F: Fn(&Action) -> f64>(
    schedule: &Schedule,
    cost: F,
    p2p: &P2p,
) -> Result<Vec<Vec<Timed>>> {
    timeline_of(&*prepared(schedule, p2p)?, &cost, p2p)
}

fn timeline_of<F: Fn(&Action) -> f64>(
    sched: &Schedule,
    cost: &F,
    p2p: &P2p,
) -> Result<Vec<Vec<Timed>>> {
    let mut timeline: Vec<Vec<Timed>> = sched
        .actions
        .iter()
        .map(|l| Vec::with_capacity(l.len()))
        .collect();
    run(sched, cost, p2p, &mut timeline)?;
    Ok(timeline)
}

/// [`simulate`]'s `bubble_ratio` (the same figure, bit for bit) without keeping the timeline:
/// the planner's path, which simulates schedules of millions of actions per plan.
pub fn simulate_bubble<F: Fn(&Action) -> f64>(
    schedule: &Schedule,
    cost: F,
    p2p: &P2p,
) -> Result<f64> {
    Ok(simulate_span(schedule, cost, p2p)?.bubble_ratio())
}

/// What [`simulate_span`] keeps of a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// End of the last action.
    pub makespan: f64,
    /// Per stage, the sum of its action durations.
    pub busy: Vec<f64>,
}

impl Span {
    /// The makespan and busy times of `timeline` (as [`simulate`] sums them).
    pub fn of(timeline: &[Vec<Timed>]) -> Span {
        Span {
            makespan: timeline
                .iter()
                .filter_map(|l| l.last().map(|t| t.end))
                .fold(0.0, f64::max),
            busy: timeline
                .iter()
                .map(|l| l.iter().map(Timed::busy).sum())
                .collect(),
        }
    }

    /// [`Simulation::bubble_ratio`], bit for bit.
    pub fn bubble_ratio(&self) -> f64 {
        let makespan = self.makespan;
        let idle: f64 = self.busy.iter().map(|b| (makespan - b).max(0.0)).sum();
        match makespan > 0.0 {
            true => idle / (makespan * self.busy.len() as f64),
            false => 0.0,
        }
    }
}

/// [`simulate`]'s makespan and per-stage busy time (the same figures, bit for bit) without
/// keeping the timeline.
pub fn simulate_span<F: Fn(&Action) -> f64>(
    schedule: &Schedule,
    cost: F,
    p2p: &P2p,
) -> Result<Span> {
    let sched = prepared(schedule, p2p)?;
    let stages = sched.actions.len();
    let mut busy = Busy {
        busy: vec![0.0; stages],
        end: vec![0.0; stages],
    };
    run(&sched, &cost, p2p, &mut busy)?;
    Ok(Span {
        makespan: busy.end.iter().copied().fold(0.0, f64::max),
        busy: busy.busy,
    })
}

/// The schedule lowered (as it is when it already is), after checking `p2p`.
fn prepared<'a>(schedule: &'a Schedule, p2p: &P2p) -> Result<Cow<'a, Schedule>> {
    p2p.check()?;
    if schedule.lowered {
        schedule.check_ranges()?;
        return Ok(Cow::Borrowed(schedule));
    }
    Ok(Cow::Owned(lower(schedule)?))
}

/// What the event loop keeps of each action it times.
trait Record {
    fn record(&mut self, stage: usize, timed: Timed);
}

/// The whole timeline ([`simulate`]).
impl Record for Vec<Vec<Timed>> {
    fn record(&mut self, stage: usize, timed: Timed) {
        self[stage].push(timed);
    }
}

/// Per stage, the time spent working and the end of its last action ([`simulate_span`]).
struct Busy {
    busy: Vec<f64>,
    end: Vec<f64>,
}

impl Record for Busy {
    fn record(&mut self, stage: usize, timed: Timed) {
        self.busy[stage] += timed.busy();
        self.end[stage] = timed.end;
    }
}

/// The event loop: advance every stage as far as its receives allow, until all finish or none
/// can move.
fn run<F: Fn(&Action) -> f64>(
    sched: &Schedule,
    cost: &F,
    p2p: &P2p,
    out: &mut impl Record,
) -> Result<()> {
    let p = sched.config.stages;
    let index = MessageIndex::new(&sched.config);
    let mut arrival: Vec<f64> = vec![f64::NAN; index.len()];
    let stages = sched.actions.len();
    let mut pos = vec![0usize; stages];
    let mut clock = vec![0.0f64; stages];
    let mut vocab = VocabMeetings::new(&sched.config, stages);
    loop {
        let mut progressed = false;
        for r in 0..stages {
            let list = &sched.actions[r];
            while let Some(a) = list.get(pos[r]) {
                let text = || sched.text(a);
                let duration = cost(a);
                if !(duration.is_finite() && duration >= 0.0) {
                    return Err(ScheduleError::BadCost {
                        what: "duration",
                        action: text(),
                        value: duration,
                    });
                }
                let start = clock[r];
                let mut wait = 0.0;
                if a.op.is_vocab() {
                    match vocab.arrive(a, r, start) {
                        Some(ready) => wait = (ready - start).max(0.0),
                        None => break, // blocked until every stage it needs has arrived
                    }
                } else if a.op.is_comm() {
                    let unmatched = |reason: &str| ScheduleError::Unmatched {
                        stage: r as u32,
                        position: pos[r],
                        action: text(),
                        reason: reason.to_string(),
                    };
                    let key = index
                        .of(a, p)
                        .ok_or_else(|| unmatched("names a virtual stage outside the pipeline"))?;
                    if a.op.is_send() {
                        if !arrival[key].is_nan() {
                            return Err(unmatched("sends data that was already sent"));
                        }
                        arrival[key] = start + duration + p2p.transfer_time(a, text)?;
                    } else {
                        let at = arrival[key];
                        if at.is_nan() {
                            break; // blocked until the sender runs
                        }
                        // Consumed: a second receive of the same data would wait forever.
                        arrival[key] = f64::INFINITY;
                        wait = (at - start).max(0.0);
                    }
                }
                let end = start + wait + duration;
                out.record(
                    r,
                    Timed {
                        action: *a,
                        start,
                        end,
                        wait,
                    },
                );
                clock[r] = end;
                pos[r] += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    let blocked = blocked_stages(sched, &pos);
    if !blocked.is_empty() {
        return Err(ScheduleError::Deadlock { blocked });
    }
    Ok(())
}

fn blocked_stages(sched: &Schedule, pos: &[usize]) -> Vec<Blocked> {
    sched
        .actions
        .iter()
        .enumerate()
        .filter_map(|(r, list)| {
            let a = list.get(pos[r])?;
            Some(Blocked {
                stage: r as u32,
                position: pos[r],
                action: sched.text(a),
                waits_for: sched.peer(a).map(|s| s.0),
            })
        })
        .collect()
}

fn summarise(
    config: ScheduleConfig,
    slice_counts: Option<Vec<u32>>,
    timeline: Vec<Vec<Timed>>,
) -> Simulation {
    let makespan = timeline
        .iter()
        .filter_map(|l| l.last().map(|t| t.end))
        .fold(0.0, f64::max);
    let stages: Vec<StageStats> = timeline.iter().map(|l| stage_stats(l, makespan)).collect();
    let idle: f64 = stages.iter().map(|s| s.idle).sum();
    let bubble_ratio = if makespan > 0.0 {
        idle / (makespan * stages.len() as f64)
    } else {
        0.0
    };
    Simulation {
        config,
        slice_counts,
        timeline,
        makespan,
        stages,
        bubble_ratio,
    }
}

fn stage_stats(list: &[Timed], makespan: f64) -> StageStats {
    let busy: f64 = list.iter().map(Timed::busy).sum();
    let idle = (makespan - busy).max(0.0);
    // Units enter at their forward's start and leave at the end of their last backward piece;
    // at equal times leaving goes first, so a unit replaced at the same instant is not counted twice.
    let mut events: Vec<(f64, i32)> = Vec::new();
    for t in list {
        if t.action.op == Op::Forward {
            events.push((t.start, 1));
        } else if t.action.op.ends_unit() {
            events.push((t.end, -1));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i64, 0i64);
    let mut curve: Vec<(f64, u32)> = vec![(0.0, 0)];
    for (i, &(t, d)) in events.iter().enumerate() {
        now += i64::from(d);
        max = max.max(now);
        let last_at_t = events.get(i + 1).is_none_or(|next| next.0 != t);
        if last_at_t {
            let count = now.max(0) as u32;
            match curve.last_mut() {
                Some(point) if point.0 == t => point.1 = count,
                _ => curve.push((t, count)),
            }
        }
    }
    StageStats {
        busy,
        idle,
        bubble_ratio: if makespan > 0.0 { idle / makespan } else { 0.0 },
        max_in_flight: max.max(0) as u32,
        in_flight: curve,
    }
}
