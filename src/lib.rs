//! # headwater
//!
//! Move marketing and CRM data out of SaaS APIs and into a warehouse, with
//! syncs that resume after a crash without losing or duplicating a record.
//!
//! ```no_run
//! use std::sync::Arc;
//! use headwater::hubspot::{HubSpot, HubSpotSource};
//! use headwater::sinks::files::FilesSink;
//! use headwater::sync::{Progress, Sync};
//!
//! # async fn run() -> headwater::Result<()> {
//! // A private-app token; see `auth` for OAuth with self-refreshing tokens.
//! let hubspot = HubSpot::builder()
//!     .private_app_token(std::env::var("HUBSPOT_ACCESS_TOKEN").unwrap_or_default().into())
//!     .build()?;
//! let source = Arc::new(HubSpotSource::new(hubspot));
//! let sink = Arc::new(FilesSink::new("data")?);
//! let report = Sync::new(source, sink)
//!     .tenant("acme")
//!     .streams(["contacts", "companies", "deals", "owners"])
//!     .checkpoint_every(10)
//!     .on_progress(|p| {
//!         if let Progress::StreamFinished(r) = p {
//!             println!("{}: {} records", r.stream, r.records);
//!         }
//!     })
//!     .run()
//!     .await;
//! assert!(report.is_success());
//! # Ok(()) }
//! ```
//!
//! ## The parts
//! - [`source::Source`]: a provider as the engine sees it: `check()`,
//!   `discover()` of typed [`schema::StreamSchema`]s, `read()` of a stream as
//!   pages, each with the checkpoint valid once its records are stored.
//!   [`hubspot::HubSpotSource`], [`mailchimp::MailchimpSource`] and
//!   [`constant_contact::ConstantContactSource`] implement it on their
//!   typed SDKs.
//! - [`http::ApiClient`]: the one HTTP client of every provider (rate
//!   limits, retries, token refresh on 401, typed errors).
//! - [`auth`]: OAuth 2.0 connect, [`auth::TokenProvider`] and token stores.
//! - [`paginate::paginate`]: cursor pagination as a `futures::Stream`
//!   (and [`paginate::paginate_offset`] for count/offset APIs).
//! - [`sink::Sink`]: where records land; [`sinks::files::FilesSink`] is the
//!   embedded default.
//! - [`sync::Sync`]: the engine joining them: checkpoints, resume,
//!   incremental runs, many tenants at once ([`sync::run_tenants`]),
//!   progress events, quota plans ([`sync::Sync::plan`]) and
//!   [`sync::verify`].
//! - `testkit` (feature `testkit`): provider fakes for tests.
//!
//! ## Features
//! Default: `hubspot`, `mailchimp`, `constant-contact` (the sources) and
//! `files` (the embedded sink). Optional: `postgres`, `object-store` (S3,
//! GCS, local disk), `bigquery` (the warehouse sinks), `schedule` (cron
//! schedules in time zones) and `testkit` (provider fakes).
#![warn(missing_docs)]

pub mod auth;
mod error;
mod fsutil;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod paginate;
#[cfg(feature = "schedule")]
pub mod schedule;
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

#[cfg(feature = "mailchimp")]
pub use sources::mailchimp;

#[cfg(feature = "constant-contact")]
pub use sources::constant_contact;

pub use error::{ApiErrorBody, AuthErrorKind, Error, Result};
