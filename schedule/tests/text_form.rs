//! The compact text form: PyTorch's action strings parse and print back, the slice suffix
//! round-trips, and malformed text is an error that names the problem.

use seqpipe_schedule::*;

#[test]
fn pytorch_examples_round_trip() {
    for text in [
        "2F0",
        "1B3",
        "0W1",
        "3I2",
        "0SEND_F1",
        "1RECV_B0",
        "12RECV_F7",
        "5SEND_B10",
    ] {
        let c: Compact = text.parse().unwrap();
        assert_eq!(c.to_string(), text);
        assert_eq!(c.slice, None);
    }
    let c: Compact = "3I2".parse().unwrap();
    assert_eq!(
        (c.vstage, c.op, c.mb),
        (VirtualStage(3), Op::BackwardInput, MicroBatch(2))
    );
}

#[test]
fn slice_suffix_and_memory_ops_round_trip() {
    for text in [
        "2F0.1",
        "0B7.15",
        "4OFFLOAD3.2",
        "4RELOAD3",
        "1RECOMPUTE0.0",
        "9SEND_F1.3",
    ] {
        let c: Compact = text.parse().unwrap();
        assert_eq!(c.to_string(), text);
    }
    assert_eq!("2F0.1".parse::<Compact>().unwrap().slice, Some(Slice(1)));
}

#[test]
fn virtual_stage_resolves_with_megatron_placement() {
    // p = 4: virtual stage 6 is chunk 1 on stage 2.
    let a = "6F3.1".parse::<Compact>().unwrap().resolve(4);
    assert_eq!(
        (a.stage, a.chunk, a.mb, a.slice),
        (Stage(2), Chunk(1), MicroBatch(3), Slice(1))
    );
    assert_eq!(virtual_stage(Stage(2), Chunk(1), 4), VirtualStage(6));
    assert_eq!(placement(VirtualStage(6), 4), (Stage(2), Chunk(1)));
    assert_eq!(
        previous_virtual_stage(VirtualStage(4)),
        Some(VirtualStage(3))
    ); // stage 3, chunk 0
    assert_eq!(next_virtual_stage(VirtualStage(7), 8), None);
    // Sends and receives name their peer: 3SEND_F0 on p = 4, v = 2 goes to stage 0 (chunk 1).
    let send = "3SEND_F0".parse::<Compact>().unwrap().resolve(4);
    assert_eq!(send.peer_virtual_stage(4), Some(VirtualStage(4)));
    let recv = "4RECV_F0".parse::<Compact>().unwrap().resolve(4);
    assert_eq!(recv.peer_virtual_stage(4), Some(VirtualStage(3)));
    assert_eq!(
        "0RECV_F0"
            .parse::<Compact>()
            .unwrap()
            .resolve(4)
            .peer_virtual_stage(4),
        None
    );
}

#[test]
fn malformed_text_is_rejected_with_the_reason() {
    let cases = [
        ("", "virtual stage"),
        ("F0", "virtual stage"),
        ("2F", "micro-batch"),
        ("1UNSHARD", "unknown op `UNSHARD`"),
        ("2X0", "unknown op `X`"),
        ("2F0.", "slice"),
        ("2F0x", "unexpected `x`"),
        ("2F0.1.2", "unexpected"),
        ("99999999999F0", "not a number"),
    ];
    for (text, needle) in cases {
        let err = text.parse::<Compact>().unwrap_err();
        assert!(
            matches!(err, ScheduleError::BadActionText { .. }),
            "{text}: {err:?}"
        );
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
}

#[test]
fn op_codes_are_unique_and_parse_back() {
    for op in Op::ALL {
        assert_eq!(Op::from_code(op.code()), Some(op));
    }
    let mut codes: Vec<&str> = Op::ALL.iter().map(|o| o.code()).collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), Op::ALL.len());
}

#[test]
fn schedule_kinds_parse_by_name() {
    for kind in ScheduleKind::ALL {
        assert_eq!(kind.name().parse::<ScheduleKind>().unwrap(), kind);
    }
    let err = "pipedream".parse::<ScheduleKind>().unwrap_err();
    assert!(
        err.to_string().contains("known kinds: gpipe, 1f1b"),
        "{err}"
    );
}
