//! `Tracker<dhat::Alloc>`: dhat sees every block the program makes, with the
//! same counts heapwatch reports; dhat's own bookkeeping allocations (made
//! through the global allocator while it serves ours) are heapwatch
//! overhead, not program allocations.

use std::hint::black_box;

use heapwatch::Tracker;

#[global_allocator]
static GLOBAL: Tracker<dhat::Alloc> = Tracker::new(dhat::Alloc);

#[inline(never)]
fn workload(kept: &mut Vec<Box<[u8]>>) {
    for i in 0..500usize {
        let b = black_box(vec![i as u8; 16 + i % 700].into_boxed_slice());
        if i % 5 == 0 {
            kept.push(b);
        }
    }
    let mut s = String::new();
    for i in 0..100 {
        s.push_str(&format!("{i},"));
    }
    black_box(s);
}

fn dhat_sees_what_heapwatch_counts() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut kept = Vec::with_capacity(100);

    let d0 = dhat::HeapStats::get();
    let h0 = heapwatch::stats();
    workload(&mut kept);
    let d1 = dhat::HeapStats::get();
    let h1 = heapwatch::stats();

    // dhat counts a realloc as a block, as heapwatch counts its new size.
    let hw_blocks = (h1.allocations - h0.allocations) + (h1.reallocs - h0.reallocs);
    assert_eq!(d1.total_blocks - d0.total_blocks, hw_blocks);
    assert_eq!(
        d1.total_bytes - d0.total_bytes,
        h1.allocated_bytes - h0.allocated_bytes
    );
    assert_eq!(
        d1.curr_bytes as i64 - d0.curr_bytes as i64,
        h1.live_bytes as i64 - h0.live_bytes as i64
    );
    assert_eq!(
        d1.curr_blocks as i64 - d0.curr_blocks as i64,
        h1.live_blocks as i64 - h0.live_blocks as i64
    );
    // The kept boxes: 100 of them.
    assert_eq!(d1.curr_blocks - d0.curr_blocks, 100);
    // dhat records a backtrace per block: its own allocations showed up,
    // and heapwatch filed them as overhead.
    assert!(h1.overhead_blocks > 0, "{h1:?}");
    drop(kept);
}

// `harness = false` (Cargo.toml): this file compares process-wide figures,
// and libtest's own threads allocate while a test starts.
fn main() {
    dhat_sees_what_heapwatch_counts();
    println!("dhat_inner: ok");
}
