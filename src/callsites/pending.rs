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
//! Readers ([`fold_into`]) add every cache's figures to the shared ones. A
//! pending figure is a counter like any other (it only grows), except
//! during an eviction, when its value moves from the entry to the shared
//! counter. Each cache has a sequence number, odd while an eviction is in
//! progress; a reader that sees any sequence number change while it reads
//! reads again (a bounded number of times: after a fork, a cache whose
//! holder was evicting in another thread stays odd in the child forever).
//!
//! An exiting thread's figures stay in its shard's cache, which is read
//! like the others, and the shard's next holder carries on with it.
//!
//! Memory: `SHARDS` caches of `ENTRIES` entries of 40 bytes (static, zero
//! pages until a thread uses its cache).

use std::sync::atomic::{fence, AtomicU64, Ordering::*};

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
/// entry is evicted (or the thread is on the shared fallback shard, which
/// has no cache: then to the callsite's shared counters directly).
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
    if entry.key.load(Relaxed) != key {
        evict(cache, entry, key);
    }
    let i = pair as usize;
    // Only the shard's holder writes its cache: a plain load and store.
    if let (Some(a), Some(b)) = (entry.figures.get(i), entry.figures.get(i + 1)) {
        a.store(a.load(Relaxed).wrapping_add(w), Relaxed);
        b.store(b.load(Relaxed).wrapping_add(bytes), Relaxed);
    }
}

/// Moves `entry`'s figures to its callsite's shared counters and gives the
/// entry to `key`, inside an odd sequence number.
#[cold]
#[inline(never)]
fn evict(cache: &Cache, entry: &Entry, key: u64) {
    let seq = cache.seq.load(Relaxed);
    cache.seq.store(seq.wrapping_add(1), Relaxed);
    // Orders the odd sequence number before the moves below: a reader that
    // sees any of them also sees the sequence number change.
    fence(Release);
    let old = entry.key.load(Relaxed);
    if old != 0 {
        let shared = super::counters_of((old - 1) as u32);
        let f: [u64; 4] =
            std::array::from_fn(|i| entry.figures.get(i).map_or(0, |c| c.load(Relaxed)));
        shared.add(Pair::Alloc, f[0], f[1]);
        shared.add(Pair::Free, f[2], f[3]);
    }
    for c in &entry.figures {
        c.store(0, Relaxed);
    }
    entry.key.store(key, Relaxed);
    cache.seq.store(seq.wrapping_add(2), Release);
}

/// How many times a reader reads again when an eviction overlapped its
/// reading, before it keeps the last reading.
const READ_ATTEMPTS: usize = 64;

/// Reads the shared counters with `read_shared`, and every thread's pending
/// figures as `(slot, [allocs_w, alloc_bytes, frees_w, freed_bytes])`, for
/// the caller to add up; reads again while evictions overlap the reading.
/// Allocates: call outside the hook.
pub(super) fn read_with<T>(mut read_shared: impl FnMut() -> T) -> (T, Vec<(u32, [u64; 4])>) {
    let mut seqs = [0u64; SHARDS];
    let mut pending: Vec<(u32, [u64; 4])> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= READ_ATTEMPTS;
        let mut odd = false;
        for (s, cache) in seqs.iter_mut().zip(&CACHES) {
            *s = cache.seq.load(Acquire);
            odd |= *s & 1 == 1;
        }
        if odd && !last {
            std::thread::yield_now();
            continue;
        }
        pending.clear();
        for cache in &CACHES {
            for e in &cache.entries {
                let key = e.key.load(Relaxed);
                if key == 0 {
                    continue;
                }
                let f: [u64; 4] =
                    std::array::from_fn(|i| e.figures.get(i).map_or(0, |c| c.load(Relaxed)));
                if f != [0; 4] {
                    pending.push(((key - 1) as u32, f));
                }
            }
        }
        let shared = read_shared();
        fence(Acquire);
        let unchanged = seqs
            .iter()
            .zip(&CACHES)
            .all(|(s, cache)| cache.seq.load(Relaxed) == *s);
        if unchanged || last {
            return (shared, pending);
        }
    }
}

/// Bytes of the caches (static).
pub(super) fn static_bytes() -> usize {
    std::mem::size_of_val(&CACHES)
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

    #[test]
    fn an_eviction_during_a_reading_is_not_counted_twice() {
        // No tracker is installed in unit tests: the callsite table is not
        // mapped, so every slot's shared counters are the unattributed row.
        // Slots `s` and `s + ENTRIES` share a cache entry.
        let shard = counters::current();
        assert!(shard.is_exclusive());
        let shared = super::super::counters_of(0);
        let s = 7;
        add(shard, s, Pair::Alloc, 3, 300);
        add(shard, s, Pair::Free, 1, 100);
        let mut reads = 0;
        let (seen, pending) = read_with(|| {
            reads += 1;
            if reads == 1 {
                // Between the reader's look at the caches and at the shared
                // counters, the holder moves slot `s`'s figures out.
                add(shard, s + ENTRIES as u32, Pair::Alloc, 1, 8);
            }
            shared.load()
        });
        assert_eq!(reads, 2, "the overlapping eviction makes it read again");
        assert_eq!(
            pending_of(&pending, s),
            [0; 4],
            "moved to the shared counters"
        );
        assert_eq!(pending_of(&pending, s + ENTRIES as u32), [1, 8, 0, 0]);
        let (again, _) = read_with(|| shared.load());
        assert_eq!(seen, again, "no eviction since: the same shared figures");
    }

    #[test]
    fn a_threads_figures_are_read_where_it_left_them() {
        let shard = counters::current();
        let s = 21;
        add(shard, s, Pair::Alloc, 5, 50);
        add(shard, s, Pair::Alloc, 2, 20);
        let (_, pending) = read_with(|| ());
        assert_eq!(pending_of(&pending, s), [7, 70, 0, 0]);
    }
}
