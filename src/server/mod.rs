//! The HTTP endpoint.
