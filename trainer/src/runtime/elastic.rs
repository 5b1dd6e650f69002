//! Elastic pipelines at run time (InfiniPipe): documents as they come, split and packed into
//! chunks by `seqpipe_slicing::chunk`, run longest first as micro-batches of their own shapes,
//! several pipelines per iteration with their gradients accumulated.
//!
//! A micro-batch is one *sequence group* of the chunker: a long document's split chunks and its
//! hybrid tail (with the short documents packed beside the tail), or one batched chunk of short
//! documents. Its row is the group's pieces back to back — the long document whole, then the
//! short ones — and its slices are the chunks, so the long document's K/V (and dK/dV in the
//! backward) carry from chunk to chunk exactly as Seq1F1B's slices do. [`Documents`] keep every
//! document masked from the others with its own RoPE positions, and the target after each
//! document's last token is not scored: every micro-batch computes exactly the loss of its
//! documents run one by one, with no padding token.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use seqpipe_kernels::Documents;
use seqpipe_schedule::{elastic, lower, Lowered};
use seqpipe_slicing::{balanced, chunk, ChunkKind, Chunking, CostModel};

use super::admit::admit;
use super::partition::Partition;
use super::pipeline::{Pipeline, PipelineRun, StepReport};
use super::recompute::{fewest_layers, with_planned_recompute, Recompute};
use super::worker::StageRecompute;
use super::IterationInput;
use crate::error::{fail, Result};

/// One pipeline of an elastic iteration.
#[derive(Debug, Clone)]
pub struct ElasticRun {
    /// The elastic schedule over the pipeline's micro-batches, lowered.
    pub schedule: Lowered,
    /// Its micro-batches, in the schedule's (longest-first) order, each with its own slices.
    pub input: IterationInput,
    /// What its stages recompute.
    pub recompute: Recompute,
    /// Chunker group of each micro-batch.
    pub groups: Vec<usize>,
}

/// A micro-batch built from one chunker group.
struct GroupRow {
    /// Input tokens and the one target after them.
    tokens: Vec<u32>,
    slices: Vec<Range<usize>>,
    starts: Vec<usize>,
    /// Target weights: 0 after each document's last token.
    weights: Vec<f32>,
}

/// The row of chunker group `group` (chunk indices) over `docs`.
fn group_row(docs: &[Vec<u32>], chunking: &Chunking, group: &[usize]) -> Result<GroupRow> {
    let mut row = GroupRow {
        tokens: Vec::new(),
        slices: Vec::new(),
        starts: Vec::new(),
        weights: Vec::new(),
    };
    let mut open: Option<(usize, u64)> = None;
    for &c in group {
        let chunk = &chunking.chunks[c];
        let first = row.tokens.len();
        for piece in &chunk.pieces {
            let doc = docs.get(piece.seq).ok_or_else(|| {
                crate::error::Error::Data(format!("chunk {c} places document {}", piece.seq))
            })?;
            let continues = open == Some((piece.seq, piece.start));
            if piece.start == 0 {
                row.starts.push(row.tokens.len());
            } else if !continues {
                fail!(
                    Data,
                    "chunk {c}: document {} resumes at token {} without its earlier tokens in \
                     the same group",
                    piece.seq,
                    piece.start
                );
            }
            let (a, e) = (piece.start as usize, piece.end as usize);
            if e > doc.len() || a >= e {
                fail!(
                    Data,
                    "chunk {c}: tokens {a}..{e} of document {} of {} tokens",
                    piece.seq,
                    doc.len()
                );
            }
            row.tokens.extend_from_slice(&doc[a..e]);
            let ends = e == doc.len();
            row.weights
                .extend((a..e).map(|i| if ends && i + 1 == e { 0.0 } else { 1.0 }));
            open = (!ends).then_some((piece.seq, piece.end));
        }
        row.slices.push(first..row.tokens.len());
    }
    if let Some((seq, at)) = open {
        fail!(
            Data,
            "document {seq} stops at token {at} at the end of its group: its tail chunk is missing"
        );
    }
    // The last input's target: any token, never scored (the row ends a document there).
    row.tokens.push(0);
    Ok(row)
}

/// The elastic runs of one iteration: `pipelines[i]` lists the chunker groups
/// (`chunking.groups()` indices) pipeline `i` runs, in any order (each runs longest first),
/// with `recompute[i]`. `docs[s]` are the tokens of sequence `s` the chunker was given;
/// every group of the chunking must be in exactly one pipeline.
pub fn elastic_runs(
    docs: &[Vec<u32>],
    chunking: &Chunking,
    pipelines: &[Vec<usize>],
    recompute: &[Recompute],
    stages: u32,
) -> Result<Vec<ElasticRun>> {
    let groups = chunking.groups();
    let mut placed = vec![0usize; groups.len()];
    for &g in pipelines.iter().flatten() {
        match placed.get_mut(g) {
            Some(n) => *n += 1,
            None => fail!(
                Data,
                "pipeline group {g}: the chunking has {}",
                groups.len()
            ),
        }
    }
    if let Some(g) = placed.iter().position(|&n| n != 1) {
        fail!(
            Data,
            "chunker group {g} is in {} pipelines; every group runs exactly once",
            placed[g]
        );
    }
    if recompute.len() != pipelines.len() {
        fail!(
            Config,
            "{} recomputation settings for {} pipelines",
            recompute.len(),
            pipelines.len()
        );
    }
    let rows = GroupRows::of(docs, chunking)?;
    pipelines
        .iter()
        .zip(recompute)
        .map(|(members, recompute)| rows.pipeline(members, stages, recompute.clone()))
        .collect()
}

/// The micro-batch rows of every chunker group of one iteration.
pub(crate) struct GroupRows {
    rows: Vec<GroupRow>,
    /// Chunks of each group.
    counts: Vec<u32>,
    /// Scored targets of the whole iteration.
    normaliser: f64,
}

impl GroupRows {
    /// The rows of `chunking`'s groups over `docs`.
    pub(crate) fn of(docs: &[Vec<u32>], chunking: &Chunking) -> Result<Self> {
        let groups = chunking.groups();
        let rows: Vec<GroupRow> = groups
            .iter()
            .map(|g| group_row(docs, chunking, g))
            .collect::<Result<_>>()?;
        let normaliser: f64 = rows
            .iter()
            .map(|r| r.weights.iter().map(|&w| w as f64).sum::<f64>())
            .sum();
        if normaliser <= 0.0 {
            fail!(
                Data,
                "the step's {} documents score no target: each is a single token (an \
                 end-of-document token alone); the data has nothing to train on here",
                docs.len()
            );
        }
        Ok(GroupRows {
            rows,
            counts: groups.iter().map(|g| g.len() as u32).collect(),
            normaliser,
        })
    }

    /// Chunks of each group.
    pub(crate) fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The pipeline of groups `members`, longest first, with `recompute`.
    pub(crate) fn pipeline(
        &self,
        members: &[usize],
        stages: u32,
        recompute: Recompute,
    ) -> Result<ElasticRun> {
        if let Some(g) = members.iter().find(|&&g| g >= self.counts.len()) {
            fail!(
                Data,
                "pipeline group {g}: the step's documents make {} groups",
                self.counts.len()
            );
        }
        let counts: Vec<u32> = members.iter().map(|&g| self.counts[g]).collect();
        let e = elastic(stages, &counts)?;
        let order: Vec<usize> = e.order.iter().map(|&j| members[j]).collect();
        let input = pipeline_input(&self.rows, &order, self.normaliser)?;
        Ok(ElasticRun {
            schedule: Lowered::check(lower(&e.schedule)?)?,
            input,
            recompute,
            groups: order,
        })
    }
}

/// The micro-batches `order` (indices into `rows`), every loss divided by `normaliser`.
fn pipeline_input(rows: &[GroupRow], order: &[usize], normaliser: f64) -> Result<IterationInput> {
    let (mut tokens, mut masks, mut documents, mut ragged) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &g in order {
        let row = &rows[g];
        let len = row.weights.len();
        let t = row.tokens.clone();
        tokens.push(Tensor::from_vec(t, (1, len + 1), &Device::Cpu)?);
        masks.push(Tensor::from_vec(
            row.weights.clone(),
            (1, len),
            &Device::Cpu,
        )?);
        documents.push(Arc::new(Documents::new(vec![row.starts.clone()], len)?));
        ragged.push(row.slices.clone());
    }
    Ok(IterationInput {
        tokens,
        slices: Vec::new(),
        ragged: Some(ragged),
        masks: Some(masks),
        documents: Some(documents),
        normaliser,
    })
}

/// What an elastic iteration runs: the chunking of its documents and its pipelines.
#[derive(Debug, Clone)]
pub struct ElasticIteration {
    /// The chunker's result (mesh, budgets, chunks).
    pub chunking: Chunking,
    /// The pipelines, run one after another.
    pub runs: Vec<ElasticRun>,
}

impl ElasticIteration {
    /// Chunks of each kind: `[batched, split, hybrid]`.
    pub fn chunk_kinds(&self) -> [usize; 3] {
        let mut n = [0; 3];
        for c in &self.chunking.chunks {
            n[match c.kind {
                ChunkKind::Batched => 0,
                ChunkKind::Split => 1,
                ChunkKind::Hybrid => 2,
            }] += 1;
        }
        n
    }
}

/// Plans one elastic iteration of `docs` on `stages` stages: the longest document cut into
/// (at most) `slices` compute-balanced mesh slices under `cost`, whose largest is the token
/// budget of every chunk; the others split on the mesh or packed; every group in one
/// pipeline, longest first, with `recompute` on every stage.
pub fn plan_iteration(
    docs: &[Vec<u32>],
    cost: &CostModel,
    stages: u32,
    slices: usize,
    recompute: &Recompute,
) -> Result<ElasticIteration> {
    let chunking = chunk_documents(docs, cost, slices)?;
    let all: Vec<usize> = (0..chunking.groups().len()).collect();
    let runs = elastic_runs(
        docs,
        &chunking,
        &[all],
        std::slice::from_ref(recompute),
        stages,
    )?;
    Ok(ElasticIteration { chunking, runs })
}

/// The chunking of `docs`: the longest cut into (at most) `slices` compute-balanced mesh
/// slices under `cost`, whose largest is every chunk's token budget.
pub fn chunk_documents(docs: &[Vec<u32>], cost: &CostModel, slices: usize) -> Result<Chunking> {
    let lengths: Vec<u64> = docs.iter().map(|d| d.len() as u64).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let k = slices.min(longest as usize).max(1);
    let mesh = balanced(longest, k, 1, cost)?;
    let token_budget = mesh.lengths().into_iter().max().unwrap_or(1);
    Ok(chunk(&lengths, cost, k, token_budget)?)
}

/// Each run's schedule with its `RECOMPUTE` actions and each stage's recomputation, checked
/// against a pipeline of `stages` stages over `partition` (one model chunk per stage).
pub fn prepare(
    runs: &[ElasticRun],
    partition: &Partition,
    stages: usize,
) -> Result<Vec<(Lowered, Vec<StageRecompute>)>> {
    let mut prepared = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        if run.schedule.actions.len() != stages {
            fail!(
                Config,
                "elastic pipeline {i} has {} stages; the run has {stages}",
                run.schedule.actions.len()
            );
        }
        let problems = run.recompute.problems(stages, 1, partition);
        if !problems.is_empty() {
            fail!(Config, "elastic pipeline {i}: {}", problems.join("; "));
        }
        admit(&run.schedule, &run.recompute)?;
        let schedule = with_planned_recompute(run.schedule.clone(), &run.recompute, partition, 1)?;
        run.input.check(&schedule)?;
        let plans = (0..stages)
            .map(|s| {
                run.recompute
                    .stage(s, fewest_layers(partition, s, stages, 1))
            })
            .collect::<Result<Vec<_>>>()?;
        prepared.push((schedule, plans));
    }
    Ok(prepared)
}

impl Pipeline {
    /// One elastic iteration: `runs` one after another on every stage, gradients accumulated,
    /// reduced once. Each run's `normaliser` must be the whole iteration's scored targets.
    pub fn compute_gradients_elastic(&mut self, runs: &[ElasticRun]) -> Result<StepReport> {
        let (p, v) = (self.ranks.len(), self.schedule.config.chunks as usize);
        if v != 1 {
            fail!(
                Config,
                "elastic pipelines run one model chunk per stage; this pipeline holds {v}"
            );
        }
        if self.ranks.iter().any(|r| r.worker.vocab_rows.is_some()) {
            fail!(
                Config,
                "elastic pipelines do not run with the vocabulary-parallel head yet"
            );
        }
        if self.exchange_on() {
            fail!(
                Config,
                "elastic pipelines do not run with the attention exchange"
            );
        }
        let prepared = prepare(runs, &self.partition, p)?;
        let plan: Vec<PipelineRun> = prepared
            .iter()
            .zip(runs)
            .map(|((schedule, plans), run)| PipelineRun {
                schedule,
                input: &run.input,
                recompute: Some(plans),
            })
            .collect();
        self.run_ranks(&plan)
    }
}
