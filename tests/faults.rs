//! Faults: an inner allocator that fails, panics inside heapwatch's
//! closures, and allocation after `main` returned. heapwatch must pass
//! failures through without counting them, keep a block whose `realloc`
//! failed counted and intact, and stay usable after every one of these.
//!
//! Every test measures the current thread only (`heapwatch::scope` and
//! callsites of its own functions), so the tests can run in parallel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};

use heapwatch::{GrowthCheck, Sampling, Tracker};

mod common;

/// `System`, except that it returns null while the calling thread's flag is
/// set. (A per-thread flag, so libtest's own threads never see a failure.)
struct Flaky<A>(A);

thread_local! {
    static FAIL: Cell<bool> = const { Cell::new(false) };
}

fn failing() -> bool {
    FAIL.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f` with this thread's allocations failing.
fn with_failures<R>(f: impl FnOnce() -> R) -> R {
    FAIL.with(|c| c.set(true));
    let r = f();
    FAIL.with(|c| c.set(false));
    r
}

// SAFETY: forwards to `A` unchanged, or returns null, which `GlobalAlloc`
// allows for any allocation request (and a null `realloc` leaves the old
// block untouched).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Flaky<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if failing() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if failing() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc_zeroed`'s contract.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if failing() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracker<Flaky<System>> = Tracker::new(Flaky(System)).with_sampling(Sampling::All);

/// A block from its own function, so its callsite is known. The result
/// goes through `black_box` so that the allocator call is not a tail call:
/// an optimized build would jump to it, leaving no frame of this function
/// on the stack for the callsite to name.
#[inline(never)]
fn flaky_block(layout: Layout) -> *mut u8 {
    // SAFETY: `layout` has a non-zero size.
    std::hint::black_box(unsafe { std::alloc::alloc(layout) })
}

/// (allocations, frees, live blocks, live bytes) of `flaky_block`'s
/// callsites.
fn flaky_block_site() -> (u64, u64, u64, u64) {
    common::figures_at(&heapwatch::snapshot(), "flaky_block")
}

#[test]
fn inner_allocator_failures_pass_through_uncounted() {
    let layout = Layout::from_size_align(1000, 16).unwrap();

    // alloc and alloc_zeroed: null, nothing counted.
    let (ptrs, s) = heapwatch::scope(|| {
        with_failures(|| {
            // SAFETY: non-zero size; null results are only compared.
            unsafe { (GLOBAL.alloc(layout), GLOBAL.alloc_zeroed(layout)) }
        })
    });
    assert!(ptrs.0.is_null() && ptrs.1.is_null());
    assert_eq!(
        (s.allocations, s.allocated_bytes, s.frees, s.net_live_bytes),
        (0, 0, 0, 0),
        "{s:?}"
    );

    // The standard library sees the null as an ordinary allocation failure.
    let (r, s) = heapwatch::scope(|| with_failures(|| Vec::<u8>::new().try_reserve(1 << 20)));
    assert!(r.is_err());
    assert_eq!((s.allocations, s.allocated_bytes), (0, 0), "{s:?}");

    // realloc failure: the old block stays allocated, intact, and counted
    // (in the totals and at its callsite).
    let site_before = flaky_block_site();
    let p = flaky_block(layout);
    assert!(!p.is_null());
    // SAFETY: `p` is a live block of 1000 bytes.
    unsafe { p.write_bytes(0x5A, 1000) };
    assert_eq!(
        flaky_block_site(),
        (
            site_before.0 + 1,
            site_before.1,
            site_before.2 + 1,
            site_before.3 + 1000
        )
    );
    let (q, s) = heapwatch::scope(|| {
        // SAFETY: `p` is live with `layout`; the new size is non-zero.
        with_failures(|| unsafe { GLOBAL.realloc(p, layout, 1 << 20) })
    });
    assert!(q.is_null());
    assert_eq!(
        (s.reallocs, s.allocated_bytes, s.freed_bytes, s.frees),
        (0, 0, 0, 0),
        "{s:?}"
    );
    // SAFETY: the failed realloc left `p` live with its 1000 bytes.
    assert!((0..1000).all(|i| unsafe { *p.add(i) } == 0x5A));
    assert_eq!(
        flaky_block_site(),
        (
            site_before.0 + 1,
            site_before.1,
            site_before.2 + 1,
            site_before.3 + 1000
        ),
        "the failed realloc must leave the block's record in place"
    );

    // Shrinking realloc failure (no budget growth to cancel) too.
    let (q, s) = heapwatch::scope(|| {
        // SAFETY: as above, smaller non-zero size.
        with_failures(|| unsafe { GLOBAL.realloc(p, layout, 10) })
    });
    assert!(q.is_null());
    assert_eq!((s.reallocs, s.allocated_bytes, s.freed_bytes), (0, 0, 0));

    // The flag cleared: allocation works and is counted once.
    let (q, s) = heapwatch::scope(|| {
        // SAFETY: `p` is live with `layout`.
        unsafe { GLOBAL.realloc(p, layout, 4000) }
    });
    assert!(!q.is_null());
    // SAFETY: the successful realloc kept the first 1000 bytes.
    assert!((0..1000).all(|i| unsafe { *q.add(i) } == 0x5A));
    assert_eq!(
        (s.reallocs, s.allocated_bytes, s.freed_bytes),
        (1, 4000, 1000)
    );
    let l4000 = Layout::from_size_align(4000, 16).unwrap();
    let ((), s) = heapwatch::scope(|| {
        // SAFETY: `q` is live with `l4000`.
        unsafe { GLOBAL.dealloc(q, l4000) }
    });
    assert_eq!((s.frees, s.freed_bytes), (1, 4000));
    // The block left its callsite (a realloc counts as its free there).
    assert_eq!(
        flaky_block_site(),
        (
            site_before.0 + 1,
            site_before.1 + 1,
            site_before.2,
            site_before.3
        )
    );

    let (v, s) = heapwatch::scope(|| black_box(vec![1u8; 777]));
    assert_eq!((s.allocations, s.allocated_bytes), (1, 777));
    drop(v);
}

#[test]
fn panics_inside_heapwatch_closures_leave_it_usable() {
    let r = catch_unwind(|| {
        heapwatch::scope(|| {
            let _held = black_box(vec![0u8; 100]);
            panic!("boom inside scope");
        })
    });
    assert!(r.is_err());

    let mut calls = 0;
    let r = catch_unwind(AssertUnwindSafe(|| {
        GrowthCheck::new().run(|| {
            calls += 1;
            let v = black_box(vec![0u8; 64]);
            if calls == 5 {
                panic!("boom inside a growth check (measured iteration)");
            }
            drop(v);
        })
    }));
    assert!(r.is_err());
    assert_eq!(calls, 5);

    // Still usable: scopes count exactly, growth checks decide, snapshots
    // build.
    let (v, s) = heapwatch::scope(|| black_box(vec![2u8; 300]));
    assert_eq!((s.allocations, s.net_live_bytes), (1, 300));
    drop(v);
    assert!(GrowthCheck::new()
        .run(|| drop(black_box(vec![0u8; 64])))
        .is_ok());
    let mut kept = Vec::new();
    assert!(GrowthCheck::new()
        .run(|| kept.push(black_box(vec![0u8; 64])))
        .is_err());
    assert!(heapwatch::snapshot().totals.allocations > 0);
}

const ATEXIT_ENV: &str = "HEAPWATCH_FAULTS_ATEXIT";

/// Runs at load time in every run of this binary; only in the child
/// started by `allocation_after_main_returns` does it register the atexit
/// handler.
extern "C" fn at_load() {
    // SAFETY: the name is a NUL-terminated literal; getenv only reads.
    let set = unsafe { !libc::getenv(c"HEAPWATCH_FAULTS_ATEXIT".as_ptr()).is_null() };
    if set {
        // SAFETY: `after_main` is an `extern "C" fn()` that lives for the
        // whole program and never unwinds (it catches panics).
        unsafe { libc::atexit(after_main) };
    }
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

/// Registered with `atexit`: runs after `main` returned and the standard
/// library cleaned up. Allocates, frees and reports through `write(2)`.
extern "C" fn after_main() {
    let r = catch_unwind(|| {
        let before = heapwatch::stats();
        let v = black_box(vec![5u8; 4096]);
        let mid = heapwatch::stats();
        drop(v);
        let after = heapwatch::stats();
        format!(
            "heapwatch-atexit allocations={} {} {} live_delta={} frees_delta={}\n",
            before.allocations,
            mid.allocations,
            after.allocations,
            mid.live_bytes - before.live_bytes,
            after.frees - mid.frees,
        )
    });
    let line = r.unwrap_or_else(|_| "heapwatch-atexit panicked\n".to_string());
    // SAFETY: writes `line`'s bytes, which outlive the call, to stdout.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
}

#[test]
fn allocation_after_main_returns() {
    let exe = std::env::current_exe().unwrap();
    // A filter that matches no test: libtest runs nothing and `main`
    // returns, then the atexit handler runs.
    let out = std::process::Command::new(exe)
        .args(["--exact", "no_test_is_named_this"])
        .env(ATEXIT_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("heapwatch-atexit"))
        .unwrap_or_else(|| panic!("the atexit handler printed nothing:\n{stdout}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    // before, mid, after, live delta, frees delta.
    let [before, mid, after, live, frees] = nums[..] else {
        panic!("unexpected line {line:?}");
    };
    assert!(before > 0, "{line}");
    assert_eq!(mid, before + 1, "{line}");
    assert!(after >= mid, "{line}");
    assert_eq!((live, frees), (4096, 1), "{line}");
}
