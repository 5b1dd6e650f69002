//! SlimPipe's attention context exchange at run time, the heavy side and the layers' site.
//!
//! A compute marked heavy (a [`seqpipe_schedule::Pair`] with `head > 0`) computes every layer's
//! attention with its partner stage. Forward, per layer: it sends its queries and the K/V of
//! its oldest `head` prefix tokens, attends to the rest itself, and merges the partner's
//! `(out, lse)` by log-sum-exp. Backward, per layer: it sends the queries, the K/V head and the
//! merged `out`, `lse` and `dOut`; the partner answers with `dQ`, `dK`, `dV` of that part, which
//! it adds to its own (`SliceKvCache::backward_split`). The records each side keeps are those
//! of a forward without exchange, so a recomputation runs alone.
//!
//! The partner answers whenever a request has arrived (`serve.rs`): between the layers of any
//! of its computes (this module's [`Site`] calls it after each layer, on every stage of a run
//! with exchanges) and while it waits for any message, so partners need not run at the same
//! time.

use candle_core::Tensor;
use seqpipe_comm::TagKind;
use seqpipe_kernels::{merge_attention, AttentionOptions, Documents, SliceKvCache};
use seqpipe_schedule::Action;

use super::link::Link;
use super::serve::{exchange_seq, exchange_tag, ANSWER_PARTS};
use super::{IterState, IterationInput, StageWorker};
use crate::error::{fail, Error, Result};
use crate::model::layer::{backward_alone, Alone, AttentionSite, LayerSaved};
use crate::runtime::input::EXCHANGE_OVER_DOCUMENTS;

/// A heavy compute's partner and the exchange's tag number.
#[derive(Debug, Clone, Copy)]
struct Heavy {
    peer: usize,
    seq: u32,
    /// Prefix tokens the partner attends to.
    head: usize,
}

/// The attention site of a compute in a run with exchanges: alone or with a partner, and in
/// either case answering the requests that have arrived after each layer.
pub(super) struct Site<'l, 'a> {
    link: &'l mut Link<'a>,
    heavy: Option<Heavy>,
    /// Layer calls made so far.
    call: u32,
    /// The first communication error, kept with its kind for the caller.
    error: Option<Error>,
}

impl Site<'_, '_> {
    fn send(&mut self, h: Heavy, parts: &[&Tensor]) -> Result<()> {
        for (part, t) in parts.iter().enumerate() {
            let tag = exchange_tag(TagKind::ExchangeAsk, h.seq, self.call, part as u32)?;
            self.link.send_tagged(h.peer, tag, t)?;
        }
        Ok(())
    }

    fn answer(&mut self, h: Heavy, parts: u32) -> Result<Vec<Tensor>> {
        (0..parts)
            .map(|part| {
                let tag = exchange_tag(TagKind::ExchangeAnswer, h.seq, self.call, part)?;
                self.link.recv_tagged(h.peer, tag, self.link.dtype)
            })
            .collect()
    }

    /// Keeps a communication error for the caller and hands candle a message naming it.
    fn kept<T>(&mut self, r: Result<T>) -> candle_core::Result<T> {
        r.map_err(|e| {
            let text = e.to_string();
            self.error.get_or_insert(e);
            candle_core::Error::Msg(text)
        })
    }

    /// After a layer: answers the partners' requests that have arrived.
    fn between_layers<T>(&mut self, r: Result<T>) -> candle_core::Result<T> {
        self.call += 1;
        let r = r.and_then(|t| self.link.serve().map(|_| t));
        self.kept(r)
    }

    fn heavy_forward(
        &mut self,
        h: Heavy,
        prefix: &SliceKvCache,
        [q, k, v]: [&Tensor; 3],
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Tensor)> {
        let (k_head, v_head) = prefix.head(h.head)?;
        self.send(h, &[q, &k_head, &v_head])?;
        let (o1, l1) = prefix.attend_tail(q, k, v, opts, h.head)?;
        let answer = self.answer(h, ANSWER_PARTS[0])?;
        Ok(merge_attention(&o1, &l1, &answer[0], &answer[1])?)
    }

    fn heavy_backward(
        &mut self,
        h: Heavy,
        cache: &mut SliceKvCache,
        saved: &LayerSaved,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, o, lse) = (&saved.q, &saved.o, &saved.lse);
        let mut asked: Result<Vec<Tensor>> = Ok(Vec::new());
        let remote = |k_head: &Tensor, v_head: &Tensor| {
            asked = self
                .send(h, &[q, k_head, v_head, o, lse, d_out])
                .and_then(|()| self.answer(h, ANSWER_PARTS[1]));
            match &asked {
                Ok(answer) => Ok((answer[0].clone(), answer[1].clone(), answer[2].clone())),
                Err(_) => Err(seqpipe_kernels::KernelError::SliceWalk {
                    detail: "the exchange partner did not answer".into(),
                }),
            }
        };
        let result = cache.backward_split(q, o, lse, d_out, opts, h.head, remote);
        asked?;
        Ok(result?)
    }
}

impl AttentionSite for Site<'_, '_> {
    fn forward(
        &mut self,
        prefix: &SliceKvCache,
        qkv: [&Tensor; 3],
        opts: &AttentionOptions,
        documents: Option<&Documents>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let result = match (self.heavy, documents) {
            (Some(_), Some(_)) => Err(Error::Config(EXCHANGE_OVER_DOCUMENTS.into())),
            (Some(h), None) => self.heavy_forward(h, prefix, qkv, opts),
            (None, docs) => Alone.forward(prefix, qkv, opts, docs).map_err(Error::from),
        };
        self.between_layers(result)
    }

    fn backward(
        &mut self,
        cache: &mut SliceKvCache,
        saved: &LayerSaved,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let result = match (self.heavy, &saved.place.documents) {
            (Some(_), Some(_)) => Err(Error::Config(EXCHANGE_OVER_DOCUMENTS.into())),
            (Some(h), None) => self.heavy_backward(h, cache, saved, d_out, opts),
            (None, _) => backward_alone(cache, saved, d_out, opts).map_err(Error::from),
        };
        self.between_layers(result)
    }
}

impl StageWorker {
    /// The attention site of compute `a`: in a run with exchanges, one that answers partners
    /// between layers and, if `a` is marked heavy, hands its partner (the `n`-th heavy exchange
    /// of this stage with that peer in that direction) the head of its prefix; else none.
    pub(super) fn site<'l, 'a>(
        &self,
        link: &'l mut Link<'a>,
        st: &mut IterState,
        a: &Action,
        input: &IterationInput,
    ) -> Result<Option<Site<'l, 'a>>> {
        if link.service.is_none() {
            return Ok(None);
        }
        let heavy = match a.pair.filter(|p| p.head > 0) {
            None => None,
            Some(pair) => {
                let head = pair.head as usize;
                let slices = input.slices_of(a.mb.index());
                let cached = slices.get(a.slice.index()).map_or(0, |r| r.start);
                if head > cached {
                    fail!(
                        Config,
                        "an exchange hands the oldest {head} tokens of slice {}'s prefix, which \
                         has {cached}",
                        a.slice.index()
                    );
                }
                let peer = pair.peer.index();
                let n = st.exchanges.entry((peer, pair.backward)).or_default();
                let seq = exchange_seq(*n, pair.backward);
                *n += 1;
                Some(Heavy { peer, seq, head })
            }
        };
        Ok(Some(Site {
            link,
            heavy,
            call: 0,
            error: None,
        }))
    }
}

/// Score entries of one layer's causal attention of `len` queries from token `offset` on
/// (`batch · heads` sequences), less the `head` prefix tokens a partner attends to.
pub(super) fn own_entries(batch_heads: usize, offset: usize, len: usize, head: usize) -> u64 {
    (batch_heads * (len * (offset - head) + len * (len + 1) / 2)) as u64
}

/// Runs `f` at `site`, or alone; returns its result and the prefix tokens handed to a partner.
/// A failure of the exchange's messages is returned as itself (its kind names a lost or late
/// peer), not as the attention error it caused.
pub(super) fn at_site<T>(
    site: Option<Site>,
    f: impl FnOnce(&mut dyn AttentionSite) -> Result<T>,
) -> Result<(T, usize)> {
    let Some(mut site) = site else {
        return Ok((f(&mut Alone)?, 0));
    };
    let result = f(&mut site);
    let handed = site.heavy.map_or(0, |h| h.head);
    match (result, site.error) {
        (Err(_), Some(e)) => Err(e),
        (result, _) => Ok((result?, handed)),
    }
}
