//! The planner's ranking by simulation: the leading plans of [`search`](crate::search), their
//! bubbles simulated on the exact schedules the trainer runs ([`simulated_bubbles`]), re-ranked.
//!
//! A full simulation per candidate is too slow (Llama-70B at 512K on 256 GPUs has 630 distinct
//! schedules, one to half a second each for SlimPipe's thousands of slices per stage), so the
//! ranking is a branch and bound over the closed forms' order:
//! - the bubble depends only on the schedule (kind, stages, micro-batches), not on TP, CP,
//!   recomputation or offload, so each schedule is simulated once and shared by its plans;
//! - a kind's closed form assumes steps of equal cost, and uneven steps only add idle time, so
//!   it is a lower bound of the simulated bubble (tested over the planner's matrix), and a plan's
//!   closed-form MFU is an upper bound of its simulated one;
//! - plans are simulated in the closed forms' order until `top` simulated plans rank ahead of the
//!   next plan's upper bound: no plan after it can then enter the top, and the top is exact.
//!
//! A cap on the schedules simulated keeps the answer quick; the ranking says whether it reached
//! the certificate before the cap. A schedule the generator refuses (e.g. interleaving whose
//! micro-batches do not fill their groups) is not a plan and leaves the ranking.

use std::collections::HashMap;

use seqpipe_schedule::ScheduleError;

use crate::error::{MemoryError, Result};
use crate::pipeline::PipelineKind;
use crate::search::{evaluate_at, plan_order, BubbleSource, Candidate, Evaluation, SearchSpace};
use crate::simulated::{simulated_bubbles, SimulatedBubbles};

/// The schedule a candidate runs, which alone sets its simulated bubble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ScheduleShape {
    kind: PipelineKind,
    stages: u64,
    microbatches: u64,
}

impl ScheduleShape {
    fn of(c: &Candidate) -> Self {
        ScheduleShape {
            kind: c.kind,
            stages: c.stages,
            microbatches: c.microbatches,
        }
    }
}

/// The outcome of [`rank_by_simulation`].
#[derive(Debug, Clone)]
pub struct Ranking {
    /// The simulated fitting plans in the planner's order, then the fitting plans not simulated
    /// (closed-form bubbles, upper-bound MFUs) in theirs, then the plans that do not fit.
    pub evaluations: Vec<Evaluation>,
    /// Whether the first `top` are the best by simulation: every plan not simulated has an
    /// upper bound below them.
    pub exact: bool,
    /// Distinct schedules simulated by this ranking (not counting those it found known).
    pub schedules_simulated: usize,
    /// Plans dropped because the schedule generator refuses their schedule.
    pub refused: usize,
    /// A plan whose simulated bubble came out below its closed form (the bound the certificate
    /// rests on failed; `exact` is then false), with both bubbles.
    pub bound_broken: Option<(Candidate, f64, f64)>,
}

/// The schedules simulated so far, shared between rankings over the same [`SearchSpace`].
#[derive(Debug, Clone, Default)]
pub struct Simulations {
    /// Per schedule, its bubbles, or `None` where the generator refuses it.
    bubbles: HashMap<ScheduleShape, Option<SimulatedBubbles>>,
}

impl Simulations {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The simulated bubbles of `c`'s schedule, where it was simulated.
    pub fn bubbles(&self, c: &Candidate) -> Option<SimulatedBubbles> {
        self.bubbles.get(&ScheduleShape::of(c)).copied().flatten()
    }

    /// Distinct schedules simulated.
    pub fn len(&self) -> usize {
        self.bubbles.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.bubbles.is_empty()
    }
}

/// Re-ranks `evals` (the output of [`search`](crate::search), in its order, or any part of it)
/// by simulation until the first `top` fitting plans are certain or `max_schedules` schedules
/// not in `known` have been simulated (`None`: no cap); what it simulates joins `known`. See the
/// module header.
pub fn rank_by_simulation(
    space: &SearchSpace,
    evals: Vec<Evaluation>,
    top: usize,
    max_schedules: Option<usize>,
    known: &mut Simulations,
) -> Result<Ranking> {
    let (fitting, rest): (Vec<Evaluation>, Vec<Evaluation>) =
        evals.into_iter().partition(Evaluation::fits);
    let mut walk = Walk {
        space,
        top: top.max(1),
        best: Vec::new(),
        simulated: Vec::new(),
        bubbles: known,
        new: 0,
        refused: 0,
        bound_broken: None,
    };
    let cap = max_schedules.unwrap_or(usize::MAX);
    let mut next = 0;
    let exact = loop {
        let Some(e) = fitting.get(next) else {
            break walk.bound_broken.is_none();
        };
        if walk.certain_before(e) {
            break walk.bound_broken.is_none();
        }
        let shape = ScheduleShape::of(&e.candidate);
        match walk.bubbles.bubbles.get(&shape) {
            Some(&b) => {
                walk.score(e, b)?;
                next += 1;
            }
            None if walk.new >= cap => break false,
            None => walk.simulate_ahead(&fitting[next..], cap)?,
        }
    };
    let mut evaluations = walk.simulated;
    evaluations.sort_by(plan_order);
    evaluations.extend(fitting.into_iter().skip(next));
    evaluations.extend(rest);
    Ok(Ranking {
        evaluations,
        exact,
        schedules_simulated: walk.new,
        refused: walk.refused,
        bound_broken: walk.bound_broken,
    })
}

/// The branch and bound's state.
struct Walk<'a> {
    space: &'a SearchSpace,
    top: usize,
    /// The best `top` simulated plans, in order.
    best: Vec<Evaluation>,
    simulated: Vec<Evaluation>,
    bubbles: &'a mut Simulations,
    /// Schedules this walk simulated.
    new: usize,
    refused: usize,
    bound_broken: Option<(Candidate, f64, f64)>,
}

impl Walk<'_> {
    /// Whether `top` simulated plans rank ahead of `bound` (a closed-form evaluation), so no
    /// plan at or after it can enter the top.
    fn certain_before(&self, bound: &Evaluation) -> bool {
        self.best.len() == self.top
            && self
                .best
                .last()
                .is_some_and(|last| plan_order(last, bound).is_lt())
    }

    /// Scores `e` with its schedule's simulated bubbles (`None`: refused).
    fn score(&mut self, e: &Evaluation, bubbles: Option<SimulatedBubbles>) -> Result<()> {
        let Some(b) = bubbles else {
            self.refused += 1;
            return Ok(());
        };
        let source = match b.exchange_helps() {
            true => BubbleSource::SimulatedWithExchange,
            false => BubbleSource::Simulated,
        };
        // Beyond rounding: where the closed form is exact (equal steps), the two agree to ~1e-16.
        if b.best() < e.bubble - 1e-9 && self.bound_broken.is_none() {
            self.bound_broken = Some((e.candidate, e.bubble, b.best()));
        }
        let scored = evaluate_at(self.space, &e.candidate, b.best(), source)?;
        let at = self
            .best
            .partition_point(|x| plan_order(x, &scored).is_le());
        if at < self.top {
            self.best.insert(at, scored);
            self.best.truncate(self.top);
        }
        self.simulated.push(scored);
        Ok(())
    }

    /// Simulates the next schedules not yet simulated among `ahead`, as many at once as there
    /// are cores (and no more than `cap` in all).
    fn simulate_ahead(&mut self, ahead: &[Evaluation], cap: usize) -> Result<()> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let room = cap.saturating_sub(self.new).min(cores);
        let mut batch: Vec<(ScheduleShape, Candidate)> = Vec::new();
        for e in ahead {
            let shape = ScheduleShape::of(&e.candidate);
            if batch.len() == room {
                break;
            }
            let known = self.bubbles.bubbles.contains_key(&shape);
            if !known && batch.iter().all(|(s, _)| *s != shape) {
                batch.push((shape, e.candidate));
            }
        }
        let candidates: Vec<Candidate> = batch.iter().map(|(_, c)| *c).collect();
        let results = simulate_all(self.space, &candidates);
        for ((shape, _), result) in batch.into_iter().zip(results) {
            let bubbles = match result {
                Ok(b) => Some(b),
                Err(MemoryError::Schedule(e)) if refused(&e) => None,
                Err(e) => return Err(e),
            };
            self.bubbles.bubbles.insert(shape, bubbles);
            self.new += 1;
        }
        Ok(())
    }
}

/// Whether the generator refused the configuration (it is not a plan), as opposed to a fault in
/// generating or simulating a schedule it accepted (a bug, which goes on as an error).
fn refused(e: &ScheduleError) -> bool {
    matches!(
        e,
        ScheduleError::NotPositive { .. }
            | ScheduleError::Unsupported { .. }
            | ScheduleError::NotDivisible { .. }
            | ScheduleError::TooLarge { .. }
            | ScheduleError::OutOfRange { .. }
    )
}

/// [`simulated_bubbles`] of each candidate, on a thread each.
fn simulate_all(space: &SearchSpace, candidates: &[Candidate]) -> Vec<Result<SimulatedBubbles>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = candidates
            .iter()
            .map(|c| scope.spawn(move || simulated_bubbles(space, c)))
            .collect();
        handles
            .into_iter()
            // A panic in a simulation is a bug: it goes on as itself.
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{candidates, evaluate, search};

    /// Llama-7B at `seq_len` tokens on `gpus` H100s, 8 sequences per iteration.
    fn space(seq_len: u64, gpus: u64, min_stages: u64) -> SearchSpace {
        let h100 = crate::gpu::gpu_preset("h100").unwrap();
        SearchSpace {
            shape: seqpipe_slicing::preset("llama-7b").unwrap(),
            seq_len,
            gpus,
            global_batch: 8,
            gpu: h100,
            budget_bytes: h100.memory_bytes,
            efficiency: 0.5.into(),
            max_tp: 2,
            max_cp: 2,
            min_stages,
        }
    }

    /// Every schedule the planner searches, once, with its closed-form evaluation.
    fn schedules(space: &SearchSpace) -> Vec<Evaluation> {
        let mut seen = std::collections::HashSet::new();
        candidates(space)
            .iter()
            .filter(|c| seen.insert(ScheduleShape::of(c)))
            .filter_map(|c| evaluate(space, c).ok())
            .collect()
    }

    /// The certificate rests on this: over every schedule the planner searches, at a short and
    /// a long sequence, the closed form's bubble is at most the simulated one (as generated and
    /// with the exchange), so a closed-form MFU bounds the simulated MFU from above.
    #[test]
    fn closed_forms_bound_the_simulated_bubbles() {
        let mut checked = 0;
        for seq_len in [4096, 128 * 1024] {
            let space = space(seq_len, 8, 2);
            for e in schedules(&space) {
                let Ok(b) = simulated_bubbles(&space, &e.candidate) else {
                    continue; // refused by the generator: not a plan
                };
                let c = &e.candidate;
                assert!(
                    b.best() >= e.bubble - 1e-12,
                    "{} p={} m={} at {seq_len}: closed form {} > simulated {b:?}",
                    c.kind,
                    c.stages,
                    c.microbatches,
                    e.bubble
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked} schedules");
    }

    /// The branch and bound's top equals the top of simulating every fitting plan, and it
    /// simulates fewer schedules to find it.
    #[test]
    fn the_certified_top_is_the_exhaustive_top() {
        let space = space(64 * 1024, 8, 2);
        let evals = search(&space).unwrap();
        let mut every = Simulations::new();
        let all = rank_by_simulation(&space, evals.clone(), usize::MAX, None, &mut every).unwrap();
        assert!(all.exact);
        let fitting: Vec<&Evaluation> = all.evaluations.iter().filter(|e| e.fits()).collect();
        assert!(fitting
            .iter()
            .all(|e| e.bubble_source != BubbleSource::ClosedForm));
        for top in [1, 5] {
            let mut known = Simulations::new();
            let ranked = rank_by_simulation(&space, evals.clone(), top, None, &mut known).unwrap();
            assert!(ranked.exact);
            println!(
                "top {top}: {} of {} schedules simulated",
                ranked.schedules_simulated,
                every.len()
            );
            assert!(ranked.schedules_simulated < every.len());
            for (a, b) in ranked.evaluations.iter().zip(&fitting).take(top) {
                assert_eq!(a.candidate, b.candidate);
                assert_eq!(a.mfu, b.mfu);
            }
        }
    }

    /// With a cap too small to settle the top, the ranking says so; every plan stays listed, the
    /// simulated ones first, and a second ranking reuses what the first simulated.
    #[test]
    fn a_cap_too_small_leaves_the_top_uncertain() {
        let space = space(64 * 1024, 8, 2);
        let evals = search(&space).unwrap();
        let mut known = Simulations::new();
        let ranked = rank_by_simulation(&space, evals.clone(), 5, Some(1), &mut known).unwrap();
        assert!(!ranked.exact);
        assert_eq!((ranked.schedules_simulated, known.len()), (1, 1));
        assert_eq!(ranked.evaluations.len(), evals.len());
        let first = &ranked.evaluations[0];
        assert_ne!(first.bubble_source, BubbleSource::ClosedForm);
        assert!(known.bubbles(&first.candidate).is_some());
        let again = rank_by_simulation(&space, evals, 5, Some(1), &mut known).unwrap();
        assert_eq!(known.len(), 2, "the second ranking simulated one more");
        assert!(again.evaluations[0].mfu >= first.mfu);
    }

    /// Interleaving whose micro-batches do not fill their groups passes the closed form but not
    /// the generator: such plans leave the ranking, counted.
    #[test]
    fn plans_the_generator_refuses_leave_the_ranking() {
        // 8 stages, 8 sequences over 2 replicas: 4 micro-batches, not a multiple of 8.
        let space = space(4096, 16, 8);
        let interleaved: Vec<Evaluation> = search(&space)
            .unwrap()
            .into_iter()
            .filter(|e| {
                let c = &e.candidate;
                matches!(c.kind, PipelineKind::Interleaved { .. }) && c.microbatches % c.stages != 0
            })
            .collect();
        let fitting = interleaved.iter().filter(|e| e.fits()).count();
        assert!(fitting > 0);
        let mut known = Simulations::new();
        let ranked = rank_by_simulation(&space, interleaved, 1, None, &mut known).unwrap();
        assert_eq!(ranked.refused, fitting);
        assert!(ranked.evaluations.iter().all(|e| !e.fits()));
        assert!(ranked.exact);
    }
}
