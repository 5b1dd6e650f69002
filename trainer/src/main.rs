//! The `seqpipe` command line: thin clap wiring over the library crates.

mod cmd;

use clap::{Parser, Subcommand};

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
    Train(cmd::train::TrainArgs),
    /// Cut one sequence into slices and show each slice's tokens and FLOPs.
    Slice(cmd::slice::SliceArgs),
    /// Search PP, TP×CP, schedule, slices, chunks, offload and recomputation for a model and cluster.
    Plan(cmd::plan::PlanArgs),
    /// Generate a pipeline schedule and print it (grid, JSON, PyTorch CSV, Chrome trace, SVG).
    Schedule(cmd::schedule::ScheduleArgs),
    /// Simulate a schedule with a model's slice costs: makespan, bubble, units in flight.
    Simulate(cmd::simulate::SimulateArgs),
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
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line with the whole cause chain; no backtrace for user errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
