//! Invalid configurations are refused before any work, with a message naming the bad value; a
//! stage that fails mid-iteration stops every stage quickly, and the error names it.
// A one-slice plan is a Vec holding one token range, by design.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::{data, tiny_model};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::config::TrainConfig;
use seqpipe_trainer::error::Error;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};
use seqpipe_trainer::train::check;

fn problem(edit: impl FnOnce(&mut TrainConfig)) -> String {
    let mut cfg = TrainConfig::default();
    edit(&mut cfg);
    let e = check(&cfg).expect_err("the configuration must be refused");
    assert!(
        matches!(e.kind(), Error::Config(_)),
        "a configuration error: {e:?}"
    );
    e.to_string()
}

#[test]
fn default_configuration_is_valid() {
    check(&TrainConfig::default()).unwrap();
}

#[test]
fn invalid_configurations_are_refused_up_front() {
    let m = problem(|c| c.parallel.stages = 16);
    assert!(
        m.contains("cannot split 8 layers over 32 virtual stages"),
        "{m}"
    );
    let m = problem(|c| {
        c.data.seq_len = 3;
        c.parallel.slices = 4;
    });
    assert!(
        m.contains("parallel.slices = 4 is more than the 3 tokens"),
        "{m}"
    );
    let m = problem(|c| {
        c.parallel.schedule = "seq1f1b-i".into();
        c.parallel.slices = 3;
    });
    assert!(
        m.contains("slices per sequence (n) = 3 is not supported"),
        "{m}"
    );
    let m = problem(|c| c.parallel.schedule = "2f2b".into());
    assert!(
        m.contains("unknown schedule `2f2b`") && m.contains("slimpipe"),
        "{m}"
    );
    let m = problem(|c| c.model.kv_heads = 3);
    assert!(
        m.contains("model.kv_heads = 3 must divide model.heads = 4"),
        "{m}"
    );
    let m = problem(|c| c.parallel.layers = Some(vec![8, 0, 0, 0, 0, 0, 0, 0]));
    assert!(m.contains("virtual stage 1 has no layer"), "{m}");
    let m = problem(|c| c.optim.lr = f64::NAN);
    assert!(m.contains("optim.lr = NaN"), "{m}");
    let m = problem(|c| c.data.seq_len = 5000);
    assert!(m.contains("model.max_positions = 4096"), "{m}");
}

#[test]
fn unknown_toml_keys_are_errors() {
    let e = TrainConfig::from_toml("[parallel]\nstagez = 4\n").unwrap_err();
    assert!(matches!(e.kind(), Error::Config(_)), "{e:?}");
    assert!(e.to_string().contains("stagez"), "{e}");
    let cfg = TrainConfig::from_toml("steps = 3\n[parallel]\nstages = 2\n").unwrap();
    assert_eq!(
        (
            cfg.steps,
            cfg.parallel.stages,
            cfg.parallel.schedule.as_str()
        ),
        (3, 2, "slimpipe")
    );
}

/// A target outside the vocabulary in the last micro-batch makes the last stage fail in the
/// middle of the iteration, while the others wait on it.
#[test]
fn a_failing_stage_stops_every_stage_and_is_named() {
    let model = tiny_model();
    let cfg = ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 4);
    let mut pl = Pipeline::new(
        &model,
        cfg,
        None,
        &OptimConfig::default(),
        1,
        DType::F32,
        Duration::from_secs(20),
    )
    .unwrap();
    let mut tokens = data(&model, 4, 1, 8, 3);
    let mut last: Vec<u32> = tokens[3].flatten_all().unwrap().to_vec1().unwrap();
    *last.last_mut().unwrap() = 999; // a target no vocabulary of 32 has
    tokens[3] = Tensor::from_vec(last, (1, 9), &Device::Cpu).unwrap();
    let input = IterationInput {
        ragged: None,
        documents: None,
        tokens,
        masks: None,
        slices: vec![0..8],
        normaliser: 32.0,
    };
    let started = Instant::now();
    let err = pl.run_iteration(&input).unwrap_err();
    // Typed: the root cause first, then the stages that lost it as a peer.
    let Error::Ranks { failures } = err.kind() else {
        panic!("every stage fails: {err:?}");
    };
    assert!(
        matches!(failures[0].kind(), Error::Tensor(_) | Error::Runtime(_)),
        "{err:?}"
    );
    assert!(
        failures[1..]
            .iter()
            .all(|f| matches!(f.kind(), Error::PeerLost(_))),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let first = err.lines().nth(1).unwrap_or("");
    assert!(
        first.contains("stage 3 step"),
        "the root cause must come first and name stage 3:\n{err}"
    );
    assert!(
        err.contains("rank 3 disconnected"),
        "the waiting stages must name stage 3:\n{err}"
    );
    // The pipeline refuses to run again rather than hanging on a missing transport.
    let again = pl.run_iteration(&input).unwrap_err();
    assert!(
        matches!(again.kind(), Error::TransportLost { .. }),
        "{again:?}"
    );
    assert!(again.to_string().contains("transport was lost"), "{again}");
}
