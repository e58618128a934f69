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

/// A record a fake serves broken on purpose (see each fake's `bad_record`),
/// to test that one bad record is quarantined and the stream goes on. The
/// bad value sits in a field the record's decoder reads (`HubSpot`
/// `properties`, the top level of a Mailchimp or Constant Contact record);
/// everything else in the page stays valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadRecord {
    /// A string with bytes that are not UTF-8 (`0xff 0xfe`).
    InvalidUtf8,
    /// A string with an unpaired surrogate escape (`"\ud800"`).
    LoneSurrogate,
    /// Arrays nested 200 deep, past `serde_json`'s recursion limit (128).
    DeepNesting,
}

/// Marks where [`BadRecord::InvalidUtf8`] puts its invalid bytes in a reply
/// built as text (a noncharacter no generated data holds).
const INVALID_UTF8_MARK: &str = "\u{10FFFE}";

/// Set once a fake serves [`BadRecord::InvalidUtf8`]: only then are reply
/// bodies searched for the mark.
static INVALID_UTF8_ARMED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl BadRecord {
    /// The bad value as JSON text, with `"hw_bad":` in front: a member to
    /// insert into a JSON object.
    pub(crate) fn member(self) -> String {
        format!("\"hw_bad\":{}", self.value_json())
    }

    /// The bad value as JSON text.
    pub(crate) fn value_json(self) -> String {
        match self {
            BadRecord::InvalidUtf8 => {
                INVALID_UTF8_ARMED.store(true, std::sync::atomic::Ordering::Relaxed);
                format!("\"caf{INVALID_UTF8_MARK}\"")
            }
            BadRecord::LoneSurrogate => "\"\\ud800 alone\"".to_owned(),
            BadRecord::DeepNesting => format!("{}{}", "[".repeat(200), "]".repeat(200)),
        }
    }

    /// Inserts the bad member as the first member of the object that starts
    /// at `at` in `out` (`out[at]` is `{`).
    pub(crate) fn insert_into(self, out: &mut String, at: usize) {
        let member = self.member();
        let empty = out[at + 1..].trim_start().starts_with('}');
        let member = if empty { member } else { member + "," };
        out.insert_str(at + 1, &member);
    }
}

/// A fake's reply body as bytes: the [`BadRecord::InvalidUtf8`] mark
/// becomes bytes that are not UTF-8.
pub(crate) fn reply_bytes(body: String) -> Vec<u8> {
    if !INVALID_UTF8_ARMED.load(std::sync::atomic::Ordering::Relaxed)
        || !body.contains(INVALID_UTF8_MARK)
    {
        return body.into_bytes();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut parts = body.split(INVALID_UTF8_MARK);
    if let Some(first) = parts.next() {
        out.extend_from_slice(first.as_bytes());
    }
    for part in parts {
        out.extend_from_slice(&[0xff, 0xfe]);
        out.extend_from_slice(part.as_bytes());
    }
    out
}
