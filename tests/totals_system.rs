//! Exact totals with `Tracker<System>`.

mod common;

use heapwatch::Tracker;
use std::alloc::System;

#[global_allocator]
static GLOBAL: Tracker<System> = Tracker::new(System);

fn totals_are_exact_on_system() {
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
}

// `harness = false` (Cargo.toml): this file asserts exact process-wide
// deltas, and libtest's own threads allocate while a test starts.
fn main() {
    totals_are_exact_on_system();
    println!("totals_system: ok");
}
