//! Checkpoints of a run, whatever carries its messages (threads or processes), in one format, so
//! any run resumes from any other's.
//!
//! Saving: the stages of replica 0 send their parameters and AdamW moments to rank 0 (replicas
//! hold identical copies, so one is enough), rank 0 writes the checkpoint atomically, and every
//! rank then meets at a barrier. Nobody runs ahead of a checkpoint that is not yet complete, and a
//! rank killed right after the barrier leaves a complete checkpoint behind. Loading: every rank
//! reads the checkpoint directory (a path all ranks see: one machine, or a shared file system) and
//! keeps its own stage's tensors.

use crate::error::{fail, Context, Error, Result};
use candle_core::{Device, Tensor};
use seqpipe_comm::{Tag, Transport};

use super::rank::{holding, Rank};
use super::tensor_msg::{from_message, to_message};
use super::Partition;
use crate::checkpoint::resume::{self, Checkpoint, TrainerState};
use crate::checkpoint::store::CheckpointDir;
use crate::config::TrainConfig;
use crate::model::params::{param_specs, TensorMap};
use crate::optim::AdamW;

/// User tag of the checkpoint gather; the per-peer FIFO keeps its tensors in order.
const GATHER_TAG: u64 = 0xC4EC_0001;

fn moments<'o>(name: &str, optimizer: &'o AdamW) -> Result<[&'o Tensor; 2]> {
    let missing =
        |what: &str| Error::Checkpoint(format!("optimizer has no {what} moment for {name}"));
    Ok([
        optimizer.m.get(name).ok_or_else(|| missing("first"))?,
        optimizer.v.get(name).ok_or_else(|| missing("second"))?,
    ])
}

/// Writes the checkpoint of a run that has finished `step` (every rank calls it).
pub fn save(
    cfg: &TrainConfig,
    step: u64,
    data_position: u128,
    partition: &Partition,
    rank: &mut Rank,
    transport: &mut dyn Transport,
) -> Result<()> {
    let Some(dir) = &cfg.output.checkpoint_dir else {
        return Ok(());
    };
    let tag = Tag::user(GATHER_TAG)?;
    let at = rank.at;
    let weights = rank.trained_weights();
    if at.rank == 0 {
        let (params, optimizer) =
            gather(cfg, partition, &weights, &rank.optimizer, transport, tag)?;
        let state = TrainerState {
            version: resume::VERSION,
            next_step: step + 1,
            optimizer_steps: rank.optimizer.steps,
            data_position: data_position.to_string(),
            config: cfg.clone(),
        };
        let dir = CheckpointDir::open_for_writing(dir)?;
        resume::save(&dir, &state, &params, &optimizer)
            .with_context(|| format!("checkpoint after step {step}"))?;
    } else if at.replica == 0 {
        for (name, p) in &weights {
            let [m, v] = moments(name, &rank.optimizer)?;
            for t in [p, m, v] {
                transport.send(0, tag, to_message(t)?)?;
            }
        }
    }
    transport
        .barrier(rank.world())
        .context("waiting for rank 0 to finish the checkpoint")?;
    Ok(())
}

/// Rank 0's side: its own tensors plus those of stages 1.. of replica 0, as the whole-model
/// parameter map and the `m.`/`v.` moment map a checkpoint holds.
fn gather(
    cfg: &TrainConfig,
    partition: &Partition,
    weights: &TensorMap,
    optimizer_0: &AdamW,
    transport: &mut dyn Transport,
    tag: Tag,
) -> Result<(TensorMap, TensorMap)> {
    let (p, v) = (cfg.parallel.stages as usize, cfg.parallel.chunks as usize);
    let vocab = cfg.parallel.vocab_parallel.then_some(cfg.model.vocab);
    let mut params = TensorMap::new();
    let mut optimizer = TensorMap::new();
    // A vocabulary shard's rows follow the earlier stages' rows of the same table; the second
    // copy of a tied embedding replaces the first (they are equal).
    let mut keep = |name: &str, [t, m, s]: [Tensor; 3], shard: bool| -> Result<()> {
        let join = |map: &mut TensorMap, key: String, t: Tensor| -> Result<()> {
            let whole = match map.remove(&key) {
                Some(rows_before) if shard => Tensor::cat(&[rows_before, t], 0)?,
                _ => t,
            };
            map.insert(key, whole);
            Ok(())
        };
        join(&mut params, name.to_string(), t)?;
        join(&mut optimizer, format!("m.{name}"), m)?;
        join(&mut optimizer, format!("v.{name}"), s)
    };
    for (name, t) in weights {
        let [m, s] = moments(name, optimizer_0)?;
        keep(name, [t.clone(), m.clone(), s.clone()], false)?;
    }
    for stage in 1..p {
        let mut specs = param_specs(&cfg.model, &holding(partition, (stage, p), v, vocab));
        // Senders walk their (sorted) parameter map: receive in the same order.
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        for spec in specs {
            let mut three = Vec::with_capacity(3);
            for _ in 0..3 {
                let t = from_message(transport.recv(stage, tag)?, &Device::Cpu)?;
                if t.dims() != spec.shape {
                    fail!(
                        Checkpoint,
                        "checkpoint gather: stage {stage} sent {:?} for {} (expected {:?})",
                        t.dims(),
                        spec.name,
                        spec.shape
                    );
                }
                three.push(t);
            }
            let three: [Tensor; 3] = three
                .try_into()
                .map_err(|_| Error::Checkpoint("three tensors per parameter".into()))?;
            keep(&spec.name, three, spec.rows.is_some())?;
        }
    }
    Ok((params, optimizer))
}

/// Puts a loaded checkpoint's tensors for this rank's stage into the rank.
pub fn restore(ck: &Checkpoint, rank: &mut Rank) -> Result<()> {
    rank.restore(&ck.params, ck.state.optimizer_steps, &ck.optimizer)
}
