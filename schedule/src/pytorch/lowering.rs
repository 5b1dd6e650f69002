//! PyTorch's lowering of a compute-only schedule, step for step as `torch.distributed.pipelining`
//! does it (`_merge_bw`, then `_add_send_recv`), so that a schedule lowered here equals the one
//! PyTorch runs (its test artifact `zb1p_2rank_2stagep_comms.csv` is checked against this).
//! seqpipe's own [`crate::insert_comm`] places receives differently; both are valid.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::pytorch::{self, lowering::{add_send_recv, merge_bw, Placement}};
//! // `_merge_bw`: an I followed by the same unit's W becomes one full backward.
//! let row = pytorch::read("1I0,1W0\n").unwrap();
//! assert_eq!(pytorch::write(&vec![merge_bw(&row[0])]), "1B0\n");
//! // `_add_send_recv`: each send right after its producer, its receive on the consumer's rank.
//! let compute = pytorch::read("0F0,0B0\n1F0,1B0\n").unwrap();
//! let lowered = add_send_recv(&compute, Placement { ranks: 2, stages: 2 }).unwrap();
//! let text: Vec<Vec<String>> =
//!     lowered.iter().map(|r| r.iter().map(|a| a.to_string()).collect()).collect();
//! assert_eq!(text[0], ["0F0", "0SEND_F0", "0RECV_B0", "0B0"]);
//! assert_eq!(text[1], ["1RECV_F0", "1F0", "1B0", "1SEND_B0"]);
//! ```

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::{refuse, Rows};
use crate::action::{Compact, Op};
use crate::error::Result;
use crate::ids::{MicroBatch, VirtualStage};

/// The action `(vstage, op, mb)`, unsliced.
pub(super) fn act(vstage: u32, op: Op, mb: MicroBatch) -> Compact {
    Compact {
        vstage: VirtualStage(vstage),
        op,
        mb,
        slice: None,
        pair: None,
    }
}

/// `_merge_bw`: idle steps dropped, and an input-gradient half followed at once by the weight
/// half of the same unit merged into one full backward.
pub fn merge_bw(row: &[Option<Compact>]) -> Vec<Option<Compact>> {
    let actions: Vec<Compact> = row.iter().flatten().copied().collect();
    let mut out = Vec::with_capacity(actions.len());
    let mut i = 0;
    while i < actions.len() {
        let a = actions[i];
        let merges = actions.get(i + 1).is_some_and(|next| {
            a.op == Op::BackwardInput
                && next.op == Op::BackwardWeight
                && (next.vstage, next.mb) == (a.vstage, a.mb)
        });
        out.push(Some(if merges {
            act(a.vstage.0, Op::Backward, a.mb)
        } else {
            a
        }));
        i += if merges { 2 } else { 1 };
    }
    out
}

/// Where virtual stages run, and how many there are (PyTorch's `stage_to_rank` and
/// `num_stages`, which is `p · v`).
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Ranks `p`: virtual stage `k` runs on rank `k mod p`.
    pub ranks: u32,
    /// Virtual stages `p · v`.
    pub stages: u32,
}

impl Placement {
    /// The rank of virtual stage `k`.
    pub fn rank(&self, k: u32) -> usize {
        (k % self.ranks.max(1)) as usize
    }

    /// The send this action needs and the receive that matches it, if its neighbour in that
    /// direction runs on another rank (`_has_comms`, `_get_comms`).
    fn comms(&self, a: &Compact) -> Option<(Compact, Compact)> {
        let k = a.vstage.0;
        match a.op {
            Op::Forward if k + 1 < self.stages && self.rank(k + 1) != self.rank(k) => {
                Some((act(k, Op::SendAct, a.mb), act(k + 1, Op::RecvAct, a.mb)))
            }
            Op::Backward | Op::BackwardInput if k > 0 && self.rank(k - 1) != self.rank(k) => {
                Some((act(k, Op::SendGrad, a.mb), act(k - 1, Op::RecvGrad, a.mb)))
            }
            _ => None,
        }
    }

    /// Whether a compute action's input is on its rank (`_ready_to_schedule`): what it received,
    /// or what its neighbour computed there.
    pub(super) fn inputs_ready(&self, a: &Compact, done: &HashSet<Compact>) -> bool {
        let k = a.vstage.0;
        match a.op {
            Op::Forward if k > 0 => {
                done.contains(&act(k, Op::RecvAct, a.mb))
                    || done.contains(&act(k - 1, Op::Forward, a.mb))
            }
            Op::Backward | Op::BackwardInput if k + 1 < self.stages => {
                [Op::BackwardInput, Op::Backward]
                    .iter()
                    .any(|&op| done.contains(&act(k + 1, op, a.mb)))
                    || done.contains(&act(k, Op::RecvGrad, a.mb))
            }
            _ => true,
        }
    }
}

/// `_add_send_recv`: the compute rows with each cross-rank send placed right after its producer
/// and its receive appended to the consumer's rank at the same pass. Ranks take turns one cell
/// at a time (an idle cell takes its rank's turn, so idle steps shape where receives land; PyTorch
/// lowers a file after [`merge_bw`], which has none); a pass in which no rank can move means the
/// order deadlocks.
pub fn add_send_recv(compute: &Rows, place: Placement) -> Result<Vec<Vec<Compact>>> {
    let mut left: BTreeMap<usize, VecDeque<Option<Compact>>> = compute
        .iter()
        .enumerate()
        .filter(|(_, row)| !row.is_empty())
        .map(|(r, row)| (r, row.iter().copied().collect()))
        .collect();
    let mut out = vec![Vec::new(); compute.len()];
    let mut done = vec![HashSet::new(); compute.len()];
    while !left.is_empty() {
        let mut moved = false;
        for (&r, queue) in left.iter_mut() {
            let Some(a) = queue[0] else {
                queue.pop_front();
                moved = true;
                continue;
            };
            if !place.inputs_ready(&a, &done[r]) {
                continue;
            }
            out[r].push(a);
            done[r].insert(a);
            if let Some((send, recv)) = place.comms(&a) {
                out[r].push(send);
                done[r].insert(send);
                let peer = place.rank(recv.vstage.0);
                let slot = out
                    .get_mut(peer)
                    .ok_or_else(|| refuse(format!("{a} sends to rank {peer}, which has no row")))?;
                slot.push(recv);
                done[peer].insert(recv);
            }
            queue.pop_front();
            moved = true;
        }
        left.retain(|_, q| !q.is_empty());
        if !moved {
            let heads: Vec<String> = left
                .iter()
                .filter_map(|(r, q)| q[0].map(|a| format!("rank {r}: {a}")))
                .collect();
            return Err(refuse(format!(
                "no rank can move (waiting: {}): the order deadlocks, or num_stages is not p·v = {}",
                heads.join(", "),
                place.stages
            )));
        }
    }
    Ok(out)
}
