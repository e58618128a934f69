//! headwater
#![warn(missing_docs)]

pub mod auth;
mod error;
mod fsutil;
pub mod http;
pub mod paginate;
pub mod schema;
pub mod sink;
pub mod sinks;
pub mod source;
mod sources;
pub mod sync;
#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(feature = "hubspot")]
pub use sources::hubspot;

pub use error::{ApiErrorBody, AuthErrorKind, Error, Result};
