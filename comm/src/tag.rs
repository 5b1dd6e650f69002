//! Message tags: what a message is, so a receiver can tell it got the one it expected.
//!
//! A tag is a `u64` with a 4-bit class on top:
//! - unit tags (activations, gradients, and the vocabulary-parallel kinds, one class each):
//!   `[class:4][chunk:12][slice:16][micro_batch:32]`, built from the trainer's (kind,
//!   micro-batch, slice, chunk);
//! - user tags: a 60-bit value of the caller's choosing;
//! - collective tags (internal): `[class:4][op:4][sequence:56]`, so two ranks that call different
//!   collectives, or the same one a different number of times, get a tag mismatch, not a wrong sum.

use std::fmt;

use crate::error::{CommError, Result};

const CLASS_SHIFT: u32 = 60;
const CLASS_ACT: u64 = 1;
const CLASS_GRAD: u64 = 2;
const CLASS_USER: u64 = 3;
const CLASS_COLLECTIVE: u64 = 4;
/// The vocabulary-parallel kinds' classes, in [`TagKind::VOCAB`] order.
const CLASS_VOCAB: [u64; 5] = [5, 6, 7, 8, 9];
/// The attention exchange's request and answer classes.
const CLASS_ASK: u64 = 10;
const CLASS_ANSWER: u64 = 11;
const MAX_CHUNK: u64 = (1 << 12) - 1;
const MAX_SLICE: u64 = (1 << 16) - 1;
const MAX_USER: u64 = (1 << 60) - 1;
const SEQ_MASK: u64 = (1 << 56) - 1;

/// What a unit tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagKind {
    /// Forward activations.
    Act,
    /// Backward gradients (w.r.t. activations).
    Grad,
    /// Vocabulary parallelism: a stage's share of a unit's embedding, to stage 0.
    EmbedShare,
    /// Vocabulary parallelism: a unit's embedding-output gradient, from stage 0.
    EmbedGrad,
    /// Vocabulary parallelism: a unit's final hidden states, from the last stage.
    HeadInput,
    /// Vocabulary parallelism: a stage's per-row logit statistics, to every stage.
    HeadStats,
    /// Vocabulary parallelism: a stage's share of the head-input gradient, to the last stage.
    HeadGrad,
    /// Attention exchange: a part of what the heavy side hands its partner (queries, the K/V
    /// head; in the backward also out, lse, dOut). The tag's fields are (exchange number between
    /// the two stages, layer, part).
    ExchangeAsk,
    /// Attention exchange: a part of the partner's answer (out, lse; or dQ, dK, dV).
    ExchangeAnswer,
}

impl TagKind {
    /// The vocabulary-parallel kinds.
    pub const VOCAB: [TagKind; 5] = [
        TagKind::EmbedShare,
        TagKind::EmbedGrad,
        TagKind::HeadInput,
        TagKind::HeadStats,
        TagKind::HeadGrad,
    ];

    fn class(self) -> u64 {
        match self {
            TagKind::Act => CLASS_ACT,
            TagKind::Grad => CLASS_GRAD,
            TagKind::EmbedShare => CLASS_VOCAB[0],
            TagKind::EmbedGrad => CLASS_VOCAB[1],
            TagKind::HeadInput => CLASS_VOCAB[2],
            TagKind::HeadStats => CLASS_VOCAB[3],
            TagKind::HeadGrad => CLASS_VOCAB[4],
            TagKind::ExchangeAsk => CLASS_ASK,
            TagKind::ExchangeAnswer => CLASS_ANSWER,
        }
    }

    fn of_class(class: u64) -> Option<TagKind> {
        match class {
            CLASS_ACT => Some(TagKind::Act),
            CLASS_GRAD => Some(TagKind::Grad),
            CLASS_ASK => Some(TagKind::ExchangeAsk),
            CLASS_ANSWER => Some(TagKind::ExchangeAnswer),
            c => CLASS_VOCAB
                .iter()
                .position(|v| *v == c)
                .map(|i| TagKind::VOCAB[i]),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TagKind::Act => "act",
            TagKind::Grad => "grad",
            TagKind::EmbedShare => "embed_share",
            TagKind::EmbedGrad => "embed_grad",
            TagKind::HeadInput => "head_input",
            TagKind::HeadStats => "head_stats",
            TagKind::HeadGrad => "head_grad",
            TagKind::ExchangeAsk => "exchange_ask",
            TagKind::ExchangeAnswer => "exchange_answer",
        }
    }
}

/// Collective operations, each with its own tag space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CollectiveOp {
    AllReduce = 1,
    Broadcast = 2,
    Barrier = 3,
}

/// A message tag; see the module docs for the bit layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(u64);

impl Tag {
    /// The tag of one unit of pipeline work: `kind` of (micro-batch, slice, chunk).
    /// Slices must be below 65,536 and chunks below 4,096.
    pub fn new(kind: TagKind, micro_batch: u32, slice: u32, chunk: u32) -> Result<Tag> {
        let slice = check_field("slice", u64::from(slice), MAX_SLICE)?;
        let chunk = check_field("chunk", u64::from(chunk), MAX_CHUNK)?;
        Ok(Tag(kind.class() << CLASS_SHIFT
            | chunk << 48
            | slice << 32
            | u64::from(micro_batch)))
    }

    /// A free-form tag for anything else the caller exchanges (below 2^60).
    pub fn user(value: u64) -> Result<Tag> {
        Ok(Tag(
            CLASS_USER << CLASS_SHIFT | check_field("user tag", value, MAX_USER)?
        ))
    }

    /// A collective's tag: its op and its sequence number within the group (wrapping at 2^56).
    pub(crate) fn collective(op: CollectiveOp, seq: u64) -> Tag {
        Tag(CLASS_COLLECTIVE << CLASS_SHIFT | (op as u64) << 56 | (seq & SEQ_MASK))
    }

    /// Rebuilds a tag from its wire form.
    pub fn from_raw(raw: u64) -> Tag {
        Tag(raw)
    }

    /// The wire form.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// `(kind, micro_batch, slice, chunk)` of a unit tag; `None` for user and collective tags.
    pub fn unit(self) -> Option<(TagKind, u32, u32, u32)> {
        let kind = TagKind::of_class(self.0 >> CLASS_SHIFT)?;
        let micro_batch = (self.0 & 0xFFFF_FFFF) as u32;
        let slice = ((self.0 >> 32) & MAX_SLICE) as u32;
        let chunk = ((self.0 >> 48) & MAX_CHUNK) as u32;
        Some((kind, micro_batch, slice, chunk))
    }
}

fn check_field(field: &'static str, value: u64, max: u64) -> Result<u64> {
    if value > max {
        return Err(CommError::TagField { field, value, max });
    }
    Ok(value)
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((kind, mb, slice, chunk)) = self.unit() {
            let kind = kind.name();
            return write!(f, "{kind}(mb={mb}, slice={slice}, chunk={chunk})");
        }
        match self.0 >> CLASS_SHIFT {
            CLASS_USER => write!(f, "user({})", self.0 & MAX_USER),
            CLASS_COLLECTIVE => {
                let op = match (self.0 >> 56) & 0xF {
                    1 => "all_reduce",
                    2 => "broadcast",
                    3 => "barrier",
                    _ => "collective?",
                };
                write!(f, "{op}#{}", self.0 & SEQ_MASK)
            }
            _ => write!(f, "raw({:#x})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn unit_tags_round_trip(k in 0usize..9, mb in any::<u32>(), slice in 0u32..=65535, chunk in 0u32..4096) {
            let kinds = [TagKind::Act, TagKind::Grad, TagKind::ExchangeAsk, TagKind::ExchangeAnswer];
            let kind = kinds.into_iter().chain(TagKind::VOCAB).nth(k).unwrap();
            let tag = Tag::new(kind, mb, slice, chunk).unwrap();
            prop_assert_eq!(tag.unit(), Some((kind, mb, slice, chunk)));
            prop_assert_eq!(Tag::from_raw(tag.raw()), tag);
        }
    }

    #[test]
    fn kinds_and_classes_never_collide() {
        let act = Tag::new(TagKind::Act, 3, 1, 0).unwrap();
        let grad = Tag::new(TagKind::Grad, 3, 1, 0).unwrap();
        assert_ne!(act, grad);
        assert_ne!(
            Tag::user(0).unwrap(),
            Tag::collective(CollectiveOp::AllReduce, 0)
        );
        assert_ne!(
            Tag::collective(CollectiveOp::AllReduce, 4),
            Tag::collective(CollectiveOp::Barrier, 4)
        );
        assert_eq!(Tag::user(9).unwrap().unit(), None);
    }

    #[test]
    fn out_of_range_fields_are_errors() {
        let err = Tag::new(TagKind::Act, 0, 65536, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tag field `slice` = 65536 is out of range: valid values are 0..=65535"
        );
        assert!(Tag::new(TagKind::Grad, 0, 0, 4096).is_err());
        assert!(Tag::user(1 << 60).is_err());
    }

    #[test]
    fn display_names_the_unit() {
        let t = Tag::new(TagKind::Grad, 7, 2, 1).unwrap();
        assert_eq!(t.to_string(), "grad(mb=7, slice=2, chunk=1)");
        assert_eq!(Tag::user(5).unwrap().to_string(), "user(5)");
        assert_eq!(
            Tag::collective(CollectiveOp::Broadcast, 3).to_string(),
            "broadcast#3"
        );
        assert_eq!(Tag::from_raw(0).to_string(), "raw(0x0)");
    }
}
