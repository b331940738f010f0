//! Exact mode (`Sampling::All`): allocations are attributed to the right
//! function names with exactly the right counts, and frees move the live
//! figures exactly.

use std::hint::black_box;

use heapwatch::{Callsite, Sampling, Tracker};

mod common;

#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> =
    Tracker::new(std::alloc::System).with_sampling(Sampling::All);

// Each box is one allocation of 48 bytes: the test counts them.
#[allow(clippy::vec_box)]
#[inline(never)]
fn make_small_buffers(out: &mut Vec<Box<[u8; 48]>>) {
    for _ in 0..300 {
        out.push(black_box(Box::new([0u8; 48])));
    }
}

#[inline(never)]
fn make_large_buffers() -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(7);
    for _ in 0..7 {
        out.push(black_box(vec![1u8; 10_000]));
    }
    out
}

fn site<'a>(snap: &'a heapwatch::Snapshot, function: &'a str) -> Vec<&'a Callsite> {
    common::callsites_at(snap, function).collect()
}

#[test]
fn exact_mode_attributes_to_the_right_functions() {
    let mut small = Vec::with_capacity(300);
    make_small_buffers(&mut small);
    let mut large = make_large_buffers();

    let snap = heapwatch::snapshot();
    assert_eq!(snap.mode, "all");
    // The builder's mode, applied at the first allocation, is not a switch
    // (no test in this process calls `set_sampling`).
    assert_eq!(snap.sampling_changes, 0);
    let s = site(&snap, "make_small_buffers");
    assert_eq!(s.len(), 1, "one callsite for the boxes: {s:#?}");
    assert_eq!((s[0].allocations, s[0].allocated_bytes), (300, 300 * 48));
    assert_eq!((s[0].live_blocks, s[0].live_bytes), (300, 300 * 48));
    assert!(!s[0].estimated);
    assert!(s[0].frames[0]
        .file
        .as_deref()
        .is_some_and(|f| f.ends_with("exact_callsites.rs")));

    let l: Vec<_> = site(&snap, "make_large_buffers")
        .into_iter()
        .filter(|c| c.allocated_bytes == 70_000)
        .collect();
    assert_eq!(l.len(), 1, "{:#?}", site(&snap, "make_large_buffers"));
    assert_eq!(
        (l[0].allocations, l[0].live_blocks, l[0].live_bytes),
        (7, 7, 70_000)
    );
    let large_id = l[0].id.clone();

    // Frees move the live figures exactly; cumulative figures stay.
    small.truncate(100);
    large.truncate(3);
    let after = heapwatch::snapshot();
    let s = site(&after, "make_small_buffers");
    assert_eq!(
        (
            s[0].allocations,
            s[0].frees,
            s[0].live_blocks,
            s[0].live_bytes
        ),
        (300, 200, 100, 4800)
    );
    let l = after.callsites.iter().find(|c| c.id == large_id).unwrap();
    assert_eq!(
        (l.allocations, l.frees, l.live_blocks, l.live_bytes),
        (7, 4, 3, 30_000)
    );

    // The diff subtracts cumulative figures and differences live ones.
    let d = after.diff(&snap);
    let dl = d.callsites.iter().find(|c| c.id == large_id).unwrap();
    assert_eq!(
        (dl.live_bytes_delta, dl.allocations, dl.frees),
        (-40_000, 0, 4)
    );

    // Round trip through JSON keeps everything.
    let back = heapwatch::Snapshot::from_json(&serde_json::to_string(&after).unwrap()).unwrap();
    assert_eq!(back, after);
    drop((small, large));
}

/// Grows one vector by reallocation, from 16 bytes to at least 100,000.
#[inline(never)]
fn grow_by_realloc() -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(16);
    for i in 0..100_000u32 {
        v.push(black_box(i as u8));
    }
    v
}

#[test]
fn reallocation_moves_the_sampled_block() {
    let v = grow_by_realloc();
    let snap = heapwatch::snapshot();
    let sites = site(&snap, "grow_by_realloc");
    assert!(!sites.is_empty());
    // Whatever line each step is attributed to, the function holds exactly
    // one live block now, of the vector's capacity: every reallocation
    // took the old block's record out and recorded the new one.
    let live_blocks: u64 = sites.iter().map(|c| c.live_blocks).sum();
    let live_bytes: u64 = sites.iter().map(|c| c.live_bytes).sum();
    assert_eq!(
        (live_blocks, live_bytes),
        (1, v.capacity() as u64),
        "{sites:#?}"
    );
    // Each growth is counted: an allocation, then reallocations, each
    // freeing the previous size.
    let allocated: u64 = sites.iter().map(|c| c.allocations).sum();
    let freed: u64 = sites.iter().map(|c| c.frees).sum();
    assert!(allocated >= 2 && freed == allocated - 1, "{sites:#?}");
    drop(v);
}

type Bufs = Vec<Vec<u8>>;
type Leaf = fn(usize, &mut Bufs);

/// Functions `f00` to `f39`, each making `n` buffers of its own size (8 to
/// 320 bytes) filled with `FILL`: 40 callsites, more than a thread's cache
/// of pending callsite figures holds, so figures move between the cache and
/// the shared counters while the tests run.
macro_rules! sized_allocs {
    ($($name:ident $size:literal)*) => {
        $(
            #[inline(never)]
            pub fn $name(n: usize, out: &mut super::Bufs) {
                for _ in 0..n {
                    out.push(std::hint::black_box(vec![FILL; $size]));
                }
            }
        )*
        /// Each function and its buffers' size.
        pub const ALL: [(super::Leaf, u64); 40] = [$(($name as super::Leaf, $size)),*];
    };
}

/// Two sets of the 40 functions, one per test (tests run side by side);
/// they differ in `FILL` so that they are not merged into one.
macro_rules! two_sets {
    ($($t:tt)*) => {
        mod kept {
            const FILL: u8 = 1;
            sized_allocs!($($t)*);
        }
        mod churn {
            const FILL: u8 = 2;
            sized_allocs!($($t)*);
        }
    };
}

two_sets!(
    f00 8 f01 16 f02 24 f03 32 f04 40 f05 48 f06 56 f07 64
    f08 72 f09 80 f10 88 f11 96 f12 104 f13 112 f14 120 f15 128
    f16 136 f17 144 f18 152 f19 160 f20 168 f21 176 f22 184 f23 192
    f24 200 f25 208 f26 216 f27 224 f28 232 f29 240 f30 248 f31 256
    f32 264 f33 272 f34 280 f35 288 f36 296 f37 304 f38 312 f39 320
);

/// `(allocations, frees, live blocks, live bytes)` of every callsite whose
/// innermost frame is a function of module `module`, sorted.
fn figures_of(snap: &heapwatch::Snapshot, module: &str) -> Vec<(u64, u64, u64, u64)> {
    let prefix = format!("exact_callsites::{module}::f");
    let mut v: Vec<_> = snap
        .callsites
        .iter()
        .filter(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.contains(&prefix))
        })
        .map(|c| (c.allocations, c.frees, c.live_blocks, c.live_bytes))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn many_callsites_from_a_thread_that_exited_are_counted_exactly() {
    // A thread of its own, joined before the snapshot: what it counted
    // stays counted after it exits. Function `k` makes `k + 1` buffers,
    // twice over, and frees the first round's.
    let kept = std::thread::spawn(|| {
        // Room for every buffer up front: no growth of `kept` is counted
        // at the callsites.
        let mut kept = Vec::with_capacity(41 * 20);
        for _round in 0..2 {
            kept.clear();
            for (k, (f, _)) in kept::ALL.iter().enumerate() {
                f(k + 1, &mut kept);
            }
        }
        kept
    })
    .join()
    .unwrap();
    let mut want: Vec<_> = (1..)
        .zip(kept::ALL)
        .map(|(n, (_, size))| (2 * n, n, n, n * size))
        .collect();
    want.sort_unstable();
    assert_eq!(
        figures_of(&heapwatch::snapshot(), "kept"),
        want,
        "(allocations, frees, live blocks, live bytes) of each callsite"
    );
    drop(kept);
}

#[test]
fn callsite_figures_stay_exact_while_threads_churn_and_others_read() {
    // Two threads allocate and free from 40 callsites (their figures move
    // between each thread's cache and the shared counters all the time)
    // while this one reads snapshots. Every reading's cumulative
    // allocations only grow, and once the threads are joined every
    // callsite holds exactly what was done there.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut done = [0u64; 40];
                let mut v = Vec::with_capacity(1);
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let k = i % churn::ALL.len();
                    if let (Some((f, _)), Some(d)) = (churn::ALL.get(k), done.get_mut(k)) {
                        f(1, &mut v);
                        *d += 1;
                    }
                    v.clear();
                    i += 7;
                }
                done
            })
        })
        .collect();
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut grew = 0;
    for _ in 0..30 {
        let snap = heapwatch::snapshot();
        for c in snap.callsites.iter().filter(|c| {
            c.frames
                .first()
                .is_some_and(|f| f.function.contains("::churn::f"))
        }) {
            let before = last.insert(c.id.clone(), c.allocations).unwrap_or(0);
            assert!(
                c.allocations >= before,
                "callsite {} went from {before} to {} allocations",
                c.id,
                c.allocations
            );
            grew += u64::from(c.allocations > before);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut done = [0u64; 40];
    for w in workers {
        for (d, n) in done.iter_mut().zip(w.join().unwrap()) {
            *d += n;
        }
    }
    assert!(grew > 80, "the workers barely ran: {grew} increases seen");
    let mut want: Vec<_> = done
        .iter()
        .zip(churn::ALL)
        .filter(|(&n, _)| n > 0)
        .map(|(&n, _)| (n, n, 0, 0))
        .collect();
    want.sort_unstable();
    assert_eq!(
        figures_of(&heapwatch::snapshot(), "churn"),
        want,
        "(allocations, frees, live blocks, live bytes) of each callsite"
    );
}

/// Makes `n` blocks of 40 bytes into `out`, which has room for them.
// Each box is one allocation: the test counts them.
#[allow(clippy::vec_box)]
#[inline(never)]
fn make_many_blocks(n: usize, out: &mut Vec<Box<[u8; 40]>>) {
    for _ in 0..n {
        out.push(black_box(Box::new([3u8; 40])));
    }
}

#[test]
fn many_live_blocks_are_tracked_exactly() {
    // 20,000 live blocks: more than the live-block table's near regions
    // hold (64 a stripe), so most go to the far regions, and frees find
    // them in either.
    let n = 20_000;
    let mut v = Vec::with_capacity(n);
    make_many_blocks(n, &mut v);
    let figures = |snap: &heapwatch::Snapshot| {
        let s = site(snap, "make_many_blocks");
        assert_eq!(s.len(), 1, "{s:#?}");
        (
            s[0].allocations,
            s[0].frees,
            s[0].live_blocks,
            s[0].live_bytes,
        )
    };
    let snap = heapwatch::snapshot();
    assert!(
        snap.tables.live_samples_used >= n as u64,
        "{:?}",
        snap.tables
    );
    assert_eq!(snap.unattributed.dropped_live_table_full, 0);
    assert_eq!(figures(&snap), (n as u64, 0, n as u64, 40 * n as u64));
    // Every other block, from the end.
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    let half = (n / 2) as u64;
    assert_eq!(
        figures(&heapwatch::snapshot()),
        (n as u64, half, half, 40 * half)
    );
    drop(v);
    assert_eq!(figures(&heapwatch::snapshot()), (n as u64, n as u64, 0, 0));
}

#[test]
fn a_truncated_snapshot_makes_no_callsite_new_or_gone() {
    let kept = black_box(vec![vec![1u8; 100], vec![2u8; 200]]);
    let full = heapwatch::snapshot();
    let n = full.callsites.len() as u64;
    assert!(n >= 3, "{n} callsites");
    let mut top1 = full.clone();
    top1.truncate_callsites(1);
    assert_eq!(top1.callsites_omitted, n - 1);

    // The same figures on both sides: what one side left out is not
    // compared, never shown as new or gone.
    for d in [full.diff(&top1), top1.diff(&full)] {
        assert_eq!(d.callsites.len(), 1);
        assert_eq!(d.callsites[0].change, heapwatch::Change::Both);
        assert_eq!(d.callsites[0].live_bytes_delta, 0);
        assert_eq!(d.callsites_not_compared, n - 1);
    }
    // Complete snapshots compare every callsite.
    assert_eq!(full.diff(&full).callsites_not_compared, 0);
    // The count survives a round trip through JSON.
    let back = heapwatch::Snapshot::from_json(&serde_json::to_string(&top1).unwrap()).unwrap();
    assert_eq!(back.callsites_omitted, n - 1);
    drop(kept);
}

/// An extension trait of the program's, implemented for a primitive and
/// for a standard library type: its methods are the program's code.
trait MakeBuf {
    fn make_buf(&self) -> Vec<u8>;
}

impl MakeBuf for u32 {
    #[inline(never)]
    fn make_buf(&self) -> Vec<u8> {
        black_box(vec![3u8; *self as usize])
    }
}

trait Remember {
    fn remember(&mut self, n: usize);
}

impl Remember for Vec<Box<[u8]>> {
    #[inline(never)]
    fn remember(&mut self, n: usize) {
        let block = black_box(vec![7u8; n].into_boxed_slice());
        self.push(block);
    }
}

#[test]
fn methods_of_the_programs_traits_on_std_types_are_its_frames() {
    let buf = black_box(23_456u32).make_buf();
    let mut kept: Vec<Box<[u8]>> = Vec::with_capacity(4);
    kept.remember(12_345);

    let snap = heapwatch::snapshot();
    let made: Vec<_> = site(&snap, "as exact_callsites::MakeBuf>::make_buf")
        .into_iter()
        .filter(|c| c.live_bytes == 23_456)
        .collect();
    assert_eq!(made.len(), 1, "{:#?}", snap.callsites);
    let remembered: Vec<_> = site(&snap, "as exact_callsites::Remember>::remember")
        .into_iter()
        .filter(|c| c.live_bytes == 12_345)
        .collect();
    assert_eq!(remembered.len(), 1, "{:#?}", snap.callsites);
    drop((buf, kept));
}
