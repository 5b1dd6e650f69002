//! `bench sim`: simulated sweeps. For every (model, GPU, context) point, every candidate of the
//! `memory` planner (plus ZB-H1, which the planner's own list leaves out) is scored, and the best
//! feasible configuration of each schedule family is kept, or the one closest to fitting with its
//! shortfall. Every figure here is a prediction of the planning crates, not a measurement.

use anyhow::Result;
use seqpipe_memory::{
    candidates, evaluate, gpu_preset, Candidate, Evaluation, GpuPreset, PipelineKind, SearchSpace,
};
use seqpipe_slicing::preset;
use serde::Serialize;

use super::table::{gib, pct, tokens, Table};

/// Schedule families the sweep compares; SPEC §3's elastic schedule has no closed form in
/// `memory` yet, so it is not swept (the report says so).
pub const FAMILIES: &[&str] = &["1f1b", "interleaved", "zb-h1", "seq1f1b", "slimpipe"];

/// Context lengths of the sweep, 32K → 2048K.
pub const CONTEXTS: &[u64] = &[32, 64, 128, 256, 512, 1024, 2048];

/// One cluster the sweep plans for.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Setup {
    /// Model preset name.
    pub model: &'static str,
    /// GPU preset name.
    pub gpu: &'static str,
    /// GPUs in all.
    pub gpus: u64,
    /// Sequences per iteration.
    pub global_batch: u64,
    /// Largest context-parallel size. CP's ring passes hide behind long attention, so an
    /// unbounded CP makes long-context schedules look alike; the bound follows the papers' setups.
    pub max_cp: u64,
}

/// The swept setups: the papers' model sizes on their cluster sizes (Seq1F1B: 7B on 32 GPUs,
/// no CP; SlimPipe: 70B on 256 GPUs, CP up to 4 as in its 2048K run).
pub const SETUPS: &[Setup] = &[
    Setup {
        model: "llama-7b",
        gpu: "a100",
        gpus: 32,
        global_batch: 32,
        max_cp: 1,
    },
    Setup {
        model: "llama-7b",
        gpu: "h100",
        gpus: 32,
        global_batch: 32,
        max_cp: 1,
    },
    Setup {
        model: "llama-70b",
        gpu: "h100",
        gpus: 256,
        global_batch: 64,
        max_cp: 4,
    },
    Setup {
        model: "llama-70b",
        gpu: "h200",
        gpus: 256,
        global_batch: 64,
        max_cp: 4,
    },
];

/// Assumed fraction of peak FLOP/s each kernel reaches (the planner's `efficiency`).
pub const EFFICIENCY: f64 = 0.6;

/// Share of a GPU's nominal memory the plan may use (the rest: CUDA context, allocator slack).
pub const BUDGET_SHARE: f64 = 0.9;

/// The best configuration of one family at one point.
#[derive(Debug, Clone, Serialize)]
pub struct Best {
    /// The setup.
    pub setup: Setup,
    /// Tokens per sequence.
    pub context: u64,
    /// Family name (one of [`FAMILIES`]).
    pub family: &'static str,
    /// Best fitting evaluation, else the one with the smallest shortfall.
    pub eval: Evaluation,
    /// Per-stage peak bytes of that configuration.
    pub stage_peaks: Vec<f64>,
}

/// The family an evaluated kind belongs to.
pub fn family(kind: &PipelineKind) -> &'static str {
    match kind {
        PipelineKind::SlimPipe { .. } => "slimpipe",
        other => other.name(),
    }
}

/// The planner's search space for a setup at one context length.
pub fn space(setup: &Setup, context: u64) -> Result<SearchSpace> {
    let gpu: GpuPreset = gpu_preset(setup.gpu)?;
    Ok(SearchSpace {
        shape: preset(setup.model)?,
        seq_len: context,
        gpus: setup.gpus,
        global_batch: setup.global_batch,
        gpu,
        budget_bytes: gpu.memory_bytes * BUDGET_SHARE,
        efficiency: EFFICIENCY.into(),
        max_tp: 8,
        max_cp: setup.max_cp,
        min_stages: 2,
    })
}

/// The planner's candidates plus a ZB-H1 twin of every 1F1B candidate.
fn all_candidates(space: &SearchSpace) -> Vec<Candidate> {
    let mut out = candidates(space);
    let zb: Vec<Candidate> = out
        .iter()
        .filter(|c| c.kind == PipelineKind::OneF1B)
        .map(|c| Candidate {
            kind: PipelineKind::ZbH1,
            ..*c
        })
        .collect();
    out.extend(zb);
    out
}

/// Whether `a` beats `b`: fitting first, then higher MFU, then lower peak; among misfits the
/// smaller shortfall.
fn better(a: &Evaluation, b: &Evaluation) -> bool {
    match (a.fits(), b.fits()) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => {
            let (ma, mb) = ((a.mfu * 1000.0).round(), (b.mfu * 1000.0).round());
            ma > mb || (ma == mb && a.peak_bytes < b.peak_bytes)
        }
        (false, false) => a.over_bytes < b.over_bytes,
    }
}

/// The best evaluation of each family at one point (families with no valid candidate are absent).
pub fn best_per_family(space: &SearchSpace) -> Vec<(&'static str, Evaluation)> {
    best_per_family_where(space, |_| true)
}

/// [`best_per_family`] over the candidates `keep` accepts.
pub fn best_per_family_where(
    space: &SearchSpace,
    keep: impl Fn(&Candidate) -> bool,
) -> Vec<(&'static str, Evaluation)> {
    let mut best: Vec<(&'static str, Evaluation)> = Vec::new();
    for c in all_candidates(space).into_iter().filter(|c| keep(c)) {
        // A candidate the closed forms refuse (e.g. n < p for SlimPipe) is not a plan.
        let Ok(e) = evaluate(space, &c) else { continue };
        let f = family(&c.kind);
        match best.iter_mut().find(|(name, _)| *name == f) {
            Some((_, old)) if better(&e, old) => *old = e,
            Some(_) => {}
            None => best.push((f, e)),
        }
    }
    best.sort_by_key(|(f, _)| FAMILIES.iter().position(|x| x == f));
    best
}

/// Per-stage peak bytes of an evaluated candidate (re-evaluated stage by stage).
pub fn stage_peaks(space: &SearchSpace, c: &Candidate) -> Result<Vec<f64>> {
    let mut activation =
        seqpipe_memory::ActivationModel::new(space.shape, c.parallel)?.with_recompute(c.recompute);
    let logits = if matches!(c.kind, PipelineKind::SlimPipe { .. }) {
        seqpipe_memory::LogitsPlacement::VocabSharded
    } else {
        seqpipe_memory::LogitsPlacement::LastStage
    };
    activation.logits = logits;
    let config = seqpipe_memory::StaticConfig {
        activation,
        states: seqpipe_memory::StateOptions {
            vocab: logits,
            ..Default::default()
        },
        kind: c.kind,
        stages: c.stages,
        microbatches: c.microbatches,
        seq_len: space.seq_len,
        offload_fraction: c.offload_fraction,
    };
    Ok(config.peaks()?.iter().map(|p| p.total()).collect())
}

/// Runs the whole sweep.
pub fn sweep(setups: &[Setup], contexts_k: &[u64]) -> Result<Vec<Best>> {
    let mut out = Vec::new();
    for setup in setups {
        for &k in contexts_k {
            let space = space(setup, k * 1024)?;
            for (family, eval) in best_per_family(&space) {
                out.push(Best {
                    setup: *setup,
                    context: k * 1024,
                    family,
                    stage_peaks: stage_peaks(&space, &eval.candidate)?,
                    eval,
                });
            }
        }
    }
    Ok(out)
}

/// Describes a configuration: `slimpipe n=64 v=5 · p16 t4 c4 d1 · m16 · full recompute · 75 % offload`.
pub fn describe(c: &Candidate) -> String {
    let par = c.parallel;
    let mut s = format!(
        "{} · p{} t{} c{} d{} · m{}",
        c.kind, c.stages, par.tp, par.cp, par.dp, c.microbatches
    );
    match c.recompute {
        seqpipe_memory::RecomputePolicy::None => {}
        seqpipe_memory::RecomputePolicy::Selective => s.push_str(" · selective recompute"),
        seqpipe_memory::RecomputePolicy::Full => s.push_str(" · full recompute"),
    }
    if c.offload_fraction > 0.0 {
        s.push_str(&format!(" · {:.0} % offload", c.offload_fraction * 100.0));
    }
    s
}

/// The sweep as a table, one row per (setup, context, family).
pub fn table(rows: &[Best]) -> Result<Table> {
    let mut t = Table::new(&[
        "model",
        "gpu",
        "gpus",
        "context",
        "schedule",
        "fits",
        "pred. MFU (sim)",
        "bubble (sim)",
        "worst-stage peak GiB",
        "per-stage peak GiB",
        "shortfall GiB",
        "configuration",
    ]);
    for b in rows {
        let e = &b.eval;
        let per_stage: Vec<String> = b.stage_peaks.iter().map(|&x| gib(x)).collect();
        let per_stage = if per_stage.len() > 8 {
            format!(
                "{} … {} ({} stages)",
                per_stage[0],
                per_stage[per_stage.len() - 1],
                per_stage.len()
            )
        } else {
            per_stage.join(" / ")
        };
        t.push(vec![
            b.setup.model.into(),
            b.setup.gpu.into(),
            b.setup.gpus.to_string(),
            tokens(b.context),
            b.family.into(),
            if e.fits() {
                "yes".into()
            } else {
                "does not fit".into()
            },
            if e.fits() { pct(e.mfu) } else { "-".into() },
            pct(e.bubble),
            gib(e.peak_bytes),
            per_stage,
            if e.fits() {
                "-".into()
            } else {
                gib(e.over_bytes)
            },
            describe(&e.candidate),
        ])?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SearchSpace {
        let setup = Setup {
            model: "llama-7b",
            gpu: "h100",
            gpus: 8,
            global_batch: 8,
            max_cp: 1,
        };
        space(&setup, 128 * 1024).unwrap()
    }

    #[test]
    fn best_per_family_beats_every_candidate_of_its_family() {
        let space = small();
        let best = best_per_family(&space);
        let names: Vec<&str> = best.iter().map(|(f, _)| *f).collect();
        assert_eq!(names, FAMILIES, "every family once, in order");
        for c in all_candidates(&space) {
            let Ok(e) = evaluate(&space, &c) else {
                continue;
            };
            let (_, b) = best.iter().find(|(f, _)| *f == family(&c.kind)).unwrap();
            assert!(
                !better(&e, b),
                "{} beats the chosen {}",
                describe(&c),
                describe(&b.candidate)
            );
        }
    }

    #[test]
    fn fitting_beats_misfit_and_smaller_shortfall_wins() {
        let (_, e) = best_per_family(&small())[0];
        let fit = Evaluation {
            over_bytes: -1.0,
            mfu: 0.1,
            ..e
        };
        let near = Evaluation {
            over_bytes: 1.0,
            mfu: 0.5,
            ..e
        };
        let far = Evaluation {
            over_bytes: 2.0,
            mfu: 0.6,
            ..e
        };
        assert!(better(&fit, &near) && !better(&near, &fit));
        assert!(better(&near, &far) && !better(&far, &near));
        let faster = Evaluation { mfu: 0.2, ..fit };
        assert!(better(&faster, &fit));
    }

    #[test]
    fn describe_names_every_knob() {
        let (_, e) = best_per_family(&small())[0];
        let c = Candidate {
            kind: PipelineKind::SlimPipe {
                slices: 64,
                chunks: 5,
            },
            recompute: seqpipe_memory::RecomputePolicy::Full,
            offload_fraction: 0.75,
            ..e.candidate
        };
        let s = describe(&c);
        assert!(s.starts_with("slimpipe n=64 v=5 · p"), "{s}");
        assert!(s.ends_with("full recompute · 75 % offload"), "{s}");
    }
}
