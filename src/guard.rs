//! The reentrancy guard.
//!
//! One `const`-initialised thread-local `Cell<bool>` with no destructor, so it
//! can be read at any point of a thread's life, thread-local teardown
//! included. While it is set on a thread, every allocation that thread makes
//! goes straight to the inner allocator and is counted as heapwatch's own
//! overhead, not as the program's. It is set:
//!
//! - around every inner `alloc`, `alloc_zeroed` and `realloc` call from the
//!   hook, so an inner allocator that allocates through the global
//!   allocator itself (`dhat::Alloc` does) cannot recurse into the slow
//!   path and its bookkeeping is counted as overhead (the inner `dealloc` is
//!   called without it, as a tail call: no inner allocator we know
//!   allocates while freeing);
//! - around heapwatch's own work that may allocate (symbolizing, building
//!   snapshots for the server, the server thread itself).
//!
//! The RAII [`Guard`] restores the previous value on drop, so it nests and is
//! panic-safe.

use std::cell::Cell;

thread_local! {
    static IN_HEAPWATCH: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside heapwatch (or inside the inner
/// allocator called from the hook). Never panics; a thread whose
/// thread-locals cannot be reached counts as inside.
#[inline(always)]
pub(crate) fn is_active() -> bool {
    IN_HEAPWATCH.try_with(Cell::get).unwrap_or(true)
}

/// Sets the guard for its lifetime and restores the previous state on drop.
pub(crate) struct Guard {
    prev: bool,
}

impl Guard {
    /// Enters heapwatch on this thread.
    #[inline(always)]
    pub(crate) fn enter() -> Guard {
        let prev = IN_HEAPWATCH.try_with(|g| g.replace(true)).unwrap_or(true);
        Guard { prev }
    }

    /// Enters heapwatch on a thread known not to be inside it (the caller
    /// checked [`is_active`]): a plain store, nothing to read back.
    #[inline(always)]
    pub(crate) fn enter_idle() -> Guard {
        let _ = IN_HEAPWATCH.try_with(|g| g.set(true));
        Guard { prev: false }
    }
}

impl Drop for Guard {
    #[inline(always)]
    fn drop(&mut self) {
        let prev = self.prev;
        let _ = IN_HEAPWATCH.try_with(|g| g.set(prev));
    }
}

/// Runs `f` with the guard set: what `f` allocates on this thread is
/// counted as heapwatch's overhead and is never sampled.
pub(crate) fn untracked<R>(f: impl FnOnce() -> R) -> R {
    let _guard = Guard::enter();
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_nests_and_restores() {
        assert!(!is_active());
        {
            let _a = Guard::enter();
            assert!(is_active());
            {
                let _b = Guard::enter();
                assert!(is_active());
            }
            assert!(is_active(), "inner guard must restore the outer state");
        }
        assert!(!is_active());
    }

    #[test]
    fn guard_is_reset_by_unwinding() {
        let r = std::panic::catch_unwind(|| {
            untracked(|| panic!("inside"));
        });
        assert!(r.is_err());
        assert!(!is_active(), "a panic must not leave the guard set");
    }
}
