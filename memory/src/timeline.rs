//! Adapter from the `schedule` crate: a simulated timeline (or a schedule's program order)
//! becomes compute spans, lives and a ledger report; a schedule configuration maps to the
//! closed-form [`PipelineKind`].
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{ledger_of_simulation, pipeline_kind, ActivationModel, Parallelism};
//! use seqpipe_memory::{PipelineKind, UnitSizer};
//! use seqpipe_schedule::{one_f_one_b, simulate, P2p, UnitCosts};
//! let schedule = one_f_one_b(2, 2).unwrap();
//! assert_eq!(pipeline_kind(&schedule.config).unwrap(), PipelineKind::OneF1B);
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! let shape = seqpipe_slicing::preset("llama-7b").unwrap();
//! let act = ActivationModel::new(shape, Parallelism::new(1, 1, 1).unwrap()).unwrap();
//! let unit = act.bytes_per_token_layer(); // units of one token through one layer
//! let slices = vec![(0, 1)];
//! let sizer = UnitSizer { activation: act, layers_per_chunk: 1, slices, per_microbatch: None, stages: 2, chunks: 1 };
//! let report = ledger_of_simulation(&sim, &sizer, &[0.0, 0.0]).unwrap();
//! assert_eq!(report.stages[0].peak, 2.0 * unit); // 1F1B: p − r units on stage r
//! assert_eq!(report.stages[1].peak, unit + 32000.0 * 4.0); // one unit and its fp32 logits
//! ```

use seqpipe_schedule::{Action, Op, Schedule, ScheduleConfig, ScheduleKind, Simulation};

use crate::error::{MemoryError, Result};
use crate::ledger::{run_ledger, LedgerReport};
use crate::lives::{events_from_lives, lives_from_spans, ComputeSpan, Phase, UnitKey, UnitSizer};
use crate::pipeline::PipelineKind;

/// The ledger phase of a compute op; `None` for sends, receives and memory ops.
fn phase(op: Op) -> Option<Phase> {
    match op {
        Op::Forward => Some(Phase::Forward),
        Op::Backward => Some(Phase::Backward),
        Op::BackwardInput => Some(Phase::BackwardInput),
        Op::BackwardWeight => Some(Phase::BackwardWeight),
        _ => None,
    }
}

/// The unit an action works on.
pub fn unit_key(action: &Action) -> UnitKey {
    UnitKey {
        mb: action.mb.0,
        slice: action.slice.0,
        chunk: action.chunk.0,
    }
}

/// Every compute action of a simulation as a span (sends, receives and memory ops are skipped).
pub fn spans_from_simulation(sim: &Simulation) -> Vec<ComputeSpan> {
    let mut spans = Vec::new();
    for (stage, list) in sim.timeline.iter().enumerate() {
        for t in list {
            if let Some(phase) = phase(t.action.op) {
                spans.push(ComputeSpan {
                    stage,
                    unit: unit_key(&t.action),
                    phase,
                    start: t.start,
                    end: t.end,
                });
            }
        }
    }
    spans
}

/// Every compute action of a schedule as a span placed at its index in its stage's program
/// (`start = end = index`). A stage's memory changes only at its own actions, in its program's
/// order, so this axis gives what a stage holds after each of its actions with no cost model.
/// Unlike a simulation's clock it also keeps apart actions that take no simulated time: a
/// buffer made by a compute and freed by the send right after it would otherwise be allocated
/// and released at one instant.
pub fn spans_in_program_order(schedule: &Schedule) -> Vec<ComputeSpan> {
    let mut spans = Vec::new();
    for (stage, program) in schedule.actions.iter().enumerate() {
        for (index, action) in program.iter().enumerate() {
            if let Some(phase) = phase(action.op) {
                spans.push(ComputeSpan {
                    stage,
                    unit: unit_key(action),
                    phase,
                    start: index as f64,
                    end: index as f64,
                });
            }
        }
    }
    spans
}

/// The ledger of a simulation: activations (and logits, dK/dV accumulators) sized by `sizer`
/// over per-stage `model_states`.
pub fn ledger_of_simulation(
    sim: &Simulation,
    sizer: &UnitSizer,
    model_states: &[f64],
) -> Result<LedgerReport> {
    let lives = lives_from_spans(&spans_from_simulation(sim))?;
    run_ledger(model_states, &events_from_lives(&lives, sizer)?)
}

/// The closed-form kind of a schedule configuration (Seq1F1B-I has none).
pub fn pipeline_kind(config: &ScheduleConfig) -> Result<PipelineKind> {
    let (n, v) = (config.slices as u64, config.chunks as u64);
    Ok(match config.kind {
        ScheduleKind::GPipe if n > 1 => {
            return Err(MemoryError::BadSchedule {
                kind: "gpipe",
                requirement:
                    "one slice per sequence for a closed form (use the ledger when sliced)",
                got: format!("n = {n}"),
            })
        }
        ScheduleKind::GPipe => PipelineKind::GPipe,
        ScheduleKind::OneFOneB => PipelineKind::OneF1B,
        ScheduleKind::ZbH1 => PipelineKind::ZbH1,
        ScheduleKind::Interleaved => PipelineKind::Interleaved { chunks: v },
        ScheduleKind::Seq1F1B => PipelineKind::Seq1F1B { slices: n },
        ScheduleKind::SlimPipe => PipelineKind::SlimPipe {
            slices: n,
            chunks: v,
        },
        ScheduleKind::Gis => PipelineKind::Gis {
            chunks: v,
            group: config
                .group
                .unwrap_or(config.stages.min(config.microbatches)) as u64,
        },
        ScheduleKind::Seq1F1BInterleaved => {
            return Err(MemoryError::BadSchedule {
                kind: "seq1f1b-i",
                requirement: "a closed form (use the ledger for this kind)",
                got: "none".into(),
            })
        }
    })
}
