//! Helpers shared by the integration tests: deterministic random messages, thread runners and
//! loopback TCP meshes. The scenarios themselves live in `tests/conformance/`.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::time::Duration;

use seqpipe_comm::{
    CommOptions, DType, Data, Message, Tag, TagKind, TcpConfig, TcpTransport, Transport,
};

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A message of a random dtype and a random shape (rank 0 to 3, dims 0 to 9), from `seed`.
pub fn random_message(seed: u64) -> Message {
    let mut r = Rng::new(seed);
    let ndim = r.below(4) as usize;
    let shape: Vec<usize> = (0..ndim).map(|_| r.below(10) as usize).collect();
    let n: usize = shape.iter().product();
    let dtype = DType::ALL[r.below(7) as usize];
    let data = match dtype {
        DType::F32 => Data::F32((0..n).map(|_| r.next_u64() as f32 / 7.0).collect()),
        DType::F64 => Data::F64((0..n).map(|_| r.next_u64() as f64 / 3.0).collect()),
        DType::BF16 => Data::BF16((0..n).map(|_| r.next_u64() as u16).collect()),
        DType::F16 => Data::F16((0..n).map(|_| r.next_u64() as u16).collect()),
        DType::U32 => Data::U32((0..n).map(|_| r.next_u64() as u32).collect()),
        DType::I64 => Data::I64((0..n).map(|_| r.next_u64() as i64).collect()),
        DType::U8 => Data::U8((0..n).map(|_| r.next_u64() as u8).collect()),
    };
    Message::new(shape, data).unwrap()
}

/// Runs `f` on every rank in its own thread; results in rank order.
pub fn run_ranks<T, R, F>(ranks: Vec<T>, f: F) -> Vec<R>
where
    T: Transport + 'static,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks.into_iter().map(|t| s.spawn(|| f(t))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A loopback port free right now (bound and released: another process could take it, rarely).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// How long a test mesh may take to come up: long, so a loaded CI machine never fails a
/// rendezvous; tests then set the timeout they are about.
pub const SETUP: Duration = Duration::from_secs(30);

/// A TCP mesh on loopback, every rank connected from its own thread, with `timeout` for every
/// call after the rendezvous.
pub fn tcp_mesh(world: usize, timeout: Duration) -> Vec<TcpTransport> {
    let port = free_port();
    let opts = CommOptions::with_timeout(SETUP);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                s.spawn(move || {
                    let cfg = TcpConfig::new(rank, world, "127.0.0.1", port, opts).unwrap();
                    let mut t = TcpTransport::connect(&cfg).unwrap();
                    t.set_timeout(timeout);
                    t
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The activation tag of micro-batch `mb` (slice `mb % 3`, so consecutive tags differ twice).
pub fn act(mb: u32) -> Tag {
    Tag::new(TagKind::Act, mb, mb % 3, 0).unwrap()
}
