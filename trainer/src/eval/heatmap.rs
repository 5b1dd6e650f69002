//! The passkey table as an SVG heat map: context length down, key depth across, each cell
//! coloured by the share of keys retrieved (red none, green all) and labelled with the count.

use plotters::prelude::*;

use std::path::Path;

use super::PasskeyCell;
use crate::checkpoint::atomic::write_atomic;
use crate::error::{fail, Context, Error, Result};

/// The first line of every heat map seqpipe writes: an existing file without it is not ours to
/// overwrite.
const MARK: &str = "<!-- seqpipe eval: passkey heat map -->";

/// Cell size in pixels, and the margins for the axis labels.
const CELL: (u32, u32) = (80, 36);
const LEFT: u32 = 90;
const TOP: u32 = 60;

/// The heat map of `cells` (one per length × depth, in the probe's order) as SVG text.
pub fn passkey_svg(cells: &[PasskeyCell], title: &str) -> Result<String> {
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.dedup();
    let depths: Vec<f64> = cells
        .iter()
        .take_while(|c| c.length == cells[0].length)
        .map(|c| c.depth)
        .collect();
    let size = (
        LEFT + CELL.0 * depths.len() as u32 + 20,
        TOP + CELL.1 * lengths.len() as u32 + 20,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, cells, &lengths, &depths, title).map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(format!("{MARK}\n{svg}"))
}

/// Writes the heat map to `path` atomically; a file already there that seqpipe did not write
/// is refused, never overwritten.
pub fn write_passkey_svg(path: &Path, cells: &[PasskeyCell], title: &str) -> Result<()> {
    check_passkey_svg_path(path)?;
    write_atomic(path, passkey_svg(cells, title)?.as_bytes())
}

/// Whether the heat map can be written at `path` (checked before the probe runs, so that no
/// work is lost to a bad path): a file, in a directory that exists, new or one seqpipe wrote.
pub fn check_passkey_svg_path(path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) || path.is_dir() {
        fail!(
            Config,
            "heat map path {}: give a file name in a directory that exists",
            path.display()
        );
    }
    if path.exists() {
        let head = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if !head.starts_with(MARK.as_bytes()) {
            fail!(
                Config,
                "{} exists and is not a heat map seqpipe wrote: give a new path",
                path.display()
            );
        }
    }
    Ok(())
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("drawing the passkey heat map: {e}"))
}

/// Red (0) to green (1) through yellow.
fn colour(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let red = (255.0 * (2.0 - 2.0 * s).min(1.0)) as u8;
    let green = (200.0 * (2.0 * s).min(1.0)) as u8;
    RGBColor(red, green, 60)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    cells: &[PasskeyCell],
    lengths: &[usize],
    depths: &[f64],
    title: &str,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let text = ("sans-serif", 14).into_font();
    root.draw(&Text::new(title.to_string(), (10, 8), ("sans-serif", 16)))?;
    root.draw(&Text::new("key depth →", (LEFT as i32, 28), text.clone()))?;
    for (j, depth) in depths.iter().enumerate() {
        let x = (LEFT + CELL.0 * j as u32 + 8) as i32;
        root.draw(&Text::new(format!("{depth:.2}"), (x, 44), text.clone()))?;
    }
    for (i, length) in lengths.iter().enumerate() {
        let y = (TOP + CELL.1 * i as u32) as i32;
        root.draw(&Text::new(
            format!("{length} tok"),
            (8, y + 10),
            text.clone(),
        ))?;
        for (j, cell) in cells[i * depths.len()..(i + 1) * depths.len()]
            .iter()
            .enumerate()
        {
            let x = (LEFT + CELL.0 * j as u32) as i32;
            let corner = (x + CELL.0 as i32 - 2, y + CELL.1 as i32 - 2);
            root.draw(&Rectangle::new(
                [(x, y), corner],
                colour(cell.accuracy()).filled(),
            ))?;
            let label = format!("{}/{}", cell.retrieved, cell.trials);
            root.draw(&Text::new(label, (x + 10, y + 10), text.clone()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_labelled_cell_per_length_and_depth() {
        let cells: Vec<PasskeyCell> = [128, 1024]
            .iter()
            .flat_map(|&length| {
                [0.0, 0.5, 1.0].map(|depth| PasskeyCell {
                    length,
                    depth,
                    trials: 4,
                    retrieved: if length == 128 { 4 } else { 1 },
                    token_accuracy: 0.5,
                })
            })
            .collect();
        let svg = passkey_svg(&cells, "probe").unwrap();
        assert_eq!(
            svg.matches("<rect").count(),
            1 + 6,
            "background and six cells"
        );
        assert_eq!(svg.matches("\n4/4\n").count(), 3);
        assert_eq!(svg.matches("\n1/4\n").count(), 3);
        assert!(svg.contains("1024 tok") && svg.contains("0.50"));
        assert_eq!(colour(1.0), RGBColor(0, 200, 60));
        assert_eq!(colour(0.0), RGBColor(255, 0, 60));
    }

    #[test]
    fn a_file_seqpipe_did_not_write_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let cells = [PasskeyCell {
            length: 64,
            depth: 0.5,
            trials: 2,
            retrieved: 1,
            token_accuracy: 0.6,
        }];
        let ours = dir.path().join("ours.svg");
        write_passkey_svg(&ours, &cells, "a").unwrap();
        write_passkey_svg(&ours, &cells, "b").unwrap();
        assert!(std::fs::read_to_string(&ours).unwrap().contains("\nb\n"));
        let theirs = dir.path().join("theirs.svg");
        std::fs::write(&theirs, "<svg/>").unwrap();
        let e = write_passkey_svg(&theirs, &cells, "c")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("theirs.svg") && e.contains("not a heat map seqpipe wrote"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "<svg/>");
    }
}
