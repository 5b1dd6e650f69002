//! Text renderers: the stage × step grid (one row per stage, one column per list position, as in
//! PyTorch's pipeline-order dumps but transposed) and a time-aligned timeline.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::render::text::{grid, timeline};
//! use seqpipe_schedule::{one_f_one_b, simulate, P2p, UnitCosts};
//! let schedule = one_f_one_b(2, 2).unwrap();
//! assert_eq!(grid(&schedule), "\
//! step      0    1    2    3
//! stage 0  0F0  0F1  0B0  0B1
//! stage 1  1F0  1B0  1F1  1B1
//! ");
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! // One column per time unit: F takes 1, B takes 2, `.` is idle.
//! assert_eq!(timeline(&sim, 1.0), "\
//! stage 0 | 0F0 0F1 .   .   0B0 --- .   0B1 ---
//! stage 1 | .   1F0 1B0 --- 1F1 1B1 --- .   .
//! ");
//! ```

use crate::action::Op;
use crate::render::{drawn, label};
use crate::schedule::Schedule;
use crate::simulate::Simulation;

/// The stage × step grid of a schedule.
pub fn grid(schedule: &Schedule) -> String {
    grid_with_marks(schedule, &[])
}

/// The grid with cells `(stage, Some(step))` shown as `[cell]`; `(stage, None)` marks the row's end
/// (a missing action).
pub(crate) fn grid_with_marks(schedule: &Schedule, marks: &[(usize, Option<usize>)]) -> String {
    let rows = schedule.to_texts();
    let steps = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; steps];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    for (i, w) in widths.iter_mut().enumerate() {
        *w = (*w).max(i.to_string().len());
    }
    let name_w = format!("stage {}", rows.len().saturating_sub(1)).len();
    let mut out = format!("{:<name_w$} ", "step");
    for (i, w) in widths.iter().enumerate() {
        out.push_str(&format!(" {i:^w$} ", w = w));
    }
    out = out.trim_end().to_string();
    out.push('\n');
    for (r, row) in rows.iter().enumerate() {
        let mut line = format!("{:<name_w$} ", format!("stage {r}"));
        for (i, w) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            if marks.contains(&(r, Some(i))) {
                line.push_str(&format!("[{cell:<w$}]", w = w));
            } else {
                line.push_str(&format!(" {cell:<w$} ", w = w));
            }
        }
        let mut line = line.trim_end().to_string();
        if marks.contains(&(r, None)) {
            line.push_str("  <-- missing actions");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A time-aligned timeline: one column per `tick` of simulated time, each compute or memory action
/// labelled in its first column and continued with `-`; idle time is `.`.
pub fn timeline(sim: &Simulation, tick: f64) -> String {
    let tick = if tick > 0.0 && tick.is_finite() {
        tick
    } else {
        1.0
    };
    let columns = (sim.makespan / tick).ceil() as usize;
    let labels: Vec<Vec<(usize, usize, String, Op)>> = sim
        .timeline
        .iter()
        .map(|list| {
            list.iter()
                .filter(|t| drawn(t.action.op) && t.busy() > 0.0)
                .map(|t| {
                    let begin = (t.end - t.busy()) / tick;
                    let (first, last) = (begin.round() as usize, (t.end / tick).round() as usize);
                    (
                        first,
                        last.max(first + 1),
                        label(&sim.config, &t.action),
                        t.action.op,
                    )
                })
                .collect()
        })
        .collect();
    let width = labels
        .iter()
        .flatten()
        .map(|l| l.2.len())
        .max()
        .unwrap_or(1);
    let name_w = format!("stage {}", labels.len().saturating_sub(1)).len();
    let mut out = String::new();
    for (r, row) in labels.iter().enumerate() {
        let mut cells = vec![format!("{:<width$}", "."); columns];
        for (first, last, text, _) in row {
            for (c, cell) in cells
                .iter_mut()
                .enumerate()
                .take((*last).min(columns))
                .skip(*first)
            {
                *cell = if c == *first {
                    format!("{text:<width$}")
                } else {
                    "-".repeat(width)
                };
            }
        }
        let line = format!("{:<name_w$} | {}", format!("stage {r}"), cells.join(" "));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
