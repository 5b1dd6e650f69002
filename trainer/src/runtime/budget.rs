//! `--memory-budget`: the least offload or recomputation whose predicted per-stage peak fits a
//! budget of bytes per stage, chosen before the ranks start, or a refusal that names the
//! shortfall.
//!
//! A stage's predicted peak is its model states (`predict::stage_states`: parameters, f32
//! gradients, AdamW moments, f32 master copies for bf16) plus its activations' working peak
//! (`predict::StagePeaks::working`: saved and transient bytes and the inside of a backward),
//! for the exact schedule the ranks would run. The process's other holdings (data tables,
//! RoPE tables, library buffers) are not in it. With neither offload nor recomputation set the
//! ladder is tried in order — nothing; offload of chunks `0..k` for `k < v`, of fractions 0.25,
//! 0.5, 0.75, then of every unit worth offloading (hidden behind compute, so tried first);
//! then selective recomputation, the adaptive plan (`auto`: the fewest layers per unit,
//! [`super::adaptive`]), full recomputation of the first `1, 2, …` layers of each chunk, and of
//! every layer; last, full recomputation with every unit offloaded — and the first that fits
//! wins. An explicit setting is only checked, except `auto`, which the budget plans.

use std::ops::Range;

use seqpipe_schedule::Lowered;

use super::adaptive;
use super::offload::{with_planned_offload, Offload};
use super::partition::Partition;
use super::recompute::{with_planned_recompute, Recompute};
use crate::config::TrainConfig;
use crate::error::{fail, Error, Result};
use crate::predict::{predict, stage_states, PredictInput};

/// What the budget chose.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The schedule with the chosen offload's and recomputation's actions.
    pub schedule: Lowered,
    /// The configuration with the chosen offload and recomputation set.
    pub config: TrainConfig,
    /// Predicted peak bytes per stage (model states + activations' working peak).
    pub peaks: Vec<f64>,
}

/// Parses a byte count: a number with an optional unit (`B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`,
/// `GB`), e.g. `512MiB`.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let scale: f64 = match unit {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => f64::NAN,
    };
    match number.parse::<f64>() {
        // `as u64` would saturate a larger figure silently: refuse it instead.
        Ok(n) if n * scale >= 1.0 && n * scale < u64::MAX as f64 => Ok((n * scale) as u64),
        _ => fail!(
            Config,
            "memory budget {text:?}: give a positive number of bytes below 2^64, optionally \
             with a unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. 512MiB"
        ),
    }
}

/// Predicted peak bytes per stage of `schedule` (see the module docs).
pub fn predicted_stage_peaks(
    cfg: &TrainConfig,
    schedule: &Lowered,
    partition: &Partition,
    slices: &[Range<usize>],
) -> Result<Vec<f64>> {
    let dtype = cfg.precision.dtype();
    let (p, v) = (cfg.parallel.stages, cfg.parallel.chunks);
    let unsupported = || {
        Error::Config(
            "parallel.memory_budget needs the memory model, which covers f32 and bf16 runs with \
             layers split evenly over the virtual stages"
                .into(),
        )
    };
    let states = stage_states(&cfg.model, dtype, p, v)?.ok_or_else(unsupported)?;
    let activations =
        predict(&PredictInput::of(cfg, schedule, partition, slices))?.ok_or_else(unsupported)?;
    Ok(states
        .iter()
        .zip(&activations)
        .map(|(s, a)| s + a.peaks.working)
        .collect())
}

/// The memory settings tried for a budget, least first (see the module docs).
fn ladder(cfg: &TrainConfig, partition: &Partition) -> Vec<(Offload, Recompute)> {
    let (offload, recompute) = (cfg.parallel.offload, &cfg.parallel.recompute);
    if offload != Offload::None || *recompute != Recompute::None {
        return vec![(offload, recompute.clone())];
    }
    let chunks = (1..cfg.parallel.chunks).map(Offload::Chunks);
    let fractions = [0.25, 0.5, 0.75].map(Offload::Fraction);
    let offloads = std::iter::once(Offload::None)
        .chain(chunks)
        .chain(fractions)
        .chain([Offload::Auto]);
    let fewest = partition.ranges.iter().map(|r| r.len()).min().unwrap_or(0) as u32;
    let partial = (1..fewest).map(|n| Recompute::Full { layers: vec![n] });
    let recomputes = [Recompute::Selective, Recompute::Auto { plan: None }]
        .into_iter()
        .chain(partial)
        .chain([Recompute::Full { layers: Vec::new() }]);
    offloads
        .map(|o| (o, Recompute::None))
        .chain(recomputes.map(|r| (Offload::None, r)))
        .chain([(Offload::Auto, Recompute::Full { layers: Vec::new() })])
        .collect()
}

/// The first memory setting of the ladder whose predicted peak fits `budget` bytes on every
/// stage.
pub fn fit(
    schedule: Lowered,
    cfg: &TrainConfig,
    partition: &Partition,
    slices: &[Range<usize>],
    budget: u64,
) -> Result<Fitted> {
    let states = stage_states(
        &cfg.model,
        cfg.precision.dtype(),
        cfg.parallel.stages,
        cfg.parallel.chunks,
    )?;
    if let Some((stage, s)) = states
        .iter()
        .flatten()
        .enumerate()
        .find(|(_, &s)| s > budget as f64)
    {
        fail!(
            Config,
            "memory budget {budget} bytes per stage is below stage {stage}'s model states, \
             {s:.0} bytes (parameters, gradients, AdamW moments): no offload or recomputation \
             can fit"
        );
    }
    let mut closest: Option<(TrainConfig, usize, f64)> = None;
    for (offload, recompute) in ladder(cfg, partition) {
        let mut tried = cfg.clone();
        (tried.parallel.offload, tried.parallel.recompute) = (offload, recompute);
        let (tried, planned, peaks) = match (&tried.parallel.recompute, &states) {
            (Recompute::Auto { .. }, Some(states)) => {
                adaptive::fit(&schedule, &tried, partition, slices, states, budget)?
            }
            _ => {
                let planned = with_memory_actions(schedule.clone(), &tried, partition, slices)?;
                let peaks = predicted_stage_peaks(&tried, &planned, partition, slices)?;
                (tried, planned, peaks)
            }
        };
        let (stage, worst) = worst(&peaks);
        if worst <= budget as f64 {
            return Ok(Fitted {
                schedule: planned,
                config: tried,
                peaks,
            });
        }
        if closest.as_ref().is_none_or(|(_, _, w)| worst < *w) {
            closest = Some((tried, stage, worst));
        }
    }
    let (tried, stage, worst) = closest.expect("the ladder is never empty");
    fail!(
        Config,
        "memory budget {budget} bytes per stage does not fit: the closest, offload = {} and \
         recompute = {}, predicts {worst:.0} bytes on stage {stage}, {:.0} over",
        tried.parallel.offload,
        tried.parallel.recompute,
        worst - budget as f64
    )
}

/// `schedule` with the actions of `cfg`'s offload and recomputation.
pub fn with_memory_actions(
    schedule: Lowered,
    cfg: &TrainConfig,
    partition: &Partition,
    slices: &[Range<usize>],
) -> Result<Lowered> {
    let offloaded = with_planned_offload(schedule, cfg, partition, slices)?;
    let chunks = cfg.parallel.chunks as usize;
    with_planned_recompute(offloaded, &cfg.parallel.recompute, partition, chunks)
}

/// The stage with the highest peak, and the peak.
fn worst(peaks: &[f64]) -> (usize, f64) {
    peaks
        .iter()
        .copied()
        .enumerate()
        .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        for bad in [
            "",
            "0",
            "-1MiB",
            "12 parsecs",
            "MiB",
            "99999999999GiB",
            "0.1",
        ] {
            let e = parse_bytes(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("MiB"),
                "{bad}: {e}"
            );
        }
    }
}
