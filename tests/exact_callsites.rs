//! Exact mode (`Sampling::All`): allocations are attributed to the right
//! function names with exactly the right counts, and frees move the live
//! figures exactly.

use std::hint::black_box;

use heapwatch::{Callsite, Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

// Each box is one allocation of 48 bytes: the test counts them.
#[allow(clippy::vec_box)]
#[inline(never)]
fn make_small_buffers(out: &mut Vec<Box<[u8; 48]>>) {
    for _ in 0..300 {
        out.push(black_box(Box::new([0u8; 48])));
    }
}

#[inline(never)]
fn make_large_buffers() -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(7);
    for _ in 0..7 {
        out.push(black_box(vec![1u8; 10_000]));
    }
    out
}

fn site<'a>(snap: &'a heapwatch::Snapshot, function: &str) -> Vec<&'a Callsite> {
    snap.callsites
        .iter()
        .filter(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.ends_with(function))
        })
        .collect()
}

#[test]
fn exact_mode_attributes_to_the_right_functions() {
    let mut small = Vec::with_capacity(300);
    make_small_buffers(&mut small);
    let mut large = make_large_buffers();

    let snap = heapwatch::snapshot();
    assert_eq!(snap.mode, "all");
    let s = site(&snap, "make_small_buffers");
    assert_eq!(s.len(), 1, "one callsite for the boxes: {s:#?}");
    assert_eq!((s[0].allocations, s[0].allocated_bytes), (300, 300 * 48));
    assert_eq!((s[0].live_blocks, s[0].live_bytes), (300, 300 * 48));
    assert!(!s[0].estimated);
    assert!(s[0].frames[0]
        .file
        .as_deref()
        .is_some_and(|f| f.ends_with("exact_callsites.rs")));

    let l: Vec<_> = site(&snap, "make_large_buffers")
        .into_iter()
        .filter(|c| c.allocated_bytes == 70_000)
        .collect();
    assert_eq!(l.len(), 1, "{:#?}", site(&snap, "make_large_buffers"));
    assert_eq!(
        (l[0].allocations, l[0].live_blocks, l[0].live_bytes),
        (7, 7, 70_000)
    );
    let large_id = l[0].id.clone();

    // Frees move the live figures exactly; cumulative figures stay.
    small.truncate(100);
    large.truncate(3);
    let after = heapwatch::snapshot();
    let s = site(&after, "make_small_buffers");
    assert_eq!(
        (
            s[0].allocations,
            s[0].frees,
            s[0].live_blocks,
            s[0].live_bytes
        ),
        (300, 200, 100, 4800)
    );
    let l = after.callsites.iter().find(|c| c.id == large_id).unwrap();
    assert_eq!(
        (l.allocations, l.frees, l.live_blocks, l.live_bytes),
        (7, 4, 3, 30_000)
    );

    // The diff subtracts cumulative figures and differences live ones.
    let d = after.diff(&snap);
    let dl = d.callsites.iter().find(|c| c.id == large_id).unwrap();
    assert_eq!(
        (dl.live_bytes_delta, dl.allocations, dl.frees),
        (-40_000, 0, 4)
    );

    // Round trip through JSON keeps everything.
    let back = heapwatch::Snapshot::from_json(&serde_json::to_string(&after).unwrap()).unwrap();
    assert_eq!(back, after);
    drop((small, large));
}

/// Grows one vector by reallocation, from 16 bytes to at least 100,000.
#[inline(never)]
fn grow_by_realloc() -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(16);
    for i in 0..100_000u32 {
        v.push(black_box(i as u8));
    }
    v
}

#[test]
fn reallocation_moves_the_sampled_block() {
    let v = grow_by_realloc();
    let snap = heapwatch::snapshot();
    let sites = site(&snap, "grow_by_realloc");
    assert!(!sites.is_empty());
    // Whatever line each step is attributed to, the function holds exactly
    // one live block now, of the vector's capacity: every reallocation
    // took the old block's record out and recorded the new one.
    let live_blocks: u64 = sites.iter().map(|c| c.live_blocks).sum();
    let live_bytes: u64 = sites.iter().map(|c| c.live_bytes).sum();
    assert_eq!(
        (live_blocks, live_bytes),
        (1, v.capacity() as u64),
        "{sites:#?}"
    );
    // Each growth is counted: an allocation, then reallocations, each
    // freeing the previous size.
    let allocated: u64 = sites.iter().map(|c| c.allocations).sum();
    let freed: u64 = sites.iter().map(|c| c.frees).sum();
    assert!(allocated >= 2 && freed == allocated - 1, "{sites:#?}");
    drop(v);
}
