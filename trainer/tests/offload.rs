//! `parallel.offload` at run time: the planner's OFFLOAD/RELOAD actions are in the schedule the
//! ranks run, the losses are those of the run without offload bit for bit, the measured device
//! peak of saved activations equals the prediction and drops, and bad settings are refused
//! before any work.

use seqpipe_schedule::Op;
use seqpipe_trainer::config::{Precision, TrainConfig};
use seqpipe_trainer::error::Error;
use seqpipe_trainer::predict::{predict, stage_states, PredictInput};
use seqpipe_trainer::runtime::budget::predicted_stage_peaks;
use seqpipe_trainer::runtime::offload::Offload;
use seqpipe_trainer::runtime::rank_loop::plan;
use seqpipe_trainer::train::{check, slice_ranges, train, TrainSummary};

/// A short run of `schedule` on 4 stages (deep enough that stage 0 holds several units in
/// flight, which offloading can thin out) with `offload`.
fn config(schedule: &str, slices: u32, chunks: u32, offload: Offload) -> TrainConfig {
    let mut cfg = TrainConfig {
        steps: 2,
        precision: Precision::F32,
        ..TrainConfig::default()
    };
    cfg.data.seq_len = 32;
    let p = &mut cfg.parallel;
    (p.stages, p.microbatches, p.slices, p.chunks) = (4, 8, slices, chunks);
    p.schedule = schedule.into();
    p.group = (schedule == "gis").then_some(2);
    p.offload = offload;
    cfg
}

fn run(cfg: &TrainConfig) -> (Vec<f64>, TrainSummary) {
    let mut losses = Vec::new();
    let summary = train(cfg, |e| {
        losses.push(e.loss);
        Ok(())
    })
    .unwrap();
    (losses, summary)
}

fn offloads(cfg: &TrainConfig) -> Vec<usize> {
    let (schedule, _) = plan(cfg).unwrap();
    let count = |program: &Vec<seqpipe_schedule::Action>| {
        program.iter().filter(|a| a.op == Op::Offload).count()
    };
    schedule.actions.iter().map(count).collect()
}

#[test]
fn planned_offload_leaves_the_losses_unchanged_and_lowers_the_measured_peak() {
    let cases = [
        ("1f1b", 1, 1),
        ("seq1f1b", 2, 1),
        ("slimpipe", 4, 2),
        ("zb-h1", 1, 1),
        ("gis", 1, 2),
        ("interleaved", 1, 2),
    ];
    for (schedule, slices, chunks) in cases {
        let (plain, base) = run(&config(schedule, slices, chunks, Offload::None));
        for offload in [Offload::Fraction(0.5), Offload::Auto] {
            let cfg = config(schedule, slices, chunks, offload);
            let case = format!("{schedule} offload {offload}");
            let planned = offloads(&cfg);
            assert!(
                planned[0] > 0,
                "{case}: nothing planned on stage 0: {planned:?}"
            );
            let (losses, summary) = run(&cfg);
            assert_eq!(losses, plain, "{case}: losses");
            let predicted = summary.predicted_saved_bytes.clone().unwrap();
            let measured: Vec<f64> = summary.peak_saved_bytes.iter().map(|&b| b as f64).collect();
            assert_eq!(
                measured, predicted,
                "{case}: measured vs predicted saved peak"
            );
            // Every unit whose offload saves memory goes: stage 0's peak must drop. A fraction
            // may pick units whose reload comes back before the peak.
            let (with, without) = (summary.peak_saved_bytes[0], base.peak_saved_bytes[0]);
            match offload {
                Offload::Auto => {
                    assert!(with < without, "{case}: stage 0 peak {with} vs {without}")
                }
                _ => assert!(with <= without, "{case}: stage 0 peak {with} vs {without}"),
            }
            println!(
                "{case}: offloads per stage {planned:?}, saved peaks {:?} (without {:?})",
                summary.peak_saved_bytes, base.peak_saved_bytes
            );
        }
    }
}

#[test]
fn offload_settings_outside_the_valid_ones_are_refused_naming_them() {
    for bad in ["1.5", "-0.1", "half", "NaN", "chunks:x", "chunks:-1"] {
        let e = bad.parse::<Offload>().unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("[0, 1]"), "{bad}: {e}");
    }
    let e = check(&config("gis", 1, 2, Offload::Chunks(3)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chunks:3") && e.contains("chunks:2"), "{e}");
    let e = TrainConfig::from_toml("[parallel]\noffload = 2.0\n").unwrap_err();
    assert!(e.to_string().contains("offload"), "{e}");
    let mut cfg = config("1f1b", 1, 1, Offload::Auto);
    cfg.parallel.schedule_file = Some("schedule.csv".into());
    let e = check(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("parallel.offload = auto") && e.contains("schedule_file"),
        "{e}"
    );
}

#[test]
fn the_setting_round_trips_through_toml() {
    for (text, want) in [
        ("\"none\"", Offload::None),
        ("\"auto\"", Offload::Auto),
        ("0.25", Offload::Fraction(0.25)),
        ("\"0.5\"", Offload::Fraction(0.5)),
        ("\"chunks:1\"", Offload::Chunks(1)),
    ] {
        let cfg = TrainConfig::from_toml(&format!("[parallel]\noffload = {text}\n")).unwrap();
        assert_eq!(cfg.parallel.offload, want, "{text}");
        let again = toml::to_string(&cfg).unwrap();
        assert_eq!(
            TrainConfig::from_toml(&again).unwrap().parallel.offload,
            want
        );
    }
}

/// SPEC §5.1's shape on the tiny model (d = 4 stages, v = 2 chunks, 8 micro-batches, GIS group
/// g = 4): stage 0's peak in units of one chunk × one micro-batch for interleaved 1F1B, GIS, GIS
/// with chunk 0 offloaded and GIS with every chunk offloaded, measured beside predicted. The
/// paper's figures: `d·v + d − 1` = 11, `d + (v−1)·g` = 8, about `(v−1)·g` = 4 (+2..4 in flight),
/// about 3–4.
#[test]
fn gis_offload_reproduces_the_shape_of_spec_5_1() {
    let run_case = |schedule: &str, offload: Offload| {
        let mut cfg = config(schedule, 1, 2, offload);
        cfg.parallel.group = (schedule == "gis").then_some(4);
        let (_, summary) = run(&cfg);
        let predicted = summary.predicted_saved_bytes.unwrap()[0];
        (summary.peak_saved_bytes[0] as f64, predicted)
    };
    // One unit: what stage 0 holds after its first forward (one micro-batch's records of one
    // chunk, its K/V included: the run is unsliced), as predicted and measured exactly.
    let mut cfg = config("gis", 1, 2, Offload::None);
    cfg.parallel.group = Some(4);
    let (schedule, partition) = plan(&cfg).unwrap();
    let slices = slice_ranges(&cfg).unwrap();
    let prediction = predict(&PredictInput::of(&cfg, &schedule, &partition, &slices))
        .unwrap()
        .unwrap();
    let first_forward = schedule.actions[0]
        .iter()
        .position(|a| a.op == Op::Forward)
        .unwrap();
    let unit = prediction[0].after_action[first_forward].0;
    let rows = [
        ("interleaved", Offload::None, 11.0),
        ("gis", Offload::None, 8.0),
        ("gis", Offload::Chunks(1), 4.0),
        ("gis", Offload::Auto, 3.5),
    ];
    let mut peaks = Vec::new();
    println!("| schedule | offload | stage 0 peak, units (measured / predicted) | SPEC §5.1 |");
    for (schedule, offload, spec) in rows {
        let (measured, predicted) = run_case(schedule, offload);
        assert_eq!(measured, predicted, "{schedule} {offload}");
        println!(
            "| {schedule} | {offload} | {:.2} / {:.2} | ≈ {spec} |",
            measured / unit,
            predicted / unit
        );
        peaks.push(measured);
    }
    assert!(
        peaks.windows(2).all(|w| w[1] < w[0]),
        "each row must hold less than the one before: {peaks:?}"
    );
}

/// `--memory-budget`: between the predicted peaks without offload and with every unit offloaded,
/// an offload is chosen and its predicted peaks (and the measured activation bytes on top of the
/// model states) fit; a generous budget offloads nothing; a budget below the model states, or one
/// nothing fits, is refused naming the shortfall.
#[test]
fn a_memory_budget_chooses_the_least_offload_that_fits() {
    let base = config("gis", 1, 2, Offload::None);
    let slices = slice_ranges(&base).unwrap();
    let worst_peak = |cfg: &TrainConfig| {
        let (schedule, partition) = plan(cfg).unwrap();
        let peaks = predicted_stage_peaks(cfg, &schedule, &partition, &slices).unwrap();
        peaks.into_iter().fold(0.0, f64::max)
    };
    let none = worst_peak(&base);
    let auto = worst_peak(&config("gis", 1, 2, Offload::Auto));
    assert!(
        auto < none,
        "offloading everything must lower the peak: {auto} vs {none}"
    );

    let mut cfg = base.clone();
    cfg.parallel.memory_budget = Some(((none + auto) / 2.0) as u64);
    let (_, summary) = run(&cfg);
    let (budget, peaks) = summary.budget.clone().unwrap();
    assert_ne!(summary.offload, Offload::None);
    assert!(
        peaks.iter().all(|&p| p <= budget as f64),
        "{peaks:?} vs {budget}"
    );
    let states = stage_states(&cfg.model, cfg.precision.dtype(), 4, 2)
        .unwrap()
        .unwrap();
    for (stage, (held, s)) in summary.peak_bytes.iter().zip(&states).enumerate() {
        assert!(
            *held as f64 + s <= budget as f64,
            "stage {stage}: {held} + {s} > {budget}"
        );
    }
    println!(
        "budget {budget}: offload = {}, predicted peaks {peaks:?} (without offload {none:.0}, \
         everything offloaded {auto:.0})",
        summary.offload
    );

    cfg.parallel.memory_budget = Some(none as u64 + 1);
    let (_, generous) = run(&cfg);
    assert_eq!(generous.offload, Offload::None);
    assert!(generous.offloaded_units.iter().all(|&n| n == 0));

    let largest_states = states.iter().copied().fold(0.0, f64::max);
    for (budget, needle) in [
        (1000, "model states"),
        (largest_states as u64 + 1, "does not fit"),
    ] {
        cfg.parallel.memory_budget = Some(budget);
        let e = plan(&cfg).unwrap_err();
        assert!(matches!(e.kind(), Error::Config(_)), "{e:?}");
        assert!(e.to_string().contains(needle), "{budget}: {e}");
    }
}

/// The host link's speed changes only how long the executor waits for copies: at an emulated
/// 10 MB/s (each unit's copy takes milliseconds, longer than a forward of the tiny model) the
/// losses, and the bytes held after every action, are those of the unlimited link, and the
/// stages report time spent waiting. A bandwidth that is not a positive figure is refused.
#[test]
fn a_slow_host_link_changes_the_waiting_and_nothing_else() {
    let fast = config("gis", 1, 2, Offload::Auto);
    let mut slow = fast.clone();
    slow.parallel.host_link_bandwidth = Some(0.01);
    let (fast_losses, fast_run) = run(&fast);
    let (slow_losses, slow_run) = run(&slow);
    assert_eq!(slow_losses, fast_losses);
    let held = |s: &TrainSummary| -> Vec<Vec<_>> {
        s.last_step
            .iter()
            .map(|r| r.events.iter().map(|e| e.held).collect())
            .collect()
    };
    assert_eq!(held(&slow_run), held(&fast_run));
    let waited: f64 = slow_run.last_step.iter().map(|r| r.link_wait_seconds).sum();
    assert!(waited > 0.0, "a 10 MB/s link must make the stages wait");
    println!(
        "link wait per stage at 10 MB/s: {:?} s; unlimited: {:?} s",
        slow_run
            .last_step
            .iter()
            .map(|r| r.link_wait_seconds)
            .collect::<Vec<_>>(),
        fast_run
            .last_step
            .iter()
            .map(|r| r.link_wait_seconds)
            .collect::<Vec<_>>()
    );
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        slow.parallel.host_link_bandwidth = Some(bad);
        let e = check(&slow).unwrap_err().to_string();
        assert!(
            e.contains("host_link_bandwidth") && e.contains("positive"),
            "{bad}: {e}"
        );
    }
    // A bandwidth with nothing to move would be ignored: refused instead.
    let mut idle = config("gis", 1, 2, Offload::None);
    idle.parallel.host_link_bandwidth = Some(1.0);
    let e = check(&idle).unwrap_err().to_string();
    assert!(e.contains("nothing is offloaded"), "{e}");
}
