//! seqpipe's schedule CSV: PyTorch's pipelining layout (one row per physical stage, one compact
//! action per cell, no header, as `_dump_csv` / `_load_csv`) extended with slices. Cells never
//! contain commas or quotes, so no quoting is needed; empty cells (PyTorch's idle `None`) are
//! skipped on reading, and both `\n` and `\r\n` line ends are read. CSV carries no configuration:
//! the reader takes it from the caller.
//!
//! The extension: a sliced schedule's actions carry `.{slice}` (`0F0.1`), which PyTorch's parser
//! would read as `0F0` without a word. So a sliced schedule's CSV opens with a [`SLICED_MARK`]
//! line, which PyTorch's parser refuses loudly and this reader skips. For PyTorch itself, write
//! with [`crate::pytorch`], which refuses sliced schedules.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::csv::{from_csv, to_csv};
//! use seqpipe_schedule::{one_f_one_b, ScheduleConfig, ScheduleKind};
//! let schedule = one_f_one_b(2, 2).unwrap();
//! let text = to_csv(&schedule);
//! assert_eq!(text, "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n");
//! // The CSV carries no configuration: the reader is told it.
//! let config = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 2);
//! assert_eq!(from_csv(&text, config, false).unwrap(), schedule);
//! ```

use std::io::Write;

use crate::error::Result;
use crate::schedule::{Schedule, ScheduleConfig};

/// The first line of a sliced schedule's CSV (a comment to seqpipe, an invalid action to PyTorch).
pub const SLICED_MARK: &str =
    "# seqpipe sliced schedule: actions end in .slice (0F0.1); not PyTorch's dialect";

/// The schedule as CSV text (`\n` line ends), marked when sliced.
pub fn to_csv(schedule: &Schedule) -> String {
    let mut out = String::new();
    if schedule.config.sliced() {
        out.push_str(SLICED_MARK);
        out.push('\n');
    }
    for row in schedule.to_texts() {
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// Writes the CSV to a caller's writer.
pub fn write_csv(schedule: &Schedule, w: &mut dyn Write) -> std::io::Result<()> {
    w.write_all(to_csv(schedule).as_bytes())
}

/// Reads CSV written by [`to_csv`] or PyTorch. Row `r` must hold stage `r`'s actions. `lowered`
/// says whether the rows include sends and receives (PyTorch's `compute_comms` format) or only
/// compute (`compute_only`); [`crate::validate`] reports a mismatch.
pub fn from_csv(text: &str, config: ScheduleConfig, lowered: bool) -> Result<Schedule> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.starts_with('#'))
        .collect();
    // A final line end leaves one empty string; further empty lines are stages with no actions.
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|line| {
            line.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect();
    Schedule::from_texts(config, lowered, &rows)
}
