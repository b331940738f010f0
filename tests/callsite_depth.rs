//! A callsite keeps the configured number of the program's own frames
//! (default 16) however many frames heapwatch and the standard library's
//! allocation plumbing put above them: in a deep stack, an allocation made
//! by `Box::new`, by `Vec::with_capacity` and by a `Vec` growing in `push`
//! each shows the full depth, in debug and release builds alike.

use std::hint::black_box;

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

/// Boxes (each one allocation) in a preallocated vector, and a vector
/// grown by `push`.
#[allow(clippy::vec_box)]
type Kept = (Vec<Box<[u8; 40]>>, Vec<u64>);

#[inline(never)]
fn leaf_allocs(n: usize) -> Kept {
    let mut boxes = Vec::with_capacity(n);
    for _ in 0..n {
        boxes.push(black_box(Box::new([7u8; 40])));
    }
    let mut grown = Vec::new();
    for i in 0..n as u64 {
        grown.push(black_box(i));
    }
    (boxes, grown)
}

#[inline(never)]
fn deep(d: usize, n: usize) -> Kept {
    if d == 0 {
        black_box(leaf_allocs(n))
    } else {
        black_box(deep(d - 1, n))
    }
}

#[test]
fn deep_stacks_keep_the_configured_depth() {
    let kept = deep(40, 1000);
    let snap = heapwatch::snapshot();
    let sites: Vec<_> = snap
        .callsites
        .iter()
        .filter(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.ends_with("leaf_allocs"))
        })
        .collect();
    // The boxes, the preallocated vector, and the growth of `grown`.
    assert!(sites.len() >= 3, "{:#?}", sites);
    for c in &sites {
        let functions: Vec<&str> = c.frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(c.frames.len(), 16, "{functions:#?}");
        assert!(
            functions.iter().skip(1).all(|f| f.ends_with("::deep")),
            "{functions:#?}"
        );
    }
    drop(kept);
}
