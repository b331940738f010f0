//! Snapshots built on several threads at once, of callsites none of them
//! has symbolized yet: the frames each snapshot shares with heapwatch's
//! cache stay heapwatch's, so dropping the snapshots moves none of the
//! program's figures (a snapshot that lost the race to cache a callsite
//! used to own its frames alone, and the program's drop counted them as
//! the program's frees).

use std::sync::{Arc, Barrier};

use heapwatch::{Sampling, Tracker};

mod common;
use common::{keep_at_depth, signed_live as live};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

#[test]
fn dropping_snapshots_built_at_once_leaves_the_program_figures_alone() {
    const THREADS: usize = 4;
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(10_000);
    drop(heapwatch::snapshot()); // the callsites that exist so far
    for round in 0..8 {
        for depth in 0..12 {
            keep_at_depth(round * 12 + depth, 64, &mut kept); // new callsites
        }
        let barrier = Arc::new(Barrier::new(THREADS));
        let mut threads = Vec::with_capacity(THREADS);
        let before = live();
        for _ in 0..THREADS {
            let barrier = Arc::clone(&barrier);
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                heapwatch::snapshot()
            }));
        }
        let snapshots: Vec<heapwatch::Snapshot> =
            threads.drain(..).map(|t| t.join().unwrap()).collect();
        assert!(snapshots.iter().all(|s| s.callsites.len() >= 12));
        drop(snapshots);
        let after = live();
        assert_eq!(
            after,
            before,
            "round {round}: the program's (blocks, bytes) moved by \
             ({:+}, {:+}) over snapshots it built and dropped",
            after.0 - before.0,
            after.1 - before.1
        );
    }
    assert_eq!(kept.len(), 8 * 12);
}
