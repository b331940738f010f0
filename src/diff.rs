//! Diffs of two snapshots, with the delta semantics profilers get wrong:
//! in-use figures (live bytes and blocks) are differences of absolute
//! values, cumulative figures (allocations, bytes allocated, frees) are
//! subtracted, and nothing is ever reported as "negative in-use".

use serde::{Deserialize, Serialize};

use crate::snapshot::{Callsite, Snapshot};
use crate::symbolize::Frame;

/// What changed between two snapshots, from [`Snapshot::diff`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotDiff {
    /// The earlier snapshot's id.
    pub base_id: u64,
    /// The later snapshot's id.
    pub to_id: u64,
    /// When the earlier snapshot was taken (Unix ms).
    pub base_taken_at_ms: u64,
    /// When the later snapshot was taken (Unix ms).
    pub to_taken_at_ms: u64,
    /// `to_taken_at_ms - base_taken_at_ms`.
    pub interval_ms: i64,
    /// Whether both snapshots come from the same process (`run_id`): if
    /// not, cumulative deltas compare two different runs' totals.
    pub same_process: bool,
    /// Process-wide deltas.
    pub totals: TotalsDelta,
    /// Per-callsite deltas, largest live-bytes growth first.
    pub callsites: Vec<CallsiteDelta>,
    /// Callsites in one snapshot and absent from the other where that
    /// other left callsites out ([`Snapshot::callsites_omitted`]: a
    /// `/heap?top=N` answer, or the server's history, which keeps each
    /// snapshot's largest callsites): their figures there are not known,
    /// so they are not in `callsites` rather than shown as new or gone.
    /// 0 in files from builds before it existed.
    #[serde(default)]
    pub callsites_not_compared: u64,
    /// Whether the sampling mode differs between the two snapshots, or
    /// changed and changed back between them
    /// ([`Snapshot::sampling_changes`]). The totals compare as ever; the
    /// callsite deltas compare figures recorded two ways: blocks allocated
    /// while sampling was off are in no callsite, so switching it on shows
    /// callsites growing (`"new"`) while the program only replaces what it
    /// held. false in files from builds before it existed.
    #[serde(default)]
    pub sampling_changed: bool,
}

/// Process-wide deltas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TotalsDelta {
    /// Live bytes in the later snapshot.
    pub live_bytes: u64,
    /// Live bytes now minus live bytes then.
    pub live_bytes_delta: i64,
    /// Live blocks now minus then.
    pub live_blocks_delta: i64,
    /// Allocations made between the two.
    pub allocations: i64,
    /// Bytes allocated between the two.
    pub allocated_bytes: i64,
    /// Frees between the two.
    pub frees: i64,
    /// Reallocations between the two.
    pub reallocs: i64,
    /// Change in heapwatch's own overhead.
    pub overhead_bytes_delta: i64,
    /// Change in resident set size, when both snapshots have it.
    pub rss_bytes_delta: Option<i64>,
}

/// How a callsite compares between the two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the later snapshot.
    New,
    /// Only in the earlier snapshot.
    Gone,
    /// In both.
    Both,
}

/// One callsite's deltas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallsiteDelta {
    /// The callsite's id.
    pub id: String,
    /// Its frames.
    pub frames: std::sync::Arc<[Frame]>,
    /// Whether it is new, gone, or in both.
    pub change: Change,
    /// Live bytes in the later snapshot (0 if gone).
    pub live_bytes: u64,
    /// Live bytes now minus then.
    pub live_bytes_delta: i64,
    /// Live blocks now minus then.
    pub live_blocks_delta: i64,
    /// Allocations between the two.
    pub allocations: i64,
    /// Bytes allocated between the two.
    pub allocated_bytes: i64,
    /// Frees between the two.
    pub frees: i64,
}

fn d(to: u64, base: u64) -> i64 {
    (i128::from(to) - i128::from(base)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl Snapshot {
    /// What changed from `base` to `self`. Callsites are matched by id,
    /// which is derived from their symbolized frames, so snapshots from two
    /// processes of the same binary diff correctly too. Sorted by live-bytes
    /// growth, largest first.
    ///
    /// # Example
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: heapwatch::Tracker<std::alloc::System> =
    ///     heapwatch::Tracker::new(std::alloc::System);
    ///
    /// fn main() {
    ///     let base = heapwatch::snapshot();
    ///     let grown = vec![0u8; 1 << 20];
    ///     let now = heapwatch::snapshot();
    ///     let diff = now.diff(&base);
    ///     assert!(diff.totals.live_bytes_delta >= 1 << 20);
    ///     drop(grown);
    /// }
    /// ```
    pub fn diff(&self, base: &Snapshot) -> SnapshotDiff {
        crate::budget::never_refused(|| self.diff_of(base))
    }

    fn diff_of(&self, base: &Snapshot) -> SnapshotDiff {
        let base_by_id: std::collections::HashMap<&str, &Callsite> =
            base.callsites.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut seen = std::collections::HashSet::new();
        let mut callsites = Vec::with_capacity(self.callsites.len());
        // Absent from a snapshot that left callsites out: not known there.
        let mut not_compared = 0u64;
        for c in &self.callsites {
            seen.insert(c.id.as_str());
            let b = base_by_id.get(c.id.as_str());
            if b.is_none() && base.callsites_omitted > 0 {
                not_compared += 1;
                continue;
            }
            let (bl, bb, ba, bab, bf) = b.map_or((0, 0, 0, 0, 0), |b| {
                (
                    b.live_bytes,
                    b.live_blocks,
                    b.allocations,
                    b.allocated_bytes,
                    b.frees,
                )
            });
            callsites.push(CallsiteDelta {
                id: c.id.clone(),
                frames: c.frames.clone(),
                change: if b.is_some() {
                    Change::Both
                } else {
                    Change::New
                },
                live_bytes: c.live_bytes,
                live_bytes_delta: d(c.live_bytes, bl),
                live_blocks_delta: d(c.live_blocks, bb),
                allocations: d(c.allocations, ba),
                allocated_bytes: d(c.allocated_bytes, bab),
                frees: d(c.frees, bf),
            });
        }
        for b in &base.callsites {
            if seen.contains(b.id.as_str()) {
                continue;
            }
            if self.callsites_omitted > 0 {
                not_compared += 1;
                continue;
            }
            callsites.push(CallsiteDelta {
                id: b.id.clone(),
                frames: b.frames.clone(),
                change: Change::Gone,
                live_bytes: 0,
                live_bytes_delta: d(0, b.live_bytes),
                live_blocks_delta: d(0, b.live_blocks),
                allocations: 0,
                allocated_bytes: 0,
                frees: 0,
            });
        }
        callsites.sort_by(|a, b| {
            b.live_bytes_delta
                .cmp(&a.live_bytes_delta)
                .then_with(|| a.id.cmp(&b.id))
        });
        let (t, bt) = (&self.totals, &base.totals);
        SnapshotDiff {
            base_id: base.id,
            to_id: self.id,
            base_taken_at_ms: base.taken_at_ms,
            to_taken_at_ms: self.taken_at_ms,
            interval_ms: d(self.taken_at_ms, base.taken_at_ms),
            same_process: self.run_id == base.run_id,
            totals: TotalsDelta {
                live_bytes: t.live_bytes,
                live_bytes_delta: d(t.live_bytes, bt.live_bytes),
                live_blocks_delta: d(t.live_blocks, bt.live_blocks),
                allocations: d(t.allocations, bt.allocations),
                allocated_bytes: d(t.allocated_bytes, bt.allocated_bytes),
                frees: d(t.frees, bt.frees),
                reallocs: d(t.reallocs, bt.reallocs),
                overhead_bytes_delta: d(t.overhead_bytes, bt.overhead_bytes),
                rss_bytes_delta: match (self.process.rss_bytes, base.process.rss_bytes) {
                    (Some(a), Some(b)) => Some(d(a, b)),
                    _ => None,
                },
            },
            callsites,
            callsites_not_compared: not_compared,
            sampling_changed: !self.sampled_like(base),
        }
    }
}
