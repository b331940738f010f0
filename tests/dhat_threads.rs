//! `Tracker<dhat::Alloc>` with other threads allocating while snapshots
//! symbolize new callsites. dhat's allocator takes its lock and then the
//! `backtrace` crate's; heapwatch used to symbolize through the `backtrace`
//! crate, taking them in the other order, and this deadlocked on the first
//! round or so. On 64-bit Linux heapwatch symbolizes with its own state and
//! lock (`src/symbolize/objects.rs`), so it must run to the end. A watchdog
//! turns a deadlock into a failure instead of a hung test run.

use std::time::Duration;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use heapwatch::{Sampling, Tracker};

mod common;
use common::keep_at_depth;

#[global_allocator]
static GLOBAL: Tracker<dhat::Alloc> = Tracker::new(dhat::Alloc).with_sampling(Sampling::All);

static STOP: AtomicBool = AtomicBool::new(false);

fn main() {
    if !cfg!(all(target_os = "linux", target_pointer_width = "64")) {
        return; // elsewhere the `backtrace` crate symbolizes (lib.rs docs)
    }
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("dhat_threads: no progress in 120 s: a lock-order deadlock");
        std::process::exit(1);
    });
    let _profiler = dhat::Profiler::builder().testing().build();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !STOP.load(Relaxed) {
                    let v = black_box(vec![t as u8; 16 + n % 200]);
                    drop(v);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut kept = Vec::new();
    for round in 0..30 {
        keep_at_depth(round, 48, &mut kept);
        let s = heapwatch::snapshot();
        assert!(!s.callsites.is_empty());
    }
    STOP.store(true, Relaxed);
    for t in threads {
        assert!(t.join().unwrap() > 0);
    }
    println!("dhat_threads: ok");
}
