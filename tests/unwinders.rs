//! Every unwinder gives the same callsite for the same code: the cached CFI
//! walk and the frame-pointer walk (where the build keeps frame pointers)
//! agree with the platform unwinder on the user's frames, and exact counts
//! do not depend on which one captured them.
#![allow(clippy::vec_box)]

use std::hint::black_box;

use heapwatch::{Sampling, Tracker, Unwinder};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// Five 24-byte boxes from one line (each box is one allocation: the test
/// counts them).
#[inline(never)]
fn allocate_in_known_place(out: &mut Vec<Box<[u8; 24]>>) {
    for _ in 0..5 {
        out.push(black_box(Box::new([7u8; 24])));
    }
}

#[inline(never)]
fn one_level_up(out: &mut Vec<Box<[u8; 24]>>) {
    allocate_in_known_place(out);
    black_box(());
}

/// The known site's callsites in a snapshot: (function names of the
/// frames, allocations).
fn known_sites(snap: &heapwatch::Snapshot) -> Vec<(Vec<String>, u64)> {
    snap.callsites
        .iter()
        .filter(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.ends_with("allocate_in_known_place"))
        })
        .map(|c| {
            let names = c.frames.iter().map(|f| f.function.clone()).collect();
            (names, c.allocations)
        })
        .collect()
}

#[test]
fn unwinders_agree_on_the_users_frames() {
    let mut reference: Option<Vec<String>> = None;
    for unwinder in [
        Unwinder::Backtrace,
        Unwinder::Cfi,
        Unwinder::FramePointers,
        Unwinder::Auto,
    ] {
        heapwatch::set_unwinder(unwinder);
        let active = heapwatch::active_unwinder();
        match unwinder {
            Unwinder::Backtrace => assert_eq!(active, "backtrace"),
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Unwinder::Cfi => assert_eq!(active, "cfi"),
            // `Auto` picks a fast walk where one works: frame pointers in
            // a build that keeps them, else the CFI walk.
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Unwinder::Auto => assert_ne!(active, "backtrace"),
            _ => {}
        }
        let before = known_sites(&heapwatch::snapshot());
        let mut boxes = Vec::with_capacity(5);
        one_level_up(&mut boxes);
        let after = known_sites(&heapwatch::snapshot());

        // Exactly one callsite grew, by exactly five allocations.
        let grown: Vec<_> = after
            .iter()
            .filter(|(names, n)| {
                let was = before
                    .iter()
                    .find(|(b, _)| b == names)
                    .map_or(0, |(_, n)| *n);
                *n > was
            })
            .collect();
        assert_eq!(grown.len(), 1, "{unwinder:?} ({active}): {after:#?}");
        let (names, n) = grown[0];
        let was = before
            .iter()
            .find(|(b, _)| b == names)
            .map_or(0, |(_, n)| *n);
        assert_eq!(n - was, 5, "{unwinder:?} ({active})");
        assert!(
            names.get(1).is_some_and(|f| f.ends_with("one_level_up")),
            "{unwinder:?} ({active}): {names:#?}"
        );
        assert!(
            names
                .iter()
                .any(|f| f.contains("unwinders_agree_on_the_users_frames")),
            "{unwinder:?} ({active}) does not reach the test: {names:#?}"
        );

        // The same frames as the platform unwinder, up to the shorter walk.
        match &reference {
            None => reference = Some(names.clone()),
            Some(r) => {
                let k = r.len().min(names.len());
                assert_eq!(
                    &names[..k],
                    &r[..k],
                    "{unwinder:?} ({active}) differs from backtrace"
                );
            }
        }
        drop(boxes);
    }
    heapwatch::set_unwinder(Unwinder::Auto);
}
