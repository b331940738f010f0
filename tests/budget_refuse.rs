//! Budget with policy `Refuse`: refusal reaches `try_reserve` as `Err`, the
//! program carries on, counters stay exact, thresholds are reported outside
//! the allocator, and racing threads never take live bytes over the budget.

mod common;

use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use heapwatch::{Budget, BudgetLevel, Thresholds, Tracker, CHUNK_BYTES};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_budget(Budget::from_mb(64));

fn reserved() -> u64 {
    heapwatch::budget_status().reserved_bytes
}

fn budget_refuses_and_the_program_carries_on() {
    // The builder's budget is set up by the first allocation, which std
    // makes before `main` in most builds, not all.
    drop(std::hint::black_box(Box::new(0u8)));
    assert_eq!(heapwatch::stats().budget_bytes, Some(64 << 20));

    // 1. An allocation over budget is refused: try_reserve gets Err and no
    //    counter but budget_denials moves.
    let mut v: Vec<u8> = Vec::new();
    let before = heapwatch::stats();
    assert!(v.try_reserve_exact(128 << 20).is_err());
    let after = heapwatch::stats();
    assert_eq!(after.budget_denials, before.budget_denials + 1);
    assert_eq!(
        (after.allocations, after.live_bytes, after.allocated_bytes),
        (
            before.allocations,
            before.live_bytes,
            before.allocated_bytes
        )
    );

    // 2. Within budget it works, and a refused growing realloc leaves the
    //    old block live and counted as it was.
    v.try_reserve_exact(1 << 20).expect("1 MiB fits in 64 MiB");
    v.extend_from_slice(&[7u8; 1000]);
    let before = heapwatch::stats();
    assert!(
        v.try_reserve_exact(100 << 20).is_err(),
        "realloc growth must be refused"
    );
    let after = heapwatch::stats();
    assert_eq!(after.live_bytes, before.live_bytes);
    assert_eq!(after.reallocs, before.reallocs);
    assert_eq!(after.budget_denials, before.budget_denials + 1);
    assert_eq!(&v[..1000], &[7u8; 1000][..], "the old block is intact");
    drop(v);

    // 3. Thresholds: crossing 80% and 95% is visible from outside the hook,
    //    as counters and through the watcher callback.
    let (tx, rx) = mpsc::channel();
    let watch = heapwatch::watch_budget(Duration::from_millis(5), move |e| {
        let _ = tx.send(e.reached);
    });
    heapwatch::set_budget_thresholds(Thresholds::new(80, 95));
    let base = reserved();
    heapwatch::set_budget(Budget::from_bytes(base + (16 << 20)));
    let s0 = heapwatch::budget_status();
    let big = vec![1u8; 14 << 20]; // 87.5% of the headroom: >= 80%
    let s1 = heapwatch::budget_status();
    assert!(s1.level >= BudgetLevel::Warning, "{s1:?}");
    assert_eq!(s1.warning_crossings, s0.warning_crossings + 1, "{s1:?}");
    let more = vec![1u8; (1 << 20) + (1 << 19)]; // 96.9%: >= 95%
    let s2 = heapwatch::budget_status();
    assert_eq!(s2.level, BudgetLevel::Critical, "{s2:?}");
    assert_eq!(s2.critical_crossings, s0.critical_crossings + 1);
    let mut seen = Vec::new();
    while let Ok(level) = rx.recv_timeout(Duration::from_secs(10)) {
        seen.push(level);
        if level >= BudgetLevel::Critical {
            break;
        }
    }
    assert!(
        seen.contains(&BudgetLevel::Critical),
        "callback saw {seen:?}"
    );
    drop((big, more));
    drop(watch);
    assert_eq!(heapwatch::budget_status().level, BudgetLevel::Normal);

    // 4. Eight threads race to the limit: live bytes never pass the budget,
    //    and refusals start only within the documented slack.
    const THREADS: usize = 8;
    const BLOCK: usize = 64 * 1024;
    let base = reserved();
    let budget = base + (32 << 20);
    heapwatch::set_budget(Budget::from_bytes(budget));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                // `held` is an infallible allocation: made before the race,
                // or a thread that starts late could find the budget spent
                // by the others and abort.
                let mut held: Vec<Vec<u8>> = Vec::with_capacity(1024);
                barrier.wait();
                let mut max_reserved = 0;
                loop {
                    let mut b = Vec::new();
                    if b.try_reserve_exact(BLOCK).is_err() {
                        break;
                    }
                    b.resize(BLOCK, 1);
                    held.push(b);
                    max_reserved = max_reserved.max(reserved());
                }
                // Everyone has been refused once; wait for all before
                // freeing, so the measurement below sees the high point.
                barrier.wait();
                (held.len(), max_reserved)
            })
        })
        .collect();
    let results: Vec<(usize, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let held_bytes: u64 = results.iter().map(|r| (r.0 * BLOCK) as u64).sum();
    let max_reserved = results.iter().map(|r| r.1).max().unwrap();
    assert!(
        max_reserved <= budget,
        "reservation {max_reserved} passed the budget {budget}"
    );
    assert!(heapwatch::stats().peak_bytes <= budget.max(s2.peak_bytes));
    // Refused early by at most: every thread's credit (2 chunks each, main
    // included), one block each, and the `held` vectors themselves.
    let slack =
        (THREADS as u64 + 1) * (2 * CHUNK_BYTES + BLOCK as u64) + (THREADS * 1024 * 24) as u64;
    assert!(
        held_bytes + slack >= budget - base,
        "held {held_bytes} of {} available: refused too early",
        budget - base
    );

    // 5. After the refusals, memory was freed (threads joined) and the
    //    program allocates normally again.
    let again = vec![0u8; 16 << 20];
    assert_eq!(again.len(), 16 << 20);
    drop(again);
    heapwatch::set_budget(Budget::UNLIMITED);
    let big = vec![0u8; 128 << 20];
    drop(big);

    // 6. A thread that frees what another allocated hands the credit those
    //    frees give it back to the pool as it goes (not only when it exits):
    //    16 MiB freed leave it at most 2 chunks.
    let before_blocks = reserved();
    let blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 4096]).collect();
    assert!(reserved() >= before_blocks + (16 << 20));
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>();
    let freer = std::thread::spawn(move || {
        drop(rx.recv().unwrap());
        reserved()
    });
    tx.send(blocks).unwrap();
    let after_free = freer.join().unwrap();
    // Main's and the freeing thread's credit (2 chunks each), and the
    // channel's own blocks.
    let allowed = before_blocks + 4 * CHUNK_BYTES + (64 << 10);
    assert!(
        after_free <= allowed,
        "16 MiB freed on another thread left the reservation at {after_free} (at most {allowed})"
    );
    common::exact_totals(&GLOBAL);
}

// `harness = false` (Cargo.toml): this file asserts exact process-wide
// deltas, and libtest's own threads allocate while a test starts.
fn main() {
    budget_refuses_and_the_program_carries_on();
    println!("budget_refuse: ok");
}
