//! Ctrl-C: `heapwatch top` exits 0 when interrupted. A `SIGINT` handler
//! sets a flag the refresh loop and the HTTP client check; a second
//! Ctrl-C exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[cfg(unix)]
extern "C" fn on_sigint(_signal: libc::c_int) {
    // Only async-signal-safe operations: an atomic swap and `_exit`.
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(0) };
    }
}

/// Installs the `SIGINT` handler (without `SA_RESTART`, so a blocking read
/// or connect returns `EINTR` and the flag is seen promptly). Elsewhere than
/// Unix, Ctrl-C keeps its default effect.
pub fn install() {
    #[cfg(unix)]
    {
        // SAFETY: `sigaction` is a plain C struct for which all-zeroes is a
        // valid value (empty mask, no flags, default handler) before the
        // fields are set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = 0;
        // SAFETY: `sa_mask` is a valid, writable `sigset_t`; the handler
        // above only touches an atomic and calls `_exit`; `oldact` may be
        // null.
        unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        }
    }
}
