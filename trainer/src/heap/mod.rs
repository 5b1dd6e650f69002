//! A counting global allocator: the process's own measure of its heap, independent of the
//! runtime's bookkeeping of named tensors (`runtime::worker::Held`) and of the `memory` crate's
//! prediction. Every allocation of the process goes through it once registered:
//!
//! ```ignore
//! #[global_allocator]
//! static HEAP: seqpipe_trainer::heap::Counting = seqpipe_trainer::heap::Counting;
//! ```
//!
//! It wraps [`std::alloc::System`] and keeps, in atomics, the bytes currently allocated, the
//! peak since the last [`reset_peak`] and the peak of the whole process. Sizes are the requested
//! `Layout` sizes (the allocator's rounding and headers are not counted), so a tensor of `n`
//! f32 elements counts `4n` bytes, as the bookkeeping and the prediction count it.
//!
//! [`mark`] is the hook a training loop calls at phase boundaries (for instance at the start of
//! every step): it records the bytes held at that moment and the peak since the previous mark,
//! then resets the peak. A process's report ([`Report`]) lists the marks, so the baseline held
//! before step 0 and the peak of each step can be read apart. Without a registered `Counting`
//! allocator every figure stays 0 ([`counting`] says which).
//!
//! The host link's copies to host memory are the host tier ([`host_tier`]): counted apart, so
//! the heap figures are the device tier's on a CPU run too, and marks carry the host tier's peak.

mod host_tier;

pub use host_tier::{host_tier, overflowed};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Bytes allocated and not yet freed.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Highest `CURRENT` since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Highest `CURRENT` since the process started.
static PROCESS_PEAK: AtomicUsize = AtomicUsize::new(0);
/// Marks recorded so far, in order.
static MARKS: Mutex<Vec<Mark>> = Mutex::new(Vec::new());

/// The counting allocator (a unit struct: the counts are process-wide statics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

fn grew(bytes: usize) {
    // Relaxed suffices: each counter is one atomic and the peaks are maxima of values it held;
    // no other memory is published through them.
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    // A plain load first: most allocations set no new peak, and a read leaves the cache line
    // shared, where a read-modify-write on every allocation would make threads contend for it.
    if now > PEAK.load(Ordering::Relaxed) {
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
    if now > PROCESS_PEAK.load(Ordering::Relaxed) {
        PROCESS_PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

/// `grew`, as a `false` for chaining after a host tier that did not take the block.
fn grew_by(bytes: usize) -> bool {
    grew(bytes);
    false
}

/// Counts a new block: on the host tier inside [`host_tier`], else (or if its table is full) on
/// the heap.
fn counted(ptr: *mut u8, bytes: usize) {
    let on_host = || host_tier::inside() && host_tier::adopt(ptr, bytes);
    if !ptr.is_null() && !on_host() {
        grew(bytes);
    }
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only addition is counting sizes in atomics, which neither
// allocates nor touches the returned memory.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees on `layout` are passed on to `System`.
        let ptr = unsafe { System.alloc(layout) };
        counted(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        counted(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Uncounted before the block is freed, so its address cannot be reused meanwhile.
        if !host_tier::release(ptr, layout.size()) {
            shrank(layout.size());
        }
        // SAFETY: `ptr` was allocated by `System` (through this wrapper) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let host = host_tier::release(ptr, layout.size());
        // SAFETY: `ptr` and `layout` come from this wrapper's `System` allocation; the caller
        // guarantees `new_size` is valid for `layout`'s alignment.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if host {
            // A host block stays one, resized (or, on failure, untouched).
            match new.is_null() {
                true => host_tier::adopt(ptr, layout.size()) || grew_by(layout.size()),
                false => host_tier::adopt(new, new_size) || grew_by(new_size),
            };
            return new;
        }
        // On failure the old block is untouched and still counted.
        if !new.is_null() {
            match new_size.cmp(&layout.size()) {
                std::cmp::Ordering::Greater => grew(new_size - layout.size()),
                std::cmp::Ordering::Less => shrank(layout.size() - new_size),
                std::cmp::Ordering::Equal => {}
            }
        }
        new
    }
}

/// Bytes allocated now.
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Highest allocated bytes since the last [`reset_peak`] (or since the process started).
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Highest allocated bytes since the process started (not affected by [`reset_peak`]).
pub fn process_peak() -> usize {
    PROCESS_PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak window at the bytes allocated now.
pub fn reset_peak() {
    PEAK.store(current(), Ordering::Relaxed);
}

/// Whether a [`Counting`] allocator is registered: any Rust process has allocated by the time
/// it can ask, so a zero peak means nothing went through it.
pub fn counting() -> bool {
    process_peak() > 0
}

/// One phase boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// What begins here (e.g. `step 0`).
    pub label: String,
    /// Bytes allocated when the mark was taken: what the process holds entering the phase.
    pub current: usize,
    /// Peak bytes of the phase that ends here (since the previous mark, or the process start).
    pub peak_before: usize,
    /// Peak host-tier bytes of the phase that ends here.
    #[serde(default)]
    pub host_peak_before: usize,
}

/// Records a phase boundary (see [`Mark`]) and starts a new peak window.
pub fn mark(label: impl Into<String>) {
    let label = label.into();
    // Read the figures before the push allocates, so the mark does not count itself.
    let (current, peak_before, host_peak_before) = (current(), peak(), host_tier::peak());
    let mut marks = MARKS.lock().unwrap_or_else(|e| e.into_inner());
    marks.push(Mark {
        label,
        current,
        peak_before,
        host_peak_before,
    });
    drop(marks);
    reset_peak();
    host_tier::reset_peak();
}

/// The marks recorded so far.
pub fn marks() -> Vec<Mark> {
    MARKS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What a process reports about its heap (`SEQPIPE_HEAP_REPORT`, written by the `seqpipe`
/// binary when its command has succeeded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Highest allocated bytes over the whole process.
    pub process_peak: usize,
    /// Bytes still allocated when the report was made.
    pub current: usize,
    /// Peak since the last mark (the whole process when there is none).
    pub peak_since_last_mark: usize,
    /// Phase boundaries the process marked, in order.
    pub marks: Vec<Mark>,
    /// Whether a host-tier block was counted on the heap because the tier's table was full.
    #[serde(default)]
    pub host_overflowed: bool,
}

/// The report of this process now.
pub fn report() -> Report {
    Report {
        process_peak: process_peak(),
        current: current(),
        peak_since_last_mark: peak(),
        marks: marks(),
        host_overflowed: overflowed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, because the counters are process-wide: unit tests run on the system
    /// allocator, so nothing counts until the test drives `Counting` directly — a block, its
    /// growth and shrinking, a mark, its free.
    #[test]
    #[allow(unsafe_code)]
    fn counts_follow_alloc_realloc_free_and_marks() {
        let _unrelated = vec![0u8; 1 << 20];
        assert!(!counting());
        assert_eq!((current(), peak(), process_peak()), (0, 0, 0));
        let layout = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: non-zero layouts; each block is freed or resized with the layout it has.
        unsafe {
            let p = Counting.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(current(), 1000);
            let p = Counting.realloc(p, layout, 3000);
            assert_eq!((current(), peak()), (3000, 3000));
            let p = Counting.realloc(p, Layout::from_size_align(3000, 8).unwrap(), 500);
            assert_eq!((current(), peak(), process_peak()), (500, 3000, 3000));
            mark("after shrinking");
            assert_eq!(peak(), 500, "a mark starts a new peak window");
            Counting.dealloc(p, Layout::from_size_align(500, 8).unwrap());
        }
        assert_eq!((current(), process_peak()), (0, 3000));
        assert!(counting());
        let m = &marks()[0];
        assert_eq!((m.current, m.peak_before), (500, 3000));
        assert_eq!(m.label, "after shrinking");
        // Blocks taken inside `host_tier` are the host tier's wherever they are freed or
        // resized; the heap figures do not move.
        let host = host_tier(|| unsafe { Counting.alloc(layout) });
        assert_eq!((current(), host_tier::current()), (0, 1000));
        let host = std::thread::scope(|s| {
            let moved = host as usize;
            // SAFETY: the block is 1000 bytes with `layout`, resized then freed once.
            let resized = s.spawn(move || unsafe {
                Counting.realloc(moved as *mut u8, layout, 2000) as usize
            });
            resized.join().unwrap() as *mut u8
        });
        assert_eq!(
            (current(), host_tier::current(), host_tier::peak()),
            (0, 2000, 2000)
        );
        mark("host");
        unsafe { Counting.dealloc(host, Layout::from_size_align(2000, 8).unwrap()) };
        assert_eq!((current(), host_tier::current()), (0, 0));
        assert_eq!(marks()[1].host_peak_before, 2000);
        assert!(!overflowed());
    }
}
