//! headwater
#![warn(missing_docs)]

pub mod auth;
mod error;
pub mod http;
pub mod paginate;
pub mod schema;
pub mod sink;
pub mod source;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{ApiErrorBody, AuthErrorKind, Error, Result};
