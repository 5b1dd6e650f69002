//! seqpipe beside PyTorch's pipelining: PyTorch's own schedule artifacts read, validate and write
//! back byte for byte; PyTorch's lowering (`_merge_bw` + `_add_send_recv`) done here equals the
//! lowering PyTorch stored and the one torch 2.15 made of seqpipe's schedules; PyTorch's lock-step
//! simulation gives the step counts its tests assert; what the dialect cannot say is refused.

use seqpipe_schedule::pytorch::lockstep::{lockstep_steps, simulate_lockstep};
use seqpipe_schedule::pytorch::lowering::{add_send_recv, merge_bw, Placement};
use seqpipe_schedule::pytorch::{self, Rows};
use seqpipe_schedule::*;

fn artifact(name: &str) -> String {
    let path = format!("{}/tests/pytorch/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap()
}

/// `text` (one rank per line, actions comma-separated) as unsliced actions.
fn rows(text: &str) -> Vec<Vec<Compact>> {
    text.lines()
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect()
}

/// `test_csv`'s lowering: `_merge_bw` per rank, then `_add_send_recv`.
fn lower_like_pytorch(compute: &Rows, place: Placement) -> Vec<Vec<Compact>> {
    let merged: Rows = compute.iter().map(|r| merge_bw(r)).collect();
    add_send_recv(&merged, place).unwrap()
}

fn flat(rows: &Rows) -> Vec<Vec<Compact>> {
    rows.iter()
        .map(|r| r.iter().flatten().copied().collect())
        .collect()
}

const ZB1P: Placement = Placement {
    ranks: 2,
    stages: 4,
};

#[test]
fn pytorch_artifacts_read_validate_and_write_back_byte_for_byte() {
    let config = ScheduleConfig::new(ScheduleKind::ZbH1, 2, 8).with_chunks(2);
    for (name, lowered) in [
        ("zb1p_2rank_2stagep_compute.csv", false),
        ("zb1p_2rank_2stagep_comms.csv", true),
    ] {
        let text = artifact(name);
        let rows = pytorch::read(&text).unwrap();
        assert_eq!(pytorch::write(&rows), text, "{name} round trip");
        let schedule = pytorch::to_schedule(&rows, config, lowered).unwrap();
        let violations = validate(&schedule);
        assert!(violations.is_empty(), "{name}: {violations:?}");
    }
    // The compute file keeps its idle steps: one per rank.
    let compute = pytorch::read(&artifact("zb1p_2rank_2stagep_compute.csv")).unwrap();
    let idle: Vec<usize> = compute
        .iter()
        .map(|r| r.iter().filter(|c| c.is_none()).count())
        .collect();
    assert_eq!(idle, [1, 1]);
}

#[test]
fn pytorch_lowering_here_equals_the_lowering_pytorch_stored_and_takes_113_steps() {
    // TestScheduleLowering.test_csv: merge, add sends and receives, compare, simulate.
    let compute = pytorch::read(&artifact("zb1p_2rank_2stagep_compute.csv")).unwrap();
    let comms = pytorch::read(&artifact("zb1p_2rank_2stagep_comms.csv")).unwrap();
    let lowered = lower_like_pytorch(&compute, ZB1P);
    assert_eq!(lowered, flat(&comms));
    let steps = simulate_lockstep(&lowered, ZB1P).unwrap();
    let per_rank: Vec<usize> = steps.iter().map(Vec::len).collect();
    assert_eq!(per_rank, [112, 113]);
    assert_eq!(lockstep_steps(&flat(&comms), ZB1P).unwrap(), 113);
}

#[test]
fn pytorch_send_recv_case_simple_2_rank_2_stage_takes_11_steps() {
    // test_send_recv's "simple_2_rank_2_stage" (stage_to_rank = identity, num_stages = 2).
    let compute = pytorch::read("0F0,0F1,,0B0,,0B1\n,1F0,1B0,1F1,1B1,\n").unwrap();
    let place = Placement {
        ranks: 2,
        stages: 2,
    };
    // test_send_recv lowers the rows as written, idle steps and all.
    let lowered = add_send_recv(&compute, place).unwrap();
    let expected = rows(
        "0F0,0SEND_F0,0F1,0SEND_F1,0RECV_B0,0B0,0RECV_B1,0B1\n\
         1RECV_F0,1RECV_F1,1F0,1B0,1SEND_B0,1F1,1B1,1SEND_B1",
    );
    assert_eq!(lowered, expected);
    assert_eq!(lockstep_steps(&lowered, place).unwrap(), 11);
}

#[test]
fn seqpipe_schedules_lower_and_simulate_in_pytorch_as_torch_2_15_does() {
    // Measured with torch 2.15.0 on seqpipe's CSV: `_merge_bw`, `_add_send_recv(stage_to_rank =
    // s % 2, num_stages = p·v)`, `_simulate_comms_compute` (schedule/tests/pytorch/SOURCES.md).
    let cases = [
        (
            ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4),
            "0F0,0SEND_F0,0F1,0SEND_F1,0RECV_B0,0B0,0F2,0SEND_F2,0RECV_B1,0B1,0F3,0SEND_F3,0RECV_B2,0B2,0RECV_B3,0B3\n\
             1RECV_F0,1F0,1RECV_F1,1B0,1SEND_B0,1F1,1RECV_F2,1B1,1SEND_B1,1F2,1RECV_F3,1B2,1SEND_B2,1F3,1B3,1SEND_B3",
            20,
        ),
        (
            ScheduleConfig::new(ScheduleKind::ZbH1, 2, 4),
            "0F0,0SEND_F0,0F1,0SEND_F1,0RECV_B0,0B0,0F2,0SEND_F2,0RECV_B1,0B1,0F3,0SEND_F3,0RECV_B2,0B2,0RECV_B3,0B3\n\
             1RECV_F0,1F0,1RECV_F1,1I0,1SEND_B0,1F1,1RECV_F2,1I1,1SEND_B1,1W0,1RECV_F3,1F2,1I2,1SEND_B2,1W1,1F3,1I3,1SEND_B3,1W2,1W3",
            23,
        ),
        (
            ScheduleConfig::new(ScheduleKind::Interleaved, 2, 4).with_chunks(2),
            "0F0,0SEND_F0,2RECV_F0,0F1,0SEND_F1,2RECV_F1,2F0,2SEND_F0,2F1,2SEND_F1,2RECV_B0,0F2,0SEND_F2,2B0,2SEND_B0,2RECV_B1,0F3,0SEND_F3,2RECV_F2,2B1,2SEND_B1,0RECV_B0,2F2,2SEND_F2,2RECV_F3,0B0,0RECV_B1,2F3,2SEND_F3,0B1,2RECV_B2,2B2,2SEND_B2,2RECV_B3,2B3,2SEND_B3,0RECV_B2,0B2,0RECV_B3,0B3\n\
             1RECV_F0,1F0,1SEND_F0,1RECV_F1,1F1,1SEND_F1,3RECV_F0,3F0,3RECV_F1,3B0,3SEND_B0,1RECV_F2,3F1,1RECV_B0,3B1,3SEND_B1,1RECV_F3,1F2,1SEND_F2,1RECV_B1,1B0,1SEND_B0,3RECV_F2,1F3,1SEND_F3,1B1,1SEND_B1,3RECV_F3,3F2,3B2,3SEND_B2,1RECV_B2,3F3,3B3,3SEND_B3,1RECV_B3,1B2,1SEND_B2,1B3,1SEND_B3",
            51,
        ),
    ];
    for (config, torch_lowered, torch_steps) in cases {
        let schedule = generate(&config).unwrap();
        let compute = pytorch::from_schedule(&schedule).unwrap();
        let place = Placement {
            ranks: config.stages,
            stages: config.stages * config.chunks,
        };
        let lowered = lower_like_pytorch(&compute, place);
        assert_eq!(lowered, rows(torch_lowered), "{:?}", config.kind);
        assert_eq!(
            lockstep_steps(&lowered, place).unwrap(),
            torch_steps,
            "{:?}",
            config.kind
        );
        // And PyTorch's lowering is one seqpipe's validator accepts.
        let as_rows: Rows = lowered
            .iter()
            .map(|r| r.iter().map(|&a| Some(a)).collect())
            .collect();
        let back = pytorch::to_schedule(&as_rows, config, true).unwrap();
        assert!(validate(&back).is_empty(), "{:?}", config.kind);
    }
}

#[test]
fn seqpipe_interleaved_order_is_pytorchs_interleaved_1f1b_order() {
    // ScheduleInterleaved1F1B(2 ranks, 2 stages each, 4 micro-batches).pipeline_order from
    // torch 2.15, idle steps dropped.
    let config = ScheduleConfig::new(ScheduleKind::Interleaved, 2, 4).with_chunks(2);
    let ours = pytorch::from_schedule(&generate(&config).unwrap()).unwrap();
    let theirs = rows(
        "0F0,0F1,2F0,2F1,0F2,2B0,0F3,2B1,2F2,0B0,2F3,0B1,2B2,2B3,0B2,0B3\n\
         1F0,1F1,3F0,3B0,3F1,3B1,1F2,1B0,1F3,1B1,3F2,3B2,3F3,3B3,1B2,1B3",
    );
    assert_eq!(flat(&ours), theirs);
}

#[test]
fn what_the_dialect_cannot_say_is_refused_by_name() {
    let says = |e: ScheduleError, needle: &str| {
        let text = e.to_string();
        assert!(text.contains(needle), "{text}");
    };
    // Sliced schedules: PyTorch would read 0F0.1 as 0F0.
    let sliced =
        generate(&ScheduleConfig::new(ScheduleKind::Seq1F1B, 2, 2).with_slices(2)).unwrap();
    says(pytorch::from_schedule(&sliced).unwrap_err(), "2 slices");
    says(pytorch::read("0F0.1\n").unwrap_err(), "has a slice");
    // seqpipe's own CSV of it is marked: a PyTorch reader fails on the first line, not later.
    let ours = csv::to_csv(&sliced);
    assert!(ours.starts_with(csv::SLICED_MARK));
    assert!(
        !csv::SLICED_MARK.contains(','),
        "one cell, so the whole line reaches the parser"
    );
    assert!(pytorch::read(&ours).is_err());
    assert_eq!(csv::from_csv(&ours, sliced.config, false).unwrap(), sliced);
    // PyTorch ops seqpipe lacks: DualPipeV's overlapped pairs (as in its dualpipev_4rank_10mb.csv
    // artifact, not stored here), FSDP's unshard and reshard, gradient reduction.
    says(
        pytorch::read("0F0,(0F7;7B3)OVERLAP_F_B\n").unwrap_err(),
        "OVERLAP_F_B",
    );
    says(pytorch::read("0UNSHARD,0F0\n").unwrap_err(), "UNSHARD");
    says(
        pytorch::read("0F0,0REDUCE_GRAD\n").unwrap_err(),
        "REDUCE_GRAD",
    );
    // The mistake behind "Malformed compute schedule": num_stages = p instead of p·v.
    let config = ScheduleConfig::new(ScheduleKind::Interleaved, 2, 4).with_chunks(2);
    let compute = pytorch::from_schedule(&generate(&config).unwrap()).unwrap();
    let merged: Rows = compute.iter().map(|r| merge_bw(r)).collect();
    let wrong = Placement {
        ranks: 2,
        stages: 2,
    };
    says(add_send_recv(&merged, wrong).unwrap_err(), "rank 0: 2F0");
}
