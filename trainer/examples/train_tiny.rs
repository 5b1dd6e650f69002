//! Train the tiny model from a configuration in library code: a TOML text (the same schema as
//! `seqpipe train --config`), checked, then run with a callback per step.
//!
//! `cargo run --release -p seqpipe-trainer --example train_tiny`

use seqpipe_trainer::config::TrainConfig;
use seqpipe_trainer::train::{check, train_with, RunOptions};

const CONFIG: &str = r#"
steps = 20
[parallel]
stages = 2
schedule = "seq1f1b"
microbatches = 4
slices = 2
chunks = 1
[data]
seq_len = 128
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg: TrainConfig = toml::from_str(CONFIG)?;
    check(&cfg)?; // every problem at once, naming the field and what would be valid
    let summary = train_with(&cfg, &RunOptions::default(), |step| {
        println!("step {:>2}: loss {:.4}", step.step, step.loss);
        Ok(())
    })?;
    println!(
        "loss {:.4} → {:.4} at {:.0} tokens/s",
        summary.first_loss, summary.final_loss, summary.tokens_per_sec
    );
    Ok(())
}
