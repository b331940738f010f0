//! The floor of a tracking allocator's cost: a model wrapper around
//! jemalloc that keeps only the parts of heapwatch's fast path chosen by a
//! set of bits, so that each part's cost can be measured side by side with
//! raw jemalloc and with heapwatch itself.
//!
//! It is not heapwatch and is used by no test or program, only by the
//! benchmarks: `benches/floor.rs` (the tight alloc + free loop of issue 2's
//! criterion benchmark, one part added at a time) and the comparison
//! workers `benches/compare/floor_*.rs` (whole programs). Each part is
//! written as heapwatch's fast path does it (`src/tracker.rs`,
//! `src/counters.rs`, `src/budget.rs`, `src/sampling.rs`):
//!
//! - [`WORD`]: one thread-local word, loaded and tested (the shard's
//!   address with the reentrancy guard's bit; heapwatch's `counters::fast`);
//! - [`COUNTS`]: the four exact counters of the thread's shard (allocations
//!   and their bytes, frees and theirs), plain loads and stores;
//! - [`BUDGET`]: a comparison of the counter just computed with the shard's
//!   limit, on both sides;
//! - [`GUARD`]: the guard's bit set in the word around the inner `alloc`;
//! - [`FILTER`]: the free filter's byte for the block, loaded before a free;
//! - [`COUNTDOWN`]: the sampling countdown, decremented on `alloc`;
//! - [`OUT_OF_LINE`]: `dealloc` called out of line, one copy per alignment
//!   (heapwatch's `dealloc_aligned`), instead of inlined where the program
//!   frees.
//!
//! What the model leaves out costs nothing on the fast path: a thread's
//! first allocation leases a shard (here: takes the next of [`MODEL_SHARDS`]
//! and never gives it back), and anything off the fast path (the guard set,
//! a limit reached, a filter byte set, the countdown run out) goes to one
//! cold function that counts with atomics (if the model counts) and
//! forwards.

// Each program uses some of the parts.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};

use tikv_jemallocator::Jemalloc;

/// Load and test the thread's word.
pub const WORD: u32 = 1;
/// The four exact counters (needs `WORD`).
pub const COUNTS: u32 = 2;
/// The budget's comparisons with the shard's limits (needs `WORD`).
pub const BUDGET: u32 = 4;
/// The guard's bit set around the inner `alloc` (needs `WORD`).
pub const GUARD: u32 = 8;
/// The free filter's load (needs `WORD`).
pub const FILTER: u32 = 16;
/// The sampling countdown (needs `WORD`).
pub const COUNTDOWN: u32 = 32;
/// `dealloc` out of line, a copy per alignment.
pub const OUT_OF_LINE: u32 = 64;
/// Every part: heapwatch's `Sampling::Off` fast path, modelled.
pub const ALL: u32 = WORD | COUNTS | BUDGET | GUARD | FILTER | COUNTDOWN | OUT_OF_LINE;

/// Shards a thread can lease; later threads stay on the cold path.
pub const MODEL_SHARDS: usize = 64;
/// The countdown's reload: heapwatch's default mean interval.
const INTERVAL: i64 = 512 * 1024;
/// The word of a thread that has no shard yet (bit 1: not an address).
const NO_SHARD: usize = 2;
/// The guard's bit in the word.
const GUARD_BIT: usize = 1;
/// Shards are 128-byte aligned: the word's low bits are free for tags.
const TAG_BITS: usize = 127;

/// A thread's counters, laid out as heapwatch's `Shard`'s first line.
#[repr(C, align(128))]
pub struct Shard {
    countdown: AtomicI64,
    allocs: AtomicU64,
    alloc_bytes: AtomicU64,
    frees: AtomicU64,
    freed_bytes: AtomicU64,
    reallocs: AtomicU64,
    alloc_limit: AtomicU64,
    free_limit: AtomicU64,
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            countdown: AtomicI64::new(INTERVAL),
            allocs: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            alloc_limit: AtomicU64::new(u64::MAX),
            free_limit: AtomicU64::new(u64::MAX),
        }
    }
}

static SHARDS: [Shard; MODEL_SHARDS] = [const { Shard::new() }; MODEL_SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
/// Counts of everything that took the cold path, with atomics.
static COLD: Shard = Shard::new();
/// The free filter: all zero (no block is sampled), 64 KiB of atomics as
/// heapwatch's (plain bytes would let the compiler fold the load away).
static FILTER_BYTES: [AtomicU8; 1 << 16] = [const { AtomicU8::new(0) }; 1 << 16];

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(NO_SHARD) };
}

fn add(c: &AtomicU64, v: u64) {
    c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
}

/// The model, over jemalloc, with the parts in `PARTS`.
pub struct Floor<const PARTS: u32>;

/// Totals over every shard and the cold path: (allocations, frees,
/// allocated bytes, freed bytes, reallocations). Exact once the other
/// threads have joined.
pub fn totals() -> (u64, u64, u64, u64, u64) {
    let mut t = (0, 0, 0, 0, 0);
    for s in SHARDS.iter().chain(std::iter::once(&COLD)) {
        t.0 += s.allocs.load(Relaxed);
        t.1 += s.frees.load(Relaxed);
        t.2 += s.alloc_bytes.load(Relaxed);
        t.3 += s.freed_bytes.load(Relaxed);
        t.4 += s.reallocs.load(Relaxed);
    }
    t
}

/// The calling thread's shard when it is on the fast path.
#[inline(always)]
fn fast() -> Option<(usize, &'static Shard)> {
    let w = CURRENT.try_with(Cell::get).unwrap_or(NO_SHARD);
    if w & TAG_BITS != 0 {
        return None;
    }
    // SAFETY: a word with no tag bit set is the address of an element
    // of `SHARDS` (`lease` writes nothing else), a static.
    Some((w, unsafe { &*(w as *const Shard) }))
}

/// Leases the calling thread a shard, if one is left and the thread is
/// not inside the model.
#[cold]
#[inline(never)]
fn lease() {
    let _ = CURRENT.try_with(|c| {
        if c.get() == NO_SHARD {
            let i = NEXT_SHARD.fetch_add(1, Relaxed);
            if i < MODEL_SHARDS {
                c.set(&SHARDS[i] as *const Shard as usize);
            }
        }
    });
}

#[cold]
#[inline(never)]
fn cold_alloc(layout: Layout, zeroed: bool, count: bool) -> *mut u8 {
    lease();
    // SAFETY: forwarded from `alloc`'s caller, who upholds its contract.
    let p = unsafe {
        if zeroed {
            Jemalloc.alloc_zeroed(layout)
        } else {
            Jemalloc.alloc(layout)
        }
    };
    if count && !p.is_null() {
        COLD.allocs.fetch_add(1, Relaxed);
        COLD.alloc_bytes.fetch_add(layout.size() as u64, Relaxed);
    }
    p
}

#[cold]
#[inline(never)]
fn cold_dealloc(ptr: *mut u8, layout: Layout, count: bool) {
    if count {
        COLD.frees.fetch_add(1, Relaxed);
        COLD.freed_bytes.fetch_add(layout.size() as u64, Relaxed);
    }
    // SAFETY: forwarded from `dealloc`'s caller: `ptr` came from
    // jemalloc (every path allocates there) with `layout`.
    unsafe { Jemalloc.dealloc(ptr, layout) }
}

/// The countdown ran out: "sample" (nothing to record here) and reload.
#[cold]
#[inline(never)]
fn countdown_out(shard: &Shard) {
    shard.countdown.store(INTERVAL, Relaxed);
}

impl<const PARTS: u32> Floor<PARTS> {
    #[inline(always)]
    fn has(part: u32) -> bool {
        PARTS & part != 0
    }

    #[inline(always)]
    fn alloc_impl(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let inner = |l: Layout| {
            // SAFETY: forwarded from `alloc`'s caller.
            unsafe {
                if zeroed {
                    Jemalloc.alloc_zeroed(l)
                } else {
                    Jemalloc.alloc(l)
                }
            }
        };
        if !Self::has(WORD) {
            return inner(layout);
        }
        let Some((w, shard)) = fast() else {
            return cold_alloc(layout, zeroed, Self::has(COUNTS));
        };
        let size = layout.size() as u64;
        if Self::has(BUDGET)
            && shard.alloc_bytes.load(Relaxed).wrapping_add(size) > shard.alloc_limit.load(Relaxed)
        {
            return cold_alloc(layout, zeroed, Self::has(COUNTS));
        }
        if Self::has(GUARD) {
            CURRENT.set(w | GUARD_BIT);
        }
        let p = inner(layout);
        if Self::has(GUARD) {
            CURRENT.set(w);
        }
        if !p.is_null() {
            if Self::has(COUNTS) {
                add(&shard.allocs, 1);
                add(&shard.alloc_bytes, size);
            }
            if Self::has(COUNTDOWN) {
                let left = shard.countdown.load(Relaxed).wrapping_sub(size as i64);
                shard.countdown.store(left, Relaxed);
                if left < 0 {
                    countdown_out(shard);
                }
            }
        }
        p
    }

    /// `dealloc`'s body (inlined where called).
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and `layout`.
    #[inline(always)]
    unsafe fn dealloc_body(ptr: *mut u8, layout: Layout) {
        if Self::has(WORD) {
            let Some((_, shard)) = fast() else {
                return cold_dealloc(ptr, layout, Self::has(COUNTS));
            };
            if Self::has(FILTER) {
                let i = ((ptr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as usize;
                if FILTER_BYTES[i].load(Relaxed) != 0 {
                    return cold_dealloc(ptr, layout, Self::has(COUNTS));
                }
            }
            let freed = shard
                .freed_bytes
                .load(Relaxed)
                .wrapping_add(layout.size() as u64);
            if Self::has(BUDGET) && freed > shard.free_limit.load(Relaxed) {
                return cold_dealloc(ptr, layout, Self::has(COUNTS));
            }
            if Self::has(COUNTS) {
                shard.freed_bytes.store(freed, Relaxed);
                add(&shard.frees, 1);
            }
        }
        // SAFETY: forwarded from this function's own contract.
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    /// `dealloc_body` out of line for blocks aligned to `ALIGN`.
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and `size` bytes aligned to `ALIGN`.
    #[inline(never)]
    unsafe fn dealloc_aligned<const ALIGN: usize>(ptr: *mut u8, size: usize) {
        // SAFETY: the caller's layout had this size and alignment.
        let layout = unsafe { Layout::from_size_align_unchecked(size, ALIGN) };
        // SAFETY: forwarded from this function's own contract.
        unsafe { Self::dealloc_body(ptr, layout) }
    }

    /// `dealloc_body` out of line for any alignment.
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and `layout`.
    #[inline(never)]
    unsafe fn dealloc_any(ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from this function's own contract.
        unsafe { Self::dealloc_body(ptr, layout) }
    }

    const DEALLOC_ALIGNED: [unsafe fn(*mut u8, usize); 5] = [
        Self::dealloc_aligned::<1>,
        Self::dealloc_aligned::<2>,
        Self::dealloc_aligned::<4>,
        Self::dealloc_aligned::<8>,
        Self::dealloc_aligned::<16>,
    ];
}

// SAFETY: every method forwards to jemalloc with the caller's arguments
// and returns what jemalloc returned; the bookkeeping never touches the
// blocks.
unsafe impl<const PARTS: u32> GlobalAlloc for Floor<PARTS> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_impl(layout, false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.alloc_impl(layout, true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !Self::has(OUT_OF_LINE) {
            // SAFETY: the caller upholds `dealloc`'s contract.
            return unsafe { Self::dealloc_body(ptr, layout) };
        }
        let align = layout.align();
        match Self::DEALLOC_ALIGNED.get(align.trailing_zeros() as usize) {
            // SAFETY: the caller upholds `dealloc`'s contract; the entry
            // at `align.trailing_zeros()` is the copy for `align`.
            Some(f) => unsafe { f(ptr, layout.size()) },
            // SAFETY: the caller upholds `dealloc`'s contract.
            None => unsafe { Self::dealloc_any(ptr, layout) },
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The parts as heapwatch's fast `realloc` has them.
        let fast_path = if Self::has(WORD) { fast() } else { None };
        let Some((w, shard)) = fast_path else {
            // SAFETY: forwarded from `realloc`'s caller.
            let p = unsafe { Jemalloc.realloc(ptr, layout, new_size) };
            if Self::has(COUNTS) && !p.is_null() {
                COLD.reallocs.fetch_add(1, Relaxed);
                COLD.alloc_bytes.fetch_add(new_size as u64, Relaxed);
                COLD.freed_bytes.fetch_add(layout.size() as u64, Relaxed);
            }
            return p;
        };
        if Self::has(GUARD) {
            CURRENT.set(w | GUARD_BIT);
        }
        // SAFETY: forwarded from `realloc`'s caller.
        let p = unsafe { Jemalloc.realloc(ptr, layout, new_size) };
        if Self::has(GUARD) {
            CURRENT.set(w);
        }
        if !p.is_null() && Self::has(COUNTS) {
            add(&shard.reallocs, 1);
            add(&shard.alloc_bytes, new_size as u64);
            add(&shard.freed_bytes, layout.size() as u64);
        }
        p
    }
}
