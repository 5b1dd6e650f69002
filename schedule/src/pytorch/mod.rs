//! PyTorch's pipelining dialect (`torch.distributed.pipelining`): its schedule CSV, with idle
//! steps kept, and its own lowering and lock-step simulation, so that a schedule moves between
//! seqpipe and PyTorch with nothing changed or misread.
//!
//! - [`read`] / [`write`]: one row per rank, one action per cell, an empty cell for an idle step
//!   (PyTorch's `None`); a file PyTorch wrote reads and writes back byte for byte (`\n` line ends;
//!   `\r\n` is read too).
//! - [`to_schedule`] / [`from_schedule`]: to and from seqpipe's [`Schedule`] (idle cells dropped).
//!   The dialect has no slices, and PyTorch's parser reads `0F0.1` as `0F0` without a word, so a
//!   sliced schedule is refused rather than written; so are seqpipe's memory ops. PyTorch's ops
//!   that seqpipe lacks (`UNSHARD`, `RESHARD`, `REDUCE_GRAD`, DualPipeV's `(…)OVERLAP_F_B`) are
//!   refused by name on reading.
//! - [`lowering`]: PyTorch's `_merge_bw` and `_add_send_recv`; [`lockstep`]: its
//!   `_simulate_comms_compute`, whose step counts PyTorch's tests assert.
//!
//! Placement: virtual stage `k` runs on rank `k mod p` (Megatron's loop placement, PyTorch's
//! `stage_to_rank = s % p`), the only one seqpipe's IR holds; V placements are not representable.
//! Note for PyTorch users: `_add_send_recv` takes `num_stages` = `p · v`, the virtual stages; given
//! `p`, it treats stage `p − 1` as the last, emits no sends past it and reports an interleaved
//! schedule as "Malformed".
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{one_f_one_b, pytorch, seq1f1b, ScheduleConfig, ScheduleKind};
//! let schedule = one_f_one_b(2, 2).unwrap();
//! let csv = pytorch::write(&pytorch::from_schedule(&schedule).unwrap());
//! assert_eq!(csv, "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n");
//! let config = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 2);
//! let back = pytorch::to_schedule(&pytorch::read(&csv).unwrap(), config, false).unwrap();
//! assert_eq!(back, schedule);
//! assert!(pytorch::from_schedule(&seq1f1b(2, 2, 2).unwrap()).is_err()); // slices: refused
//! ```

pub mod lockstep;
pub mod lowering;

use crate::action::{Compact, Op};
use crate::error::{Result, ScheduleError};
use crate::schedule::{Schedule, ScheduleConfig};

/// A schedule in PyTorch's layout: per rank, per step, an action or an idle step.
pub type Rows = Vec<Vec<Option<Compact>>>;

fn refuse(reason: String) -> ScheduleError {
    ScheduleError::PyTorch(reason)
}

/// PyTorch ops that seqpipe's IR does not have.
const FOREIGN_OPS: [&str; 4] = ["UNSHARD", "RESHARD", "REDUCE_GRAD", "OVERLAP_F_B"];

/// One cell: empty is an idle step.
fn read_cell(cell: &str, row: usize, column: usize) -> Result<Option<Compact>> {
    let cell = cell.trim();
    if cell.is_empty() {
        return Ok(None);
    }
    if let Some(op) = FOREIGN_OPS.iter().find(|op| cell.contains(*op)) {
        return Err(refuse(format!(
            "row {row}, column {column}: `{cell}` uses PyTorch's {op}, which seqpipe's schedules \
             do not have"
        )));
    }
    let compact: Compact = cell
        .parse()
        .map_err(|e: ScheduleError| ScheduleError::Csv {
            row,
            column,
            reason: e.to_string(),
        })?;
    if compact.slice.is_some() {
        return Err(refuse(format!(
            "row {row}, column {column}: `{cell}` has a slice, which PyTorch's dialect cannot say"
        )));
    }
    Ok(Some(compact))
}

/// Reads PyTorch's CSV (`_dump_csv` / `_load_csv`), keeping idle steps.
pub fn read(text: &str) -> Result<Rows> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
        .iter()
        .enumerate()
        .map(|(r, line)| {
            line.split(',')
                .enumerate()
                .map(|(c, cell)| read_cell(cell, r, c))
                .collect()
        })
        .collect()
}

/// Writes rows as PyTorch's CSV, `\n` after every row.
pub fn write(rows: &Rows) -> String {
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.map(|a| a.to_string()).unwrap_or_default())
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The rows of a seqpipe schedule in PyTorch's dialect; a sliced schedule or one with memory
/// ops is refused, naming what PyTorch would misread.
pub fn from_schedule(schedule: &Schedule) -> Result<Rows> {
    let config = schedule.config;
    if config.sliced() {
        return Err(refuse(format!(
            "the schedule cuts each sequence into {} slices; PyTorch's parser would read `0F0.1` \
             as `0F0` without a word, so sliced schedules are written only in seqpipe's CSV",
            config.slices
        )));
    }
    let p = config.stages;
    let mut rows = Rows::new();
    for list in &schedule.actions {
        let mut row = Vec::with_capacity(list.len());
        for a in list {
            if a.pair.is_some() {
                return Err(refuse(format!(
                    "`{}` takes part in an attention exchange, which PyTorch's schedules do not \
                     have",
                    a.text(p, false)
                )));
            }
            if a.op.is_vocab() {
                return Err(refuse(format!(
                    "`{}` is one of seqpipe's vocabulary-parallel ops, which PyTorch's schedules \
                     do not have",
                    a.text(p, false)
                )));
            }
            if matches!(a.op, Op::Offload | Op::Reload | Op::Recompute) {
                return Err(refuse(format!(
                    "`{}` is one of seqpipe's memory ops, which PyTorch's schedules do not have",
                    a.text(p, false)
                )));
            }
            row.push(Some(a.compact(p, false)));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The seqpipe schedule these rows hold (idle steps dropped); row `r` must hold rank `r`'s
/// actions under `config`'s placement, and `lowered` says whether they include sends and
/// receives.
pub fn to_schedule(rows: &Rows, config: ScheduleConfig, lowered: bool) -> Result<Schedule> {
    let texts: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().flatten().map(Compact::to_string).collect())
        .collect();
    Schedule::from_texts(config, lowered, &texts)
}
