//! The data of one iteration, shared by every stage, and its check against the schedule.

use crate::error::{fail, Result};
use std::ops::Range;

use candle_core::Tensor;
use seqpipe_schedule::Schedule;

/// The data of one iteration, shared by every stage.
#[derive(Debug, Clone)]
pub struct IterationInput {
    /// Per micro-batch, tokens `[b, S + 1]` (u32): inputs `..S`, targets `1..`.
    pub tokens: Vec<Tensor>,
    /// Token ranges of the slices, the same for every micro-batch.
    pub slices: Vec<Range<usize>>,
    /// Per micro-batch, `[b, S]` weights of the targets (a loss mask: 0 drops a target); none
    /// means every target counts. Targets with weight > 0 are also scored for accuracy.
    pub masks: Option<Vec<Tensor>>,
    /// Scored targets of the whole iteration (all tokens, or the mask's sum): every slice's loss
    /// is divided by it, so the sum over all slices and micro-batches is the mean loss of the batch.
    pub normaliser: f64,
}

impl IterationInput {
    /// The input must fit the schedule: one token tensor per micro-batch, slices covering the
    /// sequence, a loss mask (if any) per target.
    pub fn check(&self, schedule: &Schedule) -> Result<()> {
        let c = &schedule.config;
        if self.tokens.len() != c.microbatches as usize {
            fail!(
                Data,
                "{} micro-batches of data for a schedule of {} micro-batches",
                self.tokens.len(),
                c.microbatches
            );
        }
        if self.slices.len() != c.slices as usize {
            fail!(
                Data,
                "{} slices in the plan for a schedule of {} slices",
                self.slices.len(),
                c.slices
            );
        }
        let seq = self.tokens[0].dim(1)?.saturating_sub(1);
        if let Some(masks) = &self.masks {
            if masks.len() != self.tokens.len() {
                fail!(
                    Data,
                    "{} loss masks for {} micro-batches of tokens",
                    masks.len(),
                    self.tokens.len()
                );
            }
            for (mb, (mask, tokens)) in masks.iter().zip(&self.tokens).enumerate() {
                let want = [tokens.dim(0)?, seq];
                if mask.dims() != want {
                    fail!(
                        Data,
                        "micro-batch {mb}: loss mask {:?} must be {want:?} (one weight per target)",
                        mask.dims()
                    );
                }
            }
        }
        let covered = self.slices.last().map_or(0, |r| r.end);
        if self.slices.first().map(|r| r.start) != Some(0) || covered != seq {
            fail!(
                Data,
                "slices {:?} must cover the sequence 0..{seq}",
                self.slices
            );
        }
        Ok(())
    }
}
