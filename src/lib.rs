//! heapwatch: a tracking `#[global_allocator]` that keeps exact totals,
//! attributes memory to callsites, enforces a budget, and serves heap
//! snapshots over HTTP.
//!
//! # Overview
//!
//! [`Tracker<A>`](Tracker) wraps any [`GlobalAlloc`](std::alloc::GlobalAlloc)
//! (`std::alloc::System`, `tikv_jemallocator::Jemalloc`, `dhat::Alloc`) and is
//! built in a `static` with a `const fn`:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: heapwatch::Tracker<std::alloc::System> =
//!     heapwatch::Tracker::new(std::alloc::System);
//!
//! fn main() {
//!     let data = vec![0u8; 1 << 20];
//!     let s = heapwatch::stats();
//!     assert!(s.live_bytes >= 1 << 20);
//!
//!     let snap = heapwatch::snapshot();          // totals + callsites, symbolized
//!     println!("{}", serde_json::to_string(&snap.totals).unwrap());
//!     drop(data);
//! }
//! ```
//!
//! What it gives you:
//!
//! - **Exact totals** ([`stats`]): live bytes and blocks, peak, allocations,
//!   frees, reallocations, cumulative bytes, heapwatch's own overhead. Each
//!   thread counts into its own cache-line-aligned shard; readers sum the
//!   shards, so no atomic is contended on the allocation path.
//! - **Callsites** ([`snapshot`], [`Snapshot`], [`Sampling`]): Poisson
//!   sampling by bytes (512 KiB by default, unbiased weights) that is cheap
//!   enough to leave on, or every allocation exactly. Stacks are captured
//!   into fixed buffers (frame pointers when the build keeps them, else
//!   cached DWARF CFI rules on x86-64 Linux, else the `backtrace` crate) and
//!   symbolized only when a snapshot is built.
//! - **Diffs** ([`Snapshot::diff`]): in-use figures are differences of
//!   absolute values, cumulative ones are subtracted; snapshots saved from
//!   two runs diff by their symbolized frames.
//! - **A budget** ([`Budget`], [`Policy`], [`set_budget`], [`watch_budget`]):
//!   refuse (so `try_reserve` fails and the program carries on) or warn,
//!   with 80% / 95% thresholds reported outside the allocator.
//! - **Leak tests** ([`scope`], [`GrowthCheck`], [`assert_no_growth`]):
//!   per-thread counts, so they work while other tests run in parallel.
//! - **An endpoint** (`serve`, `ServerBuilder`, feature `server`): `/heap`,
//!   `/heap/history`, `/heap/diff`, `/heap/leaks`, `/debug/pprof/heap`,
//!   `/debug/pprof/allocs`, `/metrics`, a flamegraph and a dashboard, on
//!   its own thread.
//!
//! # The allocator hook
//!
//! `alloc`, `alloc_zeroed`, `dealloc` and `realloc` never allocate, never
//! block on a lock that can be held across an allocation, and never panic.
//! Bookkeeping happens after the inner allocator succeeded; a failed
//! `realloc` leaves the old block counted as it was. Anything heapwatch
//! allocates for itself happens under a reentrancy guard (a `const`
//! thread-local, usable during thread teardown) and is counted as overhead.
//! Tables have fixed capacities; overflow is counted in
//! [`Snapshot::unattributed`], never a crash or a silent loss.
//!
//! # Cargo features
//!
//! - `jemalloc` (default): `tikv_jemallocator::Jemalloc` as an inner
//!   allocator, and jemalloc's own statistics in snapshots.
//! - `server` (default): the HTTP endpoint (hyper 1.x on a current-thread
//!   tokio runtime of its own; the host program needs no tokio). Implies
//!   `pprof` and `flamegraph`.
//! - `pprof`: `Snapshot::to_pprof`, gzipped pprof protobuf.
//! - `flamegraph`: `Snapshot::to_flamegraph_svg`.
//! - `cli`: the `heapwatch` command-line tool (`get`, `diff`, `top`;
//!   `docs/CLI.md`), no extra dependency.
//!
//! # Known limitation with `dhat::Alloc` (not on 64-bit Linux)
//!
//! dhat's allocator takes a global lock and calls the `backtrace` crate,
//! which takes its own lock. Where heapwatch symbolizes through the
//! `backtrace` crate too (every platform but 64-bit Linux), it takes them in
//! the other order: there, with `Tracker<dhat::Alloc>`, build snapshots (and
//! run the server) only while no other thread allocates, as in a
//! single-threaded leak test (dhat-rs #18, #25). On 64-bit Linux heapwatch
//! reads debug information with its own state and lock, so it has no such
//! ordering (`tests/dhat_threads.rs`). heapwatch over jemalloc or System
//! takes no lock in `alloc` and captures stacks with the unsynchronized
//! unwinder.
//!
//! # Symbols
//!
//! Function names and lines need debug info: `[profile.release] debug = 1`
//! (`"line-tables-only"` gives the same callsites and lines on 64-bit Linux,
//! with inlined functions named without their module path).
//! Stacks are walked with frame pointers when the build keeps them
//! (`RUSTFLAGS="-C force-frame-pointers=yes"`), else, on x86-64 Linux,
//! with cached DWARF CFI rules, else with the `backtrace` crate (see
//! [`Unwinder`]). Snapshots symbolize with the `object` and `addr2line`
//! crates into heapwatch's own state on 64-bit Linux (so a program's own use
//! of the `backtrace` crate's symbol cache is never touched), else with the
//! `backtrace` crate. Split DWARF and separate debug files are not read:
//! such addresses get their symbol table's name, or `module+0xoffset`.
//!
//! # Platforms
//!
//! Unix only: the tables are mapped with `mmap`, heapwatch's threads are
//! started with `pthread_create`, and fork safety uses `pthread_atfork`.
//! x86-64 Linux is what CI tests. The test suite also passes on aarch64
//! Linux (under emulation) and on i686 Linux (the parts that need 64-bit
//! sizes skipped), neither in CI, and the crate builds for macOS and
//! FreeBSD, which nobody has run. On Windows and other non-Unix targets the
//! crate does not compile, and the error says so (README, "Platforms").
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(unix))]
compile_error!(
    "heapwatch supports Unix targets only (tested on Linux; builds on macOS and FreeBSD): \
     its tables are mapped with mmap and its fork handling uses pthread_atfork"
);

mod budget;
mod callsites;
mod capture;
mod clock;
mod counters;
mod diff;
mod error;
mod export;
mod guard;
mod leaks;
mod sampling;
mod scope;
#[cfg(feature = "server")]
mod server;
mod snapshot;
mod symbolize;
mod threads;
mod tracker;

pub use budget::{
    budget_status, set_budget, set_budget_policy, set_budget_thresholds, watch_budget, Budget,
    BudgetEvent, BudgetLevel, BudgetStatus, BudgetWatch, Policy, Thresholds, CHUNK_BYTES,
};
pub use callsites::{TableUsage, Unattributed, DEFAULT_MAX_CALLSITES, DEFAULT_MAX_LIVE_SAMPLES};
pub use capture::{active_unwinder, set_unwinder, Unwinder, MAX_FRAMES};
pub use counters::{stats, Stats, SHARDS};
pub use diff::{CallsiteDelta, Change, SnapshotDiff, TotalsDelta};
pub use error::Error;
pub use sampling::{sampling, set_sampling, set_sampling_seed, Sampling};
pub use scope::{assert_no_growth, scope, GrowthCheck, GrowthReport, Leak, ScopeStats};
pub use snapshot::{
    snapshot, AllocatorStats, Callsite, ProcessStats, Snapshot, SortKey, SNAPSHOT_VERSION,
};
pub use symbolize::Frame;
pub use tracker::{installed, Tracker};

/// tikv-jemallocator's `Jemalloc` (feature `jemalloc`), the version
/// heapwatch links: `Tracker<heapwatch::Jemalloc>` needs no dependency of
/// the program's own on tikv-jemallocator. A program can link only one
/// jemalloc, so one that depends on tikv-jemallocator itself needs the same
/// version (0.7), or heapwatch without its default features.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<heapwatch::Jemalloc> =
///     heapwatch::Tracker::new(heapwatch::Jemalloc);
/// # fn main() { assert!(heapwatch::snapshot().allocator.is_some()); }
/// ```
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc;

// The README's examples use jemalloc and the endpoint: they are tested
// with the default features (and the README's `--all-features`).
#[cfg(all(doctest, feature = "jemalloc", feature = "server"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// -- export: re-exports of src/export (pprof, prometheus, flamegraph) --
pub use export::render_prometheus;
#[cfg(feature = "pprof")]
pub use export::PprofKind;
// -- end export --

// -- server: re-exports of src/server and src/leaks --
pub use leaks::{leak_report, CallsiteGrowth, Growth, LeakReport, LeakThresholds, Severity};
#[cfg(feature = "server")]
pub use server::{serve, ServerBuilder, ServerHandle};
// -- end server --
