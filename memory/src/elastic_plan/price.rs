//! The pipeline-grouping DP's prices: every candidate pipeline (a run of consecutive groups,
//! longest first) priced by its makespan under uniform recomputation, as
//! `PlanSetup::run_uniform` would give it, but without building the recomputation program or
//! keeping a timeline, and with each group's units priced once rather than once per candidate.
//! The DP prices up to [`MAX_GROUP`] candidates per group, so this is where elastic planning
//! spends its time.

use std::ops::Range;

use seqpipe_schedule::{elastic, group_pipelines_bounded, Grouping, Schedule};
use seqpipe_slicing::CostModel;

use super::{schedule_error, DocPiece, PlanSetup, MAX_GROUP};
use crate::error::Result;
use crate::recompute::ChunkMem;
use crate::window::{uniform_checkpoints_replayed, WindowInputs};

/// One micro-batch's units priced: memory per layer, logits bytes on the last stage, and the
/// forward time on one stage.
#[derive(Debug, Clone)]
pub(super) struct RowPrices {
    mem: Vec<ChunkMem>,
    logits: Vec<f64>,
    times: Vec<f64>,
}

impl PlanSetup {
    /// The prices of one micro-batch's `units`.
    pub(super) fn row_prices(
        &self,
        cost: &CostModel,
        units: &[Vec<DocPiece>],
    ) -> Result<RowPrices> {
        let (mem, logits) = units
            .iter()
            .map(|u| self.unit_mem(u))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let times = units.iter().map(|u| self.unit_time(cost, u)).collect();
        Ok(RowPrices { mem, logits, times })
    }

    /// The makespan `run_uniform` gives `schedule` (the same figure), its micro-batches priced
    /// by `rows`; `None` where even full recomputation does not fit.
    pub(super) fn uniform_makespan(
        &self,
        schedule: &Schedule,
        counts: &[u32],
        rows: &[&RowPrices],
    ) -> Result<Option<f64>> {
        let mem: Vec<Vec<ChunkMem>> = rows.iter().map(|r| r.mem.clone()).collect();
        let logits: Vec<Vec<f64>> = rows.iter().map(|r| r.logits.clone()).collect();
        let budgets = self.budgets()?;
        let inputs = WindowInputs {
            counts,
            mem: &mem,
            layers_per_stage: self.layers_per_stage()?,
            budgets: &budgets,
            last_stage_fixed: &logits,
        };
        let Some(c) = uniform_checkpoints_replayed(schedule, &inputs)? else {
            return Ok(None);
        };
        let times: Vec<&[f64]> = rows.iter().map(|r| r.times.as_slice()).collect();
        let span = self.simulate_with(schedule, counts, &times, |_, _| c)?;
        Ok(Some(span.makespan))
    }
}

/// The DP of SPEC §3 over the groups in `order` (longest first, `counts[g]` chunks in group
/// `g`, priced by `prices[g]`), each candidate pipeline priced by its makespan under uniform
/// recomputation; `Ok(None)` where some group fits no pipeline.
pub(super) fn split_into_pipelines(
    setup: &PlanSetup,
    order: &[usize],
    counts: &[u32],
    prices: &[RowPrices],
) -> Result<Option<Grouping>> {
    let mut failure = None;
    let price = |range: Range<usize>| match price_pipeline(setup, &order[range], counts, prices) {
        Ok(makespan) => makespan,
        Err(e) => {
            failure.get_or_insert(e);
            None
        }
    };
    // Per group, longest first: its units' forward times, summed and the shortest.
    let forwards: Vec<(f64, f64)> = order
        .iter()
        .map(|&g| {
            let times = &prices[g].times;
            let shortest = times.iter().copied().fold(f64::INFINITY, f64::min);
            (times.iter().sum(), shortest)
        })
        .collect();
    // Every stage runs every unit's forward and backward (at least three forwards' time); the
    // last stage starts only once the first unit's forward has crossed the `p − 1` stages before
    // it, and its last backward still crosses them after it ends. Scaled a hair down so that
    // rounding never lifts it above a price it should bound.
    let hops = 3.0 * (setup.stages as f64 - 1.0);
    let lower_bound = |range: Range<usize>| {
        let (sum, shortest) = forwards[range]
            .iter()
            .fold((0.0, f64::INFINITY), |(s, m), &(t, f)| (s + t, m.min(f)));
        (3.0 * sum + hops * shortest) * (1.0 - 1e-12)
    };
    let grouping = group_pipelines_bounded(order.len(), Some(MAX_GROUP), price, lower_bound);
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(grouping.ok())
}

/// One candidate pipeline of `groups` (consecutive in the longest-first order) priced.
fn price_pipeline(
    setup: &PlanSetup,
    groups: &[usize],
    counts: &[u32],
    prices: &[RowPrices],
) -> Result<Option<f64>> {
    let sub: Vec<u32> = groups.iter().map(|&g| counts[g]).collect();
    let e = elastic(setup.stages as u32, &sub).map_err(|e| schedule_error(e.to_string()))?;
    let rows: Vec<&RowPrices> = e.order.iter().map(|&j| &prices[groups[j]]).collect();
    setup.uniform_makespan(&e.schedule, &e.slice_counts, &rows)
}
