//! Ledger reports as CSV, JSON and an SVG plot of device memory over time, all returned as strings.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{run_ledger, MemEvent, MemOp};
//! let event = |time, op| MemEvent { time, stage: 0, op, unit: "act mb0".into(), bytes: 50.0 };
//! let events = [event(1.0, MemOp::Allocate), event(3.0, MemOp::Free)];
//! let report = run_ledger(&[100.0], &events).unwrap(); // 100 bytes of model states
//! assert_eq!(
//!     report.to_csv(),
//!     "stage,time,device_bytes,host_bytes\n0,0,100,0\n0,1,150,0\n0,3,100,0\n"
//! );
//! assert!(report.to_json().contains("\"peak\": 150.0"));
//! assert!(report.to_svg("stage memory", 640, 360).unwrap().starts_with("<svg"));
//! ```

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::error::{MemoryError, Result};
use crate::ledger::LedgerReport;
use crate::peak::GIB;

impl LedgerReport {
    /// One row per curve point: `stage,time,device_bytes,host_bytes`.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("stage,time,device_bytes,host_bytes\n");
        for stage in &self.stages {
            for p in &stage.curve {
                // Writing to a String cannot fail.
                let _ = writeln!(out, "{},{},{},{}", stage.stage, p.time, p.device, p.host);
            }
        }
        out
    }

    /// The whole report (peaks and curves) as pretty JSON.
    pub fn to_json(&self) -> String {
        // Plain numbers and strings only: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// An SVG line chart of device GiB over time, one step line per stage.
    pub fn to_svg(&self, title: &str, width: u32, height: u32) -> Result<String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
            self.draw(&root, title)
                .map_err(|e| MemoryError::Plot(e.to_string()))?;
            root.present()
                .map_err(|e| MemoryError::Plot(e.to_string()))?;
        }
        Ok(svg)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        title: &str,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let points = self.stages.iter().flat_map(|s| s.curve.iter());
        let t_max = points
            .clone()
            .map(|p| p.time)
            .fold(0.0, f64::max)
            .max(1e-12);
        let t_min = points.clone().map(|p| p.time).fold(0.0, f64::min);
        let y_max = self.stages.iter().map(|s| s.peak).fold(0.0, f64::max) / GIB * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(t_min..t_max, 0.0..y_max.max(1e-9))?;
        chart
            .configure_mesh()
            .x_desc("time")
            .y_desc("device GiB")
            .draw()?;
        for (i, stage) in self.stages.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            // A step function: hold each value until the next point.
            let mut steps = Vec::with_capacity(stage.curve.len() * 2);
            for w in stage.curve.windows(2) {
                steps.push((w[0].time, w[0].device / GIB));
                steps.push((w[1].time, w[0].device / GIB));
            }
            if let Some(last) = stage.curve.last() {
                steps.push((last.time, last.device / GIB));
            }
            chart
                .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
                .label(format!("stage {}", stage.stage))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}
