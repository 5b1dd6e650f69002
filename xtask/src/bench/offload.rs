//! `bench offload`: PipeOffload's overlap of host transfers with compute, measured on this CPU
//! with the trainer's emulated host link (`parallel.host_link_bandwidth`), beside the
//! simulator's prediction.
//!
//! One configuration — GIS on 2 stages × 2 chunks, 4 micro-batches (the schedule PipeOffload
//! pairs with), a model wide enough that a unit's forward takes tens of milliseconds, one thread
//! per stage — runs without offload and with every unit worth offloading (`offload = "auto"`)
//! over an unlimited link (memory copies only) and at host-link bandwidths chosen for
//! PipeOffload's `k` (the largest unit's transfer time over the median forward time, measured in
//! a warm-up step): every transfer hides behind compute for `k ≤ 1`; at `k = 2` the stages wait.
//! The runs alternate step by step in one process; each figure is a median over the timed
//! steps.
//!
//! The prediction: the `schedule` simulator on the plain run's own measured action durations
//! (medians per action), and for the offload runs `memory::simulate_with_host_link` — the same
//! durations, each transfer `bytes / bandwidth` on an in-order link, joined where the executor
//! joins it. Predicted slowdown = simulated makespan with offload ÷ without.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use seqpipe_memory::{simulate_with_host_link, unit_key};
use seqpipe_schedule::{simulate, Action, Lowered, Op, P2p, Unit};
use seqpipe_trainer::config::{ParallelConfig, Precision, TrainConfig};
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::predict::{moved_bytes, PredictInput};
use seqpipe_trainer::runtime::offload::Offload;
use seqpipe_trainer::runtime::rank_loop::plan;
use seqpipe_trainer::runtime::{IterationInput, Pipeline, StageReport};
use seqpipe_trainer::train::{schedule_config, slice_ranges};

use super::table::{pct, Table};

/// The `k` of each offload run.
pub const KS: &[f64] = &[0.5, 1.0, 2.0];

/// Timed steps per run (after one untimed warm-up step).
pub const STEPS: usize = 7;

/// The configuration: offload `offload` of GIS on a model wide enough to time.
pub fn config(offload: Offload) -> TrainConfig {
    let mut cfg = TrainConfig {
        precision: Precision::F32,
        ..TrainConfig::default()
    };
    let m = &mut cfg.model;
    (m.hidden, m.ffn_hidden, m.heads, m.kv_heads, m.layers) = (512, 1376, 8, 8, 4);
    (cfg.data.batch, cfg.data.seq_len) = (1, 256);
    cfg.parallel = ParallelConfig {
        stages: 2,
        microbatches: 4,
        schedule: "gis".into(),
        group: Some(2),
        slices: 1,
        chunks: 2,
        offload,
        ..ParallelConfig::default()
    };
    cfg
}

/// One row of the result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OffloadRun {
    /// Whether the run offloads.
    pub offload: bool,
    /// `k` the bandwidth was chosen for (`None`: unlimited, or no offload).
    pub k: Option<f64>,
    /// Host-link bandwidth, GB/s (`None`: unlimited, or no offload).
    pub bandwidth_gbs: Option<f64>,
    /// Median iteration seconds.
    pub seconds: f64,
    /// Median seconds the stages waited for the link (the worst stage).
    pub link_wait: f64,
    /// Measured slowdown: median seconds ÷ the plain run's.
    pub measured: f64,
    /// Predicted slowdown (see the module header).
    pub predicted: f64,
}

/// A pipeline for `cfg` running the schedule `cfg` plans (with its offloads).
pub(super) fn pipeline(cfg: &TrainConfig) -> Result<(Pipeline, Lowered)> {
    let (schedule, _) = plan(cfg)?;
    let mut pl = Pipeline::new(
        &cfg.model,
        schedule_config(cfg)?,
        None,
        &OptimConfig::default(),
        cfg.seed,
        DType::F32,
        Duration::from_secs(120),
    )?;
    pl.set_schedule(schedule.clone())?;
    Ok((pl, schedule))
}

/// One micro-batch per entry of fixed pseudo-random tokens.
pub(super) fn input(cfg: &TrainConfig) -> Result<IterationInput> {
    let (b, s, m) = (
        cfg.data.batch,
        cfg.data.seq_len,
        cfg.parallel.microbatches as usize,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % cfg.model.vocab as u64) as u32
    };
    let tokens = (0..m)
        .map(|_| {
            let ids: Vec<u32> = (0..b * (s + 1)).map(|_| next()).collect();
            Tensor::from_vec(ids, (b, s + 1), &Device::Cpu)
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(IterationInput {
        ragged: None,
        documents: None,
        tokens,
        masks: None,
        slices: slice_ranges(cfg)?,
        normaliser: (m * b * s) as f64,
    })
}

pub(super) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median measured duration of every compute action over the steps' reports (communication
/// and memory actions cost nothing on the compute stream).
fn action_costs(steps: &[Vec<StageReport>], schedule: &Lowered) -> HashMap<Action, f64> {
    let mut durations: HashMap<Action, Vec<f64>> = HashMap::new();
    for reports in steps {
        for (r, program) in reports.iter().zip(&schedule.actions) {
            for (e, a) in r.events.iter().zip(program) {
                if a.op.is_compute() {
                    durations.entry(*a).or_default().push(e.end - e.start);
                }
            }
        }
    }
    durations.into_iter().map(|(a, d)| (a, median(d))).collect()
}

/// Bytes an offload of each unit moves, by stage.
fn unit_bytes(cfg: &TrainConfig, schedule: &Lowered) -> Result<HashMap<(usize, Unit), f64>> {
    let (_, partition) = plan(cfg)?;
    let slices = slice_ranges(cfg)?;
    let input = PredictInput::of(cfg, schedule, &partition, &slices);
    let mut bytes = HashMap::new();
    for (stage, program) in schedule.actions.iter().enumerate() {
        for a in program.iter().filter(|a| a.op == Op::Offload) {
            let moved = moved_bytes(&input, stage, &unit_key(a))?.context("no prediction")?;
            bytes.insert((stage, a.unit()), moved);
        }
    }
    Ok(bytes)
}

/// What one step of a run measured: iteration seconds and the worst stage's link wait.
type Step = (f64, f64);

/// Runs the benchmark; `progress` hears what runs.
pub fn run_all(mut progress: impl FnMut(&str)) -> Result<Vec<OffloadRun>> {
    let plain_cfg = config(Offload::None);
    let offload_cfg = config(Offload::Auto);
    let inp = input(&plain_cfg)?;
    let (mut plain, plain_schedule) = pipeline(&plain_cfg)?;
    progress("offload: calibrating the forward time");
    let warm = plain.compute_gradients(&inp)?;
    let (mut link, offload_schedule) = pipeline(&offload_cfg)?;
    let bytes = unit_bytes(&offload_cfg, &offload_schedule)?;
    let largest = bytes.values().copied().fold(0.0, f64::max);
    let forward = median(forward_times(&warm.stages));
    // Bytes per second of each link: unlimited, then the bandwidth giving each `k`.
    let bandwidths: Vec<f64> = std::iter::once(f64::INFINITY)
        .chain(KS.iter().map(|k| largest / (k * forward)))
        .collect();
    let mut plain_steps = Vec::new();
    let mut offload_steps: Vec<Vec<Step>> = vec![Vec::new(); bandwidths.len()];
    for step in 0..=STEPS {
        progress(&format!("offload: step {step} of {STEPS} (0 is a warm-up)"));
        let r = plain.compute_gradients(&inp)?;
        for (steps, &bw) in offload_steps.iter_mut().zip(&bandwidths) {
            link.set_host_bandwidth(bw.is_finite().then_some(bw));
            let o = link.compute_gradients(&inp)?;
            let waits = o.stages.iter().map(|s| s.link_wait_seconds);
            if step > 0 {
                steps.push((o.iteration_seconds, waits.fold(0.0, f64::max)));
            }
        }
        if step > 0 {
            plain_steps.push(r);
        }
    }
    let reports: Vec<Vec<StageReport>> = plain_steps.iter().map(|r| r.stages.clone()).collect();
    let costs = action_costs(&reports, &plain_schedule);
    let cost = |a: &Action| costs.get(a).copied().unwrap_or(0.0);
    let plain_makespan = simulate(&plain_schedule, cost, &P2p::free())?.makespan;
    let plain_seconds = median(plain_steps.iter().map(|r| r.iteration_seconds).collect());
    let mut runs = vec![OffloadRun {
        offload: false,
        k: None,
        bandwidth_gbs: None,
        seconds: plain_seconds,
        link_wait: 0.0,
        measured: 1.0,
        predicted: 1.0,
    }];
    let ks = std::iter::once(None).chain(KS.iter().copied().map(Some));
    for ((k, bw), steps) in ks.zip(&bandwidths).zip(offload_steps) {
        let moved = |stage: usize, u: &Unit| bytes.get(&(stage, *u)).copied().unwrap_or(0.0);
        let (sim, _) = simulate_with_host_link(&offload_schedule, cost, moved, *bw, &P2p::free())?;
        let seconds = median(steps.iter().map(|s| s.0).collect());
        runs.push(OffloadRun {
            offload: true,
            k,
            bandwidth_gbs: bw.is_finite().then_some(bw / 1e9),
            seconds,
            link_wait: median(steps.iter().map(|s| s.1).collect()),
            measured: seconds / plain_seconds,
            predicted: sim.makespan / plain_makespan,
        });
    }
    Ok(runs)
}

/// Durations of the forwards of every stage in one step's reports.
fn forward_times(reports: &[StageReport]) -> Vec<f64> {
    reports
        .iter()
        .flat_map(|r| r.events.iter().filter(|e| e.op == Op::Forward))
        .map(|e| e.end - e.start)
        .collect()
}

/// The Markdown/CSV table of the runs.
pub fn table(runs: &[OffloadRun]) -> Result<Table> {
    let mut t = Table::new(&[
        "offload",
        "k",
        "host link GB/s",
        "step ms (median)",
        "link wait ms (worst stage)",
        "slowdown measured",
        "slowdown predicted",
        "error",
    ]);
    for r in runs {
        t.push(vec![
            if r.offload { "auto" } else { "none" }.into(),
            r.k.map_or("-".into(), |k| format!("{k:.1}")),
            match (r.offload, r.bandwidth_gbs) {
                (false, _) => "-".into(),
                (true, None) => "unlimited".into(),
                (true, Some(b)) => format!("{b:.3}"),
            },
            format!("{:.1}", 1e3 * r.seconds),
            format!("{:.1}", 1e3 * r.link_wait),
            format!("{:.3}×", r.measured),
            format!("{:.3}×", r.predicted),
            pct(r.measured / r.predicted - 1.0),
        ])?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurations_pass_the_trainers_checks_and_offload() {
        for offload in [Offload::None, Offload::Auto] {
            seqpipe_trainer::train::check(&config(offload)).unwrap();
        }
        let cfg = config(Offload::Auto);
        let (_, schedule) = pipeline(&cfg).unwrap();
        let bytes = unit_bytes(&cfg, &schedule).unwrap();
        assert!(
            !bytes.is_empty() && bytes.values().all(|&b| b > 0.0),
            "{bytes:?}"
        );
    }
}
