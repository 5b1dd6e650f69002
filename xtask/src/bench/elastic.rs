//! `bench elastic`: InfiniPipe's elastic pipelines against context-length packing on the same
//! documents — measured on this CPU, and simulated at cluster scale.
//!
//! Measured: one iteration's documents (seeded log-normal lengths, at most the context) trained
//! three ways on the same pipeline of stage threads, interleaved, medians:
//! - **elastic**: the trainer's chunks (`runtime::elastic::plan_iteration`), longest first, no
//!   padding;
//! - **packed 1F1B**: first-fit-decreasing packing into context-length buffers, each padded to
//!   the context (padding computed, its targets unscored), documents masked from each other;
//! - **packed Seq1F1B**: the same buffers in fixed compute-balanced slices.
//!
//! Useful tokens are the documents' own; a padded run computes more tokens than it trains.
//!
//! Simulated: `memory::elastic_compare` (Llama-7B, TP 4 × 8 stages = 32 GPUs, 80 GiB, 48K, 96K
//! and 192K contexts) against the paper's 1.27–1.40× over Seq1F1B.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use seqpipe_kernels::Documents;
use seqpipe_memory::elastic_compare::{compare, default_distributions, CompareCase, CompareRow};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_slicing::{balanced, CostModel, LengthDist};
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::elastic::plan_iteration;
use seqpipe_trainer::runtime::recompute::Recompute;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};

use super::offload::median;
use super::table::Table;

/// Context (longest document, buffer length) of the measured runs.
pub const CONTEXT: usize = 1024;
/// Documents' tokens per iteration (about eight contexts).
pub const TOKENS: usize = 8 * CONTEXT;
/// Pipeline stages (threads).
pub const STAGES: u32 = 2;
/// Slices: elastic mesh slices, and Seq1F1B's fixed slices.
pub const SLICES: usize = 4;
/// Timed iterations per method (after one untimed warm-up each), interleaved.
pub const REPS: usize = 3;

/// The measured model: 4 layers, hidden 256 (as `bench peer`), vocabulary 256.
pub fn model() -> ModelConfig {
    let mut m = seqpipe_trainer::config::TrainConfig::default().model;
    (m.hidden, m.ffn_hidden, m.heads, m.kv_heads, m.layers) = (256, 688, 4, 4, 4);
    m.max_positions = CONTEXT + 1;
    m
}

/// One method's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodRun {
    /// Method.
    pub method: String,
    /// Micro-batches per iteration.
    pub microbatches: usize,
    /// Tokens computed per iteration (padding included).
    pub computed: usize,
    /// Document tokens per iteration.
    pub useful: usize,
    /// Median iteration seconds.
    pub seconds: f64,
}

impl MethodRun {
    /// Document tokens per second.
    pub fn useful_per_second(&self) -> f64 {
        self.useful as f64 / self.seconds
    }
}

/// Seeded documents: log-normal lengths (median ≈ 180 tokens) truncated at the context.
fn documents(vocab: usize) -> Result<Vec<Vec<u32>>> {
    let dist = LengthDist::LogNormal {
        mu: 5.2,
        sigma: 1.0,
    };
    let lengths = dist.sample(256, CONTEXT as u64, 7)?;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % vocab as u64) as u32
    };
    let (mut docs, mut total) = (Vec::new(), 0);
    for len in lengths.into_iter().map(|l| l.max(2) as usize) {
        if total >= TOKENS {
            break;
        }
        docs.push((0..len).map(|_| next()).collect::<Vec<u32>>());
        total += len;
    }
    Ok(docs)
}

/// First-fit-decreasing packing of the documents into buffers of `CONTEXT` tokens.
fn pack(docs: &[Vec<u32>]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(docs[i].len()));
    let mut buffers: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let len = docs[i].len();
        match buffers.iter_mut().find(|(used, _)| used + len <= CONTEXT) {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => buffers.push((len, vec![i])),
        }
    }
    buffers.into_iter().map(|(_, m)| m).collect()
}

/// The packed buffers as an iteration: each row its documents then padding to the context
/// (a last document whose targets, like each document's last, are unscored), in `slices`.
fn packed_input(
    docs: &[Vec<u32>],
    buffers: &[Vec<usize>],
    slices: Vec<std::ops::Range<usize>>,
) -> Result<IterationInput> {
    let (mut tokens, mut masks, mut layouts) = (Vec::new(), Vec::new(), Vec::new());
    let mut scored = 0.0;
    for members in buffers {
        let (mut row, mut weights, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        for &i in members {
            starts.push(row.len());
            row.extend_from_slice(&docs[i]);
            weights.extend((0..docs[i].len()).map(|k| f32::from(k + 1 < docs[i].len())));
        }
        if row.len() < CONTEXT {
            starts.push(row.len());
        }
        weights.resize(CONTEXT, 0.0);
        row.resize(CONTEXT + 1, 0);
        scored += weights.iter().map(|&w| w as f64).sum::<f64>();
        tokens.push(Tensor::from_vec(row, (1, CONTEXT + 1), &Device::Cpu)?);
        masks.push(Tensor::from_vec(weights, (1, CONTEXT), &Device::Cpu)?);
        layouts.push(Arc::new(Documents::new(vec![starts], CONTEXT)?));
    }
    Ok(IterationInput {
        tokens,
        slices,
        ragged: None,
        masks: Some(masks),
        documents: Some(layouts),
        normaliser: scored,
    })
}

fn pipeline(model: &ModelConfig, config: ScheduleConfig) -> Result<Pipeline> {
    Ok(Pipeline::new(
        model,
        config,
        None,
        &OptimConfig::default(),
        1,
        DType::F32,
        Duration::from_secs(300),
    )?)
}

/// One iteration of a method on its pipeline.
type Iteration = Box<dyn Fn(&mut Pipeline) -> Result<()>>;

/// One of the three methods, ready to run an iteration.
struct Method {
    name: &'static str,
    pipeline: Pipeline,
    run: Iteration,
    microbatches: usize,
    computed: usize,
}

fn methods(model: &ModelConfig, docs: &[Vec<u32>]) -> Result<Vec<Method>> {
    let cost = CostModel::flops(&model.shape())?;
    let iteration = plan_iteration(docs, &cost, STAGES, SLICES, &Recompute::None)?;
    let elastic_mbs = iteration.runs.iter().map(|r| r.input.tokens.len()).sum();
    let useful: usize = docs.iter().map(Vec::len).sum();
    let runs = iteration.runs;
    let buffers = pack(docs);
    let m = buffers.len();
    let one = packed_input(docs, &buffers, std::iter::once(0..CONTEXT).collect())?;
    let cuts = balanced(CONTEXT as u64, SLICES, 1, &cost)?;
    let ranges = cuts
        .slices
        .iter()
        .map(|s| s.start as usize..s.end as usize)
        .collect();
    let sliced = packed_input(docs, &buffers, ranges)?;
    let fixed = |kind, n: usize| ScheduleConfig::new(kind, STAGES, m as u32).with_slices(n as u32);
    Ok(vec![
        Method {
            name: "elastic (InfiniPipe chunks, longest first)",
            pipeline: pipeline(
                model,
                ScheduleConfig::new(ScheduleKind::OneFOneB, STAGES, 1),
            )?,
            run: Box::new(move |pl| {
                pl.compute_gradients_elastic(&runs)?;
                Ok(())
            }),
            microbatches: elastic_mbs,
            computed: useful,
        },
        Method {
            name: "packed 1F1B (context-length buffers, padded)",
            pipeline: pipeline(model, fixed(ScheduleKind::OneFOneB, 1))?,
            run: Box::new(move |pl| {
                pl.compute_gradients(&one)?;
                Ok(())
            }),
            microbatches: m,
            computed: m * CONTEXT,
        },
        Method {
            name: "packed Seq1F1B (fixed balanced slices)",
            pipeline: pipeline(model, fixed(ScheduleKind::Seq1F1B, SLICES))?,
            run: Box::new(move |pl| {
                pl.compute_gradients(&sliced)?;
                Ok(())
            }),
            microbatches: m,
            computed: m * CONTEXT,
        },
    ])
}

/// The three methods on the same documents, interleaved, `REPS` timed iterations each.
pub fn measure(mut log: impl FnMut(String)) -> Result<Vec<MethodRun>> {
    let model = model();
    let docs = documents(model.vocab)?;
    let useful: usize = docs.iter().map(Vec::len).sum();
    let mut methods = methods(&model, &docs)?;
    let mut times = vec![Vec::new(); methods.len()];
    for rep in 0..=REPS {
        for (i, m) in methods.iter_mut().enumerate() {
            let started = Instant::now();
            (m.run)(&mut m.pipeline)?;
            let seconds = started.elapsed().as_secs_f64();
            log(format!("rep {rep} {}: {seconds:.3} s", m.name));
            if rep > 0 {
                times[i].push(seconds);
            }
        }
    }
    Ok(methods
        .iter()
        .zip(times)
        .map(|(m, t)| MethodRun {
            method: m.name.into(),
            microbatches: m.microbatches,
            computed: m.computed,
            useful,
            seconds: median(t),
        })
        .collect())
}

/// The measured table, each method's useful tokens/s and elastic's ratio over it.
pub fn measured_table(runs: &[MethodRun]) -> Result<Table> {
    let mut t = Table::new(&[
        "method",
        "micro-batches",
        "tokens computed",
        "document tokens",
        "median s",
        "useful tokens/s",
        "elastic ÷ this",
    ]);
    let elastic = runs[0].useful_per_second();
    for r in runs {
        t.push(vec![
            r.method.clone(),
            r.microbatches.to_string(),
            r.computed.to_string(),
            r.useful.to_string(),
            format!("{:.3}", r.seconds),
            format!("{:.0}", r.useful_per_second()),
            format!("{:.2}×", elastic / r.useful_per_second()),
        ])?;
    }
    Ok(t)
}

/// InfiniPipe's reported speedup over Seq1F1B on Llama-7B, 32 GPUs (the range over contexts).
pub const PAPER_OVER_SEQ1F1B: (f64, f64) = (1.27, 1.40);

/// The simulated cases: both length distributions × 48K, 96K, 192K × 8 stages of TP 4.
pub fn simulated(sequences: usize) -> Result<Vec<CompareRow>> {
    let mut rows = Vec::new();
    for dist in default_distributions() {
        for context in [48 * 1024, 96 * 1024, 192 * 1024] {
            let case = CompareCase {
                dist,
                context,
                stages: 8,
                sequences,
                seed: 1,
            };
            rows.push(compare(&case)?);
        }
    }
    Ok(rows)
}

/// The simulated table beside the paper's range.
pub fn simulated_table(rows: &[CompareRow]) -> Result<Table> {
    let mut t = Table::new(&[
        "distribution",
        "context",
        "tokens",
        "elastic s",
        "Seq1F1B s (best n)",
        "packed 1F1B s",
        "elastic ÷ Seq1F1B",
        "paper",
        "ours ÷ paper (mid)",
    ]);
    let secs = |r: &Option<seqpipe_memory::MethodResult>| {
        r.as_ref().map_or("does not fit".into(), |r| {
            format!("{:.3}", r.iteration_time)
        })
    };
    let (lo, hi) = PAPER_OVER_SEQ1F1B;
    for r in rows {
        let speedup = r.speedup(&r.seq1f1b);
        let n = r.seq1f1b.as_ref().map_or(0, |s| s.slices);
        t.push(vec![
            r.case.dist.to_string(),
            format!("{}K", r.case.context / 1024),
            r.tokens.to_string(),
            secs(&r.elastic),
            format!("{} (n={n})", secs(&r.seq1f1b)),
            secs(&r.packed),
            speedup.map_or("-".into(), |s| format!("{s:.2}×")),
            format!("{lo:.2}–{hi:.2}×"),
            speedup.map_or("-".into(), |s| format!("{:.2}", s / ((lo + hi) / 2.0))),
        ])?;
    }
    Ok(t)
}
