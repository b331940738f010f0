//! Sampled mode: on a workload allocating over 1 GiB across three callsites
//! with known shares, each callsite's estimated allocated and live bytes
//! land within ±10% of the truth. Seeded, so the run is reproducible.

use std::hint::black_box;

use heapwatch::{Sampling, Tracker};

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System);

const INTERVAL: u64 = 512 * 1024;

#[inline(never)]
fn site_a(keep: &mut Vec<Vec<u8>>, i: usize) {
    let v = black_box(Vec::<u8>::with_capacity(256 + (i % 64) * 16));
    if i % 2 == 0 {
        keep.push(v);
    }
}

#[inline(never)]
fn site_b(keep: &mut Vec<Vec<u8>>, i: usize) {
    let v = black_box(Vec::<u8>::with_capacity(4096 + (i % 8) * 512));
    if i % 4 == 0 {
        keep.push(v);
    }
}

#[inline(never)]
fn site_c(keep: &mut Vec<Vec<u8>>, i: usize) {
    let v = black_box(Vec::<u8>::with_capacity(64 * 1024));
    if i % 10 == 0 {
        keep.push(v);
    }
}

#[test]
fn sampled_estimates_are_within_ten_percent() {
    heapwatch::set_sampling_seed(42);
    heapwatch::set_sampling(Sampling::Bytes(INTERVAL));
    let mut keep_a = Vec::new();
    let mut keep_b = Vec::new();
    let mut keep_c = Vec::new();
    let (mut true_a, mut true_b, mut true_c) = (0u64, 0u64, 0u64);
    let (mut live_a, mut live_b, mut live_c) = (0u64, 0u64, 0u64);
    // ~40% / 35% / 25% of 1.2 GiB.
    let mut i = 0usize;
    while true_a + true_b + true_c < 1_200 << 20 {
        for _ in 0..8 {
            let size = (256 + (i % 64) * 16) as u64;
            site_a(&mut keep_a, i);
            true_a += size;
            if i % 2 == 0 {
                live_a += size;
            }
            i += 1;
        }
        let size = (4096 + (i % 8) * 512) as u64;
        site_b(&mut keep_b, i);
        true_b += size;
        if i % 4 == 0 {
            live_b += size;
        }
        if i % 32 == 0 {
            site_c(&mut keep_c, i);
            true_c += 64 * 1024;
            if i % 10 == 0 {
                live_c += 64 * 1024;
            }
        }
        i += 1;
    }
    let snap = heapwatch::snapshot();
    assert_eq!(snap.mode, "bytes");
    assert_eq!(snap.sample_interval_bytes, Some(INTERVAL));
    let find = |name: &str| {
        let rows: Vec<_> = snap
            .callsites
            .iter()
            .filter(|c| c.frames.first().is_some_and(|f| f.function.ends_with(name)))
            .collect();
        assert!(rows.iter().all(|c| c.estimated));
        (
            rows.iter().map(|c| c.allocated_bytes).sum::<u64>(),
            rows.iter().map(|c| c.live_bytes).sum::<u64>(),
        )
    };
    for (name, truth, live) in [
        ("site_a", true_a, live_a),
        ("site_b", true_b, live_b),
        ("site_c", true_c, live_c),
    ] {
        let (est, est_live) = find(name);
        let err = (est as f64 - truth as f64).abs() / truth as f64;
        assert!(
            err <= 0.10,
            "{name}: estimated {est} allocated vs {truth} true ({:.1}%)",
            err * 100.0
        );
        let err = (est_live as f64 - live as f64).abs() / live as f64;
        assert!(
            err <= 0.10,
            "{name}: estimated {est_live} live vs {live} true ({:.1}%)",
            err * 100.0
        );
    }
    // The totals stay exact in sampled mode.
    assert!(snap.totals.allocated_bytes >= true_a + true_b + true_c);
    drop((keep_a, keep_b, keep_c));
}
