//! The ledger on hand-written event lists: peaks, curves, offload/reload bookkeeping, refusals and
//! the CSV/JSON/SVG exports.

use seqpipe_memory::*;

fn ev(time: f64, stage: usize, op: MemOp, unit: &str, bytes: f64) -> MemEvent {
    MemEvent {
        time,
        stage,
        op,
        unit: unit.to_string(),
        bytes,
    }
}

#[test]
fn peak_and_curve_of_two_overlapping_units() {
    use MemOp::*;
    let events = vec![
        ev(0.0, 0, Allocate, "a", 10.0),
        ev(1.0, 0, Allocate, "b", 5.0),
        ev(2.0, 0, Free, "a", 0.0),
        ev(3.0, 0, Free, "b", 0.0),
        ev(1.0, 1, Allocate, "c", 7.0),
        ev(4.0, 1, Free, "c", 0.0),
    ];
    let r = run_ledger(&[100.0, 50.0], &events).unwrap();
    assert_eq!(r.stages[0].peak, 115.0);
    assert_eq!(r.stages[0].peak_time, 1.0);
    assert_eq!(r.stages[1].peak, 57.0);
    let devices: Vec<f64> = r.stages[0].curve.iter().map(|p| p.device).collect();
    assert_eq!(devices, vec![100.0, 110.0, 115.0, 105.0, 100.0]);
    assert_eq!(r.stages[0].final_device(), 100.0);
}

#[test]
fn releases_at_the_same_time_come_first() {
    use MemOp::*;
    // "b" is allocated at the moment "a" is freed: listed first, yet it must not stack on "a".
    let events = vec![
        ev(0.0, 0, Allocate, "a", 10.0),
        ev(1.0, 0, Allocate, "b", 10.0),
        ev(1.0, 0, Free, "a", 0.0),
        ev(2.0, 0, Free, "b", 0.0),
    ];
    let r = run_ledger(&[0.0], &events).unwrap();
    assert_eq!(r.stages[0].peak, 10.0);
}

#[test]
fn offload_moves_bytes_to_host_and_back() {
    use MemOp::*;
    let events = vec![
        ev(0.0, 0, Allocate, "a", 10.0),
        ev(1.0, 0, Offload, "a", 6.0),
        ev(2.0, 0, Allocate, "b", 10.0),
        ev(3.0, 0, Reload, "a", 6.0),
        ev(4.0, 0, Free, "a", 0.0),
        ev(5.0, 0, Free, "b", 0.0),
    ];
    let r = run_ledger(&[1.0], &events).unwrap();
    let s = &r.stages[0];
    assert_eq!(s.peak, 21.0);
    assert_eq!(s.peak_host, 6.0);
    let at = |t: f64| s.curve.iter().find(|p| p.time == t).copied().unwrap();
    assert_eq!((at(1.0).device, at(1.0).host), (5.0, 6.0));
    assert_eq!((at(2.0).device, at(2.0).host), (15.0, 6.0));
    assert_eq!(s.final_device(), 1.0);
    assert_eq!(s.curve.last().unwrap().host, 0.0);
}

#[test]
fn contradictory_events_are_refused_with_the_unit_named() {
    use MemOp::*;
    let cases: Vec<(Vec<MemEvent>, &str)> = vec![
        (vec![ev(0.0, 0, Free, "x", 0.0)], "not allocated"),
        (
            vec![
                ev(0.0, 0, Allocate, "x", 1.0),
                ev(1.0, 0, Allocate, "x", 1.0),
            ],
            "already allocated",
        ),
        (
            vec![
                ev(0.0, 0, Allocate, "x", 4.0),
                ev(1.0, 0, Offload, "x", 5.0),
            ],
            "only 4 bytes are on device",
        ),
        (
            vec![
                ev(0.0, 0, Allocate, "x", 4.0),
                ev(1.0, 0, Offload, "x", 4.0),
                ev(2.0, 0, Free, "x", 0.0),
            ],
            "still on host",
        ),
        (vec![ev(0.0, 0, Reload, "x", 1.0)], "not allocated"),
        (vec![ev(0.0, 0, Allocate, "x", -1.0)], "finite"),
    ];
    for (events, needle) in cases {
        let err = run_ledger(&[0.0], &events).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("`x`"), "{err}");
    }
    let err = run_ledger(&[0.0], &[ev(0.0, 3, Allocate, "x", 1.0)]).unwrap_err();
    assert_eq!(
        err,
        MemoryError::NoSuchStage {
            stage: 3,
            stages: 1
        }
    );
}

#[test]
fn exports_carry_every_point() {
    use MemOp::*;
    let events = vec![
        ev(0.0, 0, Allocate, "a", 2.0 * GIB),
        ev(2.0, 0, Free, "a", 0.0),
        ev(1.0, 1, Allocate, "b", GIB),
        ev(3.0, 1, Free, "b", 0.0),
    ];
    let r = run_ledger(&[GIB, GIB], &events).unwrap();
    let csv = r.to_csv();
    assert_eq!(csv.lines().count(), 1 + 3 + 3);
    assert!(csv.starts_with("stage,time,device_bytes,host_bytes\n"));
    assert!(csv.contains(&format!("0,0,{},0", 3.0 * GIB)));
    let back: LedgerReport = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(back, r);
    let svg = r.to_svg("test", 400, 300).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("stage 1"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}

#[test]
fn lives_pair_spans_and_produce_side_terms() {
    let shape = seqpipe_slicing::preset("llama-7b").unwrap();
    let act = ActivationModel::new(shape, Parallelism::new(1, 1, 1).unwrap()).unwrap();
    let sizer = UnitSizer {
        per_microbatch: None,
        activation: act,
        layers_per_chunk: 16,
        slices: vec![(0, 100), (100, 100)],
        stages: 2,
        chunks: 1,
    };
    let span = |stage, slice, phase, start, end| ComputeSpan {
        stage,
        unit: UnitKey {
            mb: 0,
            slice,
            chunk: 0,
        },
        phase,
        start,
        end,
    };
    // Stage 1 (the last) runs F s0, F s1, B s1, B s0.
    let spans = vec![
        span(1, 0, Phase::Forward, 0.0, 1.0),
        span(1, 1, Phase::Forward, 1.0, 2.0),
        span(1, 1, Phase::Backward, 2.0, 4.0),
        span(1, 0, Phase::Backward, 4.0, 6.0),
    ];
    let lives = lives_from_spans(&spans).unwrap();
    assert_eq!(lives.len(), 2);
    assert_eq!(lives[1].lifespan(), 0.0);
    assert_eq!(lives[0].lifespan(), 3.0);
    let events = events_from_lives(&lives, &sizer).unwrap();
    let r = run_ledger(&[0.0, 0.0], &events).unwrap();
    let unit = act.bytes_per_token_layer() * 100.0 * 16.0;
    let logits = 100.0 * 32000.0 * 4.0;
    let acc = 2.0 * 4096.0 * 100.0 * 2.0 * 16.0;
    // Peak: both units and both logits live at t = 1..2.
    assert_eq!(r.stages[1].peak, 2.0 * unit + 2.0 * logits);
    // After B s1 (t = 4): unit s0 and the accumulator of the 100-token prefix.
    let at4 = r.stages[1].curve.iter().find(|p| p.time == 4.0).unwrap();
    assert_eq!(at4.device, unit + logits + acc);
    assert_eq!(r.stages[1].final_device(), 0.0);
    let err = lives_from_spans(&spans[..3]).unwrap_err().to_string();
    assert!(
        err.contains("mb0.s0.c0") && err.contains("no backward"),
        "{err}"
    );
}
