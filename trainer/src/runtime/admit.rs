//! What the executor accepts: a lowered schedule whose every op it runs. A schedule is checked
//! when it is loaded, before the first step, so an op the executor cannot run (offload, reload,
//! recomputation: planned, not yet executed) is an error naming it, never skipped mid-run.

use anyhow::bail;
use seqpipe_schedule::{Op, Schedule};

/// The ops [`super::worker::StageWorker`] runs.
pub fn runs(op: Op) -> bool {
    !matches!(op, Op::Offload | Op::Reload | Op::Recompute)
}

/// Refuses a schedule the executor cannot run as given, naming the first offending action.
pub fn admit(schedule: &Schedule) -> anyhow::Result<()> {
    if !schedule.lowered {
        bail!(
            "the executor runs lowered schedules (with their sends and receives); lower it first"
        );
    }
    for (stage, program) in schedule.actions.iter().enumerate() {
        if let Some((i, a)) = program.iter().enumerate().find(|(_, a)| !runs(a.op)) {
            bail!(
                "stage {stage}, action {i}: {} (micro-batch {}, slice {}, chunk {}) is not run by \
                 this executor yet; plan without offload and recomputation",
                a.op,
                a.mb.index(),
                a.slice.index(),
                a.chunk.index()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqpipe_schedule::{generate, lower, Action, ScheduleConfig, ScheduleKind, Stage, Unit};

    fn lowered() -> Schedule {
        let cfg = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4);
        lower(&generate(&cfg).unwrap()).unwrap()
    }

    #[test]
    fn generated_lowered_schedules_are_admitted() {
        admit(&lowered()).unwrap();
    }

    #[test]
    fn a_hand_inserted_offload_is_refused_with_its_text() {
        for op in [Op::Offload, Op::Reload, Op::Recompute] {
            let mut s = lowered();
            let at = Action::new(Stage(1), Unit::new(2, 0, 0), op);
            s.actions[1].insert(3, at);
            let e = admit(&s).unwrap_err().to_string();
            assert!(
                e.contains("stage 1, action 3") && e.contains(&op.to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn an_unlowered_schedule_is_refused() {
        let cfg = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4);
        let e = admit(&generate(&cfg).unwrap()).unwrap_err().to_string();
        assert!(e.contains("lowered"), "{e}");
    }
}
