//! `scope` counts only the current thread's allocations, so leak tests can
//! run in parallel; `GrowthCheck` tells a leak from a cache filling once and
//! names the leaking callsite; panics leave heapwatch usable.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use heapwatch::{GrowthCheck, Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

#[inline(never)]
fn leaky_function(store: &mut Vec<Vec<u8>>) {
    store.push(black_box(vec![0u8; 3000]));
}

#[inline(never)]
fn small_leak(store: &mut Vec<Vec<u8>>) {
    store.push(black_box(vec![0u8; 100]));
}

#[inline(never)]
fn neighbours_leak(store: &mut Vec<Vec<u8>>) {
    store.push(black_box(vec![0u8; 20_000]));
}

/// A thread that allocates and frees until `stop`.
fn spawn_noise(stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            held.push(black_box(vec![1u8; 512]));
            if held.len() > 100 {
                held.clear();
            }
        }
    })
}

/// Another test's thread, as `cargo test` runs them in parallel: it leaks
/// 20,000 bytes each time it is asked.
fn spawn_neighbour(
    stop: &Arc<AtomicBool>,
    asked: &Arc<AtomicBool>,
    done: &Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (stop, asked, done) = (Arc::clone(stop), Arc::clone(asked), Arc::clone(done));
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if asked.swap(false, Ordering::Acquire) {
                neighbours_leak(&mut kept);
                done.fetch_add(1, Ordering::Release);
            } else {
                std::thread::yield_now();
            }
        }
        kept
    })
}

#[test]
fn scope_is_per_thread_and_growth_check_finds_leaks() {
    // Noise: other threads allocate and free the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let noise: Vec<_> = (0..3).map(|_| spawn_noise(&stop)).collect();

    for _ in 0..50 {
        let (v, s) = heapwatch::scope(|| black_box(vec![0u64; 100]));
        assert!(s.exact);
        assert_eq!((s.allocations, s.frees, s.reallocs), (1, 0, 0));
        assert_eq!(
            (s.allocated_bytes, s.net_live_bytes, s.net_live_blocks),
            (800, 800, 1)
        );
        let ((), s) = heapwatch::scope(|| drop(v));
        assert_eq!((s.frees, s.net_live_bytes), (1, -800));
    }

    // A leak: every iteration keeps 3000 bytes.
    let mut store = Vec::with_capacity(64);
    let err = GrowthCheck::new()
        .run(|| leaky_function(&mut store))
        .expect_err("a leak of 3000 bytes an iteration");
    assert_eq!(err.0.iterations, 20);
    assert!(err.0.growing_iterations >= 20, "{:?}", err.0);
    assert!(err.0.total_growth_bytes >= 20 * 3000);
    let message = err.to_string();
    assert!(
        message.contains("leaky_function"),
        "the report names the callsite: {message}"
    );

    // The same leak while another thread leaks more, at another callsite,
    // during every iteration: the report puts the closure's callsite
    // first and the neighbour's apart.
    let asked = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let neighbour = spawn_neighbour(&stop, &asked, &done);
    let err = GrowthCheck::new()
        .run(|| {
            leaky_function(&mut store);
            let before = done.load(Ordering::Acquire);
            asked.store(true, Ordering::Release);
            while done.load(Ordering::Acquire) == before {
                std::thread::yield_now();
            }
        })
        .expect_err("a leak of 3000 bytes an iteration");
    let names = |sites: &[heapwatch::CallsiteDelta]| -> Vec<String> {
        sites
            .iter()
            .map(|c| {
                c.frames
                    .first()
                    .map_or(String::new(), |f| f.function.clone())
            })
            .collect()
    };
    let mine = names(&err.0.top_growing);
    let elsewhere = names(&err.0.elsewhere_growing);
    assert!(
        mine.first().is_some_and(|f| f.ends_with("leaky_function")),
        "{mine:?} / {elsewhere:?}"
    );
    assert!(
        !mine.iter().any(|f| f.ends_with("neighbours_leak")),
        "{mine:?}"
    );
    assert!(
        elsewhere.iter().any(|f| f.ends_with("neighbours_leak")),
        "{elsewhere:?}"
    );
    let message = err.to_string();
    let (head, tail) = message
        .split_once("grown elsewhere")
        .unwrap_or_else(|| panic!("{message}"));
    assert!(
        head.contains("leaky_function") && tail.contains("neighbours_leak"),
        "{message}"
    );

    // A small leak, checked through `&mut f`: the closure's own callsite
    // is named, and only it (not the check's snapshots, not the test
    // function's other blocks).
    // A thread this test function spawns runs a closure of the same name
    // ("...::scope_is_per_thread_and_growth_check_finds_leaks::{{closure}}")
    // and leaks meanwhile: it is elsewhere, not the checked closure's.
    let sibling_stop = Arc::new(AtomicBool::new(false));
    let sibling = {
        let stop = Arc::clone(&sibling_stop);
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                kept.push(black_box(vec![7u8; 1000]));
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            kept.len()
        })
    };
    let mut small = Vec::new();
    let mut leak_small = || small_leak(&mut small);
    let err = GrowthCheck::new()
        .run(&mut leak_small)
        .expect_err("a leak of 100 bytes an iteration");
    sibling_stop.store(true, Ordering::Relaxed);
    assert!(sibling.join().unwrap() > 0);
    let mine = names(&err.0.top_growing);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(mine[0].ends_with("small_leak"), "{mine:?}");
    assert!(!err.0.sampled);
    drop(small);

    // A function pointer names no callsite: the report says so.
    let mut more = Vec::new();
    let as_pointer: &mut dyn FnMut() = &mut || small_leak(&mut more);
    let err = GrowthCheck::new()
        .run(as_pointer)
        .expect_err("a leak of 100 bytes an iteration");
    assert!(err.0.top_growing.is_empty());
    assert!(err.to_string().contains("pass the closure itself"), "{err}");
    drop(more);

    // A cache that fills once during warm-up is not a leak.
    let mut cache: Option<Vec<u8>> = None;
    let report = GrowthCheck::new()
        .run(|| {
            cache.get_or_insert_with(|| vec![0u8; 100_000]);
            black_box(vec![0u8; 64]);
        })
        .expect("filled once during warm-up");
    assert_eq!(report.growing_iterations, 0);

    // A panic inside scope or a growth check propagates and leaves
    // heapwatch usable.
    let r = std::panic::catch_unwind(|| heapwatch::scope(|| panic!("boom")));
    assert!(r.is_err());
    let r = std::panic::catch_unwind(|| GrowthCheck::new().run(|| panic!("boom")));
    assert!(r.is_err());
    let (_, s) = heapwatch::scope(|| black_box(vec![0u8; 10]));
    assert_eq!(s.allocations, 1);
    heapwatch::assert_no_growth(|| drop(black_box(vec![0u8; 128])));
    // A panic in a measured iteration (after the warm-up's 3 calls, with
    // the check's snapshots held): they are dropped as heapwatch's own, so
    // the thread's figures do not go below what it holds.
    let (r, s) = heapwatch::scope(|| {
        std::panic::catch_unwind(|| {
            let mut calls = 0;
            GrowthCheck::new().run(|| {
                calls += 1;
                if calls == 6 {
                    panic!("boom in a measured iteration");
                }
            })
        })
    });
    assert!(r.is_err());
    assert!(
        s.net_live_blocks >= 0 && s.net_live_bytes >= 0,
        "a panic in a measured iteration freed heapwatch's snapshots as the program's: {s:?}"
    );

    stop.store(true, Ordering::Relaxed);
    for t in noise {
        t.join().unwrap();
    }
    drop(neighbour.join().unwrap());
}

#[inline(never)]
fn keep_one_more(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![5u8; 64]));
}

#[test]
fn a_boxed_closure_is_named_and_its_callsites_add_up_to_its_growth() {
    // The outer `Vec` grows by reallocation, so blocks the warm-up runs
    // allocated are freed by measured runs: warm-up and measured runs
    // must allocate under the same frames for the callsites' growth to
    // add up to the thread's. And a `Box` of a closure is checked as the
    // closure.
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let err = GrowthCheck::new()
        .top(50)
        .run(Box::new(|| keep_one_more(&mut kept)))
        .unwrap_err();
    let report = &err.0;
    assert!(report.nameable, "{err}");
    assert!(!report.top_growing.is_empty(), "{err}");
    let named: i64 = report.top_growing.iter().map(|c| c.live_bytes_delta).sum();
    assert_eq!(named, report.total_growth_bytes, "{err}");
    drop(kept);
}
