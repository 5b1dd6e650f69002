//! Recomputation at run time: `parallel.recompute` / `--recompute` says which units drop part of
//! their forward record and how much; a `schedule` pass puts a `RECOMPUTE` before each such
//! unit's backward, and the executor rebuilds the record there (`worker::recompute`).
//!
//! - `none`: every record is kept whole.
//! - `selective`: every unit drops its layers' norm outputs and SwiGLU product (the `memory`
//!   crate's `RecomputePolicy::Selective`).
//! - `full`: every layer keeps only its input (`RecomputePolicy::Full`).
//! - `full:N`: the first `N` layers of each chunk keep only their input, on every stage;
//!   `full:N0,N1,…`: one count per stage (0 leaves that stage's records whole).
//! - `auto`: InfiniPipe's adaptive plan, a count of fully recomputed layers per (stage, unit),
//!   the fewest that fit `parallel.memory_budget` ([`super::adaptive`]).

use std::fmt;
use std::str::FromStr;

use seqpipe_schedule::{insert_recompute, Lowered};
use serde::{Deserialize, Serialize};

use super::adaptive::AdaptivePlan;
use super::partition::Partition;
use super::worker::{Granularity, StageRecompute};
use crate::error::{fail, Error, Result};

/// Which records are recomputed before their backward instead of kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Recompute {
    /// Keep every record whole.
    #[default]
    None,
    /// Drop the norm outputs and SwiGLU product of every layer.
    Selective,
    /// Keep only the inputs of the first layers of each chunk: every layer when `layers` is
    /// empty, else one count for every stage or one per stage.
    Full {
        /// Layers per chunk (see the variant).
        layers: Vec<u32>,
    },
    /// The adaptive plan under the memory budget; `None` until the budget has planned it.
    Auto {
        /// Layers recomputed whole per (stage, unit).
        plan: Option<AdaptivePlan>,
    },
}

impl Recompute {
    /// What stage `stage`'s checkpointed units drop, `None` when it recomputes nothing;
    /// `chunk_layers` is the fewest layers of a chunk on that stage (every chunk's first `N`
    /// layers are recomputed, so `N` may not exceed it).
    pub fn granularity(&self, stage: usize, chunk_layers: usize) -> Result<Option<Granularity>> {
        let counts = match self {
            Recompute::None => return Ok(None),
            Recompute::Selective => return Ok(Some(Granularity::Selective)),
            Recompute::Full { layers } => layers,
            Recompute::Auto { .. } => fail!(
                Config,
                "recompute = auto gives a count per unit, not one granularity per stage"
            ),
        };
        let layers = match counts.as_slice() {
            [] => chunk_layers,
            [n] => *n as usize,
            per_stage => per_stage.get(stage).copied().ok_or_else(|| {
                Error::Config(format!(
                    "recompute = {self} gives {} per-stage counts, but stage {stage} exists: give \
                     one count, or one per stage",
                    per_stage.len()
                ))
            })? as usize,
        };
        if layers > chunk_layers {
            return Err(Error::Config(format!(
                "recompute = {self} recomputes {layers} layers per chunk on stage {stage}, whose \
                 chunks have {chunk_layers}: use at most {chunk_layers}"
            )));
        }
        Ok((layers > 0).then_some(Granularity::Full { layers }))
    }

    /// The setting in words: its text, and for a planned `auto` what the plan recomputes.
    pub fn describe(&self) -> String {
        match self {
            Recompute::Auto { plan: Some(plan) } => format!("auto: {plan}"),
            other => other.to_string(),
        }
    }

    /// What stage `stage`'s recomputed units drop (see [`Recompute::granularity`]); for
    /// `auto`, its plan's units, and an error when the budget has not planned it yet.
    pub fn stage(&self, stage: usize, chunk_layers: usize) -> Result<StageRecompute> {
        match self {
            Recompute::Auto { plan: Some(plan) } => plan.stage(stage, chunk_layers),
            Recompute::Auto { plan: None } => fail!(
                Config,
                "recompute = auto is planned under a memory budget, and none was given: set \
                 parallel.memory_budget (--memory-budget), or use selective, full or full:N"
            ),
            uniform => Ok(match uniform.granularity(stage, chunk_layers)? {
                Some(g) => StageRecompute::Every(g),
                None => StageRecompute::Nothing,
            }),
        }
    }

    /// Problems with the setting for a run of `stages` stages over `partition` (with `chunks`
    /// model chunks per stage), each naming the bad value and what is valid.
    pub fn problems(&self, stages: usize, chunks: usize, partition: &Partition) -> Vec<String> {
        let mut problems = Vec::new();
        if let Recompute::Full { layers } = self {
            if layers.iter().all(|&n| n == 0) && !layers.is_empty() {
                problems.push(format!(
                    "recompute = {self} recomputes no layer on any stage: use \"none\", or a \
                     count of at least 1"
                ));
                return problems;
            }
            if layers.len() > 1 && layers.len() != stages {
                problems.push(format!(
                    "recompute = {self} gives {} per-stage counts for {stages} stages: give one \
                     count, or one per stage",
                    layers.len()
                ));
                return problems;
            }
        }
        if let Recompute::Auto { plan } = self {
            let planned = plan.as_ref().map(AdaptivePlan::stages);
            // Unplanned, it waits for the budget (the configuration checks ask for one).
            match planned {
                None => return problems,
                Some(n) if n != stages => {
                    problems.push(format!(
                        "recompute = auto was planned for {n} stages, but the run has {stages}"
                    ));
                    return problems;
                }
                Some(_) => {}
            }
        }
        for stage in 0..stages {
            let fewest = fewest_layers(partition, stage, stages, chunks);
            if let Err(e) = self.stage(stage, fewest) {
                problems.push(e.to_string());
            }
        }
        problems
    }
}

/// The fewest layers of a model chunk on `stage` (chunk `c` is virtual stage `c·p + stage`).
pub fn fewest_layers(partition: &Partition, stage: usize, stages: usize, chunks: usize) -> usize {
    (0..chunks)
        .filter_map(|c| partition.ranges.get(c * stages + stage))
        .map(|r| r.len())
        .min()
        .unwrap_or(0)
}

/// `schedule` with a `RECOMPUTE` before the backward of every unit on a stage that recomputes
/// (unchanged for `none`).
pub fn with_planned_recompute(
    schedule: Lowered,
    recompute: &Recompute,
    partition: &Partition,
    chunks: usize,
) -> Result<Lowered> {
    if *recompute == Recompute::None {
        return Ok(schedule);
    }
    let stages = schedule.actions.len();
    let plans: Vec<StageRecompute> = (0..stages)
        .map(|s| recompute.stage(s, fewest_layers(partition, s, stages, chunks)))
        .collect::<Result<_>>()?;
    let out = insert_recompute(schedule.schedule(), |a| {
        plans[a.stage.index()].recomputes(&a.unit())
    });
    Ok(Lowered::check(out)?)
}

impl FromStr for Recompute {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "recompute = {s:?}: use \"none\", \"selective\", \"full\", \"full:N\" (the first \
                 N layers of each chunk), \"full:N0,N1,…\" (one count per stage) or \"auto\" (the \
                 fewest layers per unit that fit the memory budget)"
            ))
        };
        match s.trim() {
            "none" => Ok(Recompute::None),
            "selective" => Ok(Recompute::Selective),
            "full" => Ok(Recompute::Full { layers: Vec::new() }),
            "auto" => Ok(Recompute::Auto { plan: None }),
            other => {
                let counts = other.strip_prefix("full:").ok_or_else(bad)?;
                let layers = counts
                    .split(',')
                    .map(|n| n.trim().parse::<u32>().map_err(|_| bad()))
                    .collect::<Result<Vec<u32>>>()?;
                Ok(Recompute::Full { layers })
            }
        }
    }
}

impl fmt::Display for Recompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recompute::None => write!(f, "none"),
            Recompute::Selective => write!(f, "selective"),
            Recompute::Auto { .. } => write!(f, "auto"),
            Recompute::Full { layers } if layers.is_empty() => write!(f, "full"),
            Recompute::Full { layers } => {
                let counts: Vec<String> = layers.iter().map(u32::to_string).collect();
                write!(f, "full:{}", counts.join(","))
            }
        }
    }
}

impl TryFrom<String> for Recompute {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Recompute> for String {
    fn from(r: Recompute) -> Self {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_bad_ones_name_themselves() {
        for text in [
            "none",
            "selective",
            "full",
            "full:2",
            "full:1,0,2,1",
            "auto",
        ] {
            let r: Recompute = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
        }
        for bad in [
            "half",
            "full:",
            "full:x",
            "full:-1",
            "full:1,,2",
            "adaptive",
            "auto:3",
        ] {
            let e = bad.parse::<Recompute>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("full:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn counts_are_checked_against_the_stages_and_their_chunks() {
        let partition = Partition::even(8, 4).unwrap();
        let full = |s: &str| s.parse::<Recompute>().unwrap();
        assert!(full("full:2").problems(4, 1, &partition).is_empty());
        let e = full("full:3").problems(4, 1, &partition).join("; ");
        assert!(e.contains("full:3") && e.contains("at most 2"), "{e}");
        let e = full("full:0").problems(4, 1, &partition).join("; ");
        assert!(e.contains("full:0") && e.contains("no layer"), "{e}");
        let e = full("full:1,1,1,1,1").problems(4, 1, &partition).join("; ");
        assert!(e.contains("5 per-stage counts for 4 stages"), "{e}");
        assert_eq!(
            full("full:0,2,1,0").granularity(1, 2).unwrap(),
            Some(Granularity::Full { layers: 2 })
        );
        assert_eq!(full("full:0,2,1,0").granularity(0, 2).unwrap(), None);
    }
}
