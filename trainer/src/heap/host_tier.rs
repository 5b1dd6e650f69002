//! The host tier of a CPU run, kept apart from the device tier in the counting allocator.
//!
//! On a GPU the host link copies offloaded records into host buffers the device's allocator
//! never sees. On a CPU run both tiers are the process heap, so the blocks a thread allocates
//! inside [`host_tier`] (the host link's copies to host memory) are counted here instead of in
//! the heap figures: those stay the device tier's, an independent measure of its predicted
//! peak, and the host tier has its own current and peak bytes.
//!
//! A block is attributed by address: host blocks live in a fixed lock-free open-addressing table
//! (an allocator may not allocate), so a free on any thread finds the tier its block came from.
//! The table holds [`SLOTS`] live host blocks; one that does not fit is counted on the device
//! and flagged ([`overflowed`]), never lost.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Live host blocks the table can hold.
pub const SLOTS: usize = 1 << 16;
const EMPTY: usize = 0;
/// A freed slot (no block starts at address 1), skipped by lookups and reused by inserts.
const GONE: usize = 1;

static TABLE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(EMPTY) }; SLOTS];
/// Host blocks in the table: frees look it up only while there are some.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static OVERFLOWED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with its allocations on this thread counted as host memory.
pub fn host_tier<R>(f: impl FnOnce() -> R) -> R {
    let before = INSIDE.with(|c| c.replace(true));
    let out = f();
    INSIDE.with(|c| c.set(before));
    out
}

/// Whether this thread is inside [`host_tier`].
pub(super) fn inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(false)
}

fn home(ptr: usize) -> usize {
    // Fibonacci hashing of the address without its alignment bits.
    ((ptr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) % SLOTS
}

/// Counts the block at `ptr` as host memory; `false` when the table is full (the caller counts
/// it on the device).
pub(super) fn adopt(ptr: *mut u8, size: usize) -> bool {
    let key = ptr as usize;
    let start = home(key);
    for i in 0..SLOTS {
        let slot = &TABLE[(start + i) % SLOTS];
        let seen = slot.load(Ordering::Relaxed);
        let free = seen == EMPTY || seen == GONE;
        if free
            && slot
                .compare_exchange(seen, key, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            LIVE.fetch_add(1, Ordering::AcqRel);
            let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
            PEAK.fetch_max(now, Ordering::Relaxed);
            return true;
        }
    }
    OVERFLOWED.store(true, Ordering::Relaxed);
    false
}

/// Uncounts the block at `ptr` if it is a host block; `false` when it is not.
pub(super) fn release(ptr: *mut u8, size: usize) -> bool {
    if LIVE.load(Ordering::Acquire) == 0 {
        return false;
    }
    let key = ptr as usize;
    let start = home(key);
    for i in 0..SLOTS {
        let slot = &TABLE[(start + i) % SLOTS];
        match slot.load(Ordering::Acquire) {
            EMPTY => return false,
            seen if seen == key => {
                slot.store(GONE, Ordering::Release);
                LIVE.fetch_sub(1, Ordering::AcqRel);
                CURRENT.fetch_sub(size, Ordering::Relaxed);
                return true;
            }
            _ => {}
        }
    }
    false
}

/// Host bytes allocated now.
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Highest host bytes since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new host peak window at the host bytes allocated now.
pub fn reset_peak() {
    PEAK.store(current(), Ordering::Relaxed);
}

/// Whether a host block was ever counted on the device because the table was full.
pub fn overflowed() -> bool {
    OVERFLOWED.load(Ordering::Relaxed)
}
