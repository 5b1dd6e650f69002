//! A message's description without its payload: dtype and shape, sent ahead of data that travels
//! another way (a collective's chunks, an NCCL device buffer) so the receiver can check and size it.

use crate::error::{CommError, Result};
use crate::message::{describe, numel, DType, Data, Message};
use crate::tag::Tag;

/// Dtype and shape of a payload, plus the tag of the exchange it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The exchange's tag (not encoded: the carrying message has it).
    pub tag: Tag,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl Header {
    /// The header of `msg`.
    pub fn of(msg: &Message, tag: Tag) -> Header {
        Header {
            tag,
            dtype: msg.dtype(),
            shape: msg.shape().to_vec(),
        }
    }

    /// Number of elements the shape holds (`None` on overflow).
    pub fn numel(&self) -> Option<usize> {
        numel(&self.shape)
    }

    /// Encodes as a small `i64` message: `[dtype code, d0, d1, ...]`.
    pub fn to_message(&self) -> Message {
        let mut v = Vec::with_capacity(self.shape.len() + 1);
        v.push(i64::from(self.dtype.code()));
        // Dimensions above i64::MAX cannot describe an allocatable buffer; saturate, and the
        // receiver's size check rejects them.
        v.extend(
            self.shape
                .iter()
                .map(|&d| i64::try_from(d).unwrap_or(i64::MAX)),
        );
        Message::vector(Data::I64(v))
    }

    /// Decodes a header sent by `peer` for the exchange `tag`.
    pub fn from_message(peer: usize, tag: Tag, msg: &Message) -> Result<Header> {
        let bad = |detail: String| CommError::Protocol { peer, detail };
        let v = msg
            .as_i64()
            .map_err(|_| bad(format!("expected an i64 header, got {}", msg.describe())))?;
        let (&code, dims) = v.split_first().ok_or_else(|| bad("empty header".into()))?;
        let dtype = u8::try_from(code)
            .ok()
            .and_then(DType::from_code)
            .ok_or_else(|| bad(format!("unknown dtype code {code} in header")))?;
        let shape = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Header { tag, dtype, shape })
    }

    /// Errors with [`CommError::ShapeMismatch`] naming `peer` unless `theirs` has this dtype
    /// and shape.
    pub fn expect_same(&self, peer: usize, theirs: &Header) -> Result<()> {
        if self.dtype == theirs.dtype && self.shape == theirs.shape {
            return Ok(());
        }
        Err(CommError::ShapeMismatch {
            peer,
            tag: self.tag,
            expected: describe(self.dtype, &self.shape),
            received: describe(theirs.dtype, &theirs.shape),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn headers_round_trip(code in 0u8..7, shape in proptest::collection::vec(0usize..1 << 40, 0..6)) {
            let tag = Tag::user(1).unwrap();
            let h = Header { tag, dtype: DType::from_code(code).unwrap(), shape };
            prop_assert_eq!(Header::from_message(0, tag, &h.to_message()).unwrap(), h);
        }
    }

    #[test]
    fn malformed_headers_are_protocol_errors() {
        let tag = Tag::user(1).unwrap();
        let not_i64 = Message::from_u8(vec![1], vec![0]).unwrap();
        assert!(matches!(
            Header::from_message(2, tag, &not_i64),
            Err(CommError::Protocol { peer: 2, .. })
        ));
        let bad_code = Message::from_i64(vec![2], vec![99, 4]).unwrap();
        let err = Header::from_message(1, tag, &bad_code).unwrap_err();
        assert!(err.to_string().contains("unknown dtype code 99"), "{err}");
        let negative = Message::from_i64(vec![2], vec![0, -4]).unwrap();
        assert!(Header::from_message(1, tag, &negative).is_err());
    }

    #[test]
    fn differing_headers_name_the_peer_and_both_shapes() {
        let tag = Tag::user(3).unwrap();
        let mine = Header {
            tag,
            dtype: DType::F32,
            shape: vec![2, 8],
        };
        let theirs = Header {
            tag,
            dtype: DType::F32,
            shape: vec![2, 9],
        };
        let err = mine.expect_same(5, &theirs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shape mismatch from rank 5 for user(3): expected f32[2, 8], received f32[2, 9]"
        );
        assert!(mine.expect_same(5, &mine.clone()).is_ok());
    }
}
