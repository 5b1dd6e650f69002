//! Workload-balanced sequence chunking (InfiniPipe, SPEC §2.3): split long sequences, pack short
//! ones, so that every chunk (micro-batch) costs about the same time.
//!
//! 1. The longest sequence is cut into `K` time-balanced slices ([`crate::balanced`]). The slice
//!    boundaries form the *mesh*; a slice's cost is the time budget `T_t`. The token budget `T_m`
//!    comes from the caller (memory, SPEC §5.2) and must hold the largest mesh slice.
//! 2. A sequence longer than the first mesh slice is *long*: it is cut on the same mesh, so its
//!    non-final pieces cost `≈ T_t` (*split* chunks, context `C` = the piece's start) and its last
//!    piece is a *tail*. Every other sequence is *short*.
//! 3. One bucket per tail. Short sequences, longest first, go into the bucket with the lowest
//!    time/token ratio within both budgets. If none fits: when even the emptiest bucket would
//!    exceed `T_m`, open a new (*batched*) bucket; otherwise raise `T_t` to the smallest
//!    `bucket time + sequence time` over buckets with token room (a *relaxation*, recorded) and
//!    retry. Adopted detail: the SPEC says "min bucket time"; restricting the minimum to buckets
//!    with token room guarantees the retry places the sequence.
//!
//! A bucket holding a tail is *hybrid* (or a lone tail); two tails never share a bucket because
//! tails only ever open buckets. Time of a chunk = Σ forward cost of its pieces with the fixed
//! per-slice cost `β` counted once (one kernel sequence per chunk).
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{chunk, ChunkKind, CostModel};
//! let cost = CostModel::fitted(0.0, 1.0, 0.0).unwrap(); // one second per token
//! // The 1000-token sequence is cut on a mesh of 2 slices; the short ones are packed.
//! let c = chunk(&[1000, 300, 200], &cost, 2, 600).unwrap();
//! assert_eq!(c.mesh, vec![0, 500, 1000]);
//! let kinds: Vec<ChunkKind> = c.chunks.iter().map(|ch| ch.kind).collect();
//! assert_eq!(kinds, [ChunkKind::Split, ChunkKind::Hybrid, ChunkKind::Batched]);
//! assert_eq!(c.chunks[2].tokens(), 500);
//! assert_eq!(c.groups(), vec![vec![0, 1], vec![2]]);
//! ```

use serde::{Deserialize, Serialize};

use crate::balanced::balanced;
use crate::cost::CostModel;
use crate::error::{Result, SlicingError};

/// Tokens `[start, end)` of sequence `seq` placed in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Index of the sequence in the input batch.
    pub seq: usize,
    /// First token.
    pub start: u64,
    /// One past the last token.
    pub end: u64,
}

impl Piece {
    /// Tokens in the piece.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the piece is empty (never true in a chunking this module returns).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The three chunk kinds of SPEC §2.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkKind {
    /// Whole short sequences only (`C = 0`).
    Batched,
    /// One non-final slice of a long sequence.
    Split,
    /// The tail slice of a long sequence, possibly with short sequences packed beside it.
    Hybrid,
}

/// One chunk `{C, S}`: the unit a pipeline stage processes in one forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Which kind.
    pub kind: ChunkKind,
    /// Context `C`: tokens of the split sequence processed before this chunk (0 for batched).
    pub context: u64,
    /// Pieces; for split and hybrid chunks the first piece is the long sequence's slice.
    pub pieces: Vec<Piece>,
    /// Forward time (or FLOPs) of the chunk under the cost model.
    pub time: f64,
}

impl Chunk {
    /// Tokens in the chunk (`Σ S`).
    pub fn tokens(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }
}

/// A batch cut into chunks, with the budgets used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunking {
    /// Slices `K` of the longest sequence.
    pub slices: usize,
    /// Mesh boundaries `0 = b_0 < … < b_K = longest`.
    pub mesh: Vec<u64>,
    /// Time budget `T_t` from the mesh (the largest mesh slice's cost).
    pub initial_time_budget: f64,
    /// Time budget after relaxations (equal to the initial one if none fired).
    pub time_budget: f64,
    /// Token budget `T_m`.
    pub token_budget: u64,
    /// How many times the relaxation rule raised `T_t`.
    pub relaxations: usize,
    /// Chunks: per long sequence its split chunks in order then its hybrid chunk, long
    /// sequences longest first; then batched chunks.
    pub chunks: Vec<Chunk>,
}

impl Chunking {
    /// Chunk indices grouped into pipeline micro-batches: one group per long sequence (its
    /// chunks in slice order, the hybrid last) and one per batched chunk.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut open = false;
        for (i, c) in self.chunks.iter().enumerate() {
            match c.kind {
                ChunkKind::Split if open => groups.last_mut().unwrap().push(i),
                ChunkKind::Split => {
                    groups.push(vec![i]);
                    open = true;
                }
                ChunkKind::Hybrid if open => {
                    groups.last_mut().unwrap().push(i);
                    open = false;
                }
                ChunkKind::Hybrid | ChunkKind::Batched => {
                    groups.push(vec![i]);
                    open = false;
                }
            }
        }
        groups
    }

    /// Total forward time of all chunks.
    pub fn total_time(&self) -> f64 {
        self.chunks.iter().map(|c| c.time).sum()
    }

    /// Largest chunk time.
    pub fn max_time(&self) -> f64 {
        self.chunks.iter().map(|c| c.time).fold(0.0, f64::max)
    }
}

/// A bucket being filled.
struct Bucket {
    kind: ChunkKind,
    context: u64,
    pieces: Vec<Piece>,
    time: f64,
    tokens: u64,
}

/// Cost of a piece without the per-slice constant (added once per chunk).
fn piece_cost(cost: &CostModel, start: u64, end: u64) -> f64 {
    cost.forward(start, end) - cost.per_slice
}

/// Chunks a batch of sequence `lengths` with `slices` mesh slices and token budget `token_budget`.
pub fn chunk(
    lengths: &[u64],
    cost: &CostModel,
    slices: usize,
    token_budget: u64,
) -> Result<Chunking> {
    check_inputs(lengths, token_budget)?;
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let plan = balanced(longest, slices, 1, cost)?;
    let mut mesh: Vec<u64> = plan.slices.iter().map(|s| s.start).collect();
    mesh.push(longest);
    let needed = plan.lengths().into_iter().max().unwrap_or(0);
    if needed > token_budget {
        return Err(SlicingError::TokenBudgetTooSmall {
            budget: token_budget,
            needed,
            slices,
            longest,
        });
    }
    let initial = plan.slices.iter().map(|s| s.cost).fold(0.0, f64::max);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Longest first; ties by index so the result does not depend on the sort's stability.
    order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    let (long, short): (Vec<usize>, Vec<usize>) =
        order.iter().partition(|&&i| lengths[i] > mesh[1]);

    let mut chunks = Vec::new();
    let mut buckets = Vec::new();
    for &seq in &long {
        let len = lengths[seq];
        let mut j = 0;
        while mesh[j + 1] < len {
            let (start, end) = (mesh[j], mesh[j + 1]);
            chunks.push(Chunk {
                kind: ChunkKind::Split,
                context: start,
                pieces: vec![Piece { seq, start, end }],
                time: cost.forward(start, end),
            });
            j += 1;
        }
        let start = mesh[j];
        // The tail's bucket is written back into the placeholder chunk pushed below, right
        // after its sequence's split chunks, so each long sequence's chunks stay together.
        buckets.push(Bucket {
            kind: ChunkKind::Hybrid,
            context: start,
            pieces: vec![Piece {
                seq,
                start,
                end: len,
            }],
            time: cost.forward(start, len),
            tokens: len - start,
        });
        chunks.push(Chunk {
            kind: ChunkKind::Hybrid,
            context: start,
            pieces: Vec::new(),
            time: 0.0,
        });
    }
    let mut packed = Packer {
        buckets,
        time_budget: initial,
        token_budget,
        relaxations: 0,
    };
    let tail_slots: Vec<usize> = chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.kind == ChunkKind::Hybrid)
        .map(|(i, _)| i)
        .collect();
    for &seq in &short {
        packed.place(seq, lengths[seq], cost);
    }
    let tails = tail_slots.len();
    for (b, bucket) in packed.buckets.drain(..).enumerate() {
        let chunk = Chunk {
            kind: bucket.kind,
            context: bucket.context,
            pieces: bucket.pieces,
            time: bucket.time,
        };
        if b < tails {
            chunks[tail_slots[b]] = chunk;
        } else {
            chunks.push(chunk);
        }
    }
    Ok(Chunking {
        slices,
        mesh,
        initial_time_budget: initial,
        time_budget: packed.time_budget,
        token_budget,
        relaxations: packed.relaxations,
        chunks,
    })
}

fn check_inputs(lengths: &[u64], token_budget: u64) -> Result<()> {
    if lengths.is_empty() {
        return Err(SlicingError::NotPositive {
            what: "number of sequences",
            value: "0".into(),
        });
    }
    if let Some(i) = lengths.iter().position(|&l| l == 0) {
        return Err(SlicingError::NotPositive {
            what: "sequence length",
            value: format!("0 (sequence {i})"),
        });
    }
    if token_budget == 0 {
        return Err(SlicingError::NotPositive {
            what: "token budget",
            value: "0".into(),
        });
    }
    Ok(())
}

/// Step 4 of the algorithm: best-fit packing of short sequences with budget relaxation.
struct Packer {
    buckets: Vec<Bucket>,
    time_budget: f64,
    token_budget: u64,
    relaxations: usize,
}

impl Packer {
    fn place(&mut self, seq: usize, len: u64, cost: &CostModel) {
        let piece = Piece {
            seq,
            start: 0,
            end: len,
        };
        // Joining a bucket adds the piece's work; a new bucket also pays the per-chunk `β`.
        let time = piece_cost(cost, 0, len);
        loop {
            let fits = |b: &Bucket| {
                b.tokens + len <= self.token_budget && b.time + time <= self.time_budget
            };
            let best = self
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, b)| fits(b))
                .min_by(|(_, a), (_, b)| ratio(a).total_cmp(&ratio(b)))
                .map(|(i, _)| i);
            if let Some(i) = best {
                let b = &mut self.buckets[i];
                b.pieces.push(piece);
                b.time += time;
                b.tokens += len;
                return;
            }
            let with_room = self
                .buckets
                .iter()
                .filter(|b| b.tokens + len <= self.token_budget)
                .map(|b| b.time + time)
                .fold(f64::INFINITY, f64::min);
            if !with_room.is_finite() {
                // Even the emptiest bucket would exceed T_m: open a batched chunk.
                self.buckets.push(Bucket {
                    kind: ChunkKind::Batched,
                    context: 0,
                    pieces: vec![piece],
                    time: time + cost.per_slice,
                    tokens: len,
                });
                return;
            }
            self.time_budget = with_room;
            self.relaxations += 1;
        }
    }
}

/// Time per token of a bucket (the packing criterion).
fn ratio(b: &Bucket) -> f64 {
    b.time / b.tokens as f64
}
