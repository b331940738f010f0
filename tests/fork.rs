//! Fork safety: a process that forks while other threads allocate in exact
//! mode (every allocation sampled, so stripe locks of the live-block table
//! are taken all the time) gets children that can allocate, free (including
//! the parent's sampled blocks), take a snapshot and exit. Without the
//! `pthread_atfork` handler in `src/callsites.rs`, a child forked while
//! another thread held a stripe lock hangs at its first free in that stripe;
//! here such a child is killed at the deadline and the test fails.
//!
//! The second part forks while another thread builds snapshots without
//! pause, and every child builds one: without the handler's taking of the
//! symbolizer's locks (`symbolize::before_fork`), a child forked while the
//! other thread held one hung in its `snapshot()`.
//!
//! The third part forks while another thread is inside `dl_iterate_phdr`
//! (holding the loader's lock, as heapwatch's CFI unwinder does on a cache
//! miss): a child that listed the loaded objects again to symbolize hung
//! there; it now uses the list it inherited.
//!
//! The fourth part forks a process with a running server and budget
//! watcher: the child drops both handles, which used to join threads the
//! child does not have (std's `join` panicked).
//!
//! A watchdog aborts the process if the whole file takes more than
//! `WATCHDOG`: a deadlock in the parent's own `fork` (its `prepare`
//! handler) is not caught by the children's deadlines.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

const FORKS: usize = 100;
/// Every this many rounds the child also builds and checks a snapshot.
const SNAPSHOT_EVERY: usize = 10;
const ALLOCATING_THREADS: usize = 3;
/// Forks of the second part, every child building a snapshot.
const SNAPSHOT_FORKS: usize = 40;
/// Forks of the third part.
const LOADER_FORKS: usize = 5;
/// The most the whole test may take (it takes under a minute).
const WATCHDOG: Duration = Duration::from_secs(600);
/// How long a child may take (it allocates a few thousand blocks in exact
/// mode and symbolizes a snapshot: well under a second even in debug).
const CHILD_DEADLINE: Duration = Duration::from_secs(30);

static STOP: AtomicBool = AtomicBool::new(false);
static CHURNED: AtomicU64 = AtomicU64::new(0);

/// What the other threads do while the main thread forks: allocate and free
/// blocks of varied sizes, so their stripe locks are taken constantly.
fn churn(seed: u64) {
    let mut x = seed | 1;
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(64);
    while !STOP.load(Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 1 + (x % 2000) as usize;
        let i = (x >> 32) as usize % 64;
        if kept.len() < 64 {
            kept.push(black_box(vec![0u8; size]));
        } else if let Some(slot) = kept.get_mut(i) {
            *slot = black_box(vec![1u8; size]);
        }
        CHURNED.fetch_add(1, Relaxed);
    }
}

/// The child's allocation, from its own function so its callsite is known.
/// (Each box is one counted allocation.)
#[allow(clippy::vec_box)]
#[inline(never)]
fn child_blocks(n: usize) -> Vec<Box<[u8; 40]>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(black_box(Box::new([7u8; 40])));
    }
    v
}

/// A new callsite for each fork of the second part: a snapshot that meets
/// its address reads debug information, holding the symbolizer's lock for
/// milliseconds, around the time of the fork.
#[inline(never)]
fn site<const N: usize>() -> Box<[u8; 56]> {
    black_box(Box::new([N as u8; 56]))
}

const SITES: [fn() -> Box<[u8; 56]>; 64] = [
    site::<0>, site::<1>, site::<2>, site::<3>, site::<4>, site::<5>, site::<6>, site::<7>,
    site::<8>, site::<9>, site::<10>, site::<11>, site::<12>, site::<13>, site::<14>, site::<15>,
    site::<16>, site::<17>, site::<18>, site::<19>, site::<20>, site::<21>, site::<22>, site::<23>,
    site::<24>, site::<25>, site::<26>, site::<27>, site::<28>, site::<29>, site::<30>, site::<31>,
    site::<32>, site::<33>, site::<34>, site::<35>, site::<36>, site::<37>, site::<38>, site::<39>,
    site::<40>, site::<41>, site::<42>, site::<43>, site::<44>, site::<45>, site::<46>, site::<47>,
    site::<48>, site::<49>, site::<50>, site::<51>, site::<52>, site::<53>, site::<54>, site::<55>,
    site::<56>, site::<57>, site::<58>, site::<59>, site::<60>, site::<61>, site::<62>, site::<63>,
];

/// Runs in the child: returns an error message instead of panicking.
/// `parent_run` is the parent's run id: the child's snapshot must not have
/// it.
#[allow(clippy::vec_box)]
fn child_body(
    inherited: Vec<Box<[u8; 24]>>,
    with_snapshot: bool,
    parent_run: &str,
) -> Result<(), String> {
    // Free blocks the parent allocated (and sampled) before the fork: this
    // goes through the live-block table's stripes.
    drop(black_box(inherited));

    let s0 = heapwatch::stats();
    let blocks = child_blocks(1000);
    let s1 = heapwatch::stats();
    // The Vec and 1000 boxes.
    let want_allocs = 1001;
    let want_bytes = (1000 * std::mem::size_of::<usize>() + 1000 * 40) as u64;
    if s1.allocations - s0.allocations != want_allocs
        || s1.allocated_bytes - s0.allocated_bytes != want_bytes
        || s1.live_bytes != s0.live_bytes + want_bytes
    {
        return Err(format!("after allocating: {s0:?} -> {s1:?}"));
    }
    drop(blocks);
    let s2 = heapwatch::stats();
    if s2.frees - s1.frees != want_allocs || s2.live_bytes != s0.live_bytes {
        return Err(format!("after freeing: {s1:?} -> {s2:?}"));
    }
    if !with_snapshot {
        return Ok(());
    }

    let snap = heapwatch::snapshot();
    if snap.run_id == parent_run {
        return Err(format!("the child has its parent's run id {parent_run}"));
    }
    if snap.totals.allocations < s2.allocations {
        return Err(format!("snapshot totals went back: {:?}", snap.totals));
    }
    let boxes: Vec<_> = snap
        .callsites
        .iter()
        .filter(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.ends_with("child_blocks"))
                && c.allocated_bytes == 1000 * 40
        })
        .collect();
    match boxes.as_slice() {
        [c] if (c.allocations, c.frees, c.live_bytes) == (1000, 1000, 0) => Ok(()),
        _ => Err(format!("child_blocks callsite: {boxes:#?}")),
    }
}

/// Forks; the child runs `body` and leaves with `_exit`: 0 if it returned
/// `Ok`, 1 (printing the message) if `Err`, 2 if it panicked. Returns the
/// child's pid to the parent.
fn fork_child(body: impl FnOnce() -> Result<(), String>) -> libc::pid_t {
    // SAFETY: the child only runs `body` (which allocates through the
    // tracker and glibc malloc, both fork-safe with the atfork handlers)
    // and leaves with `_exit`, running no destructor or atexit handler of
    // the parent's.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(Ok(())) => 0,
            Ok(Err(msg)) => {
                eprintln!("fork child: {msg}");
                1
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child immediately, as a forked child of a
        // multithreaded process must.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// Waits for `pid` with a bounded polling loop; kills it at the deadline.
fn wait_child(pid: libc::pid_t) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our own child, not yet reaped; `status` is a
        // valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else {
                Err(format!("child {pid} ended with status {status:#x}"))
            };
        }
        if r < 0 {
            return Err(format!(
                "waitpid({pid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if start.elapsed() > CHILD_DEADLINE {
            // SAFETY: `pid` is our own child, not yet reaped; after SIGKILL a
            // blocking waitpid returns promptly and reaps it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "child {pid} hung for {CHILD_DEADLINE:?} (killed): a lock held at fork?"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forks `forks` times, each child running `child_body` (with a snapshot
/// when `snapshot_every` divides the round), while `ALLOCATING_THREADS`
/// threads churn and, if `with_snapshotter`, one more builds snapshots
/// without pause; fails on any child that fails or hangs.
fn fork_during(forks: usize, snapshot_every: usize, with_snapshotter: bool) {
    // Warm up in the parent: map the tables and load debug info once, so
    // children inherit both.
    let parent_run = heapwatch::snapshot().run_id;

    STOP.store(false, Relaxed);
    let mut threads: Vec<_> = (0..ALLOCATING_THREADS)
        .map(|i| std::thread::spawn(move || churn(0x9E37_79B9 * (i as u64 + 1))))
        .collect();
    let snapshots = std::sync::Arc::new(AtomicU64::new(0));
    if with_snapshotter {
        let snapshots = std::sync::Arc::clone(&snapshots);
        threads.push(std::thread::spawn(move || {
            while !STOP.load(Relaxed) {
                drop(black_box(heapwatch::snapshot()));
                snapshots.fetch_add(1, Relaxed);
            }
        }));
    }

    let mut failures = Vec::new();
    let mut new_sites = Vec::new();
    for round in 0..forks {
        if with_snapshotter {
            // A callsite no snapshot has seen: the snapshot after the one
            // in progress reads debug information for it, under the lock.
            new_sites.push(SITES[round % SITES.len()]());
        }
        // Make sure the other threads are running before forking.
        let seen = CHURNED.load(Relaxed);
        let seen_snapshots = snapshots.load(Relaxed);
        let wait_start = Instant::now();
        while (CHURNED.load(Relaxed) < seen + 100
            || (with_snapshotter && snapshots.load(Relaxed) == seen_snapshots))
            && wait_start.elapsed() < CHILD_DEADLINE
        {
            std::hint::spin_loop();
        }
        if with_snapshotter {
            std::thread::sleep(Duration::from_millis(2));
        }
        let inherited: Vec<Box<[u8; 24]>> = (0..200).map(|_| Box::new([3u8; 24])).collect();
        let with_snapshot = round % snapshot_every == 0;
        // Taken by the child only; the parent drops its copy here.
        let mut inherited = Some(inherited);
        let pid = fork_child(|| {
            child_body(
                inherited.take().unwrap_or_default(),
                with_snapshot,
                &parent_run,
            )
        });
        drop(inherited);
        if let Err(e) = wait_child(pid) {
            failures.push(format!("round {round}: {e}"));
            if failures.len() == 3 {
                // Enough to see what is wrong without waiting out every
                // child's deadline.
                break;
            }
        }
    }

    STOP.store(true, Relaxed);
    // The parent's threads must not be stuck either (the `parent` handler
    // released the locks): join them with a deadline.
    let (tx, rx) = mpsc::channel();
    let joiner = std::thread::spawn(move || {
        for t in threads {
            t.join().unwrap();
        }
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "the parent's other threads did not stop"
    );
    // The joiner's own exit frees its thread's blocks: wait for it, so that
    // it does not free them between the two readings below.
    joiner.join().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");

    // The parent still counts exactly after all those forks.
    let s0 = heapwatch::stats();
    let v = black_box(vec![0u8; 4321]);
    let s1 = heapwatch::stats();
    assert_eq!(s1.allocations - s0.allocations, 1);
    assert_eq!(s1.live_bytes - s0.live_bytes, 4321);
    drop(v);
}

fn children_forked_during_exact_mode_churn_work() {
    fork_during(FORKS, SNAPSHOT_EVERY, false);
}

fn children_forked_while_snapshots_are_built_can_snapshot() {
    fork_during(SNAPSHOT_FORKS, 1, true);
}

/// Set by `in_loader` once it is inside `dl_iterate_phdr`'s callback;
/// cleared by the main thread to let it out.
static IN_LOADER: AtomicBool = AtomicBool::new(false);

/// `dl_iterate_phdr`'s callback: stays in (with the loader's lock held)
/// until the main thread clears `IN_LOADER`, or 30 s pass.
unsafe extern "C" fn in_loader(
    _info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    IN_LOADER.store(true, SeqCst);
    let start = Instant::now();
    while IN_LOADER.load(SeqCst) && start.elapsed() < CHILD_DEADLINE {
        std::thread::sleep(Duration::from_millis(1));
    }
    1 // stop after the first object
}

fn children_forked_while_another_thread_holds_the_loader_lock_can_snapshot() {
    // The parent has symbolized (and released what it read) before.
    let parent_run = heapwatch::snapshot().run_id;
    for round in 0..LOADER_FORKS {
        let holder = std::thread::spawn(|| {
            // SAFETY: `in_loader` matches the callback type and ignores its
            // arguments.
            unsafe { libc::dl_iterate_phdr(Some(in_loader), std::ptr::null_mut()) };
        });
        while !IN_LOADER.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let pid = fork_child(|| child_body(Vec::new(), true, &parent_run));
        IN_LOADER.store(false, SeqCst);
        holder.join().unwrap();
        if let Err(e) = wait_child(pid) {
            panic!("round {round}: {e}");
        }
    }
}

/// A child may drop what it inherited: a server handle and a budget
/// watcher whose threads it does not have. Dropping them used to join
/// those threads, and the child panicked in `join`.
fn children_can_drop_an_inherited_server_and_watcher() {
    let mut handles = Some((
        heapwatch::serve("127.0.0.1:0").expect("serve"),
        heapwatch::watch_budget(Duration::from_millis(5), |_| {}),
    ));
    let pid = fork_child(|| {
        drop(handles.take());
        Ok(())
    });
    let (server, watcher) = handles.expect("the parent keeps its handles");
    if let Err(e) = wait_child(pid) {
        panic!("dropping inherited handles: {e}");
    }
    // The parent's own handles still stop and join their threads.
    server.shutdown();
    watcher.stop();
}

// `harness = false` (Cargo.toml): this file compares process-wide figures,
// and libtest's own threads allocate while a test starts.
fn main() {
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!(
            "fork: still running after {WATCHDOG:?}: a fork deadlocked in the parent (aborting)"
        );
        std::process::abort();
    });
    children_forked_during_exact_mode_churn_work();
    // Elsewhere symbolizing takes the `backtrace` crate's lock, which the
    // fork handler does not take (README, "Fork"): a child can hang there.
    if cfg!(all(target_os = "linux", target_pointer_width = "64")) {
        children_forked_while_snapshots_are_built_can_snapshot();
        children_forked_while_another_thread_holds_the_loader_lock_can_snapshot();
    } else {
        println!("fork: snapshots in children skipped (64-bit Linux only)");
    }
    // Last: the server's thread allocates while it runs.
    children_can_drop_an_inherited_server_and_watcher();
    println!("fork: ok");
}
