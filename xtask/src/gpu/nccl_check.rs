//! NCCL checks with the communicators one GPU machine can build: a world of one (rendezvous,
//! unique-id exchange, all-reduce), and a world of two ranks as threads on the same GPU for
//! send/recv and a real sum — which NCCL may refuse ("duplicate GPU"); that is reported as
//! not possible here, never as a pass.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use seqpipe_comm::nccl::NcclTransport;
use seqpipe_comm::{CommOptions, Tag, TcpConfig, TcpTransport};

/// Outcome of one NCCL check.
#[derive(Debug, Clone)]
pub struct NcclRow {
    /// What was checked.
    pub check: String,
    /// `pass`, `FAIL: …` or `not possible here: …`.
    pub outcome: String,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn transport(rank: usize, world: usize, port: u16) -> Result<NcclTransport> {
    let mut cfg = TcpConfig::new(
        rank,
        world,
        "127.0.0.1",
        port,
        CommOptions::with_timeout(Duration::from_secs(60)),
    )?;
    cfg.local_rank = 0; // every rank on the one GPU
    Ok(NcclTransport::new(TcpTransport::connect(&cfg)?)?)
}

/// All-reduce of `[0, 1, …, n−1] · (rank + 1)` summed over `world` ranks, checked on the host.
fn all_reduce(t: &mut NcclTransport, world: usize) -> Result<()> {
    let n = 4099;
    let host: Vec<f32> = (0..n).map(|i| i as f32 * (t.rank() + 1) as f32).collect();
    let mut buf = t.stream().clone_htod(&host)?;
    t.all_reduce_sum(&[n], &mut buf)?;
    t.synchronize()?;
    let back = t.stream().clone_dtoh(&buf)?;
    let factor: f32 = (1..=world).map(|r| r as f32).sum();
    for (i, x) in back.iter().enumerate() {
        if *x != i as f32 * factor {
            bail!(
                "element {i}: {x} after all-reduce, expected {}",
                i as f32 * factor
            );
        }
    }
    Ok(())
}

fn send_recv(t: &mut NcclTransport) -> Result<()> {
    let tag = Tag::user(7)?;
    let n = 1 << 20;
    if t.rank() == 0 {
        let host: Vec<f32> = (0..n).map(|i| (i % 977) as f32).collect();
        let buf = t.stream().clone_htod(&host)?;
        t.send(1, tag, &[n], &buf)?;
        t.synchronize()?;
    } else {
        let (shape, buf) = t.recv::<f32>(0, tag)?;
        t.synchronize()?;
        let back = t.stream().clone_dtoh(&buf)?;
        if shape != [n] || back.iter().enumerate().any(|(i, x)| *x != (i % 977) as f32) {
            bail!("received {shape:?} with wrong contents");
        }
    }
    t.barrier()?;
    Ok(())
}

fn outcome(r: Result<()>) -> String {
    match r {
        Ok(()) => "pass".into(),
        Err(e) => format!("FAIL: {e:#}"),
    }
}

/// Runs both worlds.
pub fn run() -> Result<Vec<NcclRow>> {
    let mut rows = Vec::new();
    let port = free_port()?;
    let single = transport(0, 1, port).and_then(|mut t| all_reduce(&mut t, 1));
    rows.push(NcclRow {
        check: "world 1: rendezvous + all-reduce (f32)".into(),
        outcome: outcome(single),
    });

    let port = free_port()?;
    let results: Vec<Result<Result<()>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                s.spawn(move || {
                    let mut t = match transport(rank, 2, port) {
                        Ok(t) => t,
                        Err(e) => return Err(e),
                    };
                    Ok(send_recv(&mut t).and_then(|()| all_reduce(&mut t, 2)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("rank thread panicked"))
                    .and_then(|r| r)
            })
            .collect()
    });
    let check = "world 2 on one GPU: send/recv 4 MiB + all-reduce".to_string();
    let joined: Result<Vec<Result<()>>> = results.into_iter().collect();
    rows.push(NcclRow {
        check,
        outcome: match joined {
            // The communicator could not be built: NCCL refuses two ranks on one device.
            Err(e) => format!("not possible here: {e:#}"),
            Ok(inner) => outcome(
                inner
                    .into_iter()
                    .collect::<Result<Vec<()>>>()
                    .map(drop)
                    .context("a rank"),
            ),
        },
    });
    Ok(rows)
}
