//! [`Lowered`]: a schedule in the only form an executor runs — its sends and receives in place and
//! every rule of [`crate::validate`] holding. The type is the check: it is made only by lowering a
//! planned schedule or by validating one that arrives already lowered (a hand-edited CSV), so a
//! runtime that takes a `Lowered` never meets an unlowered or invalid program.
//!
//! Passes that rewrite the program (offload, recomputation, attention exchange) go between the
//! plan and [`Lowered::lower`] (or produce a lowered schedule that [`Lowered::check`] accepts),
//! so they reach the executor without touching it.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{one_f_one_b, Lowered, ScheduleError};
//! let planned = one_f_one_b(2, 1).unwrap();
//! let runnable = Lowered::lower(&planned).unwrap();
//! assert!(runnable.lowered);
//! assert_eq!(runnable.len(), 8); // 4 computes, 2 sends, 2 receives
//! // A schedule without its sends and receives is not accepted as runnable.
//! assert!(matches!(Lowered::check(planned), Err(ScheduleError::NotLowered { .. })));
//! ```

use std::ops::Deref;

use crate::error::{Result, ScheduleError};
use crate::lower::lower;
use crate::schedule::Schedule;
use crate::validate::validate;

/// A lowered, valid schedule (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Lowered(Schedule);

impl Lowered {
    /// Lowers a planned schedule (any sends/receives it holds are rebuilt) and validates it.
    pub fn lower(schedule: &Schedule) -> Result<Lowered> {
        Lowered::check(lower(schedule)?)
    }

    /// Accepts a schedule that claims to be lowered (its flag set, e.g. read from a file) if every
    /// rule holds; otherwise names the first violations.
    pub fn check(schedule: Schedule) -> Result<Lowered> {
        if !schedule.lowered {
            return Err(ScheduleError::NotLowered {
                reason: "it is not marked lowered: lower it (sends and receives inserted) first"
                    .into(),
            });
        }
        let violations = validate(&schedule);
        if let Some(first) = violations.first() {
            return Err(ScheduleError::NotLowered {
                reason: format!("{} rule violation(s), the first: {first}", violations.len()),
            });
        }
        Ok(Lowered(schedule))
    }

    /// The schedule itself, for reading.
    pub fn schedule(&self) -> &Schedule {
        &self.0
    }
}

impl Deref for Lowered {
    type Target = Schedule;

    fn deref(&self) -> &Schedule {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, Action, Op, ScheduleConfig, ScheduleKind, Stage, Unit};

    fn planned() -> Schedule {
        generate(&ScheduleConfig::new(ScheduleKind::Seq1F1B, 2, 3).with_slices(2)).unwrap()
    }

    #[test]
    fn a_planned_schedule_lowers_and_a_lowered_one_is_accepted_again() {
        let lowered = Lowered::lower(&planned()).unwrap();
        assert!(lowered.lowered && lowered.iter().any(|a| a.op == Op::SendAct));
        assert_eq!(Lowered::check(lowered.schedule().clone()).unwrap(), lowered);
    }

    #[test]
    fn an_unlowered_or_broken_schedule_is_refused_with_the_reason() {
        let e = Lowered::check(planned()).unwrap_err().to_string();
        assert!(e.contains("not marked lowered"), "{e}");
        let mut broken = Lowered::lower(&planned()).unwrap().schedule().clone();
        let recv = broken.actions[1]
            .iter()
            .position(|a| a.op == Op::RecvAct)
            .unwrap();
        broken.actions[1].remove(recv);
        let e = Lowered::check(broken).unwrap_err().to_string();
        assert!(e.contains("violation"), "{e}");
        let mut extra = Lowered::lower(&planned()).unwrap().schedule().clone();
        extra.actions[0].push(Action::new(Stage(0), Unit::new(9, 0, 0), Op::Forward));
        assert!(Lowered::check(extra).is_err());
    }
}
