//! A program that symbolizes with the `backtrace` crate itself (as dhat
//! does when it writes its profile, and error reporters do): heapwatch's
//! snapshots symbolize into state of their own, so the program's symbol
//! cache stays the program's memory. heapwatch used to clear the
//! `backtrace` crate's shared cache after a snapshot, which freed the
//! program's entries as heapwatch's overhead and left their bytes in the
//! program's live figures (and its budget) for good.
//!
//! Only on 64-bit Linux: elsewhere heapwatch symbolizes with the
//! `backtrace` crate (README, "Symbols and frame pointers").
#![cfg(all(target_os = "linux", target_pointer_width = "64"))]

use heapwatch::{Sampling, Tracker};

mod common;
use common::signed_live as live;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

#[inline(never)]
fn keep() -> Vec<u8> {
    vec![7u8; 4000]
}

#[test]
fn the_programs_own_symbol_cache_stays_the_programs() {
    drop(heapwatch::snapshot());
    // What the `backtrace` crate keeps across `clear_symbol_cache` (its
    // list of loaded objects) is set up once here.
    drop(backtrace::Backtrace::new());
    backtrace::clear_symbol_cache();
    let before = live();

    // The program symbolizes: the `backtrace` crate parses this binary's
    // debug information into its cache, as the program's memory.
    let bt = backtrace::Backtrace::new();
    assert!(bt.frames().iter().any(|f| !f.symbols().is_empty()));
    drop(bt);
    let cached = live();
    assert!(
        cached.1 - before.1 > 100_000,
        "the backtrace crate's cache holds {} bytes",
        cached.1 - before.1
    );

    // A snapshot with an address it has not seen reads debug information.
    let kept = keep();
    drop(heapwatch::snapshot());
    let after_snapshot = live();
    assert_eq!(
        after_snapshot,
        (cached.0 + 1, cached.1 + 4000),
        "a snapshot moved the program's figures"
    );

    // The program empties its cache: its figures come back to where they
    // were before it symbolized.
    backtrace::clear_symbol_cache();
    assert_eq!(live(), (before.0 + 1, before.1 + 4000));
    drop(kept);
}
