//! PyTorch's lock-step simulation of a lowered schedule (`_simulate_comms_compute`): every action
//! takes one step; at each step each rank, in rank order, runs its next action if it is ready
//! and idles otherwise, and a second pass lets an idle rank run an action that became ready in the
//! same step. A receive is ready once its send has run. PyTorch's tests assert the number of
//! steps this takes (e.g. 113 for `zb1p_2rank_2stagep`).
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::pytorch::{self, lockstep::lockstep_steps, lowering::add_send_recv};
//! use seqpipe_schedule::pytorch::lowering::Placement;
//! // PyTorch's test_send_recv "simple_2_rank_2_stage", idle steps and all.
//! let compute = pytorch::read("0F0,0F1,,0B0,,0B1\n,1F0,1B0,1F1,1B1,\n").unwrap();
//! let place = Placement { ranks: 2, stages: 2 };
//! let lowered = add_send_recv(&compute, place).unwrap();
//! assert_eq!(lockstep_steps(&lowered, place).unwrap(), 11); // as PyTorch's test asserts
//! ```

use std::collections::{HashSet, VecDeque};

use super::lowering::{act, Placement};
use super::refuse;
use crate::action::{Compact, Op};
use crate::error::Result;

/// Whether `a` can run, given what every rank has run.
fn ready(a: &Compact, place: Placement, done: &[HashSet<Compact>]) -> Result<bool> {
    let k = a.vstage.0;
    let own = &done[place.rank(k)];
    let ran_on = |stage: u32, op: Op| {
        done.get(place.rank(stage))
            .is_some_and(|d| d.contains(&act(stage, op, a.mb)))
    };
    Ok(match a.op {
        Op::Forward | Op::Backward | Op::BackwardInput => place.inputs_ready(a, own),
        Op::BackwardWeight => true,
        Op::SendAct => own.contains(&act(k, Op::Forward, a.mb)),
        Op::SendGrad => {
            own.contains(&act(k, Op::BackwardInput, a.mb))
                || own.contains(&act(k, Op::Backward, a.mb))
        }
        Op::RecvAct => k > 0 && ran_on(k - 1, Op::SendAct),
        Op::RecvGrad => ran_on(k + 1, Op::SendGrad),
        Op::Offload | Op::Reload | Op::Recompute => {
            return Err(refuse(format!(
                "{a}: PyTorch's simulation has no memory ops"
            )))
        }
        Op::VocabEmbed | Op::VocabHead | Op::VocabEmbedGrad => {
            return Err(refuse(format!(
                "{a}: PyTorch's simulation has no vocabulary-parallel ops"
            )))
        }
    })
}

/// Runs the head of `queue` on `rank` if it is ready; whether it ran.
fn try_run(
    rank: usize,
    queue: &mut VecDeque<Compact>,
    place: Placement,
    done: &mut [HashSet<Compact>],
) -> Result<Option<Compact>> {
    let Some(&a) = queue.front() else {
        return Ok(None);
    };
    if !ready(&a, place, done)? {
        return Ok(None);
    }
    queue.pop_front();
    done[rank].insert(a);
    Ok(Some(a))
}

/// The steps of every rank (`None`: idle) when `lowered` runs in lock step; the longest row's
/// length is the step count PyTorch reports.
pub fn simulate_lockstep(
    lowered: &[Vec<Compact>],
    place: Placement,
) -> Result<Vec<Vec<Option<Compact>>>> {
    let mut queues: Vec<VecDeque<Compact>> = lowered
        .iter()
        .map(|r| r.iter().copied().collect())
        .collect();
    let mut done = vec![HashSet::new(); lowered.len()];
    let mut steps: Vec<Vec<Option<Compact>>> = vec![Vec::new(); lowered.len()];
    while queues.iter().any(|q| !q.is_empty()) {
        let mut moved = false;
        for r in 0..queues.len() {
            if queues[r].is_empty() {
                continue;
            }
            let ran = try_run(r, &mut queues[r], place, &mut done)?;
            moved |= ran.is_some();
            steps[r].push(ran);
        }
        // A rank left idle may still take an action another rank made ready in this step.
        for r in 0..queues.len() {
            if steps[r].last() == Some(&None) {
                let ran = try_run(r, &mut queues[r], place, &mut done)?;
                *steps[r].last_mut().expect("a step was pushed") = ran;
            }
        }
        if !moved {
            let heads: Vec<String> = queues
                .iter()
                .enumerate()
                .filter_map(|(r, q)| q.front().map(|a| format!("rank {r}: {a}")))
                .collect();
            return Err(refuse(format!(
                "the lock-step simulation cannot progress (waiting: {})",
                heads.join(", ")
            )));
        }
    }
    Ok(steps)
}

/// The number of steps [`simulate_lockstep`] takes: its longest rank.
pub fn lockstep_steps(lowered: &[Vec<Compact>], place: Placement) -> Result<usize> {
    Ok(simulate_lockstep(lowered, place)?
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0))
}
