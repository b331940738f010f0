//! Exporters: pprof, Prometheus text and flamegraphs from a snapshot.
//!
//! - [`Snapshot::to_pprof`](crate::Snapshot::to_pprof) (feature `pprof`): a
//!   gzipped `perftools.profiles.Profile`, laid out as Go's heap profile.
//! - [`render_prometheus`] and
//!   [`Snapshot::to_prometheus`](crate::Snapshot::to_prometheus) (always
//!   available): the Prometheus text exposition format 0.0.4.
//! - [`Snapshot::to_flamegraph_svg`](crate::Snapshot::to_flamegraph_svg)
//!   (feature `flamegraph`): in-use bytes as an SVG flamegraph.
//!
//! `docs/FORMATS.md` describes the pprof layout and the metric list.

#[cfg(feature = "flamegraph")]
mod flamegraph;
#[cfg(feature = "pprof")]
mod pprof;
mod prometheus;

#[cfg(feature = "pprof")]
pub use pprof::PprofKind;
pub use prometheus::render_prometheus;

/// The name given to the unattributed row where an exporter needs a frame.
#[cfg(any(feature = "pprof", feature = "flamegraph"))]
pub(crate) const UNATTRIBUTED_FRAME: &str = "[unattributed]";
/// The name given to a callsite whose stack has no frames left after
/// trimming heapwatch's own.
#[cfg(any(feature = "pprof", feature = "flamegraph"))]
pub(crate) const NO_FRAMES: &str = "[no frames]";
