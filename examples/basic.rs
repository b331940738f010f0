//! The smallest useful setup: install the tracker, read the totals, look at
//! the top callsites.
//!
//! ```text
//! cargo run --example basic
//! ```

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

#[inline(never)]
fn load_table() -> Vec<String> {
    (0..1000).map(|i| format!("row {i}")).collect()
}

#[inline(never)]
fn scratch_buffers() {
    for _ in 0..100 {
        std::hint::black_box(vec![0u8; 4096]);
    }
}

fn main() {
    let table = load_table();
    scratch_buffers();

    let s = heapwatch::stats();
    println!(
        "live {} bytes in {} blocks, peak {} bytes, {} allocations, {} frees",
        s.live_bytes, s.live_blocks, s.peak_bytes, s.allocations, s.frees
    );

    let snap = heapwatch::snapshot();
    println!("top callsites by live bytes:");
    for c in snap.callsites.iter().take(5) {
        let f = &c.frames[0];
        println!(
            "  {:>9} B live in {:>5} blocks  {}  ({}:{})",
            c.live_bytes,
            c.live_blocks,
            f.function,
            f.file.as_deref().unwrap_or("?"),
            f.line.unwrap_or(0)
        );
    }
    drop(table);
}
