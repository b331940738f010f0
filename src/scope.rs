//! Leak-test helpers that work while other tests run in parallel.
//!
//! Each thread owns its counter shard while it lives (see the counters
//! module), so the difference of the current thread's shard before and after
//! a closure is exactly what *this thread* allocated and freed inside it,
//! whatever other threads do meanwhile. One global allocator, many
//! concurrent leak tests.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

use crate::counters::{self, Sums};
use crate::diff::CallsiteDelta;
use crate::guard::Own;

/// What the current thread allocated and freed inside [`scope`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScopeStats {
    /// Allocations made.
    pub allocations: u64,
    /// Frees made (of any block, wherever it was allocated).
    pub frees: u64,
    /// Reallocations made.
    pub reallocs: u64,
    /// Bytes allocated (reallocations count their new size).
    pub allocated_bytes: u64,
    /// Bytes freed (reallocations count their old size).
    pub freed_bytes: u64,
    /// `allocated_bytes - freed_bytes`: what the closure left live, as far
    /// as this thread can tell (a block it handed to another thread, which
    /// freed it there, counts as left live).
    pub net_live_bytes: i64,
    /// `allocations - frees`.
    pub net_live_blocks: i64,
    /// False if this thread shares the fallback shard with others (more
    /// than [`SHARDS`](crate::SHARDS) threads alive), so other threads'
    /// allocations may be mixed in; and false, with every figure 0, if no
    /// [`Tracker`](crate::Tracker) is the program's global allocator
    /// ([`installed`](crate::installed) is false when `f` returns): a test
    /// crate without the `#[global_allocator]` item measures nothing.
    pub exact: bool,
}

/// Runs `f` and returns its result with what the current thread allocated
/// and freed inside it. Correct while other threads allocate (their work is
/// not counted), so leak tests can run in parallel. Panics in `f` propagate
/// and leave heapwatch usable.
///
/// Only this thread's frees are counted: a block `f` allocates and hands
/// to another thread, which frees it there (a spawned and joined thread
/// dropping what it was given, a channel to a worker), counts as left
/// live. Measure such code from the thread that frees, or compare
/// process-wide [`snapshot`](crate::snapshot)s with other threads
/// quiet.
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() {
///     let (len, s) = heapwatch::scope(|| {
///         let v = vec![7u8; 100];
///         v.len()
///     });
///     assert_eq!(len, 100);
///     assert_eq!(s.allocations, 1);
///     assert_eq!(s.frees, 1);
///     assert_eq!(s.net_live_bytes, 0);
///
///     let (kept, s) = heapwatch::scope(|| vec![0u64; 16]);
///     assert_eq!(s.net_live_bytes, 128);
///     drop(kept);
/// }
/// ```
pub fn scope<R>(f: impl FnOnce() -> R) -> (R, ScopeStats) {
    let shard = counters::current();
    let before = Sums::of(shard);
    let r = f();
    let d = Sums::of(shard).since(before);
    let stats = ScopeStats {
        allocations: d.allocs,
        frees: d.frees,
        reallocs: d.reallocs,
        allocated_bytes: d.alloc_bytes,
        freed_bytes: d.freed_bytes,
        net_live_bytes: d.alloc_bytes.wrapping_sub(d.freed_bytes) as i64,
        net_live_blocks: d.allocs.wrapping_sub(d.frees) as i64,
        // Read after `f`: a program whose first allocation is in `f` has
        // its tracker set up by then.
        exact: shard.is_exclusive() && crate::installed(),
    };
    (r, stats)
}

/// Runs a closure repeatedly and decides whether live memory keeps growing.
///
/// After `warmup` runs (caches fill, pools grow), it runs `iterations` more,
/// each inside [`scope`], and calls it a leak when the current thread's
/// live bytes grew by more than `tolerance_bytes` in total *and* grew in at
/// least half of the iterations (a cache that fills once is not a leak; a
/// little every time is; a `Vec` that gains one element per run grows only
/// at its reallocations, a few runs out of many, and is not called one).
/// As with [`scope`], blocks handed to another thread that frees them
/// count as growth. The report names the callsites whose live bytes
/// grew most (from snapshots before and after; use
/// [`Sampling::All`](crate::Sampling::All) for exact names of small leaks).
///
/// The verdict is this thread's alone, but callsite figures are
/// process-wide, so the report sorts the growing callsites in two lists:
/// [`top_growing`](GrowthReport::top_growing), those with the closure
/// itself among their frames, called from the check, and
/// [`elsewhere_growing`](GrowthReport::elsewhere_growing), the rest (other
/// threads, such as tests running in parallel). A closure is known by its
/// type's name, which is the function it is written in plus `{{closure}}`,
/// and by a frame of the check below it (which tells it from a thread the
/// same function spawned). So a closure checked by two threads of one test
/// at once lands in both threads' first lists; a callsite whose captured
/// stack stops short of the check's frames lands in the second; and a
/// function pointer or a `dyn FnMut` (whose type names no function) names
/// nothing in the first list: pass the closure or function itself (or a
/// `Box` of it).
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() {
///     let mut cache = Vec::new();
///     let leaky = heapwatch::GrowthCheck::new().run(|| cache.push(vec![0u8; 4096]));
///     assert!(leaky.is_err());
///
///     let clean = heapwatch::GrowthCheck::new().run(|| drop(vec![0u8; 4096]));
///     assert!(clean.is_ok());
/// }
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct GrowthCheck {
    warmup: usize,
    iterations: usize,
    tolerance_bytes: u64,
    top: usize,
}

impl Default for GrowthCheck {
    fn default() -> Self {
        GrowthCheck::new()
    }
}

/// The outcome of a [`GrowthCheck`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GrowthReport {
    /// Iterations measured (after the warm-up).
    pub iterations: usize,
    /// Iterations after which this thread's live bytes were higher.
    pub growing_iterations: usize,
    /// Net live bytes the measured iterations left behind.
    pub total_growth_bytes: i64,
    /// Net live bytes per measured iteration.
    pub per_iteration_bytes: Vec<i64>,
    /// Callsites reached from the checked closure (a frame of their stack
    /// is the closure's) whose live bytes grew most over the measured
    /// iterations.
    pub top_growing: Vec<CallsiteDelta>,
    /// Callsites that grew most elsewhere in the process meanwhile: on
    /// other threads (a test running in parallel), or under the closure
    /// but deeper than the captured stack reaches. Callsite figures are
    /// process-wide; only the verdict is this thread's.
    #[serde(default)]
    pub elsewhere_growing: Vec<CallsiteDelta>,
    /// Whether callsites were sampled by bytes while the check ran (their
    /// figures are estimates, and a small leak may have no sample).
    #[serde(default)]
    pub sampled: bool,
    /// Whether callsite recording was off (`Sampling::Off`) when the check
    /// ended: no callsite can be named then.
    #[serde(default)]
    pub sampling_off: bool,
    /// Whether the checked callable's type names a function that frames
    /// can show (false for a function pointer or a `dyn FnMut`, whose
    /// callsites then all land in `elsewhere_growing`).
    #[serde(default = "yes")]
    pub nameable: bool,
}

fn yes() -> bool {
    true
}

/// A closure whose live memory keeps growing, from [`GrowthCheck::run`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}", .0.describe())]
pub struct Leak(pub GrowthReport);

impl GrowthReport {
    /// Whether the growing stacks have frames but none with a file: the
    /// binary has no debug information (symbol names only).
    fn without_debug_info(&self) -> bool {
        let mut frames = self
            .top_growing
            .iter()
            .chain(&self.elsewhere_growing)
            .flat_map(|c| c.frames.iter())
            .peekable();
        frames.peek().is_some() && frames.all(|f| f.file.is_none())
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "live memory kept growing: +{} bytes over {} iterations ({} of them grew)",
            self.total_growth_bytes, self.iterations, self.growing_iterations
        );
        if self.top_growing.is_empty() && !self.nameable {
            s.push_str(
                "; a function pointer or dyn FnMut names no callsite: pass the closure itself",
            );
        } else if self.top_growing.is_empty() && self.sampling_off {
            s.push_str(
                "; callsites are not recorded under Sampling::Off \
                 (set Sampling::All to have the growing ones named)",
            );
        } else if self.top_growing.is_empty() && self.without_debug_info() {
            s.push_str(
                "; no growing callsite under the closure was recorded, and the frames have \
                 no file or line: without debug info a closure inlined into its caller has \
                 no frame to match (build the tests with debug = 1 in their profile, \
                 `[profile.release]` for `cargo test --release`)",
            );
        } else if self.top_growing.is_empty() {
            s.push_str(if self.sampled {
                "; no growing callsite under the closure was sampled (try Sampling::All)"
            } else {
                "; no growing callsite under the closure was recorded (stacks deeper \
                 than the capture depth?)"
            });
        }
        let list = |s: &mut String, sites: &[CallsiteDelta]| {
            for c in sites {
                let at = c
                    .frames
                    .first()
                    .map_or("<unknown>", |f| f.function.as_str());
                s.push_str(&format!("\n  +{} bytes at {at}", c.live_bytes_delta));
                if let Some(f) = c.frames.first() {
                    if let (Some(file), Some(line)) = (&f.file, f.line) {
                        s.push_str(&format!(" ({file}:{line})"));
                    }
                }
            }
        };
        list(&mut s, &self.top_growing);
        if !self.elsewhere_growing.is_empty() {
            s.push_str(
                "\ngrown elsewhere in the process meanwhile (other threads, or \
                 stacks deeper than the capture):",
            );
            list(&mut s, &self.elsewhere_growing);
        }
        s
    }
}

/// Whether a stack is the checked closure's: one of its frames is
/// `closure` and a frame of the check (`heapwatch::scope::…`) lies below
/// it. A thread spawned from the same function runs a closure of the same
/// name, but from the thread's entry, not from the check.
fn under_check(frames: &[crate::Frame], closure: &str) -> bool {
    frames
        .iter()
        .position(|f| is_function(&f.function, closure))
        .is_some_and(|i| {
            frames.iter().skip(i + 1).any(|f| {
                f.function
                    .trim_start_matches('<')
                    .starts_with("heapwatch::scope::")
            })
        })
}

/// The callable a `std::any::type_name` names, references and boxes taken
/// off: `run(&mut f)` and `run(Box::new(f))` check `f`.
fn referent(mut type_name: &str) -> &str {
    while let Some(rest) = type_name
        .strip_prefix("&mut ")
        .or_else(|| type_name.strip_prefix('&'))
        .or_else(|| {
            type_name
                .strip_prefix("alloc::boxed::Box<")
                .and_then(|r| r.strip_suffix('>'))
                .map(|r| r.strip_suffix(", alloc::alloc::Global").unwrap_or(r))
        })
    {
        type_name = rest;
    }
    type_name
}

/// Whether a checked callable's type name (its [`referent`]) names a
/// function its frames can show (not a function pointer, not a trait
/// object).
fn nameable(closure: &str) -> bool {
    !(closure.starts_with("fn(") || closure.contains("dyn "))
}

/// Whether a symbolized frame's function is `closure`, a type name from
/// `std::any::type_name` taken to its [`referent`] (generic arguments
/// aside, which symbol names may leave out). A closure is `{{closure}}` in
/// a type name and in legacy symbol names, `{closure#N}` in v0 ones
/// (`-C symbol-mangling-version=v0`, the default of recent nightlies): the
/// two are the same here.
fn is_function(frame_function: &str, closure: &str) -> bool {
    fn normalized(s: &str) -> String {
        let mut depth = 0usize;
        let plain: String = s
            .chars()
            .filter(|&c| {
                match c {
                    '<' => depth += 1,
                    '>' => depth = depth.saturating_sub(1),
                    _ => return depth == 0,
                }
                false
            })
            .collect();
        let mut out = String::with_capacity(plain.len());
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("{closure#") {
            let tail = &rest[i + "{closure#".len()..];
            let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && tail[digits..].starts_with('}') {
                out.push_str(&rest[..i]);
                out.push_str("{{closure}}");
                rest = &tail[digits + 1..];
            } else {
                out.push_str(&rest[..i + 1]);
                rest = &rest[i + 1..];
            }
        }
        out.push_str(rest);
        // A v0 name's turbofish (`run::<u8>::{closure#0}`) leaves `::::`
        // where a type name (`run<u8>::{{closure}}`) leaves `::`.
        out.replace("::::", "::")
    }
    frame_function == closure || normalized(frame_function) == normalized(closure)
}

impl GrowthCheck {
    /// 3 warm-up runs, 20 measured, no tolerance, 5 callsites reported.
    pub const fn new() -> GrowthCheck {
        GrowthCheck {
            warmup: 3,
            iterations: 20,
            tolerance_bytes: 0,
            top: 5,
        }
    }

    /// Runs before measuring.
    pub const fn warmup(mut self, n: usize) -> GrowthCheck {
        self.warmup = n;
        self
    }

    /// Runs measured (at least 2).
    pub const fn iterations(mut self, n: usize) -> GrowthCheck {
        self.iterations = if n < 2 { 2 } else { n };
        self
    }

    /// Total growth allowed before it counts as a leak.
    pub const fn tolerance_bytes(mut self, bytes: u64) -> GrowthCheck {
        self.tolerance_bytes = bytes;
        self
    }

    /// How many growing callsites the report names.
    pub const fn top(mut self, n: usize) -> GrowthCheck {
        self.top = n;
        self
    }

    /// Runs `f` `warmup + iterations` times on this thread.
    ///
    /// # Errors
    ///
    /// [`Leak`] with the report when live memory keeps growing. A panic in
    /// `f` propagates (heapwatch stays usable).
    ///
    /// # Panics
    ///
    /// If no [`Tracker`](crate::Tracker) is the program's global allocator
    /// ([`installed`](crate::installed) is false after the warm-up): each
    /// integration test file is a crate of its own and needs its own
    /// `#[global_allocator]` item, and without one nothing is measured, so
    /// any closure would pass.
    pub fn run<F: FnMut()>(&self, mut f: F) -> Result<GrowthReport, Leak> {
        // Warm-up and measured runs make one call from one place, so that
        // they allocate under the same frames: a block a warm-up run
        // allocates and a measured one frees is one callsite in the diff.
        // The two snapshots are heapwatch's own (built and dropped under
        // the guard, also when a panic in `f` unwinds past them): held by
        // the program, `base` was itself growth at the caller's callsite
        // when `now` was taken. `per` is allocated before `base`, so that
        // it is not growth either.
        let mut per = Vec::with_capacity(self.iterations);
        let mut base = None;
        let warmup = self.warmup.min(usize::MAX - self.iterations);
        for i in 0..warmup + self.iterations {
            if i == warmup {
                assert!(
                    crate::installed(),
                    "heapwatch::GrowthCheck: no heapwatch::Tracker is this program's global \
                     allocator, so nothing can be measured; add `#[global_allocator] static \
                     GLOBAL: heapwatch::Tracker<std::alloc::System> = \
                     heapwatch::Tracker::new(std::alloc::System);` to this crate (each file \
                     in tests/ is a crate of its own)"
                );
                base = Some(Own::build(crate::snapshot::snapshot));
            }
            let s = once(&mut f);
            if i >= warmup {
                per.push(s.net_live_bytes);
            }
        }
        // Always set: at least 2 iterations are measured.
        let base = base.unwrap_or_else(|| Own::build(crate::snapshot::snapshot));
        let now = Own::build(crate::snapshot::snapshot);
        let total: i64 = per.iter().sum();
        let growing = per.iter().filter(|&&b| b > 0).count();
        // The diff is process-wide: tell the callsites under `f` (one of
        // their frames is `f` itself) from those of other threads.
        let closure = referent(std::any::type_name::<F>());
        let (mut top_growing, mut elsewhere_growing): (Vec<_>, Vec<_>) = now
            .diff(&base)
            .callsites
            .into_iter()
            .filter(|c| c.live_bytes_delta > 0)
            .partition(|c| under_check(&c.frames, closure));
        top_growing.truncate(self.top);
        elsewhere_growing.truncate(self.top);
        let sampled = now.sample_interval_bytes.is_some();
        let sampling_off = now.mode == "off";
        drop((base, now));
        let report = GrowthReport {
            sampled,
            sampling_off,
            nameable: nameable(closure),
            iterations: self.iterations,
            growing_iterations: growing,
            total_growth_bytes: total,
            per_iteration_bytes: per,
            top_growing,
            elsewhere_growing,
        };
        let leaking =
            total > 0 && total as u64 > self.tolerance_bytes && growing * 2 >= self.iterations;
        if leaking {
            Err(Leak(report))
        } else {
            Ok(report)
        }
    }
}

/// One run of a checked closure, inside [`scope`]. Out of line, so that
/// every run of one check, warm-up or measured, allocates under the same
/// frames.
#[inline(never)]
fn once<F: FnMut()>(f: &mut F) -> ScopeStats {
    let ((), s) = scope(|| {
        if let Err(p) = catch_unwind(AssertUnwindSafe(&mut *f)) {
            resume_unwind(p);
        }
    });
    s
}

/// Panics, naming the top growing callsites, if `f` keeps growing live
/// memory over 20 iterations after 3 warm-up runs (see [`GrowthCheck`]).
///
/// # Panics
///
/// When [`GrowthCheck::run`] reports a [`Leak`], or panics itself (no
/// [`Tracker`](crate::Tracker) is the global allocator).
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() {
///     // A function that frees what it allocates passes.
///     heapwatch::assert_no_growth(|| {
///         let words: Vec<String> = "a b c".split(' ').map(String::from).collect();
///         assert_eq!(words.len(), 3);
///     });
/// }
/// ```
pub fn assert_no_growth(f: impl FnMut()) {
    if let Err(leak) = GrowthCheck::new().run(f) {
        panic!("heapwatch: {leak}");
    }
}

#[cfg(test)]
mod tests {
    use super::{is_function, nameable, referent, GrowthReport, Leak};

    #[test]
    fn a_boxed_or_borrowed_closure_is_checked_as_the_closure() {
        let c = "app::test::{{closure}}";
        for ty in [
            "app::test::{{closure}}",
            "&mut app::test::{{closure}}",
            "alloc::boxed::Box<app::test::{{closure}}>",
            "&mut alloc::boxed::Box<app::test::{{closure}}>",
            "alloc::boxed::Box<app::test::{{closure}}, alloc::alloc::Global>",
        ] {
            assert_eq!(referent(ty), c, "{ty}");
            assert!(nameable(referent(ty)), "{ty}");
        }
        let boxed_dyn = referent("alloc::boxed::Box<dyn core::ops::function::FnMut()>");
        assert!(!nameable(boxed_dyn), "{boxed_dyn}");
    }

    #[test]
    fn a_leak_found_with_sampling_off_says_why_no_callsite_is_named() {
        let report = |sampled, sampling_off| GrowthReport {
            iterations: 10,
            growing_iterations: 10,
            total_growth_bytes: 640,
            per_iteration_bytes: vec![64; 10],
            top_growing: Vec::new(),
            elsewhere_growing: Vec::new(),
            sampled,
            sampling_off,
            nameable: true,
        };
        let off = Leak(report(false, true)).to_string();
        assert!(off.contains("Sampling::Off"), "{off}");
        let exact = Leak(report(false, false)).to_string();
        assert!(exact.contains("capture depth"), "{exact}");
        let sampled = Leak(report(true, false)).to_string();
        assert!(sampled.contains("was sampled"), "{sampled}");
    }

    #[test]
    fn a_leak_in_a_build_without_debug_info_says_so() {
        let at = |file: Option<&str>| crate::diff::CallsiteDelta {
            id: "1".into(),
            frames: vec![crate::Frame {
                function: "app::Cache::remember".into(),
                file: file.map(str::to_string),
                line: file.map(|_| 7),
            }]
            .into(),
            change: crate::diff::Change::Both,
            live_bytes: 40960,
            live_bytes_delta: 40960,
            live_blocks_delta: 10,
            allocations: 10,
            allocated_bytes: 40960,
            frees: 0,
        };
        let report = |file| GrowthReport {
            iterations: 10,
            growing_iterations: 10,
            total_growth_bytes: 40960,
            per_iteration_bytes: vec![4096; 10],
            top_growing: Vec::new(),
            elsewhere_growing: vec![at(file)],
            sampled: false,
            sampling_off: false,
            nameable: true,
        };
        let stripped = Leak(report(None)).to_string();
        assert!(stripped.contains("without debug info"), "{stripped}");
        assert!(stripped.contains("app::Cache::remember"), "{stripped}");
        let with_lines = Leak(report(Some("src/cache.rs"))).to_string();
        assert!(!with_lines.contains("debug info"), "{with_lines}");
        assert!(with_lines.contains("capture depth"), "{with_lines}");
    }

    #[test]
    fn closures_match_in_legacy_and_v0_symbol_names() {
        let ty = "scope_parallel::leaky_function::{{closure}}";
        for frame in [
            "scope_parallel::leaky_function::{{closure}}",
            "scope_parallel::leaky_function::{closure#0}",
            "scope_parallel::leaky_function::{closure#12}",
        ] {
            assert!(is_function(frame, ty), "{frame}");
        }
        for frame in [
            "scope_parallel::other::{closure#0}",
            "scope_parallel::leaky_function",
            "scope_parallel::leaky_function::{closure#}",
            "scope_parallel::leaky_function::{closure#0}::{closure#0}",
        ] {
            assert!(!is_function(frame, ty), "{frame}");
        }
        // Generic arguments aside, in either form.
        assert!(is_function(
            "app::run::<u8>::{closure#0}",
            "app::run<u8>::{{closure}}"
        ));
        assert!(is_function(
            "app::run<T>::{{closure}}",
            "app::run<u8>::{{closure}}"
        ));
    }
}
