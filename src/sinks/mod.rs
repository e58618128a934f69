//! Sink implementations.

#[cfg(feature = "bigquery")]
pub mod bigquery;
#[cfg(feature = "files")]
pub mod files;
#[cfg(feature = "object-store")]
pub mod object_store;
#[cfg(feature = "postgres")]
pub mod postgres;
