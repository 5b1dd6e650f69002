//! `bench exchange`: SlimPipe's attention context exchange on this CPU, measured beside the
//! simulator.
//!
//! SlimPipe on 2 stages (one thread each), 4 micro-batches of one 1024-token sequence in 8
//! uniform slices, runs with and without `parallel.attention_exchange`, alternating step by step.
//! Per run: the median iteration time; the executor's attention counts per steady step (largest
//! stage over smallest, median and largest over the steps); and the simulated bubble of the run's
//! schedule, each compute priced by a cost fitted to the measured durations of the run without
//! the exchange (`seconds = a + b · attention entries`, least squares, forwards and backwards
//! apart), applied to the attention entries the executor counted for that compute in each run.

use std::collections::HashMap;

use anyhow::Result;
use seqpipe_schedule::{simulate, Action, Lowered, Op, P2p};
use seqpipe_trainer::config::{ParallelConfig, Precision, TrainConfig};
use seqpipe_trainer::runtime::record::step_attention_ratios;
use seqpipe_trainer::runtime::StageReport;

use super::exchange_sim::OpTimes;
use super::offload::{input, median, pipeline};
use super::table::Table;

/// Timed steps per run (after one untimed warm-up step).
pub const STEPS: usize = 5;

/// SlimPipe on 2 stages with or without the exchange.
pub fn config(exchange: bool) -> TrainConfig {
    let mut cfg = TrainConfig {
        precision: Precision::F32,
        ..TrainConfig::default()
    };
    let m = &mut cfg.model;
    (m.hidden, m.ffn_hidden, m.heads, m.kv_heads, m.layers) = (256, 688, 4, 4, 4);
    m.max_positions = 2048;
    (cfg.data.batch, cfg.data.seq_len) = (1, 1024);
    cfg.parallel = ParallelConfig {
        stages: 2,
        microbatches: 4,
        schedule: "slimpipe".into(),
        slices: 8,
        chunks: 1,
        attention_exchange: exchange,
        ..ParallelConfig::default()
    };
    cfg
}

/// One run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExchangeRun {
    /// With the exchange.
    pub exchange: bool,
    /// Median iteration seconds.
    pub seconds: f64,
    /// Largest over smallest stage attention per steady step: median, largest.
    pub step_ratio: (f64, f64),
    /// Simulated bubble under the fitted cost.
    pub bubble: f64,
    /// Simulated makespan under the fitted cost, seconds.
    pub makespan: f64,
}

/// `(a, b)` of `y = a + b·x` by least squares.
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

/// Per compute of `schedule`: (is forward, attention entries, median seconds) over the steps.
fn computes(steps: &[Vec<StageReport>], schedule: &Lowered) -> HashMap<Action, (bool, f64, f64)> {
    let mut seen: HashMap<Action, (bool, f64, Vec<f64>)> = HashMap::new();
    for reports in steps {
        for (r, program) in reports.iter().zip(&schedule.actions) {
            for (e, a) in r
                .events
                .iter()
                .zip(program)
                .filter(|(_, a)| a.op.is_compute())
            {
                let entry = seen
                    .entry(*a)
                    .or_insert((a.op == Op::Forward, 0.0, Vec::new()));
                entry.1 = e.attention as f64;
                entry.2.push(e.end - e.start);
            }
        }
    }
    seen.into_iter()
        .map(|(a, (f, x, d))| (a, (f, x, median(d))))
        .collect()
}

/// The steady steps' largest over smallest stage attention: (median, largest).
fn step_ratio(reports: &[StageReport], steps: &[Vec<(usize, usize)>]) -> (f64, f64) {
    let ratios = step_attention_ratios(reports, steps);
    match ratios.is_empty() {
        true => (1.0, 1.0),
        false => (
            median(ratios.clone()),
            ratios.iter().copied().fold(0.0, f64::max),
        ),
    }
}

/// Runs the benchmark; `progress` hears what runs. Also gives the fitted op times.
pub fn run_all(mut progress: impl FnMut(&str)) -> Result<(Vec<ExchangeRun>, OpTimes)> {
    let cfgs = [config(false), config(true)];
    let mut runs = Vec::new();
    for cfg in &cfgs {
        runs.push((pipeline(cfg)?, input(cfg)?, Vec::new(), Vec::new()));
    }
    for step in 0..=STEPS {
        for (i, (pl, inp, seconds, steps)) in runs.iter_mut().enumerate() {
            progress(&format!("step {step}, exchange {}", i == 1));
            let (reports, s) = pl.0.run_iteration(inp)?;
            if step > 0 {
                seconds.push(s);
                steps.push(reports);
            }
        }
    }
    // The cost, fitted on the run without the exchange.
    let plain = computes(&runs[0].3, &runs[0].0 .1);
    let model = |forward: bool| {
        let points: Vec<(f64, f64)> = plain
            .values()
            .filter(|c| c.0 == forward)
            .map(|c| (c.1, c.2))
            .collect();
        fit(&points)
    };
    let (fwd, bwd) = (model(true), model(false));
    let cfg = &cfgs[0];
    let times = OpTimes {
        forward: fwd,
        backward: bwd,
        layers: cfg.model.layers as u64 / u64::from(cfg.parallel.stages),
        batch_heads: (cfg.data.batch * cfg.model.heads) as u64,
        seq_len: cfg.data.seq_len as u64,
    };
    let mut out = Vec::new();
    for (i, (pl, inp, seconds, steps)) in runs.into_iter().enumerate() {
        let exchange_steps = pl.0.exchange_steps(&inp.slices)?;
        let schedule = pl.1;
        let counted = computes(&steps, &schedule);
        let cost = |a: &Action| match counted.get(a) {
            Some(&(forward, x, _)) => {
                let (a0, b) = if forward { fwd } else { bwd };
                (a0 + b * x).max(0.0)
            }
            None => 0.0,
        };
        let sim = simulate(&schedule, cost, &P2p::free())?;
        out.push(ExchangeRun {
            exchange: i == 1,
            seconds: median(seconds),
            step_ratio: step_ratio(&steps[0], &exchange_steps),
            bubble: sim.bubble_ratio,
            makespan: sim.makespan,
        });
    }
    Ok((out, times))
}

/// The table of [`run_all`]'s runs.
pub fn table(runs: &[ExchangeRun]) -> Result<Table> {
    let mut t = Table::new(&[
        "exchange",
        "measured s / iteration",
        "attention max/min per steady step: median",
        "largest",
        "simulated bubble",
        "simulated s / iteration",
    ]);
    for r in runs {
        t.push(vec![
            if r.exchange { "on" } else { "off" }.into(),
            format!("{:.3}", r.seconds),
            format!("{:.3}", r.step_ratio.0),
            format!("{:.3}", r.step_ratio.1),
            format!("{:.1} %", 100.0 * r.bubble),
            format!("{:.3}", r.makespan),
        ])?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurations_pass_the_trainers_checks() {
        for exchange in [false, true] {
            seqpipe_trainer::checks::check(&config(exchange)).unwrap();
        }
    }

    #[test]
    fn the_fit_recovers_a_line() {
        let (a, b) = fit(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]);
        assert!((a - 1.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12);
    }
}
