//! `seqpipe schedule`: generate a pipeline schedule and print it as a grid, JSON, CSV, a Chrome
//! trace or an SVG timeline (the last two simulated with equal units, `B = 2F`).

use std::io::Write;

use anyhow::Context;
use clap::{Args, ValueEnum};
use seqpipe_schedule::render::{grid, timeline, write_chrome_trace, write_svg};
use seqpipe_schedule::validate::render_violations;
use seqpipe_schedule::{
    csv, exchange_costs, generate, insert_exchange, insert_vocab_parallel, lower, pytorch,
    simulate, validate, Action, AttentionCosts, ExchangePolicy, P2p, Schedule, ScheduleConfig,
    ScheduleKind, Simulation, UnitCosts,
};
use seqpipe_slicing::{uniform, CostModel, Padding};

/// Which schedule: the arguments `schedule` and `simulate` share.
#[derive(Args, Debug, Clone)]
pub struct ScheduleSpec {
    /// Schedule kind: gpipe, 1f1b, interleaved, seq1f1b, seq1f1b-i, slimpipe, zb-h1, gis.
    #[arg(long, value_parser = parse_kind)]
    kind: ScheduleKind,
    /// Pipeline stages P.
    #[arg(long)]
    stages: u32,
    /// Micro-batches M per iteration.
    #[arg(long)]
    microbatches: u32,
    /// Slices N per sequence.
    #[arg(long, default_value_t = 1)]
    slices: u32,
    /// Model chunks V per stage.
    #[arg(long, default_value_t = 1)]
    chunks: u32,
    /// Group size G (slimpipe: slices per cycle; gis: micro-batches per block).
    #[arg(long)]
    group: Option<u32>,
}

fn parse_kind(s: &str) -> Result<ScheduleKind, String> {
    s.parse()
        .map_err(|e: seqpipe_schedule::ScheduleError| e.to_string())
}

impl ScheduleSpec {
    /// The configuration these arguments describe.
    pub fn config(&self) -> ScheduleConfig {
        ScheduleConfig {
            kind: self.kind,
            stages: self.stages,
            microbatches: self.microbatches,
            slices: self.slices,
            chunks: self.chunks,
            group: self.group,
        }
    }

    /// Generates and validates the schedule.
    pub fn generate(&self) -> anyhow::Result<Schedule> {
        let schedule = generate(&self.config())?;
        let violations = validate(&schedule);
        if !violations.is_empty() {
            anyhow::bail!(
                "generated schedule is invalid:\n{}",
                render_violations(&schedule, &violations)
            );
        }
        Ok(schedule)
    }
}

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// Summary, time-aligned timeline and stage × step grid.
    Text,
    /// The schedule as JSON.
    Json,
    /// seqpipe's CSV: PyTorch's layout (one row per rank, one action per cell) plus `.slice`
    /// suffixes, marked on its first line when sliced.
    Csv,
    /// PyTorch's own pipelining CSV (`_load_csv`); a sliced schedule is refused, since PyTorch
    /// would read `0F0.1` as `0F0`.
    PytorchCsv,
    /// Chrome trace JSON (Perfetto, chrome://tracing) of an equal-unit simulation.
    Chrome,
    /// SVG timeline of an equal-unit simulation.
    Svg,
}

/// Arguments of `seqpipe schedule`.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    #[command(flatten)]
    spec: ScheduleSpec,
    /// Include the sends and receives (the lowered program the trainer runs).
    #[arg(long)]
    lowered: bool,
    /// Add each unit's vocabulary-parallel `EMBED`, `HEAD` and `EMBED_B` on every stage (the
    /// program of `seqpipe train --vocab-parallel`; implies --lowered). Drawn at a quarter of
    /// a forward each.
    #[arg(long)]
    vocab_parallel: bool,
    /// Mark SlimPipe's attention context exchanges (`F0.3@2+96`: stage 2 attends to this unit's
    /// oldest 96 tokens; `@0`: this compute serves stage 0), as `seqpipe train --exchange` runs
    /// them; implies --lowered. Sequences of --seq-len tokens in uniform slices.
    #[arg(long)]
    exchange: bool,
    /// Tokens per sequence, cut into uniform slices, for --exchange's token counts.
    #[arg(long, default_value_t = 1024, requires = "exchange")]
    seq_len: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Token offsets of `slices` uniform slices of `seq_len` tokens: `slices + 1` from 0.
fn uniform_bounds(seq_len: u64, slices: u32) -> anyhow::Result<Vec<u64>> {
    // Uniform boundaries do not depend on the cost; any valid model serves.
    let cost = CostModel::fitted(0.0, 1.0, 0.0)?;
    let plan = uniform(seq_len, slices as usize, 1, Padding::None, &cost)
        .with_context(|| format!("--seq-len {seq_len} in {slices} slices"))?;
    Ok(std::iter::once(0)
        .chain(plan.slices.iter().map(|s| s.end))
        .collect())
}

/// Runs `seqpipe schedule`.
pub fn run(args: &ScheduleArgs) -> anyhow::Result<()> {
    let mut schedule = args.spec.generate()?;
    if args.lowered {
        schedule = lower(&schedule)?;
    }
    let costs = UnitCosts {
        vocab: 0.25,
        ..UnitCosts::new(1.0, 2.0)
    };
    // The vocabulary ops first: the exchange pairs computes around their meetings.
    if args.vocab_parallel {
        schedule = insert_vocab_parallel(&schedule, |a| costs.cost(a))?;
    }
    let (sim, prices) = match args.exchange {
        false => (
            simulate(&schedule, |a| costs.cost(a), &P2p::free())?,
            "equal units (F = 1, B = 2, a vocabulary op 0.25)".to_string(),
        ),
        true => exchanged(&mut schedule, args, &costs)?,
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Text => print_text(&schedule, &sim, &prices, &mut out)?,
        Format::Json => writeln!(out, "{}", schedule.to_json())?,
        Format::Csv => csv::write_csv(&schedule, &mut out)?,
        Format::PytorchCsv => write!(
            out,
            "{}",
            pytorch::write(&pytorch::from_schedule(&schedule)?)
        )?,
        Format::Chrome => write_chrome_trace(&sim, 1.0, &mut out)?,
        Format::Svg => write_svg(&sim, &mut out)?,
    }
    out.flush().context("writing to stdout")
}

/// Marks `schedule`'s exchanges and simulates it with them priced, where the attention grows
/// along the sequence (or there would be nothing to level): half of a sequence's forward in its
/// attention, a slice's forward about one unit. Also says what the schedule takes without them.
fn exchanged(
    schedule: &mut Schedule,
    args: &ScheduleArgs,
    costs: &UnitCosts,
) -> anyhow::Result<(Simulation, String)> {
    let bounds = uniform_bounds(args.seq_len, args.spec.slices)?;
    let times = AttentionCosts::new(&bounds, 0.5);
    let n = f64::from(args.spec.slices);
    let other = |a: &Action| costs.cost(a) * f64::from(!a.op.is_compute());
    let cost = |a: &Action| n * times.cost(a) + other(a);
    let column = |a: &Action| n * times.column(a);
    let plain = lower(schedule)?;
    let without = simulate(&plain, cost, &P2p::free())?;
    *schedule = insert_exchange(&plain, cost, column, &bounds, ExchangePolicy::Shorten)?;
    let sim = simulate(
        schedule,
        exchange_costs(schedule, cost, column),
        &P2p::free(),
    )?;
    let prices = format!(
        "{} uniform slices of {} tokens, half of a forward's time in attention (a slice's \
         forward about 1, B = 2F, a vocabulary op 0.25); without the exchange: makespan {:.2}, \
         bubble ratio {:.2} %; with it",
        args.spec.slices,
        args.seq_len,
        without.makespan,
        100.0 * without.bubble_ratio
    );
    Ok((sim, prices))
}

fn print_text(
    schedule: &Schedule,
    sim: &Simulation,
    prices: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let c = &schedule.config;
    writeln!(
        out,
        "{} p={} m={} n={} v={}{}: {} actions",
        c.kind,
        c.stages,
        c.microbatches,
        c.slices,
        c.chunks,
        c.group.map(|g| format!(" g={g}")).unwrap_or_default(),
        schedule.len()
    )?;
    writeln!(
        out,
        "{prices}: makespan {:.2}, bubble ratio {:.2} %",
        sim.makespan,
        100.0 * sim.bubble_ratio
    )?;
    writeln!(
        out,
        "peak units in flight per stage: {:?}",
        sim.max_in_flight()
    )?;
    writeln!(out, "\ntimeline (one column per unit of time):")?;
    write!(out, "{}", timeline(sim, 1.0))?;
    writeln!(
        out,
        "\nprogram per stage (virtual stage, op, micro-batch[.slice]):"
    )?;
    write!(out, "{}", grid(schedule))?;
    Ok(())
}
