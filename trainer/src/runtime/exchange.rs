//! SlimPipe's attention context exchange for a run: `parallel.attention_exchange` pairs the
//! ranks of each steady step by the attention of their slices
//! (`seqpipe_schedule::insert_exchange`), and the executor computes each heavy compute's
//! attention with its partner (`worker/exchange.rs`), which answers whenever a request arrives
//! (`worker/serve.rs`).

use std::ops::Range;

use seqpipe_schedule::{exchange_steps, insert_exchange, strip_exchange, ExchangePolicy, Lowered};

use super::partition::Partition;
use crate::error::{fail, Result};
use crate::model::ModelConfig;
use crate::train::flop_costs;

/// `schedule` with its exchange pairs for a sequence sliced into `slices`: those `policy` keeps
/// on the iteration simulated with each compute's FLOPs ([`flop_costs`]); a schedule that
/// already has pairs (a schedule file) keeps its own. The partner answers one request per layer
/// of the heavy side's walk, so every virtual stage must have the same number of layers; a
/// schedule with nothing to exchange (one stage, one slice per sequence) is refused rather than
/// run without it.
pub fn with_exchange(
    schedule: Lowered,
    model: &ModelConfig,
    partition: &Partition,
    slices: &[Range<usize>],
    policy: ExchangePolicy,
) -> Result<Lowered> {
    let counts: Vec<usize> = partition.ranges.iter().map(|r| r.len()).collect();
    if counts.iter().any(|&c| c != counts[0]) {
        fail!(
            Config,
            "parallel.attention_exchange = true needs the same number of layers on every \
             virtual stage (the partners walk their layers together); the layer counts are \
             {counts:?}"
        );
    }
    if schedule.iter().any(|a| a.pair.is_some()) {
        return Ok(schedule);
    }
    let prices = flop_costs(model, schedule.config.stages, &schedule, partition, slices);
    let (cost, column) = (|a: &_| prices.cost(a), |a: &_| prices.column(a));
    let bounds: Vec<u64> = std::iter::once(0)
        .chain(slices.iter().map(|r| r.end as u64))
        .collect();
    let paired = insert_exchange(&schedule, cost, column, &bounds, policy)?;
    if !paired.iter().any(|a| a.pair.is_some()) {
        fail!(
            Config,
            "parallel.attention_exchange = true, but no steady step of this schedule pairs \
             ({policy:?}: it needs several stages and several slices per sequence, and a pair \
             must not lengthen the iteration simulated with each compute's FLOPs): set it to \
             false"
        );
    }
    Ok(Lowered::check(paired)?)
}

/// The steady steps the exchange pairs in `schedule` for a sequence sliced into `slices`
/// (`seqpipe_schedule::exchange_steps` on the timeline [`with_exchange`] prices): each step the
/// `(stage, program position)` of one compute of every stage.
pub fn steps(
    schedule: &Lowered,
    model: &ModelConfig,
    partition: &Partition,
    slices: &[Range<usize>],
) -> Result<Vec<Vec<(usize, usize)>>> {
    let prices = flop_costs(model, schedule.config.stages, schedule, partition, slices);
    Ok(exchange_steps(&strip_exchange(schedule), |a| {
        prices.cost(a)
    })?)
}
