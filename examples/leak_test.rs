//! The leak-test patterns, as a program: `heapwatch::scope` to measure what
//! a function allocates and leaves behind, and `GrowthCheck` to catch a
//! function whose memory keeps growing and name where it allocates.
//!
//! ```text
//! cargo run --example leak_test
//! ```
//!
//! In a test suite, put the same calls in `#[test]` functions: `scope` and
//! `GrowthCheck` count per thread, so leak tests run in parallel with other
//! tests (`heapwatch::assert_no_growth(|| ...)` panics with the report).
//!
//! To cross-check with dhat, wrap dhat's allocator instead of `System`:
//! `Tracker<dhat::Alloc>` with `dhat::Profiler::builder().testing()` and
//! `dhat::HeapStats`, in a test binary of its own (a process has one
//! global allocator, so this example cannot install both). See
//! `tests/dhat_inner.rs` for that pattern.

use std::collections::HashMap;

use heapwatch::{GrowthCheck, Sampling, Tracker};

// `Sampling::All` records every allocation, so even small leaks are named
// exactly (the default samples by bytes, cheap enough for production).
#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// Allocates while it works and frees everything before returning.
#[inline(never)]
fn parse_config(text: &str) -> usize {
    let map: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    map.len()
}

/// Returns what it built: the caller owns the memory.
#[inline(never)]
fn build_index(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key-{i:04}")).collect()
}

/// A request handler with a bug: it remembers every request forever.
#[inline(never)]
fn handle_request(seen: &mut Vec<Vec<u8>>, id: u64) {
    let body = vec![(id % 251) as u8; 1024];
    seen.push(body);
}

/// The fixed handler: it keeps only what it needs.
#[inline(never)]
fn handle_request_fixed(last: &mut Option<Vec<u8>>, id: u64) {
    *last = Some(vec![(id % 251) as u8; 1024]);
}

fn main() {
    let config = "name = demo\nthreads = 4\nlog = info\n";

    // 1. scope: what this thread allocated, freed and left live inside.
    let (entries, s) = heapwatch::scope(|| parse_config(config));
    println!(
        "scope(parse_config): {entries} entries, {} allocations, {} bytes allocated, {} left live",
        s.allocations, s.allocated_bytes, s.net_live_bytes
    );
    assert_eq!(s.net_live_bytes, 0, "parse_config frees what it allocates");

    let (index, s) = heapwatch::scope(|| build_index(100));
    println!(
        "scope(build_index): {} allocations, {} bytes left live (the returned Vec)",
        s.allocations, s.net_live_bytes
    );
    assert!(s.net_live_bytes > 0);
    drop(index);

    // 2. GrowthCheck: run a closure repeatedly; growth in most iterations
    //    is a leak, and the report names the callsites that grew.
    let mut seen = Vec::new();
    let mut id = 0;
    let leaky = GrowthCheck::new().iterations(20).run(|| {
        id += 1;
        handle_request(&mut seen, id);
    });
    match &leaky {
        Err(leak) => {
            println!("GrowthCheck(handle_request): LEAK\n{leak}");
            let named = leak.0.top_growing.iter().any(|c| {
                c.frames
                    .first()
                    .is_some_and(|f| f.function.ends_with("handle_request"))
            });
            assert!(named, "the report names handle_request");
        }
        Ok(report) => panic!("the leak was not caught: {report:?}"),
    }

    let mut last = None;
    let clean = GrowthCheck::new().run(|| {
        id += 1;
        handle_request_fixed(&mut last, id);
    });
    match clean {
        Ok(report) => println!(
            "GrowthCheck(handle_request_fixed): ok, {} bytes of growth over {} iterations",
            report.total_growth_bytes, report.iterations
        ),
        Err(leak) => panic!("false positive: {leak}"),
    }

    // 3. The one-liner for tests: panics with the report on a leak.
    heapwatch::assert_no_growth(|| {
        std::hint::black_box(parse_config(config));
    });
    println!("assert_no_growth(parse_config): ok");
}
