//! `seqpipe simulate`: price every slice of one sequence with the model's FLOPs, run a schedule
//! through the event simulator and print makespan, bubble ratio and units in flight per stage.

use clap::{Args, ValueEnum};
use seqpipe_schedule::render::{write_chrome_trace, write_svg};
use seqpipe_schedule::{simulate, CostTable, MessageBytes, P2p, Simulation};
use seqpipe_slicing::{
    balanced, parse_token_count, uniform, CostModel, ModelShape, Padding, SlicePlan,
};

use super::model::{describe, resolve_model};
use super::schedule::ScheduleSpec;

/// Slicing method.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Slicing {
    /// Equal lengths (SlimPipe).
    Uniform,
    /// Equal forward FLOPs (Seq1F1B).
    Balanced,
}

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// Summary and per-stage table.
    Text,
    /// The whole simulation (timeline included) as JSON.
    Json,
    /// Chrome trace JSON (Perfetto, chrome://tracing), times in microseconds.
    Chrome,
    /// SVG timeline.
    Svg,
}

/// Arguments of `seqpipe simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Model preset name or path to a Hugging Face config.json.
    #[arg(long)]
    model: String,
    /// Sequence length per micro-batch, e.g. 65536 or 64k.
    #[arg(long, allow_hyphen_values = true)]
    seq: String,
    #[command(flatten)]
    spec: ScheduleSpec,
    /// How sequences are cut into slices.
    #[arg(long, value_enum, default_value_t = Slicing::Balanced)]
    slicing: Slicing,
    /// Slice lengths are multiples of this.
    #[arg(long, default_value_t = 1)]
    multiple: u64,
    /// Achieved TFLOP/s per GPU, turning FLOPs into time.
    #[arg(long, default_value_t = 400.0)]
    tflops: f64,
    /// Point-to-point bandwidth between neighbouring stages, GB/s.
    #[arg(long, default_value_t = 50.0)]
    bandwidth_gbs: f64,
    /// Point-to-point latency per message, microseconds.
    #[arg(long, default_value_t = 10.0)]
    latency_us: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Runs `seqpipe simulate`.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    if !(args.tflops > 0.0 && args.tflops.is_finite()) {
        anyhow::bail!("--tflops must be a positive number, got {}", args.tflops);
    }
    let shape = resolve_model(&args.model)?;
    let seq_len = parse_token_count(&args.seq)?;
    let cost = CostModel::flops(&shape)?;
    let schedule = args.spec.generate()?;
    let c = schedule.config;
    if u64::from(c.virtual_stages()) > shape.layers {
        anyhow::bail!(
            "{} virtual stages (stages × chunks) for a model of {} layers: every virtual stage \
             needs at least one layer; use at most {} stages × chunks",
            c.virtual_stages(),
            shape.layers,
            shape.layers
        );
    }
    let plan = match args.slicing {
        Slicing::Uniform => uniform(
            seq_len,
            c.slices as usize,
            args.multiple,
            Padding::None,
            &cost,
        )?,
        Slicing::Balanced => balanced(seq_len, c.slices as usize, args.multiple, &cost)?,
    };
    // Layers split evenly over the p·v virtual stages; activations travel as bf16 [tokens, H].
    let per_vstage = f64::from(c.virtual_stages()) * args.tflops * 1e12;
    let forward: Vec<f64> = plan.slices.iter().map(|s| s.cost / per_vstage).collect();
    let bytes: Vec<f64> = plan
        .slices
        .iter()
        .map(|s| (s.len() * shape.hidden * 2) as f64)
        .collect();
    let table = CostTable::repeated(c.microbatches, &forward, &bytes, cost.backward_factor);
    let message = |a: &seqpipe_schedule::Action| table.message_bytes(a);
    let p2p = P2p::new(
        args.latency_us * 1e-6,
        args.bandwidth_gbs * 1e9,
        MessageBytes::PerMessage(&message),
    );
    let sim = simulate(&schedule, |a| table.cost(a), &p2p)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string(&sim)?),
        Format::Chrome => write_chrome_trace(&sim, 1e6, &mut out)?,
        Format::Svg => write_svg(&sim, &mut out)?,
        Format::Text => print_text(args, &shape, &plan, &sim)?,
    }
    Ok(())
}

/// The text report: the model, the slicing, the makespan and bubble, and each stage's figures.
fn print_text(
    args: &SimulateArgs,
    shape: &ModelShape,
    plan: &SlicePlan,
    sim: &Simulation,
) -> anyhow::Result<()> {
    let c = sim.config;
    outln!("model {}: {}", args.model, describe(shape));
    outln!(
        "sequence {} tokens, {} {} slices (lengths {:?}), max/min slice cost {:.3}",
        plan.seq_len,
        plan.len(),
        plan.method,
        plan.lengths(),
        plan.max_min_cost_ratio()
    );
    outln!(
        "{} p={} m={} n={} v={}{}: makespan {:.3} ms, bubble ratio {:.2} %",
        c.kind,
        c.stages,
        c.microbatches,
        c.slices,
        c.chunks,
        c.group.map(|g| format!(" g={g}")).unwrap_or_default(),
        sim.makespan * 1e3,
        100.0 * sim.bubble_ratio
    );
    outln!(
        "{:>5} {:>11} {:>9} {:>17}",
        "stage",
        "busy ms",
        "bubble",
        "units in flight"
    );
    for (r, st) in sim.stages.iter().enumerate() {
        outln!(
            "{r:>5} {:>11.3} {:>8.2}% {:>17}",
            st.busy * 1e3,
            100.0 * st.bubble_ratio,
            st.max_in_flight
        );
    }
    Ok(())
}
