//! A stateful fake of the Mailchimp Marketing API 3.0, served over HTTP on
//! `127.0.0.1`.
//!
//! [`MailchimpFake`] is written by hand from Mailchimp's API description
//! (the 3.0.55 subset in the shared specs) and its documented behaviour:
//! field names, `count`/`offset` paging with `total_items`, the time
//! filters, `application/problem+json` errors, 10 simultaneous connections
//! per user, and the OAuth token and metadata endpoints. It serves:
//!
//! | Method and path | Notes |
//! |---|---|
//! | `GET /3.0/` | the account (API root) |
//! | `GET /3.0/ping` | health check |
//! | `GET /3.0/lists[/{list_id}]` | `since_date_created`, `before_date_created`, `sort_field=date_created` |
//! | `GET /3.0/lists/{list_id}/members[/{subscriber_hash}]` | `status`, `since_last_changed`, `before_last_changed`, `since_timestamp_opt`, `before_timestamp_opt`, `sort_field` (`last_changed`, `timestamp_opt`, `timestamp_signup`) |
//! | `GET /3.0/lists/{list_id}/merge-fields` | default `count` 10, like every collection |
//! | `GET /3.0/campaigns[/{campaign_id}]` | `status`, `type`, `list_id`, `since_`/`before_create_time`, `since_`/`before_send_time`, `sort_field` (`create_time`, `send_time`) |
//! | `GET /3.0/reports[/{campaign_id}]` | `since_`/`before_send_time`, `type`; newest first |
//! | `GET /3.0/automations` | `status`, `since_`/`before_create_time`, `since_`/`before_start_time` |
//! | `GET /3.0/automations/{workflow_id}/emails` | one unpaged answer |
//! | `POST /oauth2/token` | `authorization_code` grant; tokens never expire |
//! | `GET /oauth2/metadata` | `Authorization: OAuth <token>`: `dc`, `api_endpoint` (this fake) |
//!
//! Every collection takes `count` (default 10, at most 1000: more answers
//! 400), `offset`, `fields` and `exclude_fields` (`members._links` style),
//! and answers `total_items` and `_links`. Time filters take ISO 8601;
//! `since_*` includes its bound and `before_*` excludes it (Mailchimp's
//! documentation does not say; headwater's source is exact either way).
//! Sorting by a time breaks ties by insertion order, so the order is stable
//! across requests. Errors are `application/problem+json`
//! `{type, title, status, detail, instance}`; a missing, unknown or revoked
//! token is a 401.
//!
//! # Records
//!
//! Generated once at start from the seed and kept in memory (an audience of
//! 100,000 members is fine). All generated times lie before the fake's
//! *anchor* ([`MailchimpFakeConfig::anchor`], default: one hour before the
//! start), campaigns every five days back from it, so a re-read window of a
//! few weeks holds the last few sends. The truth helpers
//! ([`MailchimpFake::member_ids`], [`MailchimpFake::campaign_ids`], …) give
//! tests what the fake serves.
//!
//! Member ids are subscriber hashes: the MD5 of the lower-cased email, in
//! hex, as Mailchimp computes them.
//!
//! # Changing records
//!
//! [`MailchimpFake::add_members`], [`MailchimpFake::change_members`],
//! [`MailchimpFake::archive_member`], [`MailchimpFake::delete_member`],
//! [`MailchimpFake::add_audience`], [`MailchimpFake::add_campaigns`],
//! [`MailchimpFake::send_campaign`] and [`MailchimpFake::bump_report`] change
//! the data between (or during) reads. Each takes the time the change
//! happened, which becomes the record's `last_changed` (or `create_time`,
//! `send_time`). A changed member's `FNAME` ends in ` (v{n})`.
//!
//! # Connections, faults, latency
//!
//! A request is *in flight* from its arrival until its (delayed) response
//! is sent; with more than [`MailchimpFakeConfig::max_connections`] in
//! flight for the user the fake answers 429 `TooManyRequests`, and
//! [`MailchimpFakeStats::max_in_flight`] reports the most it saw. Set a
//! latency ([`MailchimpFake::set_latency`]) for in-flight requests to
//! overlap. Faults: [`MailchimpFake::fail_next`],
//! [`MailchimpFake::fail_next_with_retry_after`],
//! [`MailchimpFake::fail_next_without_body`],
//! [`MailchimpFake::malformed_page`], [`MailchimpFake::revoke`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::hostile::{HostileSwitch, Hostility, Provider, Wire};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// One audience the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudienceSeed {
    /// Members at start.
    pub members: usize,
    /// The first `tie` members share one `last_changed` second (a bulk
    /// import), to exercise pages inside a tie.
    pub tie: usize,
}

impl AudienceSeed {
    /// An audience of `members` members with no bulk import.
    pub fn new(members: usize) -> Self {
        AudienceSeed { members, tie: 0 }
    }

    /// The first `tie` members share one `last_changed` second.
    pub fn with_tie(mut self, tie: usize) -> Self {
        self.tie = tie.min(self.members);
        self
    }
}

/// Configuration of a [`MailchimpFake`]; build it with struct update syntax
/// over [`MailchimpFakeConfig::default`].
#[derive(Debug, Clone)]
pub struct MailchimpFakeConfig {
    /// Seed of the record generator (default 42).
    pub seed: u64,
    /// Audiences (default: 1,200, 300 and 25 members). Merge fields cycle
    /// with the audience's position: every audience has `FNAME`, `LNAME`,
    /// `ADDRESS`, `PHONE`, `BIRTHDAY`; the 1st, 4th, … add `SCORE`
    /// (number), `JOINED` (date) and `PLAN` (dropdown); the 2nd, 5th, … add
    /// `SCORE` as text and `WEBSITE` (url).
    pub audiences: Vec<AudienceSeed>,
    /// Campaigns (default 24), one every five days back from the anchor;
    /// most sent, some drafts, one scheduled.
    pub campaigns: usize,
    /// Classic automations (default 3), with 1 to 3 emails each.
    pub automations: usize,
    /// The account's data centre (default `us6`).
    pub dc: String,
    /// API keys accepted (default one key ending in `-us6`).
    pub api_keys: Vec<String>,
    /// OAuth access tokens accepted from the start (default
    /// `["mc-fake-oauth-token"]`); the token endpoint mints more.
    pub access_tokens: Vec<String>,
    /// OAuth client id accepted by the token endpoint.
    pub client_id: String,
    /// OAuth client secret accepted by the token endpoint.
    pub client_secret: String,
    /// The token answer's `token_type` (default `Some("bearer")`); `None`
    /// leaves the field out, as Mailchimp's older documentation shows the
    /// answer (`{access_token, expires_in: 0, scope: null}`).
    pub token_type: Option<String>,
    /// Simultaneous requests allowed per user (default `Some(10)`,
    /// Mailchimp's limit); `None` never refuses.
    pub max_connections: Option<usize>,
    /// Delay added to every API response (default zero).
    pub latency: Duration,
    /// Every generated time lies before this (default: start time less one
    /// hour, whole seconds). Fix it for byte-identical data across runs.
    pub anchor: Option<DateTime<Utc>>,
    /// The account id (default `8d3a3db4d97663a9074efcc16`).
    pub account_id: String,
    /// The account name (default `Fake Outfitters`).
    pub account_name: String,
    /// The login id of the connected user (default `31082410`).
    pub login_id: String,
    /// The connected user's email (default `owner@example.com`).
    pub email: String,
}

impl Default for MailchimpFakeConfig {
    fn default() -> Self {
        MailchimpFakeConfig {
            seed: 42,
            audiences: vec![
                AudienceSeed::new(1_200),
                AudienceSeed::new(300),
                AudienceSeed::new(25),
            ],
            campaigns: 24,
            automations: 3,
            dc: "us6".into(),
            api_keys: vec!["0f1e2d3c4b5a69788796a5b4c3d2e1f0-us6".into()],
            access_tokens: vec!["mc-fake-oauth-token".into()],
            client_id: "fake-mc-client-id".into(),
            client_secret: "fake-mc-client-secret".into(),
            token_type: Some("bearer".into()),
            max_connections: Some(10),
            latency: Duration::ZERO,
            anchor: None,
            account_id: "8d3a3db4d97663a9074efcc16".into(),
            account_name: "Fake Outfitters".into(),
            login_id: "31082410".into(),
            email: "owner@example.com".into(),
        }
    }
}

/// Counters of what the fake served since start or
/// [`MailchimpFake::reset_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailchimpFakeStats {
    /// API requests (under `/3.0/`), answered or refused.
    pub requests: u64,
    /// 429 answers (connection limit or injected).
    pub rate_limited: u64,
    /// 429 answers because too many requests were in flight.
    pub over_connection_limit: u64,
    /// The most API requests in flight at once.
    pub max_in_flight: u64,
    /// Requests to `POST /oauth2/token`.
    pub token_requests: u64,
    /// Requests to `GET /oauth2/metadata`.
    pub metadata_requests: u64,
    /// Requests per route, like `GET /3.0/lists/{list_id}/members`.
    pub per_route: BTreeMap<String, u64>,
    /// Items served per collection key (`members`, `campaigns`, …).
    pub items_served: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------------------
// Stored records
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct MergeDef {
    merge_id: u64,
    tag: &'static str,
    name: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone)]
struct MemberRec {
    /// Insertion order: breaks ties in time sorts.
    seq: u64,
    id: String,
    email: String,
    first: String,
    last: String,
    status: &'static str,
    signup: Option<i64>,
    opt: i64,
    last_changed: i64,
    version: u32,
    h: u64,
}

#[derive(Debug, Clone)]
struct ListRec {
    id: String,
    web_id: u64,
    name: String,
    created: i64,
    merge: Vec<MergeDef>,
    members: Vec<MemberRec>,
    next_seq: u64,
}

#[derive(Debug, Clone)]
struct CampaignRec {
    seq: u64,
    id: String,
    web_id: u64,
    kind: &'static str,
    list: usize,
    created: i64,
    sent: Option<i64>,
    status: &'static str,
    title: String,
    subject: String,
    emails_sent: u64,
    opens_total: u64,
    unique_opens: u64,
    clicks_total: u64,
    unique_clicks: u64,
    subscriber_clicks: u64,
    hard: u64,
    soft: u64,
    unsubscribed: u64,
    abuse: u64,
    last_open: Option<i64>,
    last_click: Option<i64>,
}

#[derive(Debug, Clone)]
struct EmailRec {
    id: String,
    web_id: u64,
    position: u64,
    created: i64,
    sent: Option<i64>,
    subject: String,
    emails_sent: u64,
    opens: u64,
    clicks: u64,
}

#[derive(Debug, Clone)]
struct AutomationRec {
    seq: u64,
    id: String,
    list: usize,
    created: i64,
    started: Option<i64>,
    status: &'static str,
    title: String,
    emails: Vec<EmailRec>,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    NoBody(u16),
}

#[derive(Default)]
struct State {
    lists: Vec<ListRec>,
    campaigns: Vec<CampaignRec>,
    automations: Vec<AutomationRec>,
    tokens: HashSet<String>,
    revoked: HashSet<String>,
    codes: HashSet<String>,
    faults: VecDeque<Fault>,
    /// Collection key → answers of it to corrupt (0 = the next one).
    malformed: HashMap<String, Vec<u64>>,
    served: HashMap<String, u64>,
    in_flight: Vec<Instant>,
    stats: MailchimpFakeStats,
    latency: Duration,
    next_campaign: u64,
    next_token: u64,
}

// ---------------------------------------------------------------------------
// Generation helpers
// ---------------------------------------------------------------------------

const DAY: i64 = 86_400;
const PAGE_MAX: u64 = 1000;
const PROBLEM_MIME: &str = "application/problem+json; charset=utf-8";
const JSON_MIME: &str = "application/json; charset=utf-8";
const ERROR_DOC: &str = "https://mailchimp.com/developer/marketing/docs/errors/";

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn h3(seed: u64, a: u64, b: u64) -> u64 {
    mix(seed ^ mix(a ^ mix(b)))
}

fn hex(h: u64, len: usize) -> String {
    let mut s = format!("{h:016x}{:016x}", mix(h));
    s.truncate(len);
    s
}

fn fnv(bytes: &[u8], basis: u64) -> u64 {
    let mut h = basis;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    h
}

pub use crate::mailchimp::subscriber_hash;

fn iso(t: i64) -> String {
    DateTime::from_timestamp(t, 0)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

fn iso_opt(t: Option<i64>) -> Value {
    Value::String(t.map(iso).unwrap_or_default())
}

fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    // Mailchimp also takes a date, or a time without an offset.
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Some(t.and_utc().timestamp());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Some(t.and_utc().timestamp());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

const FIRST: &[&str] = &[
    "Ann", "Ben", "Carla", "Dev", "Elif", "Farah", "Gus", "Hana", "Ivo", "Jia", "Kofi", "Lena",
    "Mateo", "Nia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tove", "Uma", "Viktor", "Wen",
    "Yara", "Zoe",
];
const LAST: &[&str] = &[
    "Adeyemi",
    "Brennan",
    "Castro",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "O'Neill",
    "Petrov",
    "Quispe",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Ueda",
    "Varga",
    "Walsh",
    "Yilmaz",
    "Zhang",
];
const DOMAINS: &[&str] = &[
    "Example.com",
    "example.org",
    "mail.example.net",
    "EXAMPLE.io",
];
const CITIES: &[(&str, &str, &str, &str)] = &[
    ("Boston", "MA", "02108", "US"),
    ("Austin", "TX", "73301", "US"),
    ("Lyon", "", "69001", "FR"),
    ("Osaka", "", "530-0001", "JP"),
    ("Leeds", "", "LS1 1UR", "GB"),
];
const SOURCES: &[&str] = &["API - Generic", "Import", "Hosted Signup Form", "Admin Add"];
const TAGS: &[(u64, &str)] = &[
    (101, "customer"),
    (102, "newsletter"),
    (103, "vip"),
    (104, "beta"),
];
const PLANS: &[&str] = &["Basic", "Pro", "Team"];
const SUBJECTS: &[&str] = &[
    "Spring collection is here",
    "Your monthly digest",
    "Last chance: 20% off",
    "What's new this week",
    "Thanks for being with us",
    "Meet the team",
];

fn pick<T: Copy>(items: &[T], h: u64) -> T {
    items[(h % items.len() as u64) as usize]
}

fn merge_defs(audience: usize) -> Vec<MergeDef> {
    let mut defs = vec![
        MergeDef {
            merge_id: 1,
            tag: "FNAME",
            name: "First Name",
            kind: "text",
        },
        MergeDef {
            merge_id: 2,
            tag: "LNAME",
            name: "Last Name",
            kind: "text",
        },
        MergeDef {
            merge_id: 3,
            tag: "ADDRESS",
            name: "Address",
            kind: "address",
        },
        MergeDef {
            merge_id: 4,
            tag: "PHONE",
            name: "Phone Number",
            kind: "phone",
        },
        MergeDef {
            merge_id: 5,
            tag: "BIRTHDAY",
            name: "Birthday",
            kind: "birthday",
        },
    ];
    match audience % 3 {
        0 => {
            defs.push(MergeDef {
                merge_id: 6,
                tag: "SCORE",
                name: "Lead score",
                kind: "number",
            });
            defs.push(MergeDef {
                merge_id: 7,
                tag: "JOINED",
                name: "Customer since",
                kind: "date",
            });
            defs.push(MergeDef {
                merge_id: 8,
                tag: "PLAN",
                name: "Plan",
                kind: "dropdown",
            });
        }
        1 => {
            defs.push(MergeDef {
                merge_id: 6,
                tag: "SCORE",
                name: "Grade",
                kind: "text",
            });
            defs.push(MergeDef {
                merge_id: 7,
                tag: "WEBSITE",
                name: "Website",
                kind: "url",
            });
        }
        _ => {}
    }
    defs
}

fn status_of(h: u64) -> &'static str {
    match h % 100 {
        0..=77 => "subscribed",
        78..=86 => "unsubscribed",
        87..=91 => "cleaned",
        92..=95 => "pending",
        _ => "archived",
    }
}

// ---------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------

/// A stateful fake of the Mailchimp Marketing API on a local HTTP server.
///
/// Cloning gives another handle to the same server; the server stops when
/// the last handle is dropped. All methods are thread-safe and can be called
/// while requests are in flight.
#[derive(Clone)]
pub struct MailchimpFake {
    server: Arc<MockServer>,
    inner: Arc<Inner>,
}

impl fmt::Debug for MailchimpFake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailchimpFake")
            .field("uri", &self.inner.uri)
            .finish_non_exhaustive()
    }
}

struct Inner {
    uri: String,
    cfg: MailchimpFakeConfig,
    anchor: i64,
    state: Mutex<State>,
    ids: AtomicU64,
    /// The hostile mode ([`MailchimpFake::set_hostility`]).
    hostile: HostileSwitch,
}

struct Responder(Arc<Inner>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.handle(request)
    }
}

impl MailchimpFake {
    /// Starts the fake on a random port of `127.0.0.1`.
    pub async fn start(config: MailchimpFakeConfig) -> MailchimpFake {
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let anchor = config
            .anchor
            .map(|a| a.timestamp())
            .unwrap_or_else(|| Utc::now().timestamp() - 3600);
        let inner = Arc::new(Inner::new(config, server.uri(), anchor));
        Mock::given(wiremock::matchers::any())
            .respond_with(Responder(Arc::clone(&inner)))
            .mount(&server)
            .await;
        MailchimpFake {
            server: Arc::new(server),
            inner,
        }
    }

    /// The server's root, like `http://127.0.0.1:41234` (no trailing slash).
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The API base, `{uri}/3.0/`: where the real API has
    /// `https://api.mailchimp.com/3.0/`.
    pub fn api_base(&self) -> String {
        format!("{}/3.0/", self.uri())
    }

    /// The token endpoint (`{uri}/oauth2/token`).
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.uri())
    }

    /// The metadata endpoint (`{uri}/oauth2/metadata`).
    pub fn metadata_url(&self) -> String {
        format!("{}/oauth2/metadata", self.uri())
    }

    /// The configuration.
    pub fn config(&self) -> &MailchimpFakeConfig {
        &self.inner.cfg
    }

    /// The first accepted API key.
    pub fn api_key(&self) -> String {
        self.inner.cfg.api_keys.first().cloned().unwrap_or_default()
    }

    /// The first accepted OAuth access token.
    pub fn access_token(&self) -> String {
        self.inner
            .cfg
            .access_tokens
            .first()
            .cloned()
            .unwrap_or_default()
    }

    /// The time every generated record lies before.
    pub fn anchor(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.inner.anchor, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// An authorization code, as if the user had consented on Mailchimp's
    /// authorize page; the token endpoint takes it once.
    pub fn issue_code(&self) -> String {
        let code = format!("code-{}", self.inner.next_id());
        self.inner.state().codes.insert(code.clone());
        code
    }

    /// Revokes a token or API key: from now on it answers 401.
    pub fn revoke(&self, token: &str) {
        self.inner.state().revoked.insert(token.to_owned());
    }

    // ----- truth -----------------------------------------------------------

    /// Audience ids, in creation order.
    pub fn list_ids(&self) -> Vec<String> {
        self.inner
            .state()
            .lists
            .iter()
            .map(|l| l.id.clone())
            .collect()
    }

    /// Member ids (subscriber hashes) of an audience, in insertion order.
    pub fn member_ids(&self, list_id: &str) -> Vec<String> {
        let st = self.inner.state();
        st.lists
            .iter()
            .find(|l| l.id == list_id)
            .map(|l| l.members.iter().map(|m| m.id.clone()).collect())
            .unwrap_or_default()
    }

    /// A member as the API serves it.
    pub fn member(&self, list_id: &str, id: &str) -> Option<Value> {
        let st = self.inner.state();
        let list = st.lists.iter().find(|l| l.id == list_id)?;
        let m = list.members.iter().find(|m| m.id == id)?;
        Some(self.inner.member_json(list, m))
    }

    /// The merge fields of an audience: `(tag, type)`.
    pub fn merge_fields(&self, list_id: &str) -> Vec<(String, String)> {
        let st = self.inner.state();
        st.lists
            .iter()
            .find(|l| l.id == list_id)
            .map(|l| {
                l.merge
                    .iter()
                    .map(|d| (d.tag.to_owned(), d.kind.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Campaign ids, in creation order.
    pub fn campaign_ids(&self) -> Vec<String> {
        self.inner
            .state()
            .campaigns
            .iter()
            .map(|c| c.id.clone())
            .collect()
    }

    /// Ids of the campaigns that have a report (the sent ones).
    pub fn report_ids(&self) -> Vec<String> {
        self.inner
            .state()
            .campaigns
            .iter()
            .filter(|c| c.sent.is_some())
            .map(|c| c.id.clone())
            .collect()
    }

    /// Ids of sent campaigns with their send time.
    pub fn sent_campaigns(&self) -> Vec<(String, DateTime<Utc>)> {
        self.inner
            .state()
            .campaigns
            .iter()
            .filter_map(|c| {
                c.sent
                    .and_then(|t| DateTime::from_timestamp(t, 0))
                    .map(|t| (c.id.clone(), t))
            })
            .collect()
    }

    /// A campaign's report as the API serves it.
    pub fn report(&self, campaign_id: &str) -> Option<Value> {
        let st = self.inner.state();
        let c = st
            .campaigns
            .iter()
            .find(|c| c.id == campaign_id && c.sent.is_some())?;
        Some(self.inner.report_json(&st, c))
    }

    /// Automation ids.
    pub fn automation_ids(&self) -> Vec<String> {
        self.inner
            .state()
            .automations
            .iter()
            .map(|a| a.id.clone())
            .collect()
    }

    /// `(workflow id, email id)` of every automation email.
    pub fn automation_email_ids(&self) -> Vec<(String, String)> {
        self.inner
            .state()
            .automations
            .iter()
            .flat_map(|a| a.emails.iter().map(|e| (a.id.clone(), e.id.clone())))
            .collect()
    }

    // ----- changes ---------------------------------------------------------

    /// Adds `n` members to an audience, signed up and changed at `at`;
    /// returns their ids.
    pub fn add_members(&self, list_id: &str, n: usize, at: DateTime<Utc>) -> Vec<String> {
        let seed = self.inner.cfg.seed;
        let mut st = self.inner.state();
        let Some((li, list)) = st
            .lists
            .iter_mut()
            .enumerate()
            .find(|(_, l)| l.id == list_id)
        else {
            panic!("MailchimpFake::add_members: no audience `{list_id}`");
        };
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = list.next_seq;
            list.next_seq += 1;
            let mut m = Inner::gen_member(seed, li, seq, at.timestamp(), None);
            m.status = "subscribed";
            m.signup = Some(at.timestamp());
            m.opt = at.timestamp();
            m.last_changed = at.timestamp();
            ids.push(m.id.clone());
            list.members.push(m);
        }
        ids
    }

    /// Changes members (their `FNAME` gets a new version) at `at`.
    pub fn change_members(&self, list_id: &str, ids: &[String], at: DateTime<Utc>) {
        let mut st = self.inner.state();
        let list = st
            .lists
            .iter_mut()
            .find(|l| l.id == list_id)
            .unwrap_or_else(|| panic!("MailchimpFake::change_members: no audience `{list_id}`"));
        for id in ids {
            let m = list
                .members
                .iter_mut()
                .find(|m| &m.id == id)
                .unwrap_or_else(|| panic!("MailchimpFake::change_members: no member `{id}`"));
            m.version += 1;
            m.last_changed = at.timestamp();
        }
    }

    /// Archives a member at `at`: still listed, with status `archived`.
    pub fn archive_member(&self, list_id: &str, id: &str, at: DateTime<Utc>) {
        let mut st = self.inner.state();
        let m = st
            .lists
            .iter_mut()
            .find(|l| l.id == list_id)
            .and_then(|l| l.members.iter_mut().find(|m| m.id == id))
            .unwrap_or_else(|| panic!("MailchimpFake::archive_member: no member `{id}`"));
        m.status = "archived";
        m.last_changed = at.timestamp();
    }

    /// Deletes a member permanently: Mailchimp no longer lists it at all.
    pub fn delete_member(&self, list_id: &str, id: &str) {
        let mut st = self.inner.state();
        if let Some(list) = st.lists.iter_mut().find(|l| l.id == list_id) {
            list.members.retain(|m| m.id != id);
        }
    }

    /// Adds an audience created at `at` with `members` members; returns its id.
    pub fn add_audience(&self, name: &str, members: usize, at: DateTime<Utc>) -> String {
        let seed = self.inner.cfg.seed;
        let mut st = self.inner.state();
        let index = st.lists.len();
        let mut list = Inner::gen_list(seed, index, at.timestamp());
        list.name = name.to_owned();
        for seq in 0..members as u64 {
            let mut m = Inner::gen_member(seed, index, seq, at.timestamp(), None);
            m.signup = Some(at.timestamp());
            m.opt = at.timestamp();
            m.last_changed = at.timestamp();
            list.members.push(m);
        }
        list.next_seq = members as u64;
        let id = list.id.clone();
        st.lists.push(list);
        id
    }

    /// Adds `n` draft campaigns created at `at`; returns their ids.
    pub fn add_campaigns(&self, n: usize, at: DateTime<Utc>) -> Vec<String> {
        let seed = self.inner.cfg.seed;
        let mut st = self.inner.state();
        let lists = st.lists.len().max(1);
        let mut ids = Vec::new();
        for _ in 0..n {
            let seq = st.next_campaign;
            st.next_campaign += 1;
            let mut c = Inner::gen_campaign(seed, seq, lists, at.timestamp());
            c.created = at.timestamp();
            c.status = "save";
            c.sent = None;
            ids.push(c.id.clone());
            st.campaigns.push(c);
        }
        ids
    }

    /// Sends a campaign at `at`: status `sent`, a report appears.
    pub fn send_campaign(&self, id: &str, at: DateTime<Utc>) {
        let mut st = self.inner.state();
        let c = st
            .campaigns
            .iter_mut()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("MailchimpFake::send_campaign: no campaign `{id}`"));
        c.status = "sent";
        c.sent = Some(at.timestamp());
    }

    /// Adds opens and clicks to a sent campaign's report (figures change
    /// after the send; its send time does not).
    pub fn bump_report(&self, id: &str, opens: u64, clicks: u64) {
        let mut st = self.inner.state();
        let c = st
            .campaigns
            .iter_mut()
            .find(|c| c.id == id && c.sent.is_some())
            .unwrap_or_else(|| panic!("MailchimpFake::bump_report: no sent campaign `{id}`"));
        c.opens_total += opens;
        c.unique_opens = (c.unique_opens + opens).min(c.emails_sent);
        c.clicks_total += clicks;
        c.unique_clicks = (c.unique_clicks + clicks).min(c.emails_sent);
        c.subscriber_clicks = (c.subscriber_clicks + clicks).min(c.emails_sent);
        c.last_open = Some(Utc::now().timestamp());
        c.last_click = Some(Utc::now().timestamp());
    }

    // ----- faults ----------------------------------------------------------

    /// The next `n` API requests answer `status` with a problem body.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.inner.state();
        for _ in 0..n {
            st.faults.push_back(Fault::Status {
                status,
                retry_after: None,
            });
        }
    }

    /// The next `n` API requests answer 429 with `Retry-After: secs`.
    pub fn fail_next_with_retry_after(&self, n: usize, secs: u64) {
        let mut st = self.inner.state();
        for _ in 0..n {
            st.faults.push_back(Fault::Status {
                status: 429,
                retry_after: Some(secs),
            });
        }
    }

    /// The next `n` API requests answer `status` with no body at all (as
    /// Mailchimp may under heavy load).
    pub fn fail_next_without_body(&self, n: usize, status: u16) {
        let mut st = self.inner.state();
        for _ in 0..n {
            st.faults.push_back(Fault::NoBody(status));
        }
    }

    /// Corrupts the `nth` answer (0: the next) of the collection `key`
    /// (`members`, `lists`, `campaigns`, `reports`, `automations`,
    /// `emails`, `merge_fields`): the fourth item's `id` (or the last one's)
    /// becomes a number.
    pub fn malformed_page(&self, key: &str, nth: u64) {
        let mut st = self.inner.state();
        let served = st.served.get(key).copied().unwrap_or(0);
        st.malformed
            .entry(key.to_owned())
            .or_default()
            .push(served + nth);
    }

    /// Switches the fake into a hostile mode (see [`Hostility`]), or back
    /// to normal with `None`. The records served stay the same; what the
    /// mode damages is described on each variant.
    pub fn set_hostility(&self, hostility: Option<Hostility>) {
        self.inner.hostile.set(hostility);
    }

    /// The hostile mode the fake is in, if any.
    pub fn hostility(&self) -> Option<Hostility> {
        self.inner.hostile.get()
    }

    /// Drops pending faults.
    pub fn clear_faults(&self) {
        let mut st = self.inner.state();
        st.faults.clear();
        st.malformed.clear();
    }

    /// Sets the delay added to every API response.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.state().latency = latency;
    }

    /// The counters.
    pub fn stats(&self) -> MailchimpFakeStats {
        self.inner.state().stats.clone()
    }

    /// Resets the counters.
    pub fn reset_stats(&self) {
        self.inner.state().stats = MailchimpFakeStats::default();
    }
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

struct Reply {
    status: u16,
    body: Option<(String, &'static str)>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(value: Value) -> Reply {
        Reply {
            status: 200,
            body: Some((value.to_string(), JSON_MIME)),
            headers: Vec::new(),
        }
    }

    fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
        Reply {
            status,
            body: Some((
                json!({"error": error, "error_description": description}).to_string(),
                JSON_MIME,
            )),
            headers: Vec::new(),
        }
    }
}

/// A Mailchimp problem document.
fn problem(status: u16, title: &str, detail: &str) -> Reply {
    let instance = hex(mix(status as u64 ^ fnv(detail.as_bytes(), 7)), 32);
    let instance = format!(
        "{}-{}-{}-{}-{}",
        &instance[0..8],
        &instance[8..12],
        &instance[12..16],
        &instance[16..20],
        &instance[20..32]
    );
    Reply {
        status,
        body: Some((
            json!({
                "type": ERROR_DOC,
                "title": title,
                "status": status,
                "detail": detail,
                "instance": instance,
            })
            .to_string(),
            PROBLEM_MIME,
        )),
        headers: Vec::new(),
    }
}

fn not_found() -> Reply {
    problem(
        404,
        "Resource Not Found",
        "The requested resource could not be found.",
    )
}

fn invalid(detail: &str) -> Reply {
    problem(400, "Invalid Resource", detail)
}

/// Query parameters, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn time(&self, name: &str) -> Result<Option<i64>, Reply> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                invalid(&format!(
                    "The value `{v}` of `{name}` is not a valid ISO 8601 time."
                ))
            }),
        }
    }

    /// `(count, offset)`, refusing a count above 1000.
    fn paging(&self) -> Result<(u64, u64), Reply> {
        let count = match self.get("count") {
            None => 10,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| invalid(&format!("`count` must be a number, got `{v}`.")))?,
        };
        if count > PAGE_MAX {
            return Err(invalid(&format!(
                "The count parameter must be {PAGE_MAX} or less; got {count}."
            )));
        }
        let offset = match self.get("offset") {
            None => 0,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| invalid(&format!("`offset` must be a number, got `{v}`.")))?,
        };
        Ok((count, offset))
    }

    fn desc(&self) -> Result<bool, Reply> {
        match self.get("sort_dir") {
            None | Some("ASC") => Ok(false),
            Some("DESC") => Ok(true),
            Some(v) => Err(invalid(&format!(
                "`sort_dir` must be ASC or DESC, got `{v}`."
            ))),
        }
    }
}

/// Keeps `t` within `[since, before)`; `None` (unset) fails a set bound.
fn in_range(t: Option<i64>, since: Option<i64>, before: Option<i64>) -> bool {
    match t {
        Some(t) => since.is_none_or(|s| t >= s) && before.is_none_or(|b| t < b),
        None => since.is_none() && before.is_none(),
    }
}

/// Applies `fields` / `exclude_fields` (top-level names and
/// `collection.field`) to an answer.
fn trim_fields(mut value: Value, q: &Query) -> Value {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect()
    };
    let Value::Object(map) = &mut value else {
        return value;
    };
    if let Some(ex) = q.get("exclude_fields") {
        for path in split(ex) {
            match path.split_once('.') {
                None => {
                    map.remove(&path);
                }
                Some((top, sub)) => match map.get_mut(top) {
                    Some(Value::Array(items)) => {
                        for item in items {
                            if let Value::Object(o) = item {
                                o.remove(sub);
                            }
                        }
                    }
                    Some(Value::Object(o)) => {
                        o.remove(sub);
                    }
                    _ => {}
                },
            }
        }
    }
    if let Some(inc) = q.get("fields") {
        let paths = split(inc);
        let mut keep: HashMap<String, Option<HashSet<String>>> = HashMap::new();
        for p in &paths {
            match p.split_once('.') {
                None => {
                    keep.insert(p.clone(), None);
                }
                Some((top, sub)) => {
                    let e = keep
                        .entry(top.to_owned())
                        .or_insert_with(|| Some(HashSet::new()));
                    if let Some(set) = e {
                        set.insert(sub.to_owned());
                    }
                }
            }
        }
        map.retain(|k, _| keep.contains_key(k));
        for (top, subs) in keep {
            let Some(subs) = subs else { continue };
            match map.get_mut(&top) {
                Some(Value::Array(items)) => {
                    for item in items {
                        if let Value::Object(o) = item {
                            o.retain(|k, _| subs.contains(k));
                        }
                    }
                }
                Some(Value::Object(o)) => o.retain(|k, _| subs.contains(k)),
                _ => {}
            }
        }
    }
    value
}

fn links(base: &str, path: &str) -> Value {
    json!([{
        "rel": "self",
        "href": format!("{base}/3.0/{path}"),
        "method": "GET",
        "targetSchema": "https://us6.api.mailchimp.com/schema/3.0/Definitions/CollectionResponse.json"
    }])
}

impl Inner {
    fn new(cfg: MailchimpFakeConfig, uri: String, anchor: i64) -> Inner {
        let seed = cfg.seed;
        let mut lists = Vec::new();
        for (i, a) in cfg.audiences.iter().enumerate() {
            let created = anchor - 420 * DAY + i as i64 * 3 * DAY;
            let mut list = Inner::gen_list(seed, i, created);
            let tie_at = anchor - 300 * DAY + i as i64 * 3600;
            for seq in 0..a.members as u64 {
                let tie = (seq as usize) < a.tie;
                let m = Inner::gen_member(
                    seed,
                    i,
                    seq,
                    anchor,
                    Some((a.members as u64, tie.then_some(tie_at))),
                );
                list.members.push(m);
            }
            list.next_seq = a.members as u64;
            lists.push(list);
        }
        let n_lists = lists.len().max(1);
        let mut campaigns = Vec::new();
        let total = cfg.campaigns as u64;
        for j in 0..total {
            let h = h3(seed, 0xCA, j);
            let created = anchor - (total - j) as i64 * 5 * DAY - (h % 3600) as i64;
            let mut c = Inner::gen_campaign(seed, j, n_lists, created);
            let (status, sent) = if j + 1 == total {
                ("save", None)
            } else if j + 2 == total {
                ("schedule", None)
            } else if j % 7 == 3 {
                ("save", None)
            } else {
                ("sent", Some((created + DAY).min(anchor - 60)))
            };
            c.status = status;
            c.sent = sent;
            campaigns.push(c);
        }
        let mut automations = Vec::new();
        for k in 0..cfg.automations as u64 {
            let h = h3(seed, 0xA0, k);
            let created = anchor - (200 - 10 * k as i64) * DAY;
            let emails = (0..(k % 3 + 1))
                .map(|p| {
                    let eh = h3(seed, 0xAE, k * 100 + p);
                    EmailRec {
                        id: hex(eh, 10),
                        web_id: 200_000 + k * 100 + p,
                        position: p + 1,
                        created: created + p as i64 * 60,
                        sent: Some(anchor - (eh % (10 * DAY as u64)) as i64 - 3600),
                        subject: pick(SUBJECTS, eh).to_owned(),
                        emails_sent: 40 + eh % 900,
                        opens: 10 + eh % 300,
                        clicks: eh % 80,
                    }
                })
                .collect();
            automations.push(AutomationRec {
                seq: k,
                id: hex(h, 10),
                list: (k as usize) % n_lists,
                created,
                started: Some(created + DAY),
                status: if k % 2 == 0 { "sending" } else { "paused" },
                title: format!("Welcome series {}", k + 1),
                emails,
            });
        }
        let mut tokens: HashSet<String> = cfg.access_tokens.iter().cloned().collect();
        tokens.extend(cfg.api_keys.iter().cloned());
        let state = State {
            lists,
            campaigns,
            automations,
            tokens,
            latency: cfg.latency,
            next_campaign: total,
            ..State::default()
        };
        Inner {
            uri,
            cfg,
            anchor,
            state: Mutex::new(state),
            ids: AtomicU64::new(1),
            hostile: HostileSwitch::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, AtomicOrdering::Relaxed)
    }

    fn gen_list(seed: u64, index: usize, created: i64) -> ListRec {
        let h = h3(seed, 0x11, index as u64);
        ListRec {
            id: hex(h, 10),
            web_id: 100_000 + index as u64,
            name: format!(
                "{} Audience {}",
                pick(&["Newsletter", "Customers", "Events", "Beta"], h),
                index + 1
            ),
            created,
            merge: merge_defs(index),
            members: Vec::new(),
            next_seq: 0,
        }
    }

    /// Member `seq` of audience `list`; `spread` = `(members at start, tie
    /// time)` for generated members, whose times spread before `anchor`.
    fn gen_member(
        seed: u64,
        list: usize,
        seq: u64,
        anchor: i64,
        spread: Option<(u64, Option<i64>)>,
    ) -> MemberRec {
        let h = h3(seed, 0x3E + list as u64, seq);
        let first = pick(FIRST, h).to_owned();
        let last = pick(LAST, h >> 8).to_owned();
        let local: String = format!("{}.{}{}", first, last, seq)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        let email = format!("{local}@{}", pick(DOMAINS, h >> 16));
        let (signup, opt, last_changed) = match spread {
            Some((n, tie)) => {
                let span = 350 * DAY;
                let step = (span / n.max(1) as i64).max(1);
                let signup = anchor - 400 * DAY + seq as i64 * step;
                let opt = signup + (h % 3600) as i64;
                let mut changed = opt + ((h >> 20) % (60 * DAY as u64)) as i64;
                if (h >> 40) % 5 == 0 {
                    changed -= changed.rem_euclid(3600); // a shared hour
                }
                let changed = changed.max(opt).min(anchor - 3600);
                match tie {
                    Some(t) => (Some(t), t, t),
                    None => (
                        if (h >> 44) % 10 == 0 {
                            None
                        } else {
                            Some(signup)
                        },
                        opt,
                        changed,
                    ),
                }
            }
            None => (Some(anchor), anchor, anchor),
        };
        MemberRec {
            seq,
            id: subscriber_hash(&email),
            email,
            first,
            last,
            status: status_of(h >> 24),
            signup,
            opt,
            last_changed,
            version: 0,
            h,
        }
    }

    fn gen_campaign(seed: u64, seq: u64, lists: usize, created: i64) -> CampaignRec {
        let h = h3(seed, 0xCA, seq);
        let emails_sent = 200 + h % 5_000;
        let unique_opens = emails_sent * (20 + (h >> 8) % 30) / 100;
        let unique_clicks = unique_opens * (5 + (h >> 16) % 20) / 100;
        CampaignRec {
            seq,
            id: hex(h, 10),
            web_id: 300_000 + seq,
            kind: if seq % 5 == 4 { "plaintext" } else { "regular" },
            list: (seq as usize) % lists,
            created,
            sent: None,
            status: "save",
            title: format!("Campaign {}", seq + 1),
            subject: pick(SUBJECTS, h >> 4).to_owned(),
            emails_sent,
            opens_total: unique_opens + unique_opens / 3,
            unique_opens,
            clicks_total: unique_clicks + unique_clicks / 4,
            unique_clicks,
            subscriber_clicks: unique_clicks,
            hard: (h >> 24) % 8,
            soft: (h >> 28) % 15,
            unsubscribed: (h >> 32) % 12,
            abuse: (h >> 36) % 2,
            last_open: None,
            last_click: None,
        }
    }

    fn member_json(&self, list: &ListRec, m: &MemberRec) -> Value {
        let h = m.h;
        let mut merge = Map::new();
        for d in &list.merge {
            let v = match d.tag {
                "FNAME" => {
                    if m.version > 0 {
                        json!(format!("{} (v{})", m.first, m.version))
                    } else {
                        json!(m.first)
                    }
                }
                "LNAME" => json!(m.last),
                "ADDRESS" => {
                    if (h >> 3) % 4 == 0 {
                        json!("")
                    } else {
                        let (city, state, zip, country) = pick(CITIES, h >> 5);
                        json!({
                            "addr1": format!("{} Main St", 10 + h % 900),
                            "addr2": "",
                            "city": city,
                            "state": state,
                            "zip": zip,
                            "country": country,
                        })
                    }
                }
                "PHONE" => {
                    if (h >> 7) % 3 == 0 {
                        json!("")
                    } else {
                        json!(format!("(617) 555-{:04}", h % 10_000))
                    }
                }
                "BIRTHDAY" => {
                    if (h >> 9) % 3 == 0 {
                        json!("")
                    } else {
                        json!(format!(
                            "{:02}/{:02}",
                            1 + (h >> 11) % 12,
                            1 + (h >> 13) % 28
                        ))
                    }
                }
                "SCORE" if d.kind == "number" => {
                    if (h >> 15) % 5 == 0 {
                        json!("")
                    } else {
                        json!((h >> 17) % 100)
                    }
                }
                "SCORE" => json!(pick(&["A", "B+", "C", ""], h >> 19)),
                "JOINED" => {
                    if (h >> 21) % 4 == 0 {
                        json!("")
                    } else {
                        json!(DateTime::from_timestamp(m.opt, 0)
                            .unwrap_or(DateTime::<Utc>::MIN_UTC)
                            .format("%Y-%m-%d")
                            .to_string())
                    }
                }
                "PLAN" => json!(pick(PLANS, h >> 23)),
                "WEBSITE" => json!(format!("https://www.example.com/u/{}", m.seq)),
                _ => json!(""),
            };
            merge.insert(d.tag.to_owned(), v);
        }
        let tags: Vec<Value> = TAGS
            .iter()
            .enumerate()
            .filter(|(i, _)| (h >> (30 + i)) & 1 == 1 && (h >> 34) % 3 != 0)
            .map(|(_, (id, name))| json!({"id": id, "name": name}))
            .collect();
        let (city, _, _, country) = pick(CITIES, h >> 5);
        let _ = city;
        let mut v = json!({
            "id": m.id,
            "email_address": m.email,
            "unique_email_id": hex(h ^ 0x55, 10),
            "contact_id": hex(h ^ 0x77, 32),
            "full_name": format!("{} {}", m.first, m.last),
            "web_id": 500_000_000 + m.seq,
            "email_type": if h % 9 == 0 { "text" } else { "html" },
            "status": m.status,
            "consents_to_one_to_one_messaging": true,
            "merge_fields": merge,
            "interests": {
                hex(list.web_id, 10): (h >> 40) & 1 == 1,
                hex(list.web_id + 1, 10): (h >> 41) & 1 == 1,
            },
            "stats": {
                "avg_open_rate": ((h >> 42) % 100) as f64 / 100.0,
                "avg_click_rate": ((h >> 49) % 30) as f64 / 100.0,
            },
            "ip_signup": if m.signup.is_some() { format!("203.0.113.{}", h % 250) } else { String::new() },
            "timestamp_signup": iso_opt(m.signup),
            "ip_opt": format!("198.51.100.{}", (h >> 8) % 250),
            "timestamp_opt": iso(m.opt),
            "member_rating": 1 + (h >> 50) % 5,
            "last_changed": iso(m.last_changed),
            "language": if h % 4 == 0 { "" } else { "en" },
            "vip": (h >> 52) % 25 == 0,
            "email_client": "",
            "location": {
                "latitude": 0, "longitude": 0, "gmtoff": 0, "dstoff": 0,
                "country_code": country, "timezone": "", "region": ""
            },
            "marketing_permissions": [],
            "source": pick(SOURCES, h >> 54),
            "tags_count": tags.len(),
            "tags": tags,
            "list_id": list.id,
            "_links": links(&self.uri, &format!("lists/{}/members/{}", list.id, m.id)),
        });
        if m.status == "unsubscribed" {
            v["unsubscribe_reason"] = json!("N/A (Unsubscribed by an admin)");
        }
        v
    }

    fn list_json(&self, l: &ListRec) -> Value {
        let count = |s: &str| l.members.iter().filter(|m| m.status == s).count();
        json!({
            "id": l.id,
            "web_id": l.web_id,
            "name": l.name,
            "contact": {
                "company": self.cfg.account_name, "address1": "1 Main St", "address2": "",
                "city": "Boston", "state": "MA", "zip": "02108", "country": "US", "phone": ""
            },
            "permission_reminder": "You signed up on our website.",
            "use_archive_bar": true,
            "campaign_defaults": {
                "from_name": self.cfg.account_name, "from_email": self.cfg.email,
                "subject": "", "language": "en"
            },
            "notify_on_subscribe": "",
            "notify_on_unsubscribe": "",
            "date_created": iso(l.created),
            "list_rating": l.web_id % 6,
            "email_type_option": false,
            "subscribe_url_short": format!("https://eepurl.com/{}", &l.id[..6]),
            "subscribe_url_long": format!("https://example.us6.list-manage.com/subscribe?id={}", l.id),
            "beamer_address": format!("us6-{}@inbound.mailchimp.com", l.id),
            "visibility": "prv",
            "double_optin": l.web_id % 2 == 0,
            "has_welcome": false,
            "marketing_permissions": false,
            "modules": [],
            "stats": {
                "member_count": count("subscribed"),
                "unsubscribe_count": count("unsubscribed"),
                "cleaned_count": count("cleaned"),
                "member_count_since_send": 0,
                "unsubscribe_count_since_send": 0,
                "cleaned_count_since_send": 0,
                "campaign_count": 0,
                "campaign_last_sent": "",
                "merge_field_count": l.merge.len(),
                "avg_sub_rate": 0, "avg_unsub_rate": 0, "target_sub_rate": 0,
                "open_rate": 0.31, "click_rate": 0.04,
                "last_sub_date": "", "last_unsub_date": ""
            },
            "_links": links(&self.uri, &format!("lists/{}", l.id)),
        })
    }

    fn campaign_json(&self, st: &State, c: &CampaignRec) -> Value {
        let list = st.lists.get(c.list);
        let sent = c.sent.is_some();
        let mut v = json!({
            "id": c.id,
            "web_id": c.web_id,
            "type": c.kind,
            "create_time": iso(c.created),
            "archive_url": format!("https://eepurl.com/c{}", &c.id[..6]),
            "long_archive_url": format!("https://us6.campaign-archive.com/?u=x&id={}", c.id),
            "status": c.status,
            "emails_sent": if sent { c.emails_sent } else { 0 },
            "send_time": iso_opt(c.sent),
            "content_type": "template",
            "needs_block_refresh": false,
            "resendable": sent,
            "recipients": {
                "list_id": list.map(|l| l.id.clone()).unwrap_or_default(),
                "list_is_active": true,
                "list_name": list.map(|l| l.name.clone()).unwrap_or_default(),
                "segment_text": "",
                "recipient_count": if sent { c.emails_sent } else { 0 },
            },
            "settings": {
                "subject_line": c.subject,
                "preview_text": "",
                "title": c.title,
                "from_name": self.cfg.account_name,
                "reply_to": self.cfg.email,
                "use_conversation": false,
                "to_name": "*|FNAME|*",
                "folder_id": "",
                "authenticate": true,
                "auto_footer": false,
                "inline_css": false,
                "auto_tweet": false,
                "fb_comments": true,
                "timewarp": false,
                "template_id": 10_000 + c.seq,
                "drag_and_drop": true
            },
            "tracking": {
                "opens": true, "html_clicks": true, "text_clicks": false,
                "goal_tracking": false, "ecomm360": false,
                "google_analytics": "", "clicktale": ""
            },
            "delivery_status": {"enabled": false},
            "_links": links(&self.uri, &format!("campaigns/{}", c.id)),
        });
        if sent {
            v["report_summary"] = json!({
                "opens": c.opens_total,
                "unique_opens": c.unique_opens,
                "open_rate": c.unique_opens as f64 / c.emails_sent.max(1) as f64,
                "clicks": c.clicks_total,
                "subscriber_clicks": c.subscriber_clicks,
                "click_rate": c.subscriber_clicks as f64 / c.emails_sent.max(1) as f64,
            });
        }
        v
    }

    fn report_json(&self, st: &State, c: &CampaignRec) -> Value {
        let list = st.lists.get(c.list);
        let delivered = c.emails_sent.saturating_sub(c.hard + c.soft).max(1) as f64;
        json!({
            "id": c.id,
            "campaign_title": c.title,
            "type": c.kind,
            "list_id": list.map(|l| l.id.clone()).unwrap_or_default(),
            "list_is_active": true,
            "list_name": list.map(|l| l.name.clone()).unwrap_or_default(),
            "subject_line": c.subject,
            "preview_text": "",
            "emails_sent": c.emails_sent,
            "abuse_reports": c.abuse,
            "unsubscribed": c.unsubscribed,
            "send_time": iso_opt(c.sent),
            "rss_last_send": "",
            "bounces": {"hard_bounces": c.hard, "soft_bounces": c.soft, "syntax_errors": 0},
            "forwards": {"forwards_count": 0, "forwards_opens": 0},
            "opens": {
                "opens_total": c.opens_total,
                "unique_opens": c.unique_opens,
                "open_rate": c.unique_opens as f64 / delivered,
                "last_open": iso_opt(c.last_open.or(c.sent.map(|t| t + 3 * DAY))),
            },
            "clicks": {
                "clicks_total": c.clicks_total,
                "unique_clicks": c.unique_clicks,
                "unique_subscriber_clicks": c.subscriber_clicks,
                "click_rate": c.subscriber_clicks as f64 / delivered,
                "last_click": iso_opt(c.last_click.or(c.sent.map(|t| t + 2 * DAY))),
            },
            "facebook_likes": {"recipient_likes": 0, "unique_likes": 0, "facebook_likes": 0},
            "industry_stats": {
                "type": "Retail", "open_rate": 0.21, "click_rate": 0.02, "bounce_rate": 0.01,
                "unopen_rate": 0.78, "unsub_rate": 0.002, "abuse_rate": 0.0001
            },
            "list_stats": {"sub_rate": 1.2, "unsub_rate": 0.4, "open_rate": 0.3, "click_rate": 0.04},
            "timeseries": [],
            "share_report": {"share_url": "", "share_password": ""},
            "ecommerce": {"total_orders": 0, "total_spent": 0, "total_revenue": 0},
            "delivery_status": {"enabled": false},
            "_links": links(&self.uri, &format!("reports/{}", c.id)),
        })
    }

    fn automation_json(&self, st: &State, a: &AutomationRec) -> Value {
        let list = st.lists.get(a.list);
        let sent: u64 = a.emails.iter().map(|e| e.emails_sent).sum();
        json!({
            "id": a.id,
            "create_time": iso(a.created),
            "start_time": iso_opt(a.started),
            "status": a.status,
            "emails_sent": sent,
            "recipients": {
                "list_id": list.map(|l| l.id.clone()).unwrap_or_default(),
                "list_is_active": true,
                "list_name": list.map(|l| l.name.clone()).unwrap_or_default(),
            },
            "settings": {
                "title": a.title, "from_name": self.cfg.account_name,
                "reply_to": self.cfg.email, "use_conversation": false, "to_name": "",
                "authenticate": true, "auto_footer": false, "inline_css": false
            },
            "tracking": {"opens": true, "html_clicks": true, "text_clicks": false},
            "trigger_settings": {"workflow_type": "welcomeSeries", "workflow_title": a.title, "workflow_emails_count": a.emails.len()},
            "report_summary": {
                "opens": a.emails.iter().map(|e| e.opens).sum::<u64>(),
                "unique_opens": a.emails.iter().map(|e| e.opens).sum::<u64>(),
                "open_rate": 0.4,
                "clicks": a.emails.iter().map(|e| e.clicks).sum::<u64>(),
                "subscriber_clicks": a.emails.iter().map(|e| e.clicks).sum::<u64>(),
                "click_rate": 0.05
            },
            "_links": links(&self.uri, &format!("automations/{}", a.id)),
        })
    }

    fn email_json(&self, st: &State, a: &AutomationRec, e: &EmailRec) -> Value {
        let list = st.lists.get(a.list);
        json!({
            "id": e.id,
            "web_id": e.web_id,
            "workflow_id": a.id,
            "position": e.position,
            "delay": {
                "amount": e.position - 1, "type": if e.position == 1 { "now" } else { "day" },
                "direction": "after", "action": "signup"
            },
            "create_time": iso(e.created),
            "start_time": iso_opt(a.started),
            "archive_url": format!("https://eepurl.com/a{}", &e.id[..6]),
            "status": a.status,
            "emails_sent": e.emails_sent,
            "send_time": iso_opt(e.sent),
            "content_type": "template",
            "needs_block_refresh": false,
            "has_logo_merge_tag": false,
            "recipients": {
                "list_id": list.map(|l| l.id.clone()).unwrap_or_default(),
                "list_is_active": true,
                "list_name": list.map(|l| l.name.clone()).unwrap_or_default(),
                "segment_text": "",
                "recipient_count": e.emails_sent,
            },
            "settings": {
                "subject_line": e.subject, "preview_text": "", "title": format!("{} #{}", a.title, e.position),
                "from_name": self.cfg.account_name, "reply_to": self.cfg.email
            },
            "tracking": {"opens": true, "html_clicks": true, "text_clicks": false},
            "report_summary": {
                "opens": e.opens, "unique_opens": e.opens, "open_rate": e.opens as f64 / e.emails_sent.max(1) as f64,
                "clicks": e.clicks, "subscriber_clicks": e.clicks, "click_rate": e.clicks as f64 / e.emails_sent.max(1) as f64
            },
            "trigger_settings": {"workflow_type": "welcomeSeries"},
            "_links": links(&self.uri, &format!("automations/{}/emails/{}", a.id, e.id)),
        })
    }

    // ----- request handling -------------------------------------------------

    fn handle(&self, req: &Request) -> ResponseTemplate {
        if let Some(wire) = self.hostile.before(Provider::Mailchimp, req) {
            return self
                .hostile
                .after(Provider::Mailchimp, req, wire)
                .into_template();
        }
        let path = req.url.path().to_owned();
        let method = req.method.as_str().to_owned();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let q = Query(
            req.url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        );
        let (reply, delay) = match segs.as_slice() {
            ["oauth2", "token"] if method == "POST" => {
                self.state().stats.token_requests += 1;
                (self.token(req), Duration::ZERO)
            }
            ["oauth2", "metadata"] if method == "GET" => {
                self.state().stats.metadata_requests += 1;
                (self.metadata(req), Duration::ZERO)
            }
            ["3.0", rest @ ..] => self.api(req, &method, rest, &q),
            _ => (not_found(), Duration::ZERO),
        };
        let wire = Wire::new(
            reply.status,
            reply.headers.into_iter().map(|(k, v)| (k.to_owned(), v)),
            reply.body.map(|(b, mime)| (b.into_bytes(), mime)),
        );
        let mut template = self
            .hostile
            .after(Provider::Mailchimp, req, wire)
            .into_template();
        if !delay.is_zero() {
            template = template.set_delay(delay);
        }
        template
    }

    fn route_label(method: &str, rest: &[&str]) -> String {
        let shape: Vec<&str> = match rest {
            ["lists", _, tail @ ..] => {
                let mut v = vec!["lists", "{list_id}"];
                match tail {
                    ["members", _, ..] => v.extend(["members", "{subscriber_hash}"]),
                    other => v.extend(other.iter().copied()),
                }
                v
            }
            ["campaigns", _] => vec!["campaigns", "{campaign_id}"],
            ["reports", _] => vec!["reports", "{campaign_id}"],
            ["automations", _, tail @ ..] => {
                let mut v = vec!["automations", "{workflow_id}"];
                v.extend(tail.iter().copied());
                v
            }
            other => other.to_vec(),
        };
        format!("{method} /3.0/{}", shape.join("/"))
    }

    fn api(&self, req: &Request, method: &str, rest: &[&str], q: &Query) -> (Reply, Duration) {
        let now = Instant::now();
        let mut st = self.state();
        st.stats.requests += 1;
        *st.stats
            .per_route
            .entry(Inner::route_label(method, rest))
            .or_insert(0) += 1;
        // Authentication first: connections are counted per user.
        if let Err(reply) = self.authenticate(&st, req) {
            return (reply, Duration::ZERO);
        }
        let latency = st.latency;
        st.in_flight.retain(|end| *end > now);
        if let Some(max) = self.cfg.max_connections {
            if st.in_flight.len() >= max {
                st.stats.rate_limited += 1;
                st.stats.over_connection_limit += 1;
                return (
                    problem(
                        429,
                        "Too Many Requests",
                        &format!("You have exceeded the limit of {max} simultaneous connections."),
                    ),
                    Duration::ZERO,
                );
            }
        }
        st.in_flight.push(now + latency);
        let in_flight = st.in_flight.len() as u64;
        st.stats.max_in_flight = st.stats.max_in_flight.max(in_flight);
        if let Some(fault) = st.faults.pop_front() {
            let reply = match fault {
                Fault::Status {
                    status,
                    retry_after,
                } => {
                    if status == 429 {
                        st.stats.rate_limited += 1;
                    }
                    let mut r = match status {
                        429 => problem(429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."),
                        500 => problem(500, "Internal Server Error", "An unexpected internal error has occurred. Please contact Support for more information."),
                        503 => problem(503, "Service Unavailable", "The service is temporarily unavailable."),
                        s => problem(s, "Error", "Injected fault."),
                    };
                    if let Some(secs) = retry_after {
                        r.headers.push(("Retry-After", secs.to_string()));
                    }
                    r
                }
                Fault::NoBody(status) => {
                    if status == 429 {
                        st.stats.rate_limited += 1;
                    }
                    Reply {
                        status,
                        body: None,
                        headers: Vec::new(),
                    }
                }
            };
            return (reply, latency);
        }
        if method != "GET" {
            return (
                problem(405, "Method Not Allowed", "The requested method and resource are not compatible. See the Allow header for this resource's available methods."),
                latency,
            );
        }
        let result = match rest {
            [] => Ok(self.root(&st)),
            ["ping"] => Ok(Reply::json(
                json!({"health_status": "Everything's Chimpy!"}),
            )),
            ["lists"] => self.lists(&mut st, q),
            ["lists", id] => self.one_list(&st, id),
            ["lists", id, "members"] => self.members(&mut st, id, q),
            ["lists", id, "members", hash] => self.one_member(&st, id, hash),
            ["lists", id, "merge-fields"] => self.merge_fields_of(&mut st, id, q),
            ["campaigns"] => self.campaigns(&mut st, q),
            ["campaigns", id] => self.one_campaign(&st, id),
            ["reports"] => self.reports(&mut st, q),
            ["reports", id] => self.one_report(&st, id),
            ["automations"] => self.automations(&mut st, q),
            ["automations", id, "emails"] => self.emails(&mut st, id, q),
            _ => Err(not_found()),
        };
        let reply = match result {
            Ok(r) => r,
            Err(r) => r,
        };
        (reply, latency)
    }

    fn authenticate(&self, st: &State, req: &Request) -> Result<(), Reply> {
        let header = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim();
        let token = match header.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Some(t.trim().to_owned()),
            Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => {
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.split_once(':').map(|(_, key)| key.to_owned()))
            }
            _ => None,
        };
        match token {
            Some(t) if st.tokens.contains(&t) && !st.revoked.contains(&t) => Ok(()),
            Some(_) => Err(problem(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )),
            None => Err(problem(
                401,
                "API Key Missing",
                "Your request did not include an API key.",
            )),
        }
    }

    fn root(&self, st: &State) -> Reply {
        Reply::json(json!({
            "account_id": self.cfg.account_id,
            "login_id": self.cfg.login_id,
            "account_name": self.cfg.account_name,
            "email": self.cfg.email,
            "first_name": "Olive",
            "last_name": "Owner",
            "username": "olive.owner",
            "avatar_url": "",
            "role": "owner",
            "member_since": iso(self.anchor - 900 * DAY),
            "pricing_plan_type": "monthly",
            "first_payment": iso(self.anchor - 880 * DAY),
            "account_timezone": "America/New_York",
            "account_industry": "Retail",
            "contact": {
                "company": self.cfg.account_name, "addr1": "1 Main St", "addr2": "",
                "city": "Boston", "state": "MA", "zip": "02108", "country": "US"
            },
            "pro_enabled": false,
            "last_login": iso(self.anchor - 3600),
            "total_subscribers": st.lists.iter().map(|l| l.members.len()).sum::<usize>(),
            "industry_stats": {"open_rate": 0.21, "bounce_rate": 0.01, "click_rate": 0.02},
            "_links": links(&self.uri, ""),
        }))
    }

    /// Pages `items` and builds the collection answer under `key`,
    /// corrupting it when a malformed page is due.
    fn collection(
        &self,
        st: &mut State,
        key: &str,
        items: Vec<Value>,
        q: &Query,
        self_path: &str,
        extra: Map<String, Value>,
    ) -> Result<Reply, Reply> {
        let (count, offset) = q.paging()?;
        let total = items.len();
        let mut page: Vec<Value> = items
            .into_iter()
            .skip(offset as usize)
            .take(count as usize)
            .collect();
        let served = st.served.entry(key.to_owned()).or_insert(0);
        let nth = *served;
        *served += 1;
        *st.stats.items_served.entry(key.to_owned()).or_insert(0) += page.len() as u64;
        if let Some(due) = st.malformed.get_mut(key) {
            if let Some(i) = due.iter().position(|n| *n == nth) {
                due.remove(i);
                let at = 3.min(page.len().saturating_sub(1));
                if let Some(Value::Object(o)) = page.get_mut(at) {
                    o.insert("id".into(), json!(12345));
                }
            }
        }
        let mut body = extra;
        body.insert(key.to_owned(), Value::Array(page));
        body.insert("total_items".into(), json!(total));
        body.insert("_links".into(), links(&self.uri, self_path));
        Ok(Reply::json(trim_fields(Value::Object(body), q)))
    }

    fn find_list<'s>(st: &'s State, id: &str) -> Result<(usize, &'s ListRec), Reply> {
        st.lists
            .iter()
            .enumerate()
            .find(|(_, l)| l.id == id)
            .ok_or_else(not_found)
    }

    fn lists(&self, st: &mut State, q: &Query) -> Result<Reply, Reply> {
        let since = q.time("since_date_created")?;
        let before = q.time("before_date_created")?;
        match q.get("sort_field") {
            None | Some("date_created") => {}
            Some(f) => return Err(invalid(&format!("`{f}` is not a valid sort_field."))),
        }
        let desc = q.desc()?;
        let mut rows: Vec<&ListRec> = st
            .lists
            .iter()
            .filter(|l| in_range(Some(l.created), since, before))
            .collect();
        if q.get("sort_field").is_some() {
            rows.sort_by_key(|l| l.created);
            if desc {
                rows.reverse();
            }
        }
        let items = rows.into_iter().map(|l| self.list_json(l)).collect();
        let mut extra = Map::new();
        extra.insert(
            "constraints".into(),
            json!({"may_create": true, "max_instances": 100, "current_total_instances": st.lists.len()}),
        );
        self.collection(st, "lists", items, q, "lists", extra)
    }

    fn one_list(&self, st: &State, id: &str) -> Result<Reply, Reply> {
        let (_, l) = Inner::find_list(st, id)?;
        Ok(Reply::json(self.list_json(l)))
    }

    fn members(&self, st: &mut State, id: &str, q: &Query) -> Result<Reply, Reply> {
        let (_, list) = Inner::find_list(st, id)?;
        let since = q.time("since_last_changed")?;
        let before = q.time("before_last_changed")?;
        let since_opt = q.time("since_timestamp_opt")?;
        let before_opt = q.time("before_timestamp_opt")?;
        let status = q.get("status");
        if let Some(s) = status {
            if ![
                "subscribed",
                "unsubscribed",
                "cleaned",
                "pending",
                "transactional",
                "archived",
            ]
            .contains(&s)
            {
                return Err(invalid(&format!("`{s}` is not a valid status.")));
            }
        }
        let desc = q.desc()?;
        let mut rows: Vec<&MemberRec> = list
            .members
            .iter()
            .filter(|m| status.is_none_or(|s| m.status == s))
            .filter(|m| in_range(Some(m.last_changed), since, before))
            .filter(|m| in_range(Some(m.opt), since_opt, before_opt))
            .collect();
        match q.get("sort_field") {
            None => {}
            Some("last_changed") => rows.sort_by_key(|m| (m.last_changed, m.seq)),
            Some("timestamp_opt") => rows.sort_by_key(|m| (m.opt, m.seq)),
            Some("timestamp_signup") => rows.sort_by_key(|m| (m.signup.unwrap_or(0), m.seq)),
            Some(f) => return Err(invalid(&format!("`{f}` is not a valid sort_field."))),
        }
        if desc && q.get("sort_field").is_some() {
            rows.reverse();
        }
        let items = rows
            .into_iter()
            .map(|m| self.member_json(list, m))
            .collect();
        let mut extra = Map::new();
        extra.insert("list_id".into(), json!(list.id));
        let path = format!("lists/{}/members", list.id);
        self.collection(st, "members", items, q, &path, extra)
    }

    fn one_member(&self, st: &State, id: &str, hash: &str) -> Result<Reply, Reply> {
        let (_, list) = Inner::find_list(st, id)?;
        // A member may be addressed by its hash or by its email.
        let want = if hash.contains('@') {
            subscriber_hash(hash)
        } else {
            hash.to_lowercase()
        };
        let m = list
            .members
            .iter()
            .find(|m| m.id == want)
            .ok_or_else(not_found)?;
        Ok(Reply::json(trim_fields(
            self.member_json(list, m),
            &Query(Vec::new()),
        )))
    }

    fn merge_fields_of(&self, st: &mut State, id: &str, q: &Query) -> Result<Reply, Reply> {
        let (_, list) = Inner::find_list(st, id)?;
        let items = list
            .merge
            .iter()
            .map(|d| {
                let options = match d.kind {
                    "address" => json!({"default_country": 164}),
                    "phone" => json!({"phone_format": "US"}),
                    "birthday" => json!({"date_format": "MM/DD"}),
                    "date" => json!({"date_format": "YYYY-MM-DD"}),
                    "dropdown" => json!({"choices": PLANS}),
                    "text" => json!({"size": 25}),
                    _ => json!({}),
                };
                json!({
                    "merge_id": d.merge_id,
                    "tag": d.tag,
                    "name": d.name,
                    "type": d.kind,
                    "required": false,
                    "default_value": "",
                    "public": true,
                    "display_order": d.merge_id + 1,
                    "options": options,
                    "help_text": "",
                    "list_id": list.id,
                    "_links": links(&self.uri, &format!("lists/{}/merge-fields/{}", list.id, d.merge_id)),
                })
            })
            .collect();
        let mut extra = Map::new();
        extra.insert("list_id".into(), json!(list.id));
        let path = format!("lists/{}/merge-fields", list.id);
        self.collection(st, "merge_fields", items, q, &path, extra)
    }

    fn campaigns(&self, st: &mut State, q: &Query) -> Result<Reply, Reply> {
        let since_create = q.time("since_create_time")?;
        let before_create = q.time("before_create_time")?;
        let since_send = q.time("since_send_time")?;
        let before_send = q.time("before_send_time")?;
        let status = q.get("status");
        let kind = q.get("type");
        let list_id = q.get("list_id");
        let desc = q.desc()?;
        let mut rows: Vec<&CampaignRec> = st
            .campaigns
            .iter()
            .filter(|c| status.is_none_or(|s| c.status == s))
            .filter(|c| kind.is_none_or(|k| c.kind == k))
            .filter(|c| list_id.is_none_or(|l| st.lists.get(c.list).is_some_and(|x| x.id == l)))
            .filter(|c| in_range(Some(c.created), since_create, before_create))
            .filter(|c| in_range(c.sent, since_send, before_send))
            .collect();
        match q.get("sort_field") {
            None => {}
            Some("create_time") => rows.sort_by_key(|c| (c.created, c.seq)),
            Some("send_time") => rows.sort_by_key(|c| (c.sent.unwrap_or(i64::MAX), c.seq)),
            Some(f) => return Err(invalid(&format!("`{f}` is not a valid sort_field."))),
        }
        if desc && q.get("sort_field").is_some() {
            rows.reverse();
        }
        let items = rows
            .into_iter()
            .map(|c| self.campaign_json(st, c))
            .collect();
        self.collection(st, "campaigns", items, q, "campaigns", Map::new())
    }

    fn one_campaign(&self, st: &State, id: &str) -> Result<Reply, Reply> {
        let c = st
            .campaigns
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(not_found)?;
        Ok(Reply::json(self.campaign_json(st, c)))
    }

    fn reports(&self, st: &mut State, q: &Query) -> Result<Reply, Reply> {
        let since = q.time("since_send_time")?;
        let before = q.time("before_send_time")?;
        let kind = q.get("type");
        let mut rows: Vec<&CampaignRec> = st
            .campaigns
            .iter()
            .filter(|c| c.sent.is_some())
            .filter(|c| kind.is_none_or(|k| c.kind == k))
            .filter(|c| in_range(c.sent, since, before))
            .collect();
        // Newest first, as the web app lists them.
        rows.sort_by_key(|c| (std::cmp::Reverse(c.sent), c.seq));
        let items = rows.into_iter().map(|c| self.report_json(st, c)).collect();
        self.collection(st, "reports", items, q, "reports", Map::new())
    }

    fn one_report(&self, st: &State, id: &str) -> Result<Reply, Reply> {
        let c = st
            .campaigns
            .iter()
            .find(|c| c.id == id && c.sent.is_some())
            .ok_or_else(not_found)?;
        Ok(Reply::json(self.report_json(st, c)))
    }

    fn automations(&self, st: &mut State, q: &Query) -> Result<Reply, Reply> {
        let since_create = q.time("since_create_time")?;
        let before_create = q.time("before_create_time")?;
        let since_start = q.time("since_start_time")?;
        let before_start = q.time("before_start_time")?;
        let status = q.get("status");
        let mut rows: Vec<&AutomationRec> = st
            .automations
            .iter()
            .filter(|a| status.is_none_or(|s| a.status == s))
            .filter(|a| in_range(Some(a.created), since_create, before_create))
            .filter(|a| {
                (since_start.is_none() && before_start.is_none())
                    || in_range(a.started, since_start, before_start)
            })
            .collect();
        rows.sort_by_key(|a| (a.created, a.seq));
        let items = rows
            .into_iter()
            .map(|a| self.automation_json(st, a))
            .collect();
        self.collection(st, "automations", items, q, "automations", Map::new())
    }

    fn emails(&self, st: &mut State, id: &str, q: &Query) -> Result<Reply, Reply> {
        let a = st
            .automations
            .iter()
            .find(|a| a.id == id)
            .ok_or_else(not_found)?;
        let items: Vec<Value> = a.emails.iter().map(|e| self.email_json(st, a, e)).collect();
        // Not paged: every email in one answer.
        let n = items.len().max(1).to_string();
        let mut pairs: Vec<(String, String)> =
            q.0.iter()
                .filter(|(k, _)| k != "count" && k != "offset")
                .cloned()
                .collect();
        pairs.push(("count".into(), n));
        let path = format!("automations/{id}/emails");
        self.collection(st, "emails", items, &Query(pairs), &path, Map::new())
    }

    // ----- OAuth ------------------------------------------------------------

    fn token(&self, req: &Request) -> Reply {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let basic = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())));
        let (id, secret) = match (form.get("client_id"), form.get("client_secret"), basic) {
            (Some(id), Some(secret), _) => (id.clone(), secret.clone()),
            (_, _, Some((id, secret))) => (
                url::form_urlencoded::parse(id.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .next()
                    .unwrap_or(id),
                url::form_urlencoded::parse(secret.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .next()
                    .unwrap_or(secret),
            ),
            _ => return Reply::oauth_error(401, "invalid_client", "Missing client credentials"),
        };
        if id != self.cfg.client_id || secret != self.cfg.client_secret {
            return Reply::oauth_error(401, "invalid_client", "Invalid client credentials");
        }
        if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Reply::oauth_error(
                400,
                "unsupported_grant_type",
                "Only authorization_code is supported",
            );
        }
        let Some(code) = form.get("code") else {
            return Reply::oauth_error(400, "invalid_request", "Missing code");
        };
        let token = {
            let mut st = self.state();
            if !st.codes.remove(code) {
                return Reply::oauth_error(400, "invalid_grant", "Invalid authorization code");
            }
            st.next_token += 1;
            let token = format!(
                "mc-oauth-{}-{}",
                st.next_token,
                hex(mix(self.cfg.seed ^ st.next_token), 24)
            );
            st.tokens.insert(token.clone());
            token
        };
        let mut body = json!({"access_token": token, "expires_in": 0, "scope": null});
        if let Some(t) = &self.cfg.token_type {
            body["token_type"] = json!(t);
        }
        Reply::json(body)
    }

    fn metadata(&self, req: &Request) -> Reply {
        let token = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("OAuth "))
            .map(|t| t.trim().to_owned());
        let st = self.state();
        match token {
            Some(t) if st.tokens.contains(&t) && !st.revoked.contains(&t) => Reply::json(json!({
                "dc": self.cfg.dc,
                "role": "owner",
                "accountname": self.cfg.account_name,
                "user_id": self.cfg.login_id.parse::<u64>().unwrap_or(0),
                "login": {
                    "email": self.cfg.email,
                    "avatar": null,
                    "login_id": self.cfg.login_id.parse::<u64>().unwrap_or(0),
                    "login_name": "olive.owner",
                    "login_email": self.cfg.email,
                },
                "login_url": "https://login.mailchimp.com",
                "api_endpoint": self.uri,
            })),
            _ => Reply::oauth_error(401, "invalid_token", "Invalid token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(fake: &MailchimpFake, path: &str, token: Option<&str>) -> (u16, Value, String) {
        let mut req = reqwest::Client::new().get(format!("{}/3.0/{path}", fake.uri()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let mime = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, mime)
    }

    #[test]
    fn handles_are_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<MailchimpFake>();
    }

    #[tokio::test]
    async fn collections_page_filter_sort_and_refuse_big_counts() {
        let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
        let key = fake.api_key();
        let list = fake.list_ids()[0].clone();
        let (s, body, _) = get(&fake, &format!("lists/{list}/members"), Some(&key)).await;
        assert_eq!(s, 200);
        assert_eq!(
            body["members"].as_array().map(Vec::len),
            Some(10),
            "default count"
        );
        assert_eq!(body["total_items"], 1_200);
        assert_eq!(body["list_id"], json!(list));
        let mut all = Vec::new();
        for offset in (0..1_200).step_by(1000) {
            let (_, page, _) = get(
                &fake,
                &format!("lists/{list}/members?count=1000&offset={offset}&sort_field=last_changed&sort_dir=ASC&exclude_fields=members._links"),
                Some(&key),
            )
            .await;
            for m in page["members"].as_array().expect("members") {
                assert!(m.get("_links").is_none());
                all.push((
                    m["last_changed"].as_str().expect("t").to_owned(),
                    m["id"].as_str().expect("id").to_owned(),
                ));
            }
        }
        assert_eq!(all.len(), 1_200);
        assert!(
            all.windows(2).all(|w| w[0].0 <= w[1].0),
            "sorted by last_changed"
        );
        let mut ids: Vec<String> = all.iter().map(|(_, id)| id.clone()).collect();
        ids.sort();
        let mut truth = fake.member_ids(&list);
        truth.sort();
        assert_eq!(ids, truth);
        // since includes its bound, before excludes it.
        let t = all[500].0.clone();
        let (_, page, _) = get(
            &fake,
            &format!(
                "lists/{list}/members?count=1000&since_last_changed={}",
                t.replace('+', "%2B")
            ),
            Some(&key),
        )
        .await;
        let want = all.iter().filter(|(x, _)| *x >= t).count();
        assert_eq!(page["total_items"], want);
        let (_, page, _) = get(
            &fake,
            &format!(
                "lists/{list}/members?count=1&before_last_changed={}",
                t.replace('+', "%2B")
            ),
            Some(&key),
        )
        .await;
        assert_eq!(
            page["total_items"],
            all.iter().filter(|(x, _)| *x < t).count()
        );
        // count > 1000 is refused with a problem document.
        let (s, body, mime) = get(
            &fake,
            &format!("lists/{list}/members?count=1001"),
            Some(&key),
        )
        .await;
        assert_eq!(s, 400);
        assert!(mime.starts_with("application/problem+json"), "{mime}");
        for k in ["type", "title", "status", "detail", "instance"] {
            assert!(body.get(k).is_some(), "{k} in {body}");
        }
        // 401 without or with a bad token, 404 for an unknown audience.
        assert_eq!(get(&fake, "lists", None).await.0, 401);
        assert_eq!(get(&fake, "lists", Some("nope-us6")).await.0, 401);
        assert_eq!(get(&fake, "lists/nope/members", Some(&key)).await.0, 404);
        // fields keeps only what is asked for.
        let (_, body, _) = get(&fake, "lists?fields=lists.id,total_items", Some(&key)).await;
        assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
        assert_eq!(body["lists"][0].as_object().map(|o| o.len()), Some(1));
    }

    #[tokio::test]
    async fn members_are_addressed_by_the_hash_of_their_lower_cased_email() {
        let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
        let list = fake.list_ids()[1].clone();
        let id = fake.member_ids(&list)[7].clone();
        let m = fake.member(&list, &id).expect("member");
        let email = m["email_address"].as_str().expect("email");
        assert_eq!(subscriber_hash(email), id);
        assert_eq!(subscriber_hash(&email.to_uppercase()), id);
        let (s, body, _) = get(
            &fake,
            &format!("lists/{list}/members/{id}"),
            Some(&fake.access_token()),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(body["id"], json!(id));
    }
}
