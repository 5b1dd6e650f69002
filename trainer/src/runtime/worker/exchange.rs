//! SlimPipe's attention context exchange at run time: a compute marked with a
//! [`seqpipe_schedule::Pair`] computes every layer's attention with its partner stage, which runs
//! its own marked compute at the same time.
//!
//! Forward, per layer: the heavy side sends its queries and the K/V of its oldest `head` prefix
//! tokens, attends to the rest itself, and merges the partner's `(out, lse)` by log-sum-exp. The
//! light side runs its own compute (a forward or a backward) and, between its layers, answers
//! every request that has arrived (the received queries attended to the received K/V, no mask);
//! when its compute ends it answers the rest, waiting for them. So the light side never waits
//! for a partner that is not there yet, and a heavy side waits at most for one of the light
//! side's layers (once the light side has started).
//!
//! Backward, per layer: the heavy side sends the queries, the K/V head and the merged `out`,
//! `lse` and `dOut`; the light side answers with `dQ`, `dK`, `dV` of that part, which the heavy
//! side adds to its own (`SliceKvCache::backward_split`). The records each side keeps are those
//! of a forward without exchange, so a recomputation runs alone.
//!
//! Tags: (exchange number of the two stages, layer call, part), both sides counting in program
//! order; [`exchange_sends`] lists a marked compute's messages, and the inbox's expected order
//! is built from it.

use candle_core::{DType, Tensor};
use seqpipe_comm::TagKind;
use seqpipe_kernels::{
    attention_backward_unrounded, attention_forward, merge_attention, AttentionOptions, Mask,
    SliceKvCache,
};
use seqpipe_schedule::Action;

use super::link::Link;
use super::{IterState, IterationInput, StageWorker};
use crate::error::{fail, Error, Result};
use crate::model::layer::{Alone, AttentionSite, LayerSaved};

/// Parts the heavy side sends per layer: forward (q, K head, V head), backward (those plus out,
/// lse, dOut).
const ASK_PARTS: [u32; 2] = [3, 6];
/// Parts the light side answers per layer: forward (out, lse), backward (dQ, dK, dV).
const ANSWER_PARTS: [u32; 2] = [2, 3];

/// Every message of a marked compute `a` (the `seq`-th exchange of its stage with its peer)
/// over `layers` layers, in sending order: (kind, layer call, part).
pub(crate) fn exchange_sends(a: &Action, layers: usize) -> Vec<(TagKind, u32, u32)> {
    let Some(pair) = a.pair else {
        return Vec::new();
    };
    let backward = usize::from(pair.backward);
    let (kind, parts) = match pair.head > 0 {
        true => (TagKind::ExchangeAsk, ASK_PARTS[backward]),
        false => (TagKind::ExchangeAnswer, ANSWER_PARTS[backward]),
    };
    (0..layers as u32)
        .flat_map(|call| (0..parts).map(move |part| (kind, call, part)))
        .collect()
}

/// Which side of the exchange this stage is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Side {
    /// Hands the oldest `head` tokens of its prefix.
    Heavy { head: usize },
    /// Attends for the partner, after its own attention: the partner's forward, or (`backward`)
    /// its backward.
    Light { backward: bool },
}

/// One marked compute's attention site: its partner, side and messages.
pub(super) struct Partner<'l, 'a> {
    pub link: &'l mut Link<'a>,
    /// The partner stage.
    pub peer: usize,
    /// The exchange number of this stage and its partner.
    pub seq: u32,
    pub side: Side,
    /// Layer calls made so far.
    pub call: u32,
    /// Layers of the exchanged compute: the requests a light side answers.
    pub layers: u32,
    /// Requests answered so far (light side).
    pub answered: u32,
    /// The attention options of the layers.
    pub opts: AttentionOptions,
    /// The dtype of `lse` and of the answered gradients (f32, or f64).
    pub compute: DType,
    /// The first communication error, kept with its kind for the caller.
    pub error: Option<Error>,
    /// Attention score entries computed for the partner (light side).
    pub served: u64,
}

impl Partner<'_, '_> {
    /// The tag of `part` of the exchange's `index`-th request or answer.
    fn tag(&self, kind: TagKind, index: u32, part: u32) -> Result<seqpipe_comm::Tag> {
        Ok(seqpipe_comm::Tag::new(kind, self.seq, index, part)?)
    }

    /// The request or answer in flight: the heavy side's own layer call, the light side's
    /// next answer.
    fn index(&self) -> u32 {
        match self.side {
            Side::Heavy { .. } => self.call,
            Side::Light { .. } => self.answered,
        }
    }

    fn send(&mut self, kind: TagKind, parts: &[&Tensor]) -> Result<()> {
        for (part, t) in parts.iter().enumerate() {
            let tag = self.tag(kind, self.index(), part as u32)?;
            self.link.send_tagged(self.peer, tag, t)?;
        }
        Ok(())
    }

    fn recv(&mut self, kind: TagKind, dtypes: &[DType]) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(dtypes.len());
        for (part, &dtype) in dtypes.iter().enumerate() {
            let tag = self.tag(kind, self.index(), part as u32)?;
            out.push(self.link.recv_tagged(self.peer, tag, dtype)?);
        }
        Ok(out)
    }

    /// The light side between its own layers: answers every request that has arrived, without
    /// waiting for one that has not (its partner may not have reached its compute yet).
    fn serve_arrived(&mut self, backward: bool, opts: &AttentionOptions) -> Result<()> {
        while self.answered < self.layers {
            let tag = self.tag(TagKind::ExchangeAsk, self.answered, 0)?;
            if !self.link.has_arrived(self.peer, tag, self.link.dtype)? {
                break;
            }
            self.serve(backward, opts)?;
        }
        Ok(())
    }

    /// The light side after its own compute: answers the requests still to come, waiting.
    fn finish(&mut self) -> Result<()> {
        let opts = self.opts;
        if let Side::Light { backward } = self.side {
            while self.answered < self.layers {
                self.serve(backward, &opts)?;
            }
        }
        Ok(())
    }

    /// Keeps a communication error for the caller and hands candle a message naming it.
    fn kept<T>(&mut self, r: Result<T>) -> candle_core::Result<T> {
        r.map_err(|e| {
            let text = e.to_string();
            self.error.get_or_insert(e);
            candle_core::Error::Msg(text)
        })
    }

    fn unmasked(opts: &AttentionOptions) -> AttentionOptions {
        AttentionOptions {
            mask: Mask::None,
            ..*opts
        }
    }

    fn heavy_forward(
        &mut self,
        prefix: &SliceKvCache,
        [q, k, v]: [&Tensor; 3],
        opts: &AttentionOptions,
        head: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (k_head, v_head) = prefix.head(head)?;
        self.send(TagKind::ExchangeAsk, &[q, &k_head, &v_head])?;
        let (o1, l1) = prefix.attend_tail(q, k, v, opts, head)?;
        let answer = self.recv(TagKind::ExchangeAnswer, &[q.dtype(), self.compute])?;
        Ok(merge_attention(&o1, &l1, &answer[0], &answer[1])?)
    }

    /// The light side's answer to the partner's next forward or backward request.
    fn serve(&mut self, backward: bool, opts: &AttentionOptions) -> Result<()> {
        match backward {
            true => self.light_backward(opts)?,
            false => self.light_forward(opts)?,
        }
        self.answered += 1;
        Ok(())
    }

    fn light_forward(&mut self, opts: &AttentionOptions) -> Result<()> {
        let d = self.link.dtype;
        let ask = self.recv(TagKind::ExchangeAsk, &[d, d, d])?;
        self.served += score_entries(&ask[0], &ask[1]);
        let (o, l) = attention_forward(&ask[0], &ask[1], &ask[2], &Self::unmasked(opts))?;
        self.send(TagKind::ExchangeAnswer, &[&o, &l])
    }

    fn heavy_backward(
        &mut self,
        cache: &mut SliceKvCache,
        saved: &LayerSaved,
        d_out: &Tensor,
        opts: &AttentionOptions,
        head: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, o, lse) = (&saved.q, &saved.o, &saved.lse);
        let mut asked = Ok(());
        let mut answer = Vec::new();
        let remote = |k_head: &Tensor, v_head: &Tensor| {
            asked = self
                .send(TagKind::ExchangeAsk, &[q, k_head, v_head, o, lse, d_out])
                .and_then(|()| {
                    let c = self.compute;
                    answer = self.recv(TagKind::ExchangeAnswer, &[c, c, c])?;
                    Ok(())
                });
            match (&asked, answer.as_slice()) {
                (Ok(()), [dq, dk, dv]) => Ok((dq.clone(), dk.clone(), dv.clone())),
                _ => Err(seqpipe_kernels::KernelError::SliceWalk {
                    detail: "the exchange partner did not answer".into(),
                }),
            }
        };
        let result = cache.backward_split(q, o, lse, d_out, opts, head, remote);
        asked?;
        Ok(result?)
    }

    fn light_backward(&mut self, opts: &AttentionOptions) -> Result<()> {
        let (d, c) = (self.link.dtype, self.compute);
        let ask = self.recv(TagKind::ExchangeAsk, &[d, d, d, d, c, d])?;
        let [q, k, v, o, lse, d_out] = &ask[..] else {
            return Err(Error::Runtime("an exchange request has six parts".into()));
        };
        self.served += score_entries(q, k);
        let (dq, dk, dv) =
            attention_backward_unrounded(q, k, v, o, lse, d_out, &Self::unmasked(opts))?;
        self.send(TagKind::ExchangeAnswer, &[&dq, &dk, &dv])
    }
}

impl AttentionSite for Partner<'_, '_> {
    fn forward(
        &mut self,
        prefix: &SliceKvCache,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let result = match self.side {
            Side::Heavy { head } => self.heavy_forward(prefix, [q, k, v], opts, head),
            Side::Light { backward } => prefix
                .attend(q, k, v, opts)
                .map_err(Error::from)
                .and_then(|own| self.serve_arrived(backward, opts).map(|()| own)),
        };
        let result = self.kept(result);
        self.call += 1;
        result
    }

    fn backward(
        &mut self,
        cache: &mut SliceKvCache,
        saved: &LayerSaved,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let result = match self.side {
            Side::Heavy { head } => self.heavy_backward(cache, saved, d_out, opts, head),
            Side::Light { backward } => cache
                .backward(&saved.q, &saved.o, &saved.lse, d_out, opts)
                .map_err(Error::from)
                .and_then(|own| self.serve_arrived(backward, opts).map(|()| own)),
        };
        let result = self.kept(result);
        self.call += 1;
        result
    }
}

impl StageWorker {
    /// The attention site of `a`: its exchange partner (the `n`-th exchange of this stage with
    /// that peer in this iteration), or none.
    pub(super) fn partner<'l, 'a>(
        &self,
        link: &'l mut Link<'a>,
        st: &mut IterState,
        a: &Action,
        input: &IterationInput,
    ) -> Result<Option<Partner<'l, 'a>>> {
        let Some(pair) = a.pair else {
            return Ok(None);
        };
        let peer = pair.peer.index();
        let seq = st.exchanges.entry(peer).or_default();
        let n = *seq;
        *seq += 1;
        let side = match pair.head as usize {
            0 => Side::Light {
                backward: pair.backward,
            },
            head => {
                let cached = input.slices.get(a.slice.index()).map_or(0, |r| r.start);
                if head > cached {
                    fail!(
                        Config,
                        "an exchange hands the oldest {head} tokens of slice {}'s prefix, which \
                         has {cached}",
                        a.slice.index()
                    );
                }
                Side::Heavy { head }
            }
        };
        let compute = match link.dtype {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        Ok(Some(Partner {
            link,
            peer,
            seq: n,
            side,
            call: 0,
            layers: self.weights[a.chunk.index()].len() as u32,
            answered: 0,
            opts: self.attention,
            compute,
            error: None,
            served: 0,
        }))
    }
}

/// Score entries of queries `q [b, h, sq, d]` against `k [b, hkv, sk, d]` with no mask.
fn score_entries(q: &Tensor, k: &Tensor) -> u64 {
    let (qd, kd) = (q.dims(), k.dims());
    (qd[0] * qd[1] * qd[2] * kd[2]) as u64
}

/// Score entries of one layer's causal attention of `len` queries from token `offset` on
/// (`batch · heads` sequences), less the `head` prefix tokens a partner attends to.
pub(super) fn own_entries(batch_heads: usize, offset: usize, len: usize, head: usize) -> u64 {
    (batch_heads * (len * (offset - head) + len * (len + 1) / 2)) as u64
}

impl Side {
    /// Prefix tokens the partner attends to for this side.
    pub(super) fn handed(self) -> usize {
        match self {
            Side::Heavy { head } => head,
            Side::Light { .. } => 0,
        }
    }
}

/// Runs `f` at `partner`'s site, or alone; returns its result, the prefix tokens handed to the
/// partner and the score entries served for it. A failure of the exchange's messages is returned
/// as itself (its kind names a lost or late peer), not as the attention error it caused.
pub(super) fn at_site<T>(
    partner: Option<Partner>,
    f: impl FnOnce(&mut dyn AttentionSite) -> Result<T>,
) -> Result<(T, usize, u64)> {
    let Some(mut partner) = partner else {
        return Ok((f(&mut Alone)?, 0, 0));
    };
    let result = f(&mut partner).and_then(|t| partner.finish().map(|()| t));
    match (result, partner.error) {
        (Err(_), Some(e)) => Err(e),
        (result, _) => Ok((result?, partner.side.handed(), partner.served)),
    }
}
