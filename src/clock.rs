//! Wall and monotonic time without allocating (the hook records the start).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

static START_NS: AtomicU64 = AtomicU64::new(0);

/// Monotonic nanoseconds (CLOCK_MONOTONIC). Never allocates.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on
    // every supported platform.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Records the process's start (the tracker's first allocation).
pub(crate) fn start() {
    let _ = START_NS.compare_exchange(0, monotonic_ns().max(1), Relaxed, Relaxed);
}

/// Milliseconds since the tracker's first allocation.
pub(crate) fn uptime_ms() -> u64 {
    let s = START_NS.load(Relaxed);
    if s == 0 {
        0
    } else {
        monotonic_ns().saturating_sub(s) / 1_000_000
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
