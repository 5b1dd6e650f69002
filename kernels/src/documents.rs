//! Packed rows of documents: where each document starts, and attention and RoPE that respect
//! the boundaries (variable-length, "masked" packing).
//!
//! A packed row holds the tail of one document and whole others back to back. Each token sees
//! only the earlier tokens of its own document, and its RoPE position counts from its document's
//! first token, so a row computes exactly what running each document as its own sequence would.
//!
//! The attention is computed piece by piece: a *piece* is the part of one document inside a
//! query slice. Its queries `a..e` of a document that starts at `ds` attend to keys `ds..e`
//! with the ordinary bottom-right causal mask (the queries are the last `e − a` of those keys),
//! so the blockwise kernels run unchanged and no key of another document is ever scored: no
//! work is spent on masked-out tiles, and no dense mask is built.

use std::ops::Range;

use candle_core::Tensor;

use crate::attention::{attention_forward, AttentionOptions, Mask};
use crate::attention_backward::backward_compute;
use crate::error::{KernelError, Result};
use crate::rope::Rope;

/// The document starts of each packed row, over the row's `len` input tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// Per row, increasing starts, the first 0, all below `len`.
    starts: Vec<Vec<usize>>,
    len: usize,
}

/// The part of one document inside a token range of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The document's first token in the row.
    pub doc_start: usize,
    /// The piece's first token (`≥ doc_start`).
    pub start: usize,
    /// One past the piece's last token.
    pub end: usize,
}

impl Piece {
    /// RoPE position of the piece's first token: its distance from the document's start.
    pub fn position(&self) -> usize {
        self.start - self.doc_start
    }
}

impl Documents {
    /// Rows of `len` tokens with documents starting at `starts[row]`: increasing, the first 0
    /// (a row begins with a document, or the tail of one), all below `len`.
    pub fn new(starts: Vec<Vec<usize>>, len: usize) -> Result<Self> {
        if len == 0 || starts.is_empty() {
            return Err(bad(format!(
                "{} rows of {len} tokens: packed rows need at least one row of one token",
                starts.len()
            )));
        }
        for (row, s) in starts.iter().enumerate() {
            let increasing = s.windows(2).all(|w| w[0] < w[1]);
            if s.first() != Some(&0) || !increasing || s.last().is_some_and(|&l| l >= len) {
                return Err(bad(format!(
                    "row {row}: document starts {s:?} must increase from 0 and stay below the \
                     row's {len} tokens"
                )));
            }
        }
        Ok(Documents { starts, len })
    }

    /// Every row one document: what unpacked training computes.
    pub fn whole(rows: usize, len: usize) -> Result<Self> {
        Self::new(vec![vec![0]; rows], len)
    }

    /// Rows of tokens cut into documents after every `eos`: a token after an end-of-document
    /// token starts the next document. `tokens` holds `rows` rows of `len` input tokens.
    pub fn after_eos(tokens: &[u32], rows: usize, len: usize, eos: u32) -> Result<Self> {
        if rows.checked_mul(len) != Some(tokens.len()) {
            return Err(bad(format!(
                "{} tokens do not form {rows} rows of {len}",
                tokens.len()
            )));
        }
        let starts = tokens
            .chunks(len.max(1))
            .map(|row| {
                let after = row.iter().enumerate().filter(|&(_, &t)| t == eos);
                std::iter::once(0)
                    .chain(after.map(|(i, _)| i + 1).filter(|&s| s < len))
                    .collect()
            })
            .collect();
        Self::new(starts, len)
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.starts.len()
    }

    /// Input tokens per row.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a row holds at least one token ([`Documents::new`] refuses empty rows).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Document starts of `row`.
    pub fn starts(&self, row: usize) -> &[usize] {
        &self.starts[row]
    }

    /// Documents in all rows (a document cut by a row boundary counts in each row).
    pub fn count(&self) -> usize {
        self.starts.iter().map(Vec::len).sum()
    }

    /// The pieces of documents inside `range` of `row`, in order; they tile the range.
    pub fn pieces(&self, row: usize, range: Range<usize>) -> Vec<Piece> {
        let starts = &self.starts[row];
        let ends = starts.iter().skip(1).copied().chain([self.len]);
        starts
            .iter()
            .zip(ends)
            .filter(|&(&s, e)| s < range.end && e > range.start)
            .map(|(&doc_start, e)| Piece {
                doc_start,
                start: doc_start.max(range.start),
                end: e.min(range.end),
            })
            .collect()
    }

    /// Query–key pairs a causal attention over documents scores for the queries in `range` of
    /// `row` (per head): each query sees itself and the earlier tokens of its document.
    pub fn causal_entries(&self, row: usize, range: Range<usize>) -> u64 {
        self.pieces(row, range)
            .iter()
            .map(|p| {
                let (n, before) = ((p.end - p.start) as u64, p.position() as u64);
                n * before + n * (n + 1) / 2
            })
            .sum()
    }

    /// `x [b, heads, s, d]` holds tokens `offset..offset+s` of every row: they must exist.
    fn check_span(&self, op: &'static str, dims: &[usize], offset: usize) -> Result<()> {
        let (b, s) = (dims[0], dims[2]);
        if b != self.rows() || offset + s > self.len {
            return Err(KernelError::Shape {
                op,
                detail: format!(
                    "tokens {offset}..{} of {b} rows (shape {dims:?}) against packed documents \
                     of {} rows × {} tokens",
                    offset + s,
                    self.rows(),
                    self.len
                ),
            });
        }
        Ok(())
    }
}

fn bad(detail: String) -> KernelError {
    KernelError::Shape {
        op: "documents",
        detail,
    }
}

/// Applies `each` to every piece of tokens `offset..offset+s` of `x [b, heads, s, d]` and
/// concatenates the results along tokens, then rows.
fn per_piece(
    docs: &Documents,
    x: &Tensor,
    offset: usize,
    mut each: impl FnMut(&Tensor, Piece) -> Result<Tensor>,
) -> Result<Tensor> {
    let s = x.dims()[2];
    let mut rows = Vec::with_capacity(docs.rows());
    for row in 0..docs.rows() {
        let xr = x.narrow(0, row, 1)?;
        let parts = docs
            .pieces(row, offset..offset + s)
            .into_iter()
            .map(|p| each(&xr.narrow(2, p.start - offset, p.end - p.start)?, p))
            .collect::<Result<Vec<_>>>()?;
        rows.push(Tensor::cat(&parts, 2)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

impl Rope {
    /// [`Rope::forward`] of tokens `offset..offset+s` of packed rows: each token at its distance
    /// from its document's start.
    pub fn forward_documents(&self, x: &Tensor, offset: usize, docs: &Documents) -> Result<Tensor> {
        docs.check_span("rope.forward_documents", x.dims(), offset)?;
        per_piece(docs, x, offset, |xp, p| self.forward(xp, p.position()))
    }

    /// Gradient of [`Rope::forward_documents`].
    pub fn backward_documents(
        &self,
        dy: &Tensor,
        offset: usize,
        docs: &Documents,
    ) -> Result<Tensor> {
        docs.check_span("rope.backward_documents", dy.dims(), offset)?;
        per_piece(docs, dy, offset, |dp, p| self.backward(dp, p.position()))
    }
}

/// Document-masked causal attention of the queries of tokens `offset..offset+sq` of packed rows
/// (`q [b, h, sq, d]`) against the keys of tokens `0..offset+sq` (`k`, `v [b, hkv, offset+sq,
/// d]`). Returns `(out, lse)` as [`attention_forward`].
pub fn attention_forward_documents(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    docs: &Documents,
) -> Result<(Tensor, Tensor)> {
    let offset = checked_offset("attention_forward_documents", q, k, opts, docs)?;
    let (sq, mut rows) = (q.dims()[2], Vec::with_capacity(docs.rows()));
    for row in 0..docs.rows() {
        let (qr, kr, vr) = (
            q.narrow(0, row, 1)?,
            k.narrow(0, row, 1)?,
            v.narrow(0, row, 1)?,
        );
        let mut parts = (Vec::new(), Vec::new());
        for p in docs.pieces(row, offset..offset + sq) {
            let keys = p.end - p.doc_start;
            let (o, lse) = attention_forward(
                &qr.narrow(2, p.start - offset, p.end - p.start)?,
                &kr.narrow(2, p.doc_start, keys)?,
                &vr.narrow(2, p.doc_start, keys)?,
                opts,
            )?;
            parts.0.push(o);
            parts.1.push(lse);
        }
        rows.push((Tensor::cat(&parts.0, 2)?, Tensor::cat(&parts.1, 2)?));
    }
    let (outs, lses): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    Ok((Tensor::cat(&outs, 0)?, Tensor::cat(&lses, 0)?))
}

/// Backward of [`attention_forward_documents`] in the compute dtype: `(dtype of the inputs, dq,
/// dk, dv)`, with `dk`, `dv` over all `offset + sq` keys (zero before the slice's first
/// document).
pub(crate) fn backward_documents_compute(
    [q, k, v]: [&Tensor; 3],
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    opts: &AttentionOptions,
    docs: &Documents,
) -> Result<(candle_core::DType, Tensor, Tensor, Tensor)> {
    let offset = checked_offset("attention_backward_documents", q, k, opts, docs)?;
    let sq = q.dims()[2];
    let mut rows = (Vec::new(), Vec::new(), Vec::new());
    let mut dtype = q.dtype();
    for row in 0..docs.rows() {
        let at = |t: &Tensor| t.narrow(0, row, 1);
        let (qr, kr, vr, or, lr, dr) = (at(q)?, at(k)?, at(v)?, at(out)?, at(lse)?, at(d_out)?);
        let pieces = docs.pieces(row, offset..offset + sq);
        let mut parts = (Vec::new(), Vec::new(), Vec::new());
        for p in &pieces {
            let (qs, len) = (p.start - offset, p.end - p.start);
            let keys = p.end - p.doc_start;
            let (geo, dq, dk, dv) = backward_compute(
                &qr.narrow(2, qs, len)?,
                &kr.narrow(2, p.doc_start, keys)?,
                &vr.narrow(2, p.doc_start, keys)?,
                &or.narrow(2, qs, len)?,
                &lr.narrow(2, qs, len)?,
                &dr.narrow(2, qs, len)?,
                opts,
            )?;
            if parts.1.is_empty() && p.doc_start > 0 {
                // Keys before the slice's first document get no gradient from this slice.
                let (_, hkv, _, d) = kr.dims4()?;
                let zeros = Tensor::zeros((1, hkv, p.doc_start, d), geo.ct, k.device())?;
                parts.1.push(zeros.clone());
                parts.2.push(zeros);
            }
            dtype = geo.dtype;
            parts.0.push(dq);
            parts.1.push(dk);
            parts.2.push(dv);
        }
        rows.0.push(Tensor::cat(&parts.0, 2)?);
        rows.1.push(Tensor::cat(&parts.1, 2)?);
        rows.2.push(Tensor::cat(&parts.2, 2)?);
    }
    let cat = |parts: &[Tensor]| Tensor::cat(parts, 0);
    Ok((dtype, cat(&rows.0)?, cat(&rows.1)?, cat(&rows.2)?))
}

/// Backward of [`attention_forward_documents`]: `(dq, dk, dv)` in the inputs' dtype.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_documents(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    opts: &AttentionOptions,
    docs: &Documents,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dtype, dq, dk, dv) = backward_documents_compute([q, k, v], out, lse, d_out, opts, docs)?;
    Ok((
        dq.to_dtype(dtype)?,
        dk.to_dtype(dtype)?,
        dv.to_dtype(dtype)?,
    ))
}

/// The first query token of a document-masked call: the keys cover `0..offset+sq` of rows that
/// `docs` describes, under a causal mask.
fn checked_offset(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    opts: &AttentionOptions,
    docs: &Documents,
) -> Result<usize> {
    if opts.mask != Mask::Causal {
        return Err(KernelError::Param {
            op,
            what: "mask",
            value: format!("{:?}", opts.mask),
            valid: "Mask::Causal (documents are causal sequences)".into(),
        });
    }
    let (qd, kd) = (q.dims(), k.dims());
    if qd.len() != 4 || kd.len() != 4 || kd[2] < qd[2] {
        return Err(KernelError::Shape {
            op,
            detail: format!(
                "q {qd:?} and k {kd:?} must be [b, heads, s, d] with k holding the queries' \
                 tokens last"
            ),
        });
    }
    let offset = kd[2] - qd[2];
    docs.check_span(op, qd, offset)?;
    Ok(offset)
}
