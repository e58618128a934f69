//! A hostile-upstream mode shared by the provider fakes.
//!
//! Each fake ([`crate::testkit::hubspot::HubSpotFake`],
//! [`crate::testkit::mailchimp::MailchimpFake`],
//! [`crate::testkit::constant_contact::ConstantContactFake`]) can be switched
//! into one [`Hostility`] with `set_hostility(Some(h))` and back with
//! `set_hostility(None)`. While switched, the fake answers as a broken or
//! malicious upstream of that class would: the data it serves is the same
//! (so a test knows the truth), but headers, cursors, counts, record bodies
//! or the connection itself are damaged.
//!
//! The classes follow the ways a real upstream has gone wrong for this kind
//! of connector (see issue 9): huge or absurd headers, listings that never
//! end or end early, records that cannot be decoded, NUL characters where a
//! database refuses them, compressed bodies that inflate without bound, and
//! connections dropped mid-answer on the token endpoints.
//!
//! ```no_run
//! # async fn demo() {
//! use headwater::testkit::hostile::Hostility;
//! use headwater::testkit::{FakeConfig, HubSpotFake};
//!
//! let fake = HubSpotFake::start(FakeConfig::default()).await;
//! fake.set_hostility(Some(Hostility::TruncatedListing));
//! // ... run a sync against fake.uri() and check its report ...
//! fake.set_hostility(None);
//! # }
//! ```
//!
//! Requests are sorted into token calls (OAuth token, token information,
//! metadata), data calls (listings, searches, batch reads of records) and
//! others (properties, pipelines, custom field definitions, account calls);
//! each class says which of them it damages.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::{json, Map, Value};
use wiremock::{Request, ResponseTemplate};

/// One class of hostile upstream behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hostility {
    /// Every call other than a token call answers 429 with
    /// `Retry-After: 1e20` (HubSpot's body names the `DAILY` policy, so the
    /// daily-quota path sees it too).
    HugeRetryAfter,
    /// Every answer carries rate-limit headers with absurd values: larger
    /// than `u64`, negative, `NaN`, `1e400`, zero intervals.
    AbsurdRateLimitHeaders,
    /// Every answer carries two 64 KiB header values, one of them in the
    /// provider's rate-limit header.
    LongHeader,
    /// Every page of a data listing has a next cursor. With
    /// `always_new: false` the cursor is the same one forever; with
    /// `always_new: true` it is a new one each time (the records repeat).
    /// Mailchimp, which pages by offset, reports a `total_items` of one
    /// billion and serves its first page again past the real end.
    EndlessCursor {
        /// A fresh cursor on every page instead of one repeated cursor.
        always_new: bool,
    },
    /// The first page of each data listing ends it early: HubSpot's first
    /// page has no `paging`, Constant Contact's no `_links.next`. Where the
    /// first page has no next cursor to drop (a listing that fits one page,
    /// and Mailchimp's offset paging), it is short instead: half its
    /// records, with `total_items` (and any `total` or `…_count`) equal to
    /// what it holds.
    TruncatedListing,
    /// On every page of a data listing, four records are undecodable: one
    /// holds an unpaired surrogate (`"\ud800"`), one invalid UTF-8 bytes,
    /// one a value nested 200 arrays deep, and one `""` and `null` in typed
    /// (date) fields (HubSpot: `archivedAt: ""`).
    BadRecords,
    /// NUL characters (`\u0000`) in property labels, descriptions and
    /// custom field names, in a field name of the first record of each page
    /// and in the id of the last record of each page.
    NulInNames,
    /// Every data call answers 200 with `Content-Encoding: gzip` and a body
    /// of about 1 MiB that inflates to more than 1 GiB.
    GzipBomb,
    /// Token calls (HubSpot's `POST /oauth/v1/token` and
    /// `GET /oauth/v1/access-tokens/{token}`, Mailchimp's token and metadata
    /// endpoints, Constant Contact's token endpoint) answer a status line
    /// and headers promising 64 KiB, then close the connection after a few
    /// bytes.
    DroppedConnection,
}

impl Hostility {
    /// Every class, one of each variant (both kinds of endless cursor).
    pub const ALL: [Hostility; 10] = [
        Hostility::HugeRetryAfter,
        Hostility::AbsurdRateLimitHeaders,
        Hostility::LongHeader,
        Hostility::EndlessCursor { always_new: false },
        Hostility::EndlessCursor { always_new: true },
        Hostility::TruncatedListing,
        Hostility::BadRecords,
        Hostility::NulInNames,
        Hostility::GzipBomb,
        Hostility::DroppedConnection,
    ];

    /// A short stable name, for tables and tenant names
    /// (`huge-retry-after`, `endless-cursor-repeat`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Hostility::HugeRetryAfter => "huge-retry-after",
            Hostility::AbsurdRateLimitHeaders => "absurd-rate-limit-headers",
            Hostility::LongHeader => "long-header",
            Hostility::EndlessCursor { always_new: false } => "endless-cursor-repeat",
            Hostility::EndlessCursor { always_new: true } => "endless-cursor-new",
            Hostility::TruncatedListing => "truncated-listing",
            Hostility::BadRecords => "bad-records",
            Hostility::NulInNames => "nul-in-names",
            Hostility::GzipBomb => "gzip-bomb",
            Hostility::DroppedConnection => "dropped-connection",
        }
    }
}

impl fmt::Display for Hostility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which fake a response comes from (their wire formats differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    HubSpot,
    Mailchimp,
    ConstantContact,
}

/// A response on its way out of a fake, before it becomes a
/// [`ResponseTemplate`].
#[derive(Debug)]
pub(crate) struct Wire {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<(Vec<u8>, String)>,
}

impl Wire {
    /// A response from a fake's own parts.
    pub(crate) fn new(
        status: u16,
        headers: impl IntoIterator<Item = (String, String)>,
        body: Option<(Vec<u8>, &str)>,
    ) -> Wire {
        Wire {
            status,
            headers: headers.into_iter().collect(),
            body: body.map(|(b, mime)| (b, mime.to_owned())),
        }
    }

    /// The template wiremock serves.
    pub(crate) fn into_template(self) -> ResponseTemplate {
        let mut t = ResponseTemplate::new(self.status);
        if let Some((body, mime)) = self.body {
            t = t.set_body_raw(body, &mime);
        }
        // After the body: a `Content-Length` set here replaces the computed one.
        for (name, value) in &self.headers {
            t = t.insert_header(name.as_str(), value.as_str());
        }
        t
    }
}

/// What kind of call a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    Data,
    Other,
}

fn kind(provider: Provider, method: &str, path: &str) -> Kind {
    match provider {
        Provider::HubSpot => {
            if path.starts_with("/oauth/") {
                Kind::Token
            } else if path.starts_with("/crm/v3/properties")
                || path.starts_with("/crm/v3/pipelines")
            {
                Kind::Other
            } else if path.starts_with("/crm/") {
                Kind::Data
            } else {
                Kind::Other
            }
        }
        Provider::Mailchimp => {
            if path.starts_with("/oauth2/") {
                Kind::Token
            } else if method == "GET"
                && path.starts_with("/3.0/")
                && path.trim_end_matches('/') != "/3.0"
                && !path.contains("merge-fields")
            {
                Kind::Data
            } else {
                Kind::Other
            }
        }
        Provider::ConstantContact => {
            if path.contains("/oauth2/") {
                Kind::Token
            } else if path.ends_with("/account/summary") {
                Kind::Other
            } else if path.contains("/v3/") {
                Kind::Data
            } else {
                Kind::Other
            }
        }
    }
}

/// The query parameter that carries a listing's cursor (Mailchimp: offset).
fn cursor_param(provider: Provider) -> &'static str {
    match provider {
        Provider::HubSpot => "after",
        Provider::Mailchimp => "offset",
        Provider::ConstantContact => "cursor",
    }
}

fn query_value(req: &Request, key: &str) -> Option<String> {
    req.url
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// True when the request asks for the first page of a listing.
fn is_first_page(provider: Provider, req: &Request) -> bool {
    match query_value(req, cursor_param(provider)) {
        None => true,
        Some(v) => v.is_empty() || (provider == Provider::Mailchimp && v.trim() == "0"),
    }
}

const CURSOR_PREFIX: &str = "hostile-";
const SURROGATE: &str = "@@HOSTILE_SURROGATE@@";
const BAD_UTF8: &str = "@@HOSTILE_BAD_UTF8@@";
const DEEP: &str = "@@HOSTILE_DEEP@@";
const NESTING: usize = 200;
const LONG: usize = 64 * 1024;
const BILLION: u64 = 1_000_000_000;

/// The switch each fake holds, and what a hostile mode remembers.
#[derive(Debug, Default)]
pub(crate) struct HostileSwitch {
    state: Mutex<SwitchState>,
}

#[derive(Debug, Default)]
struct SwitchState {
    hostility: Option<Hostility>,
    /// Cursors minted so far (for `EndlessCursor { always_new: true }`).
    cursors: u64,
    /// The first real page of each data listing, by path.
    first_pages: HashMap<String, Vec<u8>>,
    /// Mailchimp: the real `total_items` of each listing, by path.
    totals: HashMap<String, u64>,
}

impl HostileSwitch {
    fn state(&self) -> MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches the mode (forgetting what the previous one remembered).
    pub(crate) fn set(&self, hostility: Option<Hostility>) {
        *self.state() = SwitchState {
            hostility,
            ..SwitchState::default()
        };
    }

    /// The current mode.
    pub(crate) fn get(&self) -> Option<Hostility> {
        self.state().hostility
    }

    /// A response that replaces the fake's own, if the mode asks for one.
    pub(crate) fn before(&self, provider: Provider, req: &Request) -> Option<Wire> {
        let st = self.state();
        let h = st.hostility?;
        let path = req.url.path();
        let kind = kind(provider, req.method.as_str(), path);
        match h {
            Hostility::HugeRetryAfter if kind != Kind::Token => {
                Some(rate_limited(provider, "1e20"))
            }
            Hostility::DroppedConnection if kind == Kind::Token => Some(dropped()),
            Hostility::GzipBomb if kind == Kind::Data => Some(Wire::new(
                200,
                [("Content-Encoding".to_owned(), "gzip".to_owned())],
                Some((gzip_bomb().to_vec(), "application/json")),
            )),
            Hostility::EndlessCursor { .. } if kind == Kind::Data => {
                let cursor = query_value(req, cursor_param(provider))?;
                let past_end = match provider {
                    Provider::Mailchimp => {
                        let offset: u64 = cursor.trim().parse().ok()?;
                        offset >= *st.totals.get(path)?
                    }
                    _ => cursor.starts_with(CURSOR_PREFIX),
                };
                if !past_end {
                    return None;
                }
                let body = st.first_pages.get(path)?.clone();
                Some(Wire::new(200, [], Some((body, "application/json"))))
            }
            _ => None,
        }
    }

    /// The fake's response (or [`HostileSwitch::before`]'s), damaged as the
    /// mode asks.
    pub(crate) fn after(&self, provider: Provider, req: &Request, mut wire: Wire) -> Wire {
        let Some(h) = self.get() else {
            return wire;
        };
        let path = req.url.path().to_owned();
        let kind = kind(provider, req.method.as_str(), &path);
        match h {
            Hostility::AbsurdRateLimitHeaders => {
                for (name, value) in ABSURD_HEADERS {
                    wire.headers.push(((*name).to_owned(), (*value).to_owned()));
                }
                wire
            }
            Hostility::LongHeader => {
                let header = match provider {
                    Provider::HubSpot => "X-HubSpot-RateLimit-Remaining",
                    _ => "X-RateLimit-Remaining",
                };
                wire.headers.push((header.to_owned(), "9".repeat(LONG)));
                wire.headers
                    .push(("X-Request-Id".to_owned(), "r".repeat(LONG)));
                wire
            }
            Hostility::EndlessCursor { always_new } if kind == Kind::Data => {
                self.rewrite_json(&mut wire, |st, body| {
                    endless(st, provider, req, &path, always_new, body)
                });
                wire
            }
            Hostility::TruncatedListing if kind == Kind::Data && is_first_page(provider, req) => {
                self.rewrite_json(&mut wire, |_, body| truncate(provider, body));
                wire
            }
            Hostility::BadRecords if kind == Kind::Data => {
                self.rewrite_json(&mut wire, |_, body| bad_records(provider, body));
                wire
            }
            Hostility::NulInNames if kind != Kind::Token => {
                let names =
                    path.contains("merge-fields") || path.ends_with("contact_custom_fields");
                self.rewrite_json(&mut wire, |_, body| {
                    let labels = nul_labels(body, names);
                    let records = kind == Kind::Data && nul_records(provider, body);
                    labels || records
                });
                wire
            }
            _ => wire,
        }
    }

    /// Parses a successful JSON body, lets `f` change it (returning whether
    /// it did), and writes it back with the placeholders turned into the
    /// bytes JSON values cannot hold.
    fn rewrite_json(&self, wire: &mut Wire, f: impl FnOnce(&mut SwitchState, &mut Value) -> bool) {
        if !(200..300).contains(&wire.status) {
            return;
        }
        let Some((bytes, _)) = &mut wire.body else {
            return;
        };
        let Ok(mut value) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let changed = f(&mut self.state(), &mut value);
        if changed {
            *bytes = finish(value.to_string());
        }
    }
}

const ABSURD_HEADERS: &[(&str, &str)] = &[
    ("X-HubSpot-RateLimit-Max", "18446744073709551616000"),
    ("X-HubSpot-RateLimit-Remaining", "-1"),
    ("X-HubSpot-RateLimit-Interval-Milliseconds", "0"),
    ("X-HubSpot-RateLimit-Daily", "1e400"),
    ("X-HubSpot-RateLimit-Daily-Remaining", "NaN"),
    ("X-HubSpot-RateLimit-Secondly", "-9223372036854775809"),
    ("X-HubSpot-RateLimit-Secondly-Remaining", "0x10"),
    ("X-RateLimit-Limit", "99999999999999999999999999"),
    ("X-RateLimit-Remaining", "-99999999999999999999"),
    ("X-RateLimit-Reset", "1e20"),
    ("RateLimit-Reset", "inf"),
];

/// The provider's 429 with `Retry-After: {retry_after}`.
fn rate_limited(provider: Provider, retry_after: &str) -> Wire {
    let body = match provider {
        Provider::HubSpot => json!({
            "status": "error",
            "message": "You have reached your daily limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": "00000000-0000-4000-8000-000000000429",
            "policyName": "DAILY",
            "groupName": "hostile",
        }),
        Provider::Mailchimp => json!({
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": "Too Many Requests",
            "status": 429,
            "detail": "You have exceeded the limit of 10 simultaneous connections.",
            "instance": "00000000-0000-4000-8000-000000000429",
        }),
        Provider::ConstantContact => {
            json!({"error_key": "throttled", "error_message": "Too Many Requests"})
        }
    };
    Wire::new(
        429,
        [("Retry-After".to_owned(), retry_after.to_owned())],
        Some((body.to_string().into_bytes(), "application/json")),
    )
}

/// Headers that promise 64 KiB, and a few bytes of a token answer: the
/// server closes the connection when the body ends short.
fn dropped() -> Wire {
    Wire::new(
        200,
        [("Content-Length".to_owned(), LONG.to_string())],
        Some((b"{\"access_token\":\"".to_vec(), "application/json")),
    )
}

/// A gzip body (about 1 MiB) inflating to 1.1 GiB of zeros: identical gzip
/// members of 1 MiB each, concatenated (HTTP clients decode all members).
fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let member = enc
            .write_all(&vec![0u8; 1 << 20])
            .and_then(|()| enc.finish())
            .unwrap_or_default();
        member.repeat(1100)
    })
}

/// The array of records in a listing page: HubSpot's `results`, otherwise
/// the first top-level array of objects whose name does not start with `_`.
fn records_mut(provider: Provider, body: &mut Value) -> Option<&mut Vec<Value>> {
    let obj = body.as_object_mut()?;
    let key = if provider == Provider::HubSpot {
        "results".to_owned()
    } else {
        obj.iter()
            .find(|(k, v)| {
                !k.starts_with('_')
                    && v.as_array()
                        .is_some_and(|a| a.first().is_some_and(Value::is_object))
            })
            .map(|(k, _)| k.clone())?
    };
    obj.get_mut(&key)?.as_array_mut()
}

fn endless(
    st: &mut SwitchState,
    provider: Provider,
    req: &Request,
    path: &str,
    always_new: bool,
    body: &mut Value,
) -> bool {
    if records_mut(provider, body).is_none_or(|r| r.is_empty()) {
        return false;
    }
    let first = is_first_page(provider, req);
    if first && !st.first_pages.contains_key(path) {
        st.first_pages
            .insert(path.to_owned(), body.to_string().into_bytes());
    }
    let cursor = if always_new {
        st.cursors += 1;
        format!("{CURSOR_PREFIX}{}", st.cursors)
    } else {
        format!("{CURSOR_PREFIX}0")
    };
    let Some(obj) = body.as_object_mut() else {
        return false;
    };
    match provider {
        Provider::HubSpot => {
            let link = format!("{}?after={cursor}", req.url.path());
            obj.insert(
                "paging".into(),
                json!({"next": {"after": cursor, "link": link}}),
            );
        }
        Provider::ConstantContact => {
            let href = format!("{}?cursor={cursor}", req.url.path());
            obj.insert("_links".into(), json!({"next": {"href": href}}));
        }
        Provider::Mailchimp => {
            if let Some(total) = obj.get("total_items").and_then(Value::as_u64) {
                if total < BILLION {
                    st.totals.entry(path.to_owned()).or_insert(total);
                }
            }
            obj.insert("total_items".into(), json!(BILLION));
        }
    }
    true
}

fn truncate(provider: Provider, body: &mut Value) -> bool {
    let cut = match provider {
        Provider::HubSpot => body
            .as_object_mut()
            .is_some_and(|o| o.remove("paging").is_some()),
        Provider::ConstantContact => body
            .get_mut("_links")
            .and_then(Value::as_object_mut)
            .is_some_and(|l| l.remove("next").is_some()),
        Provider::Mailchimp => false,
    };
    if cut {
        return true;
    }
    // The listing fits one page (or pages by offset): a short page instead,
    // with counts that agree with it.
    let Some(records) = records_mut(provider, body) else {
        return false;
    };
    if records.len() < 2 {
        return false;
    }
    let keep = records.len() / 2;
    records.truncate(keep);
    if let Some(o) = body.as_object_mut() {
        for (k, v) in o.iter_mut() {
            if (k == "total_items" || k == "total" || k.ends_with("_count")) && v.is_u64() {
                *v = json!(keep);
            }
        }
    }
    true
}

/// True for `2024-03-01T…` strings.
fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 11
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
}

fn is_id_key(k: &str) -> bool {
    k == "id" || k.ends_with("_id") || k.ends_with("Id") || k.contains("email")
}

/// The first string value in `v` that is not an id or a time, depth first.
fn text_leaf(v: &mut Value) -> Option<&mut Value> {
    match v {
        Value::Object(m) => {
            let key = m
                .iter()
                .find(|(k, v)| {
                    !is_id_key(k)
                        && match v {
                            Value::String(s) => !s.is_empty() && !looks_like_time(s),
                            Value::Object(_) => true,
                            _ => false,
                        }
                })
                .map(|(k, _)| k.clone());
            let key = key?;
            let child = m.get_mut(&key)?;
            if child.is_string() {
                Some(child)
            } else {
                text_leaf(child)
            }
        }
        _ => None,
    }
}

fn set_text(record: &mut Value, placeholder: &str) -> bool {
    if let Some(leaf) = text_leaf(record) {
        *leaf = Value::String(placeholder.to_owned());
        return true;
    }
    if let Some(o) = record.as_object_mut() {
        o.insert("hostile".into(), Value::String(placeholder.to_owned()));
        return true;
    }
    false
}

fn blank_typed(provider: Provider, record: &mut Value) -> bool {
    let Some(o) = record.as_object_mut() else {
        return false;
    };
    let times: Vec<String> = o
        .iter()
        .filter(|(_, v)| v.as_str().is_some_and(looks_like_time))
        .map(|(k, _)| k.clone())
        .collect();
    for (i, k) in times.iter().enumerate() {
        o.insert(k.clone(), if i % 2 == 0 { json!("") } else { Value::Null });
    }
    if provider == Provider::HubSpot {
        o.insert("archivedAt".into(), json!(""));
    }
    if let Some(fields) = o.get_mut("custom_fields").and_then(Value::as_array_mut) {
        for f in fields.iter_mut().filter_map(Value::as_object_mut) {
            f.insert("value".into(), Value::Null);
        }
    }
    true
}

fn bad_records(provider: Provider, body: &mut Value) -> bool {
    let Some(records) = records_mut(provider, body) else {
        return false;
    };
    let mut changed = false;
    for (k, record) in records.iter_mut().take(4).enumerate() {
        changed |= match k {
            0 => set_text(record, SURROGATE),
            1 => set_text(record, BAD_UTF8),
            2 => set_text(record, DEEP),
            _ => blank_typed(provider, record),
        };
    }
    changed
}

/// Appends a NUL to every label, description and group name (and, with
/// `names`, every `name`); true when it changed anything.
fn nul_labels(v: &mut Value, names: bool) -> bool {
    let mut changed = false;
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let label = matches!(k.as_str(), "label" | "description" | "groupName")
                    || (names && k == "name");
                match child {
                    Value::String(s) if label => {
                        s.push('\0');
                        changed = true;
                    }
                    _ => changed |= nul_labels(child, names),
                }
            }
        }
        Value::Array(a) => {
            for c in a.iter_mut() {
                changed |= nul_labels(c, names);
            }
        }
        _ => {}
    }
    changed
}

fn id_key(o: &Map<String, Value>) -> Option<String> {
    if o.get("id").is_some_and(Value::is_string) {
        return Some("id".into());
    }
    o.iter()
        .find(|(k, v)| k.ends_with("_id") && v.is_string())
        .map(|(k, _)| k.clone())
}

fn nul_records(provider: Provider, body: &mut Value) -> bool {
    let Some(records) = records_mut(provider, body) else {
        return false;
    };
    if let Some(o) = records.first_mut().and_then(Value::as_object_mut) {
        o.insert("hostile\0field".into(), json!("x"));
        if let Some(p) = o.get_mut("properties").and_then(Value::as_object_mut) {
            p.insert("hostile\0property".into(), json!("x"));
        }
    }
    if let Some(o) = records.last_mut().and_then(Value::as_object_mut) {
        if let Some(k) = id_key(o) {
            if let Some(Value::String(id)) = o.get_mut(&k) {
                id.push('\0');
            }
        }
    }
    true
}

/// Serialized JSON with the placeholders replaced by what `serde_json`
/// cannot produce.
fn finish(text: String) -> Vec<u8> {
    if !text.contains("@@HOSTILE_") {
        return text.into_bytes();
    }
    let deep = format!("{}\"deep\"{}", "[".repeat(NESTING), "]".repeat(NESTING));
    let text = text
        .replace(SURROGATE, "\\ud800 unpaired")
        .replace(&format!("\"{DEEP}\""), &deep);
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(BAD_UTF8) {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        out.extend_from_slice(b"bad \xff\xfe\xfd bytes");
        rest = &rest[at + BAD_UTF8.len()..];
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_hostile_bytes() {
        let v = json!({"results": [{"a": SURROGATE}, {"a": BAD_UTF8}, {"a": DEEP}]});
        let out = finish(v.to_string());
        assert!(std::str::from_utf8(&out).is_err(), "invalid UTF-8 is there");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("\\ud800"));
        assert!(text.contains(&"[".repeat(NESTING)));
        assert!(serde_json::from_slice::<Value>(&out).is_err());
    }

    #[test]
    fn bomb_inflates_past_a_gibibyte() {
        let bomb = gzip_bomb();
        assert!(bomb.len() < 8 << 20, "small on the wire: {}", bomb.len());
        // One member inflates to 1 MiB; the body is 1,100 of them.
        let mut one = flate2::read::GzDecoder::new(bomb);
        let n = std::io::copy(&mut one, &mut std::io::sink()).expect("inflate");
        assert_eq!(n, 1 << 20);
        let member = bomb.len() / 1100;
        assert_eq!(bomb.len(), member * 1100);
        assert!(bomb.chunks(member).all(|c| c == &bomb[..member]));
        assert!(n * 1100 > 1 << 30);
    }
}

#[cfg(test)]
mod wire_tests {
    use super::Hostility;
    use crate::testkit::hubspot::{FakeConfig, HubSpotFake};
    use std::time::{Duration, Instant};

    async fn get(fake: &HubSpotFake, path: &str) -> (u16, Vec<u8>) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", fake.uri()))
            .bearer_auth("pat-fake-token")
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("body").to_vec())
    }

    /// The modes change what a client sees, and `None` restores it.
    #[tokio::test]
    async fn modes_damage_hubspot_pages() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let list = "/crm/v3/objects/contacts?limit=10";
        fake.set_hostility(Some(Hostility::NulInNames));
        let (_, body) = get(&fake, list).await;
        let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let id = page["results"][9]["id"].as_str().expect("id");
        assert!(id.ends_with('\0'), "{id:?}");
        let (_, body) = get(&fake, "/crm/v3/properties/contacts").await;
        let props: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let label = props["results"][0]["label"].as_str().expect("label");
        assert!(label.ends_with('\0'), "{label:?}");

        fake.set_hostility(Some(Hostility::TruncatedListing));
        let (_, body) = get(&fake, list).await;
        let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(page.get("paging").is_none());

        fake.set_hostility(Some(Hostility::BadRecords));
        let (_, body) = get(&fake, list).await;
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());

        fake.set_hostility(Some(Hostility::HugeRetryAfter));
        let (status, _) = get(&fake, list).await;
        assert_eq!(status, 429);

        fake.set_hostility(None);
        let (status, body) = get(&fake, list).await;
        assert_eq!(status, 200);
        let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(page["paging"]["next"]["after"].is_string());
    }

    /// A dropped connection ends the answer at once (an error), not a stall.
    #[tokio::test]
    async fn dropped_connection_fails_fast() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        fake.set_hostility(Some(Hostility::DroppedConnection));
        let started = Instant::now();
        let got = reqwest::Client::new()
            .get(format!("{}/oauth/v1/access-tokens/CO-secret", fake.uri()))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let got = match got {
            Ok(r) => r.bytes().await.map(|b| b.len()),
            Err(e) => Err(e),
        };
        eprintln!("{got:?} after {:?}", started.elapsed());
        assert!(got.is_err(), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
