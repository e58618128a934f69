//! Provider implementations.

#[cfg(feature = "hubspot")]
pub mod hubspot;
