//! Mode switches seen from other threads, and the budget's bookkeeping
//! under them.
//!
//! - A switch made by one thread reaches another thread that is idle at
//!   that moment (and has allocated before, so it has a countdown and
//!   credit of its own): its next allocation is counted the new way, as
//!   `set_sampling` documents.
//! - Nothing is lost in the bookkeeping: after threads allocate, grow,
//!   shrink and free blocks of every size while another thread switches the
//!   sampling mode under them, and exit, the reservation is back where it
//!   was (within what the main thread itself may hold), and the totals are
//!   exact.
//!
//! `harness = false` (Cargo.toml): the second check compares process-wide
//! figures, and libtest's own threads allocate while a test starts.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::*};
use std::time::Duration;

use heapwatch::{Sampling, Tracker, CHUNK_BYTES};

mod common;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::Off);

/// Ten 64-byte blocks, from a function of their own.
#[allow(clippy::vec_box)]
#[inline(never)]
fn made_after_switch(out: &mut Vec<Box<[u8; 64]>>) {
    for _ in 0..10 {
        out.push(black_box(Box::new([3u8; 64])));
    }
}

/// Waits until `step` reaches `n`, without allocating.
fn wait_for(step: &AtomicU32, n: u32) {
    while step.load(SeqCst) < n {
        std::thread::yield_now();
    }
}

fn a_switch_reaches_an_idle_thread() {
    heapwatch::set_sampling(Sampling::Off);
    // The two threads hand over with an atomic counter, not a channel: a
    // channel may allocate (its first blocking receive does), and the
    // worker must not be allocating when the switch comes. The worker moves
    // the counter to odd values, the main thread to even ones.
    static STEP: AtomicU32 = AtomicU32::new(0);
    STEP.store(0, SeqCst);
    let worker = std::thread::spawn(|| {
        // Allocate in `Off` mode first, so that the thread has a shard, a
        // countdown and credit of its own when the switch comes.
        let warm: Vec<Vec<u8>> = (0..100).map(|i| vec![0u8; 16 + i]).collect();
        drop(black_box(warm));
        let mut kept = Vec::with_capacity(10);
        STEP.store(1, SeqCst);
        wait_for(&STEP, 2);
        made_after_switch(&mut kept);
        STEP.store(3, SeqCst);
        wait_for(&STEP, 4);
        drop(kept);
    });
    wait_for(&STEP, 1);
    heapwatch::set_sampling(Sampling::All);
    STEP.store(2, SeqCst);
    wait_for(&STEP, 3);
    let figures = common::figures_at(&heapwatch::snapshot(), "made_after_switch");
    STEP.store(4, SeqCst);
    worker.join().unwrap();
    heapwatch::set_sampling(Sampling::Off);
    assert_eq!(
        figures,
        (10, 0, 10, 640),
        "the worker's allocations after the switch must all be recorded"
    );
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Mostly small sizes, some over a credit chunk (64 KiB), a few far over.
fn size(x: &mut u64) -> usize {
    let r = xorshift(x);
    match r % 64 {
        0 => 70_000 + (r >> 8) as usize % 250_000,
        1..=4 => 1 + (r >> 8) as usize % 70_000,
        _ => 1 + (r >> 8) as usize % 512,
    }
}

/// Allocations, reallocations both ways and frees, in random order.
fn churn(seed: u64, ops: usize) {
    let mut x = seed | 1;
    let mut slots: Vec<Vec<u8>> = (0..64).map(|_| Vec::new()).collect();
    for _ in 0..ops {
        let r = xorshift(&mut x);
        let Some(slot) = slots.get_mut((r >> 32) as usize % 64) else {
            continue;
        };
        match r % 10 {
            0..=3 => *slot = black_box(Vec::with_capacity(size(&mut x))),
            4..=5 => {
                let n = size(&mut x);
                slot.reserve_exact(n);
            }
            6 => slot.shrink_to(slot.capacity() / 3),
            _ => *slot = Vec::new(),
        }
        black_box(&slot);
    }
}

fn reservation_returns_after_churn_across_paths_and_switches() {
    heapwatch::set_sampling(Sampling::Off);
    let slack = || {
        let s = heapwatch::stats();
        let b = heapwatch::budget_status();
        (
            i128::from(b.reserved_bytes) - i128::from(s.live_bytes) - i128::from(s.overhead_bytes),
            s,
        )
    };
    let (slack_before, before) = slack();

    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|i| s.spawn(move || churn(0x9e37_79b9 * (i + 1), 40_000)))
            .collect();
        let modes = [
            Sampling::Bytes(4096),
            Sampling::All,
            Sampling::Off,
            Sampling::Bytes(512 * 1024),
        ];
        let done = &done;
        let switcher = s.spawn(move || {
            let mut i = 0usize;
            while !done.load(Relaxed) {
                if let Some(&m) = modes.get(i % modes.len()) {
                    heapwatch::set_sampling(m);
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            i
        });
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Relaxed);
        let switches = switcher.join().unwrap();
        assert!(switches > 1, "the mode must have changed under the workers");
    });
    heapwatch::set_sampling(Sampling::Off);

    let (slack_after, after) = slack();
    assert_eq!(after.live_bytes, before.live_bytes, "{after:?}");
    assert_eq!(after.live_blocks, before.live_blocks, "{after:?}");
    // The reservation is live bytes plus the credit threads hold. The
    // workers exited and gave theirs back; the main thread holds at most
    // `2 × CHUNK_BYTES` at either reading.
    let drift = slack_after - slack_before;
    assert!(
        drift.unsigned_abs() <= 2 * u128::from(CHUNK_BYTES),
        "reservation drifted by {drift} bytes\nbefore {before:?}\nafter {after:?}"
    );
}

fn main() {
    a_switch_reaches_an_idle_thread();
    reservation_returns_after_churn_across_paths_and_switches();
    println!("mode_switch_threads: ok");
}
