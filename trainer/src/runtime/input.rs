//! The data of one iteration, shared by every stage, and its check against the schedule.

use crate::error::{fail, Result};
use std::ops::Range;
use std::sync::Arc;

use candle_core::Tensor;
use seqpipe_kernels::Documents;
use seqpipe_schedule::{MicroBatch, Schedule};

/// Why a run with the attention exchange refuses packed documents.
pub(crate) const EXCHANGE_OVER_DOCUMENTS: &str = "the attention exchange (--exchange) does not \
     run over packed documents (data.packing = \"masked\") yet; turn one of them off";

/// The data of one iteration, shared by every stage.
#[derive(Debug, Clone)]
pub struct IterationInput {
    /// Per micro-batch, tokens `[b, S + 1]` (u32): inputs `..S`, targets `1..`.
    pub tokens: Vec<Tensor>,
    /// Token ranges of the slices, the same for every micro-batch (empty when `ragged` gives
    /// each its own).
    pub slices: Vec<Range<usize>>,
    /// Per micro-batch, its own slices, when micro-batches differ in length and slice count
    /// (elastic pipelines: a long document's chunks, or one chunk of packed short ones).
    pub ragged: Option<Vec<Vec<Range<usize>>>>,
    /// Per micro-batch, `[b, S]` weights of the targets (a loss mask: 0 drops a target); none
    /// means every target counts. Targets with weight > 0 are also scored for accuracy.
    pub masks: Option<Vec<Tensor>>,
    /// Per micro-batch, the documents packed in its rows (none: each row is one sequence).
    /// Attention stays inside each document and RoPE positions restart at its first token; the
    /// loss mask must not score a target across a document boundary.
    pub documents: Option<Vec<Arc<Documents>>>,
    /// Scored targets of the whole iteration (all tokens, or the mask's sum): every slice's loss
    /// is divided by it, so the sum over all slices and micro-batches is the mean loss of the batch.
    pub normaliser: f64,
}

impl IterationInput {
    /// The slices of micro-batch `mb`.
    pub fn slices_of(&self, mb: usize) -> &[Range<usize>] {
        match &self.ragged {
            Some(all) => all.get(mb).map_or(&[], Vec::as_slice),
            None => &self.slices,
        }
    }

    /// The input must fit the schedule: one token tensor per micro-batch, slices covering each
    /// micro-batch's sequence, a loss mask (if any) per target, documents (if any) per row.
    pub fn check(&self, schedule: &Schedule) -> Result<()> {
        let m = schedule.config.microbatches as usize;
        if self.tokens.len() != m {
            fail!(
                Data,
                "{} micro-batches of data for a schedule of {m} micro-batches",
                self.tokens.len()
            );
        }
        match &self.ragged {
            Some(ragged) if !self.slices.is_empty() || ragged.len() != m => fail!(
                Data,
                "per-micro-batch slices for {} micro-batches, and {} shared slices: give one \
                 list per micro-batch ({m}) and no shared slices",
                ragged.len(),
                self.slices.len()
            ),
            _ => {}
        }
        self.check_count("loss masks", self.masks.as_ref().map(Vec::len))?;
        self.check_count("document layouts", self.documents.as_ref().map(Vec::len))?;
        for mb in 0..m {
            self.check_microbatch(schedule, mb)?;
        }
        Ok(())
    }

    /// An optional per-micro-batch list of `len` entries must have one per micro-batch.
    fn check_count(&self, what: &str, len: Option<usize>) -> Result<()> {
        match len {
            Some(len) if len != self.tokens.len() => fail!(
                Data,
                "{len} {what} for {} micro-batches of tokens",
                self.tokens.len()
            ),
            _ => Ok(()),
        }
    }

    /// Micro-batch `mb`'s slices, loss mask and documents fit its tokens and the schedule.
    fn check_microbatch(&self, schedule: &Schedule, mb: usize) -> Result<()> {
        let tokens = &self.tokens[mb];
        let (rows, seq) = (tokens.dim(0)?, tokens.dim(1)?.saturating_sub(1));
        let slices = self.slices_of(mb);
        let want = schedule.slices_of(MicroBatch(mb as u32)) as usize;
        if slices.len() != want {
            fail!(
                Data,
                "micro-batch {mb}: {} slices in the plan for a schedule of {want} slices",
                slices.len()
            );
        }
        let contiguous = slices.windows(2).all(|w| w[0].end == w[1].start);
        let covered = slices.last().map_or(0, |r| r.end);
        let empty = slices.iter().any(|r| r.is_empty());
        if slices.first().map(|r| r.start) != Some(0) || covered != seq || !contiguous || empty {
            fail!(
                Data,
                "micro-batch {mb}: slices {slices:?} must cover its sequence 0..{seq} in order, \
                 none empty"
            );
        }
        if let Some(mask) = self.masks.as_ref().map(|m| &m[mb]) {
            if mask.dims() != [rows, seq] {
                fail!(
                    Data,
                    "micro-batch {mb}: loss mask {:?} must be {:?} (one weight per target)",
                    mask.dims(),
                    [rows, seq]
                );
            }
        }
        if let Some(docs) = self.documents.as_ref().map(|d| &d[mb]) {
            if docs.rows() != rows || docs.len() != seq {
                fail!(
                    Data,
                    "micro-batch {mb}: documents laid out over {} rows × {} tokens; the data is \
                     {rows} rows × {seq}",
                    docs.rows(),
                    docs.len()
                );
            }
        }
        Ok(())
    }
}
