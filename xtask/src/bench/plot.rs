//! SVG line charts with plotters: one series per schedule family over context length.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One named line.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points in x order.
    pub points: Vec<(f64, f64)>,
}

/// Axis labels and title of a chart.
pub struct Labels<'a> {
    /// Chart title.
    pub title: &'a str,
    /// X axis description.
    pub x: &'a str,
    /// Y axis description.
    pub y: &'a str,
}

/// A line chart with a log₂ x axis (context lengths double), returned as SVG text.
pub fn line_chart(labels: &Labels, series: &[Series]) -> Result<String> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    if !(x_min > 0.0 && x_max >= x_min) {
        return Err(anyhow!("chart `{}` has no positive x values", labels.title));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        draw(
            &root,
            labels,
            series,
            (x_min, x_max * 1.05),
            y_max.max(1e-9) * 1.1,
        )
        .map_err(|e| anyhow!("plotting `{}`: {e}", labels.title))?;
        root.present()
            .map_err(|e| anyhow!("plotting `{}`: {e}", labels.title))?;
    }
    Ok(svg)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    labels: &Labels,
    series: &[Series],
    (x_min, x_max): (f64, f64),
    y_max: f64,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(labels.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(56)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(labels.x)
        .y_desc(labels.y)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_names_every_series_and_rejects_empty_input() {
        let labels = Labels {
            title: "t",
            x: "context K",
            y: "MFU %",
        };
        let series = vec![
            Series {
                name: "1f1b".into(),
                points: vec![(32.0, 40.0), (64.0, 30.0)],
            },
            Series {
                name: "slimpipe".into(),
                points: vec![(32.0, 45.0), (64.0, 44.0)],
            },
        ];
        let svg = line_chart(&labels, &series).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("1f1b") && svg.contains("slimpipe"));
        assert!(line_chart(&labels, &[]).is_err());
    }
}
