//! Leak grading of callsites sampled by bytes, with real sampling: caches
//! that hold steady while their blocks are replaced are not graded as
//! leaks, though their estimates wobble by megabytes; a leak inside a
//! callsite that churns as they do is graded.
//!
//! Time is compressed: the program replaces every block between two
//! snapshots, and each snapshot's `uptime_ms` is set to 10 s after the
//! previous one's (the endpoint's default history interval), so six minutes
//! of history take a few seconds. Sampling is seeded, so the run samples
//! the same blocks every time; `LEAK_GRADING_SEED=N` draws others.
//!
//! `LEAK_GRADING_REPLACE=N` replaces only N of each cache's 1,280 blocks
//! between snapshots (in turn), so that sampled blocks stay live for
//! minutes and the caches' errors drift together: the run then reports how
//! often the steady caches are graded, and asserts nothing about them (the
//! interval assumes independent errors; see `leak_report`).

use std::hint::black_box;

use heapwatch::{leak_report, LeakThresholds, Sampling, Severity, Snapshot, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System);

const BLOCK: usize = 16 * 1024;
/// Blocks in each cache: 20 MiB, whose estimate at the default interval
/// wobbles by about sqrt(20 MiB × 512 KiB), 3.2 MiB.
const CACHE_BLOCKS: usize = 1280;
/// Blocks the leaking callsite keeps on top of its cache per 10 s:
/// 6 MiB per minute, `medium`.
const LEAK_PER_TICK: usize = 64;
const TICK_MS: u64 = 10_000;
/// 6 minutes: the 5 minute window full, and a minute more.
const TICKS: usize = 37;

macro_rules! cache_fns {
    ($($name:ident),*) => {$(
        /// Replaces block `i` of the cache (or adds it at the end).
        #[inline(never)]
        fn $name(cache: &mut Vec<Box<[u8]>>, i: usize) {
            let block = black_box(vec![i as u8; BLOCK].into_boxed_slice());
            if let Some(slot) = cache.get_mut(i) {
                *slot = block;
            } else {
                cache.push(block);
            }
        }
    )*};
}
cache_fns!(
    grading_cache_a,
    grading_cache_b,
    grading_cache_c,
    grading_cache_d,
    grading_leaky
);

type Put = fn(&mut Vec<Box<[u8]>>, usize);
const FLAT: [(&str, Put); 4] = [
    ("grading_cache_a", grading_cache_a),
    ("grading_cache_b", grading_cache_b),
    ("grading_cache_c", grading_cache_c),
    ("grading_cache_d", grading_cache_d),
];

fn main() {
    assert!(heapwatch::installed());
    assert!(matches!(heapwatch::sampling(), Sampling::Bytes(_)));
    // Another seed from the environment, to see other draws.
    let seed = std::env::var("LEAK_GRADING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261202);
    heapwatch::set_sampling_seed(seed);
    let replace: Option<usize> = std::env::var("LEAK_GRADING_REPLACE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n < CACHE_BLOCKS);

    let mut flat: Vec<Vec<Box<[u8]>>> = vec![Vec::with_capacity(CACHE_BLOCKS); FLAT.len()];
    let mut leaky: Vec<Box<[u8]>> = Vec::with_capacity(CACHE_BLOCKS + TICKS * LEAK_PER_TICK);
    let mut history: Vec<Snapshot> = Vec::with_capacity(TICKS);
    for tick in 0..TICKS {
        // Every block of every cache replaced: each estimate is a fresh
        // draw of which blocks are sampled (unless told otherwise).
        let n = match replace {
            Some(n) if tick > 0 => n,
            _ => CACHE_BLOCKS,
        };
        for k in 0..n {
            let i = (tick * n + k) % CACHE_BLOCKS;
            for ((_, put), cache) in FLAT.iter().zip(&mut flat) {
                put(cache, i);
            }
            grading_leaky(&mut leaky, i);
        }
        for _ in 0..tick * LEAK_PER_TICK - (leaky.len() - CACHE_BLOCKS) {
            let len = leaky.len();
            grading_leaky(&mut leaky, len);
        }
        let mut snap = heapwatch::snapshot();
        snap.uptime_ms = tick as u64 * TICK_MS;
        history.push(snap);
    }

    // Poll as the endpoint does, once its points span a tenth of the
    // window (from the fourth snapshot).
    let window = std::time::Duration::from_secs(300);
    let t = LeakThresholds::DEFAULT;
    let (mut graded_flat, mut fitted_flat, mut polls) = (0, 0, 0);
    let mut leak_graded = Vec::new();
    // The first poll that grades the leak at its fitted rate.
    let mut fitted_leak = None;
    for last in 3..TICKS {
        let r = leak_report(&history[..=last], window, &t);
        assert!(r.enough_data, "{last}");
        polls += 1;
        for c in &r.callsites {
            let function = c.frames.first().map_or("", |f| f.function.as_str());
            if FLAT.iter().any(|(name, _)| function.ends_with(name)) {
                if c.severity > Severity::None {
                    graded_flat += 1;
                    eprintln!(
                        "tick {last}: {function} graded {:?} at {:.2} MiB/min (fitted {:.2}, recent {:.2})",
                        c.severity, c.graded_mb_per_min, c.mb_per_min, c.recent_mb_per_min
                    );
                }
                // What grading the fitted rate (as for exact figures) reads.
                if t.severity(c.mb_per_min.min(c.recent_mb_per_min)) > Severity::None {
                    fitted_flat += 1;
                }
            }
        }
        let leak = r.callsites.iter().find(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.ends_with("grading_leaky"))
        });
        leak_graded.push((last, leak.map_or(Severity::None, |c| c.severity)));
        if let Some(c) = leak {
            if fitted_leak.is_none()
                && t.severity(c.mb_per_min.min(c.recent_mb_per_min)) > Severity::None
            {
                fitted_leak = Some(last);
            }
        }
        if last == TICKS - 1 {
            assert!(
                r.process.severity >= Severity::Medium,
                "the process grows 6 MiB/min: {:?}",
                r.process
            );
            let c = leak.expect("the leaking callsite grows");
            eprintln!(
                "last poll: the leak read {:.2} MiB/min, graded {:.2} ({:?})",
                c.mb_per_min, c.graded_mb_per_min, c.severity
            );
        }
    }
    eprintln!(
        "{polls} polls x {} steady caches ({} of {CACHE_BLOCKS} blocks replaced between snapshots): graded {graded_flat}; grading the fitted rate would have graded {fitted_flat}",
        FLAT.len(),
        replace.unwrap_or(CACHE_BLOCKS)
    );
    let first = leak_graded.iter().find(|(_, s)| *s > Severity::None);
    eprintln!(
        "the leak is first graded {} s after it started ({} s grading its fitted rate)",
        first.map_or(u64::MAX, |(last, _)| *last as u64 * TICK_MS / 1000),
        fitted_leak.map_or(u64::MAX, |last| last as u64 * TICK_MS / 1000)
    );
    if replace.is_some() {
        println!("leak_grading_sampled: reported (LEAK_GRADING_REPLACE)");
        return;
    }
    assert_eq!(graded_flat, 0, "steady caches graded as leaks");

    // The leak is graded for the whole last minute, when the window holds
    // five minutes of it.
    let late: Vec<_> = leak_graded
        .iter()
        .filter(|(last, _)| *last >= TICKS - 7)
        .collect();
    assert!(
        late.iter().all(|(_, s)| *s >= Severity::Low),
        "the leak went ungraded: {leak_graded:?}"
    );
    black_box((flat, leaky));
    println!("leak_grading_sampled: ok");
}
