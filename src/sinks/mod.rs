//! Sink implementations.

#[cfg(feature = "files")]
pub mod files;
