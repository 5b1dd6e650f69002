//! `cargo xtask bench`: simulated sweeps and paper reproductions (`sim`), real CPU training runs
//! (`cpu`), the host link's overlap with compute on this CPU (`offload`), seqpipe beside PyTorch on
//! the same pipeline (`peer`), and the GPU entry point (`gpu`). Tables go to stdout as Markdown and to `--out` as
//! CSV/JSON with SVG plots. Simulated figures are labelled simulated; measured figures name the
//! machine they came from.

pub mod cpu;
pub mod detail;
pub mod elastic;
pub mod exchange;
pub mod exchange_sim;
pub mod offload;
pub mod peer;
pub mod plot;
pub mod repro;
pub mod sim;
pub mod table;

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use plot::{line_chart, Labels, Series};
use sim::{Best, FAMILIES, SETUPS};

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Prints a measured table and writes it as `<stem>.csv` and its rows as `<stem>.json`.
fn emit_table(
    dir: &Path,
    stem: &str,
    t: &table::Table,
    rows: &impl serde::Serialize,
    started: Instant,
) -> Result<()> {
    println!("{}", t.to_markdown());
    write(dir, &format!("{stem}.csv"), &t.to_csv())?;
    write(
        dir,
        &format!("{stem}.json"),
        &serde_json::to_string_pretty(rows)?,
    )?;
    println!(
        "wrote {stem}.{{csv,json}} to {}; took {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The CPU's model name from `/proc/cpuinfo`.
fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A plotted metric: file prefix, y-axis label, value of a sweep row.
type Metric = (&'static str, &'static str, fn(&Best) -> f64);

/// One chart per setup and metric: a line per schedule family, fitting points only.
fn sweep_plots(dir: &Path, rows: &[Best]) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for setup in SETUPS {
        let tag = format!("{}_{}x{}", setup.model, setup.gpus, setup.gpu);
        let metrics: [Metric; 2] = [
            ("mfu", "predicted MFU % (simulated)", |b| b.eval.mfu * 100.0),
            ("peak", "worst-stage peak GiB (simulated)", |b| {
                b.eval.peak_bytes / (1u64 << 30) as f64
            }),
        ];
        for (metric, y, value) in metrics {
            let series: Vec<Series> = FAMILIES
                .iter()
                .map(|f| Series {
                    name: f.to_string(),
                    points: rows
                        .iter()
                        .filter(|b| b.setup.model == setup.model && b.setup.gpu == setup.gpu)
                        .filter(|b| b.family == *f && b.eval.fits())
                        .map(|b| ((b.context / 1024) as f64, value(b)))
                        .collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect();
            if series.is_empty() {
                continue;
            }
            let title = format!("{tag}: best feasible plan per schedule (simulated)");
            let svg = line_chart(
                &Labels {
                    title: &title,
                    x: "context length (K tokens)",
                    y,
                },
                &series,
            )?;
            let name = format!("{metric}_vs_context_{tag}.svg");
            write(dir, &name, &svg)?;
            files.push(name);
        }
    }
    Ok(files)
}

fn detail_outputs(dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for (i, d) in detail::chosen().iter().enumerate() {
        let (sim, ledger) = detail::run(d)?;
        let label = detail::label(d);
        let title = format!(
            "{}: device memory per stage (simulated ledger)",
            detail::title(d)
        );
        write(
            dir,
            &format!("memory_over_time_{label}.svg"),
            &ledger.to_svg(&title, 900, 420)?,
        )?;
        write(
            dir,
            &format!("memory_over_time_{label}.csv"),
            &ledger.to_csv(),
        )?;
        write(
            dir,
            &format!("memory_over_time_{label}.json"),
            &ledger.to_json(),
        )?;
        files.push(format!("memory_over_time_{label}.{{svg,csv,json}}"));
        let peaks: Vec<String> = ledger.stages.iter().map(|s| table::gib(s.peak)).collect();
        println!(
            "detail (simulated): {}: bubble {}, per-stage peak GiB {}",
            detail::title(d),
            table::pct(sim.bubble_ratio),
            peaks.join(" / ")
        );
        if i == 0 {
            write(
                dir,
                &format!("timeline_{label}.svg"),
                &seqpipe_schedule::render::svg(&sim),
            )?;
            files.push(format!("timeline_{label}.svg"));
        }
    }
    Ok(files)
}

/// `bench sim`: the sweep, the reproduction table, plots; returns the files written.
pub fn run_sim(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let contexts: Vec<u64> = sim::CONTEXTS.to_vec();
    let rows = sim::sweep(SETUPS, &contexts)?;
    let sweep = sim::table(&rows)?;
    println!("## Simulated sweep (SIMULATED: planner model, kernel efficiency {} assumed, budget {} % of nominal GPU memory, communication over the GPU's DGX interconnect (memory::comm); elastic schedule not swept: no closed form yet)\n", sim::EFFICIENCY, sim::BUDGET_SHARE * 100.0);
    println!("{}", sweep.to_markdown());
    write(dir, "sim_sweep.csv", &sweep.to_csv())?;
    write(dir, "sim_sweep.json", &serde_json::to_string_pretty(&rows)?)?;
    let repro = repro::reproduction()?;
    println!(
        "## Reproduction of SPEC §5/§6 (ours SIMULATED)\n\n{}",
        repro.to_markdown()
    );
    write(dir, "reproduction.csv", &repro.to_csv())?;
    write(
        dir,
        "reproduction.json",
        &serde_json::to_string_pretty(&repro)?,
    )?;
    let mut files = vec![
        "sim_sweep.{csv,json}".to_string(),
        "reproduction.{csv,json}".into(),
    ];
    files.extend(sweep_plots(dir, &rows)?);
    files.extend(detail_outputs(dir)?);
    println!("\nwrote to {}: {}", dir.display(), files.join(", "));
    println!("bench sim took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `bench cpu`: measured runs beside predictions.
pub fn run_cpu(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let runs = cpu::run_all(|line| eprintln!("{line}"))?;
    let t = cpu::table(&runs)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let peak = runs.first().map_or(0.0, |r| r.peak_flops);
    let after = seqpipe_trainer::train::measure_matmul_peak()?;
    // The load average says how shared the machine was while it was measured.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_else(|_| "unknown".into());
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "## CPU runs (MEASURED on this machine: {cores} cores, f32 matmul peak {:.1} GFLOP/s measured before the runs ({:.1} after; load average {load} at the end: expect noise of that order); 4 stages as threads, 4 micro-batches, batch 1, {} steps, first untimed; {} runs per row, interleaved, medians; prediction calibrated on the first row, see xtask/src/bench/cpu.rs)\n",
        peak / 1e9,
        after / 1e9,
        cpu::STEPS,
        cpu::REPS
    );
    emit_table(dir, "cpu_runs", &t, &runs, started)
}

/// `bench offload`: offload's overlap with compute on the emulated host link, measured beside
/// the simulator (see `offload.rs`).
pub fn run_offload(dir: &Path) -> Result<()> {
    // Stages are threads, one core each: a stage waiting for the link must not lend its core
    // to the other stage's matmuls, or the waits would hide behind faster compute.
    seqpipe_trainer::train::one_thread_per_op();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let runs = offload::run_all(|line| eprintln!("{line}"))?;
    let t = offload::table(&runs)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "## Offload overlap (MEASURED on this machine: {cores} cores; GIS, 2 stages as threads × 2 chunks, 4 micro-batches, hidden 512, 256 tokens, f32; offload auto over the emulated host link; {} timed steps per row, interleaved, medians; predicted by the simulator on the plain run's measured action durations, see xtask/src/bench/offload.rs)\n",
        offload::STEPS
    );
    emit_table(dir, "offload_runs", &t, &runs, started)
}

/// `bench exchange`: SlimPipe's attention exchange on this CPU, beside the simulator (see
/// `exchange.rs`).
pub fn run_exchange(dir: &Path) -> Result<()> {
    seqpipe_trainer::train::one_thread_per_op();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let (runs, times) = exchange::run_all(|line| eprintln!("{line}"))?;
    let t = exchange::table(&runs)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "## Attention exchange (MEASURED on this machine: {cores} cores; SlimPipe, 2 stages as threads, 4 micro-batches of one 1024-token sequence in 8 slices, hidden 256, 4 layers, f32; {} timed steps per row, interleaved, medians; simulated with a cost fitted to the measured durations of the run without the exchange, see xtask/src/bench/exchange.rs)\n",
        exchange::STEPS
    );
    emit_table(dir, "exchange_runs", &t, &runs, started)?;
    let what_ifs = exchange_sim::what_ifs(&times)?;
    println!(
        "\n## Attention exchange at more stages (SIMULATED with the op times measured above: forward {:.3e} s + {:.3e} s per score entry, backward {:.3e} s + {:.3e} s; {} layers, batch × heads {}, {} tokens per stage as measured; SlimPipe, pairs kept only where they do not lengthen the simulated iteration, see xtask/src/bench/exchange_sim.rs)\n",
        times.forward.0, times.forward.1, times.backward.0, times.backward.1,
        times.layers, times.batch_heads, times.seq_len
    );
    let t = exchange_sim::table(&what_ifs)?;
    emit_table(dir, "exchange_what_if", &t, &what_ifs, started)
}

/// `bench elastic`: elastic pipelines against context-length packing, measured on this CPU and
/// simulated at cluster scale (see `elastic.rs`).
pub fn run_elastic(dir: &Path) -> Result<()> {
    seqpipe_trainer::train::one_thread_per_op();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let runs = elastic::measure(|line| eprintln!("{line}"))?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "## Elastic pipelines vs context-length packing (MEASURED on this machine: {}, {cores} cores; the same documents ({} tokens), log-normal lengths (mu 5.2, sigma 1.0) up to {} tokens; {} stages as threads, hidden 256, 4 layers, f32; {} mesh / fixed slices; {} timed iterations per method, interleaved, medians; see xtask/src/bench/elastic.rs)\n",
        cpu_model(),
        runs[0].useful,
        elastic::CONTEXT,
        elastic::STAGES,
        elastic::SLICES,
        elastic::REPS
    );
    emit_table(
        dir,
        "elastic_measured",
        &elastic::measured_table(&runs)?,
        &runs,
        started,
    )?;
    let rows = elastic::simulated(128)?;
    println!(
        "\n## Elastic pipelines at cluster scale (SIMULATED: memory::elastic_compare, Llama-7B, TP 4 × 8 stages = 32 GPUs of 80 GiB at 400 TFLOP/s, 128 sequences per batch; iteration time of the best plan per method)\n"
    );
    emit_table(
        dir,
        "elastic_simulated",
        &elastic::simulated_table(&rows)?,
        &rows,
        started,
    )
}

/// `bench peer`: seqpipe and PyTorch on the same model, data shape and schedule, interleaved
/// (see `peer.rs`). Builds the release `seqpipe` and makes the peer's venv first.
pub fn run_peer(root: &Path, dir: &Path, reps: usize) -> Result<()> {
    anyhow::ensure!(reps > 0, "--reps must be at least 1 (got 0)");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "seqpipe", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .status()?;
    anyhow::ensure!(status.success(), "building the release seqpipe failed");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runner = peer::Runner {
        seqpipe: root.join("target/release/seqpipe"),
        python: peer::peer_python(root)?,
        script: root.join("xtask/peer/torch_pipeline.py"),
        scratch: dir.join("peer_runs"),
        cores,
    };
    fs::create_dir_all(&runner.scratch)?;
    let rows = peer::run_all(&runner, &peer::cases(cores), reps)?;
    let t = peer::table(&rows)?;
    let cpu = cpu_model();
    println!(
        "## seqpipe vs PyTorch (MEASURED on this machine: {cpu}, {cores} cores; 4 layers, hidden 256, 4 heads, FFN 688, vocab 256, 4 micro-batches of 1024 tokens, f32; {} timed steps per run after one untimed, median per run, {reps} interleaved runs per side, median of runs; PyTorch: `torch.distributed.pipelining` Schedule1F1B over gloo, one process per stage with cores ÷ stages threads, or one process with every core for PP=1; seqpipe: one process, stages and replicas as threads, one thread per op; see xtask/src/bench/peer.rs)\n",
        peer::STEPS
    );
    emit_table(dir, "peer_runs", &t, &rows, started)
}
