//! The ledger events of a stage's program (saved records, moves, recomputation, transient buffers) and readings of the ledger (after each action, inside a backward).

use seqpipe_memory::{
    events_from_lives, unit_key, MemEvent, MemOp, StageMemory, UnitKey, UnitLife,
};
use seqpipe_schedule::{Action, Op};

use super::setup::Setup;
use crate::error::{Error, Result};
use crate::runtime::record::computes;

/// The largest device bytes during each action of a stage's program: what it holds after the
/// action, plus the records of offloads the action overlaps (joined, and freed, only at its
/// end), plus, inside a backward (see [`super::StagePeaks::working`]), when the input halves of
/// every layer have run, the unit's records not yet dropped, (full backward `B`) the
/// weight-gradient inputs its weight half is about to use, and one layer's attention-backward
/// tiles.
pub(super) fn held_in_actions(
    setup: &Setup,
    stage: usize,
    program: &[Action],
    total: &[f64],
) -> Result<Vec<f64>> {
    let overlapped = overlapped_offloads(setup, stage, program)?;
    let mut held = Vec::with_capacity(program.len());
    for ((action, &after), moving) in program.iter().zip(total).zip(overlapped) {
        let unit = unit_key(action);
        let inside = match action.op {
            Op::Backward => setup.weight_inputs(stage, &unit)?,
            Op::BackwardInput => 0.0,
            _ => {
                held.push(after + moving);
                continue;
            }
        };
        let records = setup.records_beyond_weight_inputs(&unit)?;
        let tiles = setup.attention_backward_tiles(&unit)?;
        held.push(after + moving + records + inside + tiles);
    }
    Ok(held)
}

/// Per action, the bytes of the offloads whose copy it overlaps: an offload joined at the end of
/// a compute leaves the device only then, so the compute runs with it still there.
fn overlapped_offloads(setup: &Setup, stage: usize, program: &[Action]) -> Result<Vec<f64>> {
    let mut overlapped = vec![0.0; program.len()];
    for (index, action) in program.iter().enumerate() {
        if action.op != Op::Offload {
            continue;
        }
        let joined = offload_joined_at(program, index);
        if computes(program[joined].op) {
            overlapped[joined] += moved(setup, stage, &unit_key(action))?;
        }
    }
    Ok(overlapped)
}

/// Bytes an `OFFLOAD` or `RELOAD` of `u` moves.
fn moved(setup: &Setup, stage: usize, u: &UnitKey) -> Result<f64> {
    let (records, extra) = setup.moved(stage, u, setup.recomputes(stage, u))?;
    Ok(records + extra)
}

/// The host tier's most bytes at any moment of a stage's program, whatever the link's speed: a
/// unit's copy may land on the host as soon as its `OFFLOAD` is issued, and the host copy lives
/// until its reload is joined, when its backward or recomputation starts.
pub(super) fn host_bound(setup: &Setup, stage: usize, program: &[Action]) -> Result<f64> {
    let mut on_host = vec![0.0; program.len()];
    for (index, action) in program.iter().enumerate() {
        if action.op != Op::Offload {
            continue;
        }
        let u = action.unit();
        let joined = program
            .iter()
            .enumerate()
            .skip(index + 1)
            .find(|(_, a)| a.unit() == u && (a.op.makes_input_grad() || a.op == Op::Recompute))
            .map_or(program.len() - 1, |(j, _)| j);
        let bytes = moved(setup, stage, &unit_key(action))?;
        on_host[index..=joined].iter_mut().for_each(|b| *b += bytes);
    }
    Ok(on_host.into_iter().fold(0.0, f64::max))
}

/// The ledger's (device, host) bytes after each of `actions` actions: its curve is a step
/// function with a point at every action index where something changed.
pub(super) fn after_each_action(stage: &StageMemory, actions: usize) -> Vec<(f64, f64)> {
    let mut points = stage.curve.iter().peekable();
    let mut now = (stage.model_states, 0.0);
    (0..actions)
        .map(|index| {
            while let Some(p) = points.next_if(|p| p.time <= index as f64) {
                now = (p.device, p.host);
            }
            now
        })
        .collect()
}

fn event(time: f64, stage: usize, op: MemOp, unit: String, bytes: f64) -> MemEvent {
    MemEvent {
        time,
        stage,
        op,
        unit,
        bytes,
    }
}

/// The memory crate's units (activations and dK/dV accumulators) plus the runtime's statistics
/// and head record, each held from the forward to the end of the first backward piece.
pub(super) fn saved_events(setup: &Setup, lives: &[UnitLife]) -> Result<Vec<MemEvent>> {
    // The runtime drops a unit's record and pops its K/V at `I`; what `W` needs is the transient
    // weight-gradient-inputs term. For a full backward the two ends are the same action.
    let dropped_at_input_grad: Vec<UnitLife> = lives
        .iter()
        .map(|l| UnitLife {
            release: l.backward.1,
            ..*l
        })
        .collect();
    let mut events: Vec<MemEvent> = events_from_lives(&dropped_at_input_grad, &setup.sizer)?
        .into_iter()
        // The fused cross-entropy holds no logits; its record is the head term below.
        .filter(|e| !e.unit.starts_with("logits "))
        .collect();
    for life in lives {
        let bytes = setup.statistics_and_head(life.stage, &life.unit)?;
        let name = statistics_and_head(&life.unit);
        events.push(event(
            life.forward.0,
            life.stage,
            MemOp::Allocate,
            name.clone(),
            bytes,
        ));
        events.push(event(life.backward.1, life.stage, MemOp::Free, name, 0.0));
    }
    Ok(events)
}

/// A recomputed unit holds, from its forward to its `RECOMPUTE`, its record less what the
/// stage's granularity drops ([`Setup::dropped_by_recompute`]); from its `RECOMPUTE` to its
/// backward, the whole record again (the dropped part is its own "recomputed" term).
pub(super) fn recompute_events(
    setup: &Setup,
    lives: &[UnitLife],
    events: &mut Vec<MemEvent>,
) -> Result<()> {
    for (stage, program) in setup.input.schedule.actions.iter().enumerate() {
        for (index, action) in program.iter().enumerate() {
            if action.op != Op::Recompute {
                continue;
            }
            let u = unit_key(action);
            let life = lives
                .iter()
                .find(|l| l.stage == stage && l.unit == u)
                .ok_or_else(|| Error::Runtime(format!("RECOMPUTE of {u} without a forward")))?;
            let dropped = setup.dropped_by_recompute(stage, &u)?;
            let forward = |e: &MemEvent| {
                e.stage == stage && e.op == MemOp::Allocate && e.time == life.forward.0
            };
            for e in events.iter_mut().filter(|e| forward(e)) {
                if e.unit == format!("act {u}") {
                    e.bytes -= dropped.records + dropped.kv;
                } else if e.unit == statistics_and_head(&u) {
                    e.bytes -= dropped.stats;
                }
            }
            let name = format!("recomputed {u}");
            let bytes = dropped.total();
            events.push(event(
                index as f64,
                stage,
                MemOp::Allocate,
                name.clone(),
                bytes,
            ));
            events.push(event(life.backward.1, stage, MemOp::Free, name, 0.0));
        }
    }
    Ok(())
}

fn statistics_and_head(u: &UnitKey) -> String {
    format!("statistics and head record {u}")
}

/// `OFFLOAD` and `RELOAD` move a unit's forward records between device and host at their
/// action's index: the memory crate's `act` unit less its K and V (which stay in the device's
/// cache for later slices), and the statistics and head record.
pub(super) fn memory_op_events(setup: &Setup) -> Result<Vec<MemEvent>> {
    let mut events = Vec::new();
    for (stage, program) in setup.input.schedule.actions.iter().enumerate() {
        for (index, action) in program.iter().enumerate() {
            let op = match action.op {
                Op::Offload => MemOp::Offload,
                Op::Reload => MemOp::Reload,
                _ => continue,
            };
            let u = unit_key(action);
            let (records, extra) = setup.moved(stage, &u, setup.recomputes(stage, &u))?;
            let time = match op {
                MemOp::Offload => offload_joined_at(program, index),
                _ => index,
            } as f64;
            events.push(event(time, stage, op, format!("act {u}"), records));
            events.push(event(time, stage, op, statistics_and_head(&u), extra));
        }
    }
    Ok(events)
}

/// Where the executor joins the offload at `index` and frees its device copy: at the end of
/// the first compute after it, or at the first `RELOAD` after it if that comes first
/// (`worker::tiers`).
fn offload_joined_at(program: &[Action], index: usize) -> usize {
    program
        .iter()
        .enumerate()
        .skip(index + 1)
        .find(|(_, a)| computes(a.op) || a.op == Op::Reload)
        .map_or(program.len() - 1, |(j, _)| j)
}

/// Names of the transient buffers of a unit.
fn activation_out(u: &UnitKey) -> String {
    format!("activation out {u}")
}
fn gradient_out(u: &UnitKey) -> String {
    format!("gradient out {u}")
}

/// The buffer a unit's forward takes its input from: what `RECV_F` received, or with one stage
/// the previous chunk's output, passed in memory.
fn forward_input(setup: &Setup, u: &UnitKey) -> String {
    match (setup.stages, u.chunk) {
        (1, c) if c > 0 => activation_out(&UnitKey { chunk: c - 1, ..*u }),
        _ => format!("activation in {u}"),
    }
}

/// The buffer a unit's backward takes its output gradient from.
fn backward_input(setup: &Setup, u: &UnitKey) -> String {
    match setup.stages {
        1 => gradient_out(&UnitKey {
            chunk: u.chunk + 1,
            ..*u
        }),
        _ => format!("gradient in {u}"),
    }
}

/// Buffers between a compute and its consumer, and the weight-gradient inputs from `I` to `W`,
/// at each action's index in its stage's program.
pub(super) fn transient_events(setup: &Setup) -> Result<Vec<MemEvent>> {
    let mut events = Vec::new();
    for (stage, program) in setup.input.schedule.actions.iter().enumerate() {
        for (index, action) in program.iter().enumerate() {
            transient_at(setup, stage, index as f64, action, &mut events)?;
        }
    }
    Ok(events)
}

fn transient_at(
    setup: &Setup,
    stage: usize,
    time: f64,
    action: &Action,
    events: &mut Vec<MemEvent>,
) -> Result<()> {
    let u = unit_key(action);
    let k = setup.vstage(stage, &u);
    // Under vocabulary parallelism both ends pass buffers to their `EMBED`/`HEAD` actions.
    let vp = setup.vocab_parallel;
    let (first, last) = (k == 0 && !vp, k == setup.last_vstage && !vp);
    let tokens = setup.tokens(&u)?;
    let pt = setup.per_token;
    let row = pt.row * tokens;
    let mut alloc = |name: String, bytes: f64| {
        events.push(event(time, stage, MemOp::Allocate, name, bytes));
    };
    let mut frees = Vec::new();
    match action.op {
        Op::Forward => {
            if !first {
                frees.push(forward_input(setup, &u));
            }
            if !last {
                alloc(activation_out(&u), row);
            }
        }
        Op::Backward | Op::BackwardInput => {
            if vp && k == setup.last_vstage {
                // The `HEAD` action's gradient, whatever the stage count.
                frees.push(format!("gradient in {u}"));
            } else if !last {
                frees.push(backward_input(setup, &u));
            }
            if !first {
                alloc(gradient_out(&u), row);
            }
            if action.op == Op::BackwardInput {
                alloc(
                    format!("weight-gradient inputs {u}"),
                    setup.weight_inputs(stage, &u)?,
                );
            }
        }
        Op::BackwardWeight => frees.push(format!("weight-gradient inputs {u}")),
        Op::SendAct => frees.push(activation_out(&u)),
        Op::RecvAct => alloc(format!("activation in {u}"), row),
        Op::RecvGrad => alloc(format!("gradient in {u}"), row),
        Op::SendGrad => frees.push(gradient_out(&u)),
        // Moves and rebuilds of saved records: `memory_op_events`, `recompute_events`.
        Op::Offload | Op::Reload | Op::Recompute => {}
        // Stage 0 sums the shares into virtual stage 0's input; the others send theirs.
        Op::VocabEmbed if stage == 0 => alloc(format!("activation in {u}"), row),
        Op::VocabEmbedGrad if stage == 0 => frees.push(gradient_out(&u)),
        // The last stage's head takes the last virtual stage's output and leaves its gradient.
        Op::VocabHead if stage + 1 == setup.stages => {
            let at_last = UnitKey {
                chunk: setup.input.schedule.config.chunks - 1,
                ..u
            };
            frees.push(activation_out(&at_last));
            alloc(format!("gradient in {at_last}"), row);
        }
        Op::VocabEmbed | Op::VocabEmbedGrad | Op::VocabHead => {}
    }
    events.extend(
        frees
            .into_iter()
            .map(|name| event(time, stage, MemOp::Free, name, 0.0)),
    );
    Ok(())
}
