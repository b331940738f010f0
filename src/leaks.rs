//! Leak detection by growth rate over retained snapshots.
