//! More threads alive at once than there are counter shards
//! (`heapwatch::SHARDS`): the threads that find every shard leased share
//! the fallback shard. Their counts stay exact, their allocations are
//! attributed to their callsites, and how many overflowed is reported in
//! the snapshot and in `/metrics`.

mod common;

use std::hint::black_box;
use std::sync::{Arc, Barrier};

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// Threads beyond the shards (the main thread holds one shard too).
const EXTRA: usize = 40;
const THREADS: usize = heapwatch::SHARDS + EXTRA;
/// Blocks each thread allocates; it frees every other one and returns the
/// rest.
const BLOCKS: usize = 8;
const SIZE: usize = 200;

#[inline(never)]
fn overflow_worker_blocks(i: usize) -> Vec<Box<[u8]>> {
    let mut kept = Vec::with_capacity(BLOCKS / 2);
    for k in 0..BLOCKS {
        let b: Box<[u8]> = black_box(vec![(i + k) as u8; SIZE].into_boxed_slice());
        if k % 2 == 0 {
            kept.push(b);
        }
    }
    kept
}

fn threads_beyond_the_shards_count_exactly_and_are_reported() {
    let before = heapwatch::stats();
    // Every thread allocates once before the barrier, so each holds its
    // shard (or has found none) while all the others start.
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    black_box(vec![0u8; 16]);
                    barrier.wait();
                    overflow_worker_blocks(i)
                })
                .unwrap_or_else(|e| {
                    panic!(
                        "spawning thread {i} of {THREADS}: {e} (this test needs them all \
                         alive at once: check `ulimit -u` and the cgroup's pids.max)"
                    )
                })
        })
        .collect();
    let kept: Vec<Vec<Box<[u8]>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(barrier);
    let mid = heapwatch::stats();

    // The kept blocks (and the vectors holding them, and `kept` itself)
    // are live, counted exactly whichever shard their thread used.
    let kept_blocks = (THREADS * BLOCKS / 2) as u64;
    let lists = THREADS as u64;
    let list_bytes = (THREADS * (BLOCKS / 2) * std::mem::size_of::<Box<[u8]>>()) as u64;
    let outer = (THREADS * std::mem::size_of::<Vec<Box<[u8]>>>()) as u64;
    assert_eq!(
        (
            mid.live_blocks - before.live_blocks,
            mid.live_bytes - before.live_bytes
        ),
        (
            kept_blocks + lists + 1,
            kept_blocks * SIZE as u64 + list_bytes + outer
        ),
        "live blocks and bytes of the {THREADS} threads' kept blocks\n\
         before {before:?}\nafter {mid:?}"
    );

    let snap = heapwatch::snapshot();
    let overflows = snap.tables.shard_overflows;
    assert_eq!(snap.tables.shards_used, heapwatch::SHARDS as u64);
    assert!(
        overflows >= EXTRA as u64,
        "{THREADS} threads alive at once over {} shards: {overflows} reported overflowing",
        heapwatch::SHARDS
    );
    // Exact mode attributes every thread's blocks, those on the shared
    // shard included.
    let (allocs, frees, live_blocks, live_bytes) =
        common::figures_at(&snap, "overflow_worker_blocks");
    assert_eq!(
        (allocs, frees, live_blocks),
        (
            (THREADS * (BLOCKS + 1)) as u64,
            (THREADS * BLOCKS / 2) as u64,
            kept_blocks + lists
        ),
        "figures at overflow_worker_blocks (blocks and the kept list)"
    );
    assert_eq!(
        live_bytes,
        kept_blocks * SIZE as u64 + list_bytes,
        "live bytes at overflow_worker_blocks"
    );

    let mut text = String::new();
    heapwatch::render_prometheus(&snap, &heapwatch::budget_status(), &mut text);
    let line = format!("heapwatch_shard_overflows_total {overflows}");
    assert!(
        text.lines().any(|l| l == line),
        "/metrics lacks `{line}`:\n{text}"
    );

    // Freed again, exactly: nothing stays counted on the shared shard.
    drop((snap, text, line, kept));
    let after = heapwatch::stats();
    assert_eq!(after.live_bytes, before.live_bytes, "{after:?}");
    assert_eq!(after.live_blocks, before.live_blocks, "{after:?}");
    let snap = heapwatch::snapshot();
    let (_, _, live_blocks, live_bytes) = common::figures_at(&snap, "overflow_worker_blocks");
    assert_eq!((live_blocks, live_bytes), (0, 0));
}

/// Threads that run one after another take the same lowest free shard:
/// readers sum only the shards ever leased, so a program that never runs
/// many threads at once is read over few shards.
fn threads_one_after_another_reuse_the_lowest_shards() {
    let before = heapwatch::stats();
    for i in 0..300 {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || drop(black_box(vec![i as u8; SIZE])))
            .expect("spawn")
            .join()
            .unwrap();
    }
    let after = heapwatch::stats();
    // Each thread's block, and what spawning it allocates; all freed.
    assert!(
        after.allocations - before.allocations >= 300,
        "{before:?}\n{after:?}"
    );
    assert_eq!(
        (after.live_bytes, after.live_blocks),
        (before.live_bytes, before.live_blocks),
        "300 threads' blocks, all freed"
    );
    let used = heapwatch::snapshot().tables.shards_used;
    // The main thread's and the one the workers took in turn (the main
    // thread's snapshot may have started a helper of its own).
    assert!(
        (2..=4).contains(&used),
        "300 threads, one at a time, leased {used} shards"
    );
}

// One test at a time, run from `main`: libtest's threads would allocate
// meanwhile.
fn main() {
    assert!(heapwatch::installed());
    threads_one_after_another_reuse_the_lowest_shards();
    threads_beyond_the_shards_count_exactly_and_are_reported();
    println!("shard_overflow: ok");
}
