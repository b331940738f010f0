//! The layout a block is freed (or reallocated) with reaches the inner
//! allocator exactly as the program gave it, for every alignment from 1 to
//! 4,096 and in every sampling mode.
//!
//! `dealloc` reaches its fast path through a table of copies, one per
//! alignment up to 16, and a copy for any other alignment; the program's
//! `Box<dyn Trait>` drops index that table at run time. A copy that passed
//! another alignment or size on would hand the inner allocator a layout the
//! block was not allocated with, which `GlobalAlloc` forbids and which
//! `System` and jemalloc would not notice. The inner allocator here
//! remembers each live block's layout and counts every mismatch.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

use heapwatch::{Sampling, Tracker};

/// Live blocks the checker can remember at once; blocks beyond it are not
/// checked (counted in `UNCHECKED`).
const SLOTS: usize = 1 << 16;

/// Open addressing on the block address; a removed entry leaves a
/// tombstone (`usize::MAX`), so probe chains stay unbroken.
static KEYS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static SIZES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static ALIGNS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
const TOMBSTONE: usize = usize::MAX;

/// Frees and reallocs whose layout matched the allocation's.
static MATCHED: AtomicU64 = AtomicU64::new(0);
/// Frees and reallocs whose layout did not.
static MISMATCHED: AtomicU64 = AtomicU64::new(0);
/// Blocks the table had no room for.
static UNCHECKED: AtomicU64 = AtomicU64::new(0);

fn home(ptr: usize) -> usize {
    ((ptr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as usize & (SLOTS - 1)
}

fn remember(ptr: usize, layout: Layout) {
    let mut i = home(ptr);
    for _ in 0..SLOTS {
        let key = &KEYS[i];
        let seen = key.load(Acquire);
        if (seen == 0 || seen == TOMBSTONE)
            && key.compare_exchange(seen, ptr, AcqRel, Acquire).is_ok()
        {
            SIZES[i].store(layout.size(), Release);
            ALIGNS[i].store(layout.align(), Release);
            return;
        }
        i = (i + 1) & (SLOTS - 1);
    }
    UNCHECKED.fetch_add(1, Relaxed);
}

/// Compares `layout` with the one `ptr` was allocated with, and forgets it.
fn check(ptr: usize, layout: Layout) {
    let mut i = home(ptr);
    for _ in 0..SLOTS {
        match KEYS[i].load(Acquire) {
            0 => return, // not remembered: counted in UNCHECKED
            k if k == ptr => {
                let same = SIZES[i].load(Acquire) == layout.size()
                    && ALIGNS[i].load(Acquire) == layout.align();
                if same { &MATCHED } else { &MISMATCHED }.fetch_add(1, Relaxed);
                KEYS[i].store(TOMBSTONE, Release);
                return;
            }
            _ => i = (i + 1) & (SLOTS - 1),
        }
    }
}

/// `System`, remembering each block's layout and checking it when the
/// block is freed or moved. Allocation-free, so usable as an inner
/// allocator.
struct Checked;

// SAFETY: every method forwards to `System` with its arguments unchanged;
// the bookkeeping only reads the arguments and touches the static tables.
unsafe impl GlobalAlloc for Checked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            remember(p as usize, layout);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            remember(p as usize, layout);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        check(ptr as usize, layout);
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Checked (and forgotten) first: once `System` has moved the block,
        // another thread may be given the old address.
        check(ptr as usize, layout);
        // SAFETY: the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            // The old block stays, with its layout.
            remember(ptr as usize, layout);
        } else {
            // SAFETY: `realloc`'s contract makes `new_size` with the old
            // alignment a valid layout.
            remember(p as usize, unsafe {
                Layout::from_size_align_unchecked(new_size, layout.align())
            });
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Tracker<Checked> = Tracker::new(Checked);

/// A value of alignment `N` behind a trait object: its drop frees with the
/// alignment the vtable gives at run time.
trait Dyn {
    fn byte(&self) -> u8;
}

macro_rules! aligned {
    ($($name:ident = $align:literal),* $(,)?) => {
        $(
            #[repr(align($align))]
            struct $name([u8; 3]);
            impl Dyn for $name {
                fn byte(&self) -> u8 {
                    self.0[1]
                }
            }
        )*
        /// One boxed value of each alignment, as trait objects.
        fn boxed_dyns() -> Vec<Box<dyn Dyn>> {
            vec![$(Box::new($name([1, 2, 3])) as Box<dyn Dyn>),*]
        }
    };
}

aligned!(
    A1 = 1,
    A2 = 2,
    A4 = 4,
    A8 = 8,
    A16 = 16,
    A32 = 32,
    A64 = 64,
    A4096 = 4096,
);

/// Allocates, grows, shrinks and frees blocks of every alignment from 1 to
/// 4,096 through the global allocator directly, then through trait
/// objects.
fn exercise() {
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1, 3, 8, 24, 100, 4096, 70_000] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: `layout` has a non-zero size; each block is freed
            // once, with the layout (and, after `realloc`, the size) it
            // has at that point.
            unsafe {
                let p = GLOBAL.alloc(layout);
                assert!(!p.is_null());
                black_box(p);
                GLOBAL.dealloc(p, layout);

                let z = GLOBAL.alloc_zeroed(layout);
                assert!(!z.is_null());
                let grown = GLOBAL.realloc(z, layout, size * 2);
                assert!(!grown.is_null());
                let shrunk = GLOBAL.realloc(
                    grown,
                    Layout::from_size_align(size * 2, align).unwrap(),
                    size,
                );
                assert!(!shrunk.is_null());
                GLOBAL.dealloc(shrunk, layout);
            }
        }
    }
    for _ in 0..100 {
        let dyns = black_box(boxed_dyns());
        assert_eq!(dyns.iter().map(|d| u32::from(d.byte())).sum::<u32>(), 2 * 8);
    }
}

fn main() {
    // The checker itself: a free with another alignment than the block's
    // is counted.
    let before = MISMATCHED.load(Relaxed);
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: a 64-byte block, freed once. `System` frees blocks of
    // alignment 8 and 16 alike, so the wrong layout here is harmless to it;
    // only the checker sees it.
    unsafe {
        let p = Checked.alloc(layout);
        assert!(!p.is_null());
        Checked.dealloc(p, Layout::from_size_align(64, 16).unwrap());
    }
    assert_eq!(
        MISMATCHED.load(Relaxed),
        before + 1,
        "the checker counts a mismatch"
    );
    let expected_mismatches = before + 1;

    for mode in [
        Sampling::Off,
        Sampling::DEFAULT,
        Sampling::Bytes(64),
        Sampling::All,
    ] {
        heapwatch::set_sampling(mode);
        let matched = MATCHED.load(Relaxed);
        exercise();
        assert_eq!(
            MISMATCHED.load(Relaxed),
            expected_mismatches,
            "{mode:?}: a block was freed or moved with another layout than its own"
        );
        // 13 alignments × 7 sizes × 4 frees or reallocs, and 8 trait
        // objects and their vector 100 times.
        let checked = MATCHED.load(Relaxed) - matched;
        assert!(
            checked >= 13 * 7 * 4 + 100 * 9,
            "{mode:?}: only {checked} frees checked"
        );
    }
    assert_eq!(
        UNCHECKED.load(Relaxed),
        0,
        "the checker had room for every block"
    );
    println!("layout_passthrough: ok");
}
