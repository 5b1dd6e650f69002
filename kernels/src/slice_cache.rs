//! The slice walk of SPEC §4: a KV-prefix cache for the forwards of one sequence's slices and a
//! dK/dV accumulator for their backwards, in reverse slice order.
//!
//! One [`SliceKvCache`] per (layer, micro-batch). Forward of slice `j`: its `K_j`, `V_j` join the
//! cache and `Q_j` attends to `[K_0..K_j]` causally. Backward of slice `j` (after every later slice):
//! dK, dV over the whole prefix `0..end_j`, plus the prefix gradient that later slices left for
//! `0..end_j`; the part `offset_j..end_j` is the slice's own, returned; the part `0..offset_j` stays
//! as the accumulator for slice `j − 1`. The accumulator is kept in the compute dtype (f32 for bf16)
//! so that summing over many slices does not round at every step.

use candle_core::Tensor;

use crate::attention::{attention_forward, AttentionOptions};
use crate::attention_backward::backward_compute;
use crate::documents::{attention_forward_documents, backward_documents_compute, Documents};
use crate::error::{KernelError, Result};

/// KV-prefix cache and prefix-gradient accumulator of one sequence in one attention layer.
#[derive(Debug, Clone, Default)]
pub struct SliceKvCache {
    /// Post-RoPE keys of the slices run forward and not yet backward, `[b, hkv, len, d]` each.
    k: Vec<Tensor>,
    /// Values, same layout.
    v: Vec<Tensor>,
    /// `(dk, dv)` for tokens `0..accumulated` left by the backwards of later slices.
    grad: Option<(Tensor, Tensor)>,
}

impl SliceKvCache {
    /// An empty cache, before the forward of slice 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Slices whose K/V are cached (forwarded, not yet backwarded).
    pub fn slices(&self) -> usize {
        self.k.len()
    }

    /// Tokens of K/V cached: the offset the next forward slice starts at.
    pub fn cached_tokens(&self) -> usize {
        self.k.iter().map(|k| k.dims()[2]).sum()
    }

    /// Tokens covered by the pending prefix gradient (0 when none).
    pub fn pending_grad_tokens(&self) -> usize {
        self.grad.as_ref().map_or(0, |(dk, _)| dk.dims()[2])
    }

    /// Forward of the next slice: `q [b, h, s, d]`, its own `k`, `v [b, hkv, s, d]` (after RoPE at
    /// positions `cached_tokens()..+s`). Returns `(out, lse)` of attention against the whole prefix,
    /// and the slice's K/V join the cache ([`SliceKvCache::attend`], then [`SliceKvCache::append`]).
    /// The cache is unchanged if an error is returned.
    pub fn forward(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Tensor)> {
        let result = self.attend(q, k, v, opts)?;
        self.append(k, v)?;
        Ok(result)
    }

    /// Attention of the next slice against the cached prefix and its own `k`, `v`, leaving the
    /// cache as it is: a pure function of the prefix, so a forward can be run again (recomputed)
    /// or its K/V kept elsewhere. Returns `(out, lse)`.
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Tensor)> {
        self.check_next(k)?;
        self.check_same_tokens(q, k)?;
        let (k_all, v_all) = self.prefix_with(k, v)?;
        attention_forward(q, &k_all, &v_all, opts)
    }

    fn check_same_tokens(&self, q: &Tensor, k: &Tensor) -> Result<()> {
        if q.dims().get(2) != k.dims().get(2) {
            return Err(walk(format!(
                "forward: a slice's q {:?} and its own k {:?} must have the same token count (dim 2)",
                q.dims(),
                k.dims()
            )));
        }
        Ok(())
    }

    /// [`SliceKvCache::attend`] over packed rows: each query sees only the earlier tokens of its
    /// own document ([`crate::attention_forward_documents`]).
    pub fn attend_documents(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
        docs: &Documents,
    ) -> Result<(Tensor, Tensor)> {
        self.check_next(k)?;
        self.check_same_tokens(q, k)?;
        let (k_all, v_all) = self.prefix_with(k, v)?;
        attention_forward_documents(q, &k_all, &v_all, opts, docs)
    }

    /// [`SliceKvCache::backward`] of a slice attended with [`SliceKvCache::attend_documents`].
    pub fn backward_documents(
        &mut self,
        q: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        d_out: &Tensor,
        opts: &AttentionOptions,
        docs: &Documents,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let by_document = |k_all: &Tensor, v_all: &Tensor| -> Result<Split> {
            backward_documents_compute([q, k_all, v_all], out, lse, d_out, opts, docs)
        };
        self.walk_back(q, by_document)
    }

    /// SlimPipe's exchange, forward: the cached tokens `0..head` (post-RoPE K and V) that a heavy
    /// rank hands to its light partner, who attends the slice's queries to them with no mask
    /// (they all precede the queries) and returns `(out, lse)` to merge with
    /// [`SliceKvCache::attend_tail`]'s by [`crate::merge_attention`].
    pub fn head(&self, head: usize) -> Result<(Tensor, Tensor)> {
        let cached = self.cached_tokens();
        if head == 0 || head > cached {
            return Err(walk(format!(
                "exchange: a head of {head} tokens; 1..={cached} are cached"
            )));
        }
        let (k, v) = (Tensor::cat(&self.k, 2)?, Tensor::cat(&self.v, 2)?);
        Ok((
            k.narrow(2, 0, head)?.contiguous()?,
            v.narrow(2, 0, head)?.contiguous()?,
        ))
    }

    /// [`SliceKvCache::attend`] without the cached tokens `0..head` (given to the exchange
    /// partner, [`SliceKvCache::head`]): the slice's queries against the rest of the prefix and
    /// their own keys, causal bottom-right. Returns `(out, lse)` of this part.
    pub fn attend_tail(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
        head: usize,
    ) -> Result<(Tensor, Tensor)> {
        self.head(head)?;
        self.check_next(k)?;
        let (k_all, v_all) = self.prefix_with(k, v)?;
        let tail = k_all.dims()[2] - head;
        attention_forward(
            q,
            &k_all.narrow(2, head, tail)?.contiguous()?,
            &v_all.narrow(2, head, tail)?.contiguous()?,
            opts,
        )
    }

    /// SlimPipe's exchange, backward: [`SliceKvCache::backward`] with the gradients of the cached
    /// tokens `0..head` computed by `remote` (the light partner, given K and V of those tokens:
    /// `(dq, dk, dv)` of that part from the merged `out`, `lse`), the rest here. `dq` is the sum;
    /// the prefix gradients are kept as in [`SliceKvCache::backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward_split(
        &mut self,
        q: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        d_out: &Tensor,
        opts: &AttentionOptions,
        head: usize,
        remote: impl FnOnce(&Tensor, &Tensor) -> Result<(Tensor, Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (k_head, v_head) = self.head(head)?;
        let split = |k_all: &Tensor, v_all: &Tensor| -> Result<Split> {
            let tail = k_all.dims()[2] - head;
            let (k_tail, v_tail) = (k_all.narrow(2, head, tail)?, v_all.narrow(2, head, tail)?);
            let (geo, dq, dk, dv) = backward_compute(q, &k_tail, &v_tail, out, lse, d_out, opts)?;
            let (dq_r, dk_r, dv_r) = remote(&k_head, &v_head)?;
            let ct = geo.ct;
            let dq = (dq + dq_r.to_dtype(ct)?)?;
            let dk = Tensor::cat(&[dk_r.to_dtype(ct)?, dk], 2)?;
            let dv = Tensor::cat(&[dv_r.to_dtype(ct)?, dv], 2)?;
            Ok((geo.dtype, dq, dk, dv))
        };
        self.walk_back(q, split)
    }

    /// The prefix the last cached slice's forward attended to: this cache without that slice and
    /// without any pending prefix gradient. Recomputing the slice during the backward walk
    /// attends to it with the slice's own K/V (still cached: a checkpointed slice keeps them),
    /// reproducing its forward exactly while the walk itself is left as it is.
    pub fn without_last(&self) -> Result<SliceKvCache> {
        let n = self.k.len();
        if n == 0 {
            return Err(walk(
                "recompute: no cached slice to recompute the forward of".to_string(),
            ));
        }
        Ok(SliceKvCache {
            k: self.k[..n - 1].to_vec(),
            v: self.v[..n - 1].to_vec(),
            grad: None,
        })
    }

    /// Tokens of the last cached slice (0 when none): the slice the next backward walks.
    pub fn last_slice_tokens(&self) -> usize {
        self.k.last().map_or(0, |k| k.dims()[2])
    }

    /// Adds the next slice's post-RoPE `k`, `v` to the prefix (after its [`SliceKvCache::attend`]).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        self.check_next(k)?;
        if k.dims() != v.dims() {
            return Err(walk(format!(
                "append: k {:?} and v {:?} must have the same shape",
                k.dims(),
                v.dims()
            )));
        }
        self.k.push(k.clone());
        self.v.push(v.clone());
        Ok(())
    }

    /// A next slice's `k` must fit the cached slices, and no backward walk may be under way.
    fn check_next(&self, k: &Tensor) -> Result<()> {
        if self.grad.is_some() {
            return Err(walk(
                "forward called while a backward walk is in progress".to_string(),
            ));
        }
        if let Some(first) = self.k.first() {
            let (fd, kd) = (first.dims(), k.dims());
            if kd.len() != 4
                || fd[0] != kd[0]
                || fd[1] != kd[1]
                || fd[3] != kd[3]
                || first.dtype() != k.dtype()
            {
                return Err(walk(format!(
                    "forward: k {kd:?} ({:?}) does not fit the cached slices {fd:?} ({:?}): batch, \
                     kv heads, head dim and dtype must match",
                    k.dtype(),
                    first.dtype()
                )));
            }
        }
        Ok(())
    }

    /// Backward of the last cached slice: `q`, `out`, `lse`, `d_out` of that slice. Returns `(dq,
    /// dk, dv)` where `dk`, `dv [b, hkv, s, d]` are the slice's own (prefix gradients of later
    /// slices included). The slice leaves the cache.
    pub fn backward(
        &mut self,
        q: &Tensor,
        out: &Tensor,
        lse: &Tensor,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let whole = |k_all: &Tensor, v_all: &Tensor| -> Result<Split> {
            let (geo, dq, dk, dv) = backward_compute(q, k_all, v_all, out, lse, d_out, opts)?;
            Ok((geo.dtype, dq, dk, dv))
        };
        self.walk_back(q, whole)
    }

    /// Pops the last cached slice and runs `grads` over the whole prefix with it (the gradients
    /// in the compute dtype), then keeps the prefix part as the accumulator; the cache is left as
    /// it was on an error.
    fn walk_back(
        &mut self,
        q: &Tensor,
        grads: impl FnOnce(&Tensor, &Tensor) -> Result<Split>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (Some(k_last), Some(v_last)) = (self.k.pop(), self.v.pop()) else {
            return Err(walk("backward called with no cached slice".to_string()));
        };
        let result = self.backward_last(q, &k_last, &v_last, grads);
        if result.is_err() {
            // Leave the cache as it was, so the caller can report and retry.
            self.k.push(k_last);
            self.v.push(v_last);
        }
        result
    }

    fn backward_last(
        &mut self,
        q: &Tensor,
        k_last: &Tensor,
        v_last: &Tensor,
        grads: impl FnOnce(&Tensor, &Tensor) -> Result<Split>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let own = k_last.dims()[2];
        if q.dims().get(2) != Some(&own) {
            return Err(walk(format!(
                "backward: q {:?} is not the last cached slice ({own} tokens); backwards must run \
                 in reverse slice order",
                q.dims()
            )));
        }
        let (k_all, v_all) = self.prefix_with(k_last, v_last)?;
        let (dtype, dq, mut dk, mut dv) = grads(&k_all, &v_all)?;
        if let Some((gk, gv)) = &self.grad {
            // The accumulator covers exactly 0..end of this slice: the offset of the next slice.
            dk = (dk + gk)?;
            dv = (dv + gv)?;
        }
        let offset = k_all.dims()[2] - own;
        self.grad = if offset == 0 {
            None
        } else {
            Some((
                dk.narrow(2, 0, offset)?.contiguous()?,
                dv.narrow(2, 0, offset)?.contiguous()?,
            ))
        };
        let t = dtype;
        Ok((
            dq.to_dtype(t)?,
            dk.narrow(2, offset, own)?.to_dtype(t)?.contiguous()?,
            dv.narrow(2, offset, own)?.to_dtype(t)?.contiguous()?,
        ))
    }

    /// The cached prefix followed by `k`, `v`.
    fn prefix_with(&self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.k.is_empty() {
            return Ok((k.clone(), v.clone()));
        }
        let ks: Vec<&Tensor> = self.k.iter().chain(std::iter::once(k)).collect();
        let vs: Vec<&Tensor> = self.v.iter().chain(std::iter::once(v)).collect();
        Ok((Tensor::cat(&ks, 2)?, Tensor::cat(&vs, 2)?))
    }
}

/// `(dtype of the inputs, dq, dk, dv)` of a backward over the whole prefix, in the compute dtype.
type Split = (candle_core::DType, Tensor, Tensor, Tensor);

fn walk(detail: String) -> KernelError {
    KernelError::SliceWalk { detail }
}
