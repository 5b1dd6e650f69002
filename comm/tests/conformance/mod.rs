//! The transport conformance suite: every scenario is written once, generic over a [`Backend`]
//! that builds meshes of connected ranks, and every backend's test entry runs all of them
//! (`local.rs`, `tcp.rs`, `nccl.rs`). A scenario added to [`with_scenarios`] runs everywhere; a
//! backend that cannot build a world a scenario asks for (NCCL with one GPU) says which it skipped.
//!
//! Scenarios that are not about timeouts use [`LONG`], which nothing reaches when the transport
//! works; timeout scenarios use [`SHORT`] and check both the error and the time it took.
#![allow(dead_code, unused_macros)] // Each entry binary uses a different subset.

mod collectives;
mod faults;
mod p2p;

pub use collectives::*;
pub use faults::*;
pub use p2p::*;

use std::time::Duration;

use seqpipe_comm::Transport;

use crate::common::run_ranks;

/// Timeout for scenarios that are not about timeouts: only a hang reaches it.
pub const LONG: Duration = Duration::from_secs(10);

/// Timeout for scenarios that are: short, so the suite stays fast.
pub const SHORT: Duration = Duration::from_millis(300);

/// How a backend builds connected ranks for a scenario.
pub trait Backend: Sync {
    /// One rank's transport.
    type T: Transport + 'static;

    /// Name in messages.
    fn name(&self) -> &'static str;

    /// The largest world this backend can build on this machine.
    fn max_world(&self) -> usize;

    /// `world` connected ranks (index = rank) whose blocking calls time out after `timeout`.
    fn mesh(&self, world: usize, timeout: Duration) -> Vec<Self::T>;

    /// Whether [`Transport::try_recv_any`] receives (the NCCL backend refuses it by name).
    fn receives_in_arrival_order(&self) -> bool {
        true
    }
}

/// The worlds of `wanted` that `b` can build; prints the ones it cannot.
pub fn worlds<B: Backend>(b: &B, scenario: &str, wanted: &[usize]) -> Vec<usize> {
    let (fit, skipped): (Vec<usize>, Vec<usize>) =
        wanted.iter().partition(|&&w| w <= b.max_world());
    if !skipped.is_empty() {
        println!(
            "  {scenario} on {}: worlds {skipped:?} skipped (this machine gives at most {} ranks)",
            b.name(),
            b.max_world()
        );
    }
    fit
}

/// Runs `f` on every rank of a fresh mesh, one thread per rank; results in rank order.
pub fn on_mesh<B: Backend, R: Send>(
    b: &B,
    world: usize,
    timeout: Duration,
    f: impl Fn(B::T) -> R + Sync,
) -> Vec<R> {
    run_ranks(b.mesh(world, timeout), f)
}

/// Calls `$m!` with its arguments, then `;` and every scenario's name: the one list each backend
/// entry expands, so no backend can miss a scenario.
macro_rules! with_scenarios {
    ($m:ident!($($arg:tt)*)) => {
        $m! {$($arg)*;
            ordered_delivery_per_peer_and_tag,
            ring_exchange_of_varying_shapes,
            random_messages_round_trip,
            isend_and_try_recv_do_not_block,
            try_recv_any_takes_whatever_came_next,
            tags_shapes_and_dtypes_must_match,
            silent_peer_times_out_naming_it,
            dead_peer_fails_the_waiting_rank_at_once,
            misuse_is_an_error,
            watchdog_sees_the_pending_op,
            all_reduce_matches_the_reference,
            broadcast_reaches_every_member,
            barrier_waits_for_every_member
        }
    };
}

/// One `#[test]` per scenario on `$backend` (a libtest entry).
macro_rules! scenario_tests {
    ($backend:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                crate::conformance::$name(&$backend);
            }
        )*
    };
}

/// `all::<B>()`: every scenario with its name, for an entry with its own `main` (NCCL).
macro_rules! scenario_list {
    (; $($name:ident),*) => {
        /// Every scenario with its name, in suite order.
        pub fn all<B: Backend>() -> Vec<(&'static str, fn(&B))> {
            vec![$((stringify!($name), $name::<B> as fn(&B))),*]
        }
    };
}

with_scenarios!(scenario_list!());
