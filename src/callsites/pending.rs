//! Per-thread pending callsite figures.
//!
//! Each sampled allocation adds to two counters of its callsite, and each
//! free of a sampled block to two more. Callsites are shared by every
//! thread, so done directly these are four atomic read-modify-writes per
//! sampled alloc + free on cache lines other threads write too: most of
//! what exact mode costs beyond the stack walk (BENCHMARKS.md).
//!
//! Instead, a thread that has leased a counter shard adds into a small
//! direct-mapped cache of its own ([`ENTRIES`] entries keyed by callsite
//! slot, one cache per shard, written only by the shard's holder) with
//! plain loads and stores. An entry's figures move into the callsite's
//! shared counters only when another callsite needs the entry (an
//! *eviction*). A thread on the shared fallback shard adds to the shared
//! counters directly.
//!
//! Readers ([`read_with`]) add the figures of every cache of a shard ever
//! leased (no thread has written the others) to the shared ones. A
//! pending figure is a counter like any other (it only grows), except
//! during an eviction, when its value moves from the entry to the shared
//! counter: a reader that read the entry before the move and the shared
//! counter after it would count the value twice, and the next reading
//! would then show a cumulative figure going down. So no eviction runs
//! while a reading does:
//!
//! - a reader announces itself (`READERS`), then waits until no cache is in
//!   the middle of an eviction (each cache has a sequence number, odd while
//!   its holder evicts), then reads;
//! - a holder about to evict makes its sequence number odd, then looks at
//!   `READERS`; if a reader is there, it puts the sequence number back and,
//!   instead of evicting, adds the new figures to the callsite's shared
//!   counters directly.
//!
//! Both sides use sequentially consistent operations for the announcement
//! and the look, so at least one of them sees the other. During a reading
//! every entry and every shared counter then only grows, so a reading is
//! never above a later one and is exact at quiescence. The wait is bounded,
//! and a fork leaves no reading or eviction of the parent's other threads
//! behind in the child ([`after_fork_in_child`]).
//!
//! An exiting thread's figures stay in its shard's cache, which is read
//! like the others, and the shard's next holder carries on with it.
//!
//! Memory: `SHARDS` caches of `ENTRIES` entries of 40 bytes (static, zero
//! pages until a thread uses its cache).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

use crate::counters::{self, Shard, SHARDS};

/// Entries in one shard's cache.
pub(crate) const ENTRIES: usize = 32;

/// The figures of one callsite a thread has not yet added to the shared
/// counters: `[allocs_w, alloc_bytes, frees_w, freed_bytes]`.
#[repr(C)]
struct Entry {
    /// The callsite slot plus one; 0 for an unused entry.
    key: AtomicU64,
    figures: [AtomicU64; 4],
}

impl Entry {
    /// The entry's figures, `[allocs_w, alloc_bytes, frees_w, freed_bytes]`.
    fn load(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.figures.get(i).map_or(0, |c| c.load(Relaxed)))
    }
}

#[repr(C, align(128))]
struct Cache {
    /// Odd while the holder is evicting an entry.
    seq: AtomicU64,
    entries: [Entry; ENTRIES],
}

impl Cache {
    const fn new() -> Cache {
        Cache {
            seq: AtomicU64::new(0),
            entries: [const {
                Entry {
                    key: AtomicU64::new(0),
                    figures: [const { AtomicU64::new(0) }; 4],
                }
            }; ENTRIES],
        }
    }
}

static CACHES: [Cache; SHARDS] = [const { Cache::new() }; SHARDS];

/// The caches of the shards ever leased: no thread has written the others.
fn used() -> &'static [Cache] {
    CACHES.get(..counters::leased_high()).unwrap_or(&[])
}

/// Readings in progress: while it is not zero, holders do not evict.
static READERS: AtomicUsize = AtomicUsize::new(0);

/// Which pair of figures an update adds to.
#[derive(Clone, Copy)]
pub(super) enum Pair {
    /// `allocs_w` and `alloc_bytes`.
    Alloc = 0,
    /// `frees_w` and `freed_bytes`.
    Free = 2,
}

/// Adds `(w, bytes)` to `pair` of callsite `slot` for the thread that holds
/// `shard`. Allocation-free and panic-free; plain loads and stores unless an
/// entry is evicted. Directly to the callsite's shared counters when the
/// thread is on the shared fallback shard (which has no cache), or when the
/// entry must be evicted while a reading is in progress.
#[inline]
pub(super) fn add(shard: &Shard, slot: u32, pair: Pair, w: u64, bytes: u64) {
    let entry = if shard.is_exclusive() {
        CACHES
            .get(counters::index_of(shard))
            .and_then(|cache| Some((cache, cache.entries.get(slot as usize % ENTRIES)?)))
    } else {
        None
    };
    let Some((cache, entry)) = entry else {
        super::counters_of(slot).add(pair, w, bytes);
        return;
    };
    let key = u64::from(slot) + 1;
    if entry.key.load(Relaxed) != key && !evict(cache, entry, key) {
        // A reading is in progress: nothing moves, the figures go straight
        // to the shared counters.
        super::counters_of(slot).add(pair, w, bytes);
        return;
    }
    let i = pair as usize;
    // Only the shard's holder writes its cache: a plain load and store.
    if let (Some(a), Some(b)) = (entry.figures.get(i), entry.figures.get(i + 1)) {
        a.store(a.load(Relaxed).wrapping_add(w), Relaxed);
        b.store(b.load(Relaxed).wrapping_add(bytes), Relaxed);
    }
}

/// Moves `entry`'s figures to its callsite's shared counters and gives the
/// entry to `key`, inside an odd sequence number; true when done. False,
/// with nothing moved, while a reading is in progress.
#[cold]
#[inline(never)]
fn evict(cache: &Cache, entry: &Entry, key: u64) -> bool {
    let old = entry.key.load(Relaxed);
    if old == 0 {
        // Never used (its figures are zero): nothing moves, so a reading in
        // progress sees at most figures that grow.
        entry.key.store(key, Relaxed);
        return true;
    }
    let seq = cache.seq.load(Relaxed);
    // Odd first, then the look at READERS, both sequentially consistent: a
    // reader that announced itself before this look is seen here, and one
    // that announces itself after it sees the odd number and waits.
    cache.seq.swap(seq.wrapping_add(1), SeqCst);
    if READERS.load(SeqCst) != 0 {
        cache.seq.store(seq.wrapping_add(2), Release);
        return false;
    }
    let shared = super::counters_of((old - 1) as u32);
    let f = entry.load();
    shared.add(Pair::Alloc, f[0], f[1]);
    shared.add(Pair::Free, f[2], f[3]);
    for c in &entry.figures {
        c.store(0, Relaxed);
    }
    entry.key.store(key, Relaxed);
    // Even again, publishing the move to a reader that waits for it.
    cache.seq.store(seq.wrapping_add(2), Release);
    true
}

/// How long a reader waits, in all, for evictions in progress to finish.
/// An eviction is a few dozen instructions, so this is only reached when
/// its thread was preempted in the middle for that long.
const EVICTION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// In the child of a `fork` (from the fork handler): its only thread is the
/// one that forked, which was neither reading nor evicting, so readings
/// announced by other threads of the parent are withdrawn (else the child
/// would never evict again), and a cache whose holder was in the middle of
/// an eviction is made even again (else every reading would wait for it).
/// That one entry's figures may then be counted twice, or not at all, in
/// the child. Async-signal-safe: atomic stores only.
pub(super) fn after_fork_in_child() {
    READERS.store(0, Relaxed);
    // A cache in the middle of an eviction belongs to a shard ever leased.
    for cache in used() {
        let seq = cache.seq.load(Relaxed);
        if seq & 1 == 1 {
            cache.seq.store(seq.wrapping_add(1), Relaxed);
        }
    }
}

/// Holds an announced reading; withdraws it when dropped.
struct Reading;

impl Reading {
    fn announce() -> Reading {
        READERS.fetch_add(1, SeqCst);
        Reading
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READERS.fetch_sub(1, Release);
    }
}

/// Reads the shared counters with `read_shared`, and every thread's pending
/// figures as `(slot, [allocs_w, alloc_bytes, frees_w, freed_bytes])`, for
/// the caller to add up, with no eviction running meanwhile (see the module
/// docs). Allocates: call outside the hook.
pub(super) fn read_with<T>(read_shared: impl FnOnce() -> T) -> (T, Vec<(u32, [u64; 4])>) {
    let _reading = Reading::announce();
    let start = std::time::Instant::now();
    // One slice for both loops, though more shards may be leased meanwhile.
    let used = used();
    for cache in used {
        // SeqCst, after the SeqCst announcement: either this load sees a
        // holder's odd number, or that holder sees the announcement (see
        // `evict`). It also acquires a finished eviction's moves.
        while cache.seq.load(SeqCst) & 1 == 1 && start.elapsed() < EVICTION_WAIT {
            std::thread::yield_now();
        }
    }
    let mut pending: Vec<(u32, [u64; 4])> = Vec::new();
    for cache in used {
        for e in &cache.entries {
            let key = e.key.load(Relaxed);
            if key == 0 {
                continue;
            }
            let f = e.load();
            if f != [0; 4] {
                pending.push(((key - 1) as u32, f));
            }
        }
    }
    (read_shared(), pending)
}

/// Bytes of the caches of the shards ever leased (static; the others are
/// zero pages no thread has written).
pub(super) fn static_bytes() -> usize {
    std::mem::size_of_val(used())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 40);
    }

    /// The pending figures of `slot` in a reading.
    fn pending_of(pending: &[(u32, [u64; 4])], slot: u32) -> [u64; 4] {
        pending
            .iter()
            .filter(|p| p.0 == slot)
            .fold([0; 4], |mut a, p| {
                for (a, f) in a.iter_mut().zip(p.1) {
                    *a += f;
                }
                a
            })
    }

    /// The tests below add to the unattributed row (no tracker is
    /// installed in unit tests: the callsite table is not mapped, so every
    /// slot's shared counters are that row) and check its figures, so they
    /// take turns. Other tests of this binary take snapshots at any time,
    /// and a snapshot is a reading: these tests must hold whether or not
    /// an eviction they make is deferred by one.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The entry of `slot` in the calling thread's cache: (key, figures).
    fn own_entry(shard: &Shard, slot: u32) -> (u64, [u64; 4]) {
        let cache = &CACHES[counters::index_of(shard)];
        let e = &cache.entries[slot as usize % ENTRIES];
        (e.key.load(Relaxed), e.load())
    }

    /// `[allocs_w, alloc_bytes, frees_w, freed_bytes]` of slots `s` and
    /// `t` together, shared counters included, in one reading.
    fn total_of(s: u32, t: u32) -> [u64; 4] {
        let shared = super::super::counters_of(s);
        let (row, pending) = read_with(|| shared.load());
        let (p, q) = (pending_of(&pending, s), pending_of(&pending, t));
        std::array::from_fn(|i| row[i] + p[i] + q[i])
    }

    #[test]
    fn nothing_moves_during_a_reading() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Slots `s` and `t` share a cache entry.
        let shard = counters::current();
        assert!(shard.is_exclusive());
        let shared = super::super::counters_of(0);
        let (s, t) = (7, 7 + ENTRIES as u32);
        let start = total_of(s, t);
        // Put `s` in the entry (another test's reading may defer the move
        // of what the entry held: then try again).
        let mut adds = 0;
        while own_entry(shard, s).0 != u64::from(s) + 1 {
            add(shard, s, Pair::Alloc, 3, 300);
            adds += 1;
        }
        add(shard, s, Pair::Free, 1, 100);
        let (_, held) = own_entry(shard, s);
        assert_eq!(held, [3, 300, 1, 100], "added in the cache");
        let (during, pending) = read_with(|| {
            let before = shared.load();
            // While this thread reads, it adds to a slot that would evict
            // `s`: the figures go to the shared counters directly.
            add(shard, t, Pair::Alloc, 1, 8);
            let after = shared.load();
            assert_eq!(after[0] - before[0], 1, "added to the shared counters");
            after
        });
        assert_eq!(pending_of(&pending, s), held, "not moved");
        assert_eq!(pending_of(&pending, t), [0; 4]);
        assert_eq!(own_entry(shard, s), (u64::from(s) + 1, held));
        // With no reading in progress an add to `t` evicts `s` (retried
        // while another test's reading defers it).
        let mut more = 0;
        while own_entry(shard, t).0 != u64::from(t) + 1 {
            add(shard, t, Pair::Alloc, 1, 8);
            more += 1;
        }
        let (after, pending) = read_with(|| shared.load());
        assert_eq!(pending_of(&pending, s), [0; 4], "moved");
        assert_eq!(pending_of(&pending, t), [1, 8, 0, 0]);
        assert!(
            after[0] >= during[0] + 3,
            "the move reached the shared counters"
        );
        // Nothing lost, nothing counted twice.
        let end = total_of(s, t);
        assert_eq!(
            [end[0] - start[0], end[1] - start[1]],
            [3 * adds + 1 + more, 300 * adds + 8 + 8 * more]
        );
        assert_eq!([end[2] - start[2], end[3] - start[3]], [1, 100]);
    }

    #[test]
    fn readings_lie_between_the_truth_before_and_after_while_a_thread_evicts() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // A thread alternates between runs of adds to two slots that share
        // its cache entry, so each switch evicts the other slot's figures to
        // the shared counters (the unattributed row, as above), while this
        // thread reads. Each reading of the two slots' total must lie
        // between the adds done when it began and when it ended: a move
        // counted twice would put it above, one missed below. (The
        // `Mutex` keeps the other tests of this module from adding to the
        // row meanwhile.)
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        const ADDS: u64 = 2_000_000;
        const RUN: u64 = 1_000;
        const READINGS: u64 = 1_000;
        let (s, t) = (11, 11 + ENTRIES as u32);
        let total = || total_of(s, t)[0];
        let start = total();
        let done = Arc::new(AtomicU64::new(0));
        let started = Arc::new(AtomicBool::new(false));
        // The worker goes on past `ADDS` until the reader has read enough
        // times: in an optimized build it could otherwise finish before the
        // first reading.
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (done, started, stop) =
                (Arc::clone(&done), Arc::clone(&started), Arc::clone(&stop));
            std::thread::spawn(move || {
                let shard = counters::current();
                assert!(shard.is_exclusive());
                started.store(true, Relaxed);
                let mut i = 0;
                while i < ADDS || !stop.load(Relaxed) {
                    let slot = if (i / RUN).is_multiple_of(2) { s } else { t };
                    add(shard, slot, Pair::Alloc, 1, 1);
                    i += 1;
                    done.store(i, Release);
                }
            })
        };
        while !started.load(Relaxed) {
            std::hint::spin_loop();
        }
        let mut readings = 0;
        while !worker.is_finished() {
            let before = done.load(Acquire);
            let now = total() - start;
            let after = done.load(Acquire);
            // `done` follows each add, so a reading may see one add more.
            assert!(
                (before..=after + 1).contains(&now),
                "a reading of {now} adds, made while {before}..={after} were done"
            );
            readings += 1;
            if readings == READINGS {
                stop.store(true, Relaxed);
            }
        }
        worker.join().unwrap();
        let adds = done.load(Acquire);
        assert_eq!(total() - start, adds, "every add counted once at the end");
    }

    #[test]
    fn a_threads_figures_are_read_where_it_left_them() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let (s, t) = (21, 21 + ENTRIES as u32);
        let start = total_of(s, t);
        std::thread::spawn(move || {
            let shard = counters::current();
            add(shard, s, Pair::Alloc, 5, 50);
            add(shard, s, Pair::Alloc, 2, 20);
        })
        .join()
        .unwrap();
        let end = total_of(s, t);
        assert_eq!([end[0] - start[0], end[1] - start[1]], [7, 70]);
    }
}
