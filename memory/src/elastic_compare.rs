//! The elastic-vs-baselines comparison table (issue #9 acceptance): simulated iteration time of
//! elastic planning against (a) Seq1F1B over context-length packed buffers with fixed slicing and
//! uniform recomputation and (b) the same packing with plain 1F1B, at one memory budget.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::elastic_compare::{compare, default_cases, render};
//! let cases = default_cases(8, 1); // 2 distributions × 48K and 96K contexts × p = 4 and 8
//! assert_eq!(cases.len(), 8);
//! let row = compare(&cases[0]).unwrap(); // 8 log-normal sequences, 48K context, p = 4
//! assert_eq!(row.tokens, 35_478);
//! assert_eq!(row.elastic.as_ref().unwrap().slices, 16); // the best K
//! // Elastic planning is 1.09× as fast as fixed Seq1F1B slicing, 3.25× as packed 1F1B.
//! let speedups = (row.speedup(&row.seq1f1b).unwrap(), row.speedup(&row.packed).unwrap());
//! assert_eq!(format!("{:.2} {:.2}", speedups.0, speedups.1), "1.09 3.25");
//! assert_eq!(render(&[row]).lines().count(), 2); // a header and one line per case
//! ```

use seqpipe_slicing::{preset, LengthDist};
use serde::Serialize;

use crate::activation::{ActivationModel, Parallelism};
use crate::elastic_plan::{plan_elastic, plan_packed, MethodResult, PlanSetup};
use crate::error::Result;
use crate::states::StateOptions;

/// Slice counts every method may choose from.
pub const SLICE_CANDIDATES: [usize; 7] = [1, 2, 4, 8, 16, 24, 32];

/// One cell group of the table: a batch drawn from `dist` and a pipeline of `stages`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CompareCase {
    /// Length distribution.
    pub dist: LengthDist,
    /// Context length (truncation of the distribution and packing capacity).
    pub context: u64,
    /// Pipeline stages `p`.
    pub stages: usize,
    /// Sequences in the batch.
    pub sequences: usize,
    /// Sampling seed.
    pub seed: u64,
}

/// The three methods on one case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    /// The case.
    pub case: CompareCase,
    /// Tokens in the batch.
    pub tokens: u64,
    /// Elastic planning (`None`: nothing fits).
    pub elastic: Option<MethodResult>,
    /// Seq1F1B, `n ≥ 2` fixed slices of packed buffers.
    pub seq1f1b: Option<MethodResult>,
    /// Packed buffers with 1F1B.
    pub packed: Option<MethodResult>,
}

impl CompareRow {
    /// `baseline time / elastic time` (`None` if either is missing).
    pub fn speedup(&self, baseline: &Option<MethodResult>) -> Option<f64> {
        Some(baseline.as_ref()?.iteration_time / self.elastic.as_ref()?.iteration_time)
    }
}

/// The setup the table uses: Llama-7B, TP 4, 80 GiB per GPU, 400 TFLOP/s achieved, 0.3 ms per unit
/// per stage, mixed precision with a distributed optimizer.
pub fn default_setup(stages: usize, context: u64) -> Result<PlanSetup> {
    let shape = preset("llama-7b")?;
    Ok(PlanSetup {
        activation: ActivationModel::new(shape, Parallelism::new(4, 1, 1)?)?,
        stages,
        context,
        device_bytes: 80.0 * crate::peak::GIB,
        flops_per_second: 400e12,
        per_unit_seconds: 3e-4,
        states: StateOptions::default(),
    })
}

/// The two long-tailed distributions of the table: log-normal (median ≈ 4.9K tokens) and
/// power-law (`P(len > x) = (1024/x)^0.9`).
pub fn default_distributions() -> [LengthDist; 2] {
    [
        LengthDist::LogNormal {
            mu: 8.5,
            sigma: 1.4,
        },
        LengthDist::PowerLaw {
            alpha: 0.9,
            min: 1024.0,
        },
    ]
}

/// Every case of the table: both distributions × 48K and 96K × p = 4 and 8.
pub fn default_cases(sequences: usize, seed: u64) -> Vec<CompareCase> {
    let mut cases = Vec::new();
    for dist in default_distributions() {
        for context in [48 * 1024, 96 * 1024] {
            for stages in [4, 8] {
                cases.push(CompareCase {
                    dist,
                    context,
                    stages,
                    sequences,
                    seed,
                });
            }
        }
    }
    cases
}

/// Runs the three methods on one case.
pub fn compare(case: &CompareCase) -> Result<CompareRow> {
    let setup = default_setup(case.stages, case.context)?;
    let lengths = case.dist.sample(case.sequences, case.context, case.seed)?;
    let seq_candidates: Vec<usize> = SLICE_CANDIDATES
        .iter()
        .copied()
        .filter(|&n| n >= 2)
        .collect();
    Ok(CompareRow {
        case: *case,
        tokens: lengths.iter().sum(),
        elastic: plan_elastic(&lengths, &setup, &SLICE_CANDIDATES)?.map(|(r, _)| r),
        seq1f1b: plan_packed(&lengths, &setup, &seq_candidates)?,
        packed: plan_packed(&lengths, &setup, &[1])?,
    })
}

fn cell(r: &Option<MethodResult>) -> String {
    match r {
        None => format!("{:>31}", "does not fit"),
        Some(r) => format!(
            "{:>8.3} s n={:<2} b={:>4.1}% {:>4.1}G r={:<3.1}",
            r.iteration_time,
            r.slices,
            100.0 * r.bubble_ratio,
            r.peaks.iter().fold(0.0f64, |a, &b| a.max(b)) / crate::peak::GIB,
            // Recomputed layer-forwards per unit and stage on average: how hard memory binds.
            r.pipelines.iter().map(|p| p.recomputed_layers).sum::<u64>() as f64
                / (r.units.iter().sum::<usize>() * r.peaks.len()).max(1) as f64
        ),
    }
}

/// The table as text: one line per case, each method's iteration time, slice count, bubble,
/// largest per-stage peak and mean recomputed layers per unit and stage (`r`), then the speedups
/// of elastic planning.
pub fn render(rows: &[CompareRow]) -> String {
    let mut out = format!(
        "{:<32} {:>4} {:>2} {:>8} | {:^31} | {:^31} | {:^31} | {:>7} {:>7}\n",
        "distribution",
        "ctx",
        "p",
        "tokens",
        "elastic",
        "seq1f1b (fixed n)",
        "packed 1f1b",
        "vs s1f1b",
        "vs pack"
    );
    for r in rows {
        let speed = |x: Option<f64>| x.map_or("-".to_string(), |s| format!("{s:.2}x"));
        out.push_str(&format!(
            "{:<32} {:>3}K {:>2} {:>8} | {} | {} | {} | {:>7} {:>7}\n",
            r.case.dist.to_string(),
            r.case.context / 1024,
            r.case.stages,
            r.tokens,
            cell(&r.elastic),
            cell(&r.seq1f1b),
            cell(&r.packed),
            speed(r.speedup(&r.seq1f1b)),
            speed(r.speedup(&r.packed)),
        ));
    }
    out
}
