//! Dense indices the event loop keys its bookkeeping by: the message each send or receive
//! carries, and the meetings of the vocabulary-parallel ops. Flat vectors instead of hash maps,
//! because the planner simulates schedules of millions of actions per plan.

use crate::action::{Action, Op};
use crate::ids::{MicroBatch, VirtualStage};
use crate::schedule::ScheduleConfig;

/// The first unit (micro-batch, slice) index of each micro-batch, and the unit count last.
fn unit_offsets(config: &ScheduleConfig) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(config.microbatches as usize + 1);
    let mut total = 0usize;
    for mb in 0..config.microbatches {
        offsets.push(total);
        total += config.slices_of(MicroBatch(mb)) as usize;
    }
    offsets.push(total);
    offsets
}

/// Dense index of the message a send or receive carries: direction × destination × (mb, slice).
pub(super) struct MessageIndex {
    offsets: Vec<usize>,
    per_direction: usize,
    virtual_stages: u32,
}

impl MessageIndex {
    pub(super) fn new(config: &ScheduleConfig) -> Self {
        let offsets = unit_offsets(config);
        let total = offsets[offsets.len() - 1];
        MessageIndex {
            per_direction: total * config.virtual_stages() as usize,
            offsets,
            virtual_stages: config.virtual_stages(),
        }
    }

    pub(super) fn len(&self) -> usize {
        2 * self.per_direction
    }

    /// `None` when the destination virtual stage does not exist.
    pub(super) fn of(&self, a: &Action, p: u32) -> Option<usize> {
        let here = a.virtual_stage(p);
        let (grad, dest) = match a.op {
            Op::SendAct => (0, a.peer_virtual_stage(p)?),
            Op::RecvAct => (0, here),
            Op::SendGrad => (1, a.peer_virtual_stage(p)?),
            Op::RecvGrad => (1, here),
            _ => return None,
        };
        let VirtualStage(d) = dest;
        if d >= self.virtual_stages {
            return None;
        }
        let base = self.offsets[a.mb.index()] + a.slice.index();
        let units = self.offsets[self.offsets.len() - 1];
        Some(grad * self.per_direction + d as usize * units + base)
    }
}

/// Where the stages meet for the vocabulary-parallel ops: each stage's arrival time per
/// (op, micro-batch, slice). `EMBED` on stage 0 needs every other stage's share (they only
/// send); `EMBED_B` on the other stages needs stage 0's gradient (stage 0 only sends); `HEAD`
/// needs every stage (each exchanges with each).
pub(super) struct VocabMeetings {
    stages: usize,
    /// The first unit index of each micro-batch, and the unit count last.
    offsets: Vec<usize>,
    /// Arrival time per (op, unit, stage); NaN until the stage arrives.
    arrivals: Vec<f64>,
}

impl VocabMeetings {
    pub(super) fn new(config: &ScheduleConfig, stages: usize) -> Self {
        VocabMeetings {
            stages,
            offsets: unit_offsets(config),
            // Allocated on the first meeting: most schedules have none.
            arrivals: Vec::new(),
        }
    }

    fn slot(&mut self, a: &Action) -> usize {
        let units = self.offsets[self.offsets.len() - 1];
        if self.arrivals.is_empty() {
            self.arrivals = vec![f64::NAN; 3 * units * self.stages];
        }
        let op = match a.op {
            Op::VocabEmbed => 0,
            Op::VocabHead => 1,
            _ => 2,
        };
        let unit = self.offsets[a.mb.index()] + a.slice.index();
        (op * units + unit) * self.stages
    }

    /// Records stage `r` at `a` from time `at`; the time its data is all there, or `None`
    /// while a stage it needs has not arrived.
    pub(super) fn arrive(&mut self, a: &Action, r: usize, at: f64) -> Option<f64> {
        let stages = self.stages;
        let base = self.slot(a);
        let times = &mut self.arrivals[base..base + stages];
        if times[r].is_nan() {
            times[r] = at;
        }
        let needs = match (a.op, r) {
            (Op::VocabEmbed, 0) => 1..stages,
            (Op::VocabEmbedGrad, r) if r > 0 => 0..1,
            (Op::VocabHead, _) => 0..stages,
            _ => 0..0,
        };
        times[needs]
            .iter()
            .try_fold(at, |ready, &t| (!t.is_nan()).then(|| ready.max(t)))
    }
}
