//! Draw a SlimPipe schedule: generate, validate, lower, simulate, then write the text grid, a
//! Perfetto (Chrome) trace and an SVG; and read a schedule in PyTorch's CSV dialect.
//!
//! `cargo run -p seqpipe-schedule --example slimpipe [output directory]` (default: the current
//! directory; writes slimpipe.trace.json and slimpipe.svg).

use std::path::PathBuf;

use seqpipe_schedule::render::{chrome_trace, grid, svg};
use seqpipe_schedule::*;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    // p = 2 stages, m = 2 micro-batches, n = 4 slices each, v = 2 chunks per stage.
    let config = ScheduleConfig::new(ScheduleKind::SlimPipe, 2, 2)
        .with_slices(4)
        .with_chunks(2);
    let schedule = generate(&config)?;
    assert!(validate(&schedule).is_empty());
    print!("{}", grid(&schedule));
    let program = lower(&schedule)?; // with matched sends and receives
    let costs = UnitCosts::new(1.0, 2.0); // a forward costs 1, a backward 2
    let sim = simulate(&program, |a| costs.cost(a), &P2p::free())?;
    println!(
        "bubble {:.1} %, units in flight per stage {:?}",
        100.0 * sim.bubble_ratio,
        sim.max_in_flight()
    );
    std::fs::write(
        out.join("slimpipe.trace.json"),
        chrome_trace(&sim, 1000.0).to_string(),
    )?;
    std::fs::write(out.join("slimpipe.svg"), svg(&sim))?;

    // A schedule PyTorch wrote (compute only, 2 ranks, an idle step on rank 1).
    let rows = pytorch::read("0F0,0F1,0B0,0B1\n,1F0,1B0,1F1,1B1\n")?;
    let theirs = pytorch::to_schedule(
        &rows,
        ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 2),
        false,
    )?;
    assert!(validate(&theirs).is_empty());
    print!("{}", grid(&theirs));
    Ok(())
}
