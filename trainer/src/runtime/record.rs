//! What a stage records while it runs: the start and end of every action (a Chrome trace of the
//! real run, comparable with the simulator's) and the activation bytes it holds after each one.

use seqpipe_schedule::Op;
use serde::Serialize;

use super::worker::Held;
pub use crate::model::ends::Answers;

/// One executed action.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Compact text (`2F0.1`).
    pub text: String,
    /// The op.
    #[serde(skip)]
    pub op: Op,
    /// Seconds since the iteration started.
    pub start: f64,
    /// Seconds since the iteration started.
    pub end: f64,
    /// Activation bytes held after the action.
    pub held: Held,
    /// Attention score entries (query–key pairs, per sequence and query head, over the chunk's
    /// layers) the stage computed in the action: its own attention, less the prefix an exchange
    /// partner attended to for it, plus what it attended to for a partner.
    pub attention: u64,
}

/// Everything a stage reports about one iteration.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage rank.
    pub stage: usize,
    /// Sum of this stage's slice losses (non-zero only on the stage running the head).
    pub loss: f64,
    /// Masked targets answered and answered right (only on the stage running the head).
    pub answers: Answers,
    /// Executed actions in order.
    pub events: Vec<Event>,
    /// Largest saved-activation bytes (saved records, KV caches, dK/dV accumulators).
    pub peak_saved_bytes: usize,
    /// Largest total activation bytes (saved plus transient buffers).
    pub peak_bytes: usize,
    /// Seconds the stage waited for host-link copies (offloads and reloads not yet done where
    /// the program joins them).
    pub link_wait_seconds: f64,
    /// Labelled instants of the iteration (where each elastic pipeline begins, and what it
    /// holds), in the trace beside the actions.
    pub marks: Vec<Mark>,
}

/// A labelled instant of an iteration.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    /// Seconds since the iteration started.
    pub at: f64,
    /// What happens there.
    pub label: String,
}

impl StageReport {
    /// This stage's record of one iteration that ran `next`'s pipeline after this one's
    /// (elastic pipelines, one after another): losses and answers add up, events follow.
    pub fn followed_by(mut self, next: StageReport) -> StageReport {
        self.loss += next.loss;
        self.answers.add(next.answers);
        self.events.extend(next.events);
        self.peak_saved_bytes = self.peak_saved_bytes.max(next.peak_saved_bytes);
        self.peak_bytes = self.peak_bytes.max(next.peak_bytes);
        self.link_wait_seconds += next.link_wait_seconds;
        self.marks.extend(next.marks);
        self
    }

    /// Seconds spent in compute actions (recomputation included: it runs forwards again).
    pub fn compute_seconds(&self) -> f64 {
        self.events
            .iter()
            .filter(|e| computes(e.op))
            .map(|e| e.end - e.start)
            .sum()
    }

    /// End of the last action.
    pub fn finish_time(&self) -> f64 {
        self.events.last().map_or(0.0, |e| e.end)
    }
}

/// Collects a stage's events.
#[derive(Debug)]
pub struct Recorder {
    stage: usize,
    events: Vec<Event>,
}

impl Recorder {
    /// An empty record for `stage`.
    pub fn new(stage: usize) -> Self {
        Recorder {
            stage,
            events: Vec::new(),
        }
    }

    /// Records one finished action.
    pub fn action(&mut self, text: String, op: Op, span: (f64, f64), held: Held, attention: u64) {
        let (start, end) = span;
        self.events.push(Event {
            text,
            op,
            start,
            end,
            held,
            attention,
        });
    }

    /// The report, with the stage's loss share and its wait for the host link.
    pub fn finish(self, loss: f64, answers: Answers, link_wait_seconds: f64) -> StageReport {
        let peak_saved_bytes = self.events.iter().map(|e| e.held.saved).max().unwrap_or(0);
        let peak_bytes = self
            .events
            .iter()
            .map(|e| e.held.saved + e.held.transient)
            .max()
            .unwrap_or(0);
        StageReport {
            stage: self.stage,
            loss,
            answers,
            events: self.events,
            peak_saved_bytes,
            peak_bytes,
            link_wait_seconds,
            marks: Vec::new(),
        }
    }
}

/// Whether `op` keeps the stage's compute busy.
pub fn computes(op: Op) -> bool {
    op.is_compute() || op == Op::Recompute
}

/// Measured bubble ratio: idle share of the makespan, over all stages (makespan = last end).
pub fn measured_bubble(reports: &[StageReport]) -> f64 {
    let makespan = reports
        .iter()
        .map(StageReport::finish_time)
        .fold(0.0, f64::max);
    if makespan <= 0.0 || reports.is_empty() {
        return 0.0;
    }
    let busy: f64 = reports.iter().map(StageReport::compute_seconds).sum();
    1.0 - busy / (makespan * reports.len() as f64)
}

/// Chrome trace JSON (one track per stage) of an iteration's reports.
pub fn chrome_trace(reports: &[StageReport]) -> serde_json::Value {
    let events: Vec<serde_json::Value> = reports
        .iter()
        .flat_map(|r| {
            r.events
                .iter()
                .filter(|e| computes(e.op) || e.op.is_comm())
                .map(move |e| {
                    serde_json::json!({
                        "name": e.text, "cat": e.op.code(), "ph": "X", "pid": 0, "tid": r.stage,
                        "ts": e.start * 1e6, "dur": (e.end - e.start) * 1e6,
                        "args": {"saved_bytes": e.held.saved, "transient_bytes": e.held.transient},
                    })
                })
                .chain(r.marks.iter().map(move |m| {
                    serde_json::json!({
                        "name": m.label, "ph": "i", "s": "t", "pid": 0, "tid": r.stage,
                        "ts": m.at * 1e6,
                    })
                }))
        })
        .collect();
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

/// Per step (each the `(stage, program position)` of one compute of every stage, as
/// `seqpipe_schedule::exchange_steps` gives them), the largest stage's attention score entries
/// over the smallest's, as the executor counted them ([`Event::attention`]): how even the
/// stages' attention is. A step where a stage computed no attention gives infinity.
pub fn step_attention_ratios(reports: &[StageReport], steps: &[Vec<(usize, usize)>]) -> Vec<f64> {
    let attention = |r: usize, i: usize| {
        reports
            .iter()
            .find(|rep| rep.stage == r)
            .and_then(|rep| rep.events.get(i))
            .map_or(0, |e| e.attention)
    };
    steps
        .iter()
        .map(|step| {
            let at = step.iter().map(|&(r, i)| attention(r, i));
            let (lo, hi) = at.fold((u64::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
            hi as f64 / lo as f64
        })
        .collect()
}
