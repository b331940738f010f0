//! heapwatch's own memory is not charged to the budget: building snapshots
//! (which parses the binary's debug information, tens of MiB) under a
//! small budget neither aborts the process nor takes the program's room.

use heapwatch::{Budget, Sampling, Tracker};

const BUDGET: u64 = 4 << 20;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System)
    .with_budget(Budget::from_bytes(BUDGET))
    .with_sampling(Sampling::All);

#[inline(never)]
fn keep_some() -> Vec<Vec<u8>> {
    (0..100).map(|_| vec![1u8; 1000]).collect()
}

#[test]
fn snapshots_under_a_small_budget_leave_the_program_its_budget() {
    let kept = keep_some();

    // Before the fix, the symbolizer's allocations were refused here and
    // the process aborted ("memory allocation of ... bytes failed").
    let mut snap = heapwatch::snapshot();
    for _ in 0..3 {
        snap = heapwatch::snapshot();
    }
    assert!(
        snap.callsites
            .iter()
            .any(|c| c.frames.iter().any(|f| f.function.contains("keep_some"))),
        "the snapshot lost its callsites"
    );
    let s = heapwatch::stats();
    assert!(
        s.overhead_bytes > BUDGET,
        "this test needs heapwatch's own memory ({} B) to pass the budget ({BUDGET} B)",
        s.overhead_bytes
    );

    // The program's figures describe the program alone.
    assert!(s.live_bytes < BUDGET / 2, "{s:?}");
    assert!(s.peak_bytes < BUDGET, "{s:?}");
    let status = heapwatch::budget_status();
    assert!(status.reserved_bytes < BUDGET / 2, "{status:?}");
    assert_eq!(status.level, heapwatch::BudgetLevel::Normal, "{status:?}");
    assert_eq!(s.budget_denials, 0, "{s:?}");

    // The program still has its budget, and no more.
    let mut room: Vec<u8> = Vec::new();
    assert!(room.try_reserve_exact((BUDGET / 2) as usize).is_ok());
    let mut over: Vec<u8> = Vec::new();
    assert!(over.try_reserve_exact(BUDGET as usize).is_err());
    assert_eq!(heapwatch::stats().budget_denials, 1);

    drop((room, kept, snap));
}
