//! Soak test: steady allocation churn on a few threads for a long time,
//! with the endpoint up and a client scraping it over real TCP, checking
//! that heapwatch neither grows nor fails.
//!
//! ```text
//! cargo run --release --example soak                  # 10 minutes, no leak
//! cargo run --release --example soak -- --minutes 1
//! cargo run --release --example soak -- --seconds 60 --leak
//! ```
//!
//! A run takes at least 12 seconds (see the floors below).
//!
//! Every 100 ms a client thread requests `/heap`, `/heap/diff?base=<a
//! retained id>`, `/metrics` and `/debug/pprof/heap` (and `/heap/history`
//! once a second, for the base id), each on a new connection with a
//! hand-written `GET`. The history keeps a snapshot a second, as many as the
//! warm-up lasts (so the bounded history is full before the baseline is
//! measured).
//!
//! At the end it prints the floors (see below) of RSS and of heapwatch's
//! overhead after the warm-up (minute 1, or 1/6 of a shorter run), requests
//! served and failed, and `/heap/leaks`. It exits non-zero when a request
//! failed; without `--leak`, when the RSS floor or the overhead floor grew
//! more than 5% after the warm-up; with `--leak`, when
//! `/heap/leaks` does not put the leaking function first or the RSS floor
//! grew by less than half of what leaked between its two readings.
//!
//! RSS is compared *settled* and as floors. Once a second the allocator is
//! asked to return the pages it keeps for reuse (jemalloc's
//! `arena.<all>.purge`, or glibc's `malloc_trim(0)` for `System`), then RSS
//! is read; the lowest of these readings in the first third after the
//! warm-up is compared with the lowest in the last third (each of at least
//! 3 readings). Raw RSS, read every 100 ms between the purges, swings by
//! half or more (20 to 75 MiB in a debug build): the scrapes build
//! multi-MiB responses, and jemalloc keeps freed pages for its 10 s decay
//! before returning them. Comparing two raw readings failed a CI run at
//! +7.76% with live and overhead flat, and a floor of raw readings missed a
//! 9.4 MiB leak in a minute. The raw range is printed too.
//!
//! heapwatch's overhead is read every 100 ms and compared as floors the
//! same way: while the endpoint builds a snapshot that meets a new callsite,
//! the symbolizer's working memory counts as overhead until it is freed
//! (13.5 MiB at rest in a release build, readings up to 30 MiB).

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: heapwatch::Tracker<tikv_jemallocator::Jemalloc> =
    heapwatch::Tracker::new(tikv_jemallocator::Jemalloc)
        .with_sampling(heapwatch::Sampling::Bytes(64 * 1024));

#[cfg(not(feature = "jemalloc"))]
#[global_allocator]
static GLOBAL: heapwatch::Tracker<std::alloc::System> = heapwatch::Tracker::new(std::alloc::System)
    .with_sampling(heapwatch::Sampling::Bytes(64 * 1024));

const CHURN_THREADS: usize = 3;
/// Blocks each churn thread keeps live (replaced at random).
const RING: usize = 2048;
/// With `--leak`: 16 KiB every 100 ms, about 9.4 MiB a minute.
const LEAK_BLOCK: usize = 16 * 1024;
const GROWTH_LIMIT_PERCENT: f64 = 5.0;
/// Readings a floor is taken over, at least.
const MIN_READINGS: usize = 3;
/// Shortest run: the warm-up (a sixth) and three thirds of at least
/// `MIN_READINGS` settled readings a second apart, with a second to spare.
const MIN_RUN: Duration = Duration::from_secs(12);

struct Args {
    run: Duration,
    leak: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut run = Duration::from_secs(600);
    let mut leak = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name} needs a positive whole number"))
        };
        match a.as_str() {
            "--minutes" => run = Duration::from_secs(60 * number("--minutes")?),
            "--seconds" => run = Duration::from_secs(number("--seconds")?),
            "--leak" => leak = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (use --minutes N, --seconds N, --leak)"
                ))
            }
        }
    }
    if run < MIN_RUN {
        return Err(format!(
            "the run needs at least {MIN_RUN:?}: the floors compare settled readings taken a second apart, at least {MIN_READINGS} in each third after the warm-up"
        ));
    }
    Ok(Args { run, leak })
}

/// Steady churn: replaces random blocks of a fixed-size ring with blocks of
/// varied sizes and kinds; live memory stays flat.
#[inline(never)]
fn churn(stop: &AtomicBool, seed: u64, ops: &AtomicU64) {
    let mut x = seed | 1;
    let mut ring: Vec<Vec<u8>> = (0..RING).map(|_| Vec::new()).collect();
    let mut strings: Vec<String> = vec![String::new(); 64];
    while !stop.load(Relaxed) {
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x >> 8) as usize % RING;
            let size = 16 + (x >> 32) as usize % (1 << ((x >> 20) % 15));
            ring[i] = black_box(vec![x as u8; size]);
            if x.is_multiple_of(7) {
                let s = &mut strings[(x >> 40) as usize % 64];
                *s = format!("{x:x}-{}", "y".repeat((x % 200) as usize));
            }
        }
        ops.fetch_add(1000, Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    }
    black_box((ring, strings));
}

/// The leak, from its own function so `/heap/leaks` can name it.
#[inline(never)]
fn leak_some(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![0xAB; LEAK_BLOCK]));
}

/// Asks the allocator to return the free pages it keeps, so that RSS is
/// what the process uses: live blocks, fragmentation, heapwatch's tables,
/// stacks and code.
fn return_free_pages() {
    #[cfg(feature = "jemalloc")]
    {
        // 4096 is MALLCTL_ARENAS_ALL.
        const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
        // SAFETY: the name is NUL-terminated; `arena.<i>.purge` reads and
        // writes no value, so every pointer is null and the length 0, as
        // jemalloc requires of it.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            eprintln!("soak: arena.4096.purge failed ({rc}): the RSS floors are not settled");
        }
    }
    #[cfg(all(not(feature = "jemalloc"), target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// `GET path` on a new connection; the status and the body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut body = raw.split_off(head_end + 4);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body).ok_or("bad chunked body")?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[derive(Default)]
struct ClientStats {
    served: AtomicU64,
    failed: AtomicU64,
}

/// A retained snapshot id from the middle of the history: it stays
/// retained for half the history's length, much longer than the client
/// uses it before asking again.
fn retained_base_id(addr: SocketAddr) -> Result<u64, String> {
    let (status, body) = get(addr, "/heap/history")?;
    if status != 200 {
        return Err(format!("/heap/history: {status}"));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let snaps = v["snapshots"].as_array().ok_or("no snapshot list")?;
    snaps
        .get(snaps.len() / 2)
        .and_then(|s| s["id"].as_u64())
        .ok_or_else(|| "no retained snapshot".to_string())
}

fn client(addr: SocketAddr, stop: &AtomicBool, stats: &ClientStats) {
    let mut base = None;
    let mut round = 0u64;
    while !stop.load(Relaxed) {
        let started = Instant::now();
        if round.is_multiple_of(10) || base.is_none() {
            match retained_base_id(addr) {
                Ok(id) => {
                    base = Some(id);
                    stats.served.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    eprintln!("soak: /heap/history failed: {e}");
                    stats.failed.fetch_add(1, Relaxed);
                }
            }
        }
        let diff = format!("/heap/diff?base={}", base.unwrap_or(1));
        for path in ["/heap", diff.as_str(), "/metrics", "/debug/pprof/heap"] {
            match get(addr, path) {
                Ok((200, body)) if !body.is_empty() => {
                    stats.served.fetch_add(1, Relaxed);
                }
                Ok((status, body)) => {
                    eprintln!(
                        "soak: {path}: {status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    );
                    stats.failed.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    eprintln!("soak: {path}: {e}");
                    stats.failed.fetch_add(1, Relaxed);
                }
            }
        }
        round += 1;
        if let Some(left) = Duration::from_millis(100).checked_sub(started.elapsed()) {
            std::thread::sleep(left);
        }
    }
}

struct Reading {
    at: Duration,
    overhead: u64,
    live: u64,
}

fn reading(start: Instant) -> Reading {
    let s = heapwatch::stats();
    Reading {
        at: start.elapsed(),
        overhead: s.overhead_bytes,
        live: s.live_bytes,
    }
}

/// The lowest reading in `[from, to)`, with when it was taken; none with
/// fewer than `MIN_READINGS` readings there.
fn floor(samples: &[(Duration, u64)], from: Duration, to: Duration) -> Option<(Duration, u64)> {
    let window: Vec<_> = samples
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
        .collect();
    if window.len() < MIN_READINGS {
        return None;
    }
    window.into_iter().min_by_key(|(_, value)| *value).copied()
}

/// A floor of the first third and one of the last.
type Floors = (Option<(Duration, u64)>, Option<(Duration, u64)>);

/// The floors of the first and the last third of `samples`, taken in
/// `[from, to]`.
fn floors(samples: &[(Duration, u64)], from: Duration, to: Duration) -> Floors {
    let third = to.saturating_sub(from) / 3;
    (
        floor(samples, from, from + third),
        floor(samples, to - third, to + Duration::from_millis(1)),
    )
}

fn pct(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) * 100.0 / (a.max(1) as f64)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let warmup = (args.run / 6).min(Duration::from_secs(60));
    let history_len = warmup.as_secs().max(5) as usize;
    let server = match heapwatch::ServerBuilder::new()
        .addr("127.0.0.1:0")
        .token(None)
        .history_interval(Duration::from_secs(1))
        .history_len(history_len)
        // The window the retained history covers.
        .leak_window(Duration::from_secs(history_len as u64))
        .serve()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: cannot start the endpoint: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = server.local_addr();
    println!(
        "soak: {:?}, leak: {}, endpoint http://{addr}/, history {history_len} x 1 s, warm-up {warmup:?}",
        args.run, args.leak
    );

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let client_stats = Arc::new(ClientStats::default());
    let mut threads = Vec::new();
    for i in 0..CHURN_THREADS {
        let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
        threads.push(std::thread::spawn(move || {
            churn(&stop, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1), &ops)
        }));
    }
    {
        let (stop, stats) = (Arc::clone(&stop), Arc::clone(&client_stats));
        threads.push(std::thread::spawn(move || client(addr, &stop, &stats)));
    }

    let mut leaked = Vec::new();
    let mut warm = None;
    // After the warm-up: raw RSS every 100 ms, the lowest and highest kept;
    // settled RSS every second (600 entries in 10 minutes) with the bytes
    // leaked by then; heapwatch's overhead every 100 ms (6,000 entries).
    let (mut lowest, mut highest) = (u64::MAX, 0);
    let mut rss = Vec::with_capacity(args.run.as_secs() as usize + 1);
    let mut leaked_by = Vec::with_capacity(args.run.as_secs() as usize + 1);
    let mut overhead = Vec::with_capacity((args.run.as_millis() / 100) as usize + 1);
    let mut settled_at = Duration::ZERO;
    while start.elapsed() < args.run {
        if args.leak {
            leak_some(&mut leaked);
        }
        if warm.is_none() && start.elapsed() >= warmup {
            let r = reading(start);
            println!(
                "soak: warm-up done at {:.0?}: rss {:.1} MiB, overhead {:.1} MiB, live {:.1} MiB",
                r.at,
                mib(rss_bytes()),
                mib(r.overhead),
                mib(r.live)
            );
            warm = Some(r);
        }
        if warm.is_some() {
            overhead.push((start.elapsed(), heapwatch::stats().overhead_bytes));
            let raw = rss_bytes();
            (lowest, highest) = (lowest.min(raw), highest.max(raw));
            if start.elapsed() >= settled_at {
                return_free_pages();
                let now = start.elapsed();
                rss.push((now, rss_bytes()));
                leaked_by.push((now, (leaked.len() * LEAK_BLOCK) as u64));
                settled_at = now + Duration::from_secs(1);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    return_free_pages();
    let end = reading(start);
    rss.push((end.at, rss_bytes()));
    leaked_by.push((end.at, (leaked.len() * LEAK_BLOCK) as u64));
    overhead.push((end.at, end.overhead));
    let leaks = get(addr, "/heap/leaks?top=5");
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    server.shutdown();

    let served = client_stats.served.load(Relaxed);
    let mut failed = client_stats.failed.load(Relaxed);
    let warm = warm.unwrap_or_else(|| reading(start));
    println!(
        "soak: churn: {:.1} M blocks replaced on {CHURN_THREADS} threads; leaked {:.1} MiB",
        ops.load(Relaxed) as f64 / 1e6,
        mib((leaked.len() * LEAK_BLOCK) as u64)
    );
    let (first, last) = floors(&rss, warm.at, end.at);
    if let (Some((t0, a)), Some((t1, b))) = (first, last) {
        println!(
            "soak: rss floor {:>7.1} MiB at {:>5.0?} -> {:>8.1} MiB at {:>5.0?} ({:+.2}%; settled, {} readings)",
            mib(a),
            t0,
            mib(b),
            t1,
            pct(a, b),
            rss.len(),
        );
    }
    if highest > 0 {
        println!(
            "soak: rss raw   {:>7.1} MiB to {:>7.1} MiB (every 100 ms after the warm-up, purged once a second)",
            mib(lowest),
            mib(highest)
        );
    }
    let overhead_floors = floors(&overhead, warm.at, end.at);
    if let (Some((t0, a)), Some((t1, b))) = overhead_floors {
        println!(
            "soak: overhead floor {:>4.1} MiB at {:>5.0?} -> {:>8.1} MiB at {:>5.0?} ({:+.2}%; up to {:.1} MiB while responses are built)",
            mib(a),
            t0,
            mib(b),
            t1,
            pct(a, b),
            mib(overhead.iter().map(|o| o.1).max().unwrap_or(0)),
        );
    }
    println!(
        "soak: live     {:>8.1} MiB -> {:>8.1} MiB",
        mib(warm.live),
        mib(end.live)
    );
    println!("soak: requests served {served}, failed {failed}");

    let mut ok = true;
    let leaks: Option<serde_json::Value> = match leaks {
        Ok((200, body)) => serde_json::from_slice(&body).ok(),
        other => {
            eprintln!("soak: /heap/leaks: {other:?}");
            failed += 1;
            None
        }
    };
    let top_function = leaks.as_ref().and_then(|l| {
        l["callsites"][0]["frames"][0]["function"]
            .as_str()
            .map(str::to_string)
    });
    if let Some(l) = &leaks {
        println!(
            "soak: /heap/leaks: points {}, process {:.2} MiB/min ({}), top callsite {} at {:.2} MiB/min ({})",
            l["points"],
            l["process"]["mb_per_min"].as_f64().unwrap_or(0.0),
            l["process"]["severity"].as_str().unwrap_or("?"),
            top_function.as_deref().unwrap_or("<none>"),
            l["callsites"][0]["mb_per_min"].as_f64().unwrap_or(0.0),
            l["callsites"][0]["severity"].as_str().unwrap_or("-"),
        );
    }
    if failed > 0 {
        eprintln!("soak: FAIL: {failed} requests failed");
        ok = false;
    }
    if args.leak {
        let named = top_function
            .as_deref()
            .is_some_and(|f| f.ends_with("leak_some"));
        let graded = leaks.as_ref().is_some_and(|l| {
            l["callsites"][0]["severity"]
                .as_str()
                .is_some_and(|s| s != "none")
        });
        if !(named && graded) {
            eprintln!("soak: FAIL: the leak in leak_some was not flagged at the top");
            ok = false;
        }
        // The RSS check must see a leak too: at least half of what leaked
        // between the two floors' readings.
        // Each settled reading was pushed to both with the same time.
        let leaked_at = |t: Duration| {
            leaked_by
                .iter()
                .find(|r| r.0 == t)
                .expect("a settled reading's leaked bytes")
                .1
        };
        if let (Some((t0, a)), Some((t1, b))) = (first, last) {
            let leaked_between = leaked_at(t1).saturating_sub(leaked_at(t0));
            if b.saturating_sub(a) < leaked_between / 2 {
                eprintln!(
                    "soak: FAIL: the RSS floor grew {:.1} MiB, less than half the {:.1} MiB leaked between its readings",
                    mib(b.saturating_sub(a)),
                    mib(leaked_between)
                );
                ok = false;
            }
        } else {
            eprintln!("soak: FAIL: too few settled readings to compare RSS floors");
            ok = false;
        }
    } else {
        for (what, floors) in [
            ("rss floor", (first, last)),
            ("overhead floor", overhead_floors),
        ] {
            let (Some((_, a)), Some((_, b))) = floors else {
                eprintln!("soak: FAIL: too few readings to compare {what}s");
                ok = false;
                continue;
            };
            if pct(a, b) > GROWTH_LIMIT_PERCENT {
                eprintln!(
                    "soak: FAIL: {what} grew {:+.2}% after the warm-up (limit {GROWTH_LIMIT_PERCENT}%)",
                    pct(a, b)
                );
                ok = false;
            }
        }
    }
    println!("soak: {}", if ok { "PASS" } else { "FAIL" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
