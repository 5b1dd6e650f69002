//! The two first questions about memory: how much does each stage of a configuration hold at its
//! peak, and which plan is best under a budget.
//!
//! `cargo run -p seqpipe-memory --example fit_llama70b`

use seqpipe_memory::slicing::preset;
use seqpipe_memory::*;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let shape = preset("llama-70b")?;
    // SlimPipe on 8 stages, 8 slices, 10 chunks, TP 8; 16 micro-batches of 64K tokens.
    let config = StaticConfig {
        activation: ActivationModel::new(shape, Parallelism::new(8, 1, 1)?)?,
        states: StateOptions::default(),
        kind: PipelineKind::SlimPipe {
            slices: 8,
            chunks: 10,
        },
        stages: 8,
        microbatches: 16,
        seq_len: 64 * 1024,
        offload_fraction: 0.0,
    };
    for peak in config.peaks()? {
        println!(
            "stage {}: {:5.2} GiB activations ({} units in flight), {:5.2} GiB model states",
            peak.stage,
            peak.activations / GIB,
            peak.in_flight_units,
            peak.states.total() / GIB
        );
    }

    // The best plans for 512K tokens on 256 H100s with 80 GB each.
    let gpu = gpu_preset("h100")?;
    let space = SearchSpace {
        shape,
        seq_len: 512 * 1024,
        gpus: 256,
        global_batch: 64,
        gpu,
        budget_bytes: gpu.memory_bytes,
        efficiency: 0.5.into(),
        max_tp: 8,
        max_cp: 8,
        min_stages: 2,
    };
    for plan in search(&space)?.iter().filter(|e| e.fits()).take(3) {
        let c = &plan.candidate;
        println!(
            "{} p{} {:?} m{}: peak {:.1} GB, predicted MFU {:.1} %",
            c.kind,
            c.stages,
            c.parallel,
            c.microbatches,
            plan.peak_bytes / 1e9,
            100.0 * plan.mfu
        );
    }
    Ok(())
}
