//! Chrome trace JSON of a simulation: one process, one thread (track) per stage, one complete
//! (`"ph": "X"`) event per action with a duration, coloured by op; receive waits appear as
//! "wait …" events so stalls are visible. Opens in Perfetto and `chrome://tracing`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::render::chrome::chrome_trace;
//! use seqpipe_schedule::{one_f_one_b, simulate, P2p, UnitCosts};
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&one_f_one_b(2, 2).unwrap(), |a| costs.cost(a), &P2p::free()).unwrap();
//! let trace = chrome_trace(&sim, 1000.0); // one time unit = 1000 µs
//! let events = trace["traceEvents"].as_array().unwrap();
//! // Stage 1 waits one unit for its input, then runs its first forward.
//! let f0 = events.iter().find(|e| e["name"] == "1F0").unwrap();
//! assert_eq!(f0["tid"], 1);
//! assert_eq!((f0["ts"].as_f64(), f0["dur"].as_f64()), (Some(1000.0), Some(1000.0)));
//! assert!(events.iter().any(|e| e["name"] == "wait 1RECV_F0"));
//! ```

use std::io::Write;

use serde_json::{json, Value};

use crate::action::Op;
use crate::render::label;
use crate::simulate::Simulation;

/// Chrome's reserved colour names per op (the trace format does not take RGB).
fn cname(op: Op) -> &'static str {
    match op {
        Op::Forward => "rail_response",
        Op::Backward => "good",
        Op::BackwardInput => "rail_animation",
        Op::BackwardWeight => "yellow",
        Op::Offload | Op::Reload => "olive",
        Op::Recompute => "bad",
        Op::VocabEmbed | Op::VocabEmbedGrad => "cq_build_passed",
        Op::VocabHead => "cq_build_failed",
        Op::SendAct | Op::RecvAct | Op::SendGrad | Op::RecvGrad => "grey",
    }
}

/// The trace as a JSON value; `us_per_unit` converts simulated time to microseconds.
pub fn chrome_trace(sim: &Simulation, us_per_unit: f64) -> Value {
    let mut events = Vec::new();
    events.push(json!({"ph": "M", "pid": 0, "name": "process_name",
        "args": {"name": format!("{} p={} m={} n={} v={}", sim.config.kind, sim.config.stages,
            sim.config.microbatches, sim.config.slices, sim.config.chunks)}}));
    for (r, list) in sim.timeline.iter().enumerate() {
        events.push(json!({"ph": "M", "pid": 0, "tid": r, "name": "thread_name",
            "args": {"name": format!("stage {r}")}}));
        for t in list {
            let a = &t.action;
            let name = label(&sim.config, a);
            if t.wait > 0.0 {
                events.push(
                    json!({"ph": "X", "pid": 0, "tid": r, "name": format!("wait {name}"),
                    "cat": "wait", "ts": t.start * us_per_unit, "dur": t.wait * us_per_unit,
                    "cname": "terrible"}),
                );
            }
            if t.busy() > 0.0 {
                events.push(json!({"ph": "X", "pid": 0, "tid": r, "name": name,
                    "cat": a.op.code(), "ts": (t.start + t.wait) * us_per_unit,
                    "dur": t.busy() * us_per_unit, "cname": cname(a.op),
                    "args": {"mb": a.mb.0, "slice": a.slice.0, "chunk": a.chunk.0,
                        "virtual_stage": a.virtual_stage(sim.config.stages).0}}));
            }
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

/// Writes the trace as JSON.
pub fn write_chrome_trace(
    sim: &Simulation,
    us_per_unit: f64,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, &chrome_trace(sim, us_per_unit))?;
    writeln!(w)
}
