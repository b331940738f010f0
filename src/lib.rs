//! heapwatch: a tracking global allocator.
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod budget;
mod callsites;
mod capture;
mod clock;
mod counters;
mod diff;
mod error;
#[cfg(any(feature = "pprof", feature = "flamegraph"))]
mod export;
mod guard;
mod leaks;
mod sampling;
mod scope;
#[cfg(feature = "server")]
mod server;
mod snapshot;
mod symbolize;
mod tracker;

pub use budget::{
    budget_status, set_budget, set_budget_policy, set_budget_thresholds, Budget, BudgetLevel,
    BudgetStatus, Policy, Thresholds, CHUNK_BYTES,
};
pub use callsites::{TableUsage, Unattributed, DEFAULT_MAX_CALLSITES, DEFAULT_MAX_LIVE_SAMPLES};
pub use capture::{active_unwinder, set_unwinder, Unwinder, MAX_FRAMES};
pub use counters::{stats, Stats, SHARDS};
pub use diff::{Change, CallsiteDelta, SnapshotDiff, TotalsDelta};
pub use error::Error;
pub use sampling::{sampling, set_sampling, set_sampling_seed, Sampling};
pub use scope::{assert_no_growth, scope, GrowthCheck, GrowthReport, Leak, ScopeStats};
pub use snapshot::{
    snapshot, AllocatorStats, Callsite, ProcessStats, Snapshot, SortKey, SNAPSHOT_VERSION,
};
pub use symbolize::Frame;
pub use tracker::{installed, Tracker};

// -- export: re-exports of src/export (pprof, prometheus, flamegraph) --
// -- end export --

// -- server: re-exports of src/server and src/leaks --
// -- end server --
