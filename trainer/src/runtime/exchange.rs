//! SlimPipe's attention context exchange for a run: `parallel.attention_exchange` pairs the
//! ranks of each steady step by the cache lengths of their slices
//! (`seqpipe_schedule::insert_exchange`), and the executor computes each marked compute's
//! attention with its partner (`worker/exchange.rs`).

use seqpipe_schedule::{insert_exchange, Lowered, UnitCosts};

use super::partition::Partition;
use crate::error::{fail, Result};

/// `schedule` with its exchange pairs, placed on the simulated timeline of the costs every other
/// pass uses (forward 1, backward 2); a schedule that already has pairs (a schedule file) keeps
/// its own. The partner answers one request per layer of its own walk, so every virtual stage
/// must have the same number of layers; a schedule with nothing to exchange (one stage, one
/// slice per sequence) is refused rather than run without it.
pub fn with_exchange(schedule: Lowered, partition: &Partition) -> Result<Lowered> {
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
    let costs = UnitCosts::new(1.0, 2.0);
    let paired = insert_exchange(&schedule, |a| costs.cost(a))?;
    if !paired.iter().any(|a| a.pair.is_some()) {
        fail!(
            Config,
            "parallel.attention_exchange = true, but this schedule pairs no steady steps (it needs \
             several stages and several slices per sequence, whose cache lengths differ): set it \
             to false"
        );
    }
    Ok(Lowered::check(paired)?)
}
