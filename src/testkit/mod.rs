//! Provider fakes for tests, benchmarks and examples.
//!
//! This module is compiled only with the `testkit` feature. It holds
//! in-process fakes of the SaaS APIs headwater talks to. Each fake is a real
//! HTTP server on `127.0.0.1` (built on [`wiremock`]) whose behaviour is
//! hand-written from the providers' official API descriptions: field names,
//! pagination, error bodies, OAuth token flows and rate-limit headers follow
//! what the vendor documents, so code tested against a fake talks to the real
//! service the same way.
//!
//! The fakes are stateful and deterministic: records are generated on the fly
//! from a seed, so a fake can serve a million records without storing them,
//! and test code can ask the fake for the exact truth it serves. Faults
//! (server errors, rate limiting, malformed pages, repeating cursors, expired
//! tokens) can be injected while a test runs.
//!
//! The testkit is public so that users of headwater can test their own
//! pipelines without credentials or network access:
//!
//! ```no_run
//! # async fn demo() {
//! use headwater::testkit::{FakeConfig, HubSpotFake};
//!
//! let fake = HubSpotFake::start(FakeConfig::default()).await;
//! let base_url = fake.uri(); // point the HubSpot source here
//! let token = "pat-fake-token"; // accepted private-app token
//! # let _ = (base_url, token);
//! # }
//! ```
//!
//! Available fakes:
//!
//! - [`hubspot`]: HubSpot CRM v3 objects (list, batch read, search),
//!   associations v4, properties, owners, pipelines, OAuth v1 tokens and
//!   account details; several portals on one server.
//! - [`mailchimp`]: Mailchimp Marketing API 3.0 (audiences, members with
//!   time filters, campaigns, reports, automations), problem+json errors,
//!   the 10-connection limit, OAuth token and metadata endpoints.
//! - [`constant_contact`]: Constant Contact v3 (contact lists, contacts,
//!   custom fields, email campaigns and activities, summaries), cursor
//!   links, the 4/s throttle and daily quota with their 429 bodies, PKCE
//!   and rotating refresh tokens.
//!
//! Each fake also has a hostile mode ([`hostile::Hostility`], switched with
//! `set_hostility`): absurd headers, endless or truncated listings,
//! undecodable records, NUL characters in names and ids, gzip bombs and
//! dropped connections, for testing that nothing panics, nothing is lost
//! and every problem is reported.

pub mod constant_contact;
pub mod hostile;
pub mod hubspot;
pub mod mailchimp;
pub mod sink_suite;

pub use hubspot::{FakeConfig, FakeRateLimit, FakeStats, HubSpotFake, ObjectSeed};
