//! One pipeline stage: its parameters and gradients, and the interpreter of its lowered action
//! list. There is one interpreter for every schedule kind: it only knows how to run each [`Op`]
//! on a unit, never which schedule produced the list.

use crate::error::{fail, Context, Error, Result};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use seqpipe_comm::{TagKind, Transport};
use seqpipe_kernels::{AttentionOptions, Rope};
use seqpipe_schedule::{Action, Lowered, Op, Unit};

use super::inbox::{incoming_order, Inbox};
pub use super::input::IterationInput;
use serve::Service;

mod compute;
mod exchange;
mod host_link;
mod link;
mod recompute;
mod serve;
mod store;
mod tiers;
mod vocab;

use super::record::{computes, Recorder, StageReport};
use crate::model::ends::{Answers, HeadCtx};
use crate::model::layer::{LayerCtx, LayerWeights};
use crate::model::names::{EMBED, LM_HEAD};
use crate::model::params::{zeros_like, TensorMap};
use crate::model::ModelConfig;
use host_link::HostLink;
use link::Link;
pub use recompute::{Granularity, StageRecompute};
pub use store::Held;
use store::{ActivationStore, KvSizes, PendingWeight, Slot, UnitSaved};
use tiers::{join_all, join_offloads, settle_reload};
pub(crate) use vocab::vocab_sends;

/// Static description of a stage.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// This stage's rank.
    pub stage: usize,
    /// Pipeline stages `p`.
    pub stages: usize,
    /// Layer ranges of this stage's chunks (chunk `c` = virtual stage `c·p + stage`).
    pub chunk_layers: Vec<Range<usize>>,
    /// Total virtual stages `p·v`.
    pub virtual_stages: usize,
    /// Transport rank of this replica's stage 0: stage `s` is rank `rank_offset + s` (0 without
    /// data parallelism).
    pub rank_offset: usize,
}

/// What one iteration accumulates besides the stored tensors: the loss share and answer counts
/// of the head (the loss sink).
struct IterState {
    store: ActivationStore,
    /// The copier moving records between the device and host memory.
    link: HostLink,
    /// Offloads started and not joined yet (joined when the next compute ends).
    offloads: Vec<Unit>,
    /// Reloads started and not joined yet (joined when their unit's backward starts).
    reloads: HashSet<Unit>,
    /// Units the program recomputes: their forwards keep reduced records.
    recomputed: HashSet<Unit>,
    loss: f64,
    answers: Answers,
    /// Heavy exchanges begun with each (peer stage, backward) (their number tags the messages).
    exchanges: HashMap<(usize, bool), u32>,
    /// Attention score entries computed by the current action (see `record::Event`).
    attention: u64,
}

/// A stage's model piece and gradient accumulators.
pub struct StageWorker {
    /// Static description.
    pub spec: StageSpec,
    /// Model sizes.
    pub model: ModelConfig,
    /// Parameters held by this stage.
    pub params: TensorMap,
    /// Gradients accumulated over the current iteration.
    pub grads: TensorMap,
    weights: Vec<Vec<LayerWeights>>,
    rope: Rope,
    attention: AttentionOptions,
    head: HeadCtx,
    /// The device this stage computes on.
    pub device: Device,
    /// What a unit with a `RECOMPUTE` in the program drops after its forward.
    pub recompute: StageRecompute,
    /// Bytes per second of the host link (`None`: as fast as memory copies go).
    pub host_bandwidth: Option<f64>,
    /// Vocabulary parallelism: the rows of the embedding and LM head this stage holds (its
    /// program then has `EMBED`, `HEAD` and `EMBED_B` actions).
    pub vocab_rows: Option<Range<usize>>,
}

fn unit(a: &Action) -> Unit {
    Unit {
        mb: a.mb,
        slice: a.slice,
        chunk: a.chunk,
    }
}

impl StageWorker {
    /// A stage holding `params` (already initialised or loaded).
    pub fn new(
        spec: StageSpec,
        model: ModelConfig,
        params: TensorMap,
        device: Device,
    ) -> Result<Self> {
        let dtype = params
            .values()
            .next()
            .map(Tensor::dtype)
            .unwrap_or(DType::F32);
        let grad_dtype = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let rope = model.rope(dtype, &device)?;
        let attention = AttentionOptions::causal(model.head_dim());
        let head = HeadCtx {
            eps: model.norm_eps,
            vocab_block: 4096,
        };
        let grads = zeros_like(&params, grad_dtype)?;
        let mut worker = StageWorker {
            spec,
            model,
            params,
            grads,
            weights: Vec::new(),
            rope,
            attention,
            head,
            device,
            recompute: StageRecompute::Nothing,
            host_bandwidth: None,
            vocab_rows: None,
        };
        worker.refresh_weights()?;
        Ok(worker)
    }

    /// Rebuilds the per-layer weight views after the parameters changed.
    pub fn refresh_weights(&mut self) -> Result<()> {
        self.weights = self
            .spec
            .chunk_layers
            .iter()
            .map(|r| {
                r.clone()
                    .map(|l| LayerWeights::from_params(&self.params, &self.model, l))
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(())
    }

    /// Zeroes the gradient accumulators.
    pub fn zero_grads(&mut self) -> Result<()> {
        for g in self.grads.values_mut() {
            *g = g.zeros_like()?;
        }
        Ok(())
    }

    fn vstage(&self, a: &Action) -> usize {
        a.chunk.index() * self.spec.stages + self.spec.stage
    }

    /// With one stage, neighbouring virtual stages are this stage's neighbouring chunks and data
    /// passes between them in memory (lowering emits no send/receive): the unit of chunk ± 1.
    fn local_neighbour(&self, u: &Unit, step: i64) -> Option<Unit> {
        let chunk = i64::from(u.chunk.0) + step;
        (self.spec.stages == 1 && chunk >= 0).then_some(Unit {
            chunk: seqpipe_schedule::Chunk(chunk as u32),
            ..*u
        })
    }

    fn ctx(&self) -> LayerCtx<'_> {
        LayerCtx {
            cfg: &self.model,
            rope: &self.rope,
            attention: self.attention,
        }
    }

    fn lm_head(&self) -> Result<&Tensor> {
        let name = if self.model.tie_embeddings {
            EMBED
        } else {
            LM_HEAD
        };
        self.params.get(name).ok_or_else(|| {
            Error::Runtime(format!(
                "stage {} runs the head but holds no {name}",
                self.spec.stage
            ))
        })
    }

    /// Runs this stage's lowered program for one iteration; returns its loss share and records.
    pub fn run(
        &mut self,
        schedule: &Lowered,
        input: &IterationInput,
        transport: &mut dyn Transport,
        clock: Instant,
    ) -> Result<StageReport> {
        let program = &schedule.actions[self.spec.stage];
        let layers = self.spec.chunk_layers.first().map_or(0, |r| r.len());
        let mut inbox = Inbox::new(incoming_order(
            schedule,
            self.spec.stage,
            self.spec.rank_offset,
        )?);
        let device = self.device.clone();
        let dtype = self
            .params
            .values()
            .next()
            .map(Tensor::dtype)
            .unwrap_or(DType::F32);
        let mut link = Link {
            schedule,
            transport,
            inbox: &mut inbox,
            rank_offset: self.spec.rank_offset,
            device: &device,
            dtype,
            service: schedule
                .iter()
                .any(|a| a.pair.is_some())
                .then(|| Service::new(program, layers as u32, self.attention)),
        };
        let batch = input.tokens.first().map_or(Ok(0), |t| t.dim(0))?;
        let mut st = IterState {
            store: ActivationStore::new(KvSizes {
                row_elems: batch * self.model.kv_heads * self.model.head_dim(),
                elem_bytes: dtype.size_in_bytes(),
                grad_elem_bytes: if dtype == DType::F64 { 8 } else { 4 },
            }),
            link: HostLink::start(self.spec.stage, self.host_bandwidth)?,
            offloads: Vec::new(),
            reloads: HashSet::new(),
            recomputed: self.recomputed_units(program)?,
            loss: 0.0,
            answers: Answers::default(),
            exchanges: HashMap::new(),
            attention: 0,
        };
        let mut rec = Recorder::new(self.spec.stage);
        for (step, a) in program.iter().enumerate() {
            let text = schedule.text(a);
            let start = clock.elapsed().as_secs_f64();
            // Each offload's copy overlaps the next compute and is joined when it ends.
            let joining = match computes(a.op) {
                true => std::mem::take(&mut st.offloads),
                false => Vec::new(),
            };
            self.exec(&mut link, input, &mut st, a)
                .and_then(|()| join_offloads(&mut st, &joining))
                .with_context(|| format!("stage {} step {step} ({text})", self.spec.stage))?;
            let end = clock.elapsed().as_secs_f64();
            let attention = std::mem::take(&mut st.attention);
            rec.action(text, a.op, (start, end), st.store.held(), attention);
        }
        join_all(&mut st)?;
        link.finish_service().with_context(|| {
            format!("stage {} answering its exchange partners", self.spec.stage)
        })?;
        if !st.store.is_drained() {
            fail!(
                Runtime,
                "stage {}: the program ended with units still holding activations",
                self.spec.stage
            );
        }
        let mut report = rec.finish(st.loss, st.answers, st.link.wait_seconds);
        // An answer counts against its light mark, the step the exchange levelled.
        for (position, served) in link.service.iter().flat_map(Service::served) {
            report.events[position].attention += served;
        }
        Ok(report)
    }

    /// The units `program` recomputes; an error naming the first one the stage's setting gives
    /// nothing to drop.
    fn recomputed_units(&self, program: &[Action]) -> Result<HashSet<Unit>> {
        let units: HashSet<Unit> = program
            .iter()
            .filter(|a| a.op == Op::Recompute)
            .map(unit)
            .collect();
        if let Some(u) = units.iter().find(|u| !self.recompute.recomputes(u)) {
            fail!(
                Config,
                "stage {}'s program recomputes {} units, but the recomputation setting gives \
                 {u:?} no granularity (selective or full)",
                self.spec.stage,
                units.len()
            );
        }
        Ok(units)
    }

    /// Runs one action: an exhaustive match whose arms call the compute ops (`compute.rs`), the
    /// communication ops (`link.rs`), the moves between device and host through the host link
    /// (`tiers.rs`) and recomputation (`recompute.rs`).
    fn exec(
        &mut self,
        link: &mut Link,
        input: &IterationInput,
        st: &mut IterState,
        a: &Action,
    ) -> Result<()> {
        let u = unit(a);
        let k = self.vstage(a);
        if matches!(a.op, Op::Backward | Op::BackwardInput | Op::Recompute) {
            settle_reload(st, &u)?;
        }
        match a.op {
            Op::Forward => self.forward(link, input, st, a, k),
            Op::Backward | Op::BackwardInput => {
                self.backward_input(link, input, st, a, k, a.op == Op::Backward)
            }
            Op::BackwardWeight => {
                let pending = st.store.take_pending(&u).ok_or_else(|| {
                    Error::Runtime("weight backward before input backward".into())
                })?;
                self.backward_weight(pending)
            }
            Op::SendAct => {
                let t = take(
                    &mut st.store,
                    Slot::ActOut,
                    &u,
                    "nothing to send: forward has not run",
                )?;
                link.send(TagKind::Act, a, k + 1, &t)
            }
            Op::SendGrad => {
                let t = take(
                    &mut st.store,
                    Slot::GradOut,
                    &u,
                    "nothing to send: backward has not run",
                )?;
                link.send(TagKind::Grad, a, k - 1, &t)
            }
            Op::RecvAct => {
                let t = link.recv(TagKind::Act, a, k)?;
                st.store.put(Slot::ActIn, u, t);
                Ok(())
            }
            Op::RecvGrad => {
                let t = link.recv(TagKind::Grad, a, k)?;
                st.store.put(Slot::GradIn, u, t);
                Ok(())
            }
            Op::Offload => self.offload(st, u),
            Op::Reload => self.reload(st, u),
            Op::Recompute => self.recompute(st, a),
            Op::VocabEmbed => self.vocab_embed(link, input, st, a),
            Op::VocabHead => self.vocab_head(link, input, st, a),
            Op::VocabEmbedGrad => self.vocab_embed_grad(link, input, st, a),
        }
    }
}

/// Takes a unit's buffer from `slot`, or fails with `missing`.
fn take(store: &mut ActivationStore, slot: Slot, u: &Unit, missing: &str) -> Result<Tensor> {
    store
        .take(slot, u)
        .ok_or_else(|| Error::Runtime(missing.to_string()))
}
