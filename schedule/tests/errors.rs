//! Invalid configurations are errors naming the bad parameter and what would be valid.

use seqpipe_schedule::*;
use ScheduleKind::*;

fn err(config: ScheduleConfig) -> String {
    let e = generate(&config).unwrap_err();
    e.to_string()
}

#[test]
fn zero_counts_are_rejected() {
    let e = generate(&ScheduleConfig::new(OneFOneB, 0, 4)).unwrap_err();
    assert_eq!(
        e,
        ScheduleError::NotPositive {
            what: "pipeline stages (p)",
            value: 0
        }
    );
    assert!(
        err(ScheduleConfig::new(Seq1F1B, 4, 0)).contains("micro-batches (m) must be at least 1")
    );
    assert!(err(ScheduleConfig::new(Seq1F1B, 4, 4).with_slices(0)).contains("slices"));
    assert!(err(ScheduleConfig::new(Gis, 4, 4).with_group(0))
        .contains("group size (g) must be at least 1"));
}

#[test]
fn parameters_a_kind_does_not_take_are_rejected() {
    assert!(err(ScheduleConfig::new(OneFOneB, 4, 8).with_slices(2)).contains("use seq1f1b"));
    assert!(err(ScheduleConfig::new(OneFOneB, 4, 8).with_chunks(2)).contains("use interleaved"));
    assert!(
        err(ScheduleConfig::new(Seq1F1B, 4, 8).with_chunks(2)).contains("seq1f1b-i or slimpipe")
    );
    assert!(
        err(ScheduleConfig::new(ZbH1, 4, 8).with_slices(2)).contains("slices per sequence (n) = 2")
    );
    assert!(
        err(ScheduleConfig::new(GPipe, 4, 8).with_chunks(3)).contains("chunks per stage (v) = 3")
    );
    assert!(err(ScheduleConfig::new(Seq1F1B, 4, 8).with_group(4)).contains("only slimpipe and gis"));
}

#[test]
fn interleaved_needs_two_chunks_and_full_groups() {
    assert!(err(ScheduleConfig::new(Interleaved, 4, 8).with_chunks(1)).contains("v ≥ 2"));
    let e = generate(&ScheduleConfig::new(Interleaved, 4, 10).with_chunks(2)).unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::NotDivisible {
                value: 10,
                divisor: 4,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("try 8 or 12"), "{e}");
}

#[test]
fn seq1f1b_interleaved_needs_n_dividing_p() {
    let e = err(ScheduleConfig::new(Seq1F1BInterleaved, 4, 8)
        .with_slices(3)
        .with_chunks(2));
    assert!(
        e.contains("n must divide p = 4 (one of 1, 2, 4)") && e.contains("slimpipe"),
        "{e}"
    );
    // n = 2 on p = 4: groups hold 2 micro-batches, so m must be even.
    let e = err(ScheduleConfig::new(Seq1F1BInterleaved, 4, 3)
        .with_slices(2)
        .with_chunks(2));
    assert!(e.contains("multiple of 2"), "{e}");
}

#[test]
fn slimpipe_needs_n_at_least_p_when_interleaved_and_a_dividing_group() {
    let e = err(ScheduleConfig::new(SlimPipe, 8, 4)
        .with_slices(4)
        .with_chunks(2));
    assert!(e.contains("n ≥ p = 8"), "{e}");
    let e = err(ScheduleConfig::new(SlimPipe, 4, 4)
        .with_slices(12)
        .with_chunks(2)
        .with_group(5));
    assert!(e.contains("valid: 4, 6, 12"), "{e}");
    let e = err(ScheduleConfig::new(SlimPipe, 4, 4)
        .with_slices(12)
        .with_chunks(2)
        .with_group(3));
    assert!(e.contains("≥ p = 4"), "{e}");
    // v = 1: any n, any dividing group.
    assert!(generate(&ScheduleConfig::new(SlimPipe, 8, 4).with_slices(2)).is_ok());
}

#[test]
fn gis_blocks_must_be_large_enough_when_interleaved() {
    let e = err(ScheduleConfig::new(Gis, 8, 16).with_chunks(2).with_group(2));
    assert!(
        e.contains("must each hold 4..=16") && e.contains("valid g: 4, 6, 8, 9, 10, 11, 12, 16"),
        "{e}"
    );
    // Last block too short: m = 9, g = 4 leaves 1.
    let e = err(ScheduleConfig::new(Gis, 8, 9).with_chunks(2).with_group(4));
    assert!(e.contains("the last block included"), "{e}");
    assert!(err(ScheduleConfig::new(Gis, 4, 4).with_group(5)).contains("group size (g) = 5"));
    // Without interleaving any block size works.
    assert!(generate(&ScheduleConfig::new(Gis, 8, 9).with_group(1)).is_ok());
}

#[test]
fn huge_schedules_are_refused_not_built() {
    let e = generate(
        &ScheduleConfig::new(SlimPipe, 64, 4096)
            .with_slices(256)
            .with_chunks(8),
    )
    .unwrap_err();
    assert!(matches!(e, ScheduleError::TooLarge { .. }), "{e:?}");
}
