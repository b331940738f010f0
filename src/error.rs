//! The crate's one error type.

use std::io;

/// Everything that can go wrong in heapwatch's fallible API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A budget string that does not parse.
    #[error("invalid budget {input:?}: {reason}")]
    InvalidBudget {
        /// What was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// A snapshot file or body that is not a heapwatch snapshot.
    #[error("not a heapwatch snapshot: {0}")]
    InvalidSnapshot(#[source] serde_json::Error),
    /// A snapshot of a format version this build does not read.
    #[error("unsupported snapshot version {found} (this build reads version {supported})")]
    UnsupportedSnapshotVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// An I/O error (binding the server, reading or writing a file).
    #[error("{context}: {source}")]
    Io {
        /// What heapwatch was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A name given to
    /// [`ServerBuilder::allow_host`](crate::ServerBuilder::allow_host) that
    /// no request could match: not a host name or address, or with a port
    /// (any port is answered).
    #[error("ServerBuilder::allow_host({host:?}): {reason}")]
    InvalidAllowedHost {
        /// What was given.
        host: String,
        /// Why it was refused.
        reason: String,
    },
    /// The server was asked to bind an address other than loopback without
    /// [`ServerBuilder::allow_non_loopback`](crate::ServerBuilder::allow_non_loopback).
    #[error("refusing to serve heap data on non-loopback address {addr} (call ServerBuilder::allow_non_loopback(true) to allow it)")]
    NonLoopbackAddress {
        /// The address that was refused.
        addr: std::net::SocketAddr,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// [`Error::InvalidSnapshot`] saying `why` in heapwatch's own words
    /// (not one of serde's).
    pub(crate) fn invalid_snapshot(why: impl std::fmt::Display) -> Error {
        Error::InvalidSnapshot(serde::de::Error::custom(why))
    }
}
