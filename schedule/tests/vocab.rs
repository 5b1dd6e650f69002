//! Vocabulary-parallel ops in the IR: the validator names a missing, repeated, misplaced or
//! deadlocking one, the simulator makes a meeting wait for the stages it needs, and the text,
//! JSON and PyTorch forms treat the ops as seqpipe's own.

use seqpipe_schedule::*;

fn vocab_1f1b(p: u32, m: u32) -> Schedule {
    let lowered = lower(&one_f_one_b(p, m).unwrap()).unwrap();
    let costs = UnitCosts::new(1.0, 2.0);
    insert_vocab_parallel(&lowered, |a| costs.cost(a)).unwrap()
}

fn position(s: &Schedule, stage: usize, text: &str) -> usize {
    s.actions[stage]
        .iter()
        .position(|a| s.text(a) == text)
        .unwrap_or_else(|| panic!("no {text} on stage {stage}"))
}

fn rules(s: &Schedule) -> Vec<Rule> {
    validate(s).into_iter().map(|v| v.rule).collect()
}

#[test]
fn a_stage_without_its_share_is_named() {
    let mut s = vocab_1f1b(3, 2);
    let i = position(&s, 1, "1HEAD1");
    s.actions[1].remove(i);
    let v = validate(&s);
    assert!(
        v.iter()
            .any(|v| v.rule == Rule::MissingVocabOp && v.stage == 1 && v.action == "1HEAD1"),
        "{v:?}"
    );
}

#[test]
fn a_repeated_op_or_one_on_another_chunk_is_named() {
    let mut s = vocab_1f1b(2, 2);
    let i = position(&s, 0, "0EMBED1");
    let again = s.actions[0][i];
    s.actions[0].insert(i, again);
    assert!(rules(&s).contains(&Rule::DuplicateVocabOp));
}

#[test]
fn owners_must_run_their_op_where_the_data_is() {
    // The last stage's HEAD before the forward that makes its input.
    let mut s = vocab_1f1b(2, 2);
    let (head, forward) = (position(&s, 1, "1HEAD0"), position(&s, 1, "1F0"));
    let a = s.actions[1].remove(head);
    s.actions[1].insert(forward, a);
    assert!(
        rules(&s).contains(&Rule::VocabOpOutOfPlace),
        "{:?}",
        rules(&s)
    );
    // Stage 0's EMBED after the forward that consumes it.
    let mut s = vocab_1f1b(2, 2);
    let (embed, forward) = (position(&s, 0, "0EMBED0"), position(&s, 0, "0F0"));
    let a = s.actions[0].remove(embed);
    s.actions[0].insert(forward, a);
    assert!(
        rules(&s).contains(&Rule::VocabOpOutOfPlace),
        "{:?}",
        rules(&s)
    );
    // Stage 0's EMBED_B before the backward that makes the gradient.
    let mut s = vocab_1f1b(2, 2);
    let (grad, backward) = (position(&s, 0, "0EMBED_B1"), position(&s, 0, "0B1"));
    let a = s.actions[0].remove(grad);
    s.actions[0].insert(backward, a);
    assert!(
        rules(&s).contains(&Rule::VocabOpOutOfPlace),
        "{:?}",
        rules(&s)
    );
}

#[test]
fn stages_meeting_in_different_orders_deadlock_and_are_named() {
    // Stage 1 runs HEAD1 before HEAD0, stage 0 the other way round: each waits for the other.
    let mut s = vocab_1f1b(2, 2);
    let (h0, h1) = (position(&s, 0, "0HEAD0"), position(&s, 0, "0HEAD1"));
    s.actions[0].swap(h0, h1);
    let v = validate(&s);
    assert!(
        v.iter().any(|v| matches!(v.rule, Rule::Deadlock { .. })),
        "{v:?}"
    );
}

#[test]
fn a_meeting_waits_for_the_stages_it_needs() {
    // p = 2, m = 1, F = 1, B = 2, each vocabulary op 0.5: both stages embed in [0, 0.5], stage
    // 0 forwards in [0.5, 1.5] and reaches HEAD0, where it waits until the last stage's forward
    // ends (at 2.5).
    let lowered = lower(&one_f_one_b(2, 1).unwrap()).unwrap();
    let costs = UnitCosts {
        vocab: 0.5,
        ..UnitCosts::new(1.0, 2.0)
    };
    let s = insert_vocab_parallel(&lowered, |a| costs.cost(a)).unwrap();
    let sim = simulate(&s, |a| costs.cost(a), &P2p::free()).unwrap();
    let timed = |stage: usize, text: &str| {
        *sim.timeline[stage]
            .iter()
            .find(|t| s.text(&t.action) == text)
            .unwrap()
    };
    let head0 = timed(0, "0HEAD0");
    let head1 = timed(1, "1HEAD0");
    assert_eq!((head1.start, head1.wait, head1.end), (2.5, 0.0, 3.0));
    assert_eq!((head0.start, head0.wait, head0.end), (1.5, 1.0, 3.0));
    // The last stage's backward starts after the meeting.
    assert_eq!(timed(1, "1B0").start, 3.0);
}

#[test]
fn vocab_ops_round_trip_as_text_and_json_and_pytorch_refuses_them() {
    let s = vocab_1f1b(2, 2);
    let texts = s.to_texts();
    assert!(texts[1].iter().any(|t| t == "1EMBED_B0"));
    let json = serde_json::to_string(&s).unwrap();
    let back: Schedule = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let e = pytorch::from_schedule(&s).unwrap_err().to_string();
    assert!(e.contains("vocabulary-parallel"), "{e}");
}

#[test]
fn a_zero_compute_cost_is_refused_by_name() {
    let lowered = lower(&one_f_one_b(2, 1).unwrap()).unwrap();
    let e = insert_vocab_parallel(&lowered, |_| 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("vocabulary parallelism places its ops"), "{e}");
}
