//! Allocations from thread-local destructors, from threads that exit, and
//! after `main`-like teardown are handled: nothing crashes and no count is
//! lost.

use std::cell::RefCell;
use std::hint::black_box;

use heapwatch::Tracker;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System);

struct AllocatesOnDrop(Vec<u8>);

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        // Allocate and free during thread-local destruction.
        let v = black_box(vec![9u8; 4096]);
        black_box(&v);
        let s = black_box(format!("{}", self.0.len()));
        drop(s);
    }
}

thread_local! {
    static LATE: RefCell<Option<AllocatesOnDrop>> = const { RefCell::new(None) };
}

fn thread_exit_and_tls_destructors_lose_nothing() {
    let before = heapwatch::stats();
    let handles: Vec<_> = (0..64)
        .map(|i| {
            std::thread::spawn(move || {
                LATE.with(|l| *l.borrow_mut() = Some(AllocatesOnDrop(vec![1u8; 100 + i])));
                black_box(vec![0u8; 1000])
            })
        })
        .collect();
    let kept: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mid = heapwatch::stats();
    // Each thread's kept vector is still live, counted although its thread
    // is gone; everything else those threads allocated was freed.
    assert_eq!(
        mid.live_bytes - before.live_bytes,
        64 * 1000 + (64 * std::mem::size_of::<Vec<u8>>()) as u64,
        "before {before:?}\nafter {mid:?}"
    );
    drop(kept);
    let after = heapwatch::stats();
    assert_eq!(after.live_bytes, before.live_bytes, "{after:?}");
    assert_eq!(after.live_blocks, before.live_blocks, "{after:?}");
    // Credit of exited threads went back to the pool: the reservation is
    // not inflated by 64 exited threads' chunks.
    let st = heapwatch::budget_status();
    assert!(
        st.reserved_bytes
            < after.live_bytes + after.overhead_bytes + 8 * 2 * heapwatch::CHUNK_BYTES,
        "{st:?} vs {after:?}"
    );
}

// `harness = false` (Cargo.toml): this file asserts exact process-wide
// deltas, and libtest's own threads allocate while a test starts.
fn main() {
    thread_exit_and_tls_destructors_lose_nothing();
    println!("thread_teardown: ok");
}
