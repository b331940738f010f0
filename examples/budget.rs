//! A memory budget that refuses allocations instead of crashing:
//! `Vec::try_reserve` gets `Err` near the limit and the program carries on,
//! while `watch_budget` reports level changes from a background thread.
//!
//! ```text
//! cargo run --example budget
//! ```

use std::sync::mpsc;
use std::time::Duration;

use heapwatch::{Budget, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_budget(Budget::from_mb(64));

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Reserves `bytes` without touching them, or says why not.
fn try_buffer(bytes: u64) -> Result<Vec<u8>, std::collections::TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes as usize)?;
    Ok(v)
}

fn main() {
    let start = heapwatch::budget_status();
    let Some(budget) = start.budget.bytes().filter(|&b| b <= 1 << 30) else {
        println!(
            "budget is {} (HEAPWATCH_MAX_MEMORY_MB?); this example expects a small one",
            start.budget
        );
        return;
    };
    println!(
        "budget {} ({:?}), warning at {}%, critical at {}%",
        start.budget,
        start.policy,
        start.thresholds.warning_percent,
        start.thresholds.critical_percent
    );

    // The callback runs on a background thread, outside the allocator: it
    // may allocate, log or shed load. Here it forwards events to main.
    let (tx, events) = mpsc::channel();
    let watch = heapwatch::watch_budget(Duration::from_millis(20), move |event| {
        let _ = tx.send(event);
    });

    // Load spikes: each holds about 87% of the budget (past the 80% warning),
    // asks for more, is refused and carries on, then releases. The watcher
    // polls every 20 ms and reports the highest level reached since its last
    // poll, so even a short spike is seen; its first poll may come after
    // the first spike, in which case it reports the second.
    let block = budget / 16;
    for spike in 1..=3 {
        let held: Vec<Vec<u8>> = (0..14).filter_map(|_| try_buffer(block).ok()).collect();
        let reserved = heapwatch::budget_status().reserved_bytes;
        let big = try_buffer(budget / 2);
        println!(
            "spike {spike}: holding {} in {} blocks, {} reserved",
            mib(block * held.len() as u64),
            held.len(),
            mib(reserved)
        );
        match &big {
            Ok(_) => println!("  try_reserve({}) succeeded?!", mib(budget / 2)),
            Err(e) => println!(
                "  try_reserve({}) refused ({e}); carrying on",
                mib(budget / 2)
            ),
        }
        drop((big, held));
        if let Ok(e) = events.recv_timeout(Duration::from_millis(250)) {
            println!(
                "  watch_budget: {:?} -> reached {:?}, now {:?} ({} reserved)",
                e.previous,
                e.reached,
                e.status.level,
                mib(e.status.reserved_bytes)
            );
            break;
        }
    }
    watch.stop();

    let s = heapwatch::budget_status();
    println!(
        "budget_status: level {:?}, reserved {}, peak {}, denials {}, warning crossings {}",
        s.level,
        mib(s.reserved_bytes),
        mib(s.peak_bytes),
        s.denials,
        s.warning_crossings
    );
}
