//! Mutated schedules are reported by `validate()` with the right stage, step and rule — never
//! accepted — and the text grid marks the failing cell.

use seqpipe_schedule::validate::render_violations;
use seqpipe_schedule::*;

fn seq1f1b() -> Schedule {
    generate(&ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(2)).unwrap()
}

fn position(s: &Schedule, stage: usize, text: &str) -> usize {
    s.actions[stage]
        .iter()
        .position(|a| s.text(a) == text)
        .unwrap()
}

fn has(v: &[Violation], stage: u32, step: usize, rule: Rule) -> bool {
    v.iter()
        .any(|x| x.stage == stage && x.position == Some(step) && x.rule == rule)
}

#[test]
fn generated_schedules_are_accepted() {
    assert!(validate(&seq1f1b()).is_empty());
    assert!(validate(&lower(&seq1f1b()).unwrap()).is_empty());
}

#[test]
fn swapped_slices_of_one_forward() {
    let mut s = seq1f1b();
    let (i, j) = (position(&s, 1, "1F2.0"), position(&s, 1, "1F2.1"));
    s.actions[1].swap(i, j);
    let v = validate(&s);
    assert!(
        has(
            &v,
            1,
            i,
            Rule::ForwardBeforeEarlierSlice { missing: Slice(0) }
        ),
        "{v:?}"
    );
    let text = render_violations(&s, &v);
    assert!(text.contains("[1F2.1]"), "{text}");
    assert!(text.contains(&format!("stage 1 step {i}: 1F2.1")), "{text}");
}

#[test]
fn backward_not_lifo_within_a_microbatch() {
    let mut s = seq1f1b();
    let (i, j) = (position(&s, 2, "2B3.1"), position(&s, 2, "2B3.0"));
    s.actions[2].swap(i, j);
    let v = validate(&s);
    assert!(
        has(
            &v,
            2,
            i,
            Rule::BackwardBeforeLaterSlice { missing: Slice(1) }
        ),
        "{v:?}"
    );
}

#[test]
fn backward_before_its_forward() {
    let mut s = seq1f1b();
    let (i, j) = (position(&s, 3, "3F5.0"), position(&s, 3, "3B5.0"));
    s.actions[3].swap(i, j);
    assert!(has(&validate(&s), 3, i, Rule::BackwardBeforeForward));
}

#[test]
fn weight_before_input_gradient() {
    let mut s = generate(&ScheduleConfig::new(ScheduleKind::ZbH1, 4, 8)).unwrap();
    let (i, j) = (position(&s, 0, "0I2"), position(&s, 0, "0W2"));
    s.actions[0].swap(i, j);
    assert!(has(&validate(&s), 0, i, Rule::WeightBeforeInput));
}

#[test]
fn dropped_receive_is_reported_at_both_ends() {
    let mut s = lower(&seq1f1b()).unwrap();
    let i = position(&s, 2, "2RECV_F3.1");
    s.actions[2].remove(i);
    let v = validate(&s);
    assert!(has(&v, 2, i, Rule::ComputeBeforeRecv), "{v:?}");
    let send = position(&s, 1, "1SEND_F3.1");
    assert!(has(&v, 1, send, Rule::Unmatched), "{v:?}");
}

#[test]
fn send_before_its_compute() {
    let mut s = lower(&seq1f1b()).unwrap();
    let (i, j) = (position(&s, 0, "0F4.1"), position(&s, 0, "0SEND_F4.1"));
    s.actions[0].swap(i, j);
    assert!(has(&validate(&s), 0, i, Rule::SendBeforeCompute));
}

#[test]
fn swap_that_only_deadlocks_is_caught_by_the_dry_run() {
    // 1F1B p = 2. Each swap alone breaks no per-stage rule; together they form a cycle: stage 0's
    // B0 (now before its F1) needs stage 1's B0, which now comes after stage 1's F1, which needs
    // stage 0's F1.
    let mut s = generate(&ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4)).unwrap();
    let texts = |s: &Schedule, r: usize| -> Vec<String> {
        s.actions[r].iter().map(|a| s.text(a)).collect()
    };
    assert_eq!(
        texts(&s, 1),
        ["1F0", "1B0", "1F1", "1B1", "1F2", "1B2", "1F3", "1B3"]
    );
    s.actions[1].swap(1, 2);
    let (i, j) = (position(&s, 0, "0F1"), position(&s, 0, "0B0"));
    s.actions[0].swap(i, j);
    let v = validate(&s);
    assert!(
        v.iter().all(|x| matches!(x.rule, Rule::Deadlock { .. })),
        "{v:?}"
    );
    assert!(
        v.iter().any(|x| x.stage == 0 && x.position == Some(i)),
        "{v:?}"
    );
    assert!(
        v.iter().any(|x| x.stage == 1 && x.position == Some(1)),
        "{v:?}"
    );
}

#[test]
fn missing_and_duplicate_actions() {
    let mut s = seq1f1b();
    let i = position(&s, 1, "1B7.0");
    let dropped = s.actions[1].remove(i);
    let v = validate(&s);
    assert!(
        v.iter().any(|x| x.stage == 1
            && x.position.is_none()
            && x.rule == Rule::MissingBackward
            && x.action == "1B7.0"),
        "{v:?}"
    );
    assert!(render_violations(&s, &v).contains("<-- missing actions"));
    s.actions[1].insert(i, dropped);
    let dup = s.actions[1][0];
    s.actions[1].insert(1, dup);
    assert!(has(&validate(&s), 1, 1, Rule::DuplicateForward));
}

#[test]
fn out_of_range_and_misplaced_actions() {
    let mut s = seq1f1b();
    s.actions[0][3].mb = MicroBatch(8);
    let v = validate(&s);
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].stage, v[0].position), (0, Some(3)));
    assert!(
        matches!(&v[0].rule, Rule::OutOfRange { detail } if detail.contains("micro-batch 8 outside 0..8"))
    );
    let mut s = seq1f1b();
    s.actions[2][0].stage = Stage(1);
    assert!(matches!(validate(&s)[0].rule, Rule::OutOfRange { .. }));
}

#[test]
fn comm_in_an_unlowered_schedule_is_flagged() {
    let mut s = lower(&seq1f1b()).unwrap();
    s.lowered = false;
    let v = validate(&s);
    assert!(!v.is_empty() && v.iter().all(|x| x.rule == Rule::UnexpectedComm));
}

/// `s` with `op` of stage 0's unit (micro-batch 0, slice 0) inserted before the action `before`.
fn insert_memory_op(s: &mut Schedule, op: Op, before: &str) {
    let at = position(s, 0, before);
    let mut a = s.actions[0][position(s, 0, "0F0.0")];
    a.op = op;
    s.actions[0].insert(at, a);
}

#[test]
fn an_offloaded_unit_must_be_reloaded_before_its_backward() {
    let mut s = seq1f1b();
    insert_memory_op(&mut s, Op::Offload, "0F1.0");
    insert_memory_op(&mut s, Op::Reload, "0B0.0");
    assert!(validate(&s).is_empty(), "{:?}", validate(&s));

    let mut s = seq1f1b();
    insert_memory_op(&mut s, Op::Offload, "0F1.0");
    let backward = position(&s, 0, "0B0.0");
    assert!(has(&validate(&s), 0, backward, Rule::BackwardOnHost));

    let mut s = seq1f1b();
    insert_memory_op(&mut s, Op::Offload, "0F1.0");
    insert_memory_op(&mut s, Op::Offload, "0F1.0");
    let second = position(&s, 0, "0F1.0") - 1;
    assert!(has(&validate(&s), 0, second, Rule::MemoryOpOutOfPlace));

    let mut s = seq1f1b();
    insert_memory_op(&mut s, Op::Reload, "0B0.0");
    let reload = position(&s, 0, "0B0.0") - 1;
    assert!(has(&validate(&s), 0, reload, Rule::MemoryOpOutOfPlace));
}
