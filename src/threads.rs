//! heapwatch's own threads: the server's, the snapshot builder's and the
//! budget watcher's.
//!
//! They are started with `pthread_create`, not `std::thread`. A std thread
//! allocates as it starts, before the code it was given runs: its name and
//! its record for the stack-overflow handler. Those allocations go through
//! the hook unguarded and draw on the budget, so under `Policy::Refuse`
//! with the budget spent they are refused, and an infallible allocation
//! refused aborts the process: starting the server or the watcher, or a
//! blocking thread of the server's runtime, would bring down the program
//! heapwatch watches (`tests/budget_spent_threads.rs`). A thread started
//! here allocates nothing before its body has entered the mode its
//! spawner asked for ([`Mode`]).
//!
//! std treats such a thread as one it did not start: `thread::current()`
//! works in it (an unnamed handle: `name()` is `None`, and a panic there
//! says `thread '<unnamed>'`), thread-locals and their destructors work.
//! Its name is set for the operating system (`top -H`, `gdb`,
//! `/proc/<pid>/task/*/comm`) on Linux only. std's stack-overflow message
//! covers only its own threads: an overflow on one of these is a plain
//! `SIGSEGV`.
//!
//! A handle knows the process that started its thread: in the child of a
//! `fork`, which has none of the parent's other threads, joining or
//! dropping an inherited handle leaves it alone.

use std::ffi::{c_void, CStr};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::guard::Guard;

/// How a thread's allocations are counted, from its first instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Under the guard for its whole life: everything it allocates is
    /// heapwatch's overhead. The spawner must allocate the body under the
    /// guard too (it is freed on the new thread).
    Guarded,
    /// Counted as the program's, never refused (`budget::never_refused`):
    /// for a thread that runs the program's callback.
    NeverRefused,
}

/// Stack size of heapwatch's threads: std's default for spawned threads,
/// or `RUST_MIN_STACK` if that asks for more, as std does (the watcher runs
/// the program's callback). Symbolizing recurses a little; the platform
/// default can be smaller (512 KiB on macOS).
const STACK_BYTES: usize = 2 << 20;

fn stack_bytes() -> usize {
    let asked = std::env::var_os("RUST_MIN_STACK")
        .and_then(|v| v.to_str()?.parse::<usize>().ok())
        .unwrap_or(0);
    STACK_BYTES.max(asked)
}

/// What the new thread receives, leaked by [`spawn`].
struct Start {
    mode: Mode,
    name: &'static CStr,
    body: Box<dyn FnOnce() + Send>,
}

/// A thread started by [`spawn`]. Dropped without [`join`](Self::join),
/// the thread is detached.
#[derive(Debug)]
pub(crate) struct OwnThread {
    id: libc::pthread_t,
    /// The process that started it.
    pid: u32,
    /// Joined or detached already (or inherited through a `fork`).
    done: bool,
}

// SAFETY: `pthread_t` is an opaque handle, a pointer on some targets
// (musl), which is why the compiler does not find `OwnThread` `Send` and
// `Sync` there. POSIX lets any thread of the process join or detach a
// thread through it, and `OwnThread` shares nothing else: `join` takes it
// by value and `in_this_process` only reads the pid.
unsafe impl Send for OwnThread {}
// SAFETY: as above; `&OwnThread` gives no way to join or detach.
unsafe impl Sync for OwnThread {}

// `ServerHandle` and `BudgetWatch` hold one, and are `Send + Sync` on
// every target.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<OwnThread>();
};

/// Starts `body` on a new thread named `name` (at most 15 bytes, the
/// kernel's limit), in `mode` from its first instruction. The caller's
/// allocations here (the body's box) are counted in the caller's context.
pub(crate) fn spawn(
    name: &'static CStr,
    mode: Mode,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<OwnThread> {
    debug_assert!(name.to_bytes().len() <= 15, "{name:?}");
    let start = Box::into_raw(Box::new(Start {
        mode,
        name,
        body: Box::new(body),
    }));
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `attr` is initialized by `pthread_attr_init` before any other
    // use and destroyed once below; `start` is a live leaked box that the
    // new thread takes over, or that is taken back here if it did not start.
    unsafe {
        let r = libc::pthread_attr_init(attr.as_mut_ptr());
        if r != 0 {
            drop(Box::from_raw(start));
            return Err(io::Error::from_raw_os_error(r));
        }
        let min = usize::try_from(libc::sysconf(libc::_SC_THREAD_STACK_MIN)).unwrap_or(0);
        // A failure leaves the platform's default size, which also works.
        let _ = libc::pthread_attr_setstacksize(attr.as_mut_ptr(), stack_bytes().max(min));
        let mut id: libc::pthread_t = std::mem::zeroed();
        let r = libc::pthread_create(&mut id, attr.as_ptr(), run, start.cast());
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if r != 0 {
            drop(Box::from_raw(start));
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(OwnThread {
            id,
            pid: std::process::id(),
            done: false,
        })
    }
}

/// The new thread's first function.
extern "C" fn run(data: *mut c_void) -> *mut c_void {
    let start = data.cast::<Start>();
    // SAFETY: `start` is the box `spawn` leaked for this thread alone; it
    // stays live until taken back just below. Reading its mode first lets
    // the guard be set before anything is allocated or freed here.
    if unsafe { (*start).mode } == Mode::Guarded {
        // For the rest of the thread's life, thread-local destructors
        // included.
        std::mem::forget(Guard::enter());
    }
    // SAFETY: as above; ownership moves here, once.
    let Start { mode, name, body } = *unsafe { Box::from_raw(start) };
    set_name(name);
    let _ = catch_unwind(AssertUnwindSafe(|| match mode {
        Mode::Guarded => thread_base(body),
        Mode::NeverRefused => crate::budget::never_refused(|| thread_base(body)),
    }));
    // A panic was reported by the panic hook; it must not unwind out of
    // an `extern "C"` function (that aborts).
    std::ptr::null_mut()
}

/// The frame callsites end above (`symbolize::is_stack_base`), as they end
/// above `__rust_begin_short_backtrace` on a `std` thread: what lies below
/// is the same for every allocation the thread makes.
#[inline(never)]
fn thread_base(body: Box<dyn FnOnce() + Send>) {
    body();
    // Not a tail call: this frame stays on the stack under the body's.
    std::hint::black_box(());
}

#[cfg(target_os = "linux")]
fn set_name(name: &CStr) {
    // SAFETY: `name` is NUL-terminated and at most 15 bytes before it;
    // naming the calling thread allocates nothing.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
}

#[cfg(not(target_os = "linux"))]
fn set_name(_: &CStr) {}

impl OwnThread {
    /// Whether this process started the thread (not so in a `fork` child
    /// that inherited the handle).
    pub(crate) fn in_this_process(&self) -> bool {
        std::process::id() == self.pid
    }

    /// Waits for the thread to end. In another process than the one that
    /// started it (a `fork` child), returns at once: the thread is not
    /// there.
    pub(crate) fn join(mut self) {
        self.done = true;
        if !self.in_this_process() {
            return;
        }
        // SAFETY: `id` is a thread this process started and has neither
        // joined nor detached (`done` was false).
        unsafe { libc::pthread_join(self.id, std::ptr::null_mut()) };
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        if !self.done && self.in_this_process() {
            // SAFETY: as in `join`; after this the id is not used again.
            unsafe { libc::pthread_detach(self.id) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Whether a body started in `mode` ran under the guard (`None`: it
    /// did not run before `join` returned).
    fn guarded_in(mode: Mode) -> Option<bool> {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let in_body = Arc::clone(&seen);
        let t = spawn(c"hw-test", mode, move || {
            *in_body.lock().unwrap() = Some(crate::guard::is_active());
        })
        .unwrap();
        t.join();
        let seen = *seen.lock().unwrap();
        seen
    }

    #[test]
    fn runs_the_body_in_its_mode_and_joins() {
        assert_eq!(guarded_in(Mode::Guarded), Some(true), "under the guard");
        assert_eq!(guarded_in(Mode::NeverRefused), Some(false), "unguarded");
    }

    #[test]
    fn a_panicking_body_ends_its_thread_only() {
        let t = spawn(c"hw-test", Mode::NeverRefused, || {
            panic!("a test panic (as intended)")
        })
        .unwrap();
        t.join();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_thread_has_its_name() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = spawn(c"hw-named", Mode::NeverRefused, move || {
            // SAFETY: `gettid` has no preconditions.
            let tid = unsafe { libc::gettid() };
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"));
            tx.send(comm.unwrap()).unwrap();
        })
        .unwrap();
        t.join();
        assert_eq!(rx.recv().unwrap().trim_end(), "hw-named");
    }
}
