//! A dhat-based leak test with heapwatch in front: `Tracker<dhat::Alloc>`.
//!
//! dhat sees every block the program makes (heapwatch forwards them all),
//! so its testing profiler can assert exact heap figures, while heapwatch
//! gives per-callsite figures and its own exact totals.
//!
//! ```text
//! cargo run --example dhat
//! ```
//!
//! With `dhat::Alloc` inside, keep such a test single-threaded while it
//! takes snapshots: dhat's allocator lock and the `backtrace` crate's lock
//! are taken in opposite orders by dhat and by any symbolizer (dhat-rs #18,
//! #25). In a test suite, give the file `harness = false`, as
//! `tests/dhat_self_leak.rs` does.

use std::hint::black_box;

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<dhat::Alloc> = Tracker::new(dhat::Alloc).with_sampling(Sampling::All);

/// The code under test: it should free everything it allocates.
#[inline(never)]
fn parse_and_sum(input: &str) -> u64 {
    let numbers: Vec<u64> = input
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    numbers.iter().sum()
}

/// A variant with a leak: it keeps every input it has seen.
#[inline(never)]
fn parse_and_remember(input: &str, seen: &mut Vec<String>) -> u64 {
    seen.push(input.to_string());
    parse_and_sum(input)
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let input = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10";

    // The clean function: dhat's live blocks and bytes come back exactly.
    let before = dhat::HeapStats::get();
    for _ in 0..100 {
        black_box(parse_and_sum(input));
    }
    let after = dhat::HeapStats::get();
    dhat::assert_eq!(after.curr_blocks, before.curr_blocks);
    dhat::assert_eq!(after.curr_bytes, before.curr_bytes);
    println!(
        "parse_and_sum: {} blocks allocated and freed over 100 calls, none left (dhat)",
        after.total_blocks - before.total_blocks
    );

    // The leaky one: dhat sees the growth, heapwatch names where it comes
    // from.
    // (The first snapshot loads debug info for symbols: take it before
    // dhat's reading, so dhat measures only the loop.)
    let mut seen = Vec::with_capacity(100);
    let base = heapwatch::snapshot();
    let before = dhat::HeapStats::get();
    for _ in 0..100 {
        black_box(parse_and_remember(input, &mut seen));
    }
    let after = dhat::HeapStats::get();
    let diff = heapwatch::snapshot().diff(&base);
    let leak = diff
        .callsites
        .iter()
        .find(|c| {
            c.frames
                .iter()
                .any(|f| f.function.ends_with("parse_and_remember"))
        })
        .expect("heapwatch names the leaking function");
    let f = &leak.frames[0];
    println!(
        "parse_and_remember: dhat sees +{} live bytes; heapwatch: +{} bytes in {} blocks at {} ({}:{})",
        after.curr_bytes - before.curr_bytes,
        leak.live_bytes_delta,
        leak.live_blocks_delta,
        f.function,
        f.file.as_deref().unwrap_or("?"),
        f.line.unwrap_or(0)
    );
    // The same blocks, counted by both.
    assert_eq!(
        leak.live_bytes_delta as usize,
        after.curr_bytes - before.curr_bytes
    );
    drop(seen);
}
