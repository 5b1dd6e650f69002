//! Real multi-process runs over TCP on loopback: this test binary re-executes itself as rank
//! processes (selected by an environment variable), then kills or stalls one of them mid-exchange.
//! The survivors must fail naming that rank, well within the timeout; nothing may hang.
//! A plain `main` (harness = false) so the child role never shows up as a test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use seqpipe_comm::{
    CommError, CommOptions, Message, Tag, TagKind, TcpTransport, Transport, Watchdog,
};

const ROLE: &str = "SEQPIPE_COMM_TEST_ROLE";
const STOP_AFTER: &str = "SEQPIPE_COMM_TEST_STOP_AFTER";
const TIMEOUT_MS: &str = "SEQPIPE_COMM_TEST_TIMEOUT_MS";
const STEPS: u32 = 10_000;

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("rank") {
        std::process::exit(rank_process());
    }
    let tests: [(&str, fn()); 2] = [
        (
            "killed_rank_is_named_by_every_survivor",
            killed_rank_is_named_by_every_survivor,
        ),
        (
            "stalled_rank_times_out_with_a_watchdog_dump",
            stalled_rank_times_out_with_a_watchdog_dump,
        ),
    ];
    println!("\nrunning {} tests", tests.len());
    for (name, test) in tests {
        test();
        println!("test {name} ... ok");
    }
    println!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
        tests.len()
    );
}

/// All-to-all steps: send a step-sized message to every peer, then receive from every peer in
/// rank order. Stops (and waits to be killed) after `stop_after` steps if given.
fn exchange(t: &mut TcpTransport, stop_after: Option<u32>) -> Result<(), CommError> {
    let (me, n) = (t.rank(), t.world_size());
    for step in 0..STEPS {
        if stop_after == Some(step) {
            println!("STOPPED at step {step}");
            std::thread::sleep(Duration::from_secs(120));
        }
        let tag = Tag::new(TagKind::Act, step, 0, 0).unwrap();
        for peer in (0..n).filter(|&p| p != me) {
            let len = 1 + (step as usize * 31 + me) % 4096;
            t.send(
                peer,
                tag,
                Message::from_u32(vec![len], vec![step; len]).unwrap(),
            )?;
        }
        for peer in (0..n).filter(|&p| p != me) {
            let m = t.recv(peer, tag)?;
            assert!(m.as_u32().unwrap().iter().all(|&v| v == step));
        }
    }
    Ok(())
}

fn rank_process() -> i32 {
    let ms: u64 = std::env::var(TIMEOUT_MS).unwrap().parse().unwrap();
    let stop_after = std::env::var(STOP_AFTER).ok().map(|s| s.parse().unwrap());
    let mut t =
        TcpTransport::from_env(CommOptions::with_timeout(Duration::from_millis(ms))).unwrap();
    match exchange(&mut t, stop_after) {
        Ok(()) => 0,
        Err(e) => {
            println!("ERROR: {e}");
            3
        }
    }
}

/// Rank processes, killed when dropped so a failing test leaves nothing behind.
struct Ranks(Vec<(Child, Receiver<String>)>);

impl Ranks {
    fn spawn(port: u16, world: usize, timeout_ms: u64, stop: Option<(usize, u32)>) -> Ranks {
        let exe = std::env::current_exe().unwrap();
        let children = (1..world)
            .map(|rank| {
                let mut cmd = Command::new(&exe);
                cmd.env(ROLE, "rank")
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", world.to_string())
                    .env("LOCAL_RANK", rank.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string())
                    .env(TIMEOUT_MS, timeout_ms.to_string())
                    .stdout(Stdio::piped());
                if let Some((_, step)) = stop.filter(|&(r, _)| r == rank) {
                    cmd.env(STOP_AFTER, step.to_string());
                }
                let mut child = cmd.spawn().unwrap();
                let (tx, rx) = unbounded();
                let out = child.stdout.take().unwrap();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        let _ = tx.send(line);
                    }
                });
                (child, rx)
            })
            .collect();
        Ranks(children)
    }

    /// Rank `r`'s next stdout line, within `within`.
    fn line(&self, r: usize, within: Duration) -> String {
        self.0[r - 1]
            .1
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("rank {r} printed nothing within {within:?}"))
    }

    /// Waits for rank `r` to exit (at most `within`) and returns its exit code.
    fn exit_code(&mut self, r: usize, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0[r - 1].0.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "rank {r} did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect_rank0(port: u16, world: usize, timeout_ms: u64) -> TcpTransport {
    let opts = CommOptions::with_timeout(Duration::from_millis(timeout_ms));
    let cfg = seqpipe_comm::TcpConfig::new(0, world, "127.0.0.1", port, opts).unwrap();
    TcpTransport::connect(&cfg).unwrap()
}

fn killed_rank_is_named_by_every_survivor() {
    const TIMEOUT_MS: u64 = 20_000;
    let port = free_port();
    let mut ranks = Ranks::spawn(port, 3, TIMEOUT_MS, Some((2, 25)));
    let mut rank0 = connect_rank0(port, 3, TIMEOUT_MS);
    let survivor = std::thread::spawn(move || (exchange(&mut rank0, None), Instant::now()));
    let stopped = ranks.line(2, Duration::from_secs(15));
    assert_eq!(stopped, "STOPPED at step 25");
    std::thread::sleep(Duration::from_millis(100)); // Let ranks 0 and 1 block on rank 2.
    let killed_at = Instant::now();
    ranks.0[1].0.kill().unwrap(); // SIGKILL: no destructor, the kernel closes its sockets.
    let (result, failed_at) = survivor.join().unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(err, CommError::PeerDisconnected { peer: 2, .. }),
        "rank 0: {err}"
    );
    assert!(
        err.to_string()
            .starts_with("rank 2 disconnected during recv act(mb=25"),
        "{err}"
    );
    let detect = failed_at - killed_at;
    assert!(
        detect < Duration::from_secs(5),
        "rank 0 took {detect:?} (timeout is 20 s)"
    );
    assert_eq!(ranks.exit_code(1, Duration::from_secs(5)), 3);
    let line = ranks.line(1, Duration::from_secs(1));
    assert!(
        line.starts_with("ERROR: rank 2 disconnected during recv act(mb=25"),
        "rank 1: {line}"
    );
    println!(
        "  kill detected by rank 0 after {:.1} ms",
        detect.as_secs_f64() * 1e3
    );
}

fn stalled_rank_times_out_with_a_watchdog_dump() {
    const TIMEOUT_MS: u64 = 800;
    let port = free_port();
    let ranks = Ranks::spawn(port, 2, 30_000, Some((1, 3)));
    let mut rank0 = connect_rank0(port, 2, TIMEOUT_MS);
    let watchdog = Watchdog::new(vec![rank0.progress()]);
    let (tx, dumps) = unbounded();
    let _guard = watchdog.spawn(Duration::from_millis(300), move |d| {
        let _ = tx.send(d);
    });
    let start = Instant::now();
    let err = exchange(&mut rank0, None).unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(
            err,
            CommError::Timeout {
                peer: 1,
                waited_ms: 800,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("waiting on rank 1 for recv act(mb=3"),
        "{err}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let dump = dumps.recv_timeout(Duration::from_secs(1)).unwrap();
    assert!(
        dump.contains("rank 0: last completed send act(mb=3, slice=0, chunk=0) to rank 1"),
        "{dump}"
    );
    assert!(
        dump.contains("waiting on recv act(mb=3, slice=0, chunk=0) from rank 1"),
        "{dump}"
    );
    assert_eq!(ranks.line(1, Duration::from_secs(1)), "STOPPED at step 3");
}
