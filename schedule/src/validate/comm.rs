//! The send/receive rules of a lowered schedule: receives before the compute they feed, sends
//! after the compute that produced their data, and a one-to-one pairing across stages.

use std::collections::HashMap;

use crate::action::{Action, Op};
use crate::schedule::{Schedule, UnitIndex};
use crate::validate::{push, Rule, Violation};

/// Per-unit progress on one stage, for the comm rules.
#[derive(Clone, Copy, Default)]
struct Seen {
    forward: bool,
    grad: bool,
    recv_act: bool,
    recv_grad: bool,
}

/// Which message a send or receive carries: (is gradient, destination virtual stage, mb, slice).
type Key = (bool, u32, u32, u32);

/// Where the sends and the receives of one message sit: `(stage, position)` each.
#[derive(Default)]
struct Ends {
    sends: Vec<(usize, usize)>,
    recvs: Vec<(usize, usize)>,
}

pub(crate) fn comm_violations(s: &Schedule, out: &mut Vec<Violation>) {
    let (p, last) = (s.config.stages, s.config.virtual_stages() - 1);
    let index = UnitIndex::new(&s.config);
    let mut ends: HashMap<Key, Ends> = HashMap::new();
    for (r, list) in s.actions.iter().enumerate() {
        let mut seen = vec![Seen::default(); index.len()];
        for (i, a) in list.iter().enumerate() {
            let k = a.virtual_stage(p).0;
            let me = seen[index.of(&a.unit())];
            let outside = match a.op {
                Op::RecvAct | Op::SendGrad => k == 0,
                Op::SendAct | Op::RecvGrad => k == last,
                _ => false,
            };
            let rule = if a.op.is_comm() && p == 1 {
                Some(Rule::UnexpectedComm)
            } else if outside {
                Some(Rule::CommOutsidePipeline)
            } else {
                order_rule(a, &me, k, last, p)
            };
            if let Some(rule) = rule {
                push(out, s, a, Some(i), rule);
            } else if let Some(key) = key_of(a, k) {
                let e = ends.entry(key).or_default();
                if a.op.is_send() {
                    &mut e.sends
                } else {
                    &mut e.recvs
                }
                .push((r, i));
            }
            let me = &mut seen[index.of(&a.unit())];
            match a.op {
                Op::Forward => me.forward = true,
                Op::Backward | Op::BackwardInput => me.grad = true,
                Op::RecvAct => me.recv_act = true,
                Op::RecvGrad => me.recv_grad = true,
                _ => {}
            }
        }
    }
    pairing_violations(s, ends, out);
}

/// Order rules of one action against what its stage has already done.
fn order_rule(a: &Action, me: &Seen, k: u32, last: u32, p: u32) -> Option<Rule> {
    let cross = p > 1;
    match a.op {
        Op::Forward if cross && k > 0 && !me.recv_act => Some(Rule::ComputeBeforeRecv),
        Op::Backward | Op::BackwardInput if cross && k < last && !me.recv_grad => {
            Some(Rule::ComputeBeforeRecv)
        }
        Op::RecvAct if me.recv_act => Some(Rule::DuplicateComm),
        Op::RecvGrad if me.recv_grad => Some(Rule::DuplicateComm),
        Op::SendAct if !me.forward => Some(Rule::SendBeforeCompute),
        Op::SendGrad if !me.grad => Some(Rule::SendBeforeCompute),
        _ => None,
    }
}

fn key_of(a: &Action, k: u32) -> Option<Key> {
    let (grad, dest) = match a.op {
        Op::SendAct => (false, k + 1),
        Op::RecvAct => (false, k),
        Op::SendGrad => (true, k - 1),
        Op::RecvGrad => (true, k),
        _ => return None,
    };
    Some((grad, dest, a.mb.0, a.slice.0))
}

fn pairing_violations(s: &Schedule, ends: HashMap<Key, Ends>, out: &mut Vec<Violation>) {
    for Ends { sends, recvs } in ends.values() {
        for &(r, i) in sends.iter().skip(1).chain(recvs.iter().skip(1)) {
            push(out, s, &s.actions[r][i], Some(i), Rule::DuplicateComm);
        }
        if sends.is_empty() || recvs.is_empty() {
            for &(r, i) in sends.iter().chain(recvs.iter()).take(1) {
                push(out, s, &s.actions[r][i], Some(i), Rule::Unmatched);
            }
        }
    }
}
