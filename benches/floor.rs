//! The floor of issue 2's measure: what each part of a tracking fast path
//! costs in the tight alloc + free loop of `benches/hook.rs`, side by side
//! with raw jemalloc and with heapwatch itself.
//!
//! The parts are those of a model wrapper (`benches/compare/floor_model.rs`)
//! that does what heapwatch's fast path does, one part at a time: `dealloc`
//! out of line, the thread's word, the four exact counters, the budget's
//! comparisons, the reentrancy guard, the free filter, the sampling
//! countdown. Every configuration runs the same loop, interleaved round by
//! round, and each ratio is the median over rounds of the configuration's
//! time over raw jemalloc's in the same round (a busy neighbour slows a
//! round, not one configuration).
//!
//! ```sh
//! cargo bench --bench floor -- --rounds 51 --sizes 16,64,256,1024,4096
//! ```
//!
//! It prints a markdown table (BENCHMARKS.md, seventeenth round) and checks
//! that the model counted every allocation and free it made.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

use heapwatch::Sampling;
use tikv_jemallocator::Jemalloc;

#[path = "compare/floor_model.rs"]
mod floor_model;

use floor_model::{Floor, BUDGET, COUNTDOWN, COUNTS, FILTER, GUARD, OUT_OF_LINE, WORD};

// The harness's own allocations stay out of the measured allocators.
#[global_allocator]
static GLOBAL: System = System;

static TRACKED: heapwatch::Tracker<Jemalloc> = heapwatch::Tracker::new(Jemalloc);

/// Pairs per configuration per round.
const PAIRS: u64 = 2_000_000;

/// Allocates and frees one block of `size` bytes (aligned to 8, a constant
/// as in most programs) through `a`, `n` times.
#[inline(never)]
fn alloc_free<A: GlobalAlloc>(a: &A, size: usize, n: u64) {
    let layout = Layout::from_size_align(size, 8).expect("a valid size");
    for _ in 0..n {
        // SAFETY: every size used here is non-zero.
        let p = unsafe { a.alloc(layout) };
        if p.is_null() {
            handle_alloc_error(layout);
        }
        // SAFETY: `p` was just allocated by `a` with `layout`, freed once.
        unsafe { a.dealloc(black_box(p), layout) };
    }
}

/// One configuration: its row label, how to run `n` pairs of a size, and
/// whether it is a model that counts (in `floor_model::totals`).
struct Config {
    label: &'static str,
    run: fn(usize, u64),
    model_counts: bool,
}

fn configs() -> Vec<Config> {
    fn model<const PARTS: u32>(size: usize, n: u64) {
        alloc_free(&Floor::<PARTS>, size, n);
    }
    fn tracked(sampling: Sampling) -> impl Fn(usize, u64) {
        move |size, n| {
            heapwatch::set_sampling(sampling);
            alloc_free(&TRACKED, size, n);
        }
    }
    vec![
        Config {
            label: "raw jemalloc",
            run: |size, n| alloc_free(&Jemalloc, size, n),
            model_counts: false,
        },
        Config {
            label: "model: nothing but `dealloc` out of line",
            run: model::<OUT_OF_LINE>,
            model_counts: false,
        },
        Config {
            label: "model: + the thread's word",
            run: model::<{ OUT_OF_LINE | WORD }>,
            model_counts: false,
        },
        Config {
            label: "model: + the four exact counters",
            run: model::<{ OUT_OF_LINE | WORD | COUNTS }>,
            model_counts: true,
        },
        Config {
            label: "model: + the budget's limits",
            run: model::<{ OUT_OF_LINE | WORD | COUNTS | BUDGET }>,
            model_counts: true,
        },
        Config {
            label: "model: + the reentrancy guard",
            run: model::<{ OUT_OF_LINE | WORD | COUNTS | BUDGET | GUARD }>,
            model_counts: true,
        },
        Config {
            label: "model: + the free filter",
            run: model::<{ OUT_OF_LINE | WORD | COUNTS | BUDGET | GUARD | FILTER }>,
            model_counts: true,
        },
        Config {
            label: "model: + the sampling countdown (all parts)",
            run: model::<{ OUT_OF_LINE | WORD | COUNTS | BUDGET | GUARD | FILTER | COUNTDOWN }>,
            model_counts: true,
        },
        Config {
            label: "model: the thread's word and counters, all inlined",
            run: model::<{ WORD | COUNTS }>,
            model_counts: true,
        },
        Config {
            label: "heapwatch `Sampling::Off`",
            run: |size, n| tracked(Sampling::Off)(size, n),
            model_counts: false,
        },
        Config {
            label: "heapwatch default (`Bytes(512 KiB)`)",
            run: |size, n| tracked(Sampling::DEFAULT)(size, n),
            model_counts: false,
        },
    ]
}

fn positive(value: &str, what: &str) -> usize {
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("floor: {what} takes positive integers, got {value:?}");
            std::process::exit(2);
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut rounds = 51;
    let mut sizes = vec![16, 64, 256, 1024, 4096];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => rounds = positive(&args.next().unwrap_or_default(), "--rounds"),
            "--sizes" => {
                let list = args.next().unwrap_or_default();
                sizes = list.split(',').map(|s| positive(s, "--sizes")).collect();
            }
            // `cargo bench` passes `--bench`; nothing else is expected.
            "--bench" => {}
            other => {
                eprintln!("floor: unknown argument {other:?} (expected --rounds N, --sizes a,b)");
                std::process::exit(2);
            }
        }
    }
    let configs = configs();
    // times[size][config][round], nanoseconds per pair.
    let mut times = vec![vec![Vec::with_capacity(rounds); configs.len()]; sizes.len()];
    for c in &configs {
        (c.run)(64, PAIRS / 10); // warm-up: leases, thread caches, code
    }
    for _ in 0..rounds {
        for (s, &size) in sizes.iter().enumerate() {
            for (i, c) in configs.iter().enumerate() {
                let start = Instant::now();
                (c.run)(black_box(size), PAIRS);
                times[s][i].push(start.elapsed().as_nanos() as f64 / PAIRS as f64);
            }
        }
    }
    heapwatch::set_sampling(Sampling::Off);

    println!("{rounds} rounds of {PAIRS} pairs per configuration and size, interleaved.");
    println!("Median ns per alloc + free pair, and in brackets the median over rounds");
    println!("of its ratio to raw jemalloc in the same round.\n");
    print!("| configuration |");
    for size in &sizes {
        print!(" {size} B |");
    }
    print!("\n| --- |");
    for _ in &sizes {
        print!(" --- |");
    }
    println!();
    for (i, c) in configs.iter().enumerate() {
        print!("| {} |", c.label);
        for t in &times {
            let mut ratios: Vec<f64> = t[i].iter().zip(&t[0]).map(|(x, raw)| x / raw).collect();
            let ns = median(&mut t[i].clone());
            print!(" {ns:.2} ({:.2}x) |", median(&mut ratios));
        }
        println!();
    }

    // The model must have counted what it did, or its figures are not
    // those of counting.
    let (allocs, frees, alloc_bytes, freed_bytes, _) = floor_model::totals();
    let counting = configs.iter().filter(|c| c.model_counts).count() as u64;
    let pairs = counting * (PAIRS / 10 + rounds as u64 * sizes.len() as u64 * PAIRS);
    if allocs != frees || alloc_bytes != freed_bytes || allocs != pairs {
        eprintln!(
            "floor: the model's counts are wrong: {allocs} allocations, {frees} frees \
             ({alloc_bytes} and {freed_bytes} bytes), expected {pairs} pairs"
        );
        std::process::exit(1);
    }
    println!("\nThe model counted all {pairs} of its counting pairs (allocations = frees, bytes balance).");
}
