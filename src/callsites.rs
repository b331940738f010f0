//! The callsite table and the table of live sampled blocks.
//!
//! Both have a fixed capacity, chosen in the tracker's builder and mapped
//! (anonymous `mmap`, never the heap) at the first sampled allocation:
//!
//! - **Callsites**: open addressing, insert-only, lock-free. A slot is
//!   claimed with a compare-and-swap on its hash, filled, then published
//!   with a release store. It holds the raw return addresses and four
//!   counters (weighted allocations, bytes, frees, freed bytes). Capacity
//!   [`DEFAULT_MAX_CALLSITES`]; filled to 7/8 at most.
//! - **Live sampled blocks**: address → (callsite, size, weight), in 64
//!   stripes, each a small open-addressing table behind a spin lock that is
//!   held only for a few loads and stores and never across an allocation.
//!   Capacity [`DEFAULT_MAX_LIVE_SAMPLES`] (filled to 7/8 at most), plus a
//!   near region of 128 slots (one page) per stripe that takes blocks first,
//!   so that a program with few sampled blocks live touches few pages.
//! - **A counting filter** of 65,536 bytes over block addresses: a free whose
//!   filter byte is zero was certainly not sampled and costs one load.
//! - **Pending figures** (`pending`): each thread adds to its callsites'
//!   counters through a small cache of its own, with plain stores, and
//!   moves figures to the shared counters only on eviction; readers add the
//!   caches in. Static: 32 entries for each of the 1,024 counter shards
//!   (1.4 MiB of zero pages until used; readers read those of the shards
//!   ever leased).
//!
//! Overflow is never silent: a sample whose stack finds no free callsite
//! slot is counted in the *unattributed* row (and its free subtracted there
//! again); a sample that finds no free live-block slot is counted in
//! [`Unattributed`] as `untracked`, since its free cannot be matched, and
//! left out of its callsite's live figures (which would otherwise hold it
//! live forever).
//!
//! # Fork
//!
//! When the tables are first mapped, or the symbolizer is first used, a
//! `pthread_atfork` handler is registered: `prepare` takes the symbolizer's
//! locks (`symbolize::before_fork`), then the 64 stripe locks in order;
//! `parent` and `child` release them. A thread that holds one of them while
//! another thread forks therefore finishes first, and the child never
//! starts with a lock held by a thread it does not have (which would hang
//! it at its next sampled free, or its first `snapshot()`). A stripe is
//! held for a few stores; the symbolizer's `objects` lock for as long as a
//! snapshot takes to read one object's debug information, which grows with
//! the binary (a snapshot after one new callsite takes 17-19 ms in the
//! release demo, BENCHMARKS.md) and recurs whenever a snapshot meets
//! addresses not seen before: a `fork` can be delayed by that much. The
//! symbolizer's locks come first because a thread holding one of them can
//! free a block and so take a stripe lock, never the other way round. The
//! handler is registered after the inner allocator's own (jemalloc's is
//! registered when it starts), so `prepare` runs before that handler
//! takes the allocator's locks, while a thread holding the symbolizer's
//! lock can still allocate.
//!
//! A child never lists the loaded objects again (`dl_iterate_phdr` takes
//! the loader's lock, which another thread of the parent, heapwatch's own
//! CFI unwinder included, may have held at the fork): it symbolizes with
//! the list it inherited, made by `prepare` if no snapshot had made it.
//!
//! Not covered: a `fork` from a signal handler that interrupted the forking
//! thread while it held one of these locks deadlocks in `prepare` (as it
//! would in glibc's `malloc` lock); and on targets other than 64-bit Linux
//! symbolization takes the `backtrace` crate's lock, which the handler
//! does not take. A callsite slot being written at the fork is
//! waited for a bounded time by the child, then the sample goes to the
//! unattributed row; tables being mapped at the fork stay unmapped in the
//! child (its samples count as `dropped_no_tables`).
//!
//! What the child's figures mean: the child inherits the parent's counts at
//! the fork. Totals, callsites (with the parent's live sampled blocks, which
//! the child also has) and the budget reservation continue from there.
//! Threads other than the forking one do not exist in the child, but their
//! shards' counts remain in the sums (their leases and unspent budget credit
//! are never returned in the child, which only makes the reservation read
//! high by at most `2 × CHUNK_BYTES` per such thread).

use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*,
};

use serde::{Deserialize, Serialize};

use crate::capture::{self, MAX_FRAMES};
use crate::counters::Shard;
use crate::sampling::{weighted_bytes, weighted_count};

mod pending;
use pending::Pair;

/// Default capacity of the callsite table.
pub const DEFAULT_MAX_CALLSITES: usize = 16 * 1024;
/// Default capacity of the live sampled block table.
pub const DEFAULT_MAX_LIVE_SAMPLES: usize = 256 * 1024;

const STRIPES: usize = 64;
/// Live-block slots of a stripe's near region: one 4 KiB page.
const NEAR_PER_STRIPE: usize = 128;
/// Live-block slots of all near regions, ahead of the configured capacity.
const NEAR_SLOTS: usize = STRIPES * NEAR_PER_STRIPE;
const _: () = assert!(NEAR_PER_STRIPE.is_power_of_two());
const _: () = assert!(STRIPES.is_power_of_two() && FILTER_LEN.is_multiple_of(STRIPES));
const FILTER_LEN: usize = 1 << 16;
const BUSY: u64 = 1 << 63;
/// Callsite index of the unattributed row.
const UNATTRIBUTED: u32 = u32::MAX;

/// One callsite: raw frames and weighted counters.
#[repr(C)]
struct Site {
    hash: AtomicU64,
    len: AtomicU32,
    /// 1 once a record with a weight other than exact (a sample taken
    /// while sampling by bytes) was counted here: its figures are
    /// estimates from then on, whatever the mode is now.
    estimated: AtomicU32,
    frames: [AtomicUsize; MAX_FRAMES],
    counters: SiteCounters,
}

#[repr(C)]
#[derive(Default)]
struct SiteCounters {
    allocs_w: AtomicU64,
    alloc_bytes: AtomicU64,
    frees_w: AtomicU64,
    freed_bytes: AtomicU64,
    /// Of the allocations counted here, those whose blocks found no room in
    /// the live-block table (or no table): their frees can never be
    /// matched, so they are left out of the live figures rather than
    /// staying live forever. Added directly (overflow only), never through
    /// the pending caches.
    untracked_w: AtomicU64,
    untracked_bytes: AtomicU64,
}

impl SiteCounters {
    const fn new() -> SiteCounters {
        SiteCounters {
            allocs_w: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
            frees_w: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            untracked_w: AtomicU64::new(0),
            untracked_bytes: AtomicU64::new(0),
        }
    }

    /// Adds `w` and `bytes` to one pair of counters.
    fn add(&self, pair: Pair, w: u64, bytes: u64) {
        let (a, b) = match pair {
            Pair::Alloc => (&self.allocs_w, &self.alloc_bytes),
            Pair::Free => (&self.frees_w, &self.freed_bytes),
        };
        if w != 0 {
            a.fetch_add(w, Relaxed);
        }
        if bytes != 0 {
            b.fetch_add(bytes, Relaxed);
        }
    }

    /// `[allocs_w, alloc_bytes, frees_w, freed_bytes]`.
    fn load(&self) -> [u64; 4] {
        [
            self.allocs_w.load(Relaxed),
            self.alloc_bytes.load(Relaxed),
            self.frees_w.load(Relaxed),
            self.freed_bytes.load(Relaxed),
        ]
    }

    /// `[untracked_w, untracked_bytes]`.
    fn load_untracked(&self) -> [u64; 2] {
        [
            self.untracked_w.load(Relaxed),
            self.untracked_bytes.load(Relaxed),
        ]
    }

    fn add_untracked(&self, w: u64, bytes: u64) {
        self.untracked_w.fetch_add(w, Relaxed);
        self.untracked_bytes.fetch_add(bytes, Relaxed);
    }

    fn read(&self) -> SiteFigures {
        SiteFigures::from_raw(self.load(), self.load_untracked())
    }
}

impl SiteFigures {
    /// Figures from raw weighted counters
    /// `[allocs_w, alloc_bytes, frees_w, freed_bytes]` and
    /// `[untracked_w, untracked_bytes]` (left out of the live figures).
    fn from_raw(
        [allocs_w, alloc_bytes, frees_w, freed_bytes]: [u64; 4],
        [untracked_w, untracked_bytes]: [u64; 2],
    ) -> SiteFigures {
        SiteFigures {
            allocations: weighted_count(allocs_w),
            allocated_bytes: alloc_bytes,
            frees: weighted_count(frees_w),
            freed_bytes,
            live_blocks: weighted_count(
                allocs_w.saturating_sub(frees_w).saturating_sub(untracked_w),
            ),
            live_bytes: alloc_bytes
                .saturating_sub(freed_bytes)
                .saturating_sub(untracked_bytes),
        }
    }
}

/// A callsite's figures (estimates when sampled by bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SiteFigures {
    pub(crate) allocations: u64,
    pub(crate) allocated_bytes: u64,
    pub(crate) frees: u64,
    pub(crate) freed_bytes: u64,
    pub(crate) live_blocks: u64,
    pub(crate) live_bytes: u64,
}

impl SiteFigures {
    /// Adds another slot's figures (two slots whose stacks symbolize the
    /// same).
    pub(crate) fn add(&mut self, o: &SiteFigures) {
        self.allocations += o.allocations;
        self.allocated_bytes += o.allocated_bytes;
        self.frees += o.frees;
        self.freed_bytes += o.freed_bytes;
        self.live_blocks += o.live_blocks;
        self.live_bytes += o.live_bytes;
    }
}

/// One live sampled block.
#[repr(C)]
struct Slot {
    key: AtomicUsize,
    site: AtomicU32,
    /// Written (never read) by `insert` before it probes: see there.
    /// Fills what would be padding.
    touch: AtomicU32,
    size: AtomicU64,
    weight: AtomicU64,
}

/// A sampled block's record, taken out of the table when it is freed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    site: u32,
    size: u64,
    weight: u64,
}

/// The `site` of a record that marks a block of the inner allocator's own
/// rather than a sampled one (see [`record_inner_own`]).
const INNER_OWN: u32 = u32::MAX - 1;
const _: () = assert!(INNER_OWN != UNATTRIBUTED);

impl Record {
    /// Whether the block is one of the inner allocator's own (see
    /// [`record_inner_own`]), not a sampled block of the program's.
    pub(crate) fn is_inner_own(&self) -> bool {
        self.site == INNER_OWN
    }
}

/// Tracks a block the inner allocator made for itself through the global
/// allocator while serving the hook (dhat's tables): it is counted as
/// heapwatch's overhead when allocated, and its record makes its free count
/// as overhead too, whichever thread frees it and however (dropping a
/// `dhat::Profiler` frees dhat's tables on the program's thread, outside
/// the guard). With no room for the record, the block is counted in
/// `Unattributed::inner_blocks_untracked` and its free is counted by the
/// guard as before: as the program's if the program's thread makes it.
pub(crate) fn record_inner_own(ptr: usize, size: usize) {
    let rec = Record {
        site: INNER_OWN,
        size: size as u64,
        weight: 0,
    };
    if !(tables_ready() && insert(ptr, rec)) {
        INNER_UNTRACKED.fetch_add(1, Relaxed);
    }
}

#[repr(align(64))]
struct Stripe {
    locked: AtomicBool,
    /// Blocks in the stripe's far region.
    used: AtomicUsize,
    /// Blocks in the stripe's near region.
    near_used: AtomicUsize,
}

impl Stripe {
    const fn new() -> Stripe {
        Stripe {
            locked: AtomicBool::new(false),
            used: AtomicUsize::new(0),
            near_used: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> StripeGuard<'_> {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            spins += 1;
            if spins == 1 {
                CONTENDED.fetch_add(1, Relaxed);
            }
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        StripeGuard(self)
    }
}

struct StripeGuard<'a>(&'a Stripe);

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        self.0.locked.store(false, Release);
    }
}

static CONF_SITES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_CALLSITES);
static CONF_RECORDS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_LIVE_SAMPLES);

const TABLES_NONE: u8 = 0;
const TABLES_BUSY: u8 = 1;
const TABLES_READY: u8 = 2;
const TABLES_FAILED: u8 = 3;
static TABLES: AtomicU8 = AtomicU8::new(TABLES_NONE);
static SITES: AtomicPtr<Site> = AtomicPtr::new(std::ptr::null_mut());
static SITES_CAP: AtomicUsize = AtomicUsize::new(0);
static SITES_USED: AtomicUsize = AtomicUsize::new(0);
static RECORDS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static RECORDS_CAP: AtomicUsize = AtomicUsize::new(0);

static STRIPE_LOCKS: [Stripe; STRIPES] = [const { Stripe::new() }; STRIPES];
static FILTER: [AtomicU8; FILTER_LEN] = [const { AtomicU8::new(0) }; FILTER_LEN];
static UNATTRIBUTED_ROW: SiteCounters = SiteCounters::new();

static DROPPED_SITE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_LIVE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_NO_TABLES: AtomicU64 = AtomicU64::new(0);
/// Blocks of the inner allocator's own that found no room in the live-block
/// table (see [`record_inner_own`]).
static INNER_UNTRACKED: AtomicU64 = AtomicU64::new(0);
static UNTRACKED_ALLOCS_W: AtomicU64 = AtomicU64::new(0);
static UNTRACKED_BYTES: AtomicU64 = AtomicU64::new(0);
static CONTENDED: AtomicU64 = AtomicU64::new(0);

/// Sets the capacities; they take effect when the tables are mapped, at the
/// first sampled allocation.
pub(crate) fn configure(max_callsites: usize, max_live_samples: usize) {
    CONF_SITES.store(max_callsites.clamp(64, 1 << 24), Relaxed);
    CONF_RECORDS.store(max_live_samples.clamp(STRIPES * 16, 1 << 28), Relaxed);
}

fn map_zeroed(bytes: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; the result is checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Maps the tables on first use. False while another thread maps them, or
/// if mapping failed.
fn tables_ready() -> bool {
    match TABLES.load(Acquire) {
        TABLES_READY => return true,
        TABLES_NONE => {}
        _ => return false,
    }
    if TABLES
        .compare_exchange(TABLES_NONE, TABLES_BUSY, Acquire, Relaxed)
        .is_err()
    {
        return TABLES.load(Acquire) == TABLES_READY;
    }
    let sites_cap = CONF_SITES.load(Relaxed).next_power_of_two();
    let records_cap = CONF_RECORDS.load(Relaxed).next_power_of_two();
    let sites = map_zeroed(sites_cap * std::mem::size_of::<Site>());
    let records = map_zeroed((NEAR_SLOTS + records_cap) * std::mem::size_of::<Slot>());
    if sites.is_null() || records.is_null() {
        TABLES.store(TABLES_FAILED, Release);
        return false;
    }
    SITES.store(sites.cast(), Relaxed);
    SITES_CAP.store(sites_cap, Relaxed);
    RECORDS.store(records.cast(), Relaxed);
    RECORDS_CAP.store(NEAR_SLOTS + records_cap, Relaxed);
    register_atfork();
    TABLES.store(TABLES_READY, Release);
    true
}

/// Registers the fork handlers, once: by the thread that mapped the tables
/// (before that, no stripe lock is ever taken: `insert` and `take` return
/// early on empty tables), or by the symbolizer before it first takes one
/// of its locks, whichever comes first.
pub(crate) fn register_atfork() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    // A plain load first: the symbolizer calls this on every look-up.
    if REGISTERED.load(Relaxed) || REGISTERED.swap(true, Relaxed) {
        return;
    }
    // SAFETY: the three handlers are `extern "C" fn()`s that live for the
    // whole program and never unwind. `parent` and `child` touch only
    // static atomics (`STRIPE_LOCKS`, in the child the pending caches'
    // `READERS` and sequence numbers) and the symbolizer's locks, and never
    // allocate; `prepare` runs before the `fork`, as ordinary code of the
    // forking thread (see `symbolize::before_fork`). A failure (ENOMEM)
    // only leaves forks unprotected, as before this handler existed.
    let _ = unsafe {
        libc::pthread_atfork(
            Some(atfork_prepare),
            Some(atfork_release),
            Some(atfork_child),
        )
    };
}

/// Before `fork`: takes the symbolizer's locks, then every stripe lock, in
/// index order (the only order in which one thread ever holds more than
/// one). A stripe lock is held for a few stores and never across an
/// allocation, so this waits only for those.
extern "C" fn atfork_prepare() {
    crate::symbolize::before_fork();
    for stripe in &STRIPE_LOCKS {
        // Released by `atfork_release` in the parent and in the child.
        std::mem::forget(stripe.lock());
    }
}

/// After `fork`, in the parent and in the child: releases the locks taken
/// by `atfork_prepare` (in the child, by the forking thread, whose copy of
/// them is the child's only thread).
extern "C" fn atfork_release() {
    for stripe in &STRIPE_LOCKS {
        stripe.locked.store(false, Release);
    }
    crate::symbolize::after_fork();
}

/// After `fork`, in the child: releases the stripe locks, and clears what
/// threads that the child does not have left in the pending caches (see
/// `pending::after_fork_in_child`).
extern "C" fn atfork_child() {
    crate::symbolize::after_fork_in_child();
    atfork_release();
    pending::after_fork_in_child();
}

fn sites() -> &'static [Site] {
    if TABLES.load(Acquire) != TABLES_READY {
        return &[];
    }
    // SAFETY: once TABLES is READY (acquire), SITES points to a mapping of
    // SITES_CAP zero-initialised `Site`s (all-zero is a valid `Site`: only
    // atomics) that is never unmapped.
    unsafe { std::slice::from_raw_parts(SITES.load(Relaxed), SITES_CAP.load(Relaxed)) }
}

fn records() -> &'static [Slot] {
    if TABLES.load(Acquire) != TABLES_READY {
        return &[];
    }
    // SAFETY: as for `sites`: RECORDS_CAP zero-initialised `Slot`s, mapped
    // for the rest of the program.
    unsafe { std::slice::from_raw_parts(RECORDS.load(Relaxed), RECORDS_CAP.load(Relaxed)) }
}

#[inline(always)]
fn mix(x: u64) -> u64 {
    let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

#[inline(always)]
fn filter_index(ptr: usize) -> usize {
    filter_index_of_hash(mix(ptr as u64))
}

#[inline(always)]
fn filter_index_of_hash(h: u64) -> usize {
    (h >> 48) as usize & (FILTER_LEN - 1)
}

/// False if the block at `ptr` was certainly not sampled (one load).
#[inline(always)]
pub(crate) fn maybe_sampled(ptr: usize) -> bool {
    FILTER
        .get(filter_index(ptr))
        .is_some_and(|f| f.load(Relaxed) != 0)
}

// The filter's counters are written only under the lock of the stripe
// their blocks belong to: `place_of` takes the stripe from the low bits of
// the filter index, so every block counted in one filter slot is in one
// stripe. A plain load and store then suffice (no `lock`-prefixed
// read-modify-write); readers (`maybe_sampled`) still load atomically.

/// Counts a block into its filter slot (`Place::filter`). Caller holds the
/// block's stripe lock.
fn filter_add(index: usize) {
    if let Some(f) = FILTER.get(index) {
        let v = f.load(Relaxed);
        f.store(v.saturating_add(1), Relaxed);
    }
}

/// Uncounts a block from its filter slot (`Place::filter`). Caller holds
/// the block's stripe lock.
fn filter_remove(index: usize) {
    if let Some(f) = FILTER.get(index) {
        let v = f.load(Relaxed);
        // A saturated counter stays saturated: it no longer knows its count.
        if v != u8::MAX && v != 0 {
            f.store(v - 1, Relaxed);
        }
    }
}

/// Makes the first access to every page of `items` a write that changes no
/// value (a compare-and-swap of 0 for 0: x86 writes the destination back even
/// when the comparison fails).
///
/// Why: a static or freshly mapped table whose first access is a read maps
/// the shared zero page there, and the first write after it must replace
/// that page, which flushes the TLB of every CPU the process runs on: an
/// inter-processor interrupt, costly in a virtual machine. Default sampling
/// on the two-thread loop of BENCHMARKS.md took such a fault for most pages
/// of the free filter and the CFI rule cache (`perf`: `do_wp_page` →
/// `flush_tlb_mm_range`), because every free reads the filter long before a
/// sample writes to it. Touching the pages first, once, when sampling starts,
/// leaves no zero page to replace.
///
/// `touch` writes to the start of an element, so elements must be at most a
/// page long (checked at compile time).
pub(crate) fn touch_pages<T>(items: &[T], touch: impl Fn(&T)) {
    const { assert!(std::mem::size_of::<T>() <= 4096) };
    let step = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for item in items.iter().step_by(step) {
        touch(item);
    }
    if let Some(last) = items.last() {
        touch(last);
    }
}

/// Touches every page of the free filter (see [`touch_pages`]).
pub(crate) fn prefault_filter() {
    touch_pages(&FILTER, |f| {
        let _ = f.compare_exchange(0, 0, Relaxed, Relaxed);
    });
}

/// The callsite table's hash of a stack. Computed in steps
/// ([`hash_step`], then [`hash_finish`]) so that the frame-pointer walk can
/// hash each frame as it reads it, where the hashing overlaps the walk's
/// chain of dependent loads.
pub(crate) fn frames_hash(frames: &[usize]) -> u64 {
    let h = frames.iter().fold(HASH_START, |h, &f| hash_step(h, f));
    hash_finish(h, frames.len())
}

/// The hash of an empty stack, before any [`hash_step`].
pub(crate) const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Adds one frame (the next outer one) to a stack's hash.
#[inline(always)]
pub(crate) fn hash_step(h: u64, frame: usize) -> u64 {
    mix(h ^ frame as u64)
}

/// The finished hash of a stack of `len` frames.
#[inline(always)]
pub(crate) fn hash_finish(h: u64, len: usize) -> u64 {
    ((mix(h ^ len as u64) >> 1) | 1) & !BUSY
}

/// Finds or inserts the callsite for `frames`; `None` when the table is full.
fn find_or_insert(frames: &[usize], h: u64) -> Option<u32> {
    debug_assert_eq!(h, frames_hash(frames));
    let table = sites();
    let cap = table.len();
    if cap == 0 {
        return None;
    }
    let mut idx = h as usize & (cap - 1);
    // When sampling by bytes, make the first access to the home slot's page
    // a write (see `touch_pages`): the table is mapped lazily, and a new
    // callsite is usually the first on its page. Samples are rare there, so
    // the locked no-op costs little; in exact mode every allocation comes
    // here, so it would cost on every one of them, and is left out.
    if !crate::sampling::is_exact() {
        if let Some(home) = table.get(idx) {
            let _ = home.hash.compare_exchange(0, 0, Relaxed, Relaxed);
        }
    }
    for _ in 0..cap {
        let slot = table.get(idx)?;
        let mut cur = slot.hash.load(Acquire);
        if cur == 0 {
            if SITES_USED.load(Relaxed) >= cap - cap / 8 {
                return None;
            }
            match slot.hash.compare_exchange(0, h | BUSY, Acquire, Acquire) {
                Ok(_) => {
                    for (dst, &src) in slot.frames.iter().zip(frames) {
                        dst.store(src, Relaxed);
                    }
                    // At most MAX_FRAMES.
                    slot.len.store(frames.len() as u32, Relaxed);
                    slot.hash.store(h, Release);
                    SITES_USED.fetch_add(1, Relaxed);
                    return u32::try_from(idx).ok();
                }
                Err(now) => cur = now,
            }
        }
        if cur & !BUSY == h {
            // Another thread is writing this slot: it takes a few stores.
            // Wait a bounded time (a writer frozen by `fork` or a signal
            // never finishes), then give the sample to the unattributed row.
            let mut spins = 0u32;
            while cur & BUSY != 0 {
                spins += 1;
                if spins > 10_000 {
                    return None;
                }
                if spins > 100 {
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
                cur = slot.hash.load(Acquire);
            }
            if same_frames(slot, frames) {
                return u32::try_from(idx).ok();
            }
        }
        idx = (idx + 1) & (cap - 1);
    }
    None
}

fn same_frames(slot: &Site, frames: &[usize]) -> bool {
    slot.len.load(Relaxed) as usize == frames.len()
        && slot
            .frames
            .iter()
            .zip(frames)
            .all(|(a, &b)| a.load(Relaxed) == b)
}

fn counters_of(site: u32) -> &'static SiteCounters {
    if site == UNATTRIBUTED {
        return &UNATTRIBUTED_ROW;
    }
    match sites().get(site as usize) {
        Some(s) => &s.counters,
        None => &UNATTRIBUTED_ROW,
    }
}

/// Records a sampled allocation made by the thread holding `shard`:
/// captures the stack, finds its callsite, stores the block. Called from the
/// hook with the reentrancy guard held; allocation-free and panic-free.
pub(crate) fn record_alloc(shard: &Shard, ptr: usize, size: usize, weight: u64) {
    let size = size as u64;
    if !tables_ready() {
        DROPPED_NO_TABLES.fetch_add(1, Relaxed);
        UNATTRIBUTED_ROW.add(Pair::Alloc, weight, weighted_bytes(size, weight));
        untracked(UNATTRIBUTED, size, weight);
        return;
    }
    let mut frames = [0usize; MAX_FRAMES];
    let (n, h) = capture::capture_hashed(&mut frames);
    let site = match find_or_insert(frames.get(..n).unwrap_or(&[]), h) {
        Some(s) => s,
        None => {
            DROPPED_SITE_FULL.fetch_add(1, Relaxed);
            UNATTRIBUTED
        }
    };
    if weight != crate::sampling::ONE {
        if let Some(s) = sites().get(site as usize) {
            if s.estimated.load(Relaxed) == 0 {
                s.estimated.store(1, Relaxed);
            }
        }
    }
    count(
        shard,
        site,
        Pair::Alloc,
        weight,
        weighted_bytes(size, weight),
    );
    if !insert(ptr, Record { site, size, weight }) {
        DROPPED_LIVE_FULL.fetch_add(1, Relaxed);
        untracked(site, size, weight);
    }
}

/// Adds to a callsite's figures: through the thread's pending cache for a
/// callsite row, directly for the unattributed row.
fn count(shard: &Shard, site: u32, pair: Pair, w: u64, bytes: u64) {
    if site == UNATTRIBUTED {
        UNATTRIBUTED_ROW.add(pair, w, bytes);
    } else {
        pending::add(shard, site, pair, w, bytes);
    }
}

/// Counts a sampled block of callsite `site` (or the unattributed row)
/// that has no record: in the totals of untracked blocks, and out of the
/// site's live figures, since its free will never be matched.
fn untracked(site: u32, size: u64, weight: u64) {
    let bytes = weighted_bytes(size, weight);
    UNTRACKED_ALLOCS_W.fetch_add(weight, Relaxed);
    UNTRACKED_BYTES.fetch_add(bytes, Relaxed);
    if site != INNER_OWN {
        counters_of(site).add_untracked(weight, bytes);
    }
}

/// Counts the free of a sampled block, by the thread holding `shard`, at
/// the block's callsite.
pub(crate) fn record_free(shard: &Shard, rec: &Record) {
    let bytes = weighted_bytes(rec.size, rec.weight);
    count(shard, rec.site, Pair::Free, rec.weight, bytes);
}

/// Puts a record back (a `realloc` that failed leaves the block as it was).
pub(crate) fn put_back(ptr: usize, rec: Record) {
    if !insert(ptr, rec) {
        // Counted as allocated at its site but no longer matchable.
        DROPPED_LIVE_FULL.fetch_add(1, Relaxed);
        untracked(rec.site, rec.size, rec.weight);
    }
}

/// Where a block's record lives, from one hash of its address.
struct Place {
    /// Its slot in the free filter.
    filter: usize,
    /// Its stripe: the low bits of `filter` (see `filter_add`).
    stripe: usize,
    /// Its hash within the stripe.
    h: u64,
}

fn place_of(ptr: usize) -> Place {
    let h = mix(ptr as u64);
    let filter = filter_index_of_hash(h);
    Place {
        filter,
        stripe: filter & (STRIPES - 1),
        h: h >> 6,
    }
}

/// A stripe's near region of the record table `all`: one page of its own,
/// at the start of the table. Its far region ([`far_of`]) is its share of
/// the configured capacity, behind the near regions.
///
/// When sampling by bytes, a block goes to the near region while that is
/// less than half full (so that missing there costs ~2.5 probes), else to
/// the far one, which fills to 7/8. In exact mode blocks go to the far
/// region only: every block is sampled there, so the near pages would fill
/// at once; and while they took exact mode's blocks too, the two-thread
/// loop in exact mode with frame pointers took 395-400 ms against 336-360
/// ms with the far regions only (three interleaved runs of each build, the
/// same but for that). The table is mapped lazily, and its pages cost their
/// first touch (on the machine of BENCHMARKS.md, first touches were most of
/// what default sampling added to `Off`: 800 page faults on a two-thread
/// loop); with the near regions, a program that holds fewer than a few
/// thousand sampled blocks at once touches 64 pages of the table, not a
/// page per sample until all 2,048 are.
#[inline(always)]
fn near_of(all: &[Slot], stripe: usize) -> &[Slot] {
    all.get(stripe * NEAR_PER_STRIPE..(stripe + 1) * NEAR_PER_STRIPE)
        .unwrap_or(&[])
}

/// A stripe's far region of the record table `all` (see [`near_of`]).
#[inline(always)]
fn far_of(all: &[Slot], stripe: usize) -> &[Slot] {
    let per = all.len().saturating_sub(NEAR_SLOTS) / STRIPES;
    let start = NEAR_SLOTS + stripe * per;
    all.get(start..start + per).unwrap_or(&[])
}

fn insert(ptr: usize, rec: Record) -> bool {
    if ptr == 0 {
        return false;
    }
    let place = place_of(ptr);
    let stripe = place.stripe;
    let Some(lock) = STRIPE_LOCKS.get(stripe) else {
        return false;
    };
    let all = records();
    if all.is_empty() {
        return false;
    }
    let exact = crate::sampling::is_exact();
    let _g = lock.lock();
    if !exact {
        let near = near_of(all, stripe);
        if insert_in(near, &lock.near_used, near.len() / 2, &place, ptr, rec) {
            return true;
        }
    }
    let far = far_of(all, stripe);
    insert_in(far, &lock.used, far.len() - far.len() / 8, &place, ptr, rec)
}

/// Inserts into one region of a stripe whose lock the caller holds; false
/// when the region holds `max` blocks already (or is empty).
#[inline(always)]
fn insert_in(
    slots: &[Slot],
    used: &AtomicUsize,
    max: usize,
    place: &Place,
    ptr: usize,
    rec: Record,
) -> bool {
    let cap = slots.len();
    if cap == 0 || used.load(Relaxed) >= max {
        return false;
    }
    let mut i = place.h as usize & (cap - 1);
    // The table is mapped lazily and probed at hash-chosen slots, so this
    // is often the first access to its page. Make that access a write: a
    // first read would map the shared zero page, and the write after it
    // would replace that page and flush the TLB on every CPU the process
    // runs on (an inter-processor interrupt, costly in a virtual machine),
    // which made default sampling 1.65x raw jemalloc on a two-thread loop
    // instead of ~1.2x (BENCHMARKS.md, fourth round). A plain store.
    if let Some(home) = slots.get(i) {
        home.touch.store(0, Relaxed);
    }
    for _ in 0..cap {
        let Some(slot) = slots.get(i) else {
            return false;
        };
        let key = slot.key.load(Relaxed);
        if key == 0 || key == ptr {
            if key == 0 {
                // Written only under the stripe lock: no RMW needed.
                used.store(used.load(Relaxed) + 1, Relaxed);
                filter_add(place.filter);
            }
            slot.key.store(ptr, Relaxed);
            slot.site.store(rec.site, Relaxed);
            slot.size.store(rec.size, Relaxed);
            slot.weight.store(rec.weight, Relaxed);
            return true;
        }
        i = (i + 1) & (cap - 1);
    }
    false
}

/// Removes and returns the record of the block at `ptr`, if it has one.
pub(crate) fn take(ptr: usize) -> Option<Record> {
    let place = place_of(ptr);
    let stripe = place.stripe;
    let lock = STRIPE_LOCKS.get(stripe)?;
    let all = records();
    if all.is_empty() {
        return None;
    }
    let _g = lock.lock();
    // Only the near region holds blocks when sampling by bytes (until it
    // is half full), only the far one in exact mode; both after a switch.
    if lock.near_used.load(Relaxed) > 0 {
        let rec = take_from(near_of(all, stripe), &lock.near_used, &place, ptr);
        if rec.is_some() {
            return rec;
        }
    }
    if lock.used.load(Relaxed) > 0 {
        take_from(far_of(all, stripe), &lock.used, &place, ptr)
    } else {
        None
    }
}

/// Removes a block's record from one region of a stripe whose lock the
/// caller holds.
#[inline(always)]
fn take_from(slots: &[Slot], used: &AtomicUsize, place: &Place, ptr: usize) -> Option<Record> {
    let cap = slots.len();
    if cap == 0 {
        return None;
    }
    let mask = cap - 1;
    let mut i = place.h as usize & mask;
    for _ in 0..cap {
        let slot = slots.get(i)?;
        let key = slot.key.load(Relaxed);
        if key == 0 {
            return None;
        }
        if key == ptr {
            let rec = Record {
                site: slot.site.load(Relaxed),
                size: slot.size.load(Relaxed),
                weight: slot.weight.load(Relaxed),
            };
            remove_at(slots, i, mask);
            used.store(used.load(Relaxed).saturating_sub(1), Relaxed);
            filter_remove(place.filter);
            return Some(rec);
        }
        i = (i + 1) & mask;
    }
    None
}

/// Backward-shift deletion: keeps every probe chain unbroken without
/// tombstones. Caller holds the stripe lock.
fn remove_at(slots: &[Slot], mut hole: usize, mask: usize) {
    let mut j = hole;
    loop {
        j = (j + 1) & mask;
        let Some(next) = slots.get(j) else { break };
        let key = next.key.load(Relaxed);
        if key == 0 {
            break;
        }
        let home = (place_of(key).h as usize) & mask;
        // Move `next` into the hole if its home is not in (hole, j].
        let between = if hole <= j {
            hole < home && home <= j
        } else {
            hole < home || home <= j
        };
        if between {
            continue;
        }
        if let Some(h) = slots.get(hole) {
            h.key.store(key, Relaxed);
            h.site.store(next.site.load(Relaxed), Relaxed);
            h.size.store(next.size.load(Relaxed), Relaxed);
            h.weight.store(next.weight.load(Relaxed), Relaxed);
        }
        hole = j;
    }
    if let Some(h) = slots.get(hole) {
        h.key.store(0, Relaxed);
    }
}

/// A callsite as read from the table: its slot and figures. A slot's frames
/// never change once published, so the slot identifies the stack.
pub(crate) struct RawSite {
    pub(crate) slot: u32,
    pub(crate) figures: SiteFigures,
    /// Some of the figures come from samples (see `Site::estimated`).
    pub(crate) estimated: bool,
}

/// Reads every published callsite, with every thread's pending figures.
/// Allocates: call outside the hook.
pub(crate) fn read_sites() -> Vec<RawSite> {
    let (mut raw, pending) = pending::read_with(|| {
        let mut raw: Vec<(u32, [u64; 4], [u64; 2], bool)> = Vec::new();
        for (i, s) in sites().iter().enumerate() {
            let h = s.hash.load(Acquire);
            if h == 0 || h & BUSY != 0 {
                continue;
            }
            if let Ok(slot) = u32::try_from(i) {
                raw.push((
                    slot,
                    s.counters.load(),
                    s.counters.load_untracked(),
                    s.estimated.load(Relaxed) != 0,
                ));
            }
        }
        raw
    });
    for (slot, f) in pending {
        // `raw` is in slot order. A slot with pending figures is published
        // (figures are counted only after `find_or_insert` published it).
        if let Ok(i) = raw.binary_search_by_key(&slot, |r| r.0) {
            if let Some((_, c, _, _)) = raw.get_mut(i) {
                for (c, f) in c.iter_mut().zip(f) {
                    *c = c.wrapping_add(f);
                }
            }
        }
    }
    raw.into_iter()
        .map(|(slot, c, u, estimated)| RawSite {
            slot,
            figures: SiteFigures::from_raw(c, u),
            estimated,
        })
        .collect()
}

/// The raw return addresses of a published callsite slot.
pub(crate) fn site_frames(slot: u32) -> Vec<usize> {
    sites().get(slot as usize).map_or_else(Vec::new, |s| {
        let len = (s.len.load(Relaxed) as usize).min(MAX_FRAMES);
        s.frames.iter().take(len).map(|f| f.load(Relaxed)).collect()
    })
}

/// What could not be attributed to a callsite, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Unattributed {
    /// Sampled allocations (estimated) with no callsite row.
    pub allocations: u64,
    /// Their bytes (estimated).
    pub allocated_bytes: u64,
    /// Their frees (estimated; only those whose block was tracked).
    pub frees: u64,
    /// Bytes of those frees.
    pub freed_bytes: u64,
    /// Estimated live bytes of tracked unattributed blocks (untracked ones
    /// are left out: their frees cannot be seen).
    pub live_bytes: u64,
    /// Estimated live tracked unattributed blocks. 0 in files saved by
    /// earlier versions.
    #[serde(default)]
    pub live_blocks: u64,
    /// Samples whose callsite found the callsite table full.
    pub dropped_callsite_table_full: u64,
    /// Samples that found the live-block table full. Their frees cannot be
    /// matched, so they are counted in `untracked_*` and left out of their
    /// callsite's live figures (which would otherwise keep them live
    /// forever); their allocation still counts in the callsite's
    /// `allocations` and `allocated_bytes`.
    pub dropped_live_table_full: u64,
    /// Samples taken while the tables were being mapped, or after mapping
    /// failed.
    pub dropped_no_tables: u64,
    /// Estimated allocations whose blocks are not tracked.
    pub untracked_allocations: u64,
    /// Estimated bytes of blocks that are not tracked.
    pub untracked_bytes: u64,
    /// Times a thread waited for a live-block stripe lock.
    pub lock_contentions: u64,
    /// Blocks the inner allocator made for itself through the global
    /// allocator (`dhat::Alloc`'s tables; never with jemalloc or System)
    /// that found the live-block table full or unmapped: if the program's
    /// thread frees one (dropping a `dhat::Profiler`), that free is counted
    /// as the program's. 0 in files saved by earlier versions.
    #[serde(default)]
    pub inner_blocks_untracked: u64,
}

/// Reads the unattributed row and the overflow counters.
pub(crate) fn unattributed() -> Unattributed {
    let f = UNATTRIBUTED_ROW.read();
    Unattributed {
        allocations: f.allocations,
        allocated_bytes: f.allocated_bytes,
        frees: f.frees,
        freed_bytes: f.freed_bytes,
        live_bytes: f.live_bytes,
        live_blocks: f.live_blocks,
        dropped_callsite_table_full: DROPPED_SITE_FULL.load(Relaxed),
        dropped_live_table_full: DROPPED_LIVE_FULL.load(Relaxed),
        dropped_no_tables: DROPPED_NO_TABLES.load(Relaxed),
        untracked_allocations: weighted_count(UNTRACKED_ALLOCS_W.load(Relaxed)),
        untracked_bytes: UNTRACKED_BYTES.load(Relaxed),
        lock_contentions: CONTENDED.load(Relaxed),
        inner_blocks_untracked: INNER_UNTRACKED.load(Relaxed),
    }
}

/// Capacities and use of the tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableUsage {
    /// Callsite slots (0 until mapped).
    pub callsite_capacity: u64,
    /// Callsite slots in use: one per distinct stack of return addresses
    /// recorded, the figure to compare with `callsite_capacity`. The
    /// snapshot's `callsites` can be fewer: stacks whose addresses differ
    /// but symbolize to the same frames (two return addresses on one
    /// source line) are one callsite there.
    pub callsites_used: u64,
    /// Live sampled block slots (0 until mapped), the 8,192 used first when
    /// sampling by bytes included. Each stripe of them fills to 7/8 at most
    /// (half, for those 8,192): see `Tracker::with_max_live_samples`.
    pub live_sample_capacity: u64,
    /// Live sampled blocks recorded now (with, under an inner allocator
    /// that allocates for itself such as `dhat::Alloc`, the records of its
    /// own blocks).
    pub live_samples_used: u64,
    /// Addresses in the symbol cache.
    pub symbol_cache_entries: u64,
    /// Threads that found every counter shard leased and share the
    /// fallback shard (still exact, slower).
    pub shard_overflows: u64,
    /// Counter shards ever leased, of [`SHARDS`](crate::SHARDS). A thread
    /// leases the lowest free one, so this is about the most threads that
    /// have been alive at once; near `SHARDS`, more would share the
    /// fallback shard. 0 in files saved by earlier versions.
    #[serde(default)]
    pub shards_used: u64,
}

/// Reads the tables' capacities and use.
pub(crate) fn usage() -> TableUsage {
    TableUsage {
        callsite_capacity: sites().len() as u64,
        callsites_used: SITES_USED.load(Relaxed) as u64,
        live_sample_capacity: records().len() as u64,
        live_samples_used: STRIPE_LOCKS
            .iter()
            .map(|s| (s.used.load(Relaxed) + s.near_used.load(Relaxed)) as u64)
            .sum(),
        symbol_cache_entries: crate::symbolize::cache_len() as u64,
        shard_overflows: crate::counters::lease_overflows(),
        shards_used: crate::counters::leased_high() as u64,
    }
}

/// Bytes of heapwatch's fixed tables: static arrays plus mapped tables
/// (of the counter shards and their pending caches, those ever leased).
pub(crate) fn static_table_bytes() -> usize {
    std::mem::size_of_val(&FILTER)
        + std::mem::size_of_val(&STRIPE_LOCKS)
        + crate::counters::shard_bytes()
        + std::mem::size_of_val(sites())
        + std::mem::size_of_val(records())
        + crate::capture::static_bytes()
        + pending::static_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn site_is_320_bytes_and_slot_32() {
        assert_eq!(std::mem::size_of::<Site>(), 320);
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    /// Every 4 KiB page a table spans holds a touched element, whatever its
    /// element size: touched elements are never more than a page apart, and
    /// the first and last elements are touched.
    #[test]
    fn touch_pages_reaches_every_page() {
        fn check<const N: usize>(len: usize) {
            let items = vec![[0u8; N]; len];
            let touched = std::cell::RefCell::new(Vec::new());
            touch_pages(&items, |e| {
                touched
                    .borrow_mut()
                    .push(e.as_ptr() as usize - items.as_ptr() as usize);
            });
            let touched = touched.into_inner();
            assert_eq!(touched.first(), Some(&0));
            assert_eq!(touched.last(), Some(&(N * (len - 1))));
            for pair in touched.windows(2) {
                assert!(pair[1] - pair[0] <= 4096, "{N} B elements: gap {pair:?}");
            }
        }
        check::<8>(3 * 512 + 7);
        check::<16>(4096);
        check::<320>(100);
        check::<1>(70_000);
        check::<32>(1);
    }
}
