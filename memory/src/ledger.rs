//! The ledger: walks per-stage memory events in time order and returns each stage's peak and curve.
//!
//! Input is deliberately small and schedule-agnostic: `(time, stage, op, unit, bytes)` events, so it
//! is testable on its own; [`crate::lives`] turns a simulated schedule into such events. A unit's
//! bytes are either on device or on host: `Allocate` puts bytes on device, `Offload` moves some to
//! host (counted when the copy ends), `Reload` moves them back (counted when the copy starts, the
//! buffer is needed then), `Free` drops a unit whose bytes are all on device. Events at the same
//! time apply releases first, so the state after each distinct time is that time's maximum.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{run_ledger, MemEvent, MemOp};
//! let ev = |time, unit: &str, op| MemEvent { time, stage: 0, op, unit: unit.into(), bytes: 40.0 };
//! let events = [
//!     ev(0.0, "a", MemOp::Allocate),
//!     ev(1.0, "b", MemOp::Allocate),
//!     ev(1.0, "a", MemOp::Offload), // releases apply first at equal times
//!     ev(2.0, "b", MemOp::Free),
//!     ev(2.0, "a", MemOp::Reload),
//!     ev(3.0, "a", MemOp::Free),
//! ];
//! let report = run_ledger(&[100.0], &events).unwrap(); // 100 bytes of model states
//! let stage = &report.stages[0];
//! // Without the offload, a and b would peak together at 180.
//! assert_eq!((stage.peak, stage.peak_host, stage.final_device()), (140.0, 40.0, 100.0));
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{MemoryError, Result};

/// What happens to a unit's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemOp {
    /// Put `bytes` on device (forward saves activations).
    Allocate,
    /// Drop the unit (backward or weight-gradient done); all its bytes must be on device.
    Free,
    /// Move `bytes` of the unit from device to host.
    Offload,
    /// Move `bytes` of the unit from host back to device.
    Reload,
}

impl MemOp {
    /// Releases sort before acquisitions at equal times.
    fn rank(self) -> u8 {
        match self {
            MemOp::Free => 0,
            MemOp::Offload => 1,
            MemOp::Reload => 2,
            MemOp::Allocate => 3,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            MemOp::Allocate => "allocate",
            MemOp::Free => "free",
            MemOp::Offload => "offload",
            MemOp::Reload => "reload",
        }
    }
}

/// One memory event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemEvent {
    /// When it takes effect.
    pub time: f64,
    /// Stage whose memory changes.
    pub stage: usize,
    /// What happens.
    pub op: MemOp,
    /// Name of the unit (unique per stage while alive).
    pub unit: String,
    /// Bytes allocated or moved (ignored by `Free`).
    pub bytes: f64,
}

/// One point of a stage's memory curve: the state after every event at `time`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Time.
    pub time: f64,
    /// Bytes on device, model states included.
    pub device: f64,
    /// Bytes on host.
    pub host: f64,
}

/// One stage's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageMemory {
    /// Stage index.
    pub stage: usize,
    /// Model states (the curve's floor).
    pub model_states: f64,
    /// Highest device bytes.
    pub peak: f64,
    /// First time the peak is reached.
    pub peak_time: f64,
    /// Highest host bytes.
    pub peak_host: f64,
    /// Device and host bytes over time, a step function starting with model states alone.
    pub curve: Vec<CurvePoint>,
}

impl StageMemory {
    /// Device bytes after the last event.
    pub fn final_device(&self) -> f64 {
        self.curve.last().map_or(self.model_states, |c| c.device)
    }
}

/// Every stage's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerReport {
    /// One entry per stage, in stage order.
    pub stages: Vec<StageMemory>,
}

#[derive(Default, Clone)]
struct Resident {
    device: f64,
    host: f64,
}

/// Runs `events` over stages whose model states are `model_states` (one entry per stage).
pub fn run_ledger(model_states: &[f64], events: &[MemEvent]) -> Result<LedgerReport> {
    let mut order: Vec<&MemEvent> = events.iter().collect();
    order.sort_by(|a, b| {
        a.time
            .total_cmp(&b.time)
            .then(a.op.rank().cmp(&b.op.rank()))
    });
    let start = order.first().map_or(0.0, |e| e.time.min(0.0));
    let mut stages: Vec<StageMemory> = model_states
        .iter()
        .enumerate()
        .map(|(stage, &floor)| StageMemory {
            stage,
            model_states: floor,
            peak: floor,
            peak_time: start,
            peak_host: 0.0,
            curve: vec![CurvePoint {
                time: start,
                device: floor,
                host: 0.0,
            }],
        })
        .collect();
    let mut units: Vec<HashMap<&str, Resident>> = vec![HashMap::new(); model_states.len()];
    let mut state: Vec<(f64, f64)> = model_states.iter().map(|&f| (f, 0.0)).collect();
    for event in order {
        let stage = event.stage;
        if stage >= stages.len() {
            return Err(MemoryError::NoSuchStage {
                stage,
                stages: stages.len(),
            });
        }
        let (d_dev, d_host) = apply(&mut units[stage], event)?;
        let (dev, host) = &mut state[stage];
        *dev += d_dev;
        *host += d_host;
        record(&mut stages[stage], event.time, *dev, *host);
    }
    Ok(LedgerReport { stages })
}

/// Appends or updates the curve point at `time` and tracks the peaks.
fn record(stage: &mut StageMemory, time: f64, device: f64, host: f64) {
    let point = CurvePoint { time, device, host };
    // The first point (model states alone) is kept even when events share its time.
    let len = stage.curve.len();
    match stage.curve.last_mut() {
        Some(last) if last.time == time && len > 1 => *last = point,
        _ => stage.curve.push(point),
    }
    if device > stage.peak {
        stage.peak = device;
        stage.peak_time = time;
    }
    stage.peak_host = stage.peak_host.max(host);
}

/// Applies one event to a stage's units; returns the change of (device, host) bytes.
fn apply<'a>(units: &mut HashMap<&'a str, Resident>, e: &'a MemEvent) -> Result<(f64, f64)> {
    let refuse = |reason: String| MemoryError::BadEvent {
        stage: e.stage,
        time: e.time,
        op: e.op.verb(),
        unit: e.unit.clone(),
        reason,
    };
    if !e.bytes.is_finite() || e.bytes < 0.0 {
        return Err(refuse(format!(
            "bytes must be finite and ≥ 0, got {}",
            e.bytes
        )));
    }
    // Relative slack for bytes moved in pieces that do not add up exactly in floating point.
    let slack = |total: f64| 1e-9 * total.max(1.0);
    match e.op {
        MemOp::Allocate => {
            if units.contains_key(e.unit.as_str()) {
                return Err(refuse("it is already allocated".into()));
            }
            units.insert(
                &e.unit,
                Resident {
                    device: e.bytes,
                    host: 0.0,
                },
            );
            Ok((e.bytes, 0.0))
        }
        MemOp::Free => {
            let r = units
                .remove(e.unit.as_str())
                .ok_or_else(|| refuse("it is not allocated".into()))?;
            if r.host > slack(r.host + r.device) {
                return Err(refuse(format!(
                    "{} bytes are still on host; reload them first",
                    r.host
                )));
            }
            Ok((-r.device, -r.host))
        }
        MemOp::Offload | MemOp::Reload => {
            let r = units
                .get_mut(e.unit.as_str())
                .ok_or_else(|| refuse("it is not allocated".into()))?;
            let offload = e.op == MemOp::Offload;
            let available = if offload { r.device } else { r.host };
            if e.bytes > available + slack(r.device + r.host) {
                let place = if offload { "device" } else { "host" };
                return Err(refuse(format!(
                    "only {available} bytes are on {place}, asked to move {}",
                    e.bytes
                )));
            }
            let moved = e.bytes.min(available);
            let sign = if offload { 1.0 } else { -1.0 };
            r.device -= sign * moved;
            r.host += sign * moved;
            Ok((-sign * moved, sign * moved))
        }
    }
}
