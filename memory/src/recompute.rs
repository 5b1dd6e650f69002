//! Adaptive recomputation (InfiniPipe, SPEC §5.2): how many layers of each (chunk, stage) to
//! checkpoint so that every stage fits its budget at every step, recomputing as little as possible.
//!
//! Chunks (micro-batches, possibly slices of one long sequence) run 1F1B on `d` stages: a stage
//! forwards while fewer than `d − r` chunks are alive or while the next backward's forward has not
//! happened yet (a split sequence is backwarded last slice first), else it runs the next backward.
//! Backward order is FIFO across sequences and LIFO within one. Chunks whose backwards run at the
//! same moment on different stages lie on one anti-diagonal and share a variable:
//! `ckpt(r, k) = 𝒞[f2b[k] + d − 1 − r]`, `n + d − 1` variables in `0..=L/d`. At the step after each
//! forward, `Σ_alive (I_r[k] − F[k]·ckpt(r, k)) ≤ budget_r`. The objective is the number of
//! recomputed layers, `Σ_j (cells on diagonal j)·𝒞_j`. Solved exactly as a MILP with good_lp's
//! pure-Rust microlp backend, or in polynomial time from the linear relaxation
//! ([`RecomputeProblem::solve_relaxed`]); [`RecomputeProblem::brute_force`] is the oracle for small
//! instances.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{ChunkMem, RecomputeProblem};
//! // Three one-chunk sequences on 2 stages of 4 layers each: 10 bytes per layer, of which a
//! // checkpointed layer keeps 2.
//! let chunk = |sequence| ChunkMem { sequence, per_layer: 10.0, kept_per_layer: 2.0, fixed: 0.0 };
//! let chunks = [chunk(0), chunk(1), chunk(2)];
//! let problem = RecomputeProblem::build(&chunks, 4, &[70.0, 70.0], &[]).unwrap();
//! let plan = problem.solve().unwrap();
//! // Stage 0 holds two chunks (80 > 70): checkpoint 2 layers of its chunk 1, and the tied cell
//! // on stage 1's anti-diagonal (chunk 2) recomputes as many.
//! assert_eq!(plan.per_stage, vec![vec![0, 2, 0], vec![0, 0, 2]]);
//! assert_eq!(plan.recomputed_layers, 4);
//! assert_eq!(problem.brute_force(1 << 20).unwrap(), plan);
//! ```

use good_lp::{constraint, variable, Expression, ProblemVariables, Solution, SolverModel};
use serde::{Deserialize, Serialize};

use crate::error::{MemoryError, Result};

/// Memory of one chunk on one stage, per layer of that stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChunkMem {
    /// Sequence the chunk belongs to (consecutive chunks of one sequence are its slices).
    pub sequence: usize,
    /// Saved bytes per layer without recomputation.
    pub per_layer: f64,
    /// Bytes per layer a checkpointed layer still keeps (its input, and K/V of a split chunk).
    pub kept_per_layer: f64,
    /// Bytes no recomputation removes (dK/dV buffers of earlier slices, logits).
    pub fixed: f64,
}

/// One memory constraint: the alive chunks of one stage after one forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepConstraint {
    /// Stage `r` (0-based).
    pub stage: usize,
    /// Index of the forward after which it holds.
    pub step: usize,
    /// `(variable, bytes at no recomputation, bytes saved per checkpointed layer)` per alive chunk.
    pub terms: Vec<(usize, f64, f64)>,
    /// Bytes held at this step that no recomputation changes (beyond the terms' own).
    #[serde(default)]
    pub fixed: f64,
    /// Budget of the stage (memory minus model states).
    pub budget: f64,
}

impl StepConstraint {
    /// Bytes of the alive chunks under the checkpoint counts `c`.
    pub fn usage(&self, c: &[u64]) -> f64 {
        let terms: f64 = self
            .terms
            .iter()
            .map(|&(var, full, saved)| full - saved * c[var] as f64)
            .sum();
        self.fixed + terms
    }
}

/// The whole integer program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecomputeProblem {
    /// Upper bound of every variable, `L/d`.
    pub max_layers: u64,
    /// Objective weight of each variable: the (stage, chunk) cells tied to it.
    pub weights: Vec<u64>,
    /// Every step constraint.
    pub constraints: Vec<StepConstraint>,
    /// `var[r][k]`: the variable of chunk `k` on stage `r`.
    pub var: Vec<Vec<usize>>,
}

/// A solution: checkpointed layers per variable and per (stage, chunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecomputePlan {
    /// `𝒞_j` per anti-diagonal.
    pub diagonal: Vec<u64>,
    /// `ckpt[r][k]`.
    pub per_stage: Vec<Vec<u64>>,
    /// Total recomputed layers `Σ_j weight_j·𝒞_j`.
    pub recomputed_layers: u64,
}

/// Backward order of chunks: sequences in order, each one's chunks last first.
fn backward_order(chunks: &[ChunkMem]) -> Vec<usize> {
    let mut order = Vec::with_capacity(chunks.len());
    let mut start = 0;
    while start < chunks.len() {
        let seq = chunks[start].sequence;
        let end = (start..chunks.len())
            .find(|&k| chunks[k].sequence != seq)
            .unwrap_or(chunks.len());
        order.extend((start..end).rev());
        start = end;
    }
    order
}

/// Alive chunk sets of stage `r` after each of its forwards, in forward order.
fn alive_sets(chunks: &[ChunkMem], order: &[usize], window: usize) -> Vec<Vec<usize>> {
    let n = chunks.len();
    let (mut next_f, mut next_b) = (0, 0);
    let mut alive: Vec<usize> = Vec::new();
    let mut sets = Vec::with_capacity(n);
    while next_b < n {
        let must_forward = next_b < n && order[next_b] >= next_f;
        if next_f < n && (alive.len() < window || must_forward) {
            alive.push(next_f);
            next_f += 1;
            sets.push(alive.clone());
        } else {
            let k = order[next_b];
            alive.retain(|&a| a != k);
            next_b += 1;
        }
    }
    sets
}

impl RecomputeProblem {
    /// Builds the program for `chunks` (forward order) on `budgets.len()` stages of
    /// `layers_per_stage` layers each; `last_stage_fixed` is added to the last stage only (logits).
    pub fn build(
        chunks: &[ChunkMem],
        layers_per_stage: u64,
        budgets: &[f64],
        last_stage_fixed: &[f64],
    ) -> Result<Self> {
        let d = budgets.len();
        crate::error::positive("stages", d as u64)?;
        crate::error::positive("chunks", chunks.len() as u64)?;
        let n = chunks.len();
        let order = backward_order(chunks);
        let mut f2b = vec![0; n];
        for (b, &k) in order.iter().enumerate() {
            f2b[k] = b;
        }
        let mut weights = vec![0u64; n + d - 1];
        let mut var = vec![vec![0usize; n]; d];
        for (r, row) in var.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v = f2b[k] + d - 1 - r;
                weights[*v] += 1;
            }
        }
        let l = layers_per_stage as f64;
        let mut constraints = Vec::new();
        for (r, &budget) in budgets.iter().enumerate() {
            for (step, set) in alive_sets(chunks, &order, d - r).into_iter().enumerate() {
                let terms = set
                    .iter()
                    .map(|&k| {
                        let c = &chunks[k];
                        let mut full = c.per_layer * l + c.fixed;
                        if r + 1 == d {
                            full += last_stage_fixed.get(k).copied().unwrap_or(0.0);
                        }
                        (var[r][k], full, c.per_layer - c.kept_per_layer)
                    })
                    .collect();
                constraints.push(StepConstraint {
                    stage: r,
                    step,
                    terms,
                    fixed: 0.0,
                    budget,
                });
            }
        }
        Ok(RecomputeProblem {
            max_layers: layers_per_stage,
            weights,
            constraints,
            var,
        })
    }

    fn plan(&self, diagonal: Vec<u64>) -> RecomputePlan {
        let per_stage = self
            .var
            .iter()
            .map(|row| row.iter().map(|&v| diagonal[v]).collect())
            .collect();
        let recomputed_layers = diagonal.iter().zip(&self.weights).map(|(c, w)| c * w).sum();
        RecomputePlan {
            diagonal,
            per_stage,
            recomputed_layers,
        }
    }

    /// Whether `c` meets every constraint (with a relative tolerance of 1e-9 for the solver's
    /// floating point).
    pub fn feasible(&self, c: &[u64]) -> bool {
        self.constraints
            .iter()
            .all(|k| k.usage(c) <= k.budget + 1e-9 * k.budget.abs().max(1.0))
    }

    /// Errors with the worst constraint if even full recomputation does not fit.
    fn check_feasible(&self) -> Result<()> {
        let all = vec![self.max_layers; self.weights.len()];
        let worst = self
            .constraints
            .iter()
            .map(|k| (k, k.usage(&all) - k.budget))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match worst {
            Some((k, over)) if !self.feasible(&all) => Err(MemoryError::Infeasible {
                stage: k.stage,
                step: k.step,
                over_bytes: over,
            }),
            _ => Ok(()),
        }
    }

    /// The exact optimum by mixed-integer programming (good_lp + microlp). Branch-and-bound can
    /// take minutes on large programs; [`RecomputeProblem::solve_relaxed`] is the polynomial
    /// alternative.
    pub fn solve(&self) -> Result<RecomputePlan> {
        self.check_feasible()?;
        let values = self.optimise(true)?;
        Ok(self.plan(values.iter().map(|v| v.round().max(0.0) as u64).collect()))
    }

    /// A feasible plan in polynomial time: the linear relaxation's optimum rounded up (feasible,
    /// since checkpointing more layers only saves memory), then each variable lowered one layer
    /// at a time while the plan stays feasible, the heaviest (most recomputed cells) first. Its
    /// cost is at least the exact optimum's and at most the rounded relaxation's.
    pub fn solve_relaxed(&self) -> Result<RecomputePlan> {
        self.check_feasible()?;
        let relaxed = self.optimise(false)?;
        let max = self.max_layers;
        let mut c: Vec<u64> = relaxed
            .iter()
            // A hair below the next integer counts as that integer (solver round-off).
            .map(|v| ((v - 1e-9).ceil().max(0.0) as u64).min(max))
            .collect();
        if !self.feasible(&c) {
            c = vec![max; c.len()];
        }
        let mut order: Vec<usize> = (0..c.len()).collect();
        order.sort_by_key(|&v| std::cmp::Reverse(self.weights[v]));
        for v in order {
            while c[v] > 0 {
                c[v] -= 1;
                if !self.feasible(&c) {
                    c[v] += 1;
                    break;
                }
            }
        }
        Ok(self.plan(c))
    }

    /// The minimal-recomputation program's variable values, integer or relaxed.
    fn optimise(&self, integer: bool) -> Result<Vec<f64>> {
        let mut vars = ProblemVariables::new();
        let c: Vec<_> = (0..self.weights.len())
            .map(|_| {
                let v = variable().min(0).max(self.max_layers as f64);
                vars.add(if integer { v.integer() } else { v })
            })
            .collect();
        let objective: Expression = c
            .iter()
            .zip(&self.weights)
            .map(|(&v, &w)| w as f64 * v)
            .sum();
        let mut model = vars.minimise(objective).using(good_lp::microlp);
        for k in &self.constraints {
            let full: f64 = k.fixed + k.terms.iter().map(|t| t.1).sum::<f64>();
            let saved: Expression = k.terms.iter().map(|&(v, _, s)| s * c[v]).sum();
            // Σ full − Σ saved·c ≤ budget  ⟺  Σ saved·c ≥ Σ full − budget.
            model = model.with(constraint!(saved >= full - k.budget));
        }
        let solution = model
            .solve()
            .map_err(|e| MemoryError::Solver(e.to_string()))?;
        Ok(c.iter().map(|&v| solution.value(v)).collect())
    }

    /// The exact optimum by enumerating every assignment; refuses more than `limit` of them.
    pub fn brute_force(&self, limit: u64) -> Result<RecomputePlan> {
        self.check_feasible()?;
        let vars = self.weights.len();
        let values = self.max_layers + 1;
        let too_large = MemoryError::TooLarge {
            variables: vars,
            values,
            limit,
        };
        let total = (0..vars).try_fold(1u64, |acc, _| acc.checked_mul(values));
        let total = total.filter(|&t| t <= limit).ok_or(too_large)?;
        let mut best: Option<(u64, Vec<u64>)> = None;
        let mut c = vec![0u64; vars];
        for mut index in 0..total {
            for slot in c.iter_mut() {
                *slot = index % values;
                index /= values;
            }
            let cost: u64 = c.iter().zip(&self.weights).map(|(a, w)| a * w).sum();
            if best.as_ref().is_some_and(|b| b.0 <= cost) || !self.feasible(&c) {
                continue;
            }
            best = Some((cost, c.clone()));
        }
        // check_feasible guarantees at least the all-max assignment qualifies.
        let (_, diagonal) = best.ok_or(MemoryError::Solver("no assignment fits".into()))?;
        Ok(self.plan(diagonal))
    }
}
