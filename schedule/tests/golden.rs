//! Golden files of rendered schedules for small cases (text grid, time-aligned timeline, CSV,
//! SVG) and CSV round trips, including PyTorch-style input. `UPDATE_GOLDEN=1` rewrites the files;
//! a missing file fails the test.

use std::path::PathBuf;

use seqpipe_schedule::render::{chrome_trace, grid, svg, timeline};
use seqpipe_schedule::*;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

fn sim(s: &Schedule) -> Simulation {
    let costs = UnitCosts::new(1.0, 2.0);
    simulate(s, |a| costs.cost(a), &P2p::free()).unwrap()
}

fn case(name: &str, config: ScheduleConfig) {
    let s = generate(&config).unwrap();
    golden(&format!("{name}.grid.txt"), &grid(&s));
    golden(&format!("{name}.timeline.txt"), &timeline(&sim(&s), 1.0));
}

#[test]
fn one_f_one_b_p4_m8() {
    case(
        "1f1b_p4_m8",
        ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 8),
    );
    let s = lower(&generate(&ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 8)).unwrap()).unwrap();
    golden("1f1b_p4_m8.csv", &csv::to_csv(&s));
}

#[test]
fn seq1f1b_p4_m8_n2() {
    case(
        "seq1f1b_p4_m8_n2",
        ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(2),
    );
    let s =
        lower(&generate(&ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(2)).unwrap())
            .unwrap();
    golden("seq1f1b_p4_m8_n2.lowered.grid.txt", &grid(&s));
}

#[test]
fn other_kinds_small() {
    use ScheduleKind::*;
    case("gpipe_p3_m4", ScheduleConfig::new(GPipe, 3, 4));
    case(
        "interleaved_p2_m4_v2",
        ScheduleConfig::new(Interleaved, 2, 4).with_chunks(2),
    );
    case(
        "seq1f1b-i_p2_m2_n2_v2",
        ScheduleConfig::new(Seq1F1BInterleaved, 2, 2)
            .with_slices(2)
            .with_chunks(2),
    );
    case(
        "slimpipe_p2_m2_n2_v2",
        ScheduleConfig::new(SlimPipe, 2, 2)
            .with_slices(2)
            .with_chunks(2),
    );
    case("zb-h1_p4_m8", ScheduleConfig::new(ZbH1, 4, 8));
    case(
        "gis_p4_m4_v2_g2",
        ScheduleConfig::new(Gis, 4, 4).with_chunks(2).with_group(2),
    );
}

#[test]
fn svg_and_chrome_trace() {
    let s = generate(&ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 2)).unwrap();
    let sim = sim(&s);
    golden("1f1b_p2_m2.svg", &svg(&sim));
    let trace = chrome_trace(&sim, 1000.0);
    let events = trace["traceEvents"].as_array().unwrap();
    // One process name, two thread names, 8 compute blocks, and the receive waits.
    let blocks: Vec<_> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] != "wait")
        .collect();
    assert_eq!(blocks.len(), 8);
    assert_eq!(
        events.iter().filter(|e| e["name"] == "thread_name").count(),
        2
    );
    let b = blocks.iter().find(|e| e["name"] == "1B0").unwrap();
    assert_eq!(
        (b["tid"].as_u64(), b["ts"].as_f64(), b["dur"].as_f64()),
        (Some(1), Some(2000.0), Some(2000.0))
    );
}

#[test]
fn pytorch_style_csv_is_read() {
    // PyTorch writes \r\n line ends and leaves idle steps empty.
    let text = "0F0,0F1,,0B0,0B1\r\n1F0,1B0,1F1,1B1\r\n";
    let s = csv::from_csv(
        text,
        ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 2),
        false,
    )
    .unwrap();
    assert_eq!(s.actions[0].len(), 4);
    assert!(validate(&s).is_empty());
    assert_eq!(csv::to_csv(&s), "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n");
}

#[test]
fn csv_errors_name_row_and_column() {
    let config = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 2);
    let e = csv::from_csv("0F0,0F1\n1F0,1Q1\n", config, false).unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::Csv {
                row: 1,
                column: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let e = csv::from_csv("0F0,1F1\n1F0\n", config, false).unwrap_err();
    assert!(
        e.to_string()
            .contains("1F1 runs on virtual stage 1 = stage 1 with p = 2, but sits in row 0"),
        "{e}"
    );
    let e = csv::from_csv("0F0\n", config, false).unwrap_err();
    assert!(e.to_string().contains("1 rows for p = 2 stages"), "{e}");
    let e = csv::from_csv("0F5\n1F0\n", config, false).unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::OutOfRange {
                what: "micro-batch",
                value: 5,
                limit: 2,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn every_kind_round_trips_through_csv_and_json() {
    use ScheduleKind::*;
    let configs = [
        ScheduleConfig::new(GPipe, 3, 4).with_slices(2),
        ScheduleConfig::new(OneFOneB, 4, 8),
        ScheduleConfig::new(Interleaved, 4, 8).with_chunks(2),
        ScheduleConfig::new(Seq1F1B, 4, 8).with_slices(2),
        ScheduleConfig::new(Seq1F1BInterleaved, 4, 4)
            .with_slices(2)
            .with_chunks(2),
        ScheduleConfig::new(SlimPipe, 4, 2)
            .with_slices(8)
            .with_chunks(3),
        ScheduleConfig::new(ZbH1, 4, 8),
        ScheduleConfig::new(Gis, 4, 6).with_chunks(3).with_group(3),
    ];
    for config in configs {
        let s = generate(&config).unwrap();
        for s in [s.clone(), lower(&s).unwrap()] {
            let back = csv::from_csv(&csv::to_csv(&s), s.config, s.lowered).unwrap();
            assert_eq!(back, s, "{:?}", config.kind);
            assert_eq!(Schedule::from_json(&s.to_json()).unwrap(), s);
        }
    }
}
