//! What the executor accepts: a [`Lowered`] schedule generated from the configuration or read
//! from a schedule file (PyTorch's CSV layout, or seqpipe's JSON). A schedule is checked when it
//! is loaded, before the first step: every op it holds is one the executor runs, and a schedule
//! that recomputes needs a recomputation granularity from the configuration.

use crate::error::{fail, Context, Result};
use std::ops::Range;
use std::path::Path;

use seqpipe_schedule::{csv, generate, Lowered, Op, Schedule, ScheduleConfig};

use crate::config::TrainConfig;
use crate::runtime::recompute::Recompute;

/// Refuses a schedule the run cannot execute as configured, naming the first offending action:
/// a `RECOMPUTE` when `recompute` is `none` says nothing of what its unit drops.
pub fn admit(schedule: &Lowered, recompute: &Recompute) -> Result<()> {
    if *recompute != Recompute::None {
        return Ok(());
    }
    for (stage, program) in schedule.actions.iter().enumerate() {
        if let Some((i, a)) = program
            .iter()
            .enumerate()
            .find(|(_, a)| a.op == Op::Recompute)
        {
            fail!(
                Config,
                "stage {stage}, action {i}: {} ({}: micro-batch {}, slice {}, chunk {}) needs a \
                 recomputation granularity: set recompute to selective or full",
                schedule.text(a),
                a.op,
                a.mb.index(),
                a.slice.index(),
                a.chunk.index()
            );
        }
    }
    Ok(())
}

/// Largest schedule file read: far above any real schedule's text.
const MAX_SCHEDULE_FILE: u64 = 64 << 20;

/// The schedule a run executes: `parallel.schedule_file` when set, else generated from `config`;
/// lowered (or, if the file says it is lowered, validated) and admitted.
pub fn load_schedule(cfg: &TrainConfig, config: &ScheduleConfig) -> Result<Lowered> {
    let schedule = match &cfg.parallel.schedule_file {
        None => return admitted(Lowered::lower(&generate(config)?)?, cfg),
        Some(path) => read_schedule(path, config)
            .with_context(|| format!("parallel.schedule_file = {}", path.display()))?,
    };
    let lowered = match schedule.lowered {
        true => Lowered::check(schedule)?,
        false => Lowered::lower(&schedule)?,
    };
    admitted(lowered, cfg)
}

fn admitted(lowered: Lowered, cfg: &TrainConfig) -> Result<Lowered> {
    admit(&lowered, &cfg.parallel.recompute)?;
    admit_vocab(&lowered, cfg.parallel.vocab_parallel)?;
    admit_exchange(&lowered, cfg.parallel.attention_exchange)?;
    if cfg.parallel.attention_exchange {
        admit_exchange_heads(&lowered, &crate::train::slice_ranges(cfg)?)?;
    }
    Ok(lowered)
}

/// Refuses attention-exchange marks in a run that does not exchange, naming the first.
pub fn admit_exchange(schedule: &Lowered, attention_exchange: bool) -> Result<()> {
    if attention_exchange {
        return Ok(());
    }
    for (stage, program) in schedule.actions.iter().enumerate() {
        if let Some((i, a)) = program.iter().enumerate().find(|(_, a)| a.pair.is_some()) {
            fail!(
                Config,
                "stage {stage}, action {i}: {} takes part in an attention exchange, but the run \
                 does not exchange: set parallel.attention_exchange = true",
                schedule.text(a)
            );
        }
    }
    Ok(())
}

/// Refuses an exchange that hands more tokens than its slice has before it (a schedule file
/// paired for longer sequences), naming the first.
pub fn admit_exchange_heads(schedule: &Lowered, slices: &[Range<usize>]) -> Result<()> {
    for (stage, program) in schedule.actions.iter().enumerate() {
        for (i, a) in program.iter().enumerate() {
            let head = a.pair.map_or(0, |p| p.head as usize);
            let cached = slices.get(a.slice.index()).map_or(0, |r| r.start);
            if head > cached {
                fail!(
                    Config,
                    "stage {stage}, action {i}: {} hands the oldest {head} tokens of its prefix, \
                     but slice {} starts at token {cached} (slices {slices:?}); pair the schedule \
                     for this sequence length (seqpipe schedule --exchange --seq-len)",
                    schedule.text(a),
                    a.slice.index()
                );
            }
        }
    }
    Ok(())
}

/// Refuses vocabulary-parallel actions in a run that holds whole tables, naming the first.
pub fn admit_vocab(schedule: &Lowered, vocab_parallel: bool) -> Result<()> {
    if vocab_parallel {
        return Ok(());
    }
    for (stage, program) in schedule.actions.iter().enumerate() {
        if let Some((i, a)) = program.iter().enumerate().find(|(_, a)| a.op.is_vocab()) {
            fail!(
                Config,
                "stage {stage}, action {i}: {} is a vocabulary-parallel action, but the run \
                 holds whole embedding and LM head tables: set parallel.vocab_parallel = true",
                schedule.text(a)
            );
        }
    }
    Ok(())
}

/// A schedule file: JSON (`seqpipe schedule --format json`, which carries its configuration,
/// required to equal the run's) or CSV (one row per stage, read with the run's configuration; it
/// counts as lowered when it holds a send or receive).
fn read_schedule(path: &Path, config: &ScheduleConfig) -> Result<Schedule> {
    let size = std::fs::metadata(path)?.len();
    if size > MAX_SCHEDULE_FILE {
        fail!(
            Config,
            "{size} bytes: a schedule file is at most {MAX_SCHEDULE_FILE} bytes"
        );
    }
    let text = std::fs::read_to_string(path)?;
    if text.trim_start().starts_with('{') {
        let schedule = Schedule::from_json(&text)?;
        if !same_shape(&schedule.config, config) {
            fail!(
                Config,
                "the file's schedule is for {:?}, the run is configured for {config:?}",
                schedule.config
            );
        }
        return Ok(schedule);
    }
    let lowered = ["SEND", "RECV"].iter().any(|op| text.contains(op));
    Ok(csv::from_csv(&text, *config, lowered)?)
}

/// Whether two configurations describe the same units (the group is a generator's detail).
fn same_shape(a: &ScheduleConfig, b: &ScheduleConfig) -> bool {
    (a.kind, a.stages, a.microbatches, a.slices, a.chunks)
        == (b.kind, b.stages, b.microbatches, b.slices, b.chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqpipe_schedule::{Action, ScheduleKind, Stage, Unit};

    fn lowered() -> Lowered {
        let cfg = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4);
        Lowered::lower(&generate(&cfg).unwrap()).unwrap()
    }

    #[test]
    fn generated_lowered_schedules_are_admitted() {
        admit(&lowered(), &Recompute::None).unwrap();
    }

    /// Inserts `ops` for micro-batch 2 on stage 1 where the schedule rules put memory ops (an
    /// offload after its forward, a reload or recomputation before its backward); returns the
    /// schedule and the position of the first inserted op.
    fn with_memory_ops(ops: &[Op]) -> (Lowered, usize) {
        let mut s = lowered().schedule().clone();
        let list = &mut s.actions[1];
        let mut first = usize::MAX;
        for &op in ops {
            let find = |want: Op| list.iter().position(|a| a.mb.index() == 2 && a.op == want);
            let at = match op {
                Op::Offload => find(Op::Forward).unwrap() + 1,
                _ => find(Op::Backward).unwrap(),
            };
            list.insert(at, Action::new(Stage(1), Unit::new(2, 0, 0), op));
            first = first.min(at);
        }
        (Lowered::check(s).unwrap(), first)
    }

    #[test]
    fn recomputation_needs_a_granularity_and_offload_is_admitted() {
        let (s, at) = with_memory_ops(&[Op::Recompute]);
        let e = admit(&s, &Recompute::None).unwrap_err().to_string();
        let text = format!("1{}2", Op::Recompute);
        assert!(e.contains(&format!("stage 1, action {at}: {text}")), "{e}");
        assert!(e.contains("selective or full"), "{e}");
        admit(&s, &Recompute::Selective).unwrap();
        let (s, _) = with_memory_ops(&[Op::Offload, Op::Reload]);
        admit(&s, &Recompute::None).unwrap();
    }
}
