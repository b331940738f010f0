//! heapwatch itself leaks nothing: dhat watches while snapshots are built,
//! symbolized, serialized, parsed and diffed 100 times.
//!
//! Callsites are recorded exactly first; the rounds then run with sampling
//! off, so they add no callsite of their own and every cache is warm: what
//! dhat sees live after the rounds must equal what it saw before, to the
//! block.
//!
//! `harness = false`: dhat's allocator lock and the `backtrace` crate's
//! lock are taken in opposite orders by dhat (allocate, then trace) and by
//! any symbolizer (resolve, then allocate), so with `dhat::Alloc` no other
//! thread may allocate while a snapshot is symbolized (dhat-rs #18, #25).
//! Without libtest's threads, this process has exactly one.

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<dhat::Alloc> = Tracker::new(dhat::Alloc);

#[inline(never)]
fn some_callsites(keep: &mut Vec<Vec<u8>>) {
    for i in 0..20 {
        keep.push(vec![0u8; 100 * (i + 1)]);
    }
}

fn round(base: &heapwatch::Snapshot) -> usize {
    let snap = heapwatch::snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back = heapwatch::Snapshot::from_json(&json).unwrap();
    let diff = back.diff(base);
    let text = serde_json::to_string(&diff).unwrap();
    text.len() + snap.callsites.len()
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut keep = Vec::new();
    heapwatch::set_sampling(Sampling::All);
    some_callsites(&mut keep);
    heapwatch::set_sampling(Sampling::Off);
    let base = heapwatch::snapshot();
    assert!(
        base.callsites
            .iter()
            .any(|c| c.frames[0].function.ends_with("some_callsites")),
        "the rounds must symbolize real callsites"
    );
    // Warm-up: the symbol cache and the callsite table fill.
    for _ in 0..3 {
        std::hint::black_box(round(&base));
    }
    let before = dhat::HeapStats::get();
    for _ in 0..100 {
        std::hint::black_box(round(&base));
    }
    let after = dhat::HeapStats::get();
    // dhat sees every block, heapwatch's own included. After the warm-up
    // every cache is full, so 100 more rounds must leave nothing behind.
    dhat::assert_eq!(after.curr_blocks, before.curr_blocks);
    dhat::assert_eq!(after.curr_bytes, before.curr_bytes);
    drop(keep);
    println!(
        "dhat_self_leak: 100 snapshot rounds left {} blocks / {} bytes live, as before",
        after.curr_blocks, after.curr_bytes
    );
}
