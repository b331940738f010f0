//! `snapshot()` with the budget spent: its working state is heapwatch's
//! own (never refused, not the program's), and the snapshot it returns is
//! let through as an overage instead of aborting the process.

use heapwatch::{Budget, Sampling, Tracker};

const BUDGET: u64 = 16 << 20;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System)
    .with_budget(Budget::from_bytes(BUDGET))
    .with_sampling(Sampling::All);

#[inline(never)]
fn keep_some() -> Vec<Vec<u8>> {
    (0..100).map(|_| vec![1u8; 1000]).collect()
}

#[test]
fn a_snapshot_with_the_budget_spent() {
    let kept = keep_some();
    drop(heapwatch::snapshot()); // symbols and tables ready

    // Spend the budget down to the byte.
    let mut spent: Vec<Vec<u8>> = Vec::with_capacity(100_000);
    for size in [1 << 20, 64 << 10, 4096, 256, 16, 1] {
        while spent.len() < spent.capacity() {
            let mut v = Vec::new();
            if v.try_reserve_exact(size).is_err() {
                break;
            }
            spent.push(v);
        }
    }
    let mut probe: Vec<u8> = Vec::new();
    let spent_out = probe.try_reserve_exact(64).is_err();
    let before = heapwatch::stats();

    // Before the fix: "memory allocation of 160 bytes failed", abort.
    let snap = heapwatch::snapshot();
    let after = heapwatch::stats();
    let found = snap
        .callsites
        .iter()
        .any(|c| c.frames.iter().any(|f| f.function.contains("keep_some")));
    let live_at_sites: u64 = snap.callsites.iter().map(|c| c.live_bytes).sum();
    drop(spent);

    // Assert with room again (a failed assertion's message must not be
    // refused in turn).
    heapwatch::set_budget(Budget::UNLIMITED);
    assert!(spent_out, "the budget was not spent");
    assert!(found, "the snapshot lost its callsites");
    assert!(
        after.budget_overages > before.budget_overages,
        "the snapshot needed no room: {before:?} {after:?}"
    );
    // The working state is not the program's: no callsite holds it, so the
    // callsites hold no more than the totals read before them (exact mode,
    // one thread allocating).
    assert!(
        live_at_sites <= snap.totals.live_bytes,
        "callsites hold {live_at_sites} B, totals {} B",
        snap.totals.live_bytes
    );
    drop((kept, snap));
}
