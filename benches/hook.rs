//! Microbenchmarks of the allocator hook.
//!
//! The tracker's state (counters, sampling mode, budget, callsite tables) is
//! process-wide, so the hook can be measured without installing it as the
//! global allocator: this binary keeps the default (System) global
//! allocator, so criterion's own allocations never touch what is measured,
//! and calls `GlobalAlloc::alloc` / `dealloc` directly on
//!
//! - `RAW`: a bare `tikv_jemallocator::Jemalloc`, the baseline, and
//! - `TRACKED`: `heapwatch::Tracker<Jemalloc>`, switched between sampling
//!   modes at run time with `heapwatch::set_sampling`.
//!
//! Every tracker figure is meant to be read as a ratio to the raw figure
//! measured next to it in the same group of the same run (the groups
//! interleave raw and tracked benchmarks size by size), since absolute
//! numbers on a shared machine drift between runs.
//!
//! Groups:
//!
//! - `alloc_free/1thread`: alloc + immediate free at 16 B .. 4 KiB, and a
//!   batch of 64 mixed sizes allocated then freed, for raw jemalloc and the
//!   tracker in `Off`, `Bytes(512 KiB)` and `All` modes.
//! - `alloc_free/2threads`: the batch workload on two threads at once.
//! - `capture`: exact-mode alloc + free with each unwinder (the unwinder
//!   actually in use is printed: the frame-pointer walk only engages in a
//!   build with `-C force-frame-pointers=yes`).
//! - `snapshot_build`: `heapwatch::snapshot()` at 100, 1,000 and 10,000
//!   distinct callsites, symbols cached.
//! - `heap_request` (feature `server`; run between `snapshot_build/1000`
//!   and `snapshot_build/10000`, so on the same ~1,000-callsite table): one
//!   complete HTTP/1.1 request to the endpoint, started in this process, over
//!   a fresh loopback TCP connection (connect, send with `Connection: close`,
//!   read to EOF, check for `200`) for `/heap`, `/heap?top=50`, `/metrics`
//!   and `/debug/pprof/heap`. Every request builds a fresh snapshot
//!   (symbols cached); flat sampling, as a `/heap` takes milliseconds.
//!
//! Run: `cargo bench --bench hook -- --warm-up-time 1 --measurement-time 3`
//! (append a group name, e.g. `heap_request`, to measure only that group;
//! every group's setup, such as making `snapshot_build`'s callsites, still
//! runs).
#![warn(clippy::undocumented_unsafe_blocks)]

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use heapwatch::{Sampling, Tracker, Unwinder};
use tikv_jemallocator::Jemalloc;

/// The baseline: jemalloc called directly.
static RAW: Jemalloc = Jemalloc;

/// The tracker around the same allocator. Not the global allocator: it is
/// called directly, and its process-wide state is what `set_sampling`,
/// `set_unwinder` and `snapshot` act on.
static TRACKED: Tracker<Jemalloc> = Tracker::new(Jemalloc).with_sampling(Sampling::Off);

const SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];
/// Blocks allocated (then freed) per iteration of the batch workload.
const BATCH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Raw jemalloc, no tracker.
    Raw,
    /// Tracker, totals and budget only.
    Off,
    /// Tracker, the default byte sampling (mean interval 512 KiB).
    Bytes,
    /// Tracker, every allocation sampled (a stack capture each).
    All,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Raw, Mode::Off, Mode::Bytes, Mode::All];

    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw_jemalloc",
            Mode::Off => "tracker_off",
            Mode::Bytes => "tracker_bytes512k",
            Mode::All => "tracker_all",
        }
    }

    /// Puts the tracker in this mode (raw needs nothing).
    fn apply(self) {
        match self {
            Mode::Raw => {}
            Mode::Off => heapwatch::set_sampling(Sampling::Off),
            Mode::Bytes => heapwatch::set_sampling(Sampling::DEFAULT),
            Mode::All => heapwatch::set_sampling(Sampling::All),
        }
    }
}

/// Allocates and immediately frees one block of `layout` through `a`.
#[inline(always)]
fn alloc_free<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: every layout used here has a non-zero size.
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: `p` was just allocated by `a` with `layout` and is freed once.
    unsafe { a.dealloc(black_box(p), layout) };
}

/// Allocates a block of each layout in `layouts`, then frees them in
/// allocation order (first in, first out, so not a pure LIFO ping-pong).
#[inline(always)]
fn alloc_free_batch<A: GlobalAlloc>(a: &A, layouts: &[Layout; BATCH]) {
    let mut ptrs = [std::ptr::null_mut::<u8>(); BATCH];
    for (slot, &layout) in ptrs.iter_mut().zip(layouts) {
        // SAFETY: every layout in the batch has a non-zero size.
        let p = unsafe { a.alloc(layout) };
        if p.is_null() {
            handle_alloc_error(layout);
        }
        *slot = p;
    }
    black_box(&mut ptrs);
    for (&p, &layout) in ptrs.iter().zip(layouts) {
        // SAFETY: `p` was allocated by `a` with `layout` in the loop above
        // and is freed exactly once.
        unsafe { a.dealloc(p, layout) };
    }
}

/// A fixed pseudo-random sequence of 64 sizes in 16 ..= 4096 bytes
/// (xorshift64 with a fixed seed; multiples of 8, as most Rust allocations).
fn batch_layouts() -> [Layout; BATCH] {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    std::array::from_fn(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 16 + (x % (4096 - 16 + 1)) as usize / 8 * 8;
        Layout::from_size_align(size, 8).expect("valid layout")
    })
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("valid layout")
}

/// Makes the tracker apply its builder settings (its first allocation does)
/// so they cannot later overwrite a mode set by a benchmark.
fn init_tracker() {
    alloc_free(&TRACKED, layout(16));
}

fn alloc_free_1thread(c: &mut Criterion) {
    init_tracker();
    let mut g = c.benchmark_group("alloc_free/1thread");
    for size in SIZES {
        let l = layout(size);
        g.throughput(Throughput::Elements(1));
        for mode in Mode::ALL {
            // Exact mode costs a stack capture per allocation (µs): fewer
            // samples keep the run short.
            g.sample_size(if mode == Mode::All { 10 } else { 100 });
            g.bench_with_input(BenchmarkId::new(mode.name(), size), &l, |b, &l| {
                mode.apply();
                match mode {
                    Mode::Raw => b.iter(|| alloc_free(&RAW, l)),
                    _ => b.iter(|| alloc_free(&TRACKED, l)),
                }
            });
        }
    }
    let layouts = batch_layouts();
    g.throughput(Throughput::Elements(BATCH as u64));
    for mode in Mode::ALL {
        g.sample_size(if mode == Mode::All { 10 } else { 100 });
        g.bench_with_input(
            BenchmarkId::new(mode.name(), "batch64"),
            &layouts,
            |b, ls| {
                mode.apply();
                match mode {
                    Mode::Raw => b.iter(|| alloc_free_batch(&RAW, ls)),
                    _ => b.iter(|| alloc_free_batch(&TRACKED, ls)),
                }
            },
        );
    }
    g.finish();
    heapwatch::set_sampling(Sampling::Off);
}

/// Runs `iters` batches on each of two threads at once and returns the
/// elapsed time of the slower thread.
///
/// Why the slower thread: one "iteration" here means "both threads each did
/// one batch, concurrently", so the time of the pair is the time of the
/// last one to finish. Timing starts after a barrier (thread spawn, the
/// first-allocation setup of each thread — jemalloc's thread cache,
/// heapwatch's shard lease — and one warm-up batch are outside the timed
/// window) and each thread stops its own clock, so joining is not timed
/// either. Wall time of the whole scope would add the spawn and join cost
/// (tens of µs) to every measurement, which dominates at small `iters`.
fn two_threads<A: GlobalAlloc + Sync>(a: &A, layouts: &[Layout; BATCH], iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    alloc_free_batch(a, layouts);
                    barrier.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        alloc_free_batch(a, layouts);
                    }
                    t.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

fn alloc_free_2threads(c: &mut Criterion) {
    init_tracker();
    let layouts = batch_layouts();
    let mut g = c.benchmark_group("alloc_free/2threads");
    // Elements per iteration per thread (each thread does one batch).
    g.throughput(Throughput::Elements(BATCH as u64));
    for mode in [Mode::Raw, Mode::Off, Mode::Bytes] {
        g.bench_with_input(
            BenchmarkId::new(mode.name(), "batch64"),
            &layouts,
            |b, ls| {
                mode.apply();
                match mode {
                    Mode::Raw => b.iter_custom(|iters| two_threads(&RAW, ls, iters)),
                    _ => b.iter_custom(|iters| two_threads(&TRACKED, ls, iters)),
                }
            },
        );
    }
    g.finish();
    heapwatch::set_sampling(Sampling::Off);
}

fn capture(c: &mut Criterion) {
    init_tracker();
    let l = layout(64);
    let mut g = c.benchmark_group("capture");
    // Baseline in the same group: the tracker without callsites.
    g.bench_function("tracker_off/64", |b| {
        heapwatch::set_sampling(Sampling::Off);
        b.iter(|| alloc_free(&TRACKED, l));
    });
    g.sample_size(10);
    exact_per_unwinder(&mut g, l, "all");
    g.finish();
    heapwatch::set_unwinder(Unwinder::Auto);
    heapwatch::set_sampling(Sampling::Off);
}

/// One benchmark per unwinder: 64 B alloc + free through the tracker in
/// exact mode. The id names the unwinder asked for and the one the probe
/// actually chose (`prefix_backtrace(active=backtrace)/64`).
fn exact_per_unwinder(g: &mut BenchmarkGroup<'_, WallTime>, l: Layout, prefix: &str) {
    for (unwinder, name) in [
        (Unwinder::Backtrace, "backtrace"),
        (Unwinder::Cfi, "cfi"),
        (Unwinder::FramePointers, "frame_pointers"),
    ] {
        heapwatch::set_unwinder(unwinder);
        heapwatch::set_sampling(Sampling::All);
        // Resolve the unwinder (the frame-pointer probe runs on first use).
        alloc_free(&TRACKED, l);
        let active = heapwatch::active_unwinder();
        println!("{prefix}: requested {name}, active unwinder: {active}");
        g.bench_function(format!("{prefix}_{name}(active={active})/64"), |b| {
            heapwatch::set_unwinder(unwinder);
            heapwatch::set_sampling(Sampling::All);
            b.iter(|| alloc_free(&TRACKED, l));
        });
    }
}

/// Exact mode against dhat, the exact peer: the same 64 B alloc + free
/// through `dhat::Alloc` with a heap profiler running (dhat records a
/// backtrace per allocation under one global lock) and through
/// `Tracker<Jemalloc>` in `Sampling::All` with each unwinder.
fn exact_vs_dhat(c: &mut Criterion) {
    init_tracker();
    let l = layout(64);
    let mut g = c.benchmark_group("exact_vs_dhat");
    g.sample_size(10);
    {
        // Testing mode: no file is written when the profiler stops.
        let _profiler = dhat::Profiler::builder().testing().build();
        g.bench_function("dhat/64", |b| b.iter(|| alloc_free(&dhat::Alloc, l)));
    }
    exact_per_unwinder(&mut g, l, "heapwatch_all");
    g.finish();
    heapwatch::set_unwinder(Unwinder::Auto);
    heapwatch::set_sampling(Sampling::Off);
}

// ---- distinct callsites for snapshot_build ----------------------------------

/// Digits (base 4) of a callsite code: 4^7 = 16,384 distinct chains.
const HOPS: u32 = 7;

macro_rules! hops {
    ($($name:ident = $k:literal),* $(,)?) => {
        $(
            /// One level of the chain; which of the four functions is
            /// called next is the next base-4 digit of `code`, so every
            /// code gives a different chain of return addresses (and of
            /// symbolized frames). `$k` makes the bodies differ, so the
            /// functions cannot be merged.
            #[inline(never)]
            fn $name(code: u32, left: u32) -> usize {
                let r = if left == 0 {
                    leaf(code)
                } else {
                    match code & 3 {
                        0 => hop0(code >> 2, left - 1),
                        1 => hop1(code >> 2, left - 1),
                        2 => hop2(code >> 2, left - 1),
                        _ => hop3(code >> 2, left - 1),
                    }
                };
                // Used after the call: no tail call, the frame stays.
                black_box(r).wrapping_add($k)
            }
        )*
    };
}

hops!(hop0 = 11, hop1 = 23, hop2 = 37, hop3 = 51);

/// Allocates and frees one block through the tracker: in `Sampling::All`
/// this records a callsite for the calling chain.
#[inline(never)]
fn leaf(code: u32) -> usize {
    let l = layout(32);
    // SAFETY: `l` has a non-zero size.
    let p = unsafe { TRACKED.alloc(l) };
    if p.is_null() {
        handle_alloc_error(l);
    }
    // SAFETY: `p` was just allocated by `TRACKED` with `l`, freed once.
    unsafe { TRACKED.dealloc(black_box(p), l) };
    black_box(code as usize)
}

/// Records the callsite of chain `code`.
fn make_callsite(code: u32) {
    let first = match code & 3 {
        0 => hop0 as fn(u32, u32) -> usize,
        1 => hop1,
        2 => hop2,
        _ => hop3,
    };
    black_box(first(code >> 2, HOPS - 1));
}

/// Measures `heapwatch::snapshot()` with `n` distinct callsites made for
/// each `n` of `sizes` (ascending); `made` carries how many were made by an
/// earlier call, so the group can be run in steps.
fn snapshot_build(c: &mut Criterion, made: &mut u32, sizes: &[u32]) {
    init_tracker();
    heapwatch::set_unwinder(Unwinder::Auto);
    heapwatch::set_sampling(Sampling::All);
    let mut g = c.benchmark_group("snapshot_build");
    g.sample_size(10);
    for &n in sizes {
        for code in *made..n {
            make_callsite(code);
        }
        *made = n;
        // Warm-up: loads debug info and fills the symbol cache.
        let warm = heapwatch::snapshot();
        println!(
            "snapshot_build/{n}: {} callsites in the snapshot ({} table slots used; \
             includes the few recorded by earlier groups), unwinder {}",
            warm.callsites.len(),
            warm.tables.callsites_used,
            warm.unwinder,
        );
        drop(warm);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(heapwatch::snapshot()));
        });
    }
    g.finish();
    heapwatch::set_sampling(Sampling::Off);
}

// ---- /heap over HTTP ---------------------------------------------------------

/// Paths requested by `heap_request`.
#[cfg(feature = "server")]
const HEAP_REQUEST_PATHS: &[&str] = &[
    "/heap",
    "/heap?top=50",
    "/metrics",
    #[cfg(feature = "pprof")]
    "/debug/pprof/heap",
];

/// One complete request over a fresh connection: connect, send the request
/// (`Connection: close`), read the response to EOF. Panics unless the status
/// is 200. Returns the response's length (head and body).
#[cfg(feature = "server")]
fn http_get(addr: std::net::SocketAddr, request: &[u8], buf: &mut Vec<u8>) -> usize {
    use std::io::{Read, Write};

    let mut conn = std::net::TcpStream::connect(addr).expect("connecting to the endpoint");
    conn.write_all(request).expect("sending the request");
    buf.clear();
    conn.read_to_end(buf).expect("reading the response");
    if !buf.starts_with(b"HTTP/1.1 200 ") {
        let head = String::from_utf8_lossy(&buf[..buf.len().min(300)]);
        panic!("expected 200, got: {head}");
    }
    buf.len()
}

/// Latency of one request to the endpoint per path, with the callsite
/// table as it is (`main` runs this right after `snapshot_build/1000`).
///
/// The group makes no callsites of its own: a callsite is a whole stack, so
/// chains made from here would be new callsites, and would change the table
/// `snapshot_build` measures.
#[cfg(feature = "server")]
fn heap_request(c: &mut Criterion) {
    init_tracker();
    // The server's own allocations go to this binary's global allocator
    // (System), not through the tracker, whatever the mode.
    heapwatch::set_sampling(Sampling::Off);
    let server = heapwatch::ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        // The history takes its first snapshot at start, then one an hour:
        // none lands during the measurement.
        .history_interval(Duration::from_secs(3600))
        .serve()
        .expect("starting the endpoint");
    let addr = server.local_addr();
    let snap = heapwatch::snapshot();
    println!(
        "heap_request: {} callsites in the snapshot ({} table slots used; includes the few \
         recorded by earlier groups)",
        snap.callsites.len(),
        snap.tables.callsites_used,
    );
    drop(snap);
    let mut g = c.benchmark_group("heap_request");
    // Milliseconds per request: the same iteration count in every sample
    // keeps the run within the measurement time.
    g.sampling_mode(criterion::SamplingMode::Flat);
    g.sample_size(30);
    let mut buf = Vec::new();
    for path in HEAP_REQUEST_PATHS {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        // One request outside the measurement, for the response size
        // (symbols are already cached by snapshot_build's warm-up).
        let t = Instant::now();
        let len = http_get(addr, request.as_bytes(), &mut buf);
        println!(
            "heap_request {path}: first request {:.1} ms, response {len} bytes",
            t.elapsed().as_secs_f64() * 1e3
        );
        g.bench_function(
            BenchmarkId::from_parameter(path.trim_start_matches('/')),
            |b| {
                b.iter(|| black_box(http_get(addr, request.as_bytes(), &mut buf)));
            },
        );
    }
    g.finish();
    server.shutdown();
}

fn main() {
    init_tracker();
    println!(
        "heapwatch hook bench: inner allocator jemalloc, unwinder (auto) resolves to {}",
        heapwatch::active_unwinder()
    );
    let mut c = Criterion::default().configure_from_args();
    alloc_free_1thread(&mut c);
    alloc_free_2threads(&mut c);
    capture(&mut c);
    exact_vs_dhat(&mut c);
    // snapshot_build in two steps: heap_request measures the endpoint with
    // the table of snapshot_build/1000.
    let mut made = 0;
    snapshot_build(&mut c, &mut made, &[100, 1_000]);
    #[cfg(feature = "server")]
    heap_request(&mut c);
    snapshot_build(&mut c, &mut made, &[10_000]);
    c.final_summary();
}
