//! The reentrancy guard.
//!
//! Bit 0 of the thread's word (`counters::word`: a `const`-initialised
//! thread-local `Cell<usize>` with no destructor, so it can be read at any
//! point of a thread's life, thread-local teardown included). The same word
//! names the thread's counter shard, so the hook's fast path tests "own
//! shard, not inside heapwatch" with one load. While the bit is set on a
//! thread, every allocation that thread makes goes straight to the inner
//! allocator and is counted as heapwatch's own overhead, not as the
//! program's. It is set:
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
//! The two are told apart by bit 3 (`counters::OWN_BIT`), set with the
//! guard only for heapwatch's own work: an allocation made under the guard
//! without it comes from inside the inner allocator (dhat's tables), and
//! heapwatch tracks that block, so that its free is counted as overhead too
//! even when the program's thread makes it (dropping a `dhat::Profiler`
//! frees dhat's tables).
//!
//! The RAII [`Guard`] restores the previous value on drop, so it nests and is
//! panic-safe.

use crate::counters::{self, Shard, GUARD_BIT, OWN_BIT};

/// Whether the current thread is inside heapwatch (or inside the inner
/// allocator called from the hook). Never panics; a thread whose
/// thread-locals cannot be reached counts as inside.
#[inline(always)]
pub(crate) fn is_active() -> bool {
    counters::word() & GUARD_BIT != 0
}

/// Whether the current thread is inside the inner allocator called from
/// the hook (the guard set, not for heapwatch's own work).
#[inline(always)]
pub(crate) fn in_inner() -> bool {
    counters::word() & (GUARD_BIT | OWN_BIT) == GUARD_BIT
}

/// Sets the guard for its lifetime and restores the previous state on drop.
pub(crate) struct Guard {
    /// The guard's two bits as they were.
    prev: usize,
}

impl Guard {
    /// Enters heapwatch's own work on this thread.
    #[inline(always)]
    pub(crate) fn enter() -> Guard {
        Guard::set(GUARD_BIT | OWN_BIT)
    }

    /// Enters the inner allocator from one of the hook's general paths.
    #[inline(always)]
    pub(crate) fn enter_inner() -> Guard {
        Guard::set(GUARD_BIT)
    }

    #[inline(always)]
    fn set(bits: usize) -> Guard {
        let w = counters::word();
        counters::set_word((w & !(GUARD_BIT | OWN_BIT)) | bits);
        Guard {
            prev: w & (GUARD_BIT | OWN_BIT),
        }
    }

    /// Enters heapwatch on the hook's fast path, where the thread's word is
    /// `shard`'s address with no guard bit (`counters::fast` said so): a
    /// plain store, and a plain store of the same word back on drop.
    #[inline(always)]
    pub(crate) fn enter_fast(shard: &'static Shard) -> FastGuard {
        let w = shard as *const Shard as usize;
        counters::set_word(w | GUARD_BIT);
        FastGuard(w)
    }
}

impl Drop for Guard {
    #[inline(always)]
    fn drop(&mut self) {
        // Read the word again: the thread may have leased a shard meanwhile.
        let w = counters::word();
        counters::set_word((w & !(GUARD_BIT | OWN_BIT)) | self.prev);
    }
}

/// [`Guard::enter_fast`]'s guard: restores the word it was entered with.
/// Nothing inside it can change the thread's shard (a thread that has one
/// keeps it until its thread-locals are torn down, which cannot happen
/// during one of its allocations).
pub(crate) struct FastGuard(usize);

impl Drop for FastGuard {
    #[inline(always)]
    fn drop(&mut self) {
        counters::set_word(self.0);
    }
}

/// Runs `f` with the guard set: what `f` allocates on this thread is
/// counted as heapwatch's overhead and is never sampled.
pub(crate) fn untracked<R>(f: impl FnOnce() -> R) -> R {
    let _guard = Guard::enter();
    f()
}

/// A value of heapwatch's own held on the program's stack: built under the
/// guard and dropped under it, also when a panic unwinds past it (dropped
/// bare, its blocks' frees would count as the program's).
pub(crate) struct Own<T>(Option<T>);

impl<T> Own<T> {
    /// Builds the value under the guard.
    pub(crate) fn build(f: impl FnOnce() -> T) -> Own<T> {
        Own(Some(untracked(f)))
    }
}

impl<T> std::ops::Deref for Own<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T> Drop for Own<T> {
    fn drop(&mut self) {
        let value = self.0.take();
        untracked(|| drop(value));
    }
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
    fn inner_and_own_nest_and_restore() {
        assert!(!is_active() && !in_inner());
        {
            let _inner = Guard::enter_inner();
            assert!(is_active() && in_inner());
            {
                let _own = Guard::enter();
                assert!(is_active() && !in_inner());
                {
                    let _inner = Guard::enter_inner();
                    assert!(in_inner());
                }
                assert!(is_active() && !in_inner());
            }
            assert!(in_inner());
        }
        assert!(!is_active() && !in_inner());
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
