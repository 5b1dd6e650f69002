//! `seqpipe schedule`: generate a pipeline schedule and print it as a grid, JSON, CSV, a Chrome
//! trace or an SVG timeline (the last two simulated with equal units, `B = 2F`).

use std::io::Write;

use anyhow::Context;
use clap::{Args, ValueEnum};
use seqpipe_schedule::render::{grid, timeline, write_chrome_trace, write_svg};
use seqpipe_schedule::validate::render_violations;
use seqpipe_schedule::{
    csv, generate, insert_exchange, insert_vocab_parallel, lower, pytorch, simulate, validate, P2p,
    Schedule, ScheduleConfig, ScheduleKind, Simulation, UnitCosts,
};

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
    /// Mark SlimPipe's attention context exchanges (`F0.3@2+1`: stage 2 attends to this unit's
    /// oldest slice; `@0`: this compute serves stage 0), as `seqpipe train --exchange` runs them;
    /// implies --lowered.
    #[arg(long)]
    exchange: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
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
    if args.exchange {
        schedule = insert_exchange(&lower(&schedule)?, |a| costs.cost(a))?;
    }
    let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free())?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Text => print_text(&schedule, &sim, &mut out)?,
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

fn print_text(schedule: &Schedule, sim: &Simulation, out: &mut dyn Write) -> anyhow::Result<()> {
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
        "equal units (F = 1, B = 2, a vocabulary op 0.25): makespan {}, bubble ratio {:.2} %",
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
