//! Settings made with the public setters win over the tracker's builder,
//! even when made before the tracker's first allocation (which applies the
//! builder). This process's global allocator is System; the tracker is used
//! directly, so its first allocation happens where the test says.

use std::alloc::{GlobalAlloc, Layout, System};

use heapwatch::{Budget, Policy, Sampling, Thresholds, Tracker, Unwinder};

static TRACKER: Tracker<System> = Tracker::new(System)
    .with_sampling(Sampling::All)
    .with_budget(Budget::from_mb(1))
    .with_policy(Policy::Refuse)
    .with_thresholds(Thresholds::new(50, 60))
    .with_unwinder(Unwinder::FramePointers);

#[test]
fn runtime_settings_survive_the_first_allocation() {
    assert!(!heapwatch::installed());
    // Before the first allocation every figure is zero but heapwatch's
    // static tables, which `overhead_bytes` always counts.
    let before = heapwatch::stats();
    assert_eq!(
        [
            before.live_bytes,
            before.live_blocks,
            before.peak_bytes,
            before.allocations,
            before.frees,
            before.reallocs,
            before.allocated_bytes,
            before.freed_bytes,
            before.budget_denials,
            before.budget_overages,
            before.overhead_blocks,
        ],
        [0; 11],
        "{before:?}"
    );
    assert_eq!(before.budget_bytes, None);
    assert!(before.overhead_bytes > 0, "{before:?}");
    heapwatch::set_sampling(Sampling::Off);
    heapwatch::set_budget(Budget::from_mb(64));
    assert_eq!(heapwatch::stats().budget_bytes, Some(64 << 20));
    heapwatch::set_budget_policy(Policy::Warn);
    heapwatch::set_unwinder(Unwinder::Backtrace);

    let layout = Layout::from_size_align(4 << 20, 8).unwrap();
    // SAFETY: non-zero size; freed below with the same layout.
    let p = unsafe { TRACKER.alloc(layout) };
    assert!(
        !p.is_null(),
        "4 MiB fits the 64 MiB set at run time, not the builder's 1 MiB"
    );
    assert!(heapwatch::installed());

    assert_eq!(heapwatch::sampling(), Sampling::Off);
    let st = heapwatch::budget_status();
    assert_eq!(st.budget, Budget::from_mb(64));
    assert_eq!(st.policy, Policy::Warn);
    // Not set at run time: the builder's value applies.
    assert_eq!(st.thresholds, Thresholds::new(50, 60));
    assert_eq!(heapwatch::active_unwinder(), "backtrace");
    // SAFETY: `p` came from `TRACKER.alloc(layout)`.
    unsafe { TRACKER.dealloc(p, layout) };
}
