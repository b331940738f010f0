//! Sampled blocks stay findable across switches of the sampling mode: a
//! block recorded while sampling by bytes and freed in exact mode (and the
//! other way round) leaves its callsite with no live figures, wherever the
//! live-block table put it.

use std::hint::black_box;

use heapwatch::{Sampling, Tracker};

mod common;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::Bytes(64));

type Blocks = Vec<Box<[u8; 64]>>;

/// `n` blocks of 64 bytes, made while sampling by bytes.
#[allow(clippy::vec_box)]
#[inline(never)]
fn made_sampled(n: usize, out: &mut Blocks) {
    for _ in 0..n {
        out.push(black_box(Box::new([1u8; 64])));
    }
}

/// `n` blocks of 64 bytes, made in exact mode.
#[allow(clippy::vec_box)]
#[inline(never)]
fn made_exact(n: usize, out: &mut Blocks) {
    for _ in 0..n {
        out.push(black_box(Box::new([2u8; 64])));
    }
}

/// `(allocations, frees, live blocks, live bytes)` of `function`'s
/// callsites now.
fn figures(function: &str) -> (u64, u64, u64, u64) {
    common::figures_at(&heapwatch::snapshot(), function)
}

/// The `estimated` flags of `function`'s callsites now.
fn estimated(function: &str) -> Vec<bool> {
    let snap = heapwatch::snapshot();
    common::callsites_at(&snap, function)
        .map(|c| c.estimated)
        .collect()
}

#[test]
fn blocks_are_found_after_the_mode_changed() {
    // 64-byte blocks sampled at a 64-byte mean interval: most are sampled,
    // so 20,000 of them overflow the table's first (near) regions too.
    let n = 20_000;
    let mut sampled = Vec::with_capacity(n);
    made_sampled(n, &mut sampled);
    heapwatch::set_sampling(Sampling::All);
    let mut exact = Vec::with_capacity(n);
    made_exact(n, &mut exact);
    let (allocs, frees, live, _) = figures("made_sampled");
    assert!(
        allocs > n as u64 / 2 && frees == 0 && live == allocs,
        "{allocs} {frees} {live}"
    );
    assert_eq!(
        figures("made_exact"),
        (n as u64, 0, n as u64, 64 * n as u64)
    );
    // Each callsite says how it was recorded, not what the mode is now.
    assert_eq!(estimated("made_sampled"), [true]);
    assert_eq!(estimated("made_exact"), [false]);

    // Free the sampled blocks in exact mode, then the exact ones while
    // sampling by bytes.
    drop(sampled);
    heapwatch::set_sampling(Sampling::Bytes(64));
    drop(exact);
    let (allocs, frees, live, live_bytes) = figures("made_sampled");
    assert_eq!((frees, live, live_bytes), (allocs, 0, 0), "made_sampled");
    assert_eq!(figures("made_exact"), (n as u64, n as u64, 0, 0));
    assert_eq!(estimated("made_sampled"), [true]);
    assert_eq!(estimated("made_exact"), [false]);
    let u = heapwatch::snapshot().unattributed;
    assert_eq!(u.dropped_live_table_full, 0, "{u:?}");
    assert_eq!(u.untracked_allocations, 0, "{u:?}");
}
