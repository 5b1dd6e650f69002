//! The passkey probe: `seqpipe eval --passkey-depths` scores fresh keys at every length and depth
//! exactly as the training step scores the same sequences, writes its heat map without touching
//! files it did not write, and names bad depths and lengths; a model trained on the task finds
//! the keys that an untrained one does not.

mod common;

use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use common::seqpipe;
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::checkpoint::hf;
use seqpipe_trainer::data::PasskeySource;
use seqpipe_trainer::eval::{passkey_probe, PasskeyProbe};
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::{IterationInput, Pipeline, Weights};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gqa")
}

#[test]
fn each_cell_counts_the_keys_whose_every_answer_token_is_predicted() {
    let (model, params) = hf::load(&fixture(), DType::F32).unwrap();
    let source = PasskeySource::tokens(model.vocab, 5).unwrap();
    let probe = PasskeyProbe {
        depths: vec![0.0, 1.0],
        trials: 3,
    };
    let cells = passkey_probe(&model, &params, &source, &probe, &[16, 40]).unwrap();
    assert_eq!(cells.len(), 4);
    // The same keys again, scored one by one through a pipeline of the other shape (two
    // stages): the cell's counts are these sequences' answers.
    let mut keys = PasskeySource::tokens(model.vocab, 5).unwrap();
    for cell in &cells {
        if cell.depth == 0.0 {
            keys = PasskeySource::tokens(model.vocab, 5).unwrap();
        }
        let mut pl = Pipeline::with_weights(
            &model,
            ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 1),
            None,
            &OptimConfig::default(),
            Weights::Loaded(&params),
            DType::F32,
            Duration::from_secs(30),
        )
        .unwrap();
        let (mut exact, mut hits) = (0, 0);
        for _ in 0..cell.trials {
            let s = keys.sequence_at(cell.length, cell.depth).unwrap();
            let report = pl
                .compute_gradients(&IterationInput {
                    ragged: None,
                    documents: None,
                    tokens: vec![
                        Tensor::from_vec(s.tokens, (1, cell.length + 1), &Device::Cpu).unwrap(),
                    ],
                    masks: Some(vec![Tensor::from_vec(
                        s.mask,
                        (1, cell.length),
                        &Device::Cpu,
                    )
                    .unwrap()]),
                    slices: std::iter::once(0..cell.length).collect(),
                    normaliser: 1.0,
                })
                .unwrap();
            assert_eq!(report.answers.scored, 5, "five answer digits");
            exact += usize::from(report.answers.correct == 5);
            hits += report.answers.correct;
        }
        assert_eq!(cell.retrieved, exact, "{cell:?}");
        assert_eq!(cell.token_accuracy, hits as f64 / 15.0, "{cell:?}");
    }
}

#[test]
fn the_command_prints_both_tables_writes_its_heat_map_and_names_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("probe.svg");
    let model = fixture();
    let common = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--lengths",
        "16,40",
        "--sequences",
        "2",
    ];
    let run = |extra: &[&str]| seqpipe(&[&common[..], extra].concat());
    let (ok, out, err) = run(&[
        "--passkey-depths",
        "0,0.5,1",
        "--passkey-trials",
        "2",
        "--format",
        "json",
        "--heatmap",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["perplexity"].as_array().unwrap().len(), 2);
    let cells = json["passkey"].as_array().unwrap();
    assert_eq!(cells.len(), 6);
    assert_eq!(
        (cells[5]["length"].as_u64(), cells[5]["depth"].as_f64()),
        (Some(40), Some(1.0))
    );
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(
        drawn.matches("/2\n").count(),
        6,
        "one labelled cell per length and depth"
    );
    // The table form; then a file seqpipe did not write is left alone.
    let (ok, out, err) = run(&["--passkey-depths", "0.25"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("| length | 0.25 | all |") && out.contains("| 40 |"),
        "{out}"
    );
    let foreign = dir.path().join("mine.svg");
    std::fs::write(&foreign, "keep").unwrap();
    let (ok, _, err) = run(&[
        "--passkey-depths",
        "0",
        "--heatmap",
        foreign.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not a heat map seqpipe wrote"), "{err}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "keep");
    for (extra, needle) in [
        (&["--passkey-depths", "1.5"][..], "depth 1.5"),
        (
            &["--passkey-depths", "0", "--lengths", "10"][..],
            "at least 11",
        ),
        (
            &["--passkey-depths", "0", "--passkey-trials", "0"][..],
            "0 trials",
        ),
        (&["--heatmap", "x.svg"][..], "--passkey-depths"),
        (
            &["--passkey-depths", "0", "--heatmap", "/"][..],
            "directory that exists",
        ),
        (
            &["--passkey-depths", "0", "--heatmap", "/no/such/dir/x.svg"][..],
            "directory that exists",
        ),
    ] {
        let (ok, _, err) = run(extra);
        assert!(!ok && err.contains(needle), "{extra:?}: {err}");
    }
}

#[test]
fn a_model_trained_on_the_task_finds_the_keys_an_untrained_one_does_not() {
    use seqpipe_trainer::checkpoint::export::model_dir;
    use seqpipe_trainer::config::{DataKind, TrainConfig};
    use seqpipe_trainer::model::ModelConfig;
    use seqpipe_trainer::train::{train_with, RunOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TrainConfig {
        steps: 150,
        model: ModelConfig {
            vocab: 64,
            hidden: 64,
            ffn_hidden: 128,
            heads: 2,
            kv_heads: 2,
            layers: 2,
            max_positions: 128,
            ..ModelConfig::tiny()
        },
        ..TrainConfig::default()
    };
    (cfg.data.kind, cfg.data.batch, cfg.data.seq_len) = (DataKind::Passkey, 32, 31);
    let p = &mut cfg.parallel;
    (p.stages, p.microbatches, p.slices, p.chunks) = (2, 2, 2, 1);
    p.schedule = "slimpipe".into();
    (cfg.optim.lr, cfg.optim.min_lr_ratio) = (1e-2, 0.1);
    (cfg.optim.warmup_steps, cfg.optim.weight_decay) = (50, 0.0);
    cfg.output.checkpoint_dir = Some(dir.path().join("ckpt"));
    train_with(&cfg, &RunOptions::default(), |_| Ok(())).unwrap();
    let (trained, _) = model_dir(&dir.path().join("ckpt")).unwrap();
    let (model, params) = hf::load(&trained, DType::F32).unwrap();
    let untrained = common::full_params(&model, 1, DType::F32);
    let source = PasskeySource::tokens(model.vocab, 77).unwrap();
    let probe = PasskeyProbe {
        depths: vec![0.0, 0.5, 1.0],
        trials: 5,
    };
    let found = |params| -> Vec<usize> {
        passkey_probe(&model, params, &source, &probe, &[31])
            .unwrap()
            .iter()
            .map(|c| c.retrieved)
            .collect()
    };
    assert_eq!(found(&params), [5, 5, 5], "trained at 31 tokens: every key");
    assert_eq!(
        found(&untrained),
        [0, 0, 0],
        "untrained: five digits by chance"
    );
}
