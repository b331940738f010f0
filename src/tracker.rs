//! The allocator hook: `Tracker<A>`, a `GlobalAlloc` wrapper.
//!
//! Every path through the four `GlobalAlloc` methods is allocation-free,
//! lock-free on the fast path and panic-free: no `unwrap`, no indexing that
//! can fail, no `assert!`. Bookkeeping happens only after the inner
//! allocator succeeded, except that a sampled block's record is taken out
//! *before* it is freed (so its address cannot be handed out again, and
//! recorded by another thread, before the record is gone).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU8, Ordering::*};

use crate::budget::{self, Admission, Budget, Policy, Thresholds};
use crate::callsites::{self, Record};
use crate::capture::Unwinder;
use crate::counters::{self, Shard};
use crate::guard::{self, Guard};
use crate::sampling::{self, Sampling};

/// A tracking global allocator around an inner allocator `A`.
///
/// Build it in a `static` with the `const` constructor and builder methods,
/// and install it with `#[global_allocator]`. One tracker serves a process:
/// its counters, tables and settings are process-wide, and the first
/// allocation applies the builder's settings (then the environment variable
/// `HEAPWATCH_MAX_MEMORY_MB`, see [`Tracker::with_budget`]).
///
/// # Example
///
/// ```
/// use heapwatch::{Budget, Policy, Sampling, Tracker};
///
/// #[global_allocator]
/// static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System)
///     .with_budget(Budget::from_mb(512))
///     .with_policy(Policy::Refuse)
///     .with_sampling(Sampling::Bytes(512 * 1024));
///
/// fn main() {
///     let v: Vec<u64> = (0..1000).collect();
///     assert!(heapwatch::stats().live_bytes >= 8000);
///     drop(v);
/// }
/// ```
#[derive(Debug)]
pub struct Tracker<A> {
    inner: A,
    config: Config,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    budget: Budget,
    policy: Policy,
    thresholds: Thresholds,
    sampling: Sampling,
    depth: usize,
    unwinder: Unwinder,
    max_callsites: usize,
    max_live_samples: usize,
}

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNINIT);

/// Whether a [`Tracker`] is serving as the global allocator (it has seen an
/// allocation). Until then [`stats()`](crate::stats) reads zeros, but for
/// `overhead_bytes` (heapwatch's static tables) and a budget set with
/// [`set_budget`](crate::set_budget). The standard library usually
/// allocates before `main`, but not in every build (not with
/// `-Zbuild-std`): a program that reads figures before it allocates
/// anything may see the tracker not set up yet.
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() {
///     let first = vec![0u8; 16]; // at the latest, this sets it up
///     assert!(heapwatch::installed());
///     drop(first);
/// }
/// ```
pub fn installed() -> bool {
    STATE.load(Relaxed) == READY
}

impl<A> Tracker<A> {
    /// Wraps `inner` with the defaults: no budget, sampling by bytes with a
    /// mean interval of 512 KiB, 16 user frames, the automatic unwinder,
    /// 16,384 callsites and 262,144 sampled live blocks.
    pub const fn new(inner: A) -> Tracker<A> {
        Tracker {
            inner,
            config: Config {
                budget: Budget::UNLIMITED,
                policy: Policy::Refuse,
                thresholds: Thresholds::DEFAULT,
                sampling: Sampling::DEFAULT,
                depth: crate::capture::DEFAULT_DEPTH,
                unwinder: Unwinder::Auto,
                max_callsites: callsites::DEFAULT_MAX_CALLSITES,
                max_live_samples: callsites::DEFAULT_MAX_LIVE_SAMPLES,
            },
        }
    }

    /// Sets the memory budget. The environment variable
    /// `HEAPWATCH_MAX_MEMORY_MB`, when set and not empty, overrides this: it
    /// is read once, at the process's first allocation (before `main`),
    /// without allocating. It takes what [`Budget`]'s `FromStr` takes
    /// (`512MB`, `2GiB`, `1.5GiB`, `unlimited`, `none`, `off`), except that
    /// a number without a unit is mebibytes (`512`), and zero, in any unit,
    /// means no budget. A value that does not parse (`512 parsecs`, `-1`)
    /// is ignored, as if the variable were unset: this budget applies, and
    /// [`budget_status`](crate::budget_status)`().env_var_invalid` is true
    /// (`heapwatch_budget_env_var_invalid` is 1 in the Prometheus metrics).
    /// [`set_budget`](crate::set_budget) overrides both at run time.
    ///
    /// It applies from the process's first allocation, before `main`: a
    /// budget smaller than what the runtime allocates before `main` (a few
    /// hundred bytes; `Budget::from_mb(0)` refuses everything) aborts the
    /// process there, with "memory allocation of N bytes failed".
    #[must_use]
    pub const fn with_budget(mut self, budget: Budget) -> Tracker<A> {
        self.config.budget = budget;
        self
    }

    /// Sets what happens over budget (default [`Policy::Refuse`]).
    #[must_use]
    pub const fn with_policy(mut self, policy: Policy) -> Tracker<A> {
        self.config.policy = policy;
        self
    }

    /// Sets the warning thresholds (default 80% and 95%).
    #[must_use]
    pub const fn with_thresholds(mut self, thresholds: Thresholds) -> Tracker<A> {
        self.config.thresholds = thresholds;
        self
    }

    /// Sets the sampling mode (default [`Sampling::DEFAULT`]).
    #[must_use]
    pub const fn with_sampling(mut self, sampling: Sampling) -> Tracker<A> {
        self.config.sampling = sampling;
        self
    }

    /// Sets how many frames of the user's stack a callsite keeps (default
    /// 16, at most [`MAX_FRAMES`](crate::MAX_FRAMES) minus the frames
    /// heapwatch and the standard library's allocation plumbing take).
    #[must_use]
    pub const fn with_depth(mut self, depth: usize) -> Tracker<A> {
        self.config.depth = depth;
        self
    }

    /// Chooses the stack unwinder (default [`Unwinder::Auto`]).
    #[must_use]
    pub const fn with_unwinder(mut self, unwinder: Unwinder) -> Tracker<A> {
        self.config.unwinder = unwinder;
        self
    }

    /// Sets the capacity of the callsite table (clamped to 64 ..= 2^24,
    /// rounded up to a power of two; memory: 320 bytes a callsite, mapped
    /// on first use).
    #[must_use]
    pub const fn with_max_callsites(mut self, n: usize) -> Tracker<A> {
        self.config.max_callsites = n;
        self
    }

    /// Sets the number of slots for sampled blocks live at once (clamped
    /// to 1,024 ..= 2^28, rounded up to a power of two; memory: 32 bytes
    /// each, mapped on first use). When sampling by bytes, 8,192 more slots
    /// (256 KiB) in front of them take blocks first.
    ///
    /// Blocks go to one of 64 stripes by address, and a stripe fills to 7/8
    /// of its share at most: at most 7/8 of `n` blocks are tracked at once,
    /// a little fewer when addresses fall unevenly. A sampled block that
    /// finds its stripe full is counted in `Unattributed::untracked_*` and
    /// `dropped_live_table_full`, and left out of its callsite's live
    /// figures (its allocation still counts).
    #[must_use]
    pub const fn with_max_live_samples(mut self, n: usize) -> Tracker<A> {
        self.config.max_live_samples = n;
        self
    }

    /// The inner allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }

    #[cold]
    #[inline(never)]
    fn init(&self) {
        if STATE
            .compare_exchange(UNINIT, BUSY, Acquire, Relaxed)
            .is_err()
        {
            return;
        }
        let c = &self.config;
        crate::clock::start();
        crate::snapshot::note_inner_type(std::any::type_name::<A>());
        budget::configure(c.budget, c.policy, c.thresholds);
        sampling::configure(c.sampling);
        crate::capture::configure(c.depth, c.unwinder);
        callsites::configure(c.max_callsites, c.max_live_samples);
        STATE.store(READY, Release);
    }

    #[inline(always)]
    fn ensure_init(&self) {
        if STATE.load(Relaxed) != READY {
            self.init();
        }
    }
}

/// Counts a successful allocation of `size` bytes at `ptr` and samples it.
#[inline(always)]
fn on_alloc(shard: &Shard, ptr: *mut u8, size: usize) {
    shard.add(&shard.allocs, 1);
    shard.add(&shard.alloc_bytes, size as u64);
    if let Some(weight) = sampling::should_sample(shard, size) {
        record_sampled(shard, ptr, size, weight);
    }
}

#[cold]
#[inline(never)]
fn record_sampled(shard: &Shard, ptr: *mut u8, size: usize, weight: u64) {
    let _guard = Guard::enter();
    callsites::record_alloc(shard, ptr as usize, size, weight);
}

/// Takes a sampled block's record out before the block is freed or moved.
#[inline(always)]
fn take_record(ptr: *mut u8) -> Option<Record> {
    if callsites::maybe_sampled(ptr as usize) {
        take_record_slow(ptr)
    } else {
        None
    }
}

#[cold]
#[inline(never)]
fn take_record_slow(ptr: *mut u8) -> Option<Record> {
    callsites::take(ptr as usize)
}

// The hook has two paths.
//
// The fast path is taken when the calling thread has leased a shard of its
// own and is not inside heapwatch (`counters::fast`: the shard and the
// reentrancy guard share one thread-local word, so this is one load and one
// test); for `alloc` and `realloc`, when the shard's budget credit covers
// the new bytes, and for `dealloc` and `realloc`, when the credit given back
// cannot leave a surplus to hand to the pool (each one comparison of a
// counter the path updates anyway with a limit, `budget` says how); and for
// `dealloc` and `realloc`, when the block was not sampled (one load of the
// free filter). It updates the shard with plain loads and stores, decides
// sampling with the countdown alone, and calls the inner allocator once
// (`dealloc` as a tail call, with no stack frame of its own). The `alloc`
// and `realloc` fast paths are inlined where the program allocates; the
// `dealloc` one is called, in a copy per alignment (`dealloc_fast` says
// why).
//
// Everything else takes the general path (`*_slow`, out of line): the
// thread's first allocation (which applies the tracker's configuration and
// leases a shard), threads on the shared shard, heapwatch's own allocations
// (counted as overhead), allocations that need budget credit (which may be
// refused), and sampled blocks (whose records move or go). One case of the
// last sits in between: a fast-path `dealloc` of a block the filter marks
// goes to `dealloc_sampled`, which takes the record out and then counts as
// the fast path does (every free does this in exact mode). All paths count
// exactly the same figures.

// SAFETY: every method forwards to `A` with the caller's arguments unchanged
// and returns what `A` returned, so `A`'s `GlobalAlloc` contract carries
// over; the bookkeeping around the calls never touches the blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Tracker<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        unsafe { self.alloc_impl(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc_zeroed`'s contract for `layout`.
        unsafe { self.alloc_impl(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // One call, to an out-of-line copy of the fast path for the
        // layout's alignment when it is at most 16, else to the copy for
        // any alignment (`dealloc_fast` says why). Where the alignment
        // is known when compiling, as it nearly always is, the table lookup
        // folds into a direct call; elsewhere (a `Box<dyn Trait>`'s drop)
        // it is one indexed load.
        let align = layout.align();
        match Self::DEALLOC_ALIGNED.get(align.trailing_zeros() as usize) {
            // SAFETY: the caller upholds `dealloc`'s contract; the entry at
            // index `align.trailing_zeros()` is the copy for `align`.
            Some(dealloc_aligned) => unsafe { dealloc_aligned(self, ptr, layout.size()) },
            // SAFETY: the caller upholds `dealloc`'s contract.
            None => unsafe { self.dealloc_any(ptr, layout) },
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_size = layout.size();
        if let Some(shard) = counters::fast() {
            // A sampled block's record must move with it: the general path.
            if budget::admit_realloc_owned(shard, old_size, new_size)
                && !callsites::maybe_sampled(ptr as usize)
            {
                let p = {
                    let _g = Guard::enter_fast(shard);
                    // SAFETY: the caller upholds `realloc`'s contract: `ptr`
                    // came from this allocator with `layout`, `new_size` is
                    // valid for it.
                    unsafe { self.inner.realloc(ptr, layout, new_size) }
                };
                // A failed realloc leaves the old block counted as it was.
                if !p.is_null() {
                    on_realloc_owned(shard, p, old_size, new_size);
                }
                return p;
            }
        }
        // SAFETY: as above.
        unsafe { self.realloc_slow(ptr, layout, new_size) }
    }
}

impl<A: GlobalAlloc> Tracker<A> {
    /// `alloc` (or, if `zeroed`, `alloc_zeroed`): the fast path, else the
    /// general one.
    ///
    /// # Safety
    ///
    /// `alloc`'s (or `alloc_zeroed`'s) contract for `layout`.
    #[inline(always)]
    unsafe fn alloc_impl(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let size = layout.size();
        if let Some(shard) = counters::fast() {
            if budget::admit_owned(shard, size) {
                let p = {
                    let _g = Guard::enter_fast(shard);
                    // SAFETY: forwarded from this function's own contract.
                    unsafe { self.inner_alloc(layout, zeroed) }
                };
                if !p.is_null() {
                    on_alloc_owned(shard, p, size);
                }
                return p;
            }
        }
        // SAFETY: as above.
        unsafe { self.alloc_slow(layout, zeroed) }
    }

    /// The inner allocator's `alloc` or `alloc_zeroed`.
    ///
    /// # Safety
    ///
    /// `alloc`'s (or `alloc_zeroed`'s) contract for `layout`.
    #[inline(always)]
    unsafe fn inner_alloc(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: forwarded from this function's own contract.
        unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        }
    }

    /// `dealloc_aligned` for alignments 1 to 16, indexed by their base-2
    /// logarithm.
    const DEALLOC_ALIGNED: [unsafe fn(&Self, *mut u8, usize); 5] = [
        Self::dealloc_aligned::<1>,
        Self::dealloc_aligned::<2>,
        Self::dealloc_aligned::<4>,
        Self::dealloc_aligned::<8>,
        Self::dealloc_aligned::<16>,
    ];

    /// `dealloc_fast` for blocks aligned to `ALIGN`, out of line.
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and the layout of `size` bytes
    /// aligned to `ALIGN`.
    #[inline(never)]
    unsafe fn dealloc_aligned<const ALIGN: usize>(&self, ptr: *mut u8, size: usize) {
        // SAFETY: the caller's layout had this size and alignment, so they
        // make a valid `Layout`.
        let layout = unsafe { Layout::from_size_align_unchecked(size, ALIGN) };
        // SAFETY: forwarded from this function's own contract.
        unsafe { self.dealloc_fast(ptr, layout) }
    }

    /// `dealloc_fast` for any alignment, out of line.
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and `layout`.
    #[inline(never)]
    unsafe fn dealloc_any(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from this function's own contract.
        unsafe { self.dealloc_fast(ptr, layout) }
    }

    /// The fast path of `dealloc`. It is compiled only into the
    /// out-of-line copies above (one per alignment up to 16, one for any
    /// alignment), never into the program's own functions.
    ///
    /// Inlined, the hook's checks and counts went into every function that
    /// frees, and the standard library's generic code then grew past what
    /// the compiler inlines into its callers: on the app-like `mixed`
    /// workload of BENCHMARKS.md (eighth round), `BTreeMap`'s `dying_next`
    /// no longer inlined `deallocating_next` and read the handle it
    /// returned through the stack, a store-forwarding stall that took 3% of
    /// the run. Out of line, a free in the program's code is one call, as
    /// small as the inner allocator's own inlined `dealloc`. The copy per
    /// alignment keeps the alignment a constant inside the copy, so that
    /// what the inner `dealloc` derives from it (jemalloc's flags) still
    /// folds away, as it did inlined.
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and `layout`.
    #[inline(always)]
    unsafe fn dealloc_fast(&self, ptr: *mut u8, layout: Layout) {
        // The fast path makes no call but the last one, the inner `dealloc`:
        // with nothing to do after it, it compiles to a jump, and the path
        // needs no stack frame. A block that may be sampled goes to
        // `dealloc_sampled`; anything else (a credit surplus to hand back,
        // heapwatch's own blocks, the shared shard) to `dealloc_slow`; both
        // as tail calls.
        if let Some(shard) = counters::fast() {
            if callsites::maybe_sampled(ptr as usize) {
                // SAFETY: the caller upholds `dealloc`'s contract for `ptr`
                // and `layout`.
                return unsafe { self.dealloc_sampled(shard, ptr, layout) };
            } else {
                let size = layout.size();
                let freed = shard.freed_bytes.load(Relaxed).wrapping_add(size as u64);
                if budget::free_fits(shard, freed) {
                    shard.freed_bytes.store(freed, Relaxed);
                    shard.add_owned(&shard.frees, 1);
                    // No guard around the inner `dealloc` (unlike `alloc`):
                    // freeing does not allocate in jemalloc, System or dhat.
                    // An inner allocator that did allocate while freeing
                    // would have that block counted as the program's, not
                    // as overhead.
                    // SAFETY: the caller guarantees `ptr` was allocated by
                    // this allocator (hence by `A`) with `layout`.
                    return unsafe { self.inner.dealloc(ptr, layout) };
                }
            }
        }
        // SAFETY: as above.
        unsafe { self.dealloc_slow(ptr, layout) }
    }

    /// The general path of `dealloc`: the bookkeeping, then the inner
    /// `dealloc` (no guard around it, as on the fast path).
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_slow(&self, ptr: *mut u8, layout: Layout) {
        on_dealloc_slow(ptr, layout.size());
        // SAFETY: forwarded from this function's own contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// `dealloc` of a block the free filter says may be sampled, by a thread
    /// on the fast path (its own shard, not inside heapwatch): what
    /// `dealloc_slow` does in that case, without finding the shard and the
    /// filter slot again. Every block is sampled in exact mode, so every
    /// free comes here.
    ///
    /// # Safety
    ///
    /// `dealloc`'s contract for `ptr` and `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_sampled(&self, shard: &Shard, ptr: *mut u8, layout: Layout) {
        let size = layout.size();
        match callsites::take(ptr as usize) {
            Some(rec) if rec.is_inner_own() => {
                // The inner allocator's own block (dhat's tables, freed by
                // the program dropping its profiler): overhead, as when it
                // was allocated.
                shard.add_owned(&shard.ovh_frees, 1);
                shard.add_owned(&shard.ovh_freed_bytes, size as u64);
                // SAFETY: forwarded from this function's own contract.
                return unsafe { self.inner.dealloc(ptr, layout) };
            }
            Some(rec) => callsites::record_free(shard, &rec),
            None => {}
        }
        let freed = shard.freed_bytes.load(Relaxed).wrapping_add(size as u64);
        shard.freed_bytes.store(freed, Relaxed);
        shard.add_owned(&shard.frees, 1);
        if !budget::free_fits(shard, freed) {
            budget::release(shard, size);
        }
        // SAFETY: forwarded from this function's own contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// The general path of `realloc`.
    ///
    /// # Safety
    ///
    /// `realloc`'s contract for `ptr`, `layout` and `new_size`.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_slow(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.ensure_init();
        let shard = counters::current();
        let old_size = layout.size();
        let growth = new_size.saturating_sub(old_size);
        let rec = take_record(ptr);
        // The inner allocator's own blocks stay its own, moved by whoever.
        let inner_own =
            rec.as_ref().is_some_and(Record::is_inner_own) || (guard::in_inner() && rec.is_none());
        // heapwatch's own blocks are not charged to the budget.
        let guarded = guard::is_active() || inner_own;
        let admission = if growth > 0 && !guarded {
            budget::admit(shard, growth)
        } else {
            Admission::Covered
        };
        if !admission.admitted() {
            if let Some(rec) = rec {
                callsites::put_back(ptr as usize, rec);
            }
            return std::ptr::null_mut();
        }
        let p = {
            let _g = Guard::enter_inner();
            // SAFETY: the caller upholds `realloc`'s contract: `ptr` came
            // from this allocator with `layout`, `new_size` is valid for it.
            unsafe { self.inner.realloc(ptr, layout, new_size) }
        };
        if p.is_null() {
            // The old block is still live and still counted as it was.
            if let Some(rec) = rec {
                callsites::put_back(ptr as usize, rec);
            }
            if growth > 0 && !guarded {
                budget::cancel(shard, admission);
            }
            return p;
        }
        budget::allocated(admission);
        if let Some(rec) = rec.filter(|r| !r.is_inner_own()) {
            callsites::record_free(shard, &rec);
        }
        if guarded {
            shard.add(&shard.ovh_alloc_bytes, new_size as u64);
            shard.add(&shard.ovh_freed_bytes, old_size as u64);
            if inner_own {
                callsites::record_inner_own(p as usize, new_size);
            }
            return p;
        }
        shard.add(&shard.reallocs, 1);
        shard.add(&shard.alloc_bytes, new_size as u64);
        shard.add(&shard.freed_bytes, old_size as u64);
        if growth == 0 {
            budget::release(shard, old_size - new_size);
        }
        if let Some(weight) = sampling::should_sample(shard, new_size) {
            record_sampled(shard, p, new_size, weight);
        }
        p
    }

    /// The general path of `alloc` and `alloc_zeroed`.
    ///
    /// # Safety
    ///
    /// `alloc`'s (or `alloc_zeroed`'s) contract for `layout`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        self.ensure_init();
        let shard = counters::current();
        let size = layout.size();
        if guard::is_active() {
            // heapwatch's own, or the inner allocator's: straight to the
            // inner allocator, counted as overhead, never charged to the
            // budget nor refused by it.
            let inner_own = guard::in_inner();
            let p = {
                let _g = Guard::enter_inner();
                // SAFETY: forwarded from this function's own contract.
                unsafe { self.inner_alloc(layout, zeroed) }
            };
            if !p.is_null() {
                shard.add(&shard.ovh_allocs, 1);
                shard.add(&shard.ovh_alloc_bytes, size as u64);
                if inner_own {
                    callsites::record_inner_own(p as usize, size);
                }
            }
            return p;
        }
        let admission = budget::admit(shard, size);
        if !admission.admitted() {
            return std::ptr::null_mut();
        }
        let p = {
            let _g = Guard::enter_inner();
            // SAFETY: as above.
            unsafe { self.inner_alloc(layout, zeroed) }
        };
        if p.is_null() {
            budget::cancel(shard, admission);
        } else {
            budget::allocated(admission);
            on_alloc(shard, p, size);
        }
        p
    }
}

/// Counts a successful fast-path allocation on the calling thread's own
/// shard and samples it.
#[inline(always)]
fn on_alloc_owned(shard: &Shard, ptr: *mut u8, size: usize) {
    shard.add_owned(&shard.allocs, 1);
    shard.add_owned(&shard.alloc_bytes, size as u64);
    if !sampling::countdown_left(shard, size) {
        sample_and_record(shard, ptr, size);
    }
}

/// The sampling decision once the countdown ran out, and the record if it
/// samples: one out-of-line call, so that the fast path has as few calls
/// as it can (and is small enough for the compiler to inline it into the
/// program's callers, as it does with a bare jemalloc).
#[cold]
#[inline(never)]
fn sample_and_record(shard: &Shard, ptr: *mut u8, size: usize) {
    if let Some(weight) = sampling::sample_slow(shard, size) {
        record_sampled(shard, ptr, size, weight);
    }
}

/// Counts a successful fast-path reallocation of an unsampled block on the
/// calling thread's own shard, and samples the new block.
#[inline(always)]
fn on_realloc_owned(shard: &Shard, p: *mut u8, old_size: usize, new_size: usize) {
    shard.add_owned(&shard.reallocs, 1);
    shard.add_owned(&shard.alloc_bytes, new_size as u64);
    shard.add_owned(&shard.freed_bytes, old_size as u64);
    if !sampling::countdown_left(shard, new_size) {
        sample_and_record(shard, p, new_size);
    }
}

/// The general path of `dealloc`'s bookkeeping (the inner `dealloc` is
/// called by the caller either way).
#[cold]
#[inline(never)]
fn on_dealloc_slow(ptr: *mut u8, size: usize) {
    let shard = counters::current();
    let rec = take_record(ptr);
    // The inner allocator's own blocks are overhead whoever frees them.
    let inner_own = rec.as_ref().is_some_and(Record::is_inner_own);
    if let Some(rec) = rec.filter(|r| !r.is_inner_own()) {
        callsites::record_free(shard, &rec);
    }
    if inner_own || guard::is_active() {
        shard.add(&shard.ovh_frees, 1);
        shard.add(&shard.ovh_freed_bytes, size as u64);
    } else {
        shard.add(&shard.frees, 1);
        shard.add(&shard.freed_bytes, size as u64);
        budget::release(shard, size);
    }
}
