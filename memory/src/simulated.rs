//! The bubble of a plan's exact schedule, simulated: the schedule the trainer would run for a
//! [`Candidate`] (its kind, stages, micro-batches, slices and chunks; SlimPipe's slices uniform
//! and its head vocabulary-parallel, Seq1F1B's slices compute-balanced), generated, lowered and
//! simulated with each compute's FLOPs. The closed forms ([`PipelineKind::bubble_ratio`]) assume
//! steps of equal cost; with uniform slices a slice's attention grows with the tokens before it,
//! and the LM head weighs on the last stage, which only a simulation sees.
//!
//! [`simulated_bubbles`] also prices SlimPipe with its attention exchange, every pair of every
//! steady step as the paper makes them (`seqpipe_schedule::ExchangePolicy::Level`, which
//! `parallel.exchange_pairs = "level"` runs), the moved work priced by
//! `seqpipe_schedule::exchange_costs`.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{gpu_preset, simulated_bubble, Candidate, Parallelism, PipelineKind};
//! use seqpipe_memory::{RecomputePolicy, SearchSpace};
//! use seqpipe_slicing::preset;
//! let h100 = gpu_preset("h100").unwrap();
//! let space = SearchSpace {
//!     shape: preset("llama-7b").unwrap(), seq_len: 64 * 1024, gpus: 8, global_batch: 8,
//!     gpu: h100, budget_bytes: h100.memory_bytes, efficiency: 0.5.into(),
//!     max_tp: 8, max_cp: 1, min_stages: 2,
//! };
//! let c = Candidate {
//!     kind: PipelineKind::SlimPipe { slices: 16, chunks: 1 }, stages: 8,
//!     parallel: Parallelism::new(1, 1, 1).unwrap(), microbatches: 8,
//!     recompute: RecomputePolicy::None, offload_fraction: 0.0,
//! };
//! let closed = c.kind.bubble_ratio(8, 8).unwrap();
//! let simulated = simulated_bubble(&space, &c).unwrap();
//! assert!(simulated > closed); // uniform slices are not equal steps
//! ```

use std::ops::Range;

use seqpipe_schedule::{
    exchange_costs, generate, insert_exchange_on, insert_vocab_parallel, lower, simulate_bubble,
    simulate_timeline, Action, ExchangePolicy, P2p, Schedule, ScheduleConfig, ScheduleKind, Span,
};
use seqpipe_slicing::{balanced, uniform, CostModel, Padding};

use crate::error::{MemoryError, Result};
use crate::flop_costs::FlopCosts;
use crate::pipeline::PipelineKind;
use crate::search::{Candidate, SearchSpace};

/// The schedule configuration the trainer runs for `c`.
pub fn schedule_config(c: &Candidate) -> Result<ScheduleConfig> {
    let count = |what: &'static str, x: u64| {
        u32::try_from(x).map_err(|_| MemoryError::OutOfRange {
            what,
            value: x as f64,
            range: "1 to 2^32 − 1",
        })
    };
    let (kind, group) = match c.kind {
        PipelineKind::GPipe => (ScheduleKind::GPipe, None),
        PipelineKind::OneF1B => (ScheduleKind::OneFOneB, None),
        PipelineKind::ZbH1 => (ScheduleKind::ZbH1, None),
        PipelineKind::Interleaved { .. } => (ScheduleKind::Interleaved, None),
        PipelineKind::Seq1F1B { .. } => (ScheduleKind::Seq1F1B, None),
        PipelineKind::SlimPipe { .. } => (ScheduleKind::SlimPipe, None),
        PipelineKind::Gis { group, .. } => (ScheduleKind::Gis, Some(count("group", group)?)),
    };
    let mut config = ScheduleConfig::new(
        kind,
        count("stages", c.stages)?,
        count("micro-batches", c.microbatches)?,
    )
    .with_slices(count("slices", c.kind.slices())?)
    .with_chunks(count("chunks", c.kind.chunks())?);
    if let Some(g) = group {
        config = config.with_group(g);
    }
    Ok(config)
}

/// Token ranges of a sequence's slices as the trainer cuts them for `kind`.
fn slices(space: &SearchSpace, kind: PipelineKind) -> Result<Vec<Range<u64>>> {
    let cost = CostModel::flops(&space.shape)?;
    let n = kind.slices() as usize;
    let plan = match kind {
        PipelineKind::Seq1F1B { .. } => balanced(space.seq_len, n, 1, &cost)?,
        _ => uniform(space.seq_len, n, 1, Padding::None, &cost)?,
    };
    Ok(plan.slices.iter().map(|s| s.start..s.end).collect())
}

/// The simulated bubble ratio of `c`'s schedule (see the module header).
pub fn simulated_bubble(space: &SearchSpace, c: &Candidate) -> Result<f64> {
    let (schedule, prices) = as_run(space, c)?;
    Ok(simulate_bubble(
        &schedule,
        |a| prices.cost(a),
        &P2p::free(),
    )?)
}

/// The simulated bubbles of a plan's schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedBubbles {
    /// As generated.
    pub plain: f64,
    /// SlimPipe with every pair of its attention exchange; `None` for other kinds.
    pub exchange: Option<f64>,
}

impl SimulatedBubbles {
    /// Whether the exchange shortens the iteration.
    pub fn exchange_helps(&self) -> bool {
        self.exchange.is_some_and(|x| x < self.plain)
    }

    /// The bubble of the better of the two.
    pub fn best(&self) -> f64 {
        self.exchange.map_or(self.plain, |x| x.min(self.plain))
    }
}

/// `c`'s schedule simulated as generated and, for SlimPipe, with its attention exchange (see
/// the module header).
pub fn simulated_bubbles(space: &SearchSpace, c: &Candidate) -> Result<SimulatedBubbles> {
    let (schedule, prices) = as_run(space, c)?;
    let cost = |a: &Action| prices.cost(a);
    if !matches!(c.kind, PipelineKind::SlimPipe { .. }) {
        let plain = simulate_bubble(&schedule, cost, &P2p::free())?;
        return Ok(SimulatedBubbles {
            plain,
            exchange: None,
        });
    }
    let bounds: Vec<u64> = std::iter::once(0)
        .chain(slices(space, c.kind)?.iter().map(|r| r.end))
        .collect();
    // One simulation serves both: the plain bubble, and the timeline the exchange's steps are
    // read off.
    let timeline = simulate_timeline(&schedule, cost, &P2p::free())?;
    let plain = Span::of(&timeline).bubble_ratio();
    let column = |a: &Action| prices.column(a);
    let paired = insert_exchange_on(
        &schedule,
        &timeline,
        cost,
        column,
        &bounds,
        ExchangePolicy::Level,
    )?;
    let exchange = simulate_bubble(&paired, exchange_costs(&paired, cost, column), &P2p::free())?;
    Ok(SimulatedBubbles {
        plain,
        exchange: Some(exchange),
    })
}

/// `c`'s schedule as the trainer runs it (lowered; SlimPipe's vocabulary-parallel ops placed),
/// and its FLOP prices.
fn as_run(space: &SearchSpace, c: &Candidate) -> Result<(Schedule, FlopCosts)> {
    let config = schedule_config(c)?;
    let ranges = slices(space, c.kind)?;
    let virtual_stages = (c.stages * c.kind.chunks()) as usize;
    let per_stage = (space.shape.layers as usize).div_ceil(virtual_stages);
    let sharded = matches!(c.kind, PipelineKind::SlimPipe { .. });
    let prices = FlopCosts::new(
        &space.shape,
        config.stages,
        &vec![per_stage; virtual_stages],
        &ranges,
        sharded,
    );
    let mut schedule = lower(&generate(&config)?)?;
    if sharded {
        schedule = insert_vocab_parallel(&schedule, |a| prices.cost(a))?;
    }
    Ok((schedule, prices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::{Parallelism, RecomputePolicy};
    use crate::timeline::pipeline_kind;

    fn candidate(kind: PipelineKind) -> Candidate {
        Candidate {
            kind,
            stages: 4,
            parallel: Parallelism::new(1, 1, 1).unwrap(),
            microbatches: 8,
            recompute: RecomputePolicy::None,
            offload_fraction: 0.0,
        }
    }

    #[test]
    fn every_kind_maps_to_the_schedule_of_its_closed_form() {
        for kind in [
            PipelineKind::GPipe,
            PipelineKind::OneF1B,
            PipelineKind::ZbH1,
            PipelineKind::Interleaved { chunks: 2 },
            PipelineKind::Seq1F1B { slices: 4 },
            PipelineKind::SlimPipe {
                slices: 8,
                chunks: 2,
            },
            PipelineKind::Gis {
                chunks: 2,
                group: 4,
            },
        ] {
            let config = schedule_config(&candidate(kind)).unwrap();
            assert_eq!(pipeline_kind(&config).unwrap(), kind);
        }
    }

    /// Llama-7B at `seq_len` tokens on 4 H100s.
    fn space(seq_len: u64) -> SearchSpace {
        let h100 = crate::gpu::gpu_preset("h100").unwrap();
        SearchSpace {
            shape: seqpipe_slicing::preset("llama-7b").unwrap(),
            seq_len,
            gpus: 4,
            global_batch: 8,
            gpu: h100,
            budget_bytes: h100.memory_bytes,
            efficiency: 0.5.into(),
            max_tp: 1,
            max_cp: 1,
            min_stages: 2,
        }
    }

    /// The closed form assumes equal steps; the simulation of SlimPipe's schedule as the trainer
    /// runs it finds more bubble: every unit's vocabulary-parallel `HEAD` makes all stages meet,
    /// and at long sequences the uniform slices' attention grows along the sequence.
    #[test]
    fn slimpipe_as_run_has_more_bubble_than_its_closed_form() {
        let c = candidate(PipelineKind::SlimPipe {
            slices: 8,
            chunks: 1,
        });
        let closed = c.kind.bubble_ratio(4, 8).unwrap();
        let short = simulated_bubble(&space(1024), &c).unwrap();
        let long = simulated_bubble(&space(256 * 1024), &c).unwrap();
        println!("closed {closed}, simulated at 1K {short}, at 256K {long}");
        assert!(short > closed + 0.03, "{short} vs {closed}");
        assert!(long > short + 0.03, "{long} vs {short}");
    }

    /// At a long sequence the attention exchange (every pair) evens out the steps of SlimPipe's
    /// uniform slices, and here (interleaved, 16 slices) the simulated bubble drops; other kinds
    /// have no exchange to price.
    #[test]
    fn the_exchange_shortens_slimpipe_at_long_sequences() {
        let space = space(256 * 1024);
        let slim = candidate(PipelineKind::SlimPipe {
            slices: 16,
            chunks: 2,
        });
        let both = simulated_bubbles(&space, &slim).unwrap();
        let exchange = both.exchange.unwrap();
        println!(
            "SlimPipe 7B 256K p=4 n=16 v=2: {} without, {exchange} with",
            both.plain
        );
        assert_eq!(both.plain, simulated_bubble(&space, &slim).unwrap());
        assert!(exchange < both.plain - 0.01, "{both:?}");
        assert_eq!(both.best(), exchange);
        let seq = candidate(PipelineKind::Seq1F1B { slices: 4 });
        assert_eq!(simulated_bubbles(&space, &seq).unwrap().exchange, None);
    }
}
