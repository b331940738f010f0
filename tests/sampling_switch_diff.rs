//! A diff across a switch of the sampling mode says so
//! (`sampling_changed`): blocks allocated while sampling was off are in no
//! callsite, so switching it on shows their callsite as new although the
//! program only replaced what it held.

use std::hint::black_box;

use heapwatch::{Sampling, Tracker};

mod common;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::Off);

/// The program's cache: 64 blocks of 4 KiB.
#[inline(never)]
fn switch_diff_cache_fill() -> Vec<Box<[u8]>> {
    let mut cache = Vec::with_capacity(64);
    for i in 0..64u8 {
        cache.push(black_box(vec![i; 4096].into_boxed_slice()));
    }
    cache
}

fn main() {
    assert!(heapwatch::installed());
    let old_cache = switch_diff_cache_fill();
    let off = heapwatch::snapshot();
    assert_eq!(off.mode, "off");

    // Sampling on; the program replaces its cache, holding as much as
    // before.
    heapwatch::set_sampling(Sampling::All);
    drop(old_cache);
    let cache = switch_diff_cache_fill();
    let on = heapwatch::snapshot();
    assert!(
        on.sampling_changes > off.sampling_changes,
        "{} then {}",
        off.sampling_changes,
        on.sampling_changes
    );
    let d = on.diff(&off);
    assert!(d.sampling_changed, "off -> all");
    // What the flag warns of: the cache shows at its callsite as new.
    let (_, _, _, live) = common::figures_at(&on, "switch_diff_cache_fill");
    assert!(live >= 64 * 4096, "{live}");
    let json = serde_json::to_value(&d).expect("diff serializes");
    assert_eq!(json["sampling_changed"], true, "{json}");
    let json = serde_json::to_value(&on).expect("snapshot serializes");
    assert_eq!(json["sampling_changes"], on.sampling_changes, "{json}");

    // No switch between two snapshots: no flag.
    let again = heapwatch::snapshot();
    assert!(!again.diff(&on).sampling_changed);
    // Setting the mode it already has is no switch.
    heapwatch::set_sampling(Sampling::All);
    assert!(!heapwatch::snapshot().diff(&on).sampling_changed);

    // Off and back on between two snapshots: both say "all", and the diff
    // still says the mode changed between them.
    heapwatch::set_sampling(Sampling::Off);
    heapwatch::set_sampling(Sampling::All);
    let back = heapwatch::snapshot();
    assert_eq!((on.mode.as_str(), back.mode.as_str()), ("all", "all"));
    assert!(back.diff(&on).sampling_changed);

    // Files from builds before the field: no flag, no error.
    let mut old = serde_json::to_value(&off).expect("snapshot serializes");
    old.as_object_mut()
        .expect("an object")
        .remove("sampling_changes");
    let old = heapwatch::Snapshot::from_json(&old.to_string()).expect("older file loads");
    assert_eq!(old.sampling_changes, 0);

    drop(cache);
    println!("sampling_switch_diff: ok");
}
