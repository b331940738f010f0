//! Embeds the heapwatch endpoint in a program with a small, slowly leaking
//! workload.
//!
//! ```text
//! cargo run --example serve            # stop with Enter
//! cargo run --example serve -- 30      # stop after 30 seconds
//! ```
//!
//! Then open the printed URL, or `curl` the routes in docs/ENDPOINTS.md.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: heapwatch::Tracker<tikv_jemallocator::Jemalloc> =
    heapwatch::Tracker::new(tikv_jemallocator::Jemalloc)
        .with_sampling(heapwatch::Sampling::Bytes(64 * 1024));

#[cfg(not(feature = "jemalloc"))]
#[global_allocator]
static GLOBAL: heapwatch::Tracker<std::alloc::System> = heapwatch::Tracker::new(std::alloc::System)
    .with_sampling(heapwatch::Sampling::Bytes(64 * 1024));

/// Grows without bound: about 4 MiB per minute.
#[inline(never)]
fn leak_some(leaked: &mut Vec<Vec<u8>>) {
    leaked.push(vec![0xAB; 64 * 1024]);
}

/// A bounded cache: grows to 256 entries, then stays.
#[inline(never)]
fn cache_some(cache: &mut VecDeque<String>, i: u64) {
    cache.push_back(format!("entry {i:>10} {}", "x".repeat(512)));
    if cache.len() > 256 {
        cache.pop_front();
    }
}

/// Short-lived buffers.
#[inline(never)]
fn churn() -> usize {
    let v: Vec<u64> = (0..4096).collect();
    v.iter().sum::<u64>() as usize
}

fn main() -> Result<(), heapwatch::Error> {
    let seconds: Option<u64> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    let server = heapwatch::ServerBuilder::new()
        .addr("127.0.0.1:0")
        .history_interval(Duration::from_secs(2))
        .leak_window(Duration::from_secs(60))
        .serve()?;
    let token = std::env::var("HEAPWATCH_TOKEN").unwrap_or_default();
    if token.is_empty() {
        println!("heapwatch dashboard: http://{}/", server.local_addr());
    } else {
        println!(
            "heapwatch dashboard: http://{}/?token=<HEAPWATCH_TOKEN>",
            server.local_addr()
        );
    }
    match seconds {
        Some(s) => println!("running the workload for {s} s"),
        None => println!("running the workload; press Enter to stop"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut leaked = Vec::new();
            let mut cache = VecDeque::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                leak_some(&mut leaked);
                for _ in 0..20 {
                    cache_some(&mut cache, i);
                    std::hint::black_box(churn());
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
            leaked.len()
        })
    };

    match seconds {
        Some(s) => {
            let end = Instant::now() + Duration::from_secs(s);
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        None => {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let blocks = worker.join().unwrap_or(0);
    server.shutdown();
    println!("stopped; the workload leaked {blocks} blocks of 64 KiB");
    Ok(())
}
