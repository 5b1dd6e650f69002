//! `cargo xtask`: the project's automation, one subcommand per job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "seqpipe project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check file headers, the code map and the planning crates' dependency direction.
    Tidy,
    /// Benchmarks: `sim` (simulated sweeps and paper reproductions), `cpu` (measured trainer
    /// runs on this machine), `gpu` (needs issue #11's script).
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Simulated sweeps over context, schedule, slices, chunks, offload and recomputation.
    Sim {
        /// Output directory for CSV/JSON/SVG.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Real training runs of a small model on this CPU, beside the predictions.
    Cpu {
        /// Output directory for CSV/JSON.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The same on a GPU (not available yet: exits non-zero saying what is needed).
    Gpu,
}

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let default_out = root.join("out/bench");
    match Cli::parse().command {
        Command::Bench { which } => match which {
            Bench::Sim { out } => xtask::bench::run_sim(&out.unwrap_or(default_out)),
            Bench::Cpu { out } => xtask::bench::run_cpu(&out.unwrap_or(default_out)),
            Bench::Gpu => xtask::bench::run_gpu(),
        },
        Command::Tidy => {
            let problems = xtask::tidy::check(&root)?;
            if problems.is_empty() {
                println!("tidy: ok");
                Ok(())
            } else {
                for p in &problems {
                    eprintln!("tidy: {p}");
                }
                anyhow::bail!("tidy found {} problem(s)", problems.len())
            }
        }
    }
}
