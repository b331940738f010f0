//! Heap snapshots: one reading of the totals and every callsite,
//! symbolized, as a serde value whose JSON is the contract of `GET /heap`.
//!
//! The JSON layout is documented on [`Snapshot`], in the public docs.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::callsites::{self, TableUsage, Unattributed};
use crate::counters::{stats, Stats};
use crate::error::Error;
use crate::sampling::{sampling, Sampling};
use crate::symbolize::Frame;

/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A reading of the heap: totals, callsites, and the allocator's and
/// process's view, from [`snapshot`]. Its JSON (serde, as
/// [`save`](Snapshot::save) writes it and `GET /heap` serves it) is below.
///
/// # JSON
///
/// ```text
/// {
///   "version": 1,                 // format version (this build: 1)
///   "id": 7,                      // monotonic within a process
///   "run_id": "4f1c-18c3...",     // distinguishes processes
///   "taken_at_ms": 1763900000000, // Unix time, ms
///   "uptime_ms": 61000,           // since the tracker's first allocation
///   "mode": "bytes",              // "off" | "bytes" | "all"
///   "sample_interval_bytes": 524288, // null unless mode is "bytes"
///   "sampling_changes": 0,        // switches of the mode so far
///   "unwinder": "cfi",            // or "frame_pointers", "backtrace"
///   "unwinder_fallbacks": 0,      // captures the CFI walk left to backtrace
///   "totals": { Stats: live_bytes, live_blocks, peak_bytes, allocations,
///               frees, reallocs, allocated_bytes, freed_bytes, budget_bytes,
///               budget_denials, budget_overages, overhead_bytes,
///               overhead_blocks },
///   "callsites": [ { "id": "9a3f0c1e22b7d405",
///                    "frames": [ {"function": "app::load", "file": "src/app.rs", "line": 12} ],
///                    "allocations": 1000, "allocated_bytes": 64000,
///                    "frees": 10, "freed_bytes": 640,
///                    "live_blocks": 990, "live_bytes": 63360,
///                    "estimated": true } ],
///   "callsites_omitted": 0,       // left out by /heap?top=N or the history
///   "unattributed": { allocations, allocated_bytes, frees, freed_bytes,
///                     live_bytes, live_blocks, dropped_callsite_table_full,
///                     dropped_live_table_full, dropped_no_tables,
///                     untracked_allocations, untracked_bytes,
///                     lock_contentions, inner_blocks_untracked },
///   "tables": { callsite_capacity, callsites_used,
///               live_sample_capacity, live_samples_used,
///               symbol_cache_entries, shard_overflows, shards_used },
///   "allocator": { "name": "jemalloc", "allocated": .., "active": ..,
///                  "resident": .., "mapped": .., "retained": .. } | null,
///   "process": { "pid": 1234, "rss_bytes": 12345678 }
/// }
/// ```
///
/// A callsite's `id` is a hash of its symbolized frames, so it is the same
/// for the same code in another run of the same binary: diffs of snapshots
/// saved from two processes match callsites by it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Format version ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// Monotonic within a process.
    pub id: u64,
    /// Identifies the process that took the snapshot.
    pub run_id: String,
    /// Unix time in milliseconds.
    pub taken_at_ms: u64,
    /// Milliseconds since the tracker's first allocation.
    pub uptime_ms: u64,
    /// `"off"`, `"bytes"` or `"all"`.
    pub mode: String,
    /// The mean sampling interval when `mode` is `"bytes"`.
    pub sample_interval_bytes: Option<u64>,
    /// How many times the sampling mode (or its interval) had changed in
    /// this process when the snapshot was taken ([`set_sampling`](crate::set_sampling);
    /// the tracker builder's mode, applied at the first allocation, is not
    /// a change).
    /// Two snapshots of one process with different counts straddle a
    /// switch: their callsite figures were recorded differently (blocks
    /// allocated while `"off"` are never attributed, and a callsite's
    /// estimate climbs while they are replaced), so [`Snapshot::diff`] says
    /// so and [`leak_report`](crate::leak_report) fits callsites only on
    /// snapshots since the last switch. 0 in files from builds before it
    /// existed.
    #[serde(default)]
    pub sampling_changes: u64,
    /// `"frame_pointers"`, `"cfi"` or `"backtrace"`.
    pub unwinder: String,
    /// Stacks the CFI unwinder could not walk (signal frames, code without
    /// unwind information), captured by `backtrace` instead. Absent (0) in
    /// files from builds before it existed.
    #[serde(default)]
    pub unwinder_fallbacks: u64,
    /// Exact process-wide totals.
    pub totals: Stats,
    /// Per-callsite figures, by default largest live bytes first.
    pub callsites: Vec<Callsite>,
    /// Callsites left out of `callsites` by
    /// [`truncate_callsites`](Snapshot::truncate_callsites) (`/heap?top=N`,
    /// the server's history, which keeps its snapshots' largest callsites).
    /// When it is above 0, a callsite absent from this snapshot may have
    /// had figures: [`Snapshot::diff`] and [`leak_report`](crate::leak_report)
    /// do not read its absence as zero. 0 in files from builds before it
    /// existed.
    #[serde(default)]
    pub callsites_omitted: u64,
    /// What no callsite row holds.
    pub unattributed: Unattributed,
    /// Capacity and use of heapwatch's tables.
    pub tables: TableUsage,
    /// jemalloc's own statistics when the inner allocator is jemalloc.
    pub allocator: Option<AllocatorStats>,
    /// The process as the OS sees it.
    pub process: ProcessStats,
}

/// One callsite's figures. Estimates (unbiased) when `estimated` is true,
/// exact otherwise. Reallocations are counted as an allocation of the new
/// size at the site that reallocated and a free of the old block at its
/// site.
///
/// Exact at quiescence. A snapshot taken while other threads allocate and
/// free reads each thread's recent counts one after another, not at one
/// instant: a callsite whose blocks one thread allocates and another frees
/// may then read a few more `frees` than `allocations` (its `live_*`
/// figures are clamped at zero); the next snapshot settles it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Callsite {
    /// Hash of the symbolized frames (16 hex digits).
    pub id: String,
    /// The stack, innermost (the user's allocating function) first, at most
    /// the tracker's depth of return addresses (inlined calls are frames of
    /// their own), ending above the standard library's thread entry
    /// (`__rust_begin_short_backtrace`, as Rust's short backtraces do): the
    /// last frame is the thread's closure, or `main`. A stack with no frame
    /// of the program's (the standard library allocating on its own, as a
    /// test harness does, or the runtime before `main`) shows the standard
    /// library's frames instead, ending the same way (above the C `main`
    /// before `main`). Shared (cheap to clone) between the snapshots that
    /// show this callsite.
    pub frames: Arc<[Frame]>,
    /// Allocations made here (cumulative).
    pub allocations: u64,
    /// Bytes allocated here (cumulative).
    pub allocated_bytes: u64,
    /// Frees of blocks allocated here (cumulative).
    pub frees: u64,
    /// Bytes freed of blocks allocated here (cumulative).
    pub freed_bytes: u64,
    /// Blocks allocated here and live now. Blocks that found the live-block
    /// table full are left out (their frees cannot be seen; they are
    /// counted in `Unattributed::untracked_*`), so with the table full this
    /// reads low rather than keeping freed blocks live.
    pub live_blocks: u64,
    /// Bytes allocated here and live now (with the same exception as
    /// `live_blocks`).
    pub live_bytes: u64,
    /// Whether these figures are sampling estimates: true once any
    /// allocation here was recorded as a sample while sampling by bytes
    /// (and from then on, whatever the mode is now), false while every
    /// allocation here was recorded exactly (`Sampling::All`, or blocks so
    /// large that sampling takes them all).
    pub estimated: bool,
}

/// jemalloc's statistics (`stats.*`, after advancing the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AllocatorStats {
    /// Always `"jemalloc"` for now.
    pub name: String,
    /// `stats.allocated`.
    pub allocated: u64,
    /// `stats.active`.
    pub active: u64,
    /// `stats.resident`.
    pub resident: u64,
    /// `stats.mapped`.
    pub mapped: u64,
    /// `stats.retained`.
    pub retained: u64,
}

/// The process as the OS sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessStats {
    /// Process id.
    pub pid: u32,
    /// Resident set size, from `/proc/self/statm` (null where unavailable).
    pub rss_bytes: Option<u64>,
}

/// How callsites are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Live bytes, largest first (the default).
    #[default]
    LiveBytes,
    /// Cumulative allocated bytes, largest first.
    AllocatedBytes,
    /// Cumulative allocations, most first.
    Allocations,
}

impl FromStr for SortKey {
    type Err = Error;

    /// Parses a key as [`Display`](fmt::Display) writes it (and `/heap`'s
    /// `sort` takes it): `live_bytes`, `allocated_bytes` or `allocations`.
    /// Anything else is [`Error::InvalidSortKey`].
    ///
    /// # Example
    ///
    /// ```
    /// use heapwatch::SortKey;
    ///
    /// assert_eq!("allocations".parse::<SortKey>().unwrap(), SortKey::Allocations);
    /// let e = "size".parse::<SortKey>().unwrap_err();
    /// assert!(matches!(e, heapwatch::Error::InvalidSortKey { .. }));
    /// ```
    fn from_str(s: &str) -> Result<SortKey, Error> {
        match s {
            "live_bytes" => Ok(SortKey::LiveBytes),
            "allocated_bytes" => Ok(SortKey::AllocatedBytes),
            "allocations" => Ok(SortKey::Allocations),
            _ => Err(Error::InvalidSortKey {
                input: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SortKey::LiveBytes => "live_bytes",
            SortKey::AllocatedBytes => "allocated_bytes",
            SortKey::Allocations => "allocations",
        })
    }
}

/// Takes a snapshot: the totals, every callsite symbolized (through a
/// cache), the allocator's and the process's figures. Callsites come
/// largest live bytes first.
///
/// Symbols are looked up outside the allocator hook; the first snapshot of
/// a process loads debug info (tens of milliseconds), later ones hit the
/// cache. Build with `[profile.release] debug = 1` for function names and
/// lines.
///
/// # Example
///
/// ```
/// #[global_allocator]
/// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
///     heapwatch::Tracker::new(std::alloc::System);
///
/// fn main() {
///     heapwatch::set_sampling(heapwatch::Sampling::All);
///     let kept: Vec<Vec<u8>> = (0..10).map(|_| vec![1u8; 1000]).collect();
///     let snap = heapwatch::snapshot();
///     assert!(snap.totals.live_bytes >= 10_000);
///     assert!(!snap.callsites.is_empty());
///     let json = serde_json::to_string(&snap).unwrap();
///     let back = heapwatch::Snapshot::from_json(&json).unwrap();
///     assert_eq!(back.id, snap.id);
///     drop(kept);
/// }
/// ```
pub fn snapshot() -> Snapshot {
    let sampling_changes = crate::sampling::mode_changes();
    let mode = sampling();
    let totals = stats();
    // The working state (every slot's figures, the merge by id, reading
    // /proc) is heapwatch's own: built and freed under the guard, so it is
    // overhead, not the program's, and the budget never refuses it.
    let (rows, rss) = crate::guard::untracked(|| (merged_sites(), rss_bytes()));
    // The snapshot itself is the program's, as anything it owns. Refused
    // with the budget spent, it would abort the process: it is let
    // through, as an overage.
    let snap = crate::budget::never_refused(|| {
        let mut snap = Snapshot {
            version: SNAPSHOT_VERSION,
            id: NEXT_ID.fetch_add(1, Relaxed),
            run_id: run_id(),
            taken_at_ms: crate::clock::now_ms(),
            uptime_ms: crate::clock::uptime_ms(),
            mode: mode.name().to_string(),
            sample_interval_bytes: match mode {
                Sampling::Bytes(n) => Some(n),
                _ => None,
            },
            sampling_changes,
            unwinder: crate::capture::active_unwinder().to_string(),
            unwinder_fallbacks: crate::capture::cfi_fallbacks() as u64,
            totals,
            callsites: rows.iter().map(Row::to_callsite).collect(),
            callsites_omitted: 0,
            unattributed: callsites::unattributed(),
            tables: callsites::usage(),
            allocator: allocator_stats(),
            process: ProcessStats {
                pid: std::process::id(),
                rss_bytes: rss,
            },
        };
        snap.sort_callsites(SortKey::LiveBytes);
        snap
    });
    crate::guard::untracked(|| drop(rows));
    snap
}

/// One callsite of a snapshot being built, in heapwatch's own memory.
struct Row {
    id: Arc<str>,
    frames: Arc<[Frame]>,
    figures: callsites::SiteFigures,
    estimated: bool,
}

impl Row {
    fn to_callsite(&self) -> Callsite {
        let f = &self.figures;
        Callsite {
            id: self.id.to_string(),
            frames: Arc::clone(&self.frames),
            allocations: f.allocations,
            allocated_bytes: f.allocated_bytes,
            frees: f.frees,
            freed_bytes: f.freed_bytes,
            live_blocks: f.live_blocks,
            live_bytes: f.live_bytes,
            estimated: self.estimated,
        }
    }
}

/// Every callsite slot with figures, symbolized, slots with the same
/// frames (the same id) merged. Call under the guard.
fn merged_sites() -> Vec<Row> {
    let raw = callsites::read_sites();
    let mut rows: Vec<Row> = Vec::with_capacity(raw.len());
    let mut index: std::collections::HashMap<Arc<str>, usize> =
        std::collections::HashMap::with_capacity(raw.len());
    for site in raw {
        if site.figures.allocations == 0 && site.figures.frees == 0 {
            continue;
        }
        let sym = crate::symbolize::site_symbols(site.slot, frames_id);
        match index.get(&*sym.id) {
            Some(&i) => {
                if let Some(r) = rows.get_mut(i) {
                    r.figures.add(&site.figures);
                    r.estimated |= site.estimated;
                }
            }
            None => {
                index.insert(Arc::clone(&sym.id), rows.len());
                rows.push(Row {
                    id: sym.id,
                    frames: sym.frames,
                    figures: site.figures,
                    estimated: site.estimated,
                });
            }
        }
    }
    crate::symbolize::release_debug_info();
    rows
}

impl Snapshot {
    /// Whether this snapshot's callsite figures were recorded the same way
    /// as `other`'s: the same mode and interval and, within one process, no
    /// switch between them ([`Snapshot::sampling_changes`]). What
    /// [`Snapshot::diff`]'s `sampling_changed` and the leak report's
    /// callsite fits go by.
    pub(crate) fn sampled_like(&self, other: &Snapshot) -> bool {
        self.mode == other.mode
            && self.sample_interval_bytes == other.sample_interval_bytes
            && (self.run_id != other.run_id || self.sampling_changes == other.sampling_changes)
    }

    /// Orders the callsites by `key`, largest first (ties by id); with
    /// [`Snapshot::truncate_callsites`], what `/heap?sort=..&top=..` does.
    ///
    /// # Example
    ///
    /// ```
    /// let mut snap = heapwatch::snapshot();
    /// snap.sort_callsites(heapwatch::SortKey::Allocations);
    /// snap.truncate_callsites(10);
    /// assert!(snap.callsites.len() <= 10);
    /// ```
    pub fn sort_callsites(&mut self, key: SortKey) {
        let k = |c: &Callsite| match key {
            SortKey::LiveBytes => c.live_bytes,
            SortKey::AllocatedBytes => c.allocated_bytes,
            SortKey::Allocations => c.allocations,
        };
        self.callsites
            .sort_by(|a, b| k(b).cmp(&k(a)).then_with(|| a.id.cmp(&b.id)));
    }

    /// Keeps the first `n` callsites, and counts the others in
    /// [`callsites_omitted`](Snapshot::callsites_omitted).
    pub fn truncate_callsites(&mut self, n: usize) {
        let omitted = self.callsites.len().saturating_sub(n) as u64;
        self.callsites_omitted = self.callsites_omitted.saturating_add(omitted);
        self.callsites.truncate(n);
    }

    /// Parses a snapshot from JSON, checking its format version first.
    ///
    /// # Example
    ///
    /// ```
    /// let err = heapwatch::Snapshot::from_json(r#"{"version": 99}"#).unwrap_err();
    /// assert!(err.to_string().contains("unsupported snapshot version 99"));
    /// let err = heapwatch::Snapshot::from_json("{ truncated").unwrap_err();
    /// assert!(err.to_string().starts_with("not a heapwatch snapshot"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedSnapshotVersion`] for another version,
    /// [`Error::InvalidSnapshot`] (with serde's line, column and reason) for
    /// anything that is not a snapshot; for heapwatch's other documents (a
    /// diff, `/heap/history`, `/heap/leaks`), saying which it is.
    pub fn from_json(json: &str) -> Result<Snapshot, Error> {
        // A byte order mark, which RFC 8259 lets a parser ignore (editors
        // on Windows write one).
        let json = json.strip_prefix('\u{feff}').unwrap_or(json);
        // serde's derive also reads a struct from an array (`[1, 2]`), and
        // then reports trailing characters: say what is wrong instead.
        match json.trim_start().chars().next() {
            Some('{') => {}
            None => {
                return Err(Error::invalid_snapshot(
                    "the input is empty (expected a JSON object with a \"version\" field)",
                ))
            }
            Some(c) => {
                return Err(Error::invalid_snapshot(format!(
                    "expected a JSON object with a \"version\" field, found {c:?} first"
                )))
            }
        }
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_str(json).map_err(|e| match other_document(json) {
            Some(what) => Error::invalid_snapshot(format!("this is {what}")),
            None => Error::InvalidSnapshot(e),
        })?;
        if v.version != SNAPSHOT_VERSION {
            return Err(Error::UnsupportedSnapshotVersion {
                found: v.version,
                supported: SNAPSHOT_VERSION,
            });
        }
        serde_json::from_str(json).map_err(Error::InvalidSnapshot)
    }

    /// Reads a snapshot saved as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file, [`Error::InvalidSnapshot`] for a file
    /// that is not text (saying so when it is gzip-compressed, as pprof
    /// profiles are), or the errors of [`Snapshot::from_json`].
    pub fn load(path: impl AsRef<Path>) -> Result<Snapshot, Error> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let why = if e.as_bytes().starts_with(&[0x1f, 0x8b]) {
                "the file is gzip-compressed (a pprof profile?), not JSON"
            } else {
                "the file is not UTF-8 text, so not JSON"
            };
            Error::invalid_snapshot(why)
        })?;
        Snapshot::from_json(&text)
    }

    /// Writes the snapshot as pretty JSON ([`Snapshot::load`] reads it back,
    /// in this process or another).
    ///
    /// # Example
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("snapshot-{}.json", std::process::id()));
    /// let snap = heapwatch::snapshot();
    /// snap.save(&path).unwrap();
    /// let back = heapwatch::Snapshot::load(&path).unwrap();
    /// assert_eq!(back.id, snap.id);
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        crate::budget::never_refused(|| {
            let json = serde_json::to_vec_pretty(self).map_err(Error::InvalidSnapshot)?;
            std::fs::write(path, json)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))
        })
    }
}

/// A stable id for a list of frames: FNV-1a over function, file and line.
pub(crate) fn frames_id(frames: &[Frame]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for f in frames {
        eat(f.function.as_bytes());
        eat(f.file.as_deref().unwrap_or("").as_bytes());
        eat(&f.line.unwrap_or(0).to_le_bytes());
    }
    format!("{h:016x}")
}

/// Identifies the process taking a snapshot: its pid, and a nonce drawn
/// once per run (pids are reused). A `fork` child has a pid of its own,
/// so its own run id, although it inherits the nonce. Nothing here waits
/// on another thread, so a child forked at any moment can make it.
fn run_id() -> String {
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let mut nonce = NONCE.load(Relaxed);
    if nonce == 0 {
        let fresh = (crate::clock::now_ms() ^ crate::clock::monotonic_ns()).max(1);
        nonce = match NONCE.compare_exchange(0, fresh, Relaxed, Relaxed) {
            Ok(_) => fresh,
            Err(drawn) => drawn,
        };
    }
    format!("{:x}-{nonce:x}", std::process::id())
}

static INNER_IS_JEMALLOC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Remembers whether the inner allocator is jemalloc, from its type name
/// (`A` of `Tracker<A>`).
pub(crate) fn note_inner_type(type_name: &str) {
    INNER_IS_JEMALLOC.store(names_jemalloc(type_name), Relaxed);
}

/// Whether a type's name is tikv-jemallocator's `Jemalloc`, or a type
/// generic over it (a wrapper of the program's). By its full path: a
/// program's own type that merely has "Jemalloc" in its name is not it.
fn names_jemalloc(type_name: &str) -> bool {
    type_name.contains("tikv_jemallocator::Jemalloc")
}

#[cfg(feature = "jemalloc")]
fn allocator_stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    if !INNER_IS_JEMALLOC.load(Relaxed) {
        return None;
    }
    epoch::advance().ok()?;
    Some(AllocatorStats {
        name: "jemalloc".to_string(),
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        mapped: stats::mapped::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

#[cfg(not(feature = "jemalloc"))]
fn allocator_stats() -> Option<AllocatorStats> {
    None
}

/// Resident set size from `/proc/self/statm`.
pub(crate) fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Which of heapwatch's other JSON documents `json` is, if it is one with
/// no `version` field (read only when it failed to parse as a snapshot):
/// a file saved from another route is a common mistake.
fn other_document(json: &str) -> Option<&'static str> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).ok()?;
    let has = |keys: &[&str]| keys.iter().all(|k| map.contains_key(*k));
    if map.contains_key("version") {
        None
    } else if has(&["base_id", "to_id", "callsites"]) {
        Some("a diff of two snapshots (/heap/diff, Snapshot::diff)")
    } else if has(&["interval_ms", "capacity", "snapshots"]) {
        Some("the list of retained snapshots' totals (/heap/history); save /heap instead")
    } else if has(&["window_ms", "enough_data", "process"]) {
        Some("a leak report (/heap/leaks); save /heap instead")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_is_known_by_its_path() {
        #[cfg(feature = "jemalloc")]
        assert!(names_jemalloc(std::any::type_name::<
            tikv_jemallocator::Jemalloc,
        >()));
        assert!(names_jemalloc("app::Counting<tikv_jemallocator::Jemalloc>"));
        assert!(!names_jemalloc("app::NotJemallocJustSystem"));
        assert!(!names_jemalloc(std::any::type_name::<std::alloc::System>()));
        assert!(!names_jemalloc("dhat::Alloc"));
    }

    #[test]
    fn sort_keys_parse_as_they_display() {
        for key in [
            SortKey::LiveBytes,
            SortKey::AllocatedBytes,
            SortKey::Allocations,
        ] {
            assert_eq!(key.to_string().parse::<SortKey>().unwrap(), key);
        }
        let e = "size".parse::<SortKey>().unwrap_err();
        assert!(matches!(&e, Error::InvalidSortKey { input } if input == "size"));
        assert_eq!(
            e.to_string(),
            "unknown sort key \"size\" (use live_bytes, allocated_bytes or allocations)"
        );
        // A std error (a `String` is not one), so that `?` converts it
        // into `anyhow::Error` and the like.
        fn std_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
        std_error(&e);
    }
}
