//! SVG timeline of a simulation, written as plain SVG text: one row per stage, one rectangle per
//! compute or memory action coloured by op, labels where they fit, a legend and the bubble ratio.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::render::svg::svg;
//! use seqpipe_schedule::{one_f_one_b, simulate, P2p, UnitCosts};
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&one_f_one_b(2, 2).unwrap(), |a| costs.cost(a), &P2p::free()).unwrap();
//! let doc = svg(&sim);
//! assert!(doc.starts_with("<svg") && doc.ends_with("</svg>\n"));
//! assert!(doc.contains("1f1b p=2 m=2 n=1 v=1: makespan 9.0000, bubble 33.33%"));
//! assert_eq!(doc.matches("<title>").count(), 8); // one block per forward and backward
//! ```

use std::fmt::Write as _;
use std::io::Write;

use crate::action::Op;
use crate::render::{colour, drawn, label};
use crate::simulate::Simulation;

const WIDTH: f64 = 1200.0;
const ROW: f64 = 28.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;

/// The timeline as an SVG document.
pub fn svg(sim: &Simulation) -> String {
    let rows = sim.timeline.len();
    let height = TOP + ROW * rows as f64 + 50.0;
    let scale = if sim.makespan > 0.0 {
        (WIDTH - LEFT - 10.0) / sim.makespan
    } else {
        1.0
    };
    let mut s = String::new();
    let c = &sim.config;
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" font-size="10">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="16" font-size="13">{} p={} m={} n={} v={}: makespan {:.4}, bubble {:.2}%</text>"#,
        c.kind,
        c.stages,
        c.microbatches,
        c.slices,
        c.chunks,
        sim.makespan,
        100.0 * sim.bubble_ratio
    );
    for (r, list) in sim.timeline.iter().enumerate() {
        let y = TOP + ROW * r as f64;
        let _ = writeln!(
            s,
            r#"<text x="4" y="{:.1}">stage {r}</text>"#,
            y + ROW * 0.6
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#f4f4f4"/>"##,
            WIDTH - LEFT - 10.0,
            ROW - 4.0
        );
        for t in list.iter().filter(|t| drawn(t.action.op) && t.busy() > 0.0) {
            let x = LEFT + (t.start + t.wait) * scale;
            let w = t.busy() * scale;
            let text = label(&sim.config, &t.action);
            let _ = writeln!(
                s,
                r##"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{:.1}" fill="{}" stroke="#333" stroke-width="0.3"><title>{text} [{:.4}, {:.4})</title></rect>"##,
                ROW - 4.0,
                colour(t.action.op),
                t.start + t.wait,
                t.end
            );
            if w >= 6.5 * text.len() as f64 {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.2}" y="{:.1}" fill="white">{text}</text>"#,
                    x + 2.0,
                    y + ROW * 0.55
                );
            }
        }
    }
    let vocab = sim
        .timeline
        .iter()
        .flatten()
        .any(|t| t.action.op.is_vocab());
    legend(&mut s, TOP + ROW * rows as f64 + 20.0, vocab);
    s.push_str("</svg>\n");
    s
}

/// The ops' colours; the vocabulary-parallel ops only where the schedule has them.
fn legend(s: &mut String, y: f64, vocab: bool) {
    let ops = [
        Op::Forward,
        Op::Backward,
        Op::BackwardInput,
        Op::BackwardWeight,
        Op::Offload,
        Op::Reload,
        Op::Recompute,
        Op::VocabEmbed,
        Op::VocabHead,
        Op::VocabEmbedGrad,
    ];
    let shown = if vocab { ops.len() } else { ops.len() - 3 };
    for (i, op) in ops.into_iter().take(shown).enumerate() {
        let x = LEFT + 110.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            colour(op),
            x + 16.0,
            y + 10.0,
            op.code()
        );
    }
}

/// Writes the SVG document.
pub fn write_svg(sim: &Simulation, w: &mut dyn Write) -> std::io::Result<()> {
    w.write_all(svg(sim).as_bytes())
}
