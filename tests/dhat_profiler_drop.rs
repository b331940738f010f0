//! Dropping a `dhat::Profiler` under `Tracker<dhat::Alloc>`: dhat frees the
//! tables it allocated (through the global allocator, while serving
//! heapwatch's calls into it) on the program's thread. heapwatch counted
//! those tables as its overhead when they were made, so it must count their
//! frees as overhead too: the program's figures stay exact and the budget
//! keeps its bound. They used to be counted as the program's frees: the
//! program's live bytes fell by megabytes (clamped at zero) and a Refuse
//! budget let the program hold 1.5x its size.

use heapwatch::{Budget, Sampling, Tracker};

mod common;
use common::{keep_at_depth, signed_live as live};

const BUDGET: u64 = 8 << 20;

#[global_allocator]
static GLOBAL: Tracker<dhat::Alloc> = Tracker::new(dhat::Alloc)
    .with_budget(Budget::from_bytes(BUDGET))
    .with_sampling(Sampling::All);

fn main() {
    drop(heapwatch::snapshot());
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(200);
    let before = live();

    let profiler = dhat::Profiler::builder().testing().build();
    for depth in 0..200 {
        keep_at_depth(depth % 40, 1000, &mut kept);
    }
    for _ in 0..3 {
        drop(heapwatch::snapshot());
    }
    let overhead_profiling = heapwatch::stats().overhead_bytes;
    drop(profiler);

    let after = live();
    assert_eq!(
        after,
        (before.0 + 200, before.1 + 200 * 1000),
        "the program holds 200 more blocks of 1,000 bytes than before the profiler"
    );
    let st = heapwatch::stats();
    assert!(
        st.overhead_bytes < overhead_profiling,
        "dhat's tables were freed as overhead: {} -> {}",
        overhead_profiling,
        st.overhead_bytes
    );
    assert_eq!(heapwatch::snapshot().unattributed.inner_blocks_untracked, 0);

    // The budget still holds: fill it in 64 KiB blocks until refused.
    let mut filled: Vec<Vec<u8>> = Vec::with_capacity(1000);
    loop {
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(64 << 10).is_err() {
            break;
        }
        filled.push(v);
    }
    let held = (filled.len() as u64) * (64 << 10) + 200 * 1000;
    assert!(
        held <= BUDGET,
        "the program holds {held} bytes under a budget of {BUDGET}"
    );
    assert!(
        held > BUDGET - (1 << 20),
        "the budget refused early: {held} of {BUDGET}"
    );
    drop(filled);
    drop(kept);
    println!("dhat_profiler_drop: ok");
}
