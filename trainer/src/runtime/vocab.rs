//! Vocabulary parallelism for a run: `parallel.vocab_parallel` shards the embedding and the LM
//! head over the stages (each holds `V/p` rows, `model::params::vocab_rows`), and the schedule
//! gets each unit's `EMBED`, `HEAD` and `EMBED_B` actions on every stage
//! (`seqpipe_schedule::insert_vocab_parallel`), which the executor runs (`worker/vocab.rs`).

use seqpipe_schedule::{insert_vocab_parallel, Lowered, UnitCosts};

use crate::error::Result;

/// `schedule` with the vocabulary-parallel actions, placed by the simulated timeline of the
/// schedule under the costs every other pass uses (forward 1, backward 2); a schedule that
/// already has them (a schedule file) keeps its own.
pub fn with_vocab_parallel(schedule: Lowered) -> Result<Lowered> {
    if schedule.iter().any(|a| a.op.is_vocab()) {
        return Ok(schedule);
    }
    let costs = UnitCosts::new(1.0, 2.0);
    Ok(Lowered::check(insert_vocab_parallel(&schedule, |a| {
        costs.cost(a)
    })?)?)
}
