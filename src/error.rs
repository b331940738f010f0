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
    /// A [`SortKey`](crate::SortKey) name that does not parse.
    #[error("unknown sort key {input:?} (use live_bytes, allocated_bytes or allocations)")]
    InvalidSortKey {
        /// What was given.
        input: String,
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
    /// A name given to `ServerBuilder::allow_host` that no request could
    /// match: not a host name or address, or with a port (any port is
    /// answered).
    #[error("ServerBuilder::allow_host({host:?}): {reason}")]
    InvalidAllowedHost {
        /// What was given.
        host: String,
        /// Why it was refused.
        reason: String,
    },
    /// A bearer token for the endpoint that is empty or only whitespace,
    /// given to `ServerBuilder::token(Some(..))` (`from_env: false`) or read
    /// from a `HEAPWATCH_TOKEN` of only whitespace (`from_env: true`).
    /// An empty token would protect nothing, and one of only whitespace
    /// could never be sent (an `Authorization` header's value loses its
    /// surrounding whitespace). An empty `HEAPWATCH_TOKEN` is not an error:
    /// it means no token, as an unset one does. To serve without a token, pass `None` to
    /// `ServerBuilder::token`.
    #[error("{}", empty_token_message(*.from_env))]
    EmptyToken {
        /// Whether the token came from the `HEAPWATCH_TOKEN` environment
        /// variable (else from `ServerBuilder::token`).
        from_env: bool,
    },
    /// A bearer token for the endpoint that no client could send in an
    /// `Authorization` header, so every request would get `401`: it begins
    /// or ends with whitespace (which a header's value loses: a token read
    /// from a file with its final newline), or holds a control character
    /// (which a header's value cannot carry). From
    /// `ServerBuilder::token(Some(..))` (`from_env: false`) or the
    /// `HEAPWATCH_TOKEN` environment variable (`from_env: true`).
    #[error("{} {reason}", if *.from_env { "HEAPWATCH_TOKEN" } else { "the token given to ServerBuilder::token" })]
    UnsendableToken {
        /// Whether the token came from the `HEAPWATCH_TOKEN` environment
        /// variable (else from `ServerBuilder::token`).
        from_env: bool,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server was asked to bind an address other than loopback without
    /// `ServerBuilder::allow_non_loopback`.
    #[error("refusing to serve heap data on non-loopback address {addr} (call ServerBuilder::allow_non_loopback(true) to allow it)")]
    NonLoopbackAddress {
        /// The address that was refused.
        addr: std::net::SocketAddr,
    },
}

fn empty_token_message(from_env: bool) -> &'static str {
    if from_env {
        "HEAPWATCH_TOKEN holds only whitespace, which no client can send as a bearer token \
         (set a token, or leave the variable empty or unset to serve without one)"
    } else {
        "ServerBuilder::token(Some(..)) was given an empty or all-whitespace token, which \
         would not protect the endpoint (pass None to serve without a token)"
    }
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
