//! Which allocations get a callsite: Poisson sampling by bytes, every
//! allocation, or none.
//!
//! In [`Sampling::Bytes`] mode each byte allocated is sampled with
//! probability `1/n`: every thread keeps a countdown of bytes, drawn from an
//! exponential distribution with mean `n`; the allocation that takes it
//! below zero is sampled and a new countdown is drawn. An allocation of `s`
//! bytes is therefore sampled with probability `1 - exp(-s/n)`, and is given
//! the weight `1 / (1 - exp(-s/n))` (kept with the block, subtracted again
//! when it is freed), which makes every per-callsite figure an unbiased
//! estimate. This is how Go's runtime and jemalloc's profiler sample.
//!
//! Weights are fixed-point numbers with [`WEIGHT_SHIFT`] fractional bits.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::*};

use serde::{Deserialize, Serialize};

use crate::counters::{self, Shard};

/// Fractional bits of a fixed-point weight.
pub(crate) const WEIGHT_SHIFT: u32 = 16;
/// The weight of an allocation recorded with certainty.
pub(crate) const ONE: u64 = 1 << WEIGHT_SHIFT;
const MAX_WEIGHT: u64 = 1 << 56;

/// How callsites are recorded. Totals are exact in every mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "interval_bytes")]
pub enum Sampling {
    /// Totals only, no callsites.
    Off,
    /// Poisson sampling with a mean interval of this many bytes (the
    /// default: 512 KiB, as Go and jemalloc use). Per-callsite figures are
    /// unbiased estimates. `Bytes(0)` is taken as `Bytes(1)`, and reported
    /// so by [`sampling`].
    Bytes(u64),
    /// Every allocation: exact per-callsite figures, at the cost of a stack
    /// capture per allocation. For tests and short investigations.
    All,
}

impl Sampling {
    /// `Bytes(512 KiB)`.
    pub const DEFAULT: Sampling = Sampling::Bytes(512 * 1024);

    /// The name used in snapshots: `"off"`, `"bytes"` or `"all"`.
    pub fn name(self) -> &'static str {
        match self {
            Sampling::Off => "off",
            Sampling::Bytes(_) => "bytes",
            Sampling::All => "all",
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::DEFAULT
    }
}

const MODE_OFF: u8 = 0;
const MODE_BYTES: u8 = 1;
const MODE_ALL: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(MODE_BYTES);
static INTERVAL: AtomicU64 = AtomicU64::new(512 * 1024);
static SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
/// Bumped by `set_sampling_seed` and `set_sampling`; a shard whose `rng`
/// generation differs reseeds on its next slow path.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Switches the sampling mode at run time. Blocks already sampled keep their
/// records (and weights) until they are freed; blocks allocated while
/// sampling was [`Sampling::Off`] are in no callsite, so after switching it
/// on a callsite's figures climb while the program replaces them. Diffs
/// and leak reports across a switch say so (`sampling_changed`; each
/// snapshot counts the switches in `sampling_changes`).
///
/// The switch holds at once for the calling thread and for every thread
/// that is not allocating at that instant. A thread in the middle of an
/// allocation may miss it and switch at its next sampling decision
/// instead: after at most 64 KiB of its allocations when leaving `Off`, or
/// at its next sample in `Bytes` mode (the hook reads the mode only then,
/// which keeps it off the hot path). Set the mode before starting threads
/// whose allocations must all be counted the new way.
///
/// # Example
///
/// ```
/// use heapwatch::Sampling;
///
/// heapwatch::set_sampling(Sampling::All);
/// assert_eq!(heapwatch::sampling(), Sampling::All);
/// heapwatch::set_sampling(Sampling::DEFAULT);
/// ```
pub fn set_sampling(sampling: Sampling) {
    EXPLICIT.store(true, Relaxed);
    store_sampling(sampling, true);
}

/// Settings made with [`set_sampling`] win over the tracker's builder, even
/// when made before its first allocation applies it.
static EXPLICIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether every allocation is sampled now (`Sampling::All`).
pub(crate) fn is_exact() -> bool {
    MODE.load(Relaxed) == MODE_ALL
}

/// Applies the tracker builder's mode unless one was set at run time. Not
/// a switch ([`mode_changes`]): it happens at the program's first
/// allocation, before anything was sampled.
pub(crate) fn configure(sampling: Sampling) {
    if !EXPLICIT.load(Relaxed) {
        store_sampling(sampling, false);
    }
}

/// Times the mode (or its interval) changed, in this process.
static MODE_CHANGES: AtomicU64 = AtomicU64::new(0);

/// How many times the sampling mode (or its interval) has changed in this
/// process: snapshots with different counts straddle a switch.
pub(crate) fn mode_changes() -> u64 {
    MODE_CHANGES.load(Relaxed)
}

/// Puts `sampling` in force; a change of mode or interval counts as a
/// switch if `switch`.
fn store_sampling(sampling: Sampling, switch: bool) {
    if sampling != Sampling::Off {
        prefault_once();
    }
    let stored = match sampling {
        Sampling::Bytes(n) => Sampling::Bytes(n.max(1)),
        other => other,
    };
    if switch && stored != self::sampling() {
        MODE_CHANGES.fetch_add(1, Relaxed);
    }
    match stored {
        Sampling::Off => MODE.store(MODE_OFF, Relaxed),
        Sampling::All => MODE.store(MODE_ALL, Relaxed),
        Sampling::Bytes(n) => {
            INTERVAL.store(n, Relaxed);
            MODE.store(MODE_BYTES, Relaxed);
        }
    }
    GENERATION.fetch_add(1, Relaxed);
    // Every shard decides its next allocation on the slow path, which reads
    // the new mode. The calling thread's own reset always holds; a thread
    // allocating at this moment may overwrite its reset and switch at its
    // next sampling decision instead (see `set_sampling`).
    for shard in counters::all_shards() {
        shard.countdown.store(0, Relaxed);
    }
}

/// Before the first mode that samples takes effect: writes to every page of
/// the free filter and the CFI rule cache, once, so that none of them is
/// first mapped by a read (`callsites::touch_pages` says why). Allocation-
/// free: it runs in the hook when the tracker's builder asks for sampling.
fn prefault_once() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !DONE.swap(true, Relaxed) {
        crate::callsites::prefault_filter();
        crate::capture::prefault();
    }
}

/// The sampling mode in force.
pub fn sampling() -> Sampling {
    match MODE.load(Relaxed) {
        MODE_OFF => Sampling::Off,
        MODE_ALL => Sampling::All,
        _ => Sampling::Bytes(INTERVAL.load(Relaxed)),
    }
}

/// Seeds the samplers, for reproducible sampled runs: after this call, each
/// counter shard samples from a sequence that depends only on `seed` and on
/// the shard's position. A thread leases the lowest free shard when it
/// first allocates, and a thread that takes over a shard another has
/// returned carries on that shard's sequence. So a program allocating the
/// same sequence of sizes samples the same allocations on every run when
/// its threads start and end in the same order (the main thread alone, or
/// threads each joined before the next starts); threads that start and end
/// concurrently may take other shards from run to run. The calling thread
/// reseeds at its next allocation; other threads reseed at their next
/// sample.
///
/// # Example
///
/// ```
/// heapwatch::set_sampling_seed(42); // e.g. at the start of an accuracy test
/// heapwatch::set_sampling(heapwatch::Sampling::Bytes(64 * 1024));
/// ```
pub fn set_sampling_seed(seed: u64) {
    SEED.store(seed, Relaxed);
    SEEDED.store(true, Relaxed);
    GENERATION.fetch_add(1, Relaxed);
    // Without this, the calling thread would reseed only once its old
    // countdown ran out, at a point that depends on the old random state.
    if let Some(shard) = counters::own() {
        shard.countdown.store(0, Relaxed);
    }
}

/// Set by `set_sampling_seed`: from then on seeds ignore shard addresses.
static SEEDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Decides whether an allocation of `size` bytes is sampled; returns its
/// fixed-point weight if so. Allocation-free and panic-free.
///
/// The fast path is the countdown alone, in every mode: `Bytes` counts down
/// to the next sample; `Off` counts down `OFF_RECHECK` bytes between looks
/// at the mode; `All` keeps it at zero so every allocation takes the slow
/// path. Only the slow path reads the mode.
#[inline(always)]
pub(crate) fn should_sample(shard: &Shard, size: usize) -> Option<u64> {
    if countdown_left(shard, size) {
        None
    } else {
        sample_slow(shard, size)
    }
}

/// The countdown part of [`should_sample`]: takes `size` off the calling
/// thread's countdown; true while it has not run out (no sample), false
/// when the slow path must decide (`sample_slow`).
#[inline(always)]
pub(crate) fn countdown_left(shard: &Shard, size: usize) -> bool {
    let left = shard.countdown.load(Relaxed).wrapping_sub(size as i64);
    shard.countdown.store(left, Relaxed);
    left >= 0
}

/// Bytes a thread allocates in `Off` mode between two looks at the mode, so
/// that a switch made by another thread reaches it (`set_sampling` also
/// resets every countdown, but a thread allocating at that moment can
/// overwrite the reset).
const OFF_RECHECK: i64 = 64 * 1024;

/// Starts the sampler of a shard a thread has just leased: a countdown
/// drawn afresh from the shard's random stream. A countdown left at 0
/// would sample the new owner's first allocation for certain and still
/// weight it as a draw: about one interval of phantom bytes for every
/// thread that takes over a shard another thread used (thread pools that
/// replace their threads). Allocation-free.
pub(crate) fn start_lease(shard: &Shard) {
    if MODE.load(Relaxed) != MODE_BYTES {
        // `sample_slow` sets what `Off` and `All` need.
        shard.countdown.store(0, Relaxed);
        return;
    }
    let (next, u) = next_uniform(stream(shard).0);
    shard.rng.store(next, Relaxed);
    shard
        .countdown
        .store(exp_draw(u, INTERVAL.load(Relaxed).max(1)), Relaxed);
}

/// The shard's random state, and whether it is fresh: seeded now because
/// the shard never sampled, or the seed or mode changed since it last did.
fn stream(shard: &Shard) -> (u64, bool) {
    let generation = GENERATION.load(Relaxed);
    let rng = shard.rng.load(Relaxed);
    if rng == 0 || shard.rng_generation.load(Relaxed) != generation {
        shard.rng_generation.store(generation, Relaxed);
        (seed_for(shard), true)
    } else {
        (rng, false)
    }
}

/// The decision [`should_sample`] makes once the countdown has run out.
#[cold]
#[inline(never)]
pub(crate) fn sample_slow(shard: &Shard, size: usize) -> Option<u64> {
    match MODE.load(Relaxed) {
        MODE_OFF => {
            shard.countdown.store(OFF_RECHECK, Relaxed);
            return None;
        }
        MODE_ALL => {
            shard.countdown.store(0, Relaxed);
            return Some(ONE);
        }
        _ => {}
    }
    let interval = INTERVAL.load(Relaxed).max(1);
    let (mut rng, fresh) = stream(shard);
    if fresh {
        // A fresh (or reseeded) sampler: draw its first countdown and test
        // this allocation against it, so the first allocation of a thread
        // is sampled with the same probability as any other.
        let (next, u) = next_uniform(rng);
        rng = next;
        let countdown = exp_draw(u, interval) - size as i64;
        shard.countdown.store(countdown, Relaxed);
        shard.rng.store(rng, Relaxed);
        if countdown >= 0 {
            return None;
        }
    }
    let (next, u) = next_uniform(rng);
    shard.rng.store(next, Relaxed);
    shard.countdown.store(exp_draw(u, interval), Relaxed);
    Some(weight(size as u64, interval))
}

/// `1 / (1 - exp(-size/interval))` in fixed point.
pub(crate) fn weight(size: u64, interval: u64) -> u64 {
    let p = -(-(size as f64) / interval as f64).exp_m1();
    if p <= 0.0 {
        return MAX_WEIGHT;
    }
    let w = (ONE as f64 / p).round();
    if w >= MAX_WEIGHT as f64 {
        MAX_WEIGHT
    } else {
        (w as u64).max(ONE)
    }
}

/// The bytes an allocation of `size` with weight `w` stands for.
#[inline]
pub(crate) fn weighted_bytes(size: u64, w: u64) -> u64 {
    ((u128::from(size) * u128::from(w) + (1 << (WEIGHT_SHIFT - 1))) >> WEIGHT_SHIFT) as u64
}

/// A fixed-point count rounded to a whole number.
#[inline]
pub(crate) fn weighted_count(w: u64) -> u64 {
    (w + (1 << (WEIGHT_SHIFT - 1))) >> WEIGHT_SHIFT
}

/// A shard's seed: from the seed and the shard's position once seeded
/// explicitly (reproducible), else also from its address (which ASLR varies
/// between runs, so unseeded processes sample differently).
fn seed_for(shard: &Shard) -> u64 {
    let mut s = SEED.load(Relaxed) ^ (counters::index_of(shard) as u64).rotate_left(32);
    if !SEEDED.load(Relaxed) {
        s ^= (shard as *const Shard as u64).rotate_left(17);
    }
    splitmix(splitmix(s)) | 1
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64*; returns the new state and a uniform number in (0, 1].
fn next_uniform(mut x: u64) -> (u64, f64) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let u = ((r >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    (x, u)
}

/// An exponential draw with mean `interval`, from a uniform `u` in (0, 1].
fn exp_draw(u: f64, interval: u64) -> i64 {
    let d = -u.ln() * interval as f64;
    if d >= i64::MAX as f64 {
        i64::MAX
    } else {
        d as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_inverse_probabilities() {
        let n = 512 * 1024;
        // Large blocks are (almost) certainly sampled: weight ~1.
        assert_eq!(weighted_count(weight(64 << 20, n)), 1);
        // p(16 B) = 1 - exp(-16/524288) ~ 16/524288: weight ~32768.
        let w = weight(16, n) as f64 / ONE as f64;
        assert!((w - 32768.5).abs() < 1.0, "{w}");
        // weighted bytes of a sampled block stand for ~ the interval.
        let b = weighted_bytes(16, weight(16, n));
        assert!((b as i64 - n as i64).abs() < 32, "{b}");
    }

    #[test]
    fn exponential_draws_have_the_right_mean() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let n = 200_000;
        let mut sum = 0f64;
        for _ in 0..n {
            let (nx, u) = next_uniform(x);
            x = nx;
            assert!(u > 0.0 && u <= 1.0);
            sum += exp_draw(u, 1000) as f64;
        }
        let mean = sum / n as f64;
        assert!((mean - 1000.0).abs() < 15.0, "mean {mean}");
    }
}
