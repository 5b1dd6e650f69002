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
    /// Build the CUDA binaries on this (CPU-only) machine: installs the pinned CUDA wheels into
    /// .venv-cuda, builds `seqpipe` (cuda, nccl) and `xtask` (cuda) into target/gpu/bin/.
    GpuBuild,
    /// On the GPU machine, with the carried `target/gpu/bin/xtask`: kernels vs the CPU path and
    /// PyTorch, the trainer oracle on CUDA, NCCL. Writes out/gpu/gpu-test.md.
    GpuTest {
        /// The PyTorch reference script.
        #[arg(long, default_value = "gpu/torch_ref.py")]
        torch_script: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "out/gpu")]
        out: PathBuf,
        /// Which parts to run (a rerun after a fix need not repeat what passed).
        #[arg(long, value_delimiter = ',', default_value = "kernels,oracle,nccl")]
        parts: Vec<String>,
    },
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
    /// PipeOffload's overlap on this CPU: offload vs none over the emulated host link at
    /// bandwidths for k = 0.5, 1, 2, measured beside the simulator's prediction.
    Offload {
        /// Output directory for CSV/JSON.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// SlimPipe's attention exchange on this CPU: with and without, measured beside the
    /// simulator priced by the measured op times.
    Exchange {
        /// Output directory for CSV/JSON.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// InfiniPipe's elastic pipelines against context-length packing (1F1B, Seq1F1B) on the
    /// same documents: useful tokens/s on this CPU, and the simulated table at cluster scale.
    Elastic {
        /// Output directory for CSV/JSON.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// seqpipe beside PyTorch (`torch.distributed.pipelining`, gloo) on the same model, data
    /// shape and schedule, interleaved runs; makes the peer's venv `.venv-peer` (not for CI).
    Peer {
        /// Output directory for CSV/JSON.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Runs per case and side.
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Measured on the GPU machine (cuda build of xtask): attention vs PyTorch SDPA, a
    /// Llama-7B layer vs the matmul ceiling, a sliced training step; writes out/gpu/bench.md.
    Gpu {
        /// The PyTorch timing script.
        #[arg(long, default_value = "gpu/torch_bench.py")]
        torch_script: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "out/gpu")]
        out: PathBuf,
        /// Smaller shapes (a quick smoke run).
        #[arg(long)]
        quick: bool,
        /// Which parts to run.
        #[arg(long, value_delimiter = ',', default_value = "attention,layer,step")]
        parts: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let root = xtask::workspace_root();
    let default_out = root.join("out/bench");
    match Cli::parse().command {
        Command::Bench { which } => match which {
            Bench::Sim { out } => xtask::bench::run_sim(&out.unwrap_or(default_out)),
            Bench::Cpu { out } => xtask::bench::run_cpu(&out.unwrap_or(default_out)),
            Bench::Offload { out } => xtask::bench::run_offload(&out.unwrap_or(default_out)),
            Bench::Exchange { out } => xtask::bench::run_exchange(&out.unwrap_or(default_out)),
            Bench::Elastic { out } => xtask::bench::run_elastic(&out.unwrap_or(default_out)),
            Bench::Peer { out, reps } => {
                xtask::bench::run_peer(&root, &out.unwrap_or(default_out), reps)
            }
            Bench::Gpu {
                torch_script,
                out,
                quick,
                parts,
            } => run_gpu_bench(&torch_script, &out, quick, &parts),
        },
        Command::GpuBuild => xtask::gpu::gpu_build::gpu_build(&root).map(drop),
        Command::GpuTest {
            torch_script,
            out,
            parts,
        } => run_gpu_test(&torch_script, &out, &parts),
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

#[cfg(feature = "cuda")]
fn run_gpu_test(
    script: &std::path::Path,
    out: &std::path::Path,
    parts: &[String],
) -> anyhow::Result<()> {
    xtask::gpu::gpu_test::run(script, out, parts)
}

#[cfg(not(feature = "cuda"))]
fn run_gpu_test(_: &std::path::Path, _: &std::path::Path, _: &[String]) -> anyhow::Result<()> {
    anyhow::bail!(xtask::gpu::NEEDS_CUDA_BUILD)
}

#[cfg(feature = "cuda")]
fn run_gpu_bench(
    script: &std::path::Path,
    out: &std::path::Path,
    quick: bool,
    parts: &[String],
) -> anyhow::Result<()> {
    xtask::gpu::bench_gpu::run(script, out, quick, parts)
}

#[cfg(not(feature = "cuda"))]
fn run_gpu_bench(
    _: &std::path::Path,
    _: &std::path::Path,
    _: bool,
    _: &[String],
) -> anyhow::Result<()> {
    anyhow::bail!(xtask::gpu::NEEDS_CUDA_BUILD)
}
