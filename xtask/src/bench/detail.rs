//! One chosen configuration in detail: its simulated pipeline timeline (SVG) and the memory
//! ledger's device-memory curve per stage over that timeline (CSV, JSON, SVG). Durations are
//! the cost model's FLOPs, so time is in FLOP units, not seconds: simulated, not measured.

use anyhow::Result;
use seqpipe_memory::{
    ledger_of_simulation, model_states, ActivationModel, LedgerReport, LogitsPlacement,
    Parallelism, StageLayout, StateOptions, UnitSizer,
};
use seqpipe_schedule::{generate, simulate, Op, P2p, ScheduleConfig, ScheduleKind, Simulation};
use seqpipe_slicing::{preset, uniform, CostModel, Padding};

/// One configuration drawn in detail.
pub struct Detail {
    /// Model preset.
    pub model: &'static str,
    /// Tokens per sequence.
    pub seq_len: u64,
    /// Tensor-parallel size (divides activations and weights).
    pub tp: u64,
    /// The schedule.
    pub config: ScheduleConfig,
}

/// The configurations drawn: SlimPipe and the 1F1B it replaces, same model and length.
pub fn chosen() -> Vec<Detail> {
    let base = |kind, n, v| Detail {
        model: "llama-7b",
        seq_len: 64 * 1024,
        tp: 8,
        config: ScheduleConfig::new(kind, 4, 4)
            .with_slices(n)
            .with_chunks(v),
    };
    vec![
        base(ScheduleKind::SlimPipe, 8, 2),
        base(ScheduleKind::OneFOneB, 1, 1),
    ]
}

/// Simulated timeline and memory ledger of one configuration.
pub fn run(d: &Detail) -> Result<(Simulation, LedgerReport)> {
    let shape = preset(d.model)?;
    let cost = CostModel::flops(&shape)?;
    let (n, v, p) = (d.config.slices, d.config.chunks, d.config.stages);
    let plan = uniform(d.seq_len, n as usize, 1, Padding::None, &cost)?;
    let slices: Vec<(u64, u64)> = plan
        .slices
        .iter()
        .map(|s| (s.start, s.end - s.start))
        .collect();
    let pieces = (p * v) as f64;
    // Each virtual stage holds 1/(p·v) of the model: charge that share of the slice's FLOPs.
    let forward = |i: usize| {
        let (start, len) = slices[i];
        cost.forward(start, start + len) / pieces
    };
    let sim = simulate(
        &generate(&d.config)?,
        |a| match a.op {
            Op::Forward => forward(a.slice.index()),
            Op::Backward => 2.0 * forward(a.slice.index()),
            Op::BackwardInput | Op::BackwardWeight => forward(a.slice.index()),
            _ => 0.0,
        },
        &P2p::free(),
    )?;
    let parallel = Parallelism::new(d.tp, 1, 1)?;
    let mut activation = ActivationModel::new(shape, parallel)?;
    let sharded = d.config.kind == ScheduleKind::SlimPipe;
    activation.logits = if sharded {
        LogitsPlacement::VocabSharded
    } else {
        LogitsPlacement::LastStage
    };
    let layout = StageLayout::new(p as u64, v as u64)?;
    let options = StateOptions {
        vocab: activation.logits,
        ..StateOptions::default()
    };
    let states: Vec<f64> = model_states(&shape, &layout, &parallel, &options)?
        .iter()
        .map(|s| s.total())
        .collect();
    let sizer = UnitSizer {
        per_microbatch: None,
        activation,
        layers_per_chunk: layout.layers_per_chunk(&shape)?,
        slices,
        stages: p as usize,
        chunks: v,
    };
    let ledger = ledger_of_simulation(&sim, &sizer, &states)?;
    Ok((sim, ledger))
}

/// A title naming everything: `llama-7b slimpipe n=8 v=2 · 64K t8 p4 m4`.
pub fn title(d: &Detail) -> String {
    let c = &d.config;
    format!(
        "{} {} n={} v={} · {}K t{} p{} m{}",
        d.model,
        c.kind,
        c.slices,
        c.chunks,
        d.seq_len / 1024,
        d.tp,
        c.stages,
        c.microbatches
    )
}

/// A file-name-safe label: `slimpipe_n8_v2`.
pub fn label(d: &Detail) -> String {
    format!(
        "{}_n{}_v{}",
        d.config.kind.name().replace('-', ""),
        d.config.slices,
        d.config.chunks
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slimpipe_holds_less_than_1f1b_on_the_first_stage() {
        let runs: Vec<_> = chosen().iter().map(|d| run(d).unwrap()).collect();
        let (slim, one) = (&runs[0], &runs[1]);
        assert_eq!(slim.1.stages.len(), 4);
        assert!(slim.0.bubble_ratio < one.0.bubble_ratio);
        assert!(slim.1.stages[0].peak < one.1.stages[0].peak);
        assert_eq!(label(&chosen()[0]), "slimpipe_n8_v2");
    }
}
