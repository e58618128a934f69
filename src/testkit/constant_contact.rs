//! A stateful fake of Constant Contact's v3 API and its OAuth server,
//! served over HTTP on `127.0.0.1`.
//!
//! [`ConstantContactFake`] is written by hand from the v3 API description
//! (`/work/shared/specs/constant-contact`, schemas `Contacts`,
//! `ContactResource`, `ContactListArray`, `CustomFields`,
//! `PagedEmailCampaignResponse`, `EmailCampaign`, `EmailCampaignActivity`,
//! `BulkEmailCampaignSummariesPage`, `Customer`) and the documented facts
//! about limits, errors and tokens. It serves:
//!
//! | Method and path | Notes |
//! |---|---|
//! | `GET /v3/account/summary` | the account (`Customer`) |
//! | `GET /v3/contact_lists` | `limit` 1–1000 (the spec's maximum; its text says 1–500; default 50), `include_count`, `include_membership_count` |
//! | `GET /v3/contacts` | `limit` 1–500 (default 50), `status` (`all`, `active`, `deleted`, …; default: not deleted), `updated_after`, `updated_before`, `include` (`custom_fields`, `list_memberships`, `taggings`), `include_count`, `segment_id` (202 first) |
//! | `GET /v3/contact_custom_fields` | `limit` 1–100 (default 50) |
//! | `GET /v3/emails` | `limit` 1–500 (default 50), `after_date`, `before_date` on `updated_at` |
//! | `GET /v3/emails/{campaign_id}` | with `campaign_activities` |
//! | `GET /v3/emails/activities/{campaign_activity_id}` | 404 for activities of a removed campaign |
//! | `GET /v3/reports/summary_reports/email_campaign_summaries` | `limit` (default 50, max 500), newest `last_sent_date` first |
//! | `POST /oauth2/default/v1/token` | HTTP Basic client auth; `authorization_code` (PKCE S256 checked) and `refresh_token` grants |
//!
//! Every listing pages by cursor: `_links.next.href` is a path from the host
//! root, `/v3/{listing}?cursor=…` (base64 of the query, as Constant Contact
//! sends), absent on the last page. With [`FakeConfig::path_prefix`] the
//! fake sits behind a path (a proxy): requests must carry the prefix, links
//! do not (as a proxy passing Constant Contact's answers through).
//!
//! # Errors, limits, tokens
//! - API errors answer a JSON array of `{error_key, error_message}` (the
//!   official client's `APIErrorSchemaInner`).
//! - 429s answer the documented objects: `{"error_key":"throttled",
//!   "error_message":"Too Many Requests"}` past [`FakeConfig::rate_limit`]
//!   requests in any second, `{"error_key":"quota_exceeded",
//!   "error_message":"Limit Exceeded"}` once [`FakeConfig::daily_quota`]
//!   requests were accepted "today"; no rate-limit headers.
//!   [`ConstantContactFake::reset_day`] starts a new day.
//! - Access tokens expire ([`FakeConfig::access_token_ttl`], 24 h by
//!   default; [`ConstantContactFake::expire_access_tokens`]); an expired or
//!   unknown token answers 401. Refresh tokens rotate by default (each
//!   refresh spends the old one; reusing it answers `invalid_grant`) or are
//!   long-lived ([`FakeConfig::rotate_refresh_tokens`]).
//!
//! # Data
//! Generated from [`FakeConfig::seed`] and kept in memory: contacts (some
//! deleted), lists, custom fields, campaigns with their activities and
//! summaries. Timestamps lie in 2019–2020, so anything a test changes "now"
//! is newer than all of them. Truth helpers return exactly what the API
//! serves ([`ConstantContactFake::contacts`] and friends); mutations change
//! it between or during runs ([`ConstantContactFake::update_contact`],
//! [`ConstantContactFake::delete_contact`], [`ConstantContactFake::add_contacts`],
//! [`ConstantContactFake::update_campaign`],
//! [`ConstantContactFake::remove_campaign`],
//! [`ConstantContactFake::bump_summary`]). Deleting a contact sets its
//! `deleted_at` (a date) and opt-out details but leaves `updated_at` alone:
//! the API does not document that a delete moves it, so the fake assumes
//! the harder case.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use oauth2::{PkceCodeChallenge, PkceCodeVerifier};
use serde_json::{json, Map, Value};
use url::Url;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::hostile::{HostileSwitch, Hostility, Provider, Wire};

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Configuration of a [`ConstantContactFake`]; build it with struct update
/// syntax over [`FakeConfig::default`].
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Seed of the data generator (default 7).
    pub seed: u64,
    /// Live contacts (default 1,200).
    pub contacts: usize,
    /// Deleted contacts, listed only with `status=all`/`deleted` (default 12).
    pub deleted_contacts: usize,
    /// Contact lists (default 6).
    pub lists: usize,
    /// Custom fields, alternately `string` and `date` (default 4).
    pub custom_fields: usize,
    /// Email campaigns (default 9; the 7th is `Removed`).
    pub campaigns: usize,
    /// Most requests accepted in any second, per account (default `None`;
    /// Constant Contact: 4).
    pub rate_limit: Option<u32>,
    /// Requests accepted per fake day (default 10,000, as Constant Contact).
    pub daily_quota: u64,
    /// Delay added to every response (default zero).
    pub latency: Duration,
    /// A path in front of `/v3` (default empty), as a proxy would add.
    pub path_prefix: String,
    /// Access tokens that never expire (default `["cc-fake-token"]`).
    pub static_tokens: Vec<String>,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Lifetime of minted access tokens (default 24 hours).
    pub access_token_ttl: Duration,
    /// Each refresh returns a new refresh token and spends the old one
    /// (default true); false: long-lived refresh tokens.
    pub rotate_refresh_tokens: bool,
    /// How many times a `segment_id` listing answers 202 before its result
    /// (default 2).
    pub segment_pending: u32,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            seed: 7,
            contacts: 1_200,
            deleted_contacts: 12,
            lists: 6,
            custom_fields: 4,
            campaigns: 9,
            rate_limit: None,
            daily_quota: 10_000,
            latency: Duration::ZERO,
            path_prefix: String::new(),
            static_tokens: vec!["cc-fake-token".into()],
            client_id: "cc-fake-client".into(),
            client_secret: "cc-fake-secret".into(),
            access_token_ttl: Duration::from_secs(24 * 3600),
            rotate_refresh_tokens: true,
            segment_pending: 2,
        }
    }
}

/// Counters of what the fake served since start or
/// [`ConstantContactFake::reset_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FakeStats {
    /// API requests (everything but the token endpoint), rejected ones too.
    pub requests: u64,
    /// 429 answers `throttled` (past the per-second limit).
    pub throttled: u64,
    /// 429 answers `quota_exceeded` (past the daily quota).
    pub quota_exceeded: u64,
    /// 401 answers.
    pub unauthorized: u64,
    /// 202 answers.
    pub accepted: u64,
    /// Most requests accepted within any one second.
    pub max_per_second: u32,
    /// Successful `refresh_token` grants.
    pub token_refreshes: u64,
    /// Successful `authorization_code` grants.
    pub code_exchanges: u64,
    /// Token endpoint answers `invalid_grant`.
    pub invalid_grants: u64,
    /// Requests per route (`GET /v3/contacts`, `GET /v3/emails/{id}`).
    pub per_path: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

/// 2019-01-01T00:00:00Z.
const BASE_MS: i64 = 1_546_300_800_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const JSON_MIME: &str = "application/json";
const TOKEN_PATH: &str = "/oauth2/default/v1/token";

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Ken",
    "Margaret",
    "Donald",
    "Frances",
    "John",
    "Radia",
    "Tim",
    "Hedy",
    "Dennis",
    "Katherine",
    "Linus",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Thompson",
    "Hamilton",
    "Knuth",
    "Allen",
    "McCarthy",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "Ritchie",
    "Johnson",
    "Torvalds",
];
const JOBS: &[&str] = &["Owner", "Buyer", "Manager", "Engineer", "Director"];
const COMPANIES: &[&str] = &["Acme Corp.", "Globex", "Initech", "Umbrella", "Hooli"];
const PERMISSIONS: &[&str] = &[
    "implicit",
    "explicit",
    "explicit",
    "implicit",
    "unsubscribed",
];
const FIELD_NAMES: &[(&str, &str)] = &[
    ("Favorite color", "string"),
    ("Renewal date", "date"),
    ("Member tier", "string"),
    ("Joined on", "date"),
];
const COLORS: &[&str] = &["red", "green", "blue", "teal"];
const TIERS: &[&str] = &["gold", "silver", "bronze"];
const CAMPAIGN_TYPES: &[(&str, i64)] = &[
    ("Newsletter", 10),
    ("Announcement", 11),
    ("Custom Code Email", 26),
];
const SUBJECTS: &[&str] = &[
    "Spring sale",
    "Our new store",
    "Monthly news",
    "Thank you",
    "Last chance",
];

/// SplitMix64 finalizer.
fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn h(seed: u64, kind: u64, i: u64) -> u64 {
    mix(seed ^ mix(kind.wrapping_mul(0x1000_0000_01B3) ^ mix(i)))
}

fn pick<T: Copy>(items: &[T], r: u64) -> T {
    items[(r % items.len() as u64) as usize]
}

/// A UUID-shaped id, deterministic in `(seed, kind, i)`.
fn uuid(seed: u64, kind: u64, i: u64) -> String {
    let a = h(seed, kind, i);
    let b = h(seed, kind ^ 0xABCD, i);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFF,
        0x8000 | (b >> 48) & 0x3FFF,
        b & 0xFFFF_FFFF_FFFF
    )
}

fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn day(ms: i64) -> NaiveDate {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive()
}

/// Parses a time filter: ISO 8601 date-time or date.
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

#[derive(Debug, Clone)]
struct FakeContact {
    seq: u64,
    id: String,
    email: String,
    first: String,
    last: String,
    job: Option<String>,
    company: Option<String>,
    birthday: Option<(i64, i64)>,
    permission: &'static str,
    created_ms: i64,
    updated_ms: i64,
    deleted_ms: Option<i64>,
    /// (custom field index, value)
    custom: Vec<(usize, String)>,
    /// list indexes
    lists: Vec<usize>,
    version: u32,
}

#[derive(Debug, Clone)]
struct FakeList {
    id: String,
    name: String,
    favorite: bool,
    created_ms: i64,
    updated_ms: i64,
}

#[derive(Debug, Clone)]
struct FakeField {
    id: String,
    label: String,
    name: String,
    kind: &'static str,
    created_ms: i64,
}

#[derive(Debug, Clone)]
struct FakeActivity {
    id: String,
    role: &'static str,
}

#[derive(Debug, Clone)]
struct FakeCampaign {
    id: String,
    name: String,
    subject: String,
    status: &'static str,
    type_name: &'static str,
    type_code: i64,
    created_ms: i64,
    updated_ms: i64,
    lists: Vec<usize>,
    activities: Vec<FakeActivity>,
    /// Summary figures, for sent campaigns:
    /// sends, opens, clicks, forwards, optouts, abuse, bounces, not_opened.
    counts: Option<[i64; 8]>,
    sent_ms: Option<i64>,
    version: u32,
}

struct Data {
    seed: u64,
    contacts: Vec<FakeContact>,
    lists: Vec<FakeList>,
    fields: Vec<FakeField>,
    campaigns: Vec<FakeCampaign>,
}

impl Data {
    fn generate(cfg: &FakeConfig) -> Data {
        let seed = cfg.seed;
        let lists = (0..cfg.lists)
            .map(|k| {
                let created = BASE_MS - (cfg.lists - k) as i64 * 7 * DAY_MS;
                FakeList {
                    id: uuid(seed, 1, k as u64),
                    name: format!("List {k}: {}", pick(SUBJECTS, h(seed, 2, k as u64))),
                    favorite: k % 3 == 0,
                    created_ms: created,
                    updated_ms: created + (h(seed, 3, k as u64) % 90) as i64 * DAY_MS,
                }
            })
            .collect();
        let fields = (0..cfg.custom_fields)
            .map(|k| {
                let (label, kind) = FIELD_NAMES[k % FIELD_NAMES.len()];
                let label = if k < FIELD_NAMES.len() {
                    label.to_owned()
                } else {
                    format!("{label} {}", k / FIELD_NAMES.len() + 1)
                };
                FakeField {
                    id: uuid(seed, 4, k as u64),
                    name: label.replace(' ', "_"),
                    label,
                    kind,
                    created_ms: BASE_MS - 30 * DAY_MS + k as i64 * DAY_MS,
                }
            })
            .collect();
        let mut data = Data {
            seed,
            contacts: Vec::new(),
            lists,
            fields,
            campaigns: Vec::new(),
        };
        let total = cfg.contacts + cfg.deleted_contacts;
        for i in 0..total {
            let created = BASE_MS + i as i64 * 3 * HOUR_MS;
            let mut c = data.new_contact(i as u64, created);
            c.updated_ms = created + (h(seed, 5, i as u64) % (60 * DAY_MS as u64)) as i64;
            if i >= cfg.contacts {
                c.deleted_ms = Some(c.updated_ms + DAY_MS);
            }
            data.contacts.push(c);
        }
        for k in 0..cfg.campaigns {
            let created = BASE_MS + k as i64 * 5 * DAY_MS;
            let r = h(seed, 6, k as u64);
            let status = match k % 9 {
                2 => "Draft",
                4 => "Scheduled",
                6 => "Removed",
                _ => "Done",
            };
            let (type_name, type_code) = pick(CAMPAIGN_TYPES, r);
            let subject = pick(SUBJECTS, r >> 8).to_owned();
            let mut activities = vec![
                FakeActivity {
                    id: uuid(seed, 7, 3 * k as u64),
                    role: "primary_email",
                },
                FakeActivity {
                    id: uuid(seed, 7, 3 * k as u64 + 1),
                    role: "permalink",
                },
            ];
            if status == "Done" && k % 3 == 0 {
                activities.push(FakeActivity {
                    id: uuid(seed, 7, 3 * k as u64 + 2),
                    role: "resend",
                });
            }
            let sent = (status == "Done").then_some(created + 2 * DAY_MS);
            let counts = sent.map(|_| {
                let sends = 200 + (r % 800) as i64;
                let opens = sends * (20 + (r >> 12) % 40) as i64 / 100;
                let clicks = opens * (5 + (r >> 20) % 30) as i64 / 100;
                let bounces = sends * ((r >> 28) % 5) as i64 / 100;
                [
                    sends,
                    opens,
                    clicks,
                    (r >> 34) as i64 % 10,
                    (r >> 40) as i64 % 8,
                    (r >> 46) as i64 % 3,
                    bounces,
                    sends - opens - bounces,
                ]
            });
            data.campaigns.push(FakeCampaign {
                id: uuid(seed, 8, k as u64),
                name: format!("Campaign {k}: {subject}"),
                subject,
                status,
                type_name,
                type_code,
                created_ms: created,
                updated_ms: sent.unwrap_or(created) + HOUR_MS,
                lists: (0..cfg.lists).filter(|l| (r >> l) & 1 == 1).collect(),
                activities,
                counts,
                sent_ms: sent,
                version: 0,
            });
        }
        data
    }

    fn new_contact(&self, i: u64, created: i64) -> FakeContact {
        let seed = self.seed;
        let r = h(seed, 10, i);
        let first = pick(FIRST, r).to_owned();
        let last = pick(LAST, r >> 8).to_owned();
        let custom = self
            .fields
            .iter()
            .enumerate()
            .filter(|(k, _)| (r >> (16 + k % 40)) % 5 < 3)
            .map(|(k, f)| {
                let v = h(seed, 11 + k as u64, i);
                let value = if f.kind == "date" {
                    let d = day(BASE_MS + (v % 700) as i64 * DAY_MS);
                    if k % 2 == 1 && (v >> 20) % 2 == 0 {
                        d.format("%m/%d/%Y").to_string()
                    } else {
                        d.format("%Y-%m-%d").to_string()
                    }
                } else if f.name.starts_with("Member") {
                    pick(TIERS, v).to_owned()
                } else {
                    pick(COLORS, v).to_owned()
                };
                (k, value)
            })
            .collect();
        let lists = if self.lists.is_empty() {
            Vec::new()
        } else {
            let n = self.lists.len();
            let mut ls: Vec<usize> = (0..1 + (r >> 40) % 3)
                .map(|j| (h(seed, 12 + j, i) % n as u64) as usize)
                .collect();
            ls.sort_unstable();
            ls.dedup();
            ls
        };
        FakeContact {
            seq: i,
            id: uuid(seed, 9, i),
            email: format!(
                "{}.{}{}@example.com",
                first.to_lowercase(),
                last.to_lowercase(),
                i
            ),
            first,
            last,
            job: (r % 3 != 0).then(|| pick(JOBS, r >> 24).to_owned()),
            company: (r % 4 != 0).then(|| pick(COMPANIES, r >> 28).to_owned()),
            birthday: (r % 5 == 0).then(|| (1 + (r >> 32) as i64 % 12, 1 + (r >> 36) as i64 % 28)),
            permission: pick(PERMISSIONS, r >> 44),
            created_ms: created,
            updated_ms: created,
            deleted_ms: None,
            custom,
            lists,
            version: 0,
        }
    }

    fn contact_json(&self, c: &FakeContact, include: &Include) -> Value {
        let mut email = json!({
            "address": c.email,
            "permission_to_send": if c.deleted_ms.is_some() { "unsubscribed" } else { c.permission },
            "created_at": iso(c.created_ms),
            "updated_at": iso(c.updated_ms),
            "opt_in_source": "Account",
            "opt_in_date": iso(c.created_ms),
            "confirm_status": "off",
        });
        if let Some(d) = c.deleted_ms {
            email["opt_out_source"] = json!("Account");
            email["opt_out_date"] = json!(iso(d));
        }
        let mut v = json!({
            "contact_id": c.id,
            "email_address": email,
            "first_name": c.first,
            "last_name": c.last,
            "create_source": "Account",
            "update_source": "Account",
            "created_at": iso(c.created_ms),
            "updated_at": iso(c.updated_ms),
        });
        let o = v.as_object_mut().expect("object");
        if let Some(j) = &c.job {
            o.insert("job_title".into(), json!(j));
        }
        if let Some(co) = &c.company {
            o.insert("company_name".into(), json!(co));
        }
        if let Some((m, d)) = c.birthday {
            o.insert("birthday_month".into(), json!(m));
            o.insert("birthday_day".into(), json!(d));
        }
        if let Some(d) = c.deleted_ms {
            o.insert(
                "deleted_at".into(),
                json!(day(d).format("%Y-%m-%d").to_string()),
            );
        }
        if include.custom_fields {
            let cfs: Vec<Value> = c
                .custom
                .iter()
                .map(|(k, value)| json!({"custom_field_id": self.fields[*k].id, "value": value}))
                .collect();
            o.insert("custom_fields".into(), Value::Array(cfs));
        }
        if include.list_memberships {
            let ls: Vec<Value> = c.lists.iter().map(|l| json!(self.lists[*l].id)).collect();
            o.insert("list_memberships".into(), Value::Array(ls));
        }
        if include.taggings {
            o.insert("taggings".into(), json!([]));
        }
        v
    }

    fn list_json(&self, k: usize, contacts: bool) -> Value {
        let l = &self.lists[k];
        let mut v = json!({
            "list_id": l.id,
            "name": l.name,
            "description": format!("Contacts of {}", l.name),
            "favorite": l.favorite,
            "created_at": iso(l.created_ms),
            "updated_at": iso(l.updated_ms),
        });
        if contacts {
            let n = self
                .contacts
                .iter()
                .filter(|c| c.deleted_ms.is_none() && c.lists.contains(&k))
                .count();
            v["membership_count"] = json!(n);
        }
        v
    }

    fn field_json(&self, k: usize) -> Value {
        let f = &self.fields[k];
        json!({
            "custom_field_id": f.id,
            "label": f.label,
            "name": f.name,
            "type": f.kind,
            "created_at": iso(f.created_ms),
            "updated_at": iso(f.created_ms),
        })
    }

    fn campaign_json(&self, c: &FakeCampaign, activities: bool) -> Value {
        let mut v = json!({
            "campaign_id": c.id,
            "created_at": iso(c.created_ms),
            "current_status": c.status,
            "name": c.name,
            "type": c.type_name,
            "type_code": c.type_code,
            "updated_at": iso(c.updated_ms),
        });
        if activities {
            v["campaign_activities"] = Value::Array(
                c.activities
                    .iter()
                    .map(|a| json!({"campaign_activity_id": a.id, "role": a.role}))
                    .collect(),
            );
        }
        v
    }

    fn activity_json(&self, c: &FakeCampaign, a: &FakeActivity) -> Value {
        let status = match c.status {
            "Done" => "DONE",
            "Scheduled" => "SCHEDULED",
            "Draft" => "DRAFT",
            "Removed" => "REMOVED",
            other => other,
        };
        let mut v = json!({
            "campaign_activity_id": a.id,
            "campaign_id": c.id,
            "role": a.role,
            "contact_list_ids": c.lists.iter().map(|l| self.lists[*l].id.clone()).collect::<Vec<_>>(),
            "current_status": status,
            "format_type": 5,
            "from_email": "news@example.com",
            "from_name": "Example Shop",
            "reply_to_email": "reply@example.com",
            "subject": if c.version > 0 { format!("{} (v{})", c.subject, c.version) } else { c.subject.clone() },
            "preheader": format!("{} inside", c.subject),
            "template_id": format!("{}", 1_000_755_366_001u64 + c.type_code as u64),
        });
        if c.sent_ms.is_some() {
            v["permalink_url"] = json!(format!(
                "https://myemail.constantcontact.com/{}.html",
                &a.id[..8]
            ));
        }
        v
    }

    fn summary_json(&self, c: &FakeCampaign) -> Option<Value> {
        let counts = c.counts?;
        Some(json!({
            "campaign_id": c.id,
            "campaign_type": c.type_name,
            "last_sent_date": iso(c.sent_ms?),
            "unique_counts": {
                "sends": counts[0],
                "opens": counts[1],
                "clicks": counts[2],
                "forwards": counts[3],
                "optouts": counts[4],
                "abuse": counts[5],
                "bounces": counts[6],
                "not_opened": counts[7],
            }
        }))
    }

    /// Summaries, newest send first.
    fn summaries(&self) -> Vec<Value> {
        let mut sent: Vec<&FakeCampaign> = self
            .campaigns
            .iter()
            .filter(|c| c.counts.is_some())
            .collect();
        sent.sort_by(|a, b| b.sent_ms.cmp(&a.sent_ms).then(a.id.cmp(&b.id)));
        sent.into_iter()
            .filter_map(|c| self.summary_json(c))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Include {
    custom_fields: bool,
    list_memberships: bool,
    taggings: bool,
}

// ---------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------

/// A stateful fake of Constant Contact's v3 API on a local HTTP server.
///
/// Cloning gives another handle to the same server; the server stops when
/// the last handle is dropped. Methods are thread-safe and may be called
/// while requests are in flight.
#[derive(Clone)]
pub struct ConstantContactFake {
    server: Arc<MockServer>,
    inner: Arc<Inner>,
}

impl fmt::Debug for ConstantContactFake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConstantContactFake")
            .field("uri", &self.server.uri())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    status: u16,
}

struct Code {
    challenge: Option<String>,
    redirect_uri: String,
    scopes: String,
    issued: Instant,
}

struct State {
    data: Data,
    rate_limit: Option<u32>,
    daily_quota: u64,
    used_today: u64,
    window: VecDeque<Instant>,
    access: HashMap<String, Instant>,
    /// refresh token → still usable
    refresh: HashMap<String, bool>,
    codes: HashMap<String, Code>,
    faults: VecDeque<Fault>,
    malformed: Vec<(String, u64)>,
    bad: Vec<(String, u64, super::BadRecord)>,
    repeat: HashMap<String, u64>,
    segment_polls: HashMap<String, u32>,
    stats: FakeStats,
}

struct Inner {
    cfg: FakeConfig,
    state: Mutex<State>,
    latency_nanos: AtomicU64,
    token_counter: AtomicU64,
    /// The hostile mode ([`ConstantContactFake::set_hostility`]).
    hostile: HostileSwitch,
}

struct Responder(Arc<Inner>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.handle(request)
    }
}

/// A response under construction.
struct Reply {
    status: u16,
    body: Option<String>,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            body: Some(v.to_string()),
        }
    }

    /// The v3 error body: an array of `{error_key, error_message}`.
    fn error(status: u16, key: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &json!([{"error_key": key, "error_message": message}]),
        )
    }

    fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
        Reply::json(
            status,
            &json!({"error": error, "error_description": description}),
        )
    }
}

impl ConstantContactFake {
    /// Starts the fake on a random port of `127.0.0.1`.
    pub async fn start(config: FakeConfig) -> ConstantContactFake {
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let data = Data::generate(&config);
        let state = State {
            data,
            rate_limit: config.rate_limit,
            daily_quota: config.daily_quota,
            used_today: 0,
            window: VecDeque::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            faults: VecDeque::new(),
            malformed: Vec::new(),
            bad: Vec::new(),
            repeat: HashMap::new(),
            segment_polls: HashMap::new(),
            stats: FakeStats::default(),
        };
        let latency = u64::try_from(config.latency.as_nanos()).unwrap_or(u64::MAX);
        let inner = Arc::new(Inner {
            cfg: config,
            state: Mutex::new(state),
            latency_nanos: AtomicU64::new(latency),
            token_counter: AtomicU64::new(0),
            hostile: HostileSwitch::default(),
        });
        Mock::given(wiremock::matchers::any())
            .respond_with(Responder(Arc::clone(&inner)))
            .mount(&server)
            .await;
        ConstantContactFake {
            server: Arc::new(server),
            inner,
        }
    }

    /// The server's address, like `http://127.0.0.1:41234`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The API's base URL, where the real one has `https://api.cc.email/v3`
    /// (with the configured path prefix).
    pub fn base_url(&self) -> String {
        format!("{}{}/v3", self.uri(), self.inner.cfg.path_prefix)
    }

    /// The OAuth token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.uri())
    }

    /// The configuration the fake started with.
    pub fn config(&self) -> &FakeConfig {
        &self.inner.cfg
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state()
    }

    // ----- truth -----

    /// Every contact as `GET /contacts?status=all&include=custom_fields,list_memberships`
    /// serves it (deleted ones only with `include_deleted`), in listing order.
    pub fn contacts(&self, include_deleted: bool) -> Vec<Value> {
        let st = self.state();
        let inc = Include {
            custom_fields: true,
            list_memberships: true,
            taggings: false,
        };
        st.data
            .contacts
            .iter()
            .filter(|c| include_deleted || c.deleted_ms.is_none())
            .map(|c| st.data.contact_json(c, &inc))
            .collect()
    }

    /// The id of contact `i` (creation order; live contacts first, then
    /// the deleted ones, then added ones).
    pub fn contact_id(&self, i: usize) -> String {
        self.state().data.contacts[i].id.clone()
    }

    /// Ids of live (`deleted: false`) or deleted contacts.
    pub fn contact_ids(&self, deleted: bool) -> Vec<String> {
        self.state()
            .data
            .contacts
            .iter()
            .filter(|c| c.deleted_ms.is_some() == deleted)
            .map(|c| c.id.clone())
            .collect()
    }

    /// Contact lists as `GET /contact_lists` serves them.
    pub fn lists(&self) -> Vec<Value> {
        let st = self.state();
        (0..st.data.lists.len())
            .map(|k| st.data.list_json(k, false))
            .collect()
    }

    /// Custom field definitions as `GET /contact_custom_fields` serves them.
    pub fn custom_fields(&self) -> Vec<Value> {
        let st = self.state();
        (0..st.data.fields.len())
            .map(|k| st.data.field_json(k))
            .collect()
    }

    /// Email campaigns as `GET /emails` serves them.
    pub fn campaigns(&self) -> Vec<Value> {
        let st = self.state();
        st.data
            .campaigns
            .iter()
            .map(|c| st.data.campaign_json(c, false))
            .collect()
    }

    /// The id of campaign `k`.
    pub fn campaign_id(&self, k: usize) -> String {
        self.state().data.campaigns[k].id.clone()
    }

    /// Every readable campaign activity (those of removed campaigns are not).
    pub fn activities(&self) -> Vec<Value> {
        let st = self.state();
        st.data
            .campaigns
            .iter()
            .filter(|c| c.status != "Removed")
            .flat_map(|c| c.activities.iter().map(|a| st.data.activity_json(c, a)))
            .collect()
    }

    /// Ids of the activities of campaign `k`.
    pub fn activity_ids(&self, k: usize) -> Vec<String> {
        self.state().data.campaigns[k]
            .activities
            .iter()
            .map(|a| a.id.clone())
            .collect()
    }

    /// Summaries as the report serves them, newest send first.
    pub fn summaries(&self) -> Vec<Value> {
        self.state().data.summaries()
    }

    // ----- mutations -----

    /// Updates contact `i` at `at`: `first_name` gets a version suffix
    /// (` (v{n})`) and `updated_at` becomes `at`.
    pub fn update_contact(&self, i: usize, at: DateTime<Utc>) {
        let mut st = self.state();
        let c = &mut st.data.contacts[i];
        c.version += 1;
        let base = c.first.split(" (v").next().unwrap_or("").to_owned();
        c.first = format!("{base} (v{})", c.version);
        c.updated_ms = at.timestamp_millis();
    }

    /// Deletes contact `i` at `at`: `deleted_at` and the opt-out details are
    /// set; `updated_at` is left alone (see the module docs).
    pub fn delete_contact(&self, i: usize, at: DateTime<Utc>) {
        self.state().data.contacts[i].deleted_ms = Some(at.timestamp_millis());
    }

    /// Adds `n` contacts created (and updated) at `at`; returns their ids.
    pub fn add_contacts(&self, n: usize, at: DateTime<Utc>) -> Vec<String> {
        let mut st = self.state();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = st.data.contacts.len() as u64;
            let c = st.data.new_contact(seq + 1_000_000, at.timestamp_millis());
            let c = FakeContact { seq, ..c };
            ids.push(c.id.clone());
            st.data.contacts.push(c);
        }
        ids
    }

    /// Updates campaign `k` at `at` (its activities' subject gets a version
    /// suffix; `updated_at` becomes `at`).
    pub fn update_campaign(&self, k: usize, at: DateTime<Utc>) {
        let mut st = self.state();
        let c = &mut st.data.campaigns[k];
        c.version += 1;
        c.updated_ms = at.timestamp_millis();
    }

    /// Removes (deletes) campaign `k` at `at`: status `Removed`, its
    /// activities no longer readable, no summary.
    pub fn remove_campaign(&self, k: usize, at: DateTime<Utc>) {
        let mut st = self.state();
        let c = &mut st.data.campaigns[k];
        c.status = "Removed";
        c.counts = None;
        c.updated_ms = at.timestamp_millis();
    }

    /// More opens and clicks for campaign `k`'s summary (as days pass after
    /// a send); `updated_at` of the campaign does not move.
    pub fn bump_summary(&self, k: usize) {
        let mut st = self.state();
        if let Some(c) = st.data.campaigns[k].counts.as_mut() {
            c[1] += 7;
            c[2] += 3;
            c[7] = (c[7] - 7).max(0);
        }
    }

    // ----- OAuth -----

    /// Plays the user's consent at Constant Contact's authorize page:
    /// checks `client_id`, `response_type=code`, `redirect_uri` and the
    /// scopes of `authorize_url`, keeps its PKCE challenge, and returns the
    /// query string the user is redirected back with (`code`, `state`).
    ///
    /// # Panics
    /// When the URL lacks what Constant Contact requires.
    pub fn consent(&self, authorize_url: &Url) -> String {
        let q: HashMap<String, String> = authorize_url.query_pairs().into_owned().collect();
        assert_eq!(
            q.get("client_id"),
            Some(&self.inner.cfg.client_id),
            "client_id"
        );
        assert_eq!(
            q.get("response_type").map(String::as_str),
            Some("code"),
            "response_type"
        );
        let redirect_uri = q.get("redirect_uri").cloned().expect("redirect_uri");
        let scopes = q.get("scope").cloned().unwrap_or_default();
        let challenge = q.get("code_challenge").cloned();
        if challenge.is_some() {
            assert_eq!(
                q.get("code_challenge_method").map(String::as_str),
                Some("S256"),
                "code_challenge_method"
            );
        }
        let code = format!(
            "cc-code-{}",
            self.inner
                .token_counter
                .fetch_add(1, AtomicOrdering::Relaxed)
        );
        self.state().codes.insert(
            code.clone(),
            Code {
                challenge,
                redirect_uri,
                scopes,
                issued: Instant::now(),
            },
        );
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        out.append_pair("code", &code);
        if let Some(s) = q.get("state") {
            out.append_pair("state", s);
        }
        out.finish()
    }

    /// Mints an access token and a refresh token directly:
    /// `(access_token, refresh_token)`.
    pub fn mint_tokens(&self) -> (String, String) {
        let mut st = self.state();
        self.inner.mint(&mut st)
    }

    /// Expires every access token minted so far.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for t in self.state().access.values_mut() {
            *t = (*t).min(now);
        }
    }

    /// True while `refresh_token` can still be used.
    pub fn refresh_token_valid(&self, refresh_token: &str) -> bool {
        self.state()
            .refresh
            .get(refresh_token)
            .copied()
            .unwrap_or(false)
    }

    // ----- faults and limits -----

    /// The next `n` API requests answer `status` with the v3 error body
    /// (429: the `throttled` body).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.state();
        for _ in 0..n {
            st.faults.push_back(Fault { status });
        }
    }

    /// Breaks page `page` (0-based, counted from a walk's first page) of
    /// `listing` (`contacts`, `contact_lists`, `emails`, …): its fourth
    /// item (or last) gets a string where an array belongs
    /// (`custom_fields` for contacts, else the id becomes a number), so
    /// the body parses as JSON but violates the schema.
    pub fn malformed_page(&self, listing: &str, page: u64) {
        self.state().malformed.push((listing.to_owned(), page));
    }

    /// Every time page `page` of `listing` is served (counted as in
    /// [`ConstantContactFake::malformed_page`]), its fourth item (or last)
    /// carries a bad value (`kind`) as a top-level `hw_bad` member: the rest
    /// of the page stays valid.
    pub fn bad_record(&self, listing: &str, page: u64, kind: super::BadRecord) {
        self.state().bad.push((listing.to_owned(), page, kind));
    }

    /// From page `page` on, `listing` answers a `_links.next.href` equal to
    /// the link that asked for the page: a client that does not check loops
    /// forever.
    pub fn repeat_cursor(&self, listing: &str, page: u64) {
        self.state().repeat.insert(listing.to_owned(), page);
    }

    /// Switches the fake into a hostile mode (see [`Hostility`]), or back
    /// to normal with `None`. The records served stay the same; what the
    /// mode damages is described on each variant.
    pub fn set_hostility(&self, hostility: Option<Hostility>) {
        self.inner.hostile.set(hostility);
    }

    /// Every access and refresh token the fake has issued (spent ones
    /// too), for tests that check no secret shows up in output.
    pub fn issued_tokens(&self) -> Vec<String> {
        let st = self.inner.state();
        let mut tokens: Vec<String> = st.access.keys().chain(st.refresh.keys()).cloned().collect();
        tokens.sort();
        tokens
    }

    /// The hostile mode the fake is in, if any.
    pub fn hostility(&self) -> Option<Hostility> {
        self.inner.hostile.get()
    }

    /// Clears injected faults, malformed pages and repeated cursors.
    pub fn clear_faults(&self) {
        let mut st = self.state();
        st.faults.clear();
        st.malformed.clear();
        st.bad.clear();
        st.repeat.clear();
    }

    /// Sets the delay added to every response.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .latency_nanos
            .store(nanos, AtomicOrdering::Relaxed);
    }

    /// Sets (or removes) the per-second limit.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.state().rate_limit = per_second;
    }

    /// Sets the daily quota.
    pub fn set_daily_quota(&self, quota: u64) {
        self.state().daily_quota = quota;
    }

    /// A new day: the daily quota is full again.
    pub fn reset_day(&self) {
        self.state().used_today = 0;
    }

    /// Requests accepted today.
    pub fn used_today(&self) -> u64 {
        self.state().used_today
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FakeStats {
        self.state().stats.clone()
    }

    /// Resets the counters.
    pub fn reset_stats(&self) {
        self.state().stats = FakeStats::default();
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded before encoding.
    let unescape = |s: &str| -> String {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// The query of a listing request, from its parameters or its cursor.
#[derive(Debug, Clone, Default)]
struct ListQuery {
    params: BTreeMap<String, String>,
    /// Position to start at (contacts: sequence number; others: index).
    next: u64,
    /// 0-based page number within the walk.
    page: u64,
}

impl ListQuery {
    fn from_url(url: &Url) -> Result<ListQuery, Reply> {
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        if let Some((_, cursor)) = pairs.iter().find(|(k, _)| k == "cursor") {
            let bad = || Reply::error(400, "query.param.invalid", "The cursor is invalid.");
            let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            let mut q = ListQuery::default();
            for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
                match &*k {
                    "next" => q.next = v.parse().map_err(|_| bad())?,
                    "page" => q.page = v.parse().map_err(|_| bad())?,
                    _ => {
                        q.params.insert(k.into_owned(), v.into_owned());
                    }
                }
            }
            return Ok(q);
        }
        Ok(ListQuery {
            params: pairs.into_iter().collect(),
            next: 0,
            page: 0,
        })
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }

    fn limit(&self, max: u64) -> Result<u64, Reply> {
        match self.get("limit") {
            None => Ok(50.min(max)),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(Reply::error(
                    400,
                    "query.param.invalid",
                    &format!("limit must be between 1 and {max}"),
                )),
            },
        }
    }

    fn time(&self, k: &str) -> Result<Option<i64>, Reply> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                Reply::error(
                    400,
                    "query.param.invalid",
                    &format!("{k} must be an ISO-8601 date or date-time"),
                )
            }),
        }
    }

    /// The `_links.next.href` of the page after this one.
    fn next_href(&self, listing: &str, next: u64) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.params {
            s.append_pair(k, v);
        }
        s.append_pair("next", &next.to_string());
        s.append_pair("page", &(self.page + 1).to_string());
        let cursor = URL_SAFE_NO_PAD.encode(s.finish());
        format!("/v3/{listing}?cursor={cursor}")
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mint(&self, st: &mut State) -> (String, String) {
        let n = self.token_counter.fetch_add(1, AtomicOrdering::Relaxed);
        let access = format!("cc-access-{n}-{:016x}", mix(n ^ 0xACCE55));
        let refresh = format!("cc-refresh-{n}-{:016x}", mix(n ^ 0x2EF2E5));
        st.access
            .insert(access.clone(), Instant::now() + self.cfg.access_token_ttl);
        st.refresh.insert(refresh.clone(), true);
        (access, refresh)
    }

    fn handle(&self, req: &Request) -> ResponseTemplate {
        let wire = match self.hostile.before(Provider::ConstantContact, req) {
            Some(wire) => wire,
            None => {
                let reply = self.route(req);
                Wire::new(
                    reply.status,
                    [],
                    reply.body.map(|b| (super::reply_bytes(b), JSON_MIME)),
                )
            }
        };
        let mut t = self
            .hostile
            .after(Provider::ConstantContact, req, wire)
            .into_template();
        let latency = Duration::from_nanos(self.latency_nanos.load(AtomicOrdering::Relaxed));
        if !latency.is_zero() {
            t = t.set_delay(latency);
        }
        t
    }

    fn route(&self, req: &Request) -> Reply {
        let path = req.url.path();
        let method = req.method.as_str();
        if path == TOKEN_PATH {
            return if method == "POST" {
                self.token_endpoint(req)
            } else {
                Reply::error(405, "method.not_allowed", "Unsupported method used.")
            };
        }
        let Some(rest) = path.strip_prefix(self.cfg.path_prefix.as_str()) else {
            return Reply::error(404, "not_found", "The requested resource was not found.");
        };
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let label = match segs.as_slice() {
            ["v3", "emails", "activities", _] => "GET /v3/emails/activities/{id}".to_owned(),
            ["v3", "emails", id] if *id != "activities" => "GET /v3/emails/{id}".to_owned(),
            _ => format!("{method} {rest}"),
        };
        let mut st = self.state();
        st.stats.requests += 1;
        *st.stats.per_path.entry(label).or_insert(0) += 1;
        if let Some(f) = st.faults.pop_front() {
            return match f.status {
                429 => throttled(&mut st),
                401 => {
                    st.stats.unauthorized += 1;
                    Reply::error(401, "unauthorized", "Unauthorized")
                }
                s => Reply::error(
                    s,
                    "server.error",
                    "There was a problem with our internal service.",
                ),
            };
        }
        // Authentication.
        let token = bearer(req).map(str::to_owned);
        let authorized = match &token {
            Some(t) if self.cfg.static_tokens.contains(t) => true,
            Some(t) => st.access.get(t).is_some_and(|exp| Instant::now() < *exp),
            None => false,
        };
        if !authorized {
            st.stats.unauthorized += 1;
            return Reply::error(401, "unauthorized", "Unauthorized");
        }
        // Limits: the per-second window, then the daily quota.
        let now = Instant::now();
        if let Some(max) = st.rate_limit {
            while st
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                st.window.pop_front();
            }
            if st.window.len() >= max as usize {
                return throttled(&mut st);
            }
        }
        if st.used_today >= st.daily_quota {
            st.stats.quota_exceeded += 1;
            return Reply::json(
                429,
                &json!({"error_key": "quota_exceeded", "error_message": "Limit Exceeded"}),
            );
        }
        st.used_today += 1;
        st.window.push_back(now);
        while st
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            st.window.pop_front();
        }
        let in_window = st.window.len() as u32;
        st.stats.max_per_second = st.stats.max_per_second.max(in_window);
        if method != "GET" {
            return Reply::error(405, "method.not_allowed", "Unsupported method used.");
        }
        match segs.as_slice() {
            ["v3", "account", "summary"] => Reply::json(200, &account_json()),
            ["v3", "contact_lists"] => self.list_lists(&mut st, &req.url),
            ["v3", "contacts"] => self.list_contacts(&mut st, &req.url),
            ["v3", "contact_custom_fields"] => self.list_fields(&mut st, &req.url),
            ["v3", "emails"] => self.list_campaigns(&mut st, &req.url),
            ["v3", "emails", "activities", id] => {
                let found = st.data.campaigns.iter().find_map(|c| {
                    c.activities
                        .iter()
                        .find(|a| a.id == *id)
                        .map(|a| (c.clone(), a.clone()))
                });
                match found {
                    Some((c, _)) if c.status == "Removed" => {
                        Reply::error(404, "not_found", "The requested resource was not found.")
                    }
                    Some((c, a)) => Reply::json(200, &st.data.activity_json(&c, &a)),
                    None => Reply::error(404, "not_found", "The requested resource was not found."),
                }
            }
            ["v3", "emails", id] => match st.data.campaigns.iter().find(|c| c.id == *id) {
                Some(c) => Reply::json(200, &st.data.campaign_json(c, true)),
                None => Reply::error(404, "not_found", "The requested resource was not found."),
            },
            ["v3", "reports", "summary_reports", "email_campaign_summaries"] => {
                self.list_summaries(&mut st, &req.url)
            }
            _ => Reply::error(404, "not_found", "The requested resource was not found."),
        }
    }

    /// One page of `items` (already filtered and ordered: each item's
    /// position and index), rendered by `render`, with the next link and
    /// faults applied.
    #[allow(clippy::too_many_arguments)]
    fn page(
        &self,
        st: &State,
        url: &Url,
        q: &ListQuery,
        listing: &str,
        key: &str,
        items: Vec<(u64, usize)>,
        limit: u64,
        extra: Map<String, Value>,
        render: impl Fn(usize) -> Value,
    ) -> Reply {
        let mut page: Vec<(u64, usize)> = items
            .into_iter()
            .filter(|(pos, _)| *pos >= q.next)
            .take(limit as usize + 1)
            .collect();
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        let mut next = if more {
            page.last().map(|(pos, _)| q.next_href(listing, pos + 1))
        } else {
            None
        };
        if let Some(from) = st.repeat.get(listing) {
            if q.page >= *from && next.is_some() {
                // The link that asked for this page.
                let own = url
                    .path()
                    .strip_prefix(self.cfg.path_prefix.as_str())
                    .unwrap_or("");
                next = Some(match url.query() {
                    Some(query) => format!("{own}?{query}"),
                    None => own.to_owned(),
                });
            }
        }
        let mut values: Vec<Value> = page.into_iter().map(|(_, i)| render(i)).collect();
        if st
            .malformed
            .iter()
            .any(|(l, p)| l == listing && *p == q.page)
            && !values.is_empty()
        {
            let k = 3.min(values.len() - 1);
            if key == "contacts" {
                values[k]["custom_fields"] = json!("[object Object]");
            } else if let Some(o) = values[k].as_object_mut() {
                let id_key = o.keys().find(|k| k.ends_with("_id")).cloned();
                if let Some(id_key) = id_key {
                    o.insert(id_key, json!(12345));
                }
            }
        }
        const BAD: &str = "__headwater_bad_record__";
        let bad = st
            .bad
            .iter()
            .find(|(l, p, _)| l == listing && *p == q.page)
            .map(|(_, _, kind)| *kind)
            .filter(|_| !values.is_empty());
        if bad.is_some() {
            let k = 3.min(values.len() - 1);
            if let Some(o) = values[k].as_object_mut() {
                o.insert("hw_bad".into(), json!(BAD));
            }
        }
        let mut body = Map::new();
        body.insert(key.to_owned(), Value::Array(values));
        body.extend(extra);
        if let Some(href) = next {
            body.insert("_links".into(), json!({"next": {"href": href}}));
        }
        match bad {
            Some(kind) => Reply {
                status: 200,
                body: Some(Value::Object(body).to_string().replacen(
                    &format!("\"{BAD}\""),
                    &kind.value_json(),
                    1,
                )),
            },
            None => Reply::json(200, &Value::Object(body)),
        }
    }

    fn list_lists(&self, st: &mut State, url: &Url) -> Reply {
        let q = match ListQuery::from_url(url) {
            Ok(q) => q,
            Err(r) => return r,
        };
        let limit = match q.limit(1000) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let counts = q.get("include_membership_count").is_some();
        let items: Vec<(u64, usize)> = (0..st.data.lists.len()).map(|k| (k as u64, k)).collect();
        let mut extra = Map::new();
        if q.get("include_count") == Some("true") {
            extra.insert("lists_count".into(), json!(items.len()));
        }
        let st = &*st;
        self.page(
            st,
            url,
            &q,
            "contact_lists",
            "lists",
            items,
            limit,
            extra,
            |k| st.data.list_json(k, counts),
        )
    }

    fn list_fields(&self, st: &mut State, url: &Url) -> Reply {
        let q = match ListQuery::from_url(url) {
            Ok(q) => q,
            Err(r) => return r,
        };
        let limit = match q.limit(100) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let items = (0..st.data.fields.len()).map(|k| (k as u64, k)).collect();
        let st = &*st;
        self.page(
            st,
            url,
            &q,
            "contact_custom_fields",
            "custom_fields",
            items,
            limit,
            Map::new(),
            |k| st.data.field_json(k),
        )
    }

    fn list_contacts(&self, st: &mut State, url: &Url) -> Reply {
        let q = match ListQuery::from_url(url) {
            Ok(q) => q,
            Err(r) => return r,
        };
        let limit = match q.limit(500) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let (after, before) = match (q.time("updated_after"), q.time("updated_before")) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        let mut include = Include::default();
        if let Some(inc) = q.get("include") {
            for part in inc.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match part {
                    "custom_fields" => include.custom_fields = true,
                    "list_memberships" => include.list_memberships = true,
                    "taggings" => include.taggings = true,
                    "notes" | "phone_numbers" | "street_addresses" => {}
                    other => {
                        return Reply::error(
                            400,
                            "query.param.invalid",
                            &format!("include: `{other}` is not a valid sub-resource"),
                        )
                    }
                }
            }
        }
        if let Some(segment) = q.get("segment_id") {
            let polls = st.segment_polls.entry(segment.to_owned()).or_insert(0);
            if *polls < self.cfg.segment_pending {
                *polls += 1;
                st.stats.accepted += 1;
                return Reply::json(202, &json!({"contacts": [], "status": "processing"}));
            }
        }
        let statuses: Vec<String> = q
            .get("status")
            .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect())
            .unwrap_or_default();
        let matches_status = |c: &FakeContact| {
            if statuses.is_empty() {
                return c.deleted_ms.is_none();
            }
            statuses.iter().any(|s| match s.as_str() {
                "all" => true,
                "deleted" => c.deleted_ms.is_some(),
                "active" => c.deleted_ms.is_none(),
                other => c.deleted_ms.is_none() && c.permission == other,
            })
        };
        let items: Vec<(u64, usize)> = st
            .data
            .contacts
            .iter()
            .enumerate()
            .filter(|(_, c)| matches_status(c))
            .filter(|(_, c)| after.is_none_or(|a| c.updated_ms > a))
            .filter(|(_, c)| before.is_none_or(|b| c.updated_ms < b))
            .map(|(i, c)| (c.seq, i))
            .collect();
        let mut extra = Map::new();
        if q.get("include_count") == Some("true") {
            extra.insert("contacts_count".into(), json!(items.len()));
        }
        let st = &*st;
        self.page(
            st,
            url,
            &q,
            "contacts",
            "contacts",
            items,
            limit,
            extra,
            |i| st.data.contact_json(&st.data.contacts[i], &include),
        )
    }

    fn list_campaigns(&self, st: &mut State, url: &Url) -> Reply {
        let q = match ListQuery::from_url(url) {
            Ok(q) => q,
            Err(r) => return r,
        };
        let limit = match q.limit(500) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let (after, before) = match (q.time("after_date"), q.time("before_date")) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        let items = st
            .data
            .campaigns
            .iter()
            .enumerate()
            .filter(|(_, c)| after.is_none_or(|a| c.updated_ms > a))
            .filter(|(_, c)| before.is_none_or(|b| c.updated_ms < b))
            .map(|(k, _)| (k as u64, k))
            .collect();
        let st = &*st;
        self.page(
            st,
            url,
            &q,
            "emails",
            "campaigns",
            items,
            limit,
            Map::new(),
            |k| st.data.campaign_json(&st.data.campaigns[k], false),
        )
    }

    fn list_summaries(&self, st: &mut State, url: &Url) -> Reply {
        let q = match ListQuery::from_url(url) {
            Ok(q) => q,
            Err(r) => return r,
        };
        let limit = match q.limit(500) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let all = st.data.summaries();
        let items = (0..all.len()).map(|k| (k as u64, k)).collect();
        self.page(
            st,
            url,
            &q,
            "reports/summary_reports/email_campaign_summaries",
            "bulk_email_campaign_summaries",
            items,
            limit,
            Map::new(),
            |k| all[k].clone(),
        )
    }

    fn token_endpoint(&self, req: &Request) -> Reply {
        let params: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut st = self.state();
        // Client authentication: HTTP Basic only.
        match basic_credentials(req) {
            Some((id, secret)) if id == self.cfg.client_id && secret == self.cfg.client_secret => {}
            _ => {
                return Reply::oauth_error(
                    401,
                    "invalid_client",
                    "Client authentication failed: use HTTP Basic with the client id and secret.",
                )
            }
        }
        let scope = match params.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let code = params.get("code").cloned().unwrap_or_default();
                let Some(c) = st.codes.remove(&code) else {
                    st.stats.invalid_grants += 1;
                    return Reply::oauth_error(
                        400,
                        "invalid_grant",
                        "The authorization code is invalid or has expired.",
                    );
                };
                if c.issued.elapsed() > Duration::from_secs(300) {
                    st.stats.invalid_grants += 1;
                    return Reply::oauth_error(
                        400,
                        "invalid_grant",
                        "The authorization code is invalid or has expired.",
                    );
                }
                if params.get("redirect_uri") != Some(&c.redirect_uri) {
                    st.stats.invalid_grants += 1;
                    return Reply::oauth_error(
                        400,
                        "invalid_grant",
                        "The 'redirect_uri' does not match the redirection URI used in the authorization request.",
                    );
                }
                if let Some(challenge) = &c.challenge {
                    let ok = params.get("code_verifier").is_some_and(|v| {
                        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
                            v.clone(),
                        ))
                        .as_str()
                            == challenge
                    });
                    if !ok {
                        st.stats.invalid_grants += 1;
                        return Reply::oauth_error(
                            400,
                            "invalid_grant",
                            "PKCE verification failed.",
                        );
                    }
                }
                st.stats.code_exchanges += 1;
                c.scopes
            }
            Some("refresh_token") => {
                let token = params.get("refresh_token").cloned().unwrap_or_default();
                if !st.refresh.get(&token).copied().unwrap_or(false) {
                    st.stats.invalid_grants += 1;
                    return Reply::oauth_error(
                        400,
                        "invalid_grant",
                        "The refresh token is invalid or expired.",
                    );
                }
                st.stats.token_refreshes += 1;
                if !self.cfg.rotate_refresh_tokens {
                    let n = self.token_counter.fetch_add(1, AtomicOrdering::Relaxed);
                    let access = format!("cc-access-{n}-{:016x}", mix(n ^ 0xACCE55));
                    st.access
                        .insert(access.clone(), Instant::now() + self.cfg.access_token_ttl);
                    return Reply::json(
                        200,
                        &json!({
                            "token_type": "Bearer",
                            "expires_in": self.cfg.access_token_ttl.as_secs(),
                            "access_token": access,
                            "scope": crate::constant_contact::SCOPES.join(" "),
                            "refresh_token": token,
                        }),
                    );
                }
                st.refresh.insert(token, false);
                crate::constant_contact::SCOPES.join(" ")
            }
            _ => {
                return Reply::oauth_error(
                    400,
                    "unsupported_grant_type",
                    "The authorization grant type is not supported by the authorization server.",
                )
            }
        };
        let (access, refresh) = self.mint(&mut st);
        Reply::json(
            200,
            &json!({
                "token_type": "Bearer",
                "expires_in": self.cfg.access_token_ttl.as_secs(),
                "access_token": access,
                "scope": scope,
                "refresh_token": refresh,
            }),
        )
    }
}

fn throttled(st: &mut State) -> Reply {
    st.stats.throttled += 1;
    Reply::json(
        429,
        &json!({"error_key": "throttled", "error_message": "Too Many Requests"}),
    )
}

fn account_json() -> Value {
    json!({
        "contact_email": "owner@example.com",
        "contact_phone": "5081111212",
        "country_code": "US",
        "encoded_account_id": "a07e1fake0001",
        "first_name": "Lola",
        "last_name": "Zang",
        "organization_name": "Example Shop",
        "organization_phone": "333-333-3335",
        "state_code": "MA",
        "time_zone_id": "US/Eastern",
        "website": "https://shop.example.com",
        "physical_address": {
            "address_line1": "123 Maple Street",
            "city": "Boston",
            "state_code": "MA",
            "postal_code": "02451",
            "country_code": "US"
        }
    })
}
