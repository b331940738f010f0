//! Exact totals with `Tracker<Jemalloc>`.

mod common;

use heapwatch::Tracker;
use tikv_jemallocator::Jemalloc;

#[global_allocator]
static GLOBAL: Tracker<Jemalloc> = Tracker::new(Jemalloc);

fn totals_are_exact_on_jemalloc() {
    // Set up by the first allocation, which std makes before `main` in most
    // builds, not all.
    drop(std::hint::black_box(Box::new(0u8)));
    assert!(heapwatch::installed());
    common::exact_totals(&GLOBAL);
    common::threads_churn_exact();
    let s = heapwatch::stats();
    assert!(s.peak_bytes >= s.live_bytes);
    assert_eq!(s.budget_bytes, None);
    assert_eq!(s.budget_denials, 0);

    // jemalloc's own statistics come with every snapshot.
    let snap = heapwatch::snapshot();
    let a = snap
        .allocator
        .expect("jemalloc inner allocator: stats expected");
    assert_eq!(a.name, "jemalloc");
    assert!(a.allocated > 0 && a.resident >= a.active / 2, "{a:?}");
}

// `harness = false` (Cargo.toml): this file asserts exact process-wide
// deltas, and libtest's own threads allocate while a test starts.
fn main() {
    totals_are_exact_on_jemalloc();
    println!("totals_jemalloc: ok");
}
