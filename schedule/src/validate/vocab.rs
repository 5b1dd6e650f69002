//! The rules of vocabulary-parallel ops: once any stage runs one, every stage runs each of
//! `EMBED`, `HEAD` and `EMBED_B` exactly once per (micro-batch, slice), on chunk 0, and the owner
//! stages run theirs where they can use them: stage 0's `EMBED` before virtual stage 0's forward
//! and its `EMBED_B` after that unit's input-gradient backward; the last stage's `HEAD` between
//! the last virtual stage's forward and backward. Whether the stages meet in an order that
//! finishes is the dry run's business.

use std::collections::HashMap;

use crate::action::{Action, Op, Unit};
use crate::ids::Stage;
use crate::schedule::Schedule;
use crate::validate::{push, Rule, Violation};

/// The vocabulary ops, in the order a unit meets them.
const VOCAB_OPS: [Op; 3] = [Op::VocabEmbed, Op::VocabHead, Op::VocabEmbedGrad];

pub(crate) fn vocab_violations(s: &Schedule, counts: &[u32], out: &mut Vec<Violation>) {
    if !s.actions.iter().flatten().any(|a| a.op.is_vocab()) {
        return;
    }
    for r in 0..s.actions.len() {
        stage_vocab_violations(s, counts, r, out);
    }
}

fn stage_vocab_violations(s: &Schedule, counts: &[u32], r: usize, out: &mut Vec<Violation>) {
    let (p, last) = (s.config.stages, s.config.virtual_stages() - 1);
    let mut at: HashMap<(Op, u32, u32), usize> = HashMap::new();
    let list = &s.actions[r];
    for (i, a) in list.iter().enumerate().filter(|(_, a)| a.op.is_vocab()) {
        let key = (a.op, a.mb.0, a.slice.0);
        if a.chunk.0 != 0 || at.insert(key, i).is_some() {
            push(out, s, a, Some(i), Rule::DuplicateVocabOp);
        }
    }
    // Where the owner's own compute of each unit sits.
    let position = |op: fn(Op) -> bool, vstage: u32, mb: u32, slice: u32| {
        list.iter().position(|a| {
            op(a.op) && a.virtual_stage(p).0 == vstage && (a.mb.0, a.slice.0) == (mb, slice)
        })
    };
    let forward = |op: Op| op == Op::Forward;
    for (mb, &n) in counts.iter().enumerate() {
        let mb = mb as u32;
        for slice in 0..n {
            for op in VOCAB_OPS {
                let Some(&i) = at.get(&(op, mb, slice)) else {
                    let missing = Action::new(Stage(r as u32), Unit::new(mb, slice, 0), op);
                    push(out, s, &missing, None, Rule::MissingVocabOp);
                    continue;
                };
                let misplaced = match op {
                    Op::VocabEmbed if r == 0 => {
                        position(forward, 0, mb, slice).is_some_and(|f| f < i)
                    }
                    Op::VocabEmbedGrad if r == 0 => {
                        position(Op::makes_input_grad, 0, mb, slice).is_none_or(|b| b > i)
                    }
                    Op::VocabHead if r + 1 == p as usize => {
                        position(forward, last, mb, slice).is_none_or(|f| f > i)
                            || position(Op::makes_input_grad, last, mb, slice)
                                .is_some_and(|b| b < i)
                    }
                    _ => false,
                };
                if misplaced {
                    push(out, s, &list[i], Some(i), Rule::VocabOpOutOfPlace);
                }
            }
        }
    }
}
