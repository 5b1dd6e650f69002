//! NCCL backend: the conformance suite on `NcclTransport`, plus its device-tensor API.
//!
//! Runs only in a build with the `nccl` feature and with `SEQPIPE_NCCL_TESTS=1` on a machine with
//! a GPU, `libcuda` and `libnccl`: a world of one in-process rank, and two ranks as threads each
//! with its own GPU when there are two. Anywhere else it prints why it skipped. A plain `main`
//! (harness = false) so that a skip is visible in `cargo test` output rather than a silent pass.

mod common;
#[macro_use]
mod conformance;

fn main() {
    #[cfg(not(feature = "nccl"))]
    println!(
        "\nnccl conformance: skipped: built without the `nccl` feature (on a GPU machine: \
         SEQPIPE_NCCL_TESTS=1 cargo test -p seqpipe-comm --features nccl --test nccl)\n"
    );
    #[cfg(feature = "nccl")]
    gpu::run();
}

#[cfg(feature = "nccl")]
mod gpu {
    use std::time::Duration;

    use seqpipe_comm::nccl::{probe, NcclTransport};
    use seqpipe_comm::{CommOptions, Tag, TcpConfig, TcpTransport, Transport};

    use crate::common::{free_port, run_ranks, SETUP};
    use crate::conformance::{self, Backend};

    /// The switch that says this machine is meant to run the NCCL tests.
    const SWITCH: &str = "SEQPIPE_NCCL_TESTS";

    /// Ranks as threads of this process, rank `r` on GPU `r`.
    struct Nccl {
        gpus: usize,
    }

    impl Backend for Nccl {
        type T = NcclTransport;
        fn name(&self) -> &'static str {
            "nccl"
        }
        fn max_world(&self) -> usize {
            self.gpus.min(2)
        }
        fn receives_in_arrival_order(&self) -> bool {
            false
        }
        fn mesh(&self, world: usize, timeout: Duration) -> Vec<NcclTransport> {
            let port = free_port();
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..world)
                    .map(|rank| s.spawn(move || connect(rank, world, port, timeout)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        }
    }

    /// One rank: TCP rendezvous and NCCL setup with the long setup timeout, then `timeout`.
    fn connect(rank: usize, world: usize, port: u16, timeout: Duration) -> NcclTransport {
        let opts = CommOptions::with_timeout(SETUP);
        let cfg = TcpConfig::new(rank, world, "127.0.0.1", port, opts).unwrap();
        let mut t = NcclTransport::new(TcpTransport::connect(&cfg).unwrap()).unwrap();
        t.set_timeout(timeout);
        t
    }

    pub fn run() {
        if std::env::var(SWITCH).as_deref() != Ok("1") {
            println!(
                "\nnccl conformance: skipped: {SWITCH} is not 1 (set it on a machine with a GPU, \
                 libcuda and libnccl)\n"
            );
            return;
        }
        // Asked to run: a missing library is a failure, not a skip.
        probe().unwrap();
        let gpus = cudarc::driver::CudaContext::device_count().unwrap() as usize;
        let backend = Nccl { gpus };
        let mut tests = conformance::all::<Nccl>();
        tests.push(("device_tensors_round_trip", device_tensors_round_trip));
        println!("\nrunning {} nccl tests on {gpus} GPU(s)", tests.len());
        for (name, test) in &tests {
            let started = std::time::Instant::now();
            test(&backend);
            println!(
                "test nccl::{name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
        println!("\ntest result: ok. {} passed; 0 failed\n", tests.len());
    }

    /// The typed API: an all-reduce of f32 and bf16 device buffers over the world; with two
    /// ranks, device and host messages interleaved on one pair keep their order.
    fn device_tensors_round_trip(b: &Nccl) {
        for world in conformance::worlds(b, "device_tensors", &[1, 2]) {
            run_ranks(b.mesh(world, conformance::LONG), |mut t| {
                let n = t.world_size() as f32;
                let host: Vec<f32> = (0..4099).map(|i| i as f32).collect();
                let mut buf = t.stream().clone_htod(&host).unwrap();
                t.all_reduce_sum(&[4099], &mut buf).unwrap();
                t.synchronize().unwrap();
                let back = t.stream().clone_dtoh(&buf).unwrap();
                assert!(back.iter().enumerate().all(|(i, &x)| x == i as f32 * n));
                let halves: Vec<half::bf16> =
                    (0..64).map(|i| half::bf16::from_f32(i as f32)).collect();
                let mut buf = t.stream().clone_htod(&halves).unwrap();
                t.all_reduce_sum(&[8, 8], &mut buf).unwrap();
                t.synchronize().unwrap();
                let back = t.stream().clone_dtoh(&buf).unwrap();
                assert!(back
                    .iter()
                    .enumerate()
                    .all(|(i, x)| x.to_f32() == i as f32 * n));
                if t.world_size() == 2 {
                    interleaved(&mut t);
                }
            });
        }
    }

    /// Rank 0 sends device, host, device; rank 1 receives them in that order.
    fn interleaved(t: &mut NcclTransport) {
        let tag = |v| Tag::user(v).unwrap();
        let host_msg = || seqpipe_comm::Message::from_f64(vec![3], vec![1.0, -2.0, 0.5]).unwrap();
        if t.rank() == 0 {
            let first = t.stream().clone_htod(&[1.0f32, 2.0]).unwrap();
            t.send(1, tag(1), &[2], &first).unwrap();
            Transport::send(t, 1, tag(2), host_msg()).unwrap();
            let third = t.stream().clone_htod(&[7u32; 5]).unwrap();
            t.send(1, tag(3), &[5], &third).unwrap();
            t.synchronize().unwrap();
        } else {
            let (shape, first) = t.recv::<f32>(0, tag(1)).unwrap();
            assert_eq!(shape, vec![2]);
            assert_eq!(Transport::recv(t, 0, tag(2)).unwrap(), host_msg());
            let (shape, third) = t.recv::<u32>(0, tag(3)).unwrap();
            t.synchronize().unwrap();
            assert_eq!(shape, vec![5]);
            assert_eq!(t.stream().clone_dtoh(&first).unwrap(), vec![1.0, 2.0]);
            assert_eq!(t.stream().clone_dtoh(&third).unwrap(), vec![7; 5]);
        }
    }
}
