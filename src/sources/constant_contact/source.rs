//! [`ConstantContactSource`]: Constant Contact as a [`Source`] for the sync
//! engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::models::parse_date;
use super::{
    CampaignActivity, CampaignSummary, ConstantContact, Contact, ContactList, CustomField,
    EmailCampaign, ListRequest, Listed, PROVIDER,
};
use crate::http::{DailyUsage, RequestStats};
use crate::schema::{Catalog, Field, FieldType, StreamSchema};
use crate::source::{AccountInfo, CountCheck, Page, Record, Source, StreamPlan, StreamState};
use crate::{Error, Result};

/// Contact lists (re-read in full every run).
pub const STREAM_CONTACT_LISTS: &str = "contact_lists";
/// Contacts with list memberships and custom fields; incremental.
pub const STREAM_CONTACTS: &str = "contacts";
/// Custom field definitions (re-read in full every run).
pub const STREAM_CUSTOM_FIELDS: &str = "contact_custom_fields";
/// Email campaigns; incremental on `updated_at`.
pub const STREAM_EMAIL_CAMPAIGNS: &str = "email_campaigns";
/// Email campaign activities (content, sender, recipients), read per
/// campaign; incremental through the campaigns' `updated_at`.
pub const STREAM_CAMPAIGN_ACTIVITIES: &str = "email_campaign_activities";
/// Bulk email campaign summary reports (sends, opens, clicks, bounces,
/// opt-outs, …): re-read every run, or back to a trailing window.
pub const STREAM_CAMPAIGN_SUMMARIES: &str = "email_campaign_summaries";

/// Default settle lag of incremental reads.
pub const DEFAULT_SETTLE_LAG: Duration = Duration::from_secs(60);

/// Consecutive incremental windows overlap by this much: the API does not
/// say whether `updated_after`/`updated_before` include their bounds, nor
/// their precision. A record re-read at the seam is upserted, never
/// duplicated.
pub(super) const OVERLAP_MS: i64 = 1_000;

/// What contacts listings ask to include.
pub(super) const CONTACT_INCLUDE: [&str; 2] = ["custom_fields", "list_memberships"];

/// Prefix of the columns made from contact custom fields.
const CUSTOM_FIELD_PREFIX: &str = "cf_";

/// Constant Contact as a source.
///
/// | stream | key | how it is read |
/// |---|---|---|
/// | `contact_lists` | `list_id` | in full, every run |
/// | `contact_custom_fields` | `custom_field_id` | in full, every run |
/// | `contacts` | `contact_id` | first run in full (`status=all`), then changes |
/// | `email_campaigns` | `campaign_id` | first run in full, then changes |
/// | `email_campaign_activities` | `campaign_activity_id` | per campaign; then per changed campaign |
/// | `email_campaign_summaries` | `campaign_id` | in full every run, or a trailing window |
///
/// **Contacts** are read with `include=custom_fields,list_memberships`
/// and `limit=500`. Each custom field defined in the account
/// (`/contact_custom_fields`) becomes a typed column `cf_{name}` (`date`
/// fields as dates). The first run lists every contact with `status=all`,
/// so deleted ones arrive as deleted records. Later runs read the window
/// `updated_after` the last run's cursor, `updated_before` a bound fixed when
/// the run starts (its start less the settle lag): records changed while the
/// run reads are left to the next run, never skipped. Because a deletion may
/// not move `updated_at` (the API does not say), each incremental run also
/// sweeps `status=deleted` and emits the contacts deleted since the
/// window's first day that the window did not already return (set
/// [`ConstantContactSource::with_deleted_sweep`] to turn it off; it costs
/// one request per 500 deleted contacts).
///
/// **Email campaigns** are read the same way through `after_date` and
/// `before_date` (on `updated_at`); a `Removed` campaign is a deleted
/// record. **Campaign activities** are read per campaign
/// (`GET /emails/{id}` for the activity ids, then
/// `GET /emails/activities/{id}` each), checkpointed after every campaign;
/// later runs read the activities of the campaigns changed since. The
/// activities of a removed campaign arrive as deleted records.
///
/// **Summaries** keep changing after a send (opens, clicks), so they are
/// never read "since last time": by default every run re-reads them all
/// (a full refresh); with [`ConstantContactSource::with_summary_window`],
/// later runs re-read only the campaigns sent within the window (the
/// listing is newest first) and merge them.
#[derive(Debug, Clone)]
pub struct ConstantContactSource {
    cc: ConstantContact,
    settle_lag: Duration,
    summary_window: Option<Duration>,
    sweep_deleted: bool,
    custom_fields: Arc<Mutex<Option<Vec<CustomField>>>>,
}

/// Where a stream's read stands (the stream state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub(crate) enum Position {
    /// A full listing, at `next` (`None`: its first page), begun at
    /// `started_ms`; `loaded` records read from it so far.
    Full {
        #[serde(default)]
        next: Option<String>,
        #[serde(default)]
        started_ms: Option<i64>,
        #[serde(default)]
        loaded: u64,
    },
    /// The records changed in `lo..hi`, at `next`; `loaded` read so far.
    Changes {
        lo: i64,
        hi: i64,
        #[serde(default)]
        next: Option<String>,
        #[serde(default)]
        loaded: u64,
    },
    /// The sweep of deleted contacts after the changes of `lo..hi`.
    Deleted {
        lo: i64,
        hi: i64,
        #[serde(default)]
        next: Option<String>,
    },
    /// Summaries of campaigns sent since `since_ms`, at `next`.
    Recent {
        since_ms: i64,
        started_ms: i64,
        #[serde(default)]
        next: Option<String>,
    },
    /// Campaign activities: the campaigns page `page` (`None`: the first),
    /// after the campaign `after`; `lo..hi` the window of changed campaigns
    /// (none: every campaign).
    Activities {
        #[serde(default)]
        lo: Option<i64>,
        #[serde(default)]
        hi: Option<i64>,
        #[serde(default)]
        started_ms: Option<i64>,
        #[serde(default)]
        page: Option<String>,
        #[serde(default)]
        after: Option<String>,
    },
    /// Finished; the next incremental read starts at `cursor_ms`.
    Done {
        #[serde(default)]
        cursor_ms: Option<i64>,
    },
}

impl Position {
    pub(crate) fn from_state(state: Option<StreamState>) -> Result<Self> {
        match state {
            None => Ok(Position::Full {
                next: None,
                started_ms: None,
                loaded: 0,
            }),
            Some(s) => serde_json::from_value(s.0)
                .map_err(|e| Error::state("unreadable Constant Contact stream state", e)),
        }
    }

    pub(crate) fn to_state(&self) -> StreamState {
        StreamState(serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// How a stream follows its first read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Re-read in full every run.
    Snapshot,
    /// Windows of changes on `updated_at`, and (contacts) a sweep of deletes.
    Windowed { sweep_deleted: bool },
    /// Summaries: in full, or a trailing window of `window_ms`.
    Summaries { window_ms: Option<i64> },
}

/// One phase of a read, with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Full(Option<String>),
    Changes {
        lo: i64,
        hi: i64,
        next: Option<String>,
    },
    Deleted {
        lo: i64,
        hi: i64,
        next: Option<String>,
    },
    Recent {
        since_ms: i64,
        next: Option<String>,
    },
}

/// What is left to read from a position, and the cursor the read ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) steps: Vec<Step>,
    pub(super) cursor_ms: Option<i64>,
    pub(super) started_ms: Option<i64>,
    /// Records the first step had read before this read (a resume).
    pub(super) loaded: u64,
}

impl Plan {
    pub(super) fn new(kind: Kind, pos: Position, now_ms: i64, lag_ms: i64) -> Result<Plan> {
        let sweep = matches!(
            kind,
            Kind::Windowed {
                sweep_deleted: true
            }
        );
        let changes = |lo: i64, hi: i64, next: Option<String>| {
            let mut steps = vec![Step::Changes { lo, hi, next }];
            if sweep {
                steps.push(Step::Deleted { lo, hi, next: None });
            }
            steps
        };
        Ok(match pos {
            Position::Full {
                next,
                started_ms,
                loaded,
            } => {
                let started = started_ms.unwrap_or(now_ms);
                Plan {
                    loaded,
                    steps: vec![Step::Full(next)],
                    cursor_ms: match kind {
                        Kind::Snapshot | Kind::Summaries { window_ms: None } => None,
                        Kind::Windowed { .. } => Some(started - lag_ms),
                        Kind::Summaries { window_ms: Some(_) } => Some(started),
                    },
                    started_ms: Some(started),
                }
            }
            Position::Changes {
                lo,
                hi,
                next,
                loaded,
            } => Plan {
                loaded,
                steps: changes(lo, hi, next),
                cursor_ms: Some(hi),
                started_ms: None,
            },
            Position::Deleted { lo, hi, next } => Plan {
                loaded: 0,
                steps: vec![Step::Deleted { lo, hi, next }],
                cursor_ms: Some(hi),
                started_ms: None,
            },
            Position::Recent {
                since_ms,
                started_ms,
                next,
            } => Plan {
                loaded: 0,
                steps: vec![Step::Recent { since_ms, next }],
                cursor_ms: Some(started_ms),
                started_ms: Some(started_ms),
            },
            Position::Done {
                cursor_ms: Some(lo),
            } => match kind {
                Kind::Windowed { .. } => {
                    let hi = now_ms - lag_ms;
                    if hi > lo {
                        Plan {
                            loaded: 0,
                            steps: changes(lo, hi, None),
                            cursor_ms: Some(hi),
                            started_ms: None,
                        }
                    } else {
                        Plan {
                            loaded: 0,
                            steps: Vec::new(),
                            cursor_ms: Some(lo),
                            started_ms: None,
                        }
                    }
                }
                Kind::Summaries { window_ms: Some(w) } => Plan {
                    loaded: 0,
                    steps: vec![Step::Recent {
                        since_ms: now_ms - w,
                        next: None,
                    }],
                    cursor_ms: Some(now_ms),
                    started_ms: Some(now_ms),
                },
                _ => Plan {
                    loaded: 0,
                    steps: Vec::new(),
                    cursor_ms: Some(lo),
                    started_ms: None,
                },
            },
            Position::Done { cursor_ms: None } => Plan {
                loaded: 0,
                steps: Vec::new(),
                cursor_ms: None,
                started_ms: None,
            },
            Position::Activities { .. } => {
                return Err(Error::State {
                    message: "a campaign-activities state was given to another stream".into(),
                    source: None,
                })
            }
        })
    }

    /// The position after a page of step `i` whose next link is `next`,
    /// `loaded` records read from the step so far.
    fn after_page(&self, i: usize, next: Option<String>, loaded: u64) -> Position {
        match (&self.steps[i], next) {
            (Step::Full(_), Some(n)) => Position::Full {
                next: Some(n),
                started_ms: self.started_ms,
                loaded,
            },
            (Step::Changes { lo, hi, .. }, Some(n)) => Position::Changes {
                lo: *lo,
                hi: *hi,
                next: Some(n),
                loaded,
            },
            (Step::Deleted { lo, hi, .. }, Some(n)) => Position::Deleted {
                lo: *lo,
                hi: *hi,
                next: Some(n),
            },
            (Step::Recent { since_ms, .. }, Some(n)) => Position::Recent {
                since_ms: *since_ms,
                started_ms: self.started_ms.unwrap_or(*since_ms),
                next: Some(n),
            },
            (_, None) => self.start_of(i + 1),
        }
    }

    /// Records step `i` had read when this read began.
    fn loaded_at_start(&self, i: usize) -> u64 {
        if i == 0 {
            self.loaded
        } else {
            0
        }
    }

    fn start_of(&self, i: usize) -> Position {
        match self.steps.get(i) {
            Some(Step::Full(next)) => Position::Full {
                next: next.clone(),
                started_ms: self.started_ms,
                loaded: self.loaded_at_start(i),
            },
            Some(Step::Changes { lo, hi, next }) => Position::Changes {
                lo: *lo,
                hi: *hi,
                next: next.clone(),
                loaded: self.loaded_at_start(i),
            },
            Some(Step::Deleted { lo, hi, next }) => Position::Deleted {
                lo: *lo,
                hi: *hi,
                next: next.clone(),
            },
            Some(Step::Recent { since_ms, next }) => Position::Recent {
                since_ms: *since_ms,
                started_ms: self.started_ms.unwrap_or(*since_ms),
                next: next.clone(),
            },
            None => Position::Done {
                cursor_ms: self.cursor_ms,
            },
        }
    }
}

pub(super) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Custom field id → (column, type).
pub(crate) type CustomFieldColumns = HashMap<String, (String, FieldType)>;

/// The column of a custom field (by its unique `name`, else its id).
fn custom_field_column(f: &CustomField) -> String {
    let name = f
        .name
        .as_deref()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or(&f.custom_field_id);
    format!("{CUSTOM_FIELD_PREFIX}{name}")
}

fn custom_field_type(f: &CustomField) -> FieldType {
    match f.field_type.as_deref() {
        Some("date") => FieldType::Date,
        _ => FieldType::String,
    }
}

/// A custom field value typed for its column: dates (entered as
/// `YYYY-MM-DD`, `MM/DD/YYYY` or `M/D/YYYY`, or a full timestamp) become
/// `YYYY-MM-DD`; a value that does not parse is kept as it came.
fn custom_field_value(value: &str, t: FieldType) -> Value {
    if t != FieldType::Date {
        return Value::String(value.to_owned());
    }
    let v = value.trim();
    if v.is_empty() {
        return Value::Null;
    }
    let parsed = parse_date(v)
        .or_else(|| NaiveDate::parse_from_str(v, "%m/%d/%Y").ok())
        .or_else(|| NaiveDate::parse_from_str(v, "%Y/%m/%d").ok());
    match parsed {
        Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        None => Value::String(value.to_owned()),
    }
}

fn to_map<T: Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// A contact as a record: its fields as the API sent them, plus `email`
/// (the address) and one typed `cf_{name}` column per custom field of the
/// schema (null when the contact has no value, so a cleared value replaces
/// the old one).
pub(crate) fn contact_record(c: Contact, columns: &CustomFieldColumns) -> Record {
    let deleted = c.is_deleted();
    let id = c.contact_id.clone();
    let mut data = to_map(&c);
    data.insert(
        "email".into(),
        c.email()
            .map(|e| Value::String(e.to_owned()))
            .unwrap_or(Value::Null),
    );
    for (column, _) in columns.values() {
        data.insert(column.clone(), Value::Null);
    }
    for f in &c.custom_fields {
        if let Some((column, t)) = columns.get(&f.custom_field_id) {
            data.insert(column.clone(), custom_field_value(&f.value, *t));
        }
    }
    Record::new(id, data).deleted(deleted)
}

pub(crate) fn list_record(l: ContactList) -> Record {
    Record::new(l.list_id.clone(), to_map(&l))
}

pub(crate) fn custom_field_record(f: CustomField) -> Record {
    Record::new(f.custom_field_id.clone(), to_map(&f))
}

pub(crate) fn campaign_record(c: EmailCampaign) -> Record {
    let deleted = c.is_removed();
    Record::new(c.campaign_id.clone(), to_map(&c)).deleted(deleted)
}

/// A summary as a record: the unique counts as top-level columns named as
/// the API names them (`sends`, `opens`, `clicks`, `forwards`, `optouts`,
/// `abuse`, `bounces`, `not_opened`).
pub(crate) fn summary_record(s: CampaignSummary) -> Record {
    let mut data = to_map(&s);
    if let Some(Value::Object(counts)) = data.remove("unique_counts") {
        for (k, v) in counts {
            data.entry(k).or_insert(v);
        }
    }
    Record::new(s.campaign_id, data)
}

pub(crate) fn activity_record(a: CampaignActivity, campaign_id: &str) -> Record {
    let mut data = to_map(&a);
    if !matches!(data.get("campaign_id"), Some(Value::String(_))) {
        data.insert("campaign_id".into(), Value::String(campaign_id.to_owned()));
    }
    Record::new(a.campaign_activity_id, data)
}

/// The deleted record of an activity that can no longer be read.
fn removed_activity_record(activity_id: &str, campaign_id: &str, role: Option<&str>) -> Record {
    let mut data = Map::new();
    data.insert(
        "campaign_activity_id".into(),
        Value::String(activity_id.to_owned()),
    );
    data.insert("campaign_id".into(), Value::String(campaign_id.to_owned()));
    data.insert(
        "role".into(),
        role.map(|r| Value::String(r.to_owned()))
            .unwrap_or(Value::Null),
    );
    data.insert("current_status".into(), Value::String("REMOVED".into()));
    Record::new(activity_id, data).deleted(true)
}

/// Ends a stream after its first error.
fn stop_after_error<S, T>(s: S) -> impl Stream<Item = Result<T>>
where
    S: Stream<Item = Result<T>>,
{
    s.scan(false, |failed, item| {
        let out = if *failed {
            None
        } else {
            *failed = item.is_err();
            Some(item)
        };
        futures::future::ready(out)
    })
}

fn failed<'a, T: Send + 'a>(e: Error) -> BoxStream<'a, Result<T>> {
    futures::stream::once(async { Err(e) }).boxed()
}

/// The pages of one step as engine pages: `convert` turns the items into
/// records and says when the step is over before its last page (a trailing
/// window reached its end). With `count` (the step's scope, in words), the
/// listing is asked for its total and the step's last page carries the
/// completeness check: the total against the records read.
fn step_pages<T, F>(
    req: ListRequest<T>,
    plan: Arc<Plan>,
    i: usize,
    count: Option<String>,
    convert: F,
) -> BoxStream<'static, Result<Page>>
where
    T: Listed,
    F: Fn(Vec<T>) -> (Vec<Record>, bool) + Send + 'static,
{
    let req = match (&count, T::COUNT_KEY) {
        (Some(_), Some(_)) => req.param("include_count", "true"),
        _ => req,
    };
    let loaded = plan.loaded_at_start(i);
    req.lenient_pages()
        .scan((false, loaded), move |(stopped, loaded), r| {
            let out = if *stopped {
                None
            } else {
                Some(match r {
                    Ok((p, rejected)) => {
                        let (records, stop) = convert(p.items);
                        *stopped = stop;
                        // A quarantined record was read: it counts as loaded.
                        *loaded += (records.len() + rejected.len()) as u64;
                        let next = if stop { None } else { p.next };
                        let last = next.is_none();
                        let page = Page::new(records, plan.after_page(i, next, *loaded).to_state())
                            .with_rejected(rejected);
                        Ok(match (&count, p.count) {
                            (Some(scope), Some(reported)) if last => {
                                page.with_count(CountCheck::new(scope.clone(), reported, *loaded))
                            }
                            _ => page,
                        })
                    }
                    Err(e) => {
                        *stopped = true;
                        Err(e)
                    }
                })
            };
            futures::future::ready(out)
        })
        .boxed()
}

fn contacts_schema(custom_fields: &[CustomField]) -> StreamSchema {
    let mut fields = vec![
        Field::new("contact_id", FieldType::String).with_description("Contact id (UUID)"),
        Field::new("email", FieldType::String).with_description("email_address.address"),
        Field::new("email_address", FieldType::Json)
            .with_description("Address, permission to send, opt-in and opt-out details"),
        Field::new("first_name", FieldType::String),
        Field::new("last_name", FieldType::String),
        Field::new("job_title", FieldType::String),
        Field::new("company_name", FieldType::String),
        Field::new("birthday_month", FieldType::Integer),
        Field::new("birthday_day", FieldType::Integer),
        Field::new("anniversary", FieldType::String),
        Field::new("create_source", FieldType::String),
        Field::new("update_source", FieldType::String),
        Field::new("created_at", FieldType::Timestamp),
        Field::new("updated_at", FieldType::Timestamp),
        Field::new("deleted_at", FieldType::Date).with_description("Set on deleted contacts"),
        Field::new("list_memberships", FieldType::Json).with_description("Ids of the lists"),
        Field::new("custom_fields", FieldType::Json)
            .with_description("Custom field values as sent (also typed in the cf_ columns)"),
    ];
    let mut defs: Vec<&CustomField> = custom_fields.iter().collect();
    defs.sort_by_key(|f| custom_field_column(f));
    for f in defs {
        let mut field =
            Field::new(custom_field_column(f), custom_field_type(f)).with_source_type(format!(
                "custom_field:{}",
                f.field_type.as_deref().unwrap_or("string")
            ));
        if let Some(label) = &f.label {
            field = field.with_description(label.clone());
        }
        fields.push(field);
    }
    StreamSchema::new(STREAM_CONTACTS, "contact_id", fields).with_cursor_field("updated_at")
}

fn lists_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_CONTACT_LISTS,
        "list_id",
        vec![
            Field::new("list_id", FieldType::String),
            Field::new("name", FieldType::String),
            Field::new("description", FieldType::String),
            Field::new("favorite", FieldType::Boolean),
            Field::new("created_at", FieldType::Timestamp),
            Field::new("updated_at", FieldType::Timestamp),
            Field::new("membership_count", FieldType::Integer),
        ],
    )
    .with_cursor_field("updated_at")
}

fn custom_fields_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_CUSTOM_FIELDS,
        "custom_field_id",
        vec![
            Field::new("custom_field_id", FieldType::String),
            Field::new("label", FieldType::String),
            Field::new("name", FieldType::String),
            Field::new("type", FieldType::String).with_description("string or date"),
            Field::new("created_at", FieldType::Timestamp),
            Field::new("updated_at", FieldType::Timestamp),
        ],
    )
    .with_cursor_field("updated_at")
}

fn campaigns_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_EMAIL_CAMPAIGNS,
        "campaign_id",
        vec![
            Field::new("campaign_id", FieldType::String),
            Field::new("name", FieldType::String),
            Field::new("current_status", FieldType::String)
                .with_description("Draft, Scheduled, Executing, Done, Error, Removed"),
            Field::new("type", FieldType::String),
            Field::new("type_code", FieldType::Integer),
            Field::new("created_at", FieldType::Timestamp),
            Field::new("updated_at", FieldType::Timestamp),
        ],
    )
    .with_cursor_field("updated_at")
}

fn activities_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_CAMPAIGN_ACTIVITIES,
        "campaign_activity_id",
        vec![
            Field::new("campaign_activity_id", FieldType::String),
            Field::new("campaign_id", FieldType::String),
            Field::new("role", FieldType::String)
                .with_description("primary_email, permalink, resend"),
            Field::new("current_status", FieldType::String),
            Field::new("format_type", FieldType::Integer),
            Field::new("contact_list_ids", FieldType::Json),
            Field::new("segment_ids", FieldType::Json),
            Field::new("from_email", FieldType::String),
            Field::new("from_name", FieldType::String),
            Field::new("reply_to_email", FieldType::String),
            Field::new("subject", FieldType::String),
            Field::new("preheader", FieldType::String),
            Field::new("template_id", FieldType::String),
            Field::new("permalink_url", FieldType::String),
            Field::new("html_content", FieldType::String),
            Field::new("physical_address_in_footer", FieldType::Json),
            Field::new("document_properties", FieldType::Json),
        ],
    )
}

fn summaries_schema() -> StreamSchema {
    let mut fields = vec![
        Field::new("campaign_id", FieldType::String),
        Field::new("campaign_type", FieldType::String),
        Field::new("last_sent_date", FieldType::Timestamp),
    ];
    for (name, what) in [
        ("sends", "Unique sends"),
        ("opens", "Unique opens"),
        ("clicks", "Unique clicks"),
        ("forwards", "Unique forwards"),
        ("optouts", "Unique opt-outs (unsubscribes)"),
        ("abuse", "Unique abuse (spam) reports"),
        ("bounces", "Unique bounces"),
        ("not_opened", "Unique non-opens"),
    ] {
        fields.push(Field::new(name, FieldType::Integer).with_description(what));
    }
    StreamSchema::new(STREAM_CAMPAIGN_SUMMARIES, "campaign_id", fields)
        .with_cursor_field("last_sent_date")
}

impl ConstantContactSource {
    /// A source on `cc` offering every stream in the table above.
    pub fn new(cc: ConstantContact) -> Self {
        ConstantContactSource {
            cc,
            settle_lag: DEFAULT_SETTLE_LAG,
            summary_window: None,
            sweep_deleted: true,
            custom_fields: Arc::new(Mutex::new(None)),
        }
    }

    /// How far behind "now" an incremental window ends (default 60 s):
    /// changes newer than that are read by the next run.
    pub fn with_settle_lag(mut self, lag: Duration) -> Self {
        self.settle_lag = lag;
        self
    }

    /// Re-read summaries only back to `window` (by `last_sent_date`) on
    /// runs after the first, merging them; `None` (the default) re-reads
    /// every summary every run.
    pub fn with_summary_window(mut self, window: Option<Duration>) -> Self {
        self.summary_window = window;
        self
    }

    /// Whether incremental contact reads also sweep `status=deleted`
    /// (default true; see the type's docs).
    pub fn with_deleted_sweep(mut self, sweep: bool) -> Self {
        self.sweep_deleted = sweep;
        self
    }

    /// The client underneath.
    pub fn client(&self) -> &ConstantContact {
        &self.cc
    }

    pub(super) fn lag_ms(&self) -> i64 {
        i64::try_from(self.settle_lag.as_millis()).unwrap_or(i64::MAX / 4)
    }

    pub(super) fn kind(&self, stream: &str) -> Kind {
        match stream {
            STREAM_CONTACTS => Kind::Windowed {
                sweep_deleted: self.sweep_deleted,
            },
            STREAM_EMAIL_CAMPAIGNS | STREAM_CAMPAIGN_ACTIVITIES => Kind::Windowed {
                sweep_deleted: false,
            },
            STREAM_CAMPAIGN_SUMMARIES => Kind::Summaries {
                window_ms: self
                    .summary_window
                    .map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX / 4)),
            },
            _ => Kind::Snapshot,
        }
    }

    /// Every custom field definition (all pages).
    async fn load_custom_fields(&self) -> Result<Vec<CustomField>> {
        let defs: Vec<CustomField> = self.cc.custom_fields().stream().try_collect().await?;
        *self
            .custom_fields
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(defs.clone());
        Ok(defs)
    }

    /// The custom field columns of `schema`, by custom field id: from the
    /// definitions read by the last `schema()` (or read now).
    async fn custom_field_columns(&self, schema: &StreamSchema) -> Result<CustomFieldColumns> {
        let cached = self
            .custom_fields
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let defs = match cached {
            Some(d) => d,
            None => self.load_custom_fields().await?,
        };
        Ok(defs
            .iter()
            .map(|f| (f.custom_field_id.clone(), custom_field_column(f)))
            .filter_map(|(id, column)| {
                schema
                    .field(&column)
                    .filter(|field| field.source_type.is_some())
                    .map(|field| (id, (column, field.field_type)))
            })
            .collect())
    }

    fn plan_for(&self, stream: &str, state: Option<StreamState>) -> Result<Plan> {
        let pos = Position::from_state(state)?;
        Plan::new(
            self.kind(stream),
            pos,
            Utc::now().timestamp_millis(),
            self.lag_ms(),
        )
    }

    fn read_contacts<'a>(
        &'a self,
        schema: &'a StreamSchema,
        state: Option<StreamState>,
    ) -> BoxStream<'a, Result<Page>> {
        let plan = match self.plan_for(STREAM_CONTACTS, state) {
            Ok(p) => Arc::new(p),
            Err(e) => return failed(e),
        };
        if plan.steps.is_empty() {
            return nothing_left(&plan);
        }
        let cc = self.cc.clone();
        let setup = async move { self.custom_field_columns(schema).await };
        futures::stream::once(setup)
            .map(move |columns| {
                let columns = match columns {
                    Ok(c) => Arc::new(c),
                    Err(e) => return failed(e),
                };
                let cc = cc.clone();
                run_plan(plan.clone(), move |plan, i, step| {
                    let columns = columns.clone();
                    let base = cc.contacts().include(CONTACT_INCLUDE);
                    let (req, window, scope) = match step {
                        Step::Full(next) => (
                            base.status("all").start_at(next),
                            None,
                            Some("contacts, status=all".to_owned()),
                        ),
                        Step::Changes { lo, hi, next } => (
                            base.status("all")
                                .updated_after(ms_to_time(lo - OVERLAP_MS))
                                .updated_before(ms_to_time(hi))
                                .start_at(next),
                            None,
                            Some(format!(
                                "contacts, status=all, updated in ({}, {})",
                                ms_to_time(lo - OVERLAP_MS).to_rfc3339(),
                                ms_to_time(hi).to_rfc3339()
                            )),
                        ),
                        Step::Deleted { lo, hi, next } => {
                            (base.status("deleted").start_at(next), Some((lo, hi)), None)
                        }
                        Step::Recent { .. } => return futures::stream::empty().boxed(),
                    };
                    step_pages(req, plan, i, scope, move |items| {
                        let records = items
                            .into_iter()
                            .filter(|c| match window {
                                None => true,
                                Some((lo, hi)) => deleted_since(c, lo, hi),
                            })
                            .map(|c| contact_record(c, &columns))
                            .collect();
                        (records, false)
                    })
                })
            })
            .flatten()
            .boxed()
    }

    /// Streams re-read in full: contact lists, custom fields.
    fn read_snapshot(
        &self,
        stream: &str,
        state: Option<StreamState>,
    ) -> BoxStream<'_, Result<Page>> {
        let plan = match self.plan_for(stream, state) {
            Ok(p) => Arc::new(p),
            Err(e) => return failed(e),
        };
        let cc = self.cc.clone();
        let lists = stream == STREAM_CONTACT_LISTS;
        run_plan(plan, move |plan, i, step| match step {
            Step::Full(next) if lists => {
                let scope = Some("contact_lists".to_owned());
                step_pages(cc.contact_lists().start_at(next), plan, i, scope, |items| {
                    (items.into_iter().map(list_record).collect(), false)
                })
            }
            Step::Full(next) => {
                step_pages(cc.custom_fields().start_at(next), plan, i, None, |items| {
                    (items.into_iter().map(custom_field_record).collect(), false)
                })
            }
            _ => futures::stream::empty().boxed(),
        })
    }

    fn read_campaigns(&self, state: Option<StreamState>) -> BoxStream<'_, Result<Page>> {
        let plan = match self.plan_for(STREAM_EMAIL_CAMPAIGNS, state) {
            Ok(p) => Arc::new(p),
            Err(e) => return failed(e),
        };
        let cc = self.cc.clone();
        run_plan(plan, move |plan, i, step| {
            let req = match step {
                Step::Full(next) => cc.email_campaigns().start_at(next),
                Step::Changes { lo, hi, next } => cc
                    .email_campaigns()
                    .after_date(ms_to_time(lo - OVERLAP_MS))
                    .before_date(ms_to_time(hi))
                    .start_at(next),
                _ => return futures::stream::empty().boxed(),
            };
            step_pages(req, plan, i, None, |items| {
                (items.into_iter().map(campaign_record).collect(), false)
            })
        })
    }

    fn read_summaries(&self, state: Option<StreamState>) -> BoxStream<'_, Result<Page>> {
        let plan = match self.plan_for(STREAM_CAMPAIGN_SUMMARIES, state) {
            Ok(p) => Arc::new(p),
            Err(e) => return failed(e),
        };
        let cc = self.cc.clone();
        run_plan(plan, move |plan, i, step| match step {
            Step::Full(next) => step_pages(
                cc.campaign_summaries().start_at(next),
                plan,
                i,
                None,
                |items| (items.into_iter().map(summary_record).collect(), false),
            ),
            Step::Recent { since_ms, next } => step_pages(
                cc.campaign_summaries().start_at(next),
                plan,
                i,
                None,
                move |items| {
                    // Newest send first: the first older one ends the window.
                    let old = |s: &CampaignSummary| {
                        s.last_sent_date
                            .is_some_and(|t| t.timestamp_millis() < since_ms)
                    };
                    let stop = items.iter().any(old);
                    let records = items
                        .into_iter()
                        .filter(|s| !old(s))
                        .map(summary_record)
                        .collect();
                    (records, stop)
                },
            ),
            _ => futures::stream::empty().boxed(),
        })
    }

    fn read_activities(&self, state: Option<StreamState>) -> BoxStream<'_, Result<Page>> {
        let pos = match Position::from_state(state) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let now = Utc::now().timestamp_millis();
        let lag = self.lag_ms();
        let (lo, hi, started_ms, page, after) = match pos {
            Position::Full { .. } => (None, None, Some(now), None, None),
            Position::Activities {
                lo,
                hi,
                started_ms,
                page,
                after,
            } => (lo, hi, started_ms, page, after),
            Position::Done {
                cursor_ms: Some(lo),
            } => {
                let hi = now - lag;
                if hi <= lo {
                    return done_page(Position::Done {
                        cursor_ms: Some(lo),
                    });
                }
                (Some(lo), Some(hi), None, None, None)
            }
            Position::Done { cursor_ms: None } => {
                return done_page(Position::Done { cursor_ms: None })
            }
            _ => {
                return failed(Error::State {
                    message: "not a campaign-activities state".into(),
                    source: None,
                })
            }
        };
        let done = Position::Done {
            cursor_ms: hi.or(started_ms.map(|s| s - lag)),
        };
        let at = move |page: Option<String>, after: Option<String>| Position::Activities {
            lo,
            hi,
            started_ms,
            page,
            after,
        };
        let mut req = self.cc.email_campaigns();
        if let (Some(lo), Some(hi)) = (lo, hi) {
            req = req
                .after_date(ms_to_time(lo - OVERLAP_MS))
                .before_date(ms_to_time(hi));
        }
        // Each campaigns page with its own link, so a checkpoint can name
        // "this page, after that campaign".
        let jobs = req
            .start_at(page.clone())
            .pages()
            .scan(page, |current, r| {
                let this = current.clone();
                if let Ok(p) = &r {
                    current.clone_from(&p.next);
                }
                futures::future::ready(Some(r.map(|p| (this, p))))
            })
            .enumerate()
            .map(move |(n, r)| {
                let (this, p) = match r {
                    Ok(x) => x,
                    Err(e) => return failed::<Job>(e),
                };
                let end_of_page = match &p.next {
                    Some(next) => at(Some(next.clone()), None),
                    None => done.clone(),
                };
                let mut items = p.items;
                if n == 0 {
                    if let Some(a) = &after {
                        if let Some(k) = items.iter().position(|c| &c.campaign_id == a) {
                            items.drain(..=k);
                        }
                    }
                }
                if items.is_empty() {
                    return futures::stream::once(futures::future::ready(Ok(Job {
                        campaign: None,
                        checkpoint: end_of_page,
                    })))
                    .boxed();
                }
                let last = items.len() - 1;
                let jobs: Vec<Result<Job>> = items
                    .into_iter()
                    .enumerate()
                    .map(|(k, c)| {
                        let checkpoint = if k == last {
                            end_of_page.clone()
                        } else {
                            at(this.clone(), Some(c.campaign_id.clone()))
                        };
                        Ok(Job {
                            campaign: Some(c),
                            checkpoint,
                        })
                    })
                    .collect();
                futures::stream::iter(jobs).boxed()
            })
            .flatten();
        let cc = self.cc.clone();
        let pages = jobs.then(move |job| {
            let cc = cc.clone();
            async move {
                let job = job?;
                let records = match job.campaign {
                    Some(c) => activities_of(&cc, c).await?,
                    None => Vec::new(),
                };
                Ok(Page::new(records, job.checkpoint.to_state()))
            }
        });
        stop_after_error(pages).boxed()
    }
}

/// One campaign whose activities to read, and the position after it.
struct Job {
    campaign: Option<EmailCampaign>,
    checkpoint: Position,
}

/// The activities of one campaign as records: its activity ids from
/// `GET /emails/{id}`, then each activity. Those of a removed campaign, or
/// that are gone, are deleted records.
async fn activities_of(cc: &ConstantContact, c: EmailCampaign) -> Result<Vec<Record>> {
    let full = match cc.email_campaign(&c.campaign_id).await {
        Ok(full) => full,
        // Deleted since it was listed: nothing to read.
        Err(Error::Api { status: 404, .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let removed = c.is_removed() || full.is_removed();
    let mut out = Vec::with_capacity(full.campaign_activities.len());
    for r in &full.campaign_activities {
        let id = r.campaign_activity_id.as_str();
        if removed {
            out.push(removed_activity_record(
                id,
                &c.campaign_id,
                r.role.as_deref(),
            ));
            continue;
        }
        match cc.campaign_activity(id, &[]).await {
            Ok(a) => out.push(activity_record(a, &c.campaign_id)),
            Err(Error::Api { status: 404, .. }) => out.push(removed_activity_record(
                id,
                &c.campaign_id,
                r.role.as_deref(),
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// True for a contact deleted on or after the day of `lo` that the window
/// of changes `lo..hi` did not already return.
fn deleted_since(c: &Contact, lo: i64, hi: i64) -> bool {
    let since_day = ms_to_time(lo).date_naive();
    let recent = c.deleted_at.is_some_and(|d| d >= since_day);
    let in_window = c.updated_at.is_some_and(|u| {
        let u = u.timestamp_millis();
        u > lo - OVERLAP_MS && u < hi
    });
    recent && !in_window
}

/// One empty page carrying `pos`: a read with nothing to do still hands the
/// engine its position, so the cursor is kept.
fn done_page<'a>(pos: Position) -> BoxStream<'a, Result<Page>> {
    futures::stream::once(futures::future::ready(Ok(Page::new(
        Vec::new(),
        pos.to_state(),
    ))))
    .boxed()
}

fn nothing_left<'a>(plan: &Plan) -> BoxStream<'a, Result<Page>> {
    done_page(plan.start_of(0))
}

/// Runs the steps of `plan` one after the other, each as the stream
/// `step` makes; ends after the first error.
fn run_plan<'a, F>(plan: Arc<Plan>, mut step: F) -> BoxStream<'a, Result<Page>>
where
    F: FnMut(Arc<Plan>, usize, Step) -> BoxStream<'static, Result<Page>> + Send + 'a,
{
    if plan.steps.is_empty() {
        return nothing_left(&plan);
    }
    let steps = plan.steps.clone().into_iter().enumerate();
    let pages = futures::stream::iter(steps)
        .map(move |(i, s)| step(plan.clone(), i, s))
        .flatten();
    stop_after_error(pages).boxed()
}

#[async_trait]
impl Source for ConstantContactSource {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn check(&self) -> Result<AccountInfo> {
        let raw = self.cc.account_raw().await?;
        let s = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        let account_id = s("encoded_account_id").ok_or_else(|| Error::Decode {
            provider: PROVIDER,
            what: "account summary".into(),
            path: "encoded_account_id".into(),
            message: "missing".into(),
        })?;
        let mut info = AccountInfo {
            provider: PROVIDER.into(),
            account_id,
            ..Default::default()
        };
        info.name = s("organization_name");
        info.user = s("contact_email");
        info.details = raw;
        Ok(info)
    }

    async fn discover(&self) -> Result<Catalog> {
        let defs = self.load_custom_fields().await?;
        Ok(Catalog::new(vec![
            lists_schema(),
            custom_fields_schema(),
            contacts_schema(&defs),
            campaigns_schema(),
            activities_schema(),
            summaries_schema(),
        ]))
    }

    async fn schema(&self, stream: &str) -> Result<StreamSchema> {
        match stream {
            STREAM_CONTACT_LISTS => Ok(lists_schema()),
            STREAM_CUSTOM_FIELDS => Ok(custom_fields_schema()),
            STREAM_CONTACTS => Ok(contacts_schema(&self.load_custom_fields().await?)),
            STREAM_EMAIL_CAMPAIGNS => Ok(campaigns_schema()),
            STREAM_CAMPAIGN_ACTIVITIES => Ok(activities_schema()),
            STREAM_CAMPAIGN_SUMMARIES => Ok(summaries_schema()),
            other => Err(Error::Config(format!(
                "`{other}` is not a Constant Contact stream (contact_lists, contact_custom_fields, \
                 contacts, email_campaigns, email_campaign_activities, email_campaign_summaries)"
            ))),
        }
    }

    fn resumes_incrementally(&self, stream: &StreamSchema, completed: &StreamState) -> bool {
        let has_cursor = matches!(
            Position::from_state(Some(completed.clone())),
            Ok(Position::Done { cursor_ms: Some(_) })
        );
        has_cursor
            && match self.kind(&stream.name) {
                Kind::Windowed { .. } => true,
                Kind::Summaries { window_ms } => window_ms.is_some(),
                Kind::Snapshot => false,
            }
    }

    fn read<'a>(
        &'a self,
        stream: &'a StreamSchema,
        state: Option<StreamState>,
    ) -> BoxStream<'a, Result<Page>> {
        match stream.name.as_str() {
            STREAM_CONTACTS => self.read_contacts(stream, state),
            STREAM_CONTACT_LISTS | STREAM_CUSTOM_FIELDS => self.read_snapshot(&stream.name, state),
            STREAM_EMAIL_CAMPAIGNS => self.read_campaigns(state),
            STREAM_CAMPAIGN_ACTIVITIES => self.read_activities(state),
            STREAM_CAMPAIGN_SUMMARIES => self.read_summaries(state),
            other => failed(Error::Config(format!(
                "`{other}` is not a Constant Contact stream"
            ))),
        }
    }

    fn read_ids<'a>(&'a self, stream: &'a StreamSchema) -> BoxStream<'a, Result<Vec<String>>> {
        if stream.name != STREAM_CONTACTS {
            return self
                .read(stream, None)
                .map(|page| {
                    page.map(|p| {
                        p.records
                            .into_iter()
                            .filter(|r| !r.deleted)
                            .map(|r| r.id)
                            .collect()
                    })
                })
                .boxed();
        }
        // Live contacts only, without sub-resources: the default status
        // leaves deleted contacts out.
        self.cc
            .contacts()
            .pages()
            .map_ok(|p| p.items.into_iter().map(|c| c.contact_id).collect())
            .boxed()
    }

    fn request_stats(&self) -> RequestStats {
        self.cc.stats()
    }

    async fn plan(&self, stream: &StreamSchema, state: Option<&StreamState>) -> Result<StreamPlan> {
        self.plan_stream(stream, state).await
    }

    fn daily_usage(&self) -> Option<DailyUsage> {
        self.cc.daily_usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: i64 = 1_000;

    #[test]
    fn a_full_contacts_read_ends_with_a_lagged_cursor_and_later_reads_take_windows() {
        let kind = Kind::Windowed {
            sweep_deleted: true,
        };
        let plan = Plan::new(
            kind,
            Position::from_state(None).expect("start"),
            10_000,
            LAG,
        )
        .expect("plan");
        assert_eq!(plan.steps, vec![Step::Full(None)]);
        assert_eq!(
            plan.after_page(0, Some("/v3/contacts?cursor=a".into()), 500),
            Position::Full {
                next: Some("/v3/contacts?cursor=a".into()),
                started_ms: Some(10_000),
                loaded: 500
            }
        );
        assert_eq!(
            plan.after_page(0, None, 700),
            Position::Done {
                cursor_ms: Some(9_000)
            }
        );
        // A resumed full read keeps its start time and what it had read.
        let resumed = Plan::new(
            kind,
            Position::Full {
                next: Some("x".into()),
                started_ms: Some(10_000),
                loaded: 500,
            },
            99_000,
            LAG,
        )
        .expect("plan");
        assert_eq!(
            (resumed.cursor_ms, resumed.loaded_at_start(0)),
            (Some(9_000), 500)
        );

        // Incremental: a fixed window, then the sweep of deletes.
        let inc = Plan::new(
            kind,
            Position::Done {
                cursor_ms: Some(9_000),
            },
            60_000,
            LAG,
        )
        .expect("plan");
        assert_eq!(
            inc.steps,
            vec![
                Step::Changes {
                    lo: 9_000,
                    hi: 59_000,
                    next: None
                },
                Step::Deleted {
                    lo: 9_000,
                    hi: 59_000,
                    next: None
                }
            ]
        );
        assert_eq!(
            inc.after_page(0, None, 3),
            Position::Deleted {
                lo: 9_000,
                hi: 59_000,
                next: None
            }
        );
        assert_eq!(
            inc.after_page(1, None, 0),
            Position::Done {
                cursor_ms: Some(59_000)
            }
        );
        // Too early for a new window: nothing to read, the cursor is kept.
        let early = Plan::new(
            kind,
            Position::Done {
                cursor_ms: Some(9_000),
            },
            9_500,
            LAG,
        )
        .expect("plan");
        assert!(early.steps.is_empty());
        assert_eq!(
            early.start_of(0),
            Position::Done {
                cursor_ms: Some(9_000)
            }
        );
        // States round-trip; foreign ones are refused.
        let p = Position::Changes {
            lo: 1,
            hi: 2,
            next: Some("/v3/contacts?cursor=b".into()),
            loaded: 9,
        };
        assert_eq!(Position::from_state(Some(p.to_state())).expect("state"), p);
        assert!(
            Position::from_state(Some(StreamState(serde_json::json!({"phase": "x"})))).is_err()
        );
        assert!(Plan::new(
            kind,
            Position::Activities {
                lo: None,
                hi: None,
                started_ms: None,
                page: None,
                after: None
            },
            0,
            0
        )
        .is_err());
    }

    #[test]
    fn summaries_are_reread_in_full_or_back_to_a_window() {
        let full = Plan::new(
            Kind::Summaries { window_ms: None },
            Position::from_state(None).expect("start"),
            50_000,
            LAG,
        )
        .expect("plan");
        assert_eq!(
            full.after_page(0, None, 0),
            Position::Done { cursor_ms: None }
        );
        let windowed = Kind::Summaries {
            window_ms: Some(20_000),
        };
        let next = Plan::new(
            windowed,
            Position::Done {
                cursor_ms: Some(10_000),
            },
            50_000,
            LAG,
        )
        .expect("plan");
        assert_eq!(
            next.steps,
            vec![Step::Recent {
                since_ms: 30_000,
                next: None
            }]
        );
        assert_eq!(
            next.after_page(0, None, 0),
            Position::Done {
                cursor_ms: Some(50_000)
            }
        );
    }

    #[test]
    fn custom_field_dates_are_typed_and_other_values_kept() {
        for (v, want) in [
            ("2024-03-01", "2024-03-01"),
            ("03/01/2024", "2024-03-01"),
            ("3/1/2024", "2024-03-01"),
            ("2024/03/01", "2024-03-01"),
            ("2024-03-01T10:00:00Z", "2024-03-01"),
            ("soon", "soon"),
        ] {
            assert_eq!(
                custom_field_value(v, FieldType::Date),
                Value::String(want.into()),
                "{v}"
            );
        }
        assert_eq!(custom_field_value(" ", FieldType::Date), Value::Null);
        assert_eq!(
            custom_field_value("03/01/2024", FieldType::String),
            Value::String("03/01/2024".into())
        );
    }
}
