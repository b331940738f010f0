//! Workloads shared by the per-allocator integration tests. Each test file
//! is its own process with its own `#[global_allocator]`.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::OsStr;
use std::hint::black_box;

use heapwatch::Stats;

/// The program's live blocks and bytes (`allocations - frees`,
/// `allocated_bytes - freed_bytes`), signed: a wrong count shows as the
/// negative it is instead of clamping at zero as `Stats::live_*` do.
pub fn signed_live() -> (i64, i64) {
    let s = heapwatch::stats();
    (
        s.allocations.wrapping_sub(s.frees) as i64,
        s.allocated_bytes.wrapping_sub(s.freed_bytes) as i64,
    )
}

/// Keeps a block of `size` bytes allocated `depth` calls deep: each depth
/// is a callsite of its own.
#[inline(never)]
pub fn keep_at_depth(depth: usize, size: usize, out: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        out.push(black_box(vec![1u8; size]));
    } else {
        keep_at_depth(depth - 1, size, out);
        black_box(());
    }
}

/// Runs `f` and returns the change in the process-wide totals.
pub fn delta(f: impl FnOnce()) -> Stats {
    let a = heapwatch::stats();
    f();
    let b = heapwatch::stats();
    let mut d = b;
    d.allocations = b.allocations - a.allocations;
    d.frees = b.frees - a.frees;
    d.reallocs = b.reallocs - a.reallocs;
    d.allocated_bytes = b.allocated_bytes - a.allocated_bytes;
    d.freed_bytes = b.freed_bytes - a.freed_bytes;
    d.live_bytes = b.live_bytes.wrapping_sub(a.live_bytes);
    d.live_blocks = b.live_blocks.wrapping_sub(a.live_blocks);
    d
}

/// Exact totals for a workload whose numbers are known, through the global
/// allocator `g`.
pub fn exact_totals<G: GlobalAlloc>(g: &G) {
    // One allocation, one free.
    let d = delta(|| {
        black_box(Box::new([0u8; 100]));
    });
    assert_eq!(
        (d.allocations, d.frees, d.allocated_bytes, d.freed_bytes),
        (1, 1, 100, 100)
    );
    assert_eq!(d.live_bytes, 0);

    // Kept blocks stay live, exactly.
    let mut kept = Vec::new();
    let d = delta(|| {
        for i in 0..10 {
            kept.push(black_box(vec![i as u8; 1000]));
        }
    });
    // 10 buffers, plus the outer Vec's first allocation and its growth
    // (4 -> 8 -> 16 elements: 1 alloc + 2 reallocs of `Vec<u8>`s, 24
    // bytes each on 64-bit targets).
    let outer = 16 * std::mem::size_of::<Vec<u8>>() as u64;
    assert_eq!(d.allocations, 11, "{d:?}");
    assert_eq!(d.reallocs, 2, "{d:?}");
    assert_eq!(d.frees, 0, "{d:?}");
    assert_eq!(d.live_bytes, 10 * 1000 + outer, "{d:?}");
    assert_eq!(d.live_blocks, 11, "{d:?}");
    let d = delta(|| drop(std::mem::take(&mut kept)));
    assert_eq!(d.frees, 11);
    assert_eq!(d.live_bytes.wrapping_neg(), 10 * 1000 + outer);

    // realloc: grow, shrink, same size.
    let layout = Layout::from_size_align(64, 8).unwrap();
    let d = delta(|| {
        // SAFETY: `layout` has non-zero size; every pointer is checked for
        // null and freed with the layout it currently has.
        unsafe {
            let p = g.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(0xAB, 64);
            let p = g.realloc(p, layout, 4096);
            assert!(!p.is_null());
            assert!(
                (0..64).all(|i| *p.add(i) == 0xAB),
                "realloc must keep the contents"
            );
            let l4096 = Layout::from_size_align(4096, 8).unwrap();
            let p = g.realloc(p, l4096, 32);
            assert!(!p.is_null());
            let l32 = Layout::from_size_align(32, 8).unwrap();
            let p = g.realloc(p, l32, 32);
            assert!(!p.is_null());
            g.dealloc(p, l32);
        }
    });
    assert_eq!((d.allocations, d.reallocs, d.frees), (1, 3, 1), "{d:?}");
    assert_eq!(d.allocated_bytes, 64 + 4096 + 32 + 32, "{d:?}");
    assert_eq!(d.freed_bytes, 64 + 4096 + 32 + 32, "{d:?}");
    assert_eq!(d.live_bytes, 0);

    // alloc_zeroed really zeroes, even over memory that was dirty.
    for _ in 0..3 {
        let l = Layout::from_size_align(8192, 64).unwrap();
        // SAFETY: non-zero size; freed with the same layout.
        unsafe {
            let dirty = g.alloc(l);
            assert!(!dirty.is_null());
            dirty.write_bytes(0xFF, 8192);
            g.dealloc(dirty, l);
            let z = g.alloc_zeroed(l);
            assert!(!z.is_null());
            assert!(
                (0..8192).all(|i| *z.add(i) == 0),
                "alloc_zeroed returned dirty memory"
            );
            g.dealloc(z, l);
        }
    }

    // Alignment is preserved up to 4096.
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1usize, align, 3 * align + 1] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed with the same layout.
            unsafe {
                let p = g.alloc(l);
                assert!(!p.is_null());
                assert_eq!(
                    p as usize % align,
                    0,
                    "alignment {align} lost for size {size}"
                );
                let p2 = g.realloc(p, l, size * 2);
                assert!(!p2.is_null());
                assert_eq!(p2 as usize % align, 0, "alignment {align} lost by realloc");
                g.dealloc(p2, Layout::from_size_align(size * 2, align).unwrap());
            }
        }
    }
}

/// 8 threads churning, then joined: totals exact.
pub fn threads_churn_exact() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 2_000;
    let d = delta(|| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut keep = Vec::with_capacity(ROUNDS);
                    for i in 0..ROUNDS {
                        let size = 1 + (i * 37 + t * 11) % 3000;
                        let v = black_box(vec![1u8; size]);
                        if i % 4 == 0 {
                            keep.push(v);
                        }
                    }
                    keep
                })
            })
            .collect();
        let kept: Vec<Vec<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // Blocks allocated on the worker threads are freed here, on another
        // thread: the totals must still balance.
        drop(kept);
    });
    assert_eq!(d.live_bytes, 0, "{d:?}");
    assert_eq!(d.live_blocks, 0, "{d:?}");
    assert_eq!(d.allocations, d.frees, "{d:?}");
    // Every worker made ROUNDS allocations plus its `keep` Vec.
    assert!(d.allocations >= (THREADS * (ROUNDS + 1)) as u64, "{d:?}");
    let mut expected_bytes = 0u64;
    for t in 0..THREADS {
        for i in 0..ROUNDS {
            expected_bytes += (1 + (i * 37 + t * 11) % 3000) as u64;
        }
    }
    assert!(d.allocated_bytes >= expected_bytes, "{d:?}");
}

/// The callsites of `snap` whose innermost frame is a function ending in
/// `function`.
pub fn callsites_at<'a>(
    snap: &'a heapwatch::Snapshot,
    function: &'a str,
) -> impl Iterator<Item = &'a heapwatch::Callsite> {
    snap.callsites.iter().filter(move |c| {
        c.frames
            .first()
            .is_some_and(|f| f.function.ends_with(function))
    })
}

/// `(allocations, frees, live blocks, live bytes)` summed over
/// [`callsites_at`]`(snap, function)`.
pub fn figures_at(snap: &heapwatch::Snapshot, function: &str) -> (u64, u64, u64, u64) {
    callsites_at(snap, function).fold((0, 0, 0, 0), |a, c| {
        (
            a.0 + c.allocations,
            a.1 + c.frees,
            a.2 + c.live_blocks,
            a.3 + c.live_bytes,
        )
    })
}

/// Runs the test `test` of this test binary again in a child process, with
/// the environment variable `child_var` set to `mode` (which the test reads
/// to know which case it is) and `var` set to `value`, and fails naming
/// both and the child's output unless the child passes. For settings read
/// once per process (at the first allocation, or by other tests of the same
/// binary), which must be set before the process starts.
pub fn pass_in_child(test: &str, child_var: &str, mode: &str, var: &str, value: impl AsRef<OsStr>) {
    let value = value.as_ref();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(child_var, mode)
        .env(var, value)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child ({mode}, {var}={value:?}) failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
