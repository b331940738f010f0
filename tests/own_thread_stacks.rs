//! Callsites made on heapwatch's own threads end above the thread's entry,
//! as those of `std` threads end above `__rust_begin_short_backtrace`: a
//! `watch_budget` callback's allocations show the callback and what it
//! called, not the thread start-up below them (`heapwatch::threads::run`,
//! `start_thread`, `clone3`), which would also split one callsite by the
//! depth at which it is cut.

use std::hint::black_box;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use heapwatch::{Budget, Policy, Sampling, Tracker};

mod common;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System)
    .with_sampling(Sampling::All)
    .with_budget(Budget::UNLIMITED)
    .with_policy(Policy::Warn);

#[allow(clippy::vec_box)]
#[inline(never)]
fn allocate_in_callback(kept: &Mutex<Vec<Box<[u8; 56]>>>) {
    kept.lock().unwrap().push(black_box(Box::new([0u8; 56])));
}

// `harness = false` (Cargo.toml): the budget set below is process-wide.
fn main() {
    let kept = Arc::new(Mutex::new(Vec::with_capacity(16)));
    let (tx, rx) = mpsc::channel();
    let in_callback = Arc::clone(&kept);
    let watch = heapwatch::watch_budget(Duration::from_millis(10), move |_| {
        allocate_in_callback(&in_callback);
        let _ = tx.send(());
    });
    // A level change for the watcher (`Warn`: nothing is refused).
    heapwatch::set_budget(Budget::from_bytes(1));
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the callback ran");
    watch.stop();
    heapwatch::set_budget(Budget::UNLIMITED);

    let snap = heapwatch::snapshot();
    let sites: Vec<_> = common::callsites_at(&snap, "allocate_in_callback").collect();
    assert_eq!(sites.len(), 1, "{sites:#?}");
    let names: Vec<&str> = sites[0]
        .frames
        .iter()
        .map(|f| f.function.as_str())
        .collect();
    for below in ["heapwatch::threads::", "start_thread", "clone"] {
        assert!(
            !names.iter().any(|n| n.contains(below)),
            "a frame of the thread's start-up ({below}): {names:#?}"
        );
    }
    assert!(
        names
            .iter()
            .any(|n| n.contains("own_thread_stacks::main::{{closure}}")
                || n.contains("own_thread_stacks::main::{closure")),
        "the callback is there: {names:#?}"
    );
    drop(kept);
    println!("own_thread_stacks: ok");
}
