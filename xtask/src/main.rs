//! `cargo xtask`: the project's automation, one subcommand per job.

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
}

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    match Cli::parse().command {
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
