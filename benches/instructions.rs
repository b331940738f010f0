//! Instructions per alloc + free pair, for `valgrind --tool=callgrind`:
//! instruction counts do not depend on what else the machine is doing, so
//! they compare the hook with the raw allocator reliably on a shared box.
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/deps/instructions-* MODE PAIRS
//! ```
//!
//! MODE is `raw` (jemalloc directly), `off` (tracker, totals + budget),
//! `bytes` (tracker, default sampling) or `all` (tracker, exact). Run each
//! mode with PAIRS = 0 and PAIRS = 1,000,000: the difference of the two
//! totals divided by 1,000,000 is the cost of one pair. `scripts/
//! instructions.sh` does exactly that.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use heapwatch::{Sampling, Tracker};
use tikv_jemallocator::Jemalloc;

static TRACKED: Tracker<Jemalloc> = Tracker::new(Jemalloc);

fn pairs<A: GlobalAlloc>(a: &A, n: u64) {
    let sizes = [16usize, 64, 256, 1024, 4096];
    for i in 0..n {
        let layout = Layout::from_size_align(sizes[(i % 5) as usize], 8).unwrap();
        // SAFETY: non-zero size; the block is freed once with its layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            black_box(p);
            a.dealloc(p, layout);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "off".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // Warm both allocators and heapwatch's one-time set-up out of the count.
    pairs(&Jemalloc, 1000);
    heapwatch::set_sampling(Sampling::Off);
    pairs(&TRACKED, 1000);
    match mode.as_str() {
        "raw" => pairs(&Jemalloc, n),
        "off" => pairs(&TRACKED, n),
        "bytes" => {
            heapwatch::set_sampling(Sampling::DEFAULT);
            pairs(&TRACKED, n)
        }
        "all" => {
            heapwatch::set_sampling(Sampling::All);
            pairs(&TRACKED, n)
        }
        other => {
            eprintln!("unknown mode {other:?}: raw, off, bytes or all");
            std::process::exit(2);
        }
    }
}
