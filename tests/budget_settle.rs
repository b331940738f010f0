//! An allocation the budget admits but the inner allocator fails (a
//! `try_reserve` of more than the machine has) leaves no trace: the
//! reservation it took goes back to the pool, so other threads'
//! allocations are not refused against it, and the peak never shows it.

use std::alloc::{GlobalAlloc, Layout, System};

use heapwatch::{Budget, Tracker, CHUNK_BYTES};

/// The inner allocator: `System`, failing every request over 1 GiB as an
/// allocator does when the machine has no more memory.
struct FailsOver1GiB;

const INNER_LIMIT: usize = 1 << 30;

/// What the failing requests ask for (0 where it does not fit a `usize`:
/// the test is skipped there).
const FOUR_GIB: usize = (4u64 << 30) as usize;

// SAFETY: forwards to `System` with the caller's arguments, or returns
// null (a failed allocation), which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for FailsOver1GiB {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > INNER_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > INNER_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracker<FailsOver1GiB> = Tracker::new(FailsOver1GiB);

const MIB: u64 = 1 << 20;

/// What the calling thread's allocations reserve beyond the live bytes:
/// at most its credit, two chunks.
fn assert_reservation_near_live(when: &str) {
    let reserved = heapwatch::budget_status().reserved_bytes;
    let live = heapwatch::stats().live_bytes;
    assert!(
        reserved <= live + 2 * CHUNK_BYTES,
        "{when}: reserved {reserved} B with {live} B live (at most {} B of credit)",
        2 * CHUNK_BYTES
    );
}

fn failed_allocations_leave_no_trace() {
    // 1. No budget: a failed allocation, then a failed growth, do not
    //    raise the peak.
    let peak_before = heapwatch::stats().peak_bytes;
    assert!(Vec::<u8>::new().try_reserve_exact(FOUR_GIB).is_err());
    let mut v = vec![7u8; 1024];
    assert!(v.try_reserve_exact(FOUR_GIB).is_err());
    assert_eq!((v.len(), v[1023]), (1024, 7), "the block is intact");
    let peak = heapwatch::stats().peak_bytes;
    assert!(
        peak < peak_before + MIB,
        "failed allocations of 4 GiB raised the peak from {peak_before} to {peak}"
    );
    assert_reservation_near_live("after two failed allocations");

    // 2. A budget of 2 GiB admits 1.5 GiB, which the inner allocator
    //    fails: no denial, the reservation back near the live bytes, and
    //    another thread's 600 MiB admitted.
    heapwatch::set_budget(Budget::from_gb(2));
    let denials = heapwatch::stats().budget_denials;
    assert!(Vec::<u8>::new().try_reserve_exact(1536 << 20).is_err());
    assert_eq!(
        heapwatch::stats().budget_denials,
        denials,
        "not refused by the budget"
    );
    assert_reservation_near_live("after a failed allocation under a budget");
    assert!(v.try_reserve_exact(1536 << 20).is_err());
    assert_reservation_near_live("after a failed growth under a budget");
    let other = std::thread::spawn(|| {
        let mut w = Vec::<u8>::new();
        let ok = w.try_reserve_exact(600 << 20).is_ok();
        (ok, heapwatch::stats().peak_bytes)
    });
    let (ok, peak_then) = other.join().unwrap();
    assert!(
        ok,
        "600 MiB refused: the failed 1.5 GiB still held the budget"
    );
    let peak = heapwatch::stats().peak_bytes;
    assert!(
        peak_then >= 600 * MIB && peak < 601 * MIB + peak_before,
        "peak {peak} B (600 MiB held: {peak_then} B)"
    );
    assert_eq!(heapwatch::stats().budget_denials, denials);
    drop(v);

    // 3. Policy Warn, 1 GiB: 1.5 GiB is let through over the budget, and
    //    the inner allocator fails it: no overage is counted.
    heapwatch::set_budget(Budget::from_gb(1));
    heapwatch::set_budget_policy(heapwatch::Policy::Warn);
    let overages = heapwatch::budget_status().overages;
    assert!(Vec::<u8>::new().try_reserve_exact(1536 << 20).is_err());
    assert_eq!(heapwatch::budget_status().overages, overages);
    assert_reservation_near_live("after a failed allocation over a Warn budget");
    heapwatch::set_budget_policy(heapwatch::Policy::Refuse);

    // 4. Failing allocations on one thread while another allocates: the
    //    peak never takes in the reservations of the failing ones, though
    //    they are in the pool while the inner allocator works.
    heapwatch::set_budget(Budget::UNLIMITED);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut failed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(Vec::<u8>::new().try_reserve_exact(FOUR_GIB).is_err());
                failed += 1;
            }
            failed
        })
    };
    for _ in 0..20_000 {
        std::hint::black_box(vec![1u8; 1 << 20]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failed = failing.join().unwrap();
    let peak = heapwatch::stats().peak_bytes;
    assert!(failed > 0);
    assert!(
        peak < 601 * MIB + peak_before,
        "peak {peak} B after {failed} failed 4 GiB allocations on another thread"
    );
}

// `harness = false` (Cargo.toml): the assertions read process-wide
// figures, which libtest's own threads would move.
fn main() {
    // Its failing requests are 4 GiB, more than a 32-bit address space.
    if cfg!(target_pointer_width = "64") {
        failed_allocations_leave_no_trace();
        println!("budget_settle: ok");
    } else {
        println!("budget_settle: skipped (64-bit targets only)");
    }
}
