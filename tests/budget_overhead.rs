//! heapwatch's own memory is not charged to the budget: building snapshots
//! (which parses the binary's debug information, tens of MiB) under a
//! small budget neither aborts the process nor takes the program's room.

use heapwatch::{Budget, BudgetLevel, Sampling, Tracker};

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
    let overhead_before = heapwatch::stats().overhead_bytes;

    // Before the fix, the symbolizer's allocations were refused here and
    // the process aborted ("memory allocation of ... bytes failed").
    let mut snap = heapwatch::snapshot();
    for _ in 0..3 {
        snap = heapwatch::snapshot();
    }
    let found = snap
        .callsites
        .iter()
        .any(|c| c.frames.iter().any(|f| f.function.contains("keep_some")));
    let s = heapwatch::stats();
    let status = heapwatch::budget_status();

    // The program still has its budget, and no more.
    let mut room: Vec<u8> = Vec::new();
    let room_ok = room.try_reserve_exact((BUDGET / 2) as usize).is_ok();
    let mut over: Vec<u8> = Vec::new();
    let over_refused = over.try_reserve_exact(BUDGET as usize).is_err();
    let denials = heapwatch::stats().budget_denials;
    drop((room, kept, snap));

    // Assert with the budget lifted: a failed assertion prints a backtrace,
    // and std's symbolizer, refused under this budget, would deadlock in
    // the out-of-memory hook instead of failing the test.
    heapwatch::set_budget(Budget::UNLIMITED);
    assert!(found, "the snapshot lost its callsites");
    assert!(
        s.overhead_bytes > BUDGET,
        "this test needs heapwatch's own memory ({} B) to pass the budget ({BUDGET} B)",
        s.overhead_bytes
    );
    // The debug information parsed to symbolize (tens of MiB) is freed
    // once the snapshot is built; the frames stay in heapwatch's caches.
    let grown = s.overhead_bytes.saturating_sub(overhead_before);
    assert!(
        grown < 8 << 20,
        "heapwatch kept {grown} more bytes after 4 snapshots"
    );
    // The program's figures describe the program alone.
    assert!(s.live_bytes < BUDGET / 2, "{s:?}");
    assert!(s.peak_bytes < BUDGET, "{s:?}");
    assert!(status.reserved_bytes < BUDGET / 2, "{status:?}");
    assert_eq!(status.level, BudgetLevel::Normal, "{status:?}");
    assert_eq!(s.budget_denials, 0, "{s:?}");
    assert!(room_ok, "half the budget was refused");
    assert!(
        over_refused,
        "an allocation of the whole budget went through"
    );
    assert_eq!(denials, 1);
}
