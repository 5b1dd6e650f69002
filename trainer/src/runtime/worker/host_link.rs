//! The host link: moves a unit's saved records between the compute device and host memory on a
//! copier thread, so the stage computes while they move (PipeOffload, SPEC §5.1).
//!
//! One copier per stage and iteration takes jobs in order (one link, like one PCIe direction at
//! a time). A job copies every tensor of a record into the other tier — a real copy even when
//! both tiers are the CPU's memory, so the two tiers hold separate bytes — and, with a
//! bandwidth set, is not done before `bytes / bandwidth` seconds: a CPU run then emulates a
//! PCIe link, and the overlap of transfers with compute can be measured without a GPU.
//!
//! Copies to host memory are made inside `heap::host_tier`, so a counting allocator keeps the
//! host tier apart from the device tier even when both are the CPU's memory.
//!
//! Completions are kept until the executor joins them at fixed points of the program (see
//! `worker::run`), never applied as they arrive: what a stage holds after each action is then
//! the same at every bandwidth and on every run, and only the time spent waiting changes.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use crossbeam_channel::{unbounded, Receiver, Sender};
use seqpipe_schedule::Unit;

use super::store::UnitSaved;
use crate::error::{Error, Result};

/// One transfer: a unit's records, copied to `to`, which is host memory when `to_host`.
struct Job {
    unit: Unit,
    records: UnitSaved,
    to: Device,
    to_host: bool,
}

/// A finished transfer: the records in their new tier.
type Done = (Unit, candle_core::Result<UnitSaved>);

/// The copier thread of one stage and the transfers it has finished but the executor has not
/// joined yet.
pub(super) struct HostLink {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    arrived: HashMap<Unit, candle_core::Result<UnitSaved>>,
    copier: Option<JoinHandle<()>>,
    /// Seconds the executor has waited for transfers.
    pub wait_seconds: f64,
}

impl HostLink {
    /// A link moving `bandwidth` bytes per second (`None`: as fast as memory copies go).
    pub fn start(stage: usize, bandwidth: Option<f64>) -> Result<Self> {
        let (jobs, inbox) = unbounded::<Job>();
        let (finished, done) = unbounded();
        let copier = std::thread::Builder::new()
            .name(format!("seqpipe-host-link-{stage}"))
            .spawn(move || copy_jobs(&inbox, &finished, bandwidth))?;
        Ok(HostLink {
            jobs: Some(jobs),
            done,
            arrived: HashMap::new(),
            copier: Some(copier),
            wait_seconds: 0.0,
        })
    }

    /// Starts copying `records` of `unit` to host memory.
    pub fn send_to_host(&mut self, unit: Unit, records: UnitSaved) -> Result<()> {
        self.submit(unit, records, Device::Cpu, true)
    }

    /// Starts copying `records` of `unit` back to `device`.
    pub fn send_to_device(&mut self, unit: Unit, records: UnitSaved, device: Device) -> Result<()> {
        self.submit(unit, records, device, false)
    }

    fn submit(&mut self, unit: Unit, records: UnitSaved, to: Device, to_host: bool) -> Result<()> {
        let jobs = self.jobs.as_ref().expect("the sender lives until drop");
        let job = Job {
            unit,
            records,
            to,
            to_host,
        };
        jobs.send(job)
            .map_err(|_| Error::Runtime(format!("the host link stopped before moving {unit:?}")))
    }

    /// `unit`'s records in their new tier, waiting for the copier if it has not finished them.
    pub fn join(&mut self, unit: &Unit) -> Result<UnitSaved> {
        let start = Instant::now();
        while !self.arrived.contains_key(unit) {
            let (u, records) = self.done.recv().map_err(|_| {
                Error::Runtime(format!("the host link stopped while moving {unit:?}"))
            })?;
            self.arrived.insert(u, records);
        }
        self.wait_seconds += start.elapsed().as_secs_f64();
        Ok(self.arrived.remove(unit).expect("present")?)
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // Closing the job queue ends the copier once it has finished what it holds.
        self.jobs = None;
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
    }
}

/// The copier: each job's tensors copied in turn, each job taking at least its bytes over the
/// bandwidth.
fn copy_jobs(inbox: &Receiver<Job>, finished: &Sender<Done>, bandwidth: Option<f64>) {
    for job in inbox {
        let start = Instant::now();
        let bytes: usize = job.records.tensors().map(crate::model::layer::bytes).sum();
        let copy = || job.records.map(&|t| copy_to(t, &job.to));
        let copied = match job.to_host {
            true => crate::heap::host_tier(copy),
            false => copy(),
        };
        if let Some(per_second) = bandwidth {
            let due = Duration::from_secs_f64(bytes as f64 / per_second);
            if let Some(rest) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        if finished.send((job.unit, copied)).is_err() {
            return;
        }
    }
}

/// A copy of `t` on `to` holding `t`'s elements alone, even when `t` is already there:
/// `Tensor::copy` clones a view's whole storage, so a record holding a view of a larger buffer
/// would move all of it (none does today: the host tier's measured peak is the same either
/// way). The copy is detached, so that a tensor recording its op (candle's autograd, which the
/// runtime does not use) could not pin the device bytes the move frees.
fn copy_to(t: &Tensor, to: &Device) -> candle_core::Result<Tensor> {
    let compact = t.force_contiguous()?.detach();
    if t.device().same_device(to) {
        Ok(compact)
    } else {
        Ok(compact.to_device(to)?.detach())
    }
}
