//! Where a rank sits, and what the launcher of a multi-process run says.
//!
//! Ranks come from the launcher's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, as `torchrun --no-python` and Slurm scripts set them). With `WORLD_SIZE = d·p`
//! there are `d` data-parallel replicas of a `p`-stage pipeline: rank `r` runs stage `r mod p` of
//! replica `r div p` (a threaded run places its `d·p` threads the same way). Each replica trains
//! on its own micro-batches; the gradients of each stage are averaged over its replicas, so
//! replicas hold identical weights (see [`super::rank`]).

use crate::error::{fail, Result};
use std::time::Duration;

use crate::config::TrainConfig;

/// Where this process sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Transport rank.
    pub rank: usize,
    /// Pipeline stage it runs.
    pub stage: usize,
    /// Data-parallel replica it belongs to.
    pub replica: usize,
    /// Replicas in the world.
    pub replicas: usize,
}

/// Rank `rank` of `world` ranks running a `stages`-stage pipeline.
pub fn placement(rank: usize, world: usize, stages: usize) -> Result<Placement> {
    if stages == 0 || world % stages != 0 {
        fail!(Config, "WORLD_SIZE = {world} is not a multiple of parallel.stages = {stages}: use {stages}, {}, {}, ... ranks", 2 * stages, 3 * stages);
    }
    Ok(Placement {
        rank,
        stage: rank % stages,
        replica: rank / stages,
        replicas: world / stages,
    })
}

/// The timeout ranks use, from the configuration.
pub fn rank_timeout(cfg: &TrainConfig) -> Duration {
    Duration::from_secs(cfg.parallel.timeout_secs)
}

/// Largest `WORLD_SIZE` accepted: far above any cluster, and a bound on per-rank allocations.
pub const MAX_WORLD: usize = 1 << 20;

/// Whether the launcher asked for several processes (`WORLD_SIZE` > 1). A `WORLD_SIZE` that is
/// set but not a whole number from 1 to [`MAX_WORLD`] is an error: ignoring it would let each
/// process train alone, silently.
pub fn launched_multi_process() -> Result<bool> {
    let Ok(text) = std::env::var("WORLD_SIZE") else {
        return Ok(false);
    };
    match text.trim().parse::<usize>() {
        Ok(w) if (1..=MAX_WORLD).contains(&w) => Ok(w > 1),
        _ => fail!(
            Config,
            "WORLD_SIZE = {text:?} (from the launcher's environment) is not a number of \
             processes from 1 to {MAX_WORLD}; unset it for a single-process run"
        ),
    }
}
