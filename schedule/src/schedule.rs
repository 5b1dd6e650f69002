//! A [`Schedule`]: per-stage ordered action lists plus the [`ScheduleConfig`] that made them.
//!
//! JSON form (serde): `{"config": {…}, "lowered": bool, "actions": [["0F0", "0SEND_F0", …], …]}`,
//! one list of compact action texts per physical stage, so files stay small and readable.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{generate, Schedule, ScheduleConfig, ScheduleKind};
//! let kind: ScheduleKind = "seq1f1b".parse().unwrap();
//! let config = ScheduleConfig::new(kind, 2, 1).with_slices(2); // p = 2, m = 1, n = 2
//! let schedule = generate(&config).unwrap();
//! // Stage 1 runs both slices forward, then backward in reverse (slice 0 needs slice 1's dK/dV).
//! assert_eq!(schedule.to_texts()[1], ["1F0.0", "1F0.1", "1B0.1", "1B0.0"]);
//! assert_eq!(Schedule::from_json(&schedule.to_json()).unwrap(), schedule);
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::action::{Action, Compact, Op, Unit};
use crate::error::{positive, Result, ScheduleError};
use crate::ids::{placement, MicroBatch, Stage};

/// The schedule families this crate generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// All forwards, then all backwards.
    #[serde(rename = "gpipe")]
    GPipe,
    /// One forward, one backward (PipeDream-flush / Megatron).
    #[serde(rename = "1f1b")]
    OneFOneB,
    /// Megatron's interleaved 1F1B over `v` chunks per stage.
    #[serde(rename = "interleaved")]
    Interleaved,
    /// Seq1F1B: 1F1B over slices of each sequence.
    #[serde(rename = "seq1f1b")]
    Seq1F1B,
    /// Seq1F1B interleaved over `v` chunks, groups of `p` slices per chunk.
    #[serde(rename = "seq1f1b-i")]
    Seq1F1BInterleaved,
    /// SlimPipe: sliced, interleaved cycle order, `n·v + 2(p−1−r)` units in flight.
    #[serde(rename = "slimpipe")]
    SlimPipe,
    /// Zero-bubble ZB-H1: backward split into input (I) and weight (W) gradients.
    #[serde(rename = "zb-h1")]
    ZbH1,
    /// PipeOffload's group-interleaved schedule: blocks of `g` micro-batches per chunk.
    #[serde(rename = "gis")]
    Gis,
}

impl ScheduleKind {
    /// Every kind.
    pub const ALL: [ScheduleKind; 8] = [
        ScheduleKind::GPipe,
        ScheduleKind::OneFOneB,
        ScheduleKind::Interleaved,
        ScheduleKind::Seq1F1B,
        ScheduleKind::Seq1F1BInterleaved,
        ScheduleKind::SlimPipe,
        ScheduleKind::ZbH1,
        ScheduleKind::Gis,
    ];

    /// Name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::GPipe => "gpipe",
            ScheduleKind::OneFOneB => "1f1b",
            ScheduleKind::Interleaved => "interleaved",
            ScheduleKind::Seq1F1B => "seq1f1b",
            ScheduleKind::Seq1F1BInterleaved => "seq1f1b-i",
            ScheduleKind::SlimPipe => "slimpipe",
            ScheduleKind::ZbH1 => "zb-h1",
            ScheduleKind::Gis => "gis",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        ScheduleKind::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or_else(|| ScheduleError::UnknownKind {
                name: s.to_string(),
                known: ScheduleKind::ALL.map(ScheduleKind::name).join(", "),
            })
    }
}

/// Everything a generator needs: kind, `p`, `m`, `n`, `v` and the group size where one applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// Schedule family.
    pub kind: ScheduleKind,
    /// Physical pipeline stages `p`.
    pub stages: u32,
    /// Micro-batches per iteration `m`.
    pub microbatches: u32,
    /// Slices per sequence `n` (1 = unsliced).
    pub slices: u32,
    /// Model chunks per stage `v` (1 = not interleaved).
    pub chunks: u32,
    /// Group size `g` (SlimPipe: slices per cycle; GIS: micro-batches per block). `None` lets the
    /// generator pick its default; a generated schedule records the value it used.
    pub group: Option<u32>,
}

impl ScheduleConfig {
    /// `kind` over `p` stages and `m` micro-batches, unsliced, one chunk, default group.
    pub fn new(kind: ScheduleKind, stages: u32, microbatches: u32) -> Self {
        ScheduleConfig {
            kind,
            stages,
            microbatches,
            slices: 1,
            chunks: 1,
            group: None,
        }
    }

    /// The same with `n` slices per sequence.
    pub fn with_slices(self, slices: u32) -> Self {
        ScheduleConfig { slices, ..self }
    }

    /// The same with `v` chunks per stage.
    pub fn with_chunks(self, chunks: u32) -> Self {
        ScheduleConfig { chunks, ..self }
    }

    /// The same with group size `g`.
    pub fn with_group(self, group: u32) -> Self {
        ScheduleConfig {
            group: Some(group),
            ..self
        }
    }

    /// Virtual stages `p·v`.
    pub fn virtual_stages(&self) -> u32 {
        self.stages.saturating_mul(self.chunks)
    }

    /// Whether action texts carry a slice suffix.
    pub fn sliced(&self) -> bool {
        self.slices > 1
    }

    /// Slices of micro-batch `mb`. Every micro-batch has `n` today; heterogeneous micro-batches
    /// (InfiniPipe) will answer per micro-batch, so consumers ask here rather than reading `slices`.
    pub fn slices_of(&self, _mb: MicroBatch) -> u32 {
        self.slices
    }

    /// Slices of every micro-batch, [`ScheduleConfig::slices_of`] in micro-batch order.
    pub fn slice_counts(&self) -> Vec<u32> {
        (0..self.microbatches)
            .map(|mb| self.slices_of(MicroBatch(mb)))
            .collect()
    }

    /// Checks that `p`, `m`, `n`, `v` (and `g` if given) are at least 1.
    pub fn check_positive(&self) -> Result<()> {
        positive("pipeline stages (p)", self.stages)?;
        positive("micro-batches (m)", self.microbatches)?;
        positive("slices per sequence (n)", self.slices)?;
        positive("chunks per stage (v)", self.chunks)?;
        if let Some(g) = self.group {
            positive("group size (g)", g)?;
        }
        Ok(())
    }
}

/// Per-stage ordered action lists: what each physical stage runs, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ScheduleJson", try_from = "ScheduleJson")]
pub struct Schedule {
    /// The configuration that made the schedule.
    pub config: ScheduleConfig,
    /// Whether [`crate::lower`] has inserted the sends and receives.
    pub lowered: bool,
    /// `actions[r]` = stage `r`'s program.
    pub actions: Vec<Vec<Action>>,
    /// Slices of each micro-batch where they differ (elastic pipelines, [`crate::elastic`]:
    /// at most the configuration's `n` each); none: every micro-batch has `n`.
    pub slice_counts: Option<Vec<u32>>,
}

impl Schedule {
    /// Slices of every micro-batch, in micro-batch order.
    pub fn slice_counts(&self) -> Vec<u32> {
        self.slice_counts
            .clone()
            .unwrap_or_else(|| self.config.slice_counts())
    }

    /// Slices of micro-batch `mb` (0 for a micro-batch the schedule does not have).
    pub fn slices_of(&self, mb: MicroBatch) -> u32 {
        match &self.slice_counts {
            Some(counts) => counts.get(mb.index()).copied().unwrap_or(0),
            None => self.config.slices_of(mb),
        }
    }

    /// Number of physical stages (rows).
    pub fn stages(&self) -> usize {
        self.actions.len()
    }

    /// All actions, stage by stage.
    pub fn iter(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().flatten()
    }

    /// Total number of actions.
    pub fn len(&self) -> usize {
        self.actions.iter().map(Vec::len).sum()
    }

    /// Whether there is no action at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The compact text of an action in this schedule (virtual stage, slice suffix if sliced).
    pub fn text(&self, action: &Action) -> String {
        action.text(self.config.stages, self.config.sliced())
    }

    /// For a send or receive, the physical stage at the other end; `None` for other ops or when
    /// the peer virtual stage does not exist.
    pub fn peer(&self, action: &Action) -> Option<Stage> {
        let peer = action.peer_virtual_stage(self.config.stages)?;
        (peer.0 < self.config.virtual_stages()).then(|| placement(peer, self.config.stages).0)
    }

    /// Every unit the configuration defines on one stage, micro-batch-major.
    pub fn units(&self) -> Vec<Unit> {
        self.units_with(&self.slice_counts())
    }

    /// Every unit on one stage when micro-batch `mb` has `counts[mb]` slices (heterogeneous
    /// micro-batches, see [`crate::gen::elastic`]), micro-batch-major.
    pub fn units_with(&self, counts: &[u32]) -> Vec<Unit> {
        let c = &self.config;
        let mut units = Vec::new();
        for (mb, &n) in counts.iter().enumerate() {
            let mb = mb as u32;
            for slice in 0..n {
                for chunk in 0..c.chunks {
                    units.push(Unit::new(mb, slice, chunk));
                }
            }
        }
        units
    }

    /// Largest number of units in flight on each stage in list order: a unit enters at its
    /// forward and leaves at its full backward or weight-gradient backward.
    pub fn max_in_flight(&self) -> Vec<u32> {
        self.actions
            .iter()
            .map(|list| {
                let (mut now, mut max) = (0u32, 0u32);
                for a in list {
                    if a.op == Op::Forward {
                        now += 1;
                        max = max.max(now);
                    } else if a.op.ends_unit() {
                        now = now.saturating_sub(1);
                    }
                }
                max
            })
            .collect()
    }

    /// Checks that every action sits in its own stage's list and names a chunk, micro-batch and
    /// slice inside the configuration.
    pub fn check_ranges(&self) -> Result<()> {
        self.check_ranges_with(&self.slice_counts())
    }

    /// [`Schedule::check_ranges`] with `counts[mb]` slices in micro-batch `mb` (a micro-batch
    /// beyond `counts` is out of range).
    pub fn check_ranges_with(&self, counts: &[u32]) -> Result<()> {
        let c = &self.config;
        for (r, list) in self.actions.iter().enumerate() {
            for (i, a) in list.iter().enumerate() {
                let out = |what, value, limit| ScheduleError::OutOfRange {
                    stage: r as u32,
                    position: i,
                    action: self.text(a),
                    what,
                    value,
                    limit,
                };
                if a.stage.index() != r {
                    return Err(out("stage", a.stage.0, r as u32 + 1));
                }
                if a.chunk.0 >= c.chunks {
                    return Err(out("chunk", a.chunk.0, c.chunks));
                }
                let m = c.microbatches.min(counts.len() as u32);
                if a.mb.0 >= m {
                    return Err(out("micro-batch", a.mb.0, m));
                }
                let n = counts[a.mb.index()];
                if a.slice.0 >= n {
                    return Err(out("slice", a.slice.0, n));
                }
            }
        }
        Ok(())
    }

    /// The schedule as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a schedule written by [`Schedule::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| ScheduleError::Json(e.to_string()))
    }

    /// Builds a schedule from compact texts per stage (the CSV and JSON forms). Each row must be
    /// the stage its actions resolve to.
    pub fn from_texts(config: ScheduleConfig, lowered: bool, rows: &[Vec<String>]) -> Result<Self> {
        config.check_positive()?;
        let mut actions = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            let mut list = Vec::with_capacity(row.len());
            for (col, cell) in row.iter().enumerate() {
                let csv_err = |reason: String| ScheduleError::Csv {
                    row: r,
                    column: col,
                    reason,
                };
                let compact: Compact = cell
                    .parse()
                    .map_err(|e: ScheduleError| csv_err(e.to_string()))?;
                let action = compact.resolve(config.stages);
                if action.stage.index() != r {
                    return Err(csv_err(format!(
                        "{cell} runs on virtual stage {} = stage {} with p = {}, but sits in row {r}",
                        compact.vstage, action.stage, config.stages
                    )));
                }
                list.push(action);
            }
            actions.push(list);
        }
        if actions.len() != config.stages as usize {
            return Err(ScheduleError::Csv {
                row: actions.len(),
                column: 0,
                reason: format!("{} rows for p = {} stages", actions.len(), config.stages),
            });
        }
        let schedule = Schedule {
            config,
            lowered,
            actions,
            slice_counts: None,
        };
        schedule.check_ranges()?;
        Ok(schedule)
    }

    /// Compact texts per stage.
    pub fn to_texts(&self) -> Vec<Vec<String>> {
        self.actions
            .iter()
            .map(|list| list.iter().map(|a| self.text(a)).collect())
            .collect()
    }
}

/// Serde proxy of [`Schedule`]: action lists as compact texts.
#[derive(Serialize, Deserialize)]
struct ScheduleJson {
    config: ScheduleConfig,
    lowered: bool,
    actions: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slice_counts: Option<Vec<u32>>,
}

impl From<Schedule> for ScheduleJson {
    fn from(s: Schedule) -> Self {
        ScheduleJson {
            actions: s.to_texts(),
            config: s.config,
            lowered: s.lowered,
            slice_counts: s.slice_counts,
        }
    }
}

impl TryFrom<ScheduleJson> for Schedule {
    type Error = ScheduleError;

    fn try_from(j: ScheduleJson) -> Result<Self> {
        let mut schedule = Schedule::from_texts(j.config, j.lowered, &j.actions)?;
        schedule.slice_counts = j.slice_counts;
        Ok(schedule)
    }
}

/// Dense numbering of the units of one stage, for flat per-unit tables. Assumes ranges checked.
pub(crate) struct UnitIndex {
    offsets: Vec<usize>,
    chunks: usize,
}

impl UnitIndex {
    pub(crate) fn new(config: &ScheduleConfig) -> Self {
        Self::from_counts(&config.slice_counts(), config.chunks)
    }

    /// Numbering for `counts[mb]` slices per micro-batch and `chunks` chunks.
    pub(crate) fn from_counts(counts: &[u32], chunks: u32) -> Self {
        let mut offsets = Vec::with_capacity(counts.len() + 1);
        let mut total = 0usize;
        for &n in counts {
            offsets.push(total);
            total += n as usize;
        }
        offsets.push(total);
        UnitIndex {
            offsets,
            chunks: chunks as usize,
        }
    }

    /// Number of units per stage.
    pub(crate) fn len(&self) -> usize {
        self.offsets[self.offsets.len() - 1] * self.chunks
    }

    /// Index of a unit.
    pub(crate) fn of(&self, u: &Unit) -> usize {
        (self.offsets[u.mb.index()] + u.slice.index()) * self.chunks + u.chunk.index()
    }
}
