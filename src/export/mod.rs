//! Exporters: pprof, Prometheus text and flamegraphs from a snapshot.
