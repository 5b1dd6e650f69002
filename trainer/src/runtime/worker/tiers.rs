//! `OFFLOAD` and `RELOAD` through the host link, and the fixed points where the executor joins
//! their copies:
//!
//! - an offload is joined at the end of the first compute action after it, or at the first
//!   `RELOAD` after it if that comes first: its copy overlaps that compute, and its device bytes
//!   are freed there (before a reload takes new ones; the link copies in order, so the reload
//!   could not start before it anyway);
//! - a reload takes its device bytes at the action and is joined when its unit's backward (or
//!   recomputation) starts, which waits for the copy if it is still running.
//!
//! Joining at program points rather than when copies happen to finish makes what a stage holds
//! after each action independent of the link's speed (`predict` models exactly this); the link's
//! speed shows only in the time the executor waits, which the stage reports.

use seqpipe_schedule::Unit;

use super::store::Residence;
use super::{IterState, StageWorker};
use crate::error::Result;

impl StageWorker {
    /// `OFFLOAD`: starts copying `u`'s records to host memory.
    pub(super) fn offload(&self, st: &mut IterState, u: Unit) -> Result<()> {
        let records = st.store.begin_move(&u, Residence::Host)?;
        st.link.send_to_host(u, records)?;
        st.offloads.push(u);
        Ok(())
    }

    /// `RELOAD`: starts copying `u`'s records back to the device, once the offloads still
    /// running are joined (the link copies in order, so the reload could not start earlier, and
    /// their device bytes are freed before the reload takes its own).
    pub(super) fn reload(&self, st: &mut IterState, u: Unit) -> Result<()> {
        let offloads = std::mem::take(&mut st.offloads);
        join_offloads(st, &offloads)?;
        let records = st.store.begin_move(&u, Residence::Device)?;
        st.link.send_to_device(u, records, self.device.clone())?;
        st.reloads.insert(u);
        Ok(())
    }
}

/// Joins `u`'s reload, if one is running: its records are on the device when this returns.
pub(super) fn settle_reload(st: &mut IterState, u: &Unit) -> Result<()> {
    if st.reloads.remove(u) {
        let copied = st.link.join(u)?;
        st.store.finish_move(u, Residence::Device, copied)?;
    }
    Ok(())
}

/// Joins `u`'s offload: its device copy is freed.
fn join_offload(st: &mut IterState, u: &Unit) -> Result<()> {
    let copied = st.link.join(u)?;
    st.store.finish_move(u, Residence::Host, copied)
}

/// Joins the offloads in `units` (those issued before the compute that just ended).
pub(super) fn join_offloads(st: &mut IterState, units: &[Unit]) -> Result<()> {
    units.iter().try_for_each(|u| join_offload(st, u))
}

/// Joins every transfer still running (the end of the program).
pub(super) fn join_all(st: &mut IterState) -> Result<()> {
    let offloads = std::mem::take(&mut st.offloads);
    join_offloads(st, &offloads)?;
    let reloads: Vec<Unit> = st.reloads.iter().copied().collect();
    reloads.iter().try_for_each(|u| settle_reload(st, u))
}
