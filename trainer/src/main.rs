//! The `seqpipe` command line: thin clap wiring over the library crates.
//!
//! Every allocation of the process goes through `seqpipe_trainer::heap`'s counting allocator,
//! the independent measure of the memory that `seqpipe_trainer::predict` predicts. With
//! `SEQPIPE_HEAP_REPORT=path` set, the process writes its heap report (process peak, bytes
//! still held, phase marks) there as JSON when its command has succeeded.

mod cmd;

use clap::{Parser, Subcommand};
use seqpipe_trainer::heap;

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

/// The environment variable naming where to write the process's heap report.
const HEAP_REPORT: &str = "SEQPIPE_HEAP_REPORT";

/// Sequence-sliced pipeline parallelism for long-context LLM training.
#[derive(Parser)]
#[command(name = "seqpipe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model with pipeline parallelism (no arguments: the tiny CPU demo).
    Train(Box<cmd::train::TrainArgs>),
    /// Cut one sequence into slices and show each slice's tokens and FLOPs.
    Slice(cmd::slice::SliceArgs),
    /// Search PP, TP×CP, schedule, slices, chunks, offload and recomputation for a model and cluster.
    Plan(cmd::plan::PlanArgs),
    /// Generate a pipeline schedule and print it (grid, JSON, PyTorch CSV, Chrome trace, SVG).
    Schedule(cmd::schedule::ScheduleArgs),
    /// Simulate a schedule with a model's slice costs: makespan, bubble, units in flight.
    Simulate(cmd::simulate::SimulateArgs),
    /// Write a checkpoint's model as a Hugging Face directory (transformers loads it as is).
    Export(cmd::export::ExportArgs),
    /// Loss and perplexity of a model by context length (did a context extension work?).
    Eval(cmd::eval::EvalArgs),
}

fn main() -> std::process::ExitCode {
    seqpipe_trainer::train::one_thread_per_op();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Slice(args) => cmd::slice::run(&args),
        Command::Train(args) => cmd::train::run(&args),
        Command::Plan(args) => cmd::plan::run(&args),
        Command::Schedule(args) => cmd::schedule::run(&args),
        Command::Simulate(args) => cmd::simulate::run(&args),
        Command::Export(args) => cmd::export::run(&args),
        Command::Eval(args) => cmd::eval::run(&args),
    };
    let result = result.and_then(|()| write_heap_report());
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line with the whole cause chain; no backtrace for user errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes the heap report where `SEQPIPE_HEAP_REPORT` says, if it is set.
fn write_heap_report() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(HEAP_REPORT) else {
        return Ok(());
    };
    // Taken before serialising, which allocates.
    let report = heap::report();
    std::fs::write(&path, serde_json::to_string(&report)?).map_err(|e| {
        anyhow::anyhow!(
            "{HEAP_REPORT}: writing {}: {e}",
            std::path::Path::new(&path).display()
        )
    })
}
