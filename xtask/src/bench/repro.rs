//! The reproduction table: SPEC §5/§6 configurations with the papers' figures beside ours and the
//! ratio. Memory and bubble vectors come from the closed forms and the event simulator; headline
//! MFU figures from the planner's model (one assumed kernel efficiency, communication over the
//! GPU preset's interconnect), so they are simulated predictions, never measurements.

use anyhow::Result;
use seqpipe_memory::{
    candidates, evaluate, plan_order, rank_by_simulation, ActivationModel, Candidate, Evaluation,
    Parallelism, PipelineKind, RecomputePolicy, SearchSpace, SimulatedBubbles, Simulations,
    StateOptions, StaticConfig, OFFLOAD_BUFFER_UNITS,
};
use seqpipe_schedule::{generate, simulate, P2p, ScheduleConfig, ScheduleKind, UnitCosts};
use seqpipe_slicing::preset;

use super::sim::{best_per_family_where, describe, family, space, Setup};
use super::table::{gib, Table};

const GIB: f64 = (1u64 << 30) as f64;

/// One reproduced figure.
struct Row {
    source: &'static str,
    what: String,
    paper: String,
    ours: String,
    ratio: Option<f64>,
    note: String,
}

fn row(source: &'static str, what: String, paper: f64, ours: f64, unit: &str, note: String) -> Row {
    Row {
        source,
        what,
        paper: format!("{paper:.2}{unit}"),
        ours: format!("{ours:.2}{unit}"),
        ratio: Some(ours / paper),
        note,
    }
}

/// Stage-0 saved activations of a static configuration, GiB.
fn stage0_activations(
    kind: PipelineKind,
    p: u64,
    m: u64,
    s: u64,
    recompute: RecomputePolicy,
) -> Result<f64> {
    let shape = preset("llama-70b")?;
    let config = StaticConfig {
        activation: ActivationModel::new(shape, Parallelism::new(8, 1, 1)?)?
            .with_recompute(recompute),
        states: StateOptions::default(),
        kind,
        stages: p,
        microbatches: m,
        seq_len: s,
        offload_fraction: 0.0,
    };
    Ok(config.peaks()?[0].activations / GIB)
}

/// Simulated bubble and stage-0 peak units in flight, equal-cost units with `B = 2F`.
fn simulated(config: ScheduleConfig) -> Result<(f64, u32)> {
    let costs = UnitCosts::new(1.0, 2.0);
    let sim = simulate(&generate(&config)?, |a| costs.cost(a), &P2p::free())?;
    Ok((sim.bubble_ratio, sim.max_in_flight()[0]))
}

fn memory_rows(out: &mut Vec<Row>) -> Result<()> {
    let ours = stage0_activations(
        PipelineKind::SlimPipe {
            slices: 8,
            chunks: 10,
        },
        8,
        16,
        65536,
        RecomputePolicy::None,
    )?;
    out.push(row(
        "SPEC §5",
        "Llama-70B 64K SlimPipe p8 v10 n8 t·c=8: stage-0 activations".into(),
        24.60,
        ours,
        " GiB",
        "closed form".into(),
    ));
    for p in [4u64, 8, 16] {
        let ours = stage0_activations(
            PipelineKind::OneF1B,
            p,
            32,
            256 * 1024,
            RecomputePolicy::Full,
        )?;
        out.push(row(
            "SPEC §5",
            format!("Llama-70B 256K 1F1B full recompute t·c=8, p={p}: stage-0 activations"),
            40.0,
            ours,
            " GiB",
            "closed form".into(),
        ));
    }
    Ok(())
}

fn bubble_rows(out: &mut Vec<Row>) -> Result<()> {
    let slim = ScheduleConfig::new(ScheduleKind::SlimPipe, 8, 16)
        .with_slices(8)
        .with_chunks(10);
    out.push(row(
        "SPEC §5",
        "bubble SlimPipe p8 v10 n8 m16".into(),
        0.54,
        simulated(slim)?.0 * 100.0,
        " %",
        "event simulator".into(),
    ));
    let inter = ScheduleConfig::new(ScheduleKind::Interleaved, 16, 16).with_chunks(5);
    out.push(row(
        "SPEC §5",
        "bubble interleaved p16 v5 m16".into(),
        15.79,
        simulated(inter)?.0 * 100.0,
        " %",
        "event simulator".into(),
    ));
    let paper = [
        (1u32, 27.27, 4u32),
        (2, 15.79, 5),
        (4, 8.57, 7),
        (8, 4.48, 11),
    ];
    for (n, bubble, flight) in paper {
        let (b, f) = simulated(ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(n))?;
        out.push(row(
            "SPEC §3",
            format!("bubble Seq1F1B p4 m8 n{n}"),
            bubble,
            b * 100.0,
            " %",
            "event simulator".into(),
        ));
        out.push(row(
            "SPEC §3",
            format!("stage-0 slices in flight, Seq1F1B p4 m8 n{n}"),
            flight as f64,
            f as f64,
            "",
            "event simulator".into(),
        ));
    }
    Ok(())
}

fn offload_rows(out: &mut Vec<Row>) -> Result<()> {
    let v = 4u32;
    for d in [2u32, 4, 8] {
        let (_, f) =
            simulated(ScheduleConfig::new(ScheduleKind::Interleaved, d, 2 * d).with_chunks(v))?;
        out.push(row(
            "SPEC §5.1",
            format!("PipeOffload peak units, interleaved d{d} v{v}"),
            (d * v + d - 1) as f64,
            f as f64,
            "",
            "paper formula d·v+d−1 vs simulated".into(),
        ));
        let (_, f) = simulated(
            ScheduleConfig::new(ScheduleKind::Gis, d, 2 * d)
                .with_chunks(v)
                .with_group(d),
        )?;
        out.push(row(
            "SPEC §5.1",
            format!("PipeOffload peak units, GIS d{d} v{v} g{d}"),
            (d + (v - 1) * d) as f64,
            f as f64,
            "",
            "paper formula d+(v−1)·g vs simulated".into(),
        ));
    }
    out.push(row(
        "SPEC §5.1",
        "PipeOffload peak units, all chunks offloaded (paper: 3–4)".into(),
        3.5,
        OFFLOAD_BUFFER_UNITS as f64,
        "",
        "adopted constant in memory".into(),
    ));
    Ok(())
}

fn best(
    setup: &Setup,
    k: u64,
    family: &str,
    keep: impl Fn(&Candidate) -> bool,
) -> Result<Option<Evaluation>> {
    let space = space(setup, k * 1024)?;
    Ok(best_per_family_where(&space, keep)
        .into_iter()
        .find(|(f, _)| *f == family)
        .map(|(_, e)| e))
}

fn fit_note(e: &Option<Evaluation>) -> String {
    match e {
        Some(e) if e.fits() => describe(&e.candidate),
        Some(e) => format!("does not fit (short {} GiB)", gib(e.over_bytes)),
        None => "no candidate".into(),
    }
}

fn mfu(e: &Option<Evaluation>) -> f64 {
    e.filter(|e| e.fits()).map_or(0.0, |e| e.mfu)
}

fn seq1f1b_rows(out: &mut Vec<Row>) -> Result<()> {
    // Seq1F1B trains without recomputation; GPT-7B on 32 A100.
    let setup = Setup {
        model: "gpt-7b",
        gpu: "a100",
        gpus: 32,
        global_batch: 32,
        max_cp: 1,
    };
    let plain = |c: &Candidate| c.recompute == RecomputePolicy::None && c.offload_fraction == 0.0;
    let seq = best(&setup, 128, "seq1f1b", plain)?;
    let one = best(&setup, 128, "1f1b", plain)?;
    // The planner's MFU is its one kernel efficiency times what the bubble and the exposed
    // communication leave; the paper's measured MFU implies the efficiency its kernels reached.
    let implied = 0.45 / (mfu(&seq) / super::sim::EFFICIENCY);
    out.push(row(
        "Seq1F1B §6",
        "GPT-7B 128K 32×A100 Seq1F1B MFU".into(),
        45.0,
        mfu(&seq) * 100.0,
        " %",
        format!(
            "{}; ours assumes kernels at {:.0} % of peak, the paper's 45 % implies {:.0} % under \
             the same bubble and communication",
            fit_note(&seq),
            100.0 * super::sim::EFFICIENCY,
            100.0 * implied
        ),
    ));
    out.push(Row {
        source: "Seq1F1B §6",
        what: "GPT-7B 128K 32×A100 1F1B, no recompute".into(),
        paper: "OOM".into(),
        ours: if mfu(&one) > 0.0 {
            "fits".into()
        } else {
            "does not fit".into()
        },
        ratio: None,
        note: fit_note(&one),
    });
    for k in [32u64, 64] {
        let (s, o) = (
            best(&setup, k, "seq1f1b", plain)?,
            best(&setup, k, "1f1b", plain)?,
        );
        let ours = if mfu(&o) > 0.0 {
            mfu(&s) / mfu(&o)
        } else {
            f64::NAN
        };
        out.push(row(
            "Seq1F1B §6",
            format!("GPT-7B {k}K 32×A100 Seq1F1B ÷ 1F1B throughput (paper: up to)"),
            1.14,
            ours,
            "×",
            format!("{} vs {}", fit_note(&s), fit_note(&o)),
        ));
    }
    Ok(())
}

fn slimpipe_rows(out: &mut Vec<Row>) -> Result<()> {
    let setup = Setup {
        model: "llama-70b",
        gpu: "h100",
        gpus: 256,
        global_batch: 64,
        max_cp: 4,
    };
    let slim = best(&setup, 512, "slimpipe", |_| true)?;
    // Megatron's baselines recompute but do not offload.
    let megatron = |c: &Candidate| c.offload_fraction == 0.0;
    let (one, inter) = (
        best(&setup, 512, "1f1b", megatron)?,
        best(&setup, 512, "interleaved", megatron)?,
    );
    let base = mfu(&one).max(mfu(&inter));
    out.push(row(
        "SlimPipe §6",
        "Llama-70B 512K 256×H100 SlimPipe ÷ best Megatron MFU (paper: up to)".into(),
        1.57,
        mfu(&slim) / base,
        "×",
        format!(
            "{} vs best of 1F1B/interleaved {:.1} %",
            fit_note(&slim),
            base * 100.0
        ),
    ));
    out.push(slimpipe_simulated_row(&setup)?);
    let space = space(&setup, 2048 * 1024)?;
    let fixed = Candidate {
        kind: PipelineKind::SlimPipe {
            slices: 64,
            chunks: 5,
        },
        stages: 16,
        parallel: Parallelism::new(4, 4, 1)?,
        microbatches: setup.global_batch,
        recompute: RecomputePolicy::None,
        offload_fraction: 0.75,
    };
    let e = evaluate(&space, &fixed)?;
    out.push(row(
        "SlimPipe §6",
        "Llama-70B 2048K 256×H100 t4 c4 p16 n64 v5 75 % offload MFU (paper: > 45)".into(),
        45.0,
        e.mfu * 100.0,
        " %",
        if e.fits() {
            format!(
                "fits, peak {} GiB; the paper gives a lower bound (> 45 %), which ours clears; \
                 with kernels at the 46 % the Seq1F1B row implies (an A100 figure) in place of \
                 our {:.0} %, ours would read {:.1} %",
                gib(e.peak_bytes),
                100.0 * super::sim::EFFICIENCY,
                e.mfu * 100.0 * 0.46 / super::sim::EFFICIENCY
            )
        } else {
            format!("does not fit: short {} GiB", gib(e.over_bytes))
        },
    ));
    Ok(())
}

/// The 512K row again, each family's plans ranked by simulating their exact schedules as the
/// trainer runs them (`seqpipe_memory::rank_by_simulation`, run until certain: SlimPipe's slices
/// uniform, its head vocabulary-parallel, and its attention exchange where it shortens the
/// iteration) instead of by the closed forms.
fn slimpipe_simulated_row(setup: &Setup) -> Result<Row> {
    let space = space(setup, 512 * 1024)?;
    let mut known = Simulations::new();
    let megatron = |c: &Candidate| c.offload_fraction == 0.0;
    let s = best_simulated(&space, "slimpipe", |_| true, &mut known)?;
    let o = best_simulated(&space, "1f1b", megatron, &mut known)?;
    let i = best_simulated(&space, "interleaved", megatron, &mut known)?;
    let mfu = |x: &Option<Simulated>| x.as_ref().map_or(0.0, |x| x.plan.mfu);
    let bubbles = |name: &str, x: &Option<Simulated>| match x {
        Some(x) => format!(
            "{name} {} (closed form {:.1} → simulated {:.1} %{})",
            describe(&x.plan.candidate),
            100.0 * x.closed_form,
            100.0 * x.bubbles.plain,
            x.bubbles.exchange.map_or(String::new(), |e| format!(
                ", with the attention exchange, every pair: {:.1} %",
                100.0 * e
            ))
        ),
        None => format!("{name}: no fitting plan"),
    };
    Ok(row(
        "SlimPipe §6",
        "Llama-70B 512K 256×H100 SlimPipe ÷ best Megatron MFU, ranked by simulation (paper: up to)"
            .into(),
        1.57,
        mfu(&s) / mfu(&o).max(mfu(&i)),
        "×",
        format!(
            "{}; {}; {}; {} schedules simulated; SlimPipe's vocabulary-parallel HEAD makes every \
             stage meet (once per micro-batch), and its uniform slices' attention grows along \
             the sequence; the better of SlimPipe's two figures counts",
            bubbles("SlimPipe", &s),
            bubbles("1F1B", &o),
            bubbles("interleaved", &i),
            known.len()
        ),
    ))
}

/// A family's best plan by simulation, with the closed-form bubble it had and its simulated
/// bubbles.
struct Simulated {
    plan: Evaluation,
    closed_form: f64,
    bubbles: SimulatedBubbles,
}

/// The best fitting plan of `family` among the candidates `keep` accepts, ranked by simulation
/// until certain; `None` where none fits.
fn best_simulated(
    space: &SearchSpace,
    family_name: &str,
    keep: impl Fn(&Candidate) -> bool,
    known: &mut Simulations,
) -> Result<Option<Simulated>> {
    let mut evals: Vec<Evaluation> = candidates(space)
        .iter()
        .filter(|c| family(&c.kind) == family_name && keep(c))
        // A candidate the closed forms refuse is not a plan.
        .filter_map(|c| evaluate(space, c).ok())
        .filter(Evaluation::fits)
        .collect();
    evals.sort_by(plan_order);
    let ranking = rank_by_simulation(space, evals.clone(), 1, None, known)?;
    anyhow::ensure!(
        ranking.exact,
        "the {family_name} ranking is not certain: {:?}",
        ranking.bound_broken
    );
    let Some(plan) = ranking.evaluations.first().copied() else {
        return Ok(None);
    };
    let closed_form = evals
        .iter()
        .find(|e| e.candidate == plan.candidate)
        .map_or(f64::NAN, |e| e.bubble);
    let bubbles = known
        .bubbles(&plan.candidate)
        .ok_or_else(|| anyhow::anyhow!("the best {family_name} plan was not simulated"))?;
    Ok(Some(Simulated {
        plan,
        closed_form,
        bubbles,
    }))
}

/// Longest context (4K steps, up to 4096K) at which `family` has a fitting plan.
fn max_context(setup: &Setup, family: &str, keep: impl Fn(&Candidate) -> bool) -> Result<u64> {
    let allowed = |c: &Candidate| c.offload_fraction == 0.0 && keep(c);
    let fits =
        |k: u64| -> Result<bool> { Ok(best(setup, k, family, allowed)?.is_some_and(|e| e.fits())) };
    // Invariant of the bisection: `lo` fits (in 4K steps), everything above `hi` does not.
    let (mut lo, mut hi) = (1u64, 4096u64 / 4);
    if !fits(4)? {
        return Ok(0);
    }
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid * 4)? {
            lo = mid
        } else {
            hi = mid - 1
        }
    }
    Ok(lo * 4)
}

fn max_context_rows(out: &mut Vec<Row>) -> Result<()> {
    // Adopted cluster: one node of 8 H100, pipeline only (the paper's exact setup is not in SPEC).
    let setup = Setup {
        model: "llama-7b",
        gpu: "h100",
        gpus: 8,
        global_batch: 8,
        max_cp: 1,
    };
    for (family, paper) in [("slimpipe", 600.0), ("1f1b", 124.0)] {
        let any = max_context(&setup, family, |_| true)? as f64;
        let bare = |c: &Candidate| c.recompute == RecomputePolicy::None && c.parallel.tp == 1;
        let pp_only = max_context(&setup, family, bare)? as f64;
        out.push(row(
            "SlimPipe §6",
            format!("Llama-7B max context K, {family}, 8×H100 (adopted cluster)"),
            paper,
            any,
            "K",
            format!(
                "planner search: TP ≤ 8, any recompute, no CP, no offload; with pipeline \
                 parallelism only (TP 1, no recomputation): {pp_only:.0}K"
            ),
        ));
    }
    Ok(())
}

fn pipeoffload_rows(out: &mut Vec<Row>) -> Result<()> {
    // Adopted setup (the abstract gives none): Llama-7B on four 8×H100 nodes at 32K.
    let setup = Setup {
        model: "llama-7b",
        gpu: "h100",
        gpus: 32,
        global_batch: 32,
        max_cp: 1,
    };
    let offloaded_pp = |c: &Candidate| c.parallel.tp == 1 && c.offload_fraction == 1.0;
    let tp8 = |c: &Candidate| c.parallel.tp == 8 && c.offload_fraction == 0.0;
    let pp = ["1f1b", "interleaved"]
        .into_iter()
        .map(|f| best(&setup, 32, f, offloaded_pp))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .max_by(|a, b| mfu(&Some(*a)).total_cmp(&mfu(&Some(*b))));
    let tp = best(&setup, 32, "interleaved", tp8)?;
    let ratio = match mfu(&tp) {
        t if t > 0.0 => mfu(&pp) / t,
        _ => f64::NAN,
    };
    out.push(row(
        "PipeOffload §6",
        "Llama-7B 32K 32×H100 (adopted) PP + full offload ÷ interleaved + TP8 (paper: up to)"
            .into(),
        1.19,
        ratio,
        "×",
        format!(
            "{} ({:.1} % MFU) vs {} ({:.1} %); the paper's setup is not in the SPEC",
            fit_note(&pp),
            100.0 * mfu(&pp),
            fit_note(&tp),
            100.0 * mfu(&tp)
        ),
    ));
    Ok(())
}

/// Every reproduced figure as a table.
pub fn reproduction() -> Result<Table> {
    let mut rows = Vec::new();
    memory_rows(&mut rows)?;
    bubble_rows(&mut rows)?;
    offload_rows(&mut rows)?;
    seq1f1b_rows(&mut rows)?;
    slimpipe_rows(&mut rows)?;
    max_context_rows(&mut rows)?;
    pipeoffload_rows(&mut rows)?;
    let mut t = Table::new(&[
        "source",
        "configuration",
        "paper",
        "ours (simulated)",
        "ours ÷ paper",
        "note",
    ]);
    for r in rows {
        let ratio = r
            .ratio
            .filter(|x| x.is_finite())
            .map_or("-".into(), |x| format!("{x:.3}"));
        t.push(vec![
            r.source.into(),
            r.what,
            r.paper,
            r.ours,
            ratio,
            r.note,
        ])?;
    }
    Ok(t)
}
