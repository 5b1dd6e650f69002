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
    /// Cut one sequence into slices and show each slice's tokens and FLOPs.
    Slice(cmd::slice::SliceArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Slice(args) => cmd::slice::run(&args),
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
