//! Sampling by bytes stays unbiased when threads come and go: a thread
//! that takes over a counter shard another thread used draws its own first
//! countdown. (It used to inherit a spent one, so its first allocation was
//! always sampled and weighted as a draw: ~one interval of phantom bytes
//! per thread past the 256 shards.)

use std::hint::black_box;

use heapwatch::{Sampling, Tracker};

const INTERVAL: u64 = 1024;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::Bytes(INTERVAL));

#[inline(never)]
fn per_thread_alloc() -> Box<[u8; 16]> {
    black_box(Box::new([1u8; 16]))
}

fn estimated_allocated_bytes(snap: &heapwatch::Snapshot) -> u64 {
    let sites: u64 = snap.callsites.iter().map(|c| c.allocated_bytes).sum();
    sites + snap.unattributed.allocated_bytes
}

#[test]
fn thread_churn_leaves_estimates_unbiased() {
    heapwatch::set_sampling_seed(7);
    let s0 = heapwatch::stats();
    let before = heapwatch::snapshot();

    // 3,000 threads, one after another: most of them lease a shard that an
    // exited thread used.
    let kept: Vec<Box<[u8; 16]>> = (0..3000)
        .map(|_| std::thread::spawn(per_thread_alloc).join().unwrap())
        .collect();

    let after = heapwatch::snapshot();
    let s1 = heapwatch::stats();
    let truth = s1.allocated_bytes - s0.allocated_bytes;
    let estimate = estimated_allocated_bytes(&after) - estimated_allocated_bytes(&before);
    // ~400 samples at this interval: the estimate's spread is ~5%.
    let ratio = estimate as f64 / truth as f64;
    assert!(
        (0.75..1.25).contains(&ratio),
        "estimated {estimate} B allocated against {truth} B exact ({ratio:.2}x)"
    );
    drop(kept);
}
