//! The synthetic long-context task is learnable through the pipeline: a 2-layer model trained
//! with SlimPipe over 2 stages and 2 slices goes from chance (one key in `n`) to near-perfect
//! retrieval of values bound only in each sequence's own context. A model that did not carry
//! the context across slices and stages (or a broken loss mask) would stay at chance.

use seqpipe_trainer::config::{DataKind, TrainConfig};
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::train::{train_with, RunOptions};

#[test]
fn retrieval_accuracy_rises_far_above_chance() {
    let mut cfg = TrainConfig {
        steps: 300,
        model: ModelConfig {
            vocab: 64,
            hidden: 64,
            ffn_hidden: 128,
            heads: 2,
            kv_heads: 2,
            layers: 2,
            max_positions: 64,
            ..ModelConfig::tiny()
        },
        ..TrainConfig::default()
    };
    cfg.data.kind = DataKind::Retrieval;
    cfg.data.batch = 16;
    cfg.data.seq_len = 32;
    cfg.parallel.stages = 2;
    cfg.parallel.schedule = "slimpipe".into();
    cfg.parallel.microbatches = 2;
    cfg.parallel.slices = 2;
    cfg.parallel.chunks = 1;
    cfg.optim.lr = 3e-3;
    cfg.optim.min_lr_ratio = 1.0;
    cfg.optim.warmup_steps = 30;
    cfg.optim.weight_decay = 0.0;

    let mut curve = Vec::new();
    let summary = train_with(&cfg, &RunOptions::default(), |e| {
        curve.push(e.accuracy.unwrap());
        Ok(())
    })
    .unwrap();
    let chance = summary.chance_accuracy.unwrap();
    let last: f64 = curve[curve.len() - 20..].iter().sum::<f64>() / 20.0;
    let first: f64 = curve[..20].iter().sum::<f64>() / 20.0;
    let every_50: Vec<String> = curve
        .iter()
        .step_by(50)
        .map(|a| format!("{:.2}", a))
        .collect();
    assert!((chance - 1.0 / 7.0).abs() < 1e-12, "vocab 64 gives 7 keys");
    assert!(
        first < 2.5 * chance,
        "untrained accuracy {first:.3} should be near chance {chance:.3}"
    );
    assert!(
        last > 0.8,
        "accuracy over the last 20 steps {last:.3} (chance {chance:.3}); curve every 50 steps: {}",
        every_50.join(" ")
    );
}
