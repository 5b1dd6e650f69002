//! The rules of attention exchanges ([`crate::Pair`]): only forwards and input-gradient
//! backwards exchange, with another stage of the pipeline, the heavy side in its own compute's
//! direction and handing part of a prefix, so never from a sequence's first slice (the token
//! count against the prefix's length is the executor's business, which knows the tokens); and
//! the `n`-th heavy mark of stage `r` towards `q` in one direction (forward or backward) meets
//! the `n`-th light mark of `q` from `r` in that direction. Partners need not run at the same
//! time (the light side answers whenever a request arrives), so an exchange adds no wait the
//! dry run could find.

use std::collections::HashMap;

use crate::action::{Action, Op};
use crate::schedule::Schedule;
use crate::validate::{push, Rule, Violation};

/// The marks of stage `r` towards `q`, heavy or not, backward or not, in program order:
/// (position, action).
type Sides = HashMap<(usize, usize, bool, bool), Vec<(usize, Action)>>;

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
            let key = (r, peer, pair.head > 0, pair.backward);
            sides.entry(key).or_default().push((i, *a));
        }
    }
    for (&(r, q, heavy, backward), mine) in &sides {
        let theirs = sides.get(&(q, r, !heavy, backward)).map_or(0, Vec::len);
        for &(i, a) in mine.iter().skip(theirs) {
            push(out, s, &a, Some(i), Rule::UnmatchedExchange);
        }
    }
}
