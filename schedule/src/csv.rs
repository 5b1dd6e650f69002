//! PyTorch's pipelining CSV layout: one row per physical stage (rank), one compact action per
//! cell, no header (`_dump_csv` / `_load_csv`). Cells never contain commas or quotes, so no quoting
//! is needed; empty cells (PyTorch's idle `None`) are skipped on reading, and both `\n` and `\r\n`
//! line ends are read. CSV carries no configuration: the reader takes it from the caller.

use std::io::Write;

use crate::error::Result;
use crate::schedule::{Schedule, ScheduleConfig};

/// The schedule as CSV text (`\n` line ends).
pub fn to_csv(schedule: &Schedule) -> String {
    let mut out = String::new();
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
