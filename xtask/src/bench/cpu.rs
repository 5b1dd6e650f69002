//! `bench cpu`: real training runs of a small model on this machine's CPU, one per (sequence
//! length, schedule), measured beside the planners' predictions for the same configuration.
//!
//! Each configuration runs [`REPS`] times, the repetitions of all configurations interleaved, and
//! the table gives medians.
//!
//! Predicted tokens/s: 1F1B runs at [`CALIBRATION_LENGTHS`] (64 and 256 tokens) calibrate the
//! kernels' efficiency `e = achieved ÷ measured matmul peak` (medians) by the tokens one op
//! processes: small ops run at a different share of peak than large ones (cache, dispatch). A
//! row whose slices hold `t` tokens takes `e(t)`, interpolated in `log t` between the two and
//! held beyond them, and is predicted as
//! `e(t) · peak · u ÷ u_calibration(t) ÷ FLOPs per token` with the utilisation `u` of the cores by the
//! simulated schedule (`Simulation::core_use`): stage threads share the machine's cores, so its
//! timeline is stretched wherever more stages compute at once than there are cores, and idle
//! cores cost throughput only where fewer stages are busy than there are cores. The
//! calibration rows' errors are zero by construction and are marked so. Peak memory: the `memory`
//! crate's predicted saved-activation bytes per stage against the executor's measured ones.

use anyhow::Result;
use seqpipe_slicing::CostModel;
use seqpipe_trainer::config::{ParallelConfig, SlicingMethod, TrainConfig};
use seqpipe_trainer::train::{measure_matmul_peak, train, TrainSummary};

use super::offload::median;
use super::table::{pct, rel_err, Table};

/// Schedules compared at each length: (name, slices, chunks, slicing).
pub const SCHEDULES: &[(&str, u32, u32, SlicingMethod)] = &[
    ("1f1b", 1, 1, SlicingMethod::Uniform),
    ("seq1f1b", 4, 1, SlicingMethod::Balanced),
    ("slimpipe", 4, 2, SlicingMethod::Uniform),
    ("zb-h1", 1, 1, SlicingMethod::Uniform),
];

/// Runs of each configuration (medians reported).
pub const REPS: usize = 3;

/// Sequence lengths run.
pub const LENGTHS: &[usize] = &[256, 1024];

/// Lengths of the 1F1B runs that calibrate the efficiency by op size (the first is a run of its
/// own, the second the table's 1F1B row at 256 tokens).
pub const CALIBRATION_LENGTHS: [usize; 2] = [64, 256];

/// Optimizer steps per run; the first is a warm-up and is not timed.
pub const STEPS: u64 = 5;

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuRun {
    /// Schedule name.
    pub schedule: String,
    /// Slices per sequence.
    pub slices: u32,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Measured tokens/s (steps after the first), median of the repetitions.
    pub tokens_per_sec: f64,
    /// Predicted tokens/s (see the module header), median of the repetitions' predictions.
    pub predicted_tokens_per_sec: f64,
    /// Achieved model FLOP/s ÷ measured matmul peak.
    pub mfu: f64,
    /// Measured f32 matmul FLOP/s of this machine (once, before the runs).
    pub peak_flops: f64,
    /// Measured bubble of the last step.
    pub measured_bubble: f64,
    /// Simulated bubble of the same schedule.
    pub simulated_bubble: f64,
    /// Predicted utilisation of the cores (see the module header).
    pub utilisation: f64,
    /// Largest measured activation bytes over stages, saved plus transient buffers.
    pub measured_total_bytes: f64,
    /// Largest measured saved-activation bytes over stages.
    pub measured_peak_bytes: f64,
    /// Largest predicted saved-activation bytes over stages (none when the predictor declines).
    pub predicted_peak_bytes: Option<f64>,
    /// Largest per-stage relative error of the prediction.
    pub worst_stage_mem_err: Option<f64>,
    /// Whether this row calibrated the efficiency.
    pub calibration: bool,
}

/// The configuration of one run: a small Llama-style model, 4 stages, 4 micro-batches.
pub fn config(
    schedule: &str,
    slices: u32,
    chunks: u32,
    slicing: SlicingMethod,
    seq_len: usize,
) -> TrainConfig {
    let mut cfg = TrainConfig {
        steps: STEPS,
        ..TrainConfig::default()
    };
    // Twice the tiny model's width, so matmuls are not all overhead.
    cfg.model.hidden = 128;
    cfg.model.ffn_hidden = 344;
    cfg.data.batch = 1;
    cfg.data.seq_len = seq_len;
    cfg.parallel = ParallelConfig {
        stages: 4,
        microbatches: 4,
        schedule: schedule.into(),
        slices,
        chunks,
        slicing,
        ..ParallelConfig::default()
    };
    cfg
}

/// Every configuration: (schedule, slices, chunks, slicing, tokens per sequence); the small
/// calibration run first.
fn configurations() -> Vec<(&'static str, u32, u32, SlicingMethod, usize)> {
    let small = ("1f1b", 1, 1, SlicingMethod::Uniform, CALIBRATION_LENGTHS[0]);
    std::iter::once(small)
        .chain(LENGTHS.iter().flat_map(|&len| {
            SCHEDULES
                .iter()
                .map(move |&(name, n, v, slicing)| (name, n, v, slicing, len))
        }))
        .collect()
}

/// `(tokens per op, efficiency, utilisation)` of the calibration runs, smallest first.
type Calibration = [(f64, f64, f64); 2];

/// The efficiency and calibration utilisation for ops of `tokens` tokens: interpolated in
/// `log tokens` between the calibration points, held beyond them.
fn calibrated(c: &Calibration, tokens: f64) -> (f64, f64) {
    let [(t0, e0, u0), (t1, e1, u1)] = *c;
    let w = ((tokens.ln() - t0.ln()) / (t1.ln() - t0.ln())).clamp(0.0, 1.0);
    (e0 + w * (e1 - e0), u0 + w * (u1 - u0))
}

fn is_calibration(cfg: &TrainConfig) -> bool {
    cfg.parallel.schedule == "1f1b" && CALIBRATION_LENGTHS.contains(&cfg.data.seq_len)
}

/// Runs every configuration [`REPS`] times (interleaved) and returns the measurements. The
/// matmul peak is measured once before the runs, so every MFU shares one denominator (each
/// run's own measurement moves with the machine's load).
pub fn run_all(mut progress: impl FnMut(&str)) -> Result<Vec<CpuRun>> {
    let peak = measure_matmul_peak()?;
    let configs = configurations();
    let cfgs: Vec<TrainConfig> = configs
        .iter()
        .map(|&(name, n, v, slicing, len)| config(name, n, v, slicing, len))
        .collect();
    let mut summaries: Vec<Vec<TrainSummary>> = vec![Vec::new(); cfgs.len()];
    for rep in 0..REPS {
        for (i, cfg) in cfgs.iter().enumerate() {
            let (name, n, v, _, len) = configs[i];
            progress(&format!(
                "cpu: run {}/{REPS}: {name} n={n} v={v} s={len}",
                rep + 1
            ));
            summaries[i].push(train(cfg, |_| Ok(()))?);
        }
    }
    let mut runs: Vec<CpuRun> = cfgs
        .iter()
        .zip(&summaries)
        .map(|(cfg, reps)| summarise(cfg, reps, peak))
        .collect::<Result<_>>()?;
    let point = |len: usize| -> Result<(f64, f64, f64)> {
        let run = cfgs
            .iter()
            .zip(&runs)
            .find(|(cfg, _)| is_calibration(cfg) && cfg.data.seq_len == len)
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow::anyhow!("no 1F1B calibration run at {len} tokens"))?;
        Ok((len as f64, run.mfu, run.utilisation))
    };
    let calibration: Calibration = [
        point(CALIBRATION_LENGTHS[0])?,
        point(CALIBRATION_LENGTHS[1])?,
    ];
    for (cfg, run) in cfgs.iter().zip(&mut runs) {
        let tokens = (cfg.data.seq_len / cfg.parallel.slices as usize) as f64;
        let (e, u_ref) = calibrated(&calibration, tokens);
        run.calibration = is_calibration(cfg);
        run.predicted_tokens_per_sec = e * peak * run.utilisation / u_ref / flops_per_token(cfg)?;
    }
    Ok(runs)
}

/// Model FLOPs per token of `cfg` (forward and backward).
fn flops_per_token(cfg: &TrainConfig) -> Result<f64> {
    let seq_len = cfg.data.seq_len as u64;
    Ok(3.0 * CostModel::flops(&cfg.model.shape())?.sequence(seq_len) / seq_len as f64)
}

/// One configuration's row: medians of its runs' throughput, the first run's memory (it does
/// not vary); no prediction yet.
fn summarise(cfg: &TrainConfig, runs: &[TrainSummary], peak: f64) -> Result<CpuRun> {
    let seq_len = cfg.data.seq_len;
    let tokens_per_sec = median(runs.iter().map(|s| s.tokens_per_sec).collect());
    let s = &runs[0];
    let measured: Vec<f64> = s.peak_saved_bytes.iter().map(|&b| b as f64).collect();
    let worst = s.predicted_saved_bytes.as_ref().map(|p| {
        p.iter()
            .zip(&measured)
            .map(|(p, m)| (p / m - 1.0).abs())
            .fold(0.0, f64::max)
    });
    Ok(CpuRun {
        schedule: cfg.parallel.schedule.clone(),
        slices: cfg.parallel.slices,
        seq_len,
        tokens_per_sec,
        predicted_tokens_per_sec: f64::NAN,
        mfu: tokens_per_sec * flops_per_token(cfg)? / peak,
        peak_flops: peak,
        measured_bubble: median(runs.iter().map(|s| s.measured_bubble).collect()),
        simulated_bubble: s.simulated_bubble,
        utilisation: s.simulated_core_use,
        measured_total_bytes: s.peak_bytes.iter().map(|&b| b as f64).fold(0.0, f64::max),
        measured_peak_bytes: measured.iter().copied().fold(0.0, f64::max),
        predicted_peak_bytes: s
            .predicted_saved_bytes
            .as_ref()
            .map(|p| p.iter().copied().fold(0.0, f64::max)),
        worst_stage_mem_err: worst,
        calibration: false,
    })
}

fn kib(b: f64) -> String {
    format!("{:.0}", b / 1024.0)
}

/// The runs as a table.
pub fn table(runs: &[CpuRun]) -> Result<Table> {
    let mut t = Table::new(&[
        "schedule",
        "seq",
        "tokens/s (measured)",
        "tokens/s (predicted)",
        "error",
        "MFU vs matmul peak",
        "bubble measured",
        "bubble simulated",
        "predicted core use",
        "peak saved KiB measured",
        "predicted",
        "worst-stage mem error",
        "peak saved+transient KiB measured",
    ]);
    for r in runs {
        let err = match r.calibration {
            true => "0 (calibration)".into(),
            false => rel_err(r.predicted_tokens_per_sec, r.tokens_per_sec),
        };
        t.push(vec![
            format!("{} n={}", r.schedule, r.slices),
            r.seq_len.to_string(),
            format!("{:.0}", r.tokens_per_sec),
            format!("{:.0}", r.predicted_tokens_per_sec),
            err,
            pct(r.mfu),
            pct(r.measured_bubble),
            pct(r.simulated_bubble),
            pct(r.utilisation),
            kib(r.measured_peak_bytes),
            r.predicted_peak_bytes.map_or("none".into(), kib),
            r.worst_stage_mem_err
                .map_or("n/a".into(), |e| format!("{:.1} %", e * 100.0)),
            kib(r.measured_total_bytes),
        ])?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(calibration: bool, predicted: f64, mem: Option<f64>) -> CpuRun {
        CpuRun {
            schedule: "seq1f1b".into(),
            slices: 4,
            seq_len: 256,
            tokens_per_sec: 1000.0,
            predicted_tokens_per_sec: predicted,
            mfu: 0.25,
            peak_flops: 1e10,
            measured_bubble: 0.2,
            simulated_bubble: 0.1,
            utilisation: 1.0,
            measured_total_bytes: 4096.0,
            measured_peak_bytes: 2048.0,
            predicted_peak_bytes: mem,
            worst_stage_mem_err: mem.map(|_| 0.05),
            calibration,
        }
    }

    #[test]
    fn efficiency_interpolates_in_log_tokens_and_holds_beyond_the_calibration() {
        let c: Calibration = [(64.0, 0.3, 0.9), (256.0, 0.2, 0.8)];
        assert_eq!(calibrated(&c, 64.0), (0.3, 0.9));
        assert_eq!(calibrated(&c, 16.0), (0.3, 0.9));
        assert_eq!(calibrated(&c, 1024.0), (0.2, 0.8));
        let (e, u) = calibrated(&c, 128.0);
        assert!(
            (e - 0.25).abs() < 1e-12 && (u - 0.85).abs() < 1e-12,
            "{e} {u}"
        );
    }

    #[test]
    fn table_reports_errors_and_marks_calibration() {
        let t = table(&[run(true, 1000.0, Some(2048.0)), run(false, 1250.0, None)]).unwrap();
        assert_eq!(t.rows.len(), 2);
        let col = |name: &str| t.headers.iter().position(|h| h == name).unwrap();
        assert_eq!(t.rows[0][col("error")], "0 (calibration)");
        assert_eq!(t.rows[1][col("error")], "+25.0 %");
        assert_eq!(t.rows[0][col("worst-stage mem error")], "5.0 %");
        assert_eq!(t.rows[1][col("predicted")], "none");
        assert_eq!(t.rows[1][col("peak saved KiB measured")], "2");
    }

    #[test]
    fn configs_pass_the_trainers_checks() {
        for &len in LENGTHS {
            for &(name, n, v, slicing) in SCHEDULES {
                let cfg = config(name, n, v, slicing, len);
                seqpipe_trainer::train::check(&cfg).unwrap();
            }
        }
    }
}
