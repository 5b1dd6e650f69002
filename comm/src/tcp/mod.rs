//! Multi-process backend over TCP: one process per rank, a full mesh of connections.
//!
//! The role gloo plays for PyTorch: CPU multi-process runs and tests, loopback or a real network.
//! Ranks find each other from the launcher's environment ([`TcpConfig::from_env`]: `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, as torchrun and Slurm scripts set
//! them) or from explicit values ([`TcpConfig::new`]).

mod frame;
mod link;
mod rendezvous;

use std::time::Duration;

use crate::error::{CommError, Result};
use crate::message::Message;
use crate::progress::Progress;
use crate::tag::Tag;
use crate::transport::{
    check_peer, disconnected, receive, receive_any, recv_op, send_op, CommOptions, SendHandle,
    Transport,
};
#[cfg(feature = "nccl")]
use crate::transport::{receive_envelope, Envelope};
use link::Link;

/// Where and who this rank is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// This rank, `0..world_size`.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rank within this node (picks the GPU for the NCCL backend).
    pub local_rank: usize,
    /// Host name or IP of rank 0.
    pub master_addr: String,
    /// Port rank 0 listens on for rendezvous.
    pub master_port: u16,
    /// Timeouts (rendezvous uses the same one).
    pub options: CommOptions,
}

impl TcpConfig {
    /// Explicit values; `local_rank` defaults to `rank` (right for single-node runs).
    pub fn new(
        rank: usize,
        world_size: usize,
        master_addr: impl Into<String>,
        master_port: u16,
        options: CommOptions,
    ) -> Result<TcpConfig> {
        if rank >= world_size {
            return Err(CommError::BadRank {
                what: "rank",
                rank,
                world_size,
            });
        }
        Ok(TcpConfig {
            rank,
            world_size,
            local_rank: rank,
            master_addr: master_addr.into(),
            master_port,
            options,
        })
    }

    /// Reads the launcher variables from the process environment.
    pub fn from_env(options: CommOptions) -> Result<TcpConfig> {
        TcpConfig::from_lookup(|k| std::env::var(k).ok(), options)
    }

    /// Reads the launcher variables through `lookup` (for tests and wrappers). `LOCAL_RANK` may be
    /// absent (then it is `RANK`); the other four are required.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        options: CommOptions,
    ) -> Result<TcpConfig> {
        let rank: usize = parse_var(&lookup, "RANK")?;
        let world_size: usize = parse_var(&lookup, "WORLD_SIZE")?;
        if world_size == 0 {
            return Err(env_err("WORLD_SIZE", "0", "must be at least 1"));
        }
        let master_addr = lookup("MASTER_ADDR")
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| env_err("MASTER_ADDR", "", "must name rank 0's host"))?;
        let master_port: u16 = parse_var(&lookup, "MASTER_PORT")?;
        let mut cfg = TcpConfig::new(rank, world_size, master_addr.trim(), master_port, options)?;
        if lookup("LOCAL_RANK").is_some() {
            cfg.local_rank = parse_var(&lookup, "LOCAL_RANK")?;
        }
        Ok(cfg)
    }
}

fn env_err(var: &'static str, value: &str, reason: &str) -> CommError {
    CommError::Env {
        var,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_var<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<T> {
    let value = lookup(var).ok_or_else(|| env_err(var, "", "is not set"))?;
    value.trim().parse().map_err(|_| {
        env_err(
            var,
            &value,
            "must be a non-negative whole number (ports: 1..=65535)",
        )
    })
}

/// One rank of a TCP mesh.
#[derive(Debug)]
pub struct TcpTransport {
    rank: usize,
    local_rank: usize,
    links: Vec<Option<Link>>,
    options: CommOptions,
    progress: Progress,
}

impl TcpTransport {
    /// Rendezvous with the other ranks and connect to all of them; waits up to the timeout.
    pub fn connect(cfg: &TcpConfig) -> Result<TcpTransport> {
        if cfg.rank >= cfg.world_size {
            return Err(CommError::BadRank {
                what: "rank",
                rank: cfg.rank,
                world_size: cfg.world_size,
            });
        }
        let streams = rendezvous::establish(cfg)?;
        let links = streams
            .into_iter()
            .enumerate()
            .map(|(peer, s)| {
                s.map(|s| Link::start(peer, s, cfg.options.timeout))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TcpTransport {
            rank: cfg.rank,
            local_rank: cfg.local_rank,
            links,
            options: cfg.options,
            progress: Progress::new(cfg.rank),
        })
    }

    /// [`TcpConfig::from_env`] then [`TcpTransport::connect`].
    pub fn from_env(options: CommOptions) -> Result<TcpTransport> {
        TcpTransport::connect(&TcpConfig::from_env(options)?)
    }

    /// Rank within this node.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Changes the timeout of later blocking calls (rendezvous is over; e.g. a long one to let
    /// every process start, then a short one for the run).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.options.timeout = timeout;
    }

    /// Why `peer`'s side of the link ended, once it has (its process ended or it dropped its
    /// transport); `None` while it is open. Does not consume messages still queued from it.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn peer_gone(&self, peer: usize) -> Option<String> {
        self.links.get(peer)?.as_ref()?.closed()
    }

    /// The next envelope from `peer` whatever its tag, with `recv peer tag` left pending in the
    /// progress record for the caller to complete or abandon (see `receive_envelope`).
    #[cfg(feature = "nccl")]
    pub(crate) fn receive_envelope(
        &mut self,
        peer: usize,
        tag: Tag,
        timeout: Option<Duration>,
    ) -> Result<Option<Envelope>> {
        let inbox = self.link(peer)?.inbox();
        receive_envelope(inbox, &self.progress, recv_op(peer, tag), timeout)
    }

    /// Flushes and half-closes every link: peers read what was sent, then see this rank gone,
    /// while this side can still watch theirs. Later sends fail naming the peer.
    #[cfg(feature = "nccl")]
    pub(crate) fn close_writes(&mut self) {
        self.links.iter_mut().flatten().for_each(Link::close_writes);
    }

    fn link(&self, peer: usize) -> Result<&Link> {
        check_peer(self.rank, self.links.len(), peer)?;
        self.links[peer]
            .as_ref()
            .ok_or(CommError::SelfPeer { rank: peer })
    }
}

impl Transport for TcpTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.links.len()
    }

    fn timeout(&self) -> Duration {
        self.options.timeout
    }

    fn progress(&self) -> Progress {
        self.progress.clone()
    }

    fn isend(&mut self, peer: usize, tag: Tag, msg: Message) -> Result<SendHandle> {
        let op = send_op(peer, tag);
        let link = self.link(peer)?;
        self.progress.begin(op);
        match link.send(op, tag, msg) {
            Ok(h) => {
                // Queued for the writer: from this rank's point of view the send is done.
                self.progress.complete(op);
                Ok(h)
            }
            Err(e) => {
                self.progress.abandon();
                Err(e)
            }
        }
    }

    fn recv_timeout(&mut self, peer: usize, tag: Tag, timeout: Duration) -> Result<Message> {
        let op = recv_op(peer, tag);
        let inbox = self.link(peer)?.inbox();
        receive(inbox, &self.progress, op, Some(timeout))?
            .ok_or_else(|| disconnected(op, "no message"))
    }

    fn try_recv(&mut self, peer: usize, tag: Tag) -> Result<Option<Message>> {
        let inbox = self.link(peer)?.inbox();
        receive(inbox, &self.progress, recv_op(peer, tag), None)
    }

    fn try_recv_any(&mut self, peer: usize) -> Result<Option<(Tag, Message)>> {
        let inbox = self.link(peer)?.inbox();
        receive_any(inbox, &self.progress, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn launcher_variables_are_read() {
        let vars = [
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "node-a"),
            ("MASTER_PORT", "29500"),
        ];
        let cfg = TcpConfig::from_lookup(lookup(&vars), CommOptions::default()).unwrap();
        assert_eq!((cfg.rank, cfg.world_size, cfg.local_rank), (2, 4, 0));
        assert_eq!(
            (cfg.master_addr.as_str(), cfg.master_port),
            ("node-a", 29500)
        );
        let without_local: Vec<(&str, &str)> = vars
            .iter()
            .filter(|(k, _)| *k != "LOCAL_RANK")
            .copied()
            .collect();
        let cfg = TcpConfig::from_lookup(lookup(&without_local), CommOptions::default()).unwrap();
        assert_eq!(cfg.local_rank, 2);
    }

    #[test]
    fn bad_launcher_variables_name_the_variable() {
        let base = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ];
        let with = |k: &'static str, v: &'static str| {
            let mut vars: Vec<(&str, &str)> =
                base.iter().filter(|(n, _)| *n != k).copied().collect();
            vars.push((k, v));
            TcpConfig::from_lookup(lookup(&vars), CommOptions::default())
                .unwrap_err()
                .to_string()
        };
        assert!(with("MASTER_PORT", "70000").contains("MASTER_PORT=\"70000\""));
        assert!(with("RANK", "-1").contains("RANK=\"-1\""));
        assert_eq!(
            with("RANK", "2"),
            "rank 2 is out of range: valid ranks are 0..2"
        );
        assert!(with("WORLD_SIZE", "0").contains("WORLD_SIZE"));
        let unset = TcpConfig::from_lookup(lookup(&base[1..]), CommOptions::default()).unwrap_err();
        assert_eq!(
            unset.to_string(),
            "environment variable RANK=\"\": is not set"
        );
    }
}
