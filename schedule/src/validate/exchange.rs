//! The rules of attention exchanges ([`crate::Pair`]): only forwards and input-gradient
//! backwards exchange, with another stage of the pipeline, the heavy side in its own compute's
//! direction and handing part of a prefix, so never from a sequence's first slice (the token
//! count against the prefix's length is the executor's business, which knows the tokens); and the `n`-th exchange of
//! stage `r` with `q` meets the `n`-th of `q` with `r`: the same direction, exactly one of them
//! heavy. Whether they meet
//! in an order that finishes is the dry run's business.

use std::collections::HashMap;

use crate::action::{Action, Op};
use crate::schedule::Schedule;
use crate::validate::{push, Rule, Violation};

/// The exchanges of stage `r` with each peer, in program order: (position, action).
type Sides = HashMap<(usize, usize), Vec<(usize, Action)>>;

pub(crate) fn exchange_violations(s: &Schedule, out: &mut Vec<Violation>) {
    let p = s.actions.len();
    let mut sides: Sides = HashMap::new();
    for (r, list) in s.actions.iter().enumerate() {
        for (i, a) in list.iter().enumerate() {
            let Some(pair) = a.pair else { continue };
            let peer = pair.peer.index();
            let exchanging = a.op == Op::Forward || a.op.makes_input_grad();
            // A heavy side exchanges its own compute's direction.
            let direction = pair.head == 0 || pair.backward == (a.op != Op::Forward);
            if !exchanging
                || !direction
                || peer == r
                || peer >= p
                || (pair.head > 0 && a.slice.0 == 0)
            {
                push(out, s, a, Some(i), Rule::ExchangeOutOfPlace);
                continue;
            }
            sides.entry((r, peer)).or_default().push((i, *a));
        }
    }
    for (&(r, q), mine) in &sides {
        let theirs = sides.get(&(q, r)).map_or(&[][..], Vec::as_slice);
        for (n, &(i, a)) in mine.iter().enumerate() {
            let matched = theirs.get(n).is_some_and(|(_, b)| meets(&a, b));
            if !matched {
                push(out, s, &a, Some(i), Rule::UnmatchedExchange);
            }
        }
    }
}

/// Two exchanges meet when they exchange the same direction and exactly one hands tokens.
fn meets(a: &Action, b: &Action) -> bool {
    let heavy = |x: &Action| x.pair.is_some_and(|p| p.head > 0);
    let backward = |x: &Action| x.pair.is_some_and(|p| p.backward);
    backward(a) == backward(b) && heavy(a) != heavy(b)
}
