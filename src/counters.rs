//! Process-wide totals without a contended atomic: per-thread leased shards.
//!
//! There are [`SHARDS`] cache-line-aligned shards of counters in a static
//! array. A thread leases one the first time it allocates and keeps it until
//! its thread-locals are torn down; while leased, only that thread writes the
//! shard, so the hot path updates it with a plain relaxed load and store (no
//! `lock`-prefixed instruction, no cache line shared with another writer).
//! Readers sum every shard ever leased, so a thread that exits loses
//! nothing: its counts stay in the shard, and the next thread to lease the
//! shard adds on top. A thread leases the lowest free shard, so the shards
//! ever leased are about as many as the most threads alive at once, and a
//! reading costs that many shards, not `SHARDS`.
//!
//! Threads beyond [`SHARDS`] alive at once, and allocations made after a
//! thread's lease was returned (late thread-local destructors), use one
//! shared fallback shard updated with atomic read-modify-write: still exact,
//! only slower.
//!
//! Counts are wrapping `u64`. The frees of blocks allocated on another thread
//! are counted by the freeing thread, so one shard's net can be negative; only
//! the sum over shards means anything.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::*};

use serde::{Deserialize, Serialize};

/// Number of exclusively leased shards (threads alive at once that each get
/// their own). Memory: `SHARDS * 256` bytes, static (zero pages until
/// used). Readers sum only the shards ever leased: threads lease the
/// lowest free one, so a program that never has more than `k` threads
/// alive at once has its sums read over `k` shards.
pub const SHARDS: usize = 1024;

/// One thread's counters. The first cache line holds what every allocation
/// and free touches; the budget's bookkeeping beyond its two limits (see
/// `budget`, "the hook's side") is in the second.
#[repr(C, align(128))]
pub(crate) struct Shard {
    /// Bytes left before the next sampled allocation.
    pub(crate) countdown: AtomicI64,
    pub(crate) allocs: AtomicU64,
    pub(crate) alloc_bytes: AtomicU64,
    pub(crate) frees: AtomicU64,
    pub(crate) freed_bytes: AtomicU64,
    pub(crate) reallocs: AtomicU64,
    /// The highest `alloc_bytes` the budget credit lets the fast path reach.
    pub(crate) alloc_limit: AtomicU64,
    /// The highest `freed_bytes` the fast path may reach before the credit
    /// freed must be looked at (and perhaps handed back to the pool).
    pub(crate) free_limit: AtomicU64,
    // Second line: the budget's credit at its last sync, sampling state,
    // and heapwatch's own (and the inner allocator's re-entrant)
    // allocations.
    /// Budget credit (bytes reserved from the global pool and not yet used)
    /// when `alloc_bytes` was `sync_alloc` and `freed_bytes` `sync_freed`.
    pub(crate) credit: AtomicI64,
    pub(crate) sync_alloc: AtomicU64,
    pub(crate) sync_freed: AtomicU64,
    /// xorshift state of this shard's sampler (0 until seeded).
    pub(crate) rng: AtomicU64,
    pub(crate) ovh_allocs: AtomicU64,
    pub(crate) ovh_alloc_bytes: AtomicU64,
    pub(crate) ovh_frees: AtomicU64,
    pub(crate) ovh_freed_bytes: AtomicU64,
    /// The sampler generation `rng` was seeded for.
    pub(crate) rng_generation: AtomicU64,
    leased: AtomicBool,
    /// True only for the shared fallback shard (false is zero, so that the
    /// static array of leased shards is zero bytes in the binary).
    shared: bool,
}

impl Shard {
    pub(crate) const fn new(exclusive: bool) -> Shard {
        Shard {
            countdown: AtomicI64::new(0),
            allocs: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            alloc_limit: AtomicU64::new(0),
            free_limit: AtomicU64::new(0),
            credit: AtomicI64::new(0),
            sync_alloc: AtomicU64::new(0),
            sync_freed: AtomicU64::new(0),
            rng: AtomicU64::new(0),
            ovh_allocs: AtomicU64::new(0),
            ovh_alloc_bytes: AtomicU64::new(0),
            ovh_frees: AtomicU64::new(0),
            ovh_freed_bytes: AtomicU64::new(0),
            rng_generation: AtomicU64::new(0),
            leased: AtomicBool::new(false),
            shared: !exclusive,
        }
    }

    /// Adds `v` to a counter of this shard: a plain load and store when the
    /// shard is leased by the calling thread, an atomic add otherwise.
    #[inline(always)]
    pub(crate) fn add(&self, c: &AtomicU64, v: u64) {
        if !self.shared {
            c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
        } else {
            c.fetch_add(v, Relaxed);
        }
    }

    /// Adds `v` to a counter of a shard the calling thread has leased
    /// (`counters::fast`): a plain load and store, no atomic RMW.
    #[inline(always)]
    pub(crate) fn add_owned(&self, c: &AtomicU64, v: u64) {
        debug_assert!(!self.shared);
        c.store(c.load(Relaxed).wrapping_add(v), Relaxed);
    }

    /// Whether only the calling thread writes this shard.
    #[inline(always)]
    pub(crate) fn is_exclusive(&self) -> bool {
        !self.shared
    }
}

static SHARD_ARRAY: [Shard; SHARDS] = [const { Shard::new(true) }; SHARDS];
static SHARED: Shard = Shard::new(false);

/// One more than the highest index ever leased: the shards beyond it have
/// never been written, and readers leave them out. Raised before a new
/// holder first counts in its shard, never lowered.
static LEASED_HIGH: AtomicUsize = AtomicUsize::new(0);
/// Threads that found every shard leased and fell back to the shared one.
static LEASE_OVERFLOWS: AtomicU64 = AtomicU64::new(0);

/// Bit 0 of a thread's word ([`word`]): the thread is inside heapwatch (the
/// reentrancy guard, see `guard`). Every write of the word keeps it.
pub(crate) const GUARD_BIT: usize = 1;
/// Bit 3 of a thread's word, set with [`GUARD_BIT`] only: inside heapwatch's
/// own work (symbolizing, snapshots, the server), as opposed to inside the
/// inner allocator called from the hook (see `guard`). Every write of the
/// word keeps it.
pub(crate) const OWN_BIT: usize = 8;
/// The guard's two bits.
const FLAG_BITS: usize = GUARD_BIT | OWN_BIT;
/// The word's shard part before the thread's first allocation.
const NO_SHARD: usize = 2;
/// The word's shard part for a thread that uses the shared shard (every
/// shard was leased, or its thread-locals are being torn down).
const SHARED_SHARD: usize = 4;
/// Bits that are zero in a shard's address (shards are 128-byte aligned)
/// and hold the guard's bits and the two markers in the word.
const TAG_BITS: usize = 127;
const _: () = assert!(std::mem::align_of::<Shard>() > TAG_BITS);
// The size `SHARDS` documents (and `callsites::static_table_bytes` counts).
const _: () = assert!(std::mem::size_of::<Shard>() == 256);

thread_local! {
    /// This thread's word: its shard (`NO_SHARD`, `SHARED_SHARD`, or the
    /// address of its exclusively leased shard in `SHARD_ARRAY`) with the
    /// reentrancy guard in bit 0. A word with no tag bit set is the hook's
    /// fast path (a shard of its own, not inside heapwatch): one load and
    /// one test. No destructor.
    static CURRENT: Cell<usize> = const { Cell::new(NO_SHARD) };
    /// Returns the lease when the thread's thread-locals are torn down.
    static LEASE: Lease = const { Lease(Cell::new(ptr::null())) };
}

/// The calling thread's word (see `CURRENT`). A thread whose thread-locals
/// cannot be reached reads as on the shared shard, inside heapwatch.
#[inline(always)]
pub(crate) fn word() -> usize {
    CURRENT
        .try_with(Cell::get)
        .unwrap_or(SHARED_SHARD | FLAG_BITS)
}

/// Sets the calling thread's word (see `CURRENT`).
#[inline(always)]
pub(crate) fn set_word(w: usize) {
    let _ = CURRENT.try_with(|c| c.set(w));
}

/// Sets the shard part of the calling thread's word, keeping its guard's
/// bits.
fn set_shard_part(part: usize) -> bool {
    CURRENT
        .try_with(|c| c.set(part | (c.get() & FLAG_BITS)))
        .is_ok()
}

struct Lease(Cell<*const Shard>);

impl Drop for Lease {
    fn drop(&mut self) {
        let p = self.0.get();
        if p.is_null() {
            return;
        }
        // Whatever this thread allocates from now on goes to the shared shard.
        set_shard_part(SHARED_SHARD);
        // SAFETY: `p` was set by `lease_slow` to an element of the static
        // `SHARD_ARRAY`, which lives for the whole program.
        let shard = unsafe { &*p };
        crate::budget::return_all_credit(shard);
        shard.leased.store(false, Release);
    }
}

/// The hook's fast path: the calling thread's exclusively leased shard, if
/// it has one and is not inside heapwatch (one thread-local load, one
/// test). `None` before the thread's first allocation, for threads on the
/// shared shard, and under the reentrancy guard. Never allocates, never
/// panics.
#[inline(always)]
pub(crate) fn fast() -> Option<&'static Shard> {
    leased(word())
}

/// The calling thread's exclusively leased shard, if it has one, whether
/// or not it is inside heapwatch.
pub(crate) fn own() -> Option<&'static Shard> {
    leased(word() & !FLAG_BITS)
}

/// The shard a word names, if the word has no tag bit set.
#[inline(always)]
fn leased(w: usize) -> Option<&'static Shard> {
    if w & TAG_BITS == 0 {
        // SAFETY: a word with no tag bit set is the address of an element
        // of the static `SHARD_ARRAY`: the markers and the guard bit are
        // all tag bits, and only `lease_slow` stores an address (shards are
        // 128-byte aligned, so an address has no tag bit).
        Some(unsafe { &*(w as *const Shard) })
    } else {
        None
    }
}

/// The calling thread's shard, leasing one on first use. Never allocates
/// through the global allocator, never panics.
#[inline]
pub(crate) fn current() -> &'static Shard {
    match word() & !FLAG_BITS {
        NO_SHARD => lease_slow(),
        SHARED_SHARD => &SHARED,
        // SAFETY: as in `leased`: with the guard's bits cleared, a word other
        // than the two markers is a shard's address.
        p => unsafe { &*(p as *const Shard) },
    }
}

#[cold]
#[inline(never)]
fn lease_slow() -> &'static Shard {
    // The lowest free shard, so that readers, who sum the shards up to the
    // highest ever leased, read as few as the program has threads at once.
    for (i, shard) in SHARD_ARRAY.iter().enumerate() {
        if shard.leased.load(Relaxed) {
            continue;
        }
        if shard
            .leased
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
        {
            // Before the shard's first count, so that a reader that
            // synchronizes with this thread after it (a join, a lock, a
            // channel) sees the mark (`fetch_max` always writes) and sums
            // the shard. A reader that does not may leave the shard out: as
            // if it had read before this thread's first allocation.
            LEASED_HIGH.fetch_max(i + 1, Release);
            // A new owner draws its own countdown (the previous owner's
            // may be from another sampling mode).
            crate::sampling::start_lease(shard);
            crate::budget::start_lease(shard);
            // Publish the shard before registering the lease: if registering
            // the destructor allocates, that nested allocation finds the
            // shard already set and does not come back here.
            if !set_shard_part(shard as *const Shard as usize) {
                shard.leased.store(false, Release);
                return &SHARED;
            }
            // Touching `LEASE` registers its destructor. During thread-local
            // teardown it is no longer reachable: hand the shard back and use
            // the shared one for the rest of the thread.
            if LEASE.try_with(|l| l.0.set(shard)).is_err() {
                set_shard_part(SHARED_SHARD);
                shard.leased.store(false, Release);
                return &SHARED;
            }
            return shard;
        }
    }
    LEASE_OVERFLOWS.fetch_add(1, Relaxed);
    set_shard_part(SHARED_SHARD);
    &SHARED
}

/// How many of the leased shards have ever been leased (the lowest
/// indices): the shards readers sum.
pub(crate) fn leased_high() -> usize {
    LEASED_HIGH.load(Acquire).min(SHARDS)
}

/// A shard's position: its index in the leased array, or `SHARDS` for the
/// shared fallback shard. Stable across runs, unlike its address.
pub(crate) fn index_of(shard: &Shard) -> usize {
    let base = SHARD_ARRAY.as_ptr() as usize;
    let offset = (shard as *const Shard as usize).wrapping_sub(base);
    if offset < SHARDS * std::mem::size_of::<Shard>() {
        offset / std::mem::size_of::<Shard>()
    } else {
        SHARDS
    }
}

/// Bytes of the shards ever leased and the shared one (the others are zero
/// pages no thread has written).
pub(crate) fn shard_bytes() -> usize {
    (leased_high() + 1) * std::mem::size_of::<Shard>()
}

/// Every shard ever leased, and the shared one. (The others have never
/// been written.)
pub(crate) fn all_shards() -> impl Iterator<Item = &'static Shard> {
    SHARD_ARRAY
        .iter()
        .take(leased_high())
        .chain(std::iter::once(&SHARED))
}

/// Raw sums over all shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sums {
    pub(crate) allocs: u64,
    pub(crate) alloc_bytes: u64,
    pub(crate) frees: u64,
    pub(crate) freed_bytes: u64,
    pub(crate) reallocs: u64,
    pub(crate) ovh_allocs: u64,
    pub(crate) ovh_alloc_bytes: u64,
    pub(crate) ovh_frees: u64,
    pub(crate) ovh_freed_bytes: u64,
}

impl Sums {
    pub(crate) fn of(shard: &Shard) -> Sums {
        Sums {
            allocs: shard.allocs.load(Relaxed),
            alloc_bytes: shard.alloc_bytes.load(Relaxed),
            frees: shard.frees.load(Relaxed),
            freed_bytes: shard.freed_bytes.load(Relaxed),
            reallocs: shard.reallocs.load(Relaxed),
            ovh_allocs: shard.ovh_allocs.load(Relaxed),
            ovh_alloc_bytes: shard.ovh_alloc_bytes.load(Relaxed),
            ovh_frees: shard.ovh_frees.load(Relaxed),
            ovh_freed_bytes: shard.ovh_freed_bytes.load(Relaxed),
        }
    }

    fn wrapping_add(self, o: Sums) -> Sums {
        Sums {
            allocs: self.allocs.wrapping_add(o.allocs),
            alloc_bytes: self.alloc_bytes.wrapping_add(o.alloc_bytes),
            frees: self.frees.wrapping_add(o.frees),
            freed_bytes: self.freed_bytes.wrapping_add(o.freed_bytes),
            reallocs: self.reallocs.wrapping_add(o.reallocs),
            ovh_allocs: self.ovh_allocs.wrapping_add(o.ovh_allocs),
            ovh_alloc_bytes: self.ovh_alloc_bytes.wrapping_add(o.ovh_alloc_bytes),
            ovh_frees: self.ovh_frees.wrapping_add(o.ovh_frees),
            ovh_freed_bytes: self.ovh_freed_bytes.wrapping_add(o.ovh_freed_bytes),
        }
    }

    /// Component-wise `self - base`, for deltas of monotonic counters.
    pub(crate) fn since(self, base: Sums) -> Sums {
        Sums {
            allocs: self.allocs.wrapping_sub(base.allocs),
            alloc_bytes: self.alloc_bytes.wrapping_sub(base.alloc_bytes),
            frees: self.frees.wrapping_sub(base.frees),
            freed_bytes: self.freed_bytes.wrapping_sub(base.freed_bytes),
            reallocs: self.reallocs.wrapping_sub(base.reallocs),
            ovh_allocs: self.ovh_allocs.wrapping_sub(base.ovh_allocs),
            ovh_alloc_bytes: self.ovh_alloc_bytes.wrapping_sub(base.ovh_alloc_bytes),
            ovh_frees: self.ovh_frees.wrapping_sub(base.ovh_frees),
            ovh_freed_bytes: self.ovh_freed_bytes.wrapping_sub(base.ovh_freed_bytes),
        }
    }

    pub(crate) fn total() -> Sums {
        all_shards().fold(Sums::default(), |acc, s| acc.wrapping_add(Sums::of(s)))
    }
}

/// A signed difference of wrapping counters, clamped at zero: the sum of a
/// live figure can only read below zero while a free on one thread has been
/// counted and the matching allocation on another not yet seen.
pub(crate) fn net(added: u64, removed: u64) -> u64 {
    let d = added.wrapping_sub(removed) as i64;
    d.max(0) as u64
}

/// Threads that found every shard leased (they share one, still exact).
pub(crate) fn lease_overflows() -> u64 {
    LEASE_OVERFLOWS.load(Relaxed)
}

/// Process-wide totals, from [`stats()`](crate::stats).
///
/// The program's own blocks and heapwatch's own blocks are counted apart:
/// `allocations`, `frees`, `reallocs`, `allocated_bytes`, `live_bytes` and
/// `live_blocks` describe the program; `overhead_*` describe what was
/// allocated while heapwatch's reentrancy guard was held (heapwatch's own
/// work, and allocations an inner allocator such as `dhat::Alloc` makes
/// through the global allocator while serving one of ours).
///
/// # Exactness
///
/// - At quiescence (every other thread joined or idle since a
///   synchronisation with the reader) every counter is exact.
/// - A reading taken while other threads allocate sums each shard's
///   counters one after another: each counter is a value it really had at
///   some moment of the reading, but counters are not read at one instant,
///   so `live_bytes` may be off by the bytes that other threads allocated or
///   freed during the reading (it is clamped at zero, never negative).
/// - `peak_bytes` is the highest value the global reservation reached: the
///   program's live bytes plus the credit threads hold (see
///   [`Budget`](crate::Budget)). It is never below the true peak and at most
///   `threads holding credit × 2 × 64 KiB` above it (128 KiB for a
///   single-threaded program). An allocation the inner allocator fails (a
///   `try_reserve` of more than the machine has) never counts: a
///   reservation enters the peak only once its allocation succeeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes in blocks the program holds now.
    pub live_bytes: u64,
    /// Blocks the program holds now.
    pub live_blocks: u64,
    /// Highest reservation seen (see the type's docs for its bound).
    pub peak_bytes: u64,
    /// Successful `alloc` and `alloc_zeroed` calls.
    pub allocations: u64,
    /// `dealloc` calls.
    pub frees: u64,
    /// Successful `realloc` calls (not counted in `allocations`).
    pub reallocs: u64,
    /// Cumulative bytes handed out: every allocation's size, plus the new
    /// size of every reallocation (a realloc frees the old size and
    /// allocates the new one, as dhat counts it).
    pub allocated_bytes: u64,
    /// Cumulative bytes returned: every free's size plus every
    /// reallocation's old size. `live_bytes = allocated_bytes - freed_bytes`.
    pub freed_bytes: u64,
    /// The budget in bytes, `None` when unlimited.
    pub budget_bytes: Option<u64>,
    /// Allocations refused because they would have taken the process over
    /// the budget (policy `Refuse`).
    pub budget_denials: u64,
    /// Allocations let through over the budget: every one under policy
    /// `Warn`; under `Refuse`, those that are never refused (see
    /// [`Policy::Refuse`](crate::Policy::Refuse)).
    pub budget_overages: u64,
    /// Bytes heapwatch (and a re-entrant inner allocator) holds on the heap
    /// now, plus its static tables (those of its counter shards only for
    /// the shards threads have used): never zero, even before the tracker's
    /// first allocation.
    pub overhead_bytes: u64,
    /// Blocks heapwatch (and a re-entrant inner allocator) holds now.
    pub overhead_blocks: u64,
}

impl Stats {
    pub(crate) fn from_sums(s: Sums) -> Stats {
        let budget = crate::budget::status();
        Stats {
            live_bytes: net(s.alloc_bytes, s.freed_bytes),
            live_blocks: net(s.allocs, s.frees),
            peak_bytes: budget.peak_bytes,
            allocations: s.allocs,
            frees: s.frees,
            reallocs: s.reallocs,
            allocated_bytes: s.alloc_bytes,
            freed_bytes: s.freed_bytes,
            budget_bytes: budget.budget.bytes(),
            budget_denials: budget.denials,
            budget_overages: budget.overages,
            overhead_bytes: net(s.ovh_alloc_bytes, s.ovh_freed_bytes)
                + crate::callsites::static_table_bytes() as u64,
            overhead_blocks: net(s.ovh_allocs, s.ovh_frees),
        }
    }
}

/// Reads the process-wide totals: a sum over every thread's shard. Cheap
/// (nine relaxed loads per shard ever leased: about one shard per thread in
/// the most threads alive at once so far), allocation-free, callable from
/// any thread at any time.
///
/// Until a [`Tracker`](crate::Tracker) serving as the global allocator has
/// seen its first allocation (see [`installed`](crate::installed)), every
/// count is zero and `budget_bytes` is `None` (unless
/// [`set_budget`](crate::set_budget) was called), but `overhead_bytes` is
/// not: it always counts heapwatch's static tables (a callsite filter,
/// lock stripes, the shared counter shard and, on x86-64 Linux, the
/// unwinder's rule cache: about 132 KiB there).
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() {
///     let before = heapwatch::stats();
///     let v = vec![0u8; 4096];
///     let after = heapwatch::stats();
///     assert_eq!(after.allocations, before.allocations + 1);
///     assert_eq!(after.live_bytes, before.live_bytes + 4096);
///     drop(v);
/// }
/// ```
pub fn stats() -> Stats {
    Stats::from_sums(Sums::total())
}
