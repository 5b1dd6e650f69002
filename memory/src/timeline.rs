//! Adapter from the `schedule` crate: a simulated timeline becomes compute spans, lives and a
//! ledger report; a schedule configuration maps to the closed-form [`PipelineKind`].

use seqpipe_schedule::{Op, ScheduleConfig, ScheduleKind, Simulation};

use crate::error::{MemoryError, Result};
use crate::ledger::{run_ledger, LedgerReport};
use crate::lives::{events_from_lives, lives_from_spans, ComputeSpan, Phase, UnitKey, UnitSizer};
use crate::pipeline::PipelineKind;

/// Every compute action of a simulation as a span (sends, receives and memory ops are skipped).
pub fn spans_from_simulation(sim: &Simulation) -> Vec<ComputeSpan> {
    let mut spans = Vec::new();
    for (stage, list) in sim.timeline.iter().enumerate() {
        for t in list {
            let phase = match t.action.op {
                Op::Forward => Phase::Forward,
                Op::Backward => Phase::Backward,
                Op::BackwardInput => Phase::BackwardInput,
                Op::BackwardWeight => Phase::BackwardWeight,
                _ => continue,
            };
            spans.push(ComputeSpan {
                stage,
                unit: UnitKey {
                    mb: t.action.mb.0,
                    slice: t.action.slice.0,
                    chunk: t.action.chunk.0,
                },
                phase,
                start: t.start,
                end: t.end,
            });
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
