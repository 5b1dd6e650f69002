//! TCP backend with real sockets on loopback, every rank a thread: the conformance suite, plus
//! rendezvous failures (a rank that never comes, ranks that disagree on the world size).
//! Killed and stalled rank processes are in `procs.rs`.

mod common;
#[macro_use]
mod conformance;

use std::time::{Duration, Instant};

use common::free_port;
use conformance::Backend;
use seqpipe_comm::{CommError, CommOptions, TcpConfig, TcpTransport};

/// Ranks as threads, each with its own sockets.
struct Tcp;

impl Backend for Tcp {
    type T = TcpTransport;
    fn name(&self) -> &'static str {
        "tcp"
    }
    fn max_world(&self) -> usize {
        usize::MAX
    }
    fn mesh(&self, world: usize, timeout: Duration) -> Vec<TcpTransport> {
        common::tcp_mesh(world, timeout)
    }
}

with_scenarios!(scenario_tests!(Tcp));

#[test]
fn rendezvous_names_the_rank_that_never_came() {
    let port = free_port();
    let opts = CommOptions::with_timeout(Duration::from_millis(400));
    let start = Instant::now();
    let joined = std::thread::spawn(move || {
        TcpTransport::connect(&TcpConfig::new(1, 3, "127.0.0.1", port, opts).unwrap()).unwrap_err()
    });
    let master =
        TcpTransport::connect(&TcpConfig::new(0, 3, "127.0.0.1", port, opts).unwrap()).unwrap_err();
    let worker = joined.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    let text = master.to_string();
    assert!(
        text.starts_with("rendezvous failed on rank 0: waiting for ranks [2] to join"),
        "{text}"
    );
    assert!(
        matches!(worker, CommError::Rendezvous { rank: 1, .. }),
        "{worker}"
    );
}

#[test]
fn rendezvous_rejects_disagreeing_world_sizes() {
    let port = free_port();
    let opts = CommOptions::with_timeout(Duration::from_secs(5));
    let worker = std::thread::spawn(move || {
        TcpTransport::connect(&TcpConfig::new(1, 3, "127.0.0.1", port, opts).unwrap()).unwrap_err()
    });
    let master =
        TcpTransport::connect(&TcpConfig::new(0, 2, "127.0.0.1", port, opts).unwrap()).unwrap_err();
    assert!(
        master
            .to_string()
            .contains("rank 1 says WORLD_SIZE=3, rank 0 has 2"),
        "{master}"
    );
    let worker = worker.join().unwrap();
    assert!(worker.to_string().contains("address table"), "{worker}");
}
