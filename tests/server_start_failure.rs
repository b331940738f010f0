//! A server that cannot start returns an error the program owns: the
//! program's live figures are where they were once it drops the error.
//! (The error used to be built under heapwatch's guard, as its own
//! overhead, and freed by the program: its bytes came off the program's
//! live figures.) Starting the thread is made to fail by asking for a
//! stack no machine has, through `RUST_MIN_STACK`, which heapwatch's
//! threads honour as std's do.

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::Off);

// `harness = false` (Cargo.toml): the figures are process-wide.
fn main() {
    // No other thread runs yet (`set_var` is safe in edition 2021).
    std::env::set_var("RUST_MIN_STACK", (usize::MAX - (1 << 20)).to_string());
    // Once first: whatever a first call sets up for good is not counted.
    let first = heapwatch::serve("127.0.0.1:0")
        .expect_err("a stack the size of the address space cannot be mapped");
    let message = first.to_string();
    assert!(message.contains("heapwatch-http"), "{message}");
    drop(first);

    let before = heapwatch::stats();
    let err = heapwatch::serve("127.0.0.1:0")
        .expect_err("a stack the size of the address space cannot be mapped");
    drop(err);
    let after = heapwatch::stats();
    assert_eq!(
        (after.live_bytes, after.live_blocks),
        (before.live_bytes, before.live_blocks),
        "{message}: {before:?} -> {after:?}"
    );
    println!("server_start_failure: ok");
}
