//! Stack capture into a fixed-size buffer, from inside the allocator hook.
//!
//! Three unwinders stand behind one function, [`capture`]: what each
//! does and how [`Unwinder::Auto`] chooses are documented on [`Unwinder`],
//! in the public docs. The CFI walk is in `capture/cfi.rs`.
//!
//! Captured addresses are raw return addresses; they are symbolized later,
//! outside the hook, and heapwatch's own frames and the standard library's
//! allocation plumbing are trimmed then. Symbolization also cuts every
//! stack to the configured depth below the plumbing ([`user_depth`]), so
//! that captures of one callsite through paths of different lengths inside
//! heapwatch (or by two unwinders, as in a `fork` child) show as one.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod cfi;

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::*};

use serde::{Deserialize, Serialize};

/// The most raw frames a callsite keeps.
pub const MAX_FRAMES: usize = 32;
/// Default number of user frames kept.
pub(crate) const DEFAULT_DEPTH: usize = 16;
/// Frames allowed for heapwatch and the allocation plumbing above the
/// user's first frame (trimmed at symbolization). An unoptimized build
/// inlines nothing, so every generic layer of `Vec` growth (`RawVec`,
/// `Global::grow`, ...) and of heapwatch's own path is a frame of its own:
/// 13 user frames were all that was left of 26 for a `Vec::push` there, so
/// such builds allow 16 (an optimized build needs fewer than 10).
/// `tests/callsite_depth.rs` checks that a deep stack keeps its full depth.
const PLUMBING_FRAMES: usize = if cfg!(debug_assertions) { 16 } else { 10 };

/// Which unwinder captures stacks ([`set_unwinder`], or the tracker's
/// builder).
///
/// Three unwinders can capture stacks:
///
/// - a frame-pointer walk (~a few ns a frame), usable only when the build
///   keeps frame pointers (`-C force-frame-pointers=yes`). Every step is
///   checked against the thread's stack bounds, so a build without frame
///   pointers cannot make it read outside the stack. A function compiled
///   without them (in a C library, or a plugin built apart) keeps its
///   caller's frame pointer, so the walk goes from its callee straight to
///   its caller: that one function is missing from the stack;
/// - a DWARF CFI walk with a process-wide cache of unwind rules (x86-64
///   Linux): works on any build, ~10-20 ns a frame once the cache is warm.
///   A stack it cannot unwind (a signal frame, code without CFI) is
///   captured with the platform unwinder instead, and so is every stack in
///   a `fork` child (which must not call `dl_iterate_phdr`);
/// - the `backtrace` crate's unsynchronized trace (the platform unwinder,
///   `_Unwind_Backtrace`: works everywhere, ~100-200 ns a frame).
///
/// [`Unwinder::Auto`] (the default) decides once, on the first capture: it
/// walks a known chain of heapwatch's own functions with each fast unwinder
/// and with the platform unwinder, and uses frame pointers if that walk
/// finds the same return addresses, else the CFI walk if it does, else
/// `backtrace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unwinder {
    /// Frame pointers if a probe shows the build keeps them, else the CFI
    /// walk if its probe passes (x86-64 Linux), else `backtrace`.
    #[default]
    Auto,
    /// The `backtrace` crate (platform unwinder): always works, slowest.
    Backtrace,
    /// Frame pointers, if the probe shows the build keeps them; otherwise
    /// `backtrace` (never a wrong walk).
    FramePointers,
    /// The DWARF CFI walk with cached rules (x86-64 Linux), even if the
    /// build keeps frame pointers; `backtrace` where it is not available,
    /// for any stack it cannot unwind, and in a `fork` child.
    Cfi,
}

const REQ_AUTO: u8 = 0;
const REQ_BACKTRACE: u8 = 1;
const REQ_FP: u8 = 2;
const REQ_CFI: u8 = 3;

/// A probe's verdict on a fast unwinder.
const PROBE_UNKNOWN: u8 = 0;
const PROBE_FAILED: u8 = 1;
const PROBE_PASSED: u8 = 2;

static REQUESTED: AtomicU8 = AtomicU8::new(REQ_AUTO);
static FP_PROBE: AtomicU8 = AtomicU8::new(PROBE_UNKNOWN);
static CFI_PROBE: AtomicU8 = AtomicU8::new(PROBE_UNKNOWN);
/// Captures the CFI walk could not do, taken by `backtrace` instead.
static CFI_FALLBACKS: AtomicUsize = AtomicUsize::new(0);
static RAW_DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_DEPTH + PLUMBING_FRAMES);

/// Sets depth and unwinder (from the tracker's builder or at run time).
pub(crate) fn configure(depth: usize, unwinder: Unwinder) {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    cfi::register_fork_handler();
    let raw = depth
        .saturating_add(PLUMBING_FRAMES)
        .clamp(PLUMBING_FRAMES + 1, MAX_FRAMES);
    RAW_DEPTH.store(raw, Relaxed);
    if !EXPLICIT_UNWINDER.load(Relaxed) {
        store_unwinder(unwinder);
    }
}

/// Touches the unwinders' static tables before sampling starts (see
/// `callsites::touch_pages`).
pub(crate) fn prefault() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    cfi::prefault_cache();
}

/// How many user frames a callsite keeps: the raw depth less the frames
/// allowed for heapwatch and the allocation plumbing. Symbolization cuts
/// every stack to this many frames below its plumbing, so two captures of
/// one callsite that went through different paths inside heapwatch (a
/// fast and a slow path have different numbers of frames, and the raw
/// capture is cut at a fixed depth) still show the same frames.
pub(crate) fn user_depth() -> usize {
    RAW_DEPTH
        .load(Relaxed)
        .saturating_sub(PLUMBING_FRAMES)
        .max(1)
}

/// Set by [`set_unwinder`]: a choice made at run time wins over the
/// tracker's builder, even when made before its first allocation.
static EXPLICIT_UNWINDER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Chooses the unwinder at run time.
///
/// # Example
///
/// ```
/// use heapwatch::Unwinder;
///
/// heapwatch::set_unwinder(Unwinder::Backtrace);
/// assert_eq!(heapwatch::active_unwinder(), "backtrace");
/// heapwatch::set_unwinder(Unwinder::Auto);
/// ```
pub fn set_unwinder(unwinder: Unwinder) {
    EXPLICIT_UNWINDER.store(true, Relaxed);
    store_unwinder(unwinder);
}

fn store_unwinder(unwinder: Unwinder) {
    REQUESTED.store(
        match unwinder {
            Unwinder::Auto => REQ_AUTO,
            Unwinder::Backtrace => REQ_BACKTRACE,
            Unwinder::FramePointers => REQ_FP,
            Unwinder::Cfi => REQ_CFI,
        },
        Relaxed,
    );
}

/// The unwinder in use: `"frame_pointers"`, `"cfi"` or `"backtrace"`
/// (resolving [`Unwinder::Auto`] if no stack was captured yet).
///
/// # Example
///
/// ```
/// let u = heapwatch::active_unwinder();
/// assert!(["frame_pointers", "cfi", "backtrace"].contains(&u));
/// ```
pub fn active_unwinder() -> &'static str {
    match active() {
        Active::FramePointers => "frame_pointers",
        Active::Cfi => "cfi",
        Active::Backtrace => "backtrace",
    }
}

/// Captures the CFI walk could not unwind, which were taken by the platform
/// unwinder instead (signal frames, code without unwind information).
pub(crate) fn cfi_fallbacks() -> usize {
    CFI_FALLBACKS.load(Relaxed)
}

/// Bytes of the unwinders' static tables (the CFI rule cache), for
/// `overhead_bytes`.
pub(crate) fn static_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        cfi::CACHE_SLOTS * 16
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Active {
    FramePointers,
    Cfi,
    Backtrace,
}

/// The unwinder to use now, running each probe the first time it matters.
fn active() -> Active {
    let requested = REQUESTED.load(Relaxed);
    if requested == REQ_BACKTRACE {
        return Active::Backtrace;
    }
    if requested != REQ_CFI && passes(&FP_PROBE, fp::walk) {
        return Active::FramePointers;
    }
    // A fork child captures with `backtrace` (see `cfi::in_forked_child`);
    // its stacks match the parent's CFI-captured ones after symbolization.
    if requested != REQ_FP && passes(&CFI_PROBE, cfi_walk) && !cfi_forked() {
        Active::Cfi
    } else {
        Active::Backtrace
    }
}

/// Whether `walker` passed its probe (probing it on first use).
fn passes(verdict: &AtomicU8, walker: fn(&mut [usize]) -> usize) -> bool {
    match verdict.load(Relaxed) {
        PROBE_PASSED => true,
        PROBE_FAILED => false,
        _ => {
            let ok = probe::run(walker);
            verdict.store(if ok { PROBE_PASSED } else { PROBE_FAILED }, Relaxed);
            ok
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use cfi::walk as cfi_walk;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use cfi::in_forked_child as cfi_forked;

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn cfi_forked() -> bool {
    false
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn cfi_walk(_out: &mut [usize]) -> usize {
    0
}

/// Captures the calling stack's return addresses into `out`, and the
/// callsite table's hash of them (`callsites::frames_hash`); returns how
/// many were written and the hash. The frame-pointer walk hashes each
/// frame as it reads it (the hashing overlaps its chain of dependent
/// loads); the other unwinders hash after their walk. Allocation-free and
/// panic-free; call with the reentrancy guard held.
#[inline(never)]
pub(crate) fn capture_hashed(out: &mut [usize; MAX_FRAMES]) -> (usize, u64) {
    use crate::callsites::frames_hash;
    let depth = RAW_DEPTH.load(Relaxed).min(MAX_FRAMES);
    let Some(out) = out.get_mut(..depth) else {
        return (0, frames_hash(&[]));
    };
    match active() {
        Active::FramePointers => {
            let (n, h) = fp::walk_hashed(out);
            if n > 1 {
                return (n, h);
            }
        }
        Active::Cfi => {
            let n = cfi_walk(out);
            if n > 1 {
                return (n, frames_hash(out.get(..n).unwrap_or(&[])));
            }
            CFI_FALLBACKS.fetch_add(1, Relaxed);
        }
        Active::Backtrace => {}
    }
    let n = backtrace_walk(out);
    (n, frames_hash(out.get(..n).unwrap_or(&[])))
}

/// [`capture_hashed`] without the hash, for tests.
#[cfg(test)]
pub(crate) fn capture(out: &mut [usize; MAX_FRAMES]) -> usize {
    capture_hashed(out).0
}

#[inline(never)]
fn backtrace_walk(out: &mut [usize]) -> usize {
    let mut n = 0;
    // SAFETY: `trace_unsynchronized` is unsafe only because it does not take
    // the crate's global lock; on Unix the platform unwinder it calls
    // (`_Unwind_Backtrace`) is thread-safe. The synchronized `trace` cannot
    // be used here: its lock may allocate on first use, and the hook must
    // not.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            match out.get_mut(n) {
                // The outermost frame has no return address: stop there.
                Some(slot) if ip != 0 => {
                    *slot = ip;
                    n += 1;
                    n < out.len()
                }
                _ => false,
            }
        });
    }
    n
}

thread_local! {
    /// This thread's stack bounds `(low, high)`; `(0, 0)` until looked up,
    /// `(1, 1)` when they cannot be known.
    static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn stack_bounds() -> Option<(usize, usize)> {
    let b = STACK.try_with(Cell::get).ok()?;
    if b.1 > 1 {
        return Some(b);
    }
    if b.1 == 1 {
        return None;
    }
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before it is read
    // and destroyed exactly once; the out-pointers are valid locals. glibc
    // allocates here only with its own `malloc`, never through Rust's global
    // allocator, so this cannot re-enter the hook.
    let found = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            None
        } else {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            if rc == 0 && !addr.is_null() && size > 0 {
                Some((addr as usize, addr as usize + size))
            } else {
                None
            }
        }
    };
    let _ = STACK.try_with(|s| s.set(found.unwrap_or((1, 1))));
    found
}

mod fp {
    /// Walks frame pointers from the caller of this function. Every frame
    /// record must lie inside the thread's stack, be aligned, and be above
    /// the previous one; the walk stops at the first that is not.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[inline(never)]
    pub(super) fn walk(out: &mut [usize]) -> usize {
        walk_from_here(out).0
    }

    /// [`walk`], also returning the callsite table's hash of the frames
    /// (`callsites::frames_hash`), computed frame by frame during the walk.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[inline(never)]
    pub(super) fn walk_hashed(out: &mut [usize]) -> (usize, u64) {
        walk_from_here(out)
    }

    /// The body of [`walk`] and [`walk_hashed`], inlined into each so that
    /// the frame pointer it reads is theirs.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[inline(always)]
    fn walk_from_here(out: &mut [usize]) -> (usize, u64) {
        use crate::callsites::{hash_finish, hash_step, HASH_START};
        let mut h = HASH_START;
        let Some((lo, hi)) = super::stack_bounds() else {
            return (0, hash_finish(h, 0));
        };
        let mut fp: usize;
        // SAFETY: reads the frame-pointer register into a local; touches no
        // memory and no flags.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
        }
        // SAFETY: as above, for x29 on aarch64.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
        }
        // Each record must lie above the one before (checked at the end of
        // the loop), so after this check every `fp` is at least `lo`.
        if fp < lo {
            return (0, hash_finish(h, 0));
        }
        let top = hi.saturating_sub(16);
        let mut n = 0;
        while n < out.len() {
            if !fp.is_multiple_of(std::mem::align_of::<usize>()) || fp > top {
                break;
            }
            // SAFETY: `fp .. fp + 16` lies inside this thread's mapped stack
            // (`lo <= fp`: checked before the loop for the first record, and
            // each record lies above the previous one; `fp <= hi - 16`:
            // checked just above) and is aligned, so both words are
            // readable; a build without frame pointers can make the values
            // meaningless, never the reads invalid.
            let (next, ret) = unsafe {
                let p = fp as *const usize;
                (p.read(), p.add(1).read())
            };
            if ret == 0 {
                break;
            }
            if let Some(slot) = out.get_mut(n) {
                *slot = ret;
                h = hash_step(h, ret);
            }
            n += 1;
            if next <= fp {
                break;
            }
            fp = next;
        }
        (n, hash_finish(h, n))
    }

    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    pub(super) fn walk(_out: &mut [usize]) -> usize {
        0
    }

    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    pub(super) fn walk_hashed(_out: &mut [usize]) -> (usize, u64) {
        (0, crate::callsites::frames_hash(&[]))
    }
}

mod probe {
    /// Whether `walker` agrees with the platform unwinder on a chain of
    /// heapwatch's own functions. `walker` writes return addresses from its
    /// caller on, as `fp::walk` and `cfi::walk` do.
    #[inline(never)]
    pub(super) fn run(walker: fn(&mut [usize]) -> usize) -> bool {
        std::hint::black_box(outer(walker))
    }

    #[inline(never)]
    fn outer(walker: fn(&mut [usize]) -> usize) -> bool {
        std::hint::black_box(inner(walker))
    }

    #[inline(never)]
    fn inner(walker: fn(&mut [usize]) -> usize) -> bool {
        let mut a = [0usize; super::MAX_FRAMES];
        let na = walker(&mut a);
        let mut b = [0usize; 2 * super::MAX_FRAMES];
        let nb = super::backtrace_walk(&mut b);
        match (a.get(..na), b.get(..nb)) {
            (Some(a), Some(b)) => agrees(a, b),
            _ => false,
        }
    }

    /// Whether the fast walk `a` taken in `inner` matches
    /// the platform unwinder's walk `b` taken in the same function:
    ///
    /// - `a[0]` is the return address of the call to the walker, so it must not
    ///   be in `b` but lie close to `b`'s return address of the call to
    ///   `backtrace_walk` (both inside `inner`). A walk that starts
    ///   late, because this code keeps no frame pointer while callers do,
    ///   fails here;
    /// - from there on both walks are the same frames, at least 3 of them,
    ///   up to where either ends: a skipped or invented frame fails.
    pub(super) fn agrees(a: &[usize], b: &[usize]) -> bool {
        let Some((&first, rest)) = a.split_first() else {
            return false;
        };
        let Some(&second) = rest.first() else {
            return false;
        };
        if b.contains(&first) {
            return false;
        }
        let Some(j) = b.iter().position(|&ip| ip == second) else {
            return false;
        };
        let Some(&sibling) = j.checked_sub(1).and_then(|k| b.get(k)) else {
            return false;
        };
        if first.abs_diff(sibling) > 512 {
            return false;
        }
        let tail = b.get(j..).unwrap_or(&[]);
        let n = rest.len().min(tail.len());
        n >= 3 && rest.iter().zip(tail).take(n).all(|(x, y)| x == y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_this_test() {
        let mut out = [0usize; MAX_FRAMES];
        let n = capture(&mut out);
        assert!(n > 3, "only {n} frames");
        assert!(out[..n].iter().all(|&ip| ip != 0));
    }

    #[test]
    fn probe_rejects_late_skipped_or_invented_frames() {
        // b: [trace internals, call of backtrace_walk in probe_inner (1000),
        //     probe_outer (20), probe (30), caller (40), ...]
        let b = [5, 1000, 20, 30, 40, 50, 60];
        // a: [call of walk in probe_inner (1040), then the same frames].
        assert!(probe::agrees(&[1040, 20, 30, 40, 50], &b));
        assert!(
            probe::agrees(&[1040, 20, 30, 40, 50, 60, 70], &b),
            "b may end first"
        );
        assert!(
            !probe::agrees(&[30, 40, 50, 60], &b),
            "a walk that starts late"
        );
        assert!(
            !probe::agrees(&[1040, 20, 40, 50, 60], &b),
            "a skipped frame"
        );
        assert!(
            !probe::agrees(&[1040, 20, 30, 99, 50], &b),
            "an invented frame"
        );
        assert!(
            !probe::agrees(&[9000, 20, 30, 40], &b),
            "first frame not in probe_inner"
        );
        assert!(!probe::agrees(&[1040, 20, 30], &b), "too short to tell");
        assert!(!probe::agrees(&[], &b));
    }

    #[test]
    fn frame_pointer_walk_never_crashes() {
        // Whatever the build, the walk stays inside the stack.
        let mut out = [0usize; MAX_FRAMES];
        let n = fp::walk(&mut out);
        assert!(n <= MAX_FRAMES);
        let _ = probe::run(fp::walk);
    }
}
