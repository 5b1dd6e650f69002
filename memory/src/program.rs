//! The recomputation program (InfiniPipe, SPEC §5.2) of any lowered schedule, exact for a
//! runtime whose memory ledger is known action by action.
//!
//! Full recomputation of `c` layers of a unit removes `c · saved` bytes from its record from
//! its forward until just before its first backward piece (`B`, or `I` of a split backward),
//! where a `RECOMPUTE` rebuilds it. So if `held[r][t]` is what stage `r` holds during action `t`
//! with nothing recomputed, then with counts `c` it holds
//! `held[r][t] − Σ_{u : F(u) ≤ t < B(u)} saved(r, u) · c(r, u)` — linear in `c`, one constraint
//! per (stage, action) against the stage's budget (actions with the same live units keep only
//! their largest `held`). The caller's ledger supplies `held` and `saved`; this module only
//! reads the schedule.
//!
//! When every stage runs one model chunk and backwards the same units in the same order (1F1B,
//! Seq1F1B, ZB-H1, GPipe), the cells whose backwards run at the same moment share a variable,
//! InfiniPipe's anti-diagonal `𝒞[b + d − 1 − r]` (`b` the unit's place in the backward
//! order), so stages stay balanced in time; otherwise (interleaved schedules) each (stage,
//! unit) cell has its own. The program is a [`RecomputeProblem`], so its exact MILP, its
//! relaxation and its brute-force oracle apply.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{schedule_program, ProgramInputs};
//! use seqpipe_schedule::{one_f_one_b, Unit};
//! let schedule = one_f_one_b(2, 2).unwrap(); // stage 0: F0 F1 B0 B1, stage 1: F0 B0 F1 B1
//! // Bytes held during each action with nothing recomputed (the caller's ledger): 10 per unit.
//! let held = [vec![10.0, 20.0, 20.0, 10.0], vec![10.0; 4]];
//! let inputs = ProgramInputs { layers_per_chunk: 2, budgets: &[15.0, 15.0], held: &held };
//! // Each of a unit's 2 layers recomputed whole frees 4 bytes until its backward.
//! let program = schedule_program(&schedule, &inputs, |_, _| Some(4.0)).unwrap();
//! assert!(program.tied); // one chunk and one backward order: anti-diagonal variables
//! let plan = program.problem.solve().unwrap();
//! assert_eq!(program.recomputed(0, &plan.diagonal), vec![(Unit::new(1, 0, 0), 2)]);
//! assert_eq!(plan.recomputed_layers, 2);
//! ```

use std::collections::{BTreeMap, HashMap};

use seqpipe_schedule::{Op, Schedule, Unit};

use crate::error::{MemoryError, Result};
use crate::recompute::{RecomputeProblem, StepConstraint};

/// What the caller's ledger says of a schedule with nothing recomputed.
pub struct ProgramInputs<'a> {
    /// Layers of every model chunk, the upper bound of every count.
    pub layers_per_chunk: u64,
    /// Bytes each stage may hold.
    pub budgets: &'a [f64],
    /// Bytes each stage holds during each of its actions (`[stage][action]`).
    pub held: &'a [Vec<f64>],
}

/// The program of one schedule and which unit each variable column belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleProgram {
    /// The integer program; `problem.var[r][k]` is the variable of `units[r][k]`.
    pub problem: RecomputeProblem,
    /// Units of each stage in forward order.
    pub units: Vec<Vec<Unit>>,
    /// Whether the cells share InfiniPipe's anti-diagonal variables.
    pub tied: bool,
}

impl ScheduleProgram {
    /// `(unit, layers recomputed whole)` of every cell of `stage` that recomputes, under the
    /// variable values `values`.
    pub fn recomputed(&self, stage: usize, values: &[u64]) -> Vec<(Unit, u64)> {
        self.units[stage]
            .iter()
            .zip(&self.problem.var[stage])
            .map(|(u, &v)| (*u, values[v]))
            .filter(|&(_, layers)| layers > 0)
            .collect()
    }
}

/// One stage's units: forward order, backward order, and the action span `F(u)..B(u)` over
/// which each one's record is reduced.
struct StageUnits {
    forwards: Vec<Unit>,
    backwards: Vec<Unit>,
    spans: HashMap<Unit, (usize, usize)>,
}

fn stage_units(schedule: &Schedule) -> Vec<StageUnits> {
    schedule
        .actions
        .iter()
        .map(|list| {
            let (mut forwards, mut backwards) = (Vec::new(), Vec::new());
            let mut spans = HashMap::new();
            for (t, a) in list.iter().enumerate() {
                if a.op == Op::Forward {
                    forwards.push(a.unit());
                    spans.insert(a.unit(), (t, list.len()));
                } else if a.op.makes_input_grad() {
                    backwards.push(a.unit());
                    spans.entry(a.unit()).and_modify(|s| s.1 = t);
                }
            }
            StageUnits {
                forwards,
                backwards,
                spans,
            }
        })
        .collect()
}

/// Variable of each (stage, unit) cell, how many variables there are, and whether tied.
fn variables(stages: &[StageUnits], chunks: u32) -> (Vec<HashMap<Unit, usize>>, usize, bool) {
    let d = stages.len();
    let order = &stages[0].backwards;
    let tied = chunks == 1 && stages.iter().all(|s| s.backwards == *order);
    if tied {
        let place: HashMap<Unit, usize> = order.iter().enumerate().map(|(b, u)| (*u, b)).collect();
        let vars = (0..d)
            .map(|r| place.iter().map(|(u, b)| (*u, b + d - 1 - r)).collect())
            .collect();
        return (vars, order.len() + d - 1, true);
    }
    let mut next = 0;
    let vars = stages
        .iter()
        .map(|s| {
            s.forwards
                .iter()
                .map(|u| {
                    next += 1;
                    (*u, next - 1)
                })
                .collect()
        })
        .collect();
    (vars, next, false)
}

/// The recomputation program of `schedule` under `inputs`; `saved(stage, unit)` is the bytes
/// each layer of `unit` recomputed whole removes on `stage` (`None`: a unit the caller has no
/// price for, an error naming it).
pub fn schedule_program(
    schedule: &Schedule,
    inputs: &ProgramInputs<'_>,
    saved: impl Fn(usize, &Unit) -> Option<f64>,
) -> Result<ScheduleProgram> {
    let d = schedule.actions.len();
    crate::error::positive("stages", d as u64)?;
    crate::error::positive("layers per chunk", inputs.layers_per_chunk)?;
    let lengths: Vec<usize> = schedule.actions.iter().map(Vec::len).collect();
    let held_lengths: Vec<usize> = inputs.held.iter().map(Vec::len).collect();
    if inputs.budgets.len() != d || held_lengths != lengths {
        return Err(MemoryError::BadSchedule {
            kind: "recomputation program",
            requirement: "one budget per stage and one held figure per action",
            got: format!(
                "{} budgets for {d} stages, held figures {held_lengths:?} for programs of \
                 {lengths:?} actions",
                inputs.budgets.len()
            ),
        });
    }
    let stages = stage_units(schedule);
    let (var_of, count, tied) = variables(&stages, schedule.config.chunks);
    let mut weights = vec![0u64; count];
    let var: Vec<Vec<usize>> = stages
        .iter()
        .zip(&var_of)
        .map(|(s, vars)| s.forwards.iter().map(|u| vars[u]).collect())
        .collect();
    var.iter().flatten().for_each(|&v| weights[v] += 1);
    let mut constraints = Vec::new();
    for (r, units) in stages.iter().enumerate() {
        let price = |u: &Unit| {
            saved(r, u).ok_or_else(|| MemoryError::BadSchedule {
                kind: "recomputation program",
                requirement: "a price for every unit",
                got: format!("none for stage {r} {u:?}"),
            })
        };
        // Live units (by variable column) → the largest bytes held while they are live.
        let mut worst: BTreeMap<Vec<usize>, (usize, f64)> = BTreeMap::new();
        for (t, &held) in inputs.held[r].iter().enumerate() {
            let mut live: Vec<usize> = units
                .forwards
                .iter()
                .enumerate()
                .filter(|(_, u)| units.spans[u].0 <= t && t < units.spans[u].1)
                .map(|(k, _)| k)
                .collect();
            live.sort_unstable();
            let slot = worst.entry(live).or_insert((t, held));
            if held > slot.1 {
                *slot = (t, held);
            }
        }
        for (live, (step, held)) in worst {
            let terms = live
                .iter()
                .map(|&k| {
                    let u = &units.forwards[k];
                    Ok((var_of[r][u], 0.0, price(u)?))
                })
                .collect::<Result<Vec<_>>>()?;
            constraints.push(StepConstraint {
                stage: r,
                step,
                terms,
                fixed: held,
                budget: inputs.budgets[r],
            });
        }
    }
    Ok(ScheduleProgram {
        problem: RecomputeProblem {
            max_layers: inputs.layers_per_chunk,
            weights,
            constraints,
            var,
        },
        units: stages.into_iter().map(|s| s.forwards).collect(),
        tied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqpipe_schedule::{generate, ScheduleConfig, ScheduleKind};

    /// A program where each live unit adds 10 bytes to what a stage holds during an action,
    /// and each layer recomputed whole (of 2) saves 4 of them.
    fn program(kind: ScheduleKind, budget: f64) -> ScheduleProgram {
        let mut cfg = ScheduleConfig::new(kind, 3, 6);
        if kind == ScheduleKind::Interleaved {
            cfg = cfg.with_chunks(2);
        }
        let s = generate(&cfg).unwrap();
        let units = stage_units(&s);
        let held: Vec<Vec<f64>> = units
            .iter()
            .zip(&s.actions)
            .map(|(units, list)| {
                (0..list.len())
                    .map(|t| {
                        let live = units.spans.values().filter(|s| s.0 <= t && t < s.1);
                        10.0 * live.count() as f64
                    })
                    .collect()
            })
            .collect();
        let inputs = ProgramInputs {
            layers_per_chunk: 2,
            budgets: &[budget; 3],
            held: &held,
        };
        schedule_program(&s, &inputs, |_, _| Some(4.0)).unwrap()
    }

    #[test]
    fn one_chunk_schedules_tie_cells_on_anti_diagonals() {
        let p = program(ScheduleKind::OneFOneB, 100.0);
        assert!(p.tied);
        // 6 units and 3 stages: 6 + 3 − 1 diagonals, each cell on one of them.
        assert_eq!(p.problem.weights.len(), 8);
        assert_eq!(p.problem.weights.iter().sum::<u64>(), 18);
        // Stage 0's first unit is backwarded first and shares its variable with stage 2's.
        assert_eq!(p.problem.var[0][0], p.problem.var[2][0] + 2);
    }

    #[test]
    fn interleaved_schedules_give_every_cell_its_own_variable() {
        let p = program(ScheduleKind::Interleaved, 100.0);
        assert!(!p.tied);
        assert_eq!(p.problem.weights, vec![1; 3 * 6 * 2]);
    }

    #[test]
    fn the_solution_fits_every_action_and_is_the_brute_force_optimum() {
        // 1F1B on 3 stages holds 3 records on stage 0 at its peak: 30 bytes, 6 with both layers
        // of each recomputed.
        let p = program(ScheduleKind::OneFOneB, 22.0);
        let peak = p.problem.constraints.iter().map(|k| k.usage(&[0; 8]));
        assert_eq!(peak.fold(0.0, f64::max), 30.0);
        let plan = p.problem.solve().unwrap();
        assert!(p.problem.feasible(&plan.diagonal));
        let exact = p.problem.brute_force(1 << 20).unwrap();
        assert_eq!(plan.recomputed_layers, exact.recomputed_layers);
        assert!(!p.recomputed(0, &plan.diagonal).is_empty());
        assert!(program(ScheduleKind::OneFOneB, 5.0)
            .problem
            .solve()
            .is_err());
    }
}
