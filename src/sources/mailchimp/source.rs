//! [`MailchimpSource`]: Mailchimp as a [`Source`] for the sync engine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::window::Window;
use super::{
    api_time, Automation, AutomationEmail, Campaign, CampaignReport, Collection, ListRequest,
    Mailchimp, Member, MergeField, SortDir, MAX_COUNT, PROVIDER,
};
use crate::http::RequestStats;
use crate::schema::{coerce, Catalog, Field, FieldType, StreamSchema};
use crate::source::{AccountInfo, CountCheck, Page, Record, Source, StreamPlan, StreamState};
use crate::{Error, Result};

/// Audiences.
pub const STREAM_LISTS: &str = "lists";
/// Members of every audience, one stream (key: `list_id` + `id`).
pub const STREAM_LIST_MEMBERS: &str = "list_members";
/// Campaigns.
pub const STREAM_CAMPAIGNS: &str = "campaigns";
/// Campaign reports (performance).
pub const STREAM_REPORTS: &str = "reports";
/// Classic automations.
pub const STREAM_AUTOMATIONS: &str = "automations";
/// The emails of every automation.
pub const STREAM_AUTOMATION_EMAILS: &str = "automation_emails";

/// How far back every incremental run re-reads campaigns and reports by send
/// time (4 weeks): their status, opens and clicks keep changing after the
/// send.
pub const DEFAULT_REREAD_WINDOW: Duration = Duration::from_secs(28 * 24 * 3600);
/// How far behind "now" a read's upper time bound is (60 s): records
/// changed in that last minute are read by the next run.
pub const DEFAULT_SETTLE_LAG: Duration = Duration::from_secs(60);

/// Mailchimp as a source: `lists`, `list_members`, `campaigns`, `reports`,
/// `automations` and `automation_emails`.
///
/// - **Members** of every audience are one stream keyed by `list_id` and
///   `id` (the subscriber hash). Each audience's merge fields become typed
///   columns `merge_<TAG>` (the raw `merge_fields` object is kept too); when
///   two audiences give one tag different types, the column is text (or
///   JSON when one of them is an address). Incremental runs read the members
///   changed since the previous run through `since_last_changed`, with a
///   cursor per audience; audiences added since are read in full. Members
///   whose status is `archived` or `cleaned` are ordinary records; a member
///   deleted permanently is no longer listed by Mailchimp, so the deletion
///   never reaches the sink.
/// - **Campaigns**: incremental runs read the campaigns created since the
///   last run (`since_create_time`) and re-read those sent within the
///   re-read window ([`DEFAULT_REREAD_WINDOW`], see
///   [`MailchimpSource::with_reread_window`]), whose status and figures
///   still change. A draft edited but not sent is read again by a full
///   refresh.
/// - **Reports**: incremental runs read the reports of campaigns sent since
///   the last run or within the re-read window, so opens and clicks stay
///   current for that long.
/// - **Lists, automations, automation emails**: small; read in full every
///   run.
///
/// Every windowed read takes a fixed upper time bound when it starts (now
/// less [`DEFAULT_SETTLE_LAG`]): records added or changed while it runs are
/// read by the next run, and a change never shifts a page so that a record
/// is skipped (see the module `window`).
#[derive(Debug, Clone)]
pub struct MailchimpSource {
    mc: Mailchimp,
    reread_window: Duration,
    settle_lag: Duration,
}

impl MailchimpSource {
    /// A source on `mc`.
    pub fn new(mc: Mailchimp) -> Self {
        MailchimpSource {
            mc,
            reread_window: DEFAULT_REREAD_WINDOW,
            settle_lag: DEFAULT_SETTLE_LAG,
        }
    }

    /// How far back (by send time) every incremental run re-reads campaigns
    /// and reports (default 4 weeks).
    pub fn with_reread_window(mut self, window: Duration) -> Self {
        self.reread_window = window;
        self
    }

    /// How far behind "now" a read's upper time bound is (default 60 s).
    pub fn with_settle_lag(mut self, lag: Duration) -> Self {
        self.settle_lag = lag;
        self
    }

    /// The client underneath.
    pub fn client(&self) -> &Mailchimp {
        &self.mc
    }

    /// The upper time bound of a read starting now.
    fn upper_bound(&self) -> i64 {
        let lag = chrono::Duration::from_std(self.settle_lag).unwrap_or(chrono::Duration::zero());
        (Utc::now() - lag).timestamp()
    }

    fn reread_secs(&self) -> i64 {
        i64::try_from(self.reread_window.as_secs()).unwrap_or(i64::MAX / 4)
    }

    /// The typed merge-field columns of every audience, by tag.
    async fn merge_columns(&self) -> Result<Vec<MergeColumn>> {
        let audiences = audience_ids(&self.mc).await?;
        let mut by_tag: BTreeMap<String, MergeColumn> = BTreeMap::new();
        for list_id in &audiences {
            let fields: Vec<MergeField> =
                match self.mc.merge_fields(list_id).stream().try_collect().await {
                    Ok(f) => f,
                    // Deleted between the two calls.
                    Err(Error::Api { status: 404, .. }) => continue,
                    Err(e) => return Err(e),
                };
            for f in fields {
                let t = merge_field_type(&f.field_type);
                let col = by_tag.entry(f.tag.clone()).or_insert_with(|| MergeColumn {
                    tag: f.tag.clone(),
                    field_type: t,
                    source_types: BTreeSet::new(),
                    labels: BTreeSet::new(),
                    lists: Vec::new(),
                });
                if col.field_type != t {
                    col.field_type = if col.field_type == FieldType::Json || t == FieldType::Json {
                        FieldType::Json
                    } else {
                        FieldType::String
                    };
                }
                col.source_types.insert(f.field_type.clone());
                if let Some(name) = f.name {
                    col.labels.insert(name);
                }
                col.lists.push(list_id.clone());
            }
        }
        Ok(by_tag.into_values().collect())
    }

    async fn members_schema(&self) -> Result<StreamSchema> {
        let mut fields = member_fields();
        for col in self.merge_columns().await? {
            let labels: Vec<&str> = col.labels.iter().map(String::as_str).collect();
            let types: Vec<&str> = col.source_types.iter().map(String::as_str).collect();
            fields.push(
                Field::new(merge_column_name(&col.tag), col.field_type)
                    .with_description(format!(
                        "Merge field {} ({}) of audiences {}",
                        col.tag,
                        labels.join(" / "),
                        col.lists.join(", ")
                    ))
                    .with_source_type(format!("merge:{}", types.join("|"))),
            );
        }
        let mut schema = StreamSchema::new(STREAM_LIST_MEMBERS, "list_id", fields)
            .with_cursor_field("last_changed");
        schema.primary_key = vec!["list_id".into(), "id".into()];
        Ok(schema)
    }
}

/// One merge-field column across audiences.
struct MergeColumn {
    tag: String,
    field_type: FieldType,
    source_types: BTreeSet<String>,
    labels: BTreeSet<String>,
    lists: Vec<String>,
}

/// The column of a merge tag: `merge_<TAG>`, apart from the member's own
/// fields whatever the tag.
fn merge_column_name(tag: &str) -> String {
    format!("merge_{tag}")
}

/// Maps a Mailchimp merge-field type to a field type.
///
/// | merge field type | field type |
/// |---|---|
/// | `number` | Number |
/// | `date` | Date |
/// | `address` | Json (`addr1`, `addr2`, `city`, `state`, `zip`, `country`) |
/// | `text`, `phone`, `url`, `imageurl`, `radio`, `dropdown`, `zip`, `birthday` (`MM/DD`), anything else | String |
pub fn merge_field_type(merge_type: &str) -> FieldType {
    match merge_type {
        "number" => FieldType::Number,
        "date" => FieldType::Date,
        "address" => FieldType::Json,
        _ => FieldType::String,
    }
}

/// Just an id, for listings trimmed with `fields=…id`.
#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// A member's id and change time, for id listings.
#[derive(Deserialize)]
struct MemberId {
    id: String,
    #[serde(default, with = "super::models::opt_time")]
    last_changed: Option<DateTime<Utc>>,
}

/// The ids of a collection (`lists`, `automations`), one request per 1000.
async fn collection_ids(mc: &Mailchimp, path: &str, key: &'static str) -> Result<Vec<String>> {
    let mut req = ListRequest::<IdOnly>::new(mc.clone(), path.to_owned(), key)
        .param("fields", format!("{key}.id,total_items"));
    if key == "lists" {
        req = req.sort("date_created", SortDir::Asc);
    }
    req.stream().map_ok(|a| a.id).try_collect().await
}

/// `total_items` of a collection under time filters, in one small request.
async fn count_of(
    mc: &Mailchimp,
    path: &str,
    key: &'static str,
    filters: &[(&str, DateTime<Utc>)],
) -> Result<u64> {
    let mut req = ListRequest::<IdOnly>::new(mc.clone(), path.to_owned(), key)
        .count(1)
        .param("fields", format!("total_items,{key}.id"));
    for (name, t) in filters {
        req = req.time_filter(name, *t);
    }
    Ok(req.send().await?.total_items.unwrap_or(0))
}

/// The ids of every audience, in creation order.
async fn audience_ids(mc: &Mailchimp) -> Result<Vec<String>> {
    collection_ids(mc, "lists", "lists").await
}

fn secs(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp())
}

fn time_of(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn window_scope(what: &str, field: &str, w: &Window) -> String {
    format!(
        "{what}, {field} in [{}, {})",
        w.lo.map(|t| api_time(time_of(t)))
            .unwrap_or_else(|| "start".into()),
        api_time(time_of(w.hi))
    )
}

// ---------------------------------------------------------------------------
// Stream states
// ---------------------------------------------------------------------------

/// Where the `list_members` stream stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub(crate) enum MembersPos {
    /// Reading audience `lists[index]` in `window`; `cursors` holds where
    /// each audience's next incremental read starts.
    Reading {
        lists: Vec<String>,
        index: usize,
        window: Window,
        cursors: BTreeMap<String, i64>,
    },
    /// Finished; the next run reads changes from `cursors`.
    Done { cursors: BTreeMap<String, i64> },
}

/// Where the `campaigns` stream stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub(crate) enum CampaignsPos {
    /// By creation time; then, on incremental runs, the campaigns sent
    /// from `reread_from`.
    Created {
        window: Window,
        #[serde(default)]
        reread_from: Option<i64>,
    },
    /// By send time, skipping those created from `created_from` (read in
    /// the first phase).
    Sent {
        window: Window,
        #[serde(default)]
        created_from: Option<i64>,
    },
    /// Finished; the next run reads campaigns created from `cursor`.
    Done { cursor: i64 },
}

/// Where the `reports` stream stands (plain offsets over a fixed send-time
/// window: `/reports` has no sort parameter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub(crate) enum ReportsPos {
    Reading {
        #[serde(default)]
        since: Option<i64>,
        hi: i64,
        offset: u64,
        #[serde(default)]
        reported: Option<u64>,
    },
    Done {
        cursor: i64,
    },
}

/// Where a stream read in full every run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub(crate) enum FullPos {
    /// A listing at an offset, under an upper time bound.
    Listing {
        offset: u64,
        #[serde(default)]
        hi: Option<i64>,
    },
    /// Automation emails: the automations to read, and the next one.
    Workflows {
        ids: Vec<String>,
        index: usize,
    },
    Done {},
}

pub(crate) fn to_state<T: Serialize>(pos: &T) -> StreamState {
    StreamState(serde_json::to_value(pos).unwrap_or(Value::Null))
}

pub(crate) fn from_state<T: for<'de> Deserialize<'de>>(
    state: Option<&StreamState>,
    stream: &str,
) -> Result<Option<T>> {
    match state {
        None => Ok(None),
        Some(s) if s.0.is_null() => Ok(None),
        Some(s) => serde_json::from_value(s.0.clone())
            .map(Some)
            .map_err(|e| Error::state(format!("unreadable Mailchimp `{stream}` state"), e)),
    }
}

// ---------------------------------------------------------------------------
// Readers: each yields pages until it is done
// ---------------------------------------------------------------------------

#[async_trait]
trait Reader: Send + 'static {
    /// The next page, `None` when the stream is finished.
    async fn next_page(&mut self) -> Result<Option<Page>>;
}

fn drive<R: Reader>(reader: R) -> BoxStream<'static, Result<Page>> {
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next_page().await {
            Ok(Some(page)) => Some((Ok(page), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

fn fail(e: Error) -> BoxStream<'static, Result<Page>> {
    futures::stream::once(async { Err(e) }).boxed()
}

/// Reads one page of a time window: the request at the window's offset and
/// lower bound, returning the items not read before and whether the window
/// is finished. Requests that read nothing new (a tie being stepped through)
/// are repeated here rather than yielded as empty pages.
async fn window_page<T, F>(
    req: impl Fn(Option<i64>) -> ListRequest<T>,
    window: &mut Window,
    key: F,
) -> Result<(Vec<T>, bool)>
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: Fn(&T) -> (&str, Option<i64>),
{
    loop {
        let offset = window.offset();
        let Collection { items, total_items } = req(window.since()).offset(offset).send().await?;
        let keys: Vec<(&str, Option<i64>)> = items.iter().map(&key).collect();
        let step = window
            .advance(offset, &keys, total_items, u64::from(MAX_COUNT))
            .map_err(|why| Error::CursorRepeated {
                provider: PROVIDER,
                what: "a time-window listing".into(),
                cursor: why,
                pages: u64::from(window.idle),
            })?;
        if step.new.is_empty() && !step.done {
            continue;
        }
        let mut keep = step.new.into_iter().peekable();
        let items = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                if keep.peek() == Some(&i) {
                    keep.next();
                    Some(item)
                } else {
                    None
                }
            })
            .collect();
        return Ok((items, step.done));
    }
}

struct MembersReader {
    mc: Mailchimp,
    merge: Arc<Vec<(String, FieldType)>>,
    hi: i64,
    /// `None` until the audiences are listed.
    pos: Option<MembersPos>,
    /// The cursors an incremental run starts from.
    start: BTreeMap<String, i64>,
    finished: bool,
}

fn member_window(cursors: &BTreeMap<String, i64>, list_id: &str, hi: i64) -> Window {
    // One second of overlap with the previous run: exact whichever way the
    // API treats its bounds; records read twice across runs are upserts.
    Window::new(cursors.get(list_id).map(|c| c - 1), hi)
}

#[async_trait]
impl Reader for MembersReader {
    async fn next_page(&mut self) -> Result<Option<Page>> {
        if self.finished {
            return Ok(None);
        }
        let mut records = Vec::new();
        let mut counts = Vec::new();
        loop {
            let pos = match self.pos.take() {
                Some(p) => p,
                None => {
                    let lists = audience_ids(&self.mc).await?;
                    let cursors = std::mem::take(&mut self.start);
                    match lists.first() {
                        Some(first) => MembersPos::Reading {
                            window: member_window(&cursors, first, self.hi),
                            lists,
                            index: 0,
                            cursors,
                        },
                        None => MembersPos::Done {
                            cursors: BTreeMap::new(),
                        },
                    }
                }
            };
            let MembersPos::Reading {
                lists,
                mut index,
                mut window,
                mut cursors,
            } = pos
            else {
                self.finished = true;
                let page = Page::new(records, to_state(&pos));
                self.pos = Some(pos);
                return Ok(Some(with_counts(page, counts)));
            };
            let Some(list_id) = lists.get(index).cloned() else {
                // A state pointing past its audiences: the read is over.
                self.pos = Some(MembersPos::Done { cursors });
                continue;
            };
            let hi = window.hi;
            let mut gone = false;
            let mc = self.mc.clone();
            let page = window_page(
                |since| {
                    let mut r = mc
                        .members(&list_id)
                        .sort("last_changed", SortDir::Asc)
                        .time_filter("before_last_changed", time_of(hi));
                    if let Some(s) = since {
                        r = r.time_filter("since_last_changed", time_of(s));
                    }
                    r
                },
                &mut window,
                |m: &Member| (m.id.as_str(), secs(m.last_changed)),
            )
            .await;
            let done = match page {
                Ok((members, done)) => {
                    records.extend(
                        members
                            .into_iter()
                            .map(|m| member_record(m, &list_id, &self.merge)),
                    );
                    done
                }
                Err(Error::Api { status: 404, .. }) => {
                    // The audience was deleted during the read.
                    tracing::warn!(list_id, "audience gone; skipping its members");
                    gone = true;
                    true
                }
                Err(e) => return Err(e),
            };
            if done {
                if gone {
                    cursors.remove(&list_id);
                } else {
                    if let Some(reported) = window.reported {
                        counts.push(CountCheck::new(
                            window_scope(
                                &format!("members of audience {list_id}"),
                                "last_changed",
                                &window,
                            ),
                            reported,
                            window.loaded,
                        ));
                    }
                    cursors.insert(list_id.clone(), hi);
                }
                index += 1;
            }
            let next = match (done, lists.get(index)) {
                (true, None) => {
                    let keep: BTreeSet<&String> = lists.iter().collect();
                    cursors.retain(|k, _| keep.contains(k));
                    MembersPos::Done { cursors }
                }
                (true, Some(next)) => MembersPos::Reading {
                    window: member_window(&cursors, next, hi),
                    lists,
                    index,
                    cursors,
                },
                (false, _) => MembersPos::Reading {
                    window,
                    lists,
                    index,
                    cursors,
                },
            };
            let finished = matches!(next, MembersPos::Done { .. });
            // Audiences without changes are not worth a page each.
            if records.is_empty() && !finished {
                self.pos = Some(next);
                continue;
            }
            let page = Page::new(records, to_state(&next));
            self.finished = finished;
            self.pos = Some(next);
            return Ok(Some(with_counts(page, counts)));
        }
    }
}

fn with_counts(mut page: Page, counts: Vec<CountCheck>) -> Page {
    for c in counts {
        page = page.with_count(c);
    }
    page
}

/// A typed model as a record's fields.
fn fields_of<T: Serialize>(item: &T) -> Map<String, Value> {
    match serde_json::to_value(item) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// A merge value typed for its column: blanks (`""`) become null where the
/// column is not text, and a number in a text column (two audiences typing
/// one tag differently) becomes text.
fn merge_value(v: Value, t: FieldType) -> Value {
    match (t, v) {
        (FieldType::String, v @ (Value::Number(_) | Value::Bool(_))) => {
            Value::String(v.to_string())
        }
        (FieldType::String, Value::Object(o)) => Value::String(Value::Object(o).to_string()),
        (t, v) => coerce(v, t),
    }
}

pub(crate) fn member_record(m: Member, list_id: &str, merge: &[(String, FieldType)]) -> Record {
    let mut data = fields_of(&m);
    data.insert("list_id".into(), Value::String(list_id.to_owned()));
    for (tag, t) in merge {
        if let Some(v) = m.merge_fields.get(tag) {
            data.insert(merge_column_name(tag), merge_value(v.clone(), *t));
        }
    }
    Record::new(format!("{list_id}:{}", m.id), data)
}

struct CampaignsReader {
    mc: Mailchimp,
    pos: CampaignsPos,
    finished: bool,
}

#[async_trait]
impl Reader for CampaignsReader {
    async fn next_page(&mut self) -> Result<Option<Page>> {
        if self.finished {
            return Ok(None);
        }
        let mc = self.mc.clone();
        let mut counts = Vec::new();
        let (records, next) = match self.pos.clone() {
            CampaignsPos::Done { .. } => {
                self.finished = true;
                return Ok(Some(Page::new(Vec::new(), to_state(&self.pos))));
            }
            CampaignsPos::Created {
                mut window,
                reread_from,
            } => {
                let hi = window.hi;
                let (items, done) = window_page(
                    |since| {
                        let mut r = mc
                            .campaigns()
                            .sort("create_time", SortDir::Asc)
                            .time_filter("before_create_time", time_of(hi));
                        if let Some(s) = since {
                            r = r.time_filter("since_create_time", time_of(s));
                        }
                        r
                    },
                    &mut window,
                    |c: &Campaign| (c.id.as_str(), secs(c.create_time)),
                )
                .await?;
                let next = if !done {
                    CampaignsPos::Created {
                        window,
                        reread_from,
                    }
                } else {
                    if let Some(reported) = window.reported {
                        counts.push(CountCheck::new(
                            window_scope("campaigns", "create_time", &window),
                            reported,
                            window.loaded,
                        ));
                    }
                    match reread_from {
                        Some(from) => CampaignsPos::Sent {
                            window: Window::new(Some(from), hi),
                            created_from: window.lo,
                        },
                        None => CampaignsPos::Done { cursor: hi },
                    }
                };
                (items, next)
            }
            CampaignsPos::Sent {
                mut window,
                created_from,
            } => {
                let hi = window.hi;
                let (items, done) = window_page(
                    |since| {
                        let mut r = mc
                            .campaigns()
                            .sort("send_time", SortDir::Asc)
                            .time_filter("before_send_time", time_of(hi));
                        if let Some(s) = since {
                            r = r.time_filter("since_send_time", time_of(s));
                        }
                        r
                    },
                    &mut window,
                    |c: &Campaign| (c.id.as_str(), secs(c.send_time)),
                )
                .await?;
                // Campaigns created in the first phase's window were read there.
                let items = items
                    .into_iter()
                    .filter(|c| match (created_from, secs(c.create_time)) {
                        (Some(from), Some(t)) => t < from,
                        _ => true,
                    })
                    .collect();
                let next = if done {
                    CampaignsPos::Done { cursor: hi }
                } else {
                    CampaignsPos::Sent {
                        window,
                        created_from,
                    }
                };
                (items, next)
            }
        };
        let records = records.into_iter().map(campaign_record).collect();
        self.finished = matches!(next, CampaignsPos::Done { .. });
        self.pos = next;
        Ok(Some(with_counts(
            Page::new(records, to_state(&self.pos)),
            counts,
        )))
    }
}

pub(crate) fn campaign_record(c: Campaign) -> Record {
    let mut data = fields_of(&c);
    let list_id = c.recipients.as_ref().and_then(|r| r.list_id.clone());
    let (subject, title) = c
        .settings
        .as_ref()
        .map(|s| (s.subject_line.clone(), s.title.clone()))
        .unwrap_or_default();
    data.insert("list_id".into(), list_id.map_or(Value::Null, Value::String));
    data.insert(
        "subject_line".into(),
        subject.map_or(Value::Null, Value::String),
    );
    data.insert("title".into(), title.map_or(Value::Null, Value::String));
    Record::new(c.id, data)
}

struct ReportsReader {
    mc: Mailchimp,
    pos: ReportsPos,
    finished: bool,
}

#[async_trait]
impl Reader for ReportsReader {
    async fn next_page(&mut self) -> Result<Option<Page>> {
        if self.finished {
            return Ok(None);
        }
        let ReportsPos::Reading {
            since,
            hi,
            offset,
            reported,
        } = self.pos.clone()
        else {
            self.finished = true;
            return Ok(Some(Page::new(Vec::new(), to_state(&self.pos))));
        };
        let mut req = self
            .mc
            .reports()
            .time_filter("before_send_time", time_of(hi))
            .offset(offset);
        if let Some(s) = since {
            req = req.time_filter("since_send_time", time_of(s));
        }
        let Collection { items, total_items } = req.send().await?;
        let reported = if offset == 0 { total_items } else { reported };
        let n = items.len() as u64;
        let end = offset + n;
        let done = n < u64::from(MAX_COUNT) || total_items.is_some_and(|t| end >= t);
        let mut page_counts = Vec::new();
        self.pos = if done {
            if let Some(reported) = reported {
                page_counts.push(CountCheck::new(
                    format!(
                        "reports, send_time in [{}, {})",
                        since
                            .map(|t| api_time(time_of(t)))
                            .unwrap_or_else(|| "start".into()),
                        api_time(time_of(hi))
                    ),
                    reported,
                    end,
                ));
            }
            ReportsPos::Done { cursor: hi }
        } else {
            ReportsPos::Reading {
                since,
                hi,
                offset: end,
                reported,
            }
        };
        self.finished = done;
        let records = items.into_iter().map(report_record).collect();
        Ok(Some(with_counts(
            Page::new(records, to_state(&self.pos)),
            page_counts,
        )))
    }
}

pub(crate) fn report_record(r: CampaignReport) -> Record {
    let mut data = fields_of(&r);
    let num = |v: Option<u64>| v.map_or(Value::Null, Value::from);
    let rate = |v: Option<f64>| {
        v.and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number)
    };
    let time = |t: Option<DateTime<Utc>>| {
        t.map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        })
    };
    let b = r.bounces.as_ref();
    data.insert("hard_bounces".into(), num(b.and_then(|b| b.hard_bounces)));
    data.insert("soft_bounces".into(), num(b.and_then(|b| b.soft_bounces)));
    data.insert("syntax_errors".into(), num(b.and_then(|b| b.syntax_errors)));
    let o = r.opens.as_ref();
    data.insert("opens_total".into(), num(o.and_then(|o| o.opens_total)));
    data.insert("unique_opens".into(), num(o.and_then(|o| o.unique_opens)));
    data.insert("open_rate".into(), rate(o.and_then(|o| o.open_rate)));
    data.insert("last_open".into(), time(o.and_then(|o| o.last_open)));
    let c = r.clicks.as_ref();
    data.insert("clicks_total".into(), num(c.and_then(|c| c.clicks_total)));
    data.insert("unique_clicks".into(), num(c.and_then(|c| c.unique_clicks)));
    data.insert(
        "unique_subscriber_clicks".into(),
        num(c.and_then(|c| c.unique_subscriber_clicks)),
    );
    data.insert("click_rate".into(), rate(c.and_then(|c| c.click_rate)));
    data.insert("last_click".into(), time(c.and_then(|c| c.last_click)));
    Record::new(r.id, data)
}

/// Lists and automations: a plain offset walk under an upper time bound.
struct ListingReader<T> {
    stream: &'static str,
    req: Arc<dyn Fn(i64) -> ListRequest<T> + Send + std::marker::Sync>,
    record: fn(T) -> Record,
    pos: FullPos,
    finished: bool,
}

#[async_trait]
impl<T: serde::de::DeserializeOwned + Send + 'static> Reader for ListingReader<T> {
    async fn next_page(&mut self) -> Result<Option<Page>> {
        if self.finished {
            return Ok(None);
        }
        let (offset, hi) = match &self.pos {
            FullPos::Listing { offset, hi } => {
                (*offset, hi.unwrap_or_else(|| Utc::now().timestamp()))
            }
            FullPos::Done {} => {
                self.finished = true;
                return Ok(Some(Page::new(Vec::new(), to_state(&self.pos))));
            }
            FullPos::Workflows { .. } => {
                return Err(Error::State {
                    message: format!("`{}` state belongs to another stream", self.stream),
                    source: None,
                })
            }
        };
        let Collection { items, total_items } = (self.req)(hi).offset(offset).send().await?;
        let n = items.len() as u64;
        let done = n < u64::from(MAX_COUNT) || total_items.is_some_and(|t| offset + n >= t);
        self.pos = if done {
            FullPos::Done {}
        } else {
            FullPos::Listing {
                offset: offset + n,
                hi: Some(hi),
            }
        };
        self.finished = done;
        let records = items.into_iter().map(self.record).collect();
        Ok(Some(Page::new(records, to_state(&self.pos))))
    }
}

pub(crate) fn plain_record<T: Serialize>(id: String, item: &T) -> Record {
    Record::new(id, fields_of(item))
}

struct EmailsReader {
    mc: Mailchimp,
    pos: Option<FullPos>,
    finished: bool,
}

#[async_trait]
impl Reader for EmailsReader {
    async fn next_page(&mut self) -> Result<Option<Page>> {
        if self.finished {
            return Ok(None);
        }
        let (ids, index) = match self.pos.take() {
            None => {
                let ids = collection_ids(&self.mc, "automations", "automations").await?;
                (ids, 0)
            }
            Some(FullPos::Workflows { ids, index }) => (ids, index),
            Some(other) => {
                self.finished = true;
                return Ok(Some(Page::new(Vec::new(), to_state(&other))));
            }
        };
        let Some(id) = ids.get(index) else {
            self.finished = true;
            let done = FullPos::Done {};
            return Ok(Some(Page::new(Vec::new(), to_state(&done))));
        };
        let emails = match self.mc.automation_emails(id).await {
            Ok(e) => e,
            Err(Error::Api { status: 404, .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let records = emails
            .into_iter()
            .map(|e: AutomationEmail| {
                let mut r = plain_record(e.id.clone(), &e);
                if e.workflow_id.is_none() {
                    r.data
                        .insert("workflow_id".into(), Value::String(id.clone()));
                }
                r
            })
            .collect();
        let next = if index + 1 >= ids.len() {
            self.finished = true;
            FullPos::Done {}
        } else {
            FullPos::Workflows {
                ids,
                index: index + 1,
            }
        };
        let page = Page::new(records, to_state(&next));
        self.pos = Some(next);
        Ok(Some(page))
    }
}

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

fn f(name: &str, t: FieldType) -> Field {
    Field::new(name, t)
}

use FieldType::{Boolean as B, Integer as I, Json as J, Number as N, String as S, Timestamp as Ts};

fn lists_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_LISTS,
        "id",
        vec![
            f("id", S).with_description("Audience id"),
            f("web_id", I),
            f("name", S),
            f("date_created", Ts),
            f("visibility", S),
            f("list_rating", I),
            f("double_optin", B),
            f("email_type_option", B),
            f("has_welcome", B),
            f("marketing_permissions", B),
            f("use_archive_bar", B),
            f("permission_reminder", S),
            f("notify_on_subscribe", S),
            f("notify_on_unsubscribe", S),
            f("subscribe_url_short", S),
            f("subscribe_url_long", S),
            f("beamer_address", S),
            f("contact", J),
            f("campaign_defaults", J),
            f("stats", J).with_description("Member counts, rates, last send"),
            f("modules", J),
        ],
    )
}

fn member_fields() -> Vec<Field> {
    vec![
        f("list_id", S).with_description("Audience id"),
        f("id", S).with_description("Subscriber hash: MD5 of the lower-cased email"),
        f("email_address", S),
        f("unique_email_id", S),
        f("contact_id", S),
        f("full_name", S),
        f("web_id", I),
        f("email_type", S),
        f("status", S).with_description(
            "subscribed, unsubscribed, cleaned, pending, transactional or archived",
        ),
        f("unsubscribe_reason", S),
        f("consents_to_one_to_one_messaging", B),
        f("ip_signup", S),
        f("timestamp_signup", Ts),
        f("ip_opt", S),
        f("timestamp_opt", Ts),
        f("member_rating", I),
        f("last_changed", Ts),
        f("language", S),
        f("vip", B),
        f("email_client", S),
        f("source", S),
        f("tags_count", I),
        f("tags", J),
        f("interests", J),
        f("stats", J),
        f("location", J),
        f("marketing_permissions", J),
        f("last_note", J),
        f("merge_fields", J).with_description("All merge fields as sent"),
    ]
}

fn campaigns_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_CAMPAIGNS,
        "id",
        vec![
            f("id", S),
            f("web_id", I),
            f("parent_campaign_id", S),
            f("type", S),
            f("create_time", Ts),
            f("status", S),
            f("emails_sent", I),
            f("send_time", Ts),
            f("content_type", S),
            f("archive_url", S),
            f("long_archive_url", S),
            f("needs_block_refresh", B),
            f("resendable", B),
            f("list_id", S).with_description("recipients.list_id"),
            f("subject_line", S).with_description("settings.subject_line"),
            f("title", S).with_description("settings.title"),
            f("recipients", J),
            f("settings", J),
            f("report_summary", J),
            f("tracking", J),
            f("delivery_status", J),
            f("variate_settings", J),
            f("rss_opts", J),
            f("ab_split_opts", J),
            f("social_card", J),
        ],
    )
    .with_cursor_field("create_time")
}

fn reports_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_REPORTS,
        "id",
        vec![
            f("id", S).with_description("Campaign id"),
            f("campaign_title", S),
            f("type", S),
            f("list_id", S),
            f("list_is_active", B),
            f("list_name", S),
            f("subject_line", S),
            f("preview_text", S),
            f("send_time", Ts),
            f("rss_last_send", Ts),
            f("emails_sent", I),
            f("abuse_reports", I),
            f("unsubscribed", I),
            f("hard_bounces", I),
            f("soft_bounces", I),
            f("syntax_errors", I),
            f("opens_total", I),
            f("unique_opens", I),
            f("open_rate", N),
            f("last_open", Ts),
            f("clicks_total", I),
            f("unique_clicks", I),
            f("unique_subscriber_clicks", I),
            f("click_rate", N),
            f("last_click", Ts),
            f("bounces", J),
            f("opens", J),
            f("clicks", J),
            f("forwards", J),
            f("facebook_likes", J),
            f("list_stats", J),
            f("industry_stats", J),
            f("ecommerce", J),
            f("delivery_status", J),
            f("ab_split", J),
            f("timewarp", J),
            f("timeseries", J),
            f("share_report", J),
        ],
    )
    .with_cursor_field("send_time")
}

fn automations_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_AUTOMATIONS,
        "id",
        vec![
            f("id", S),
            f("create_time", Ts),
            f("start_time", Ts),
            f("status", S),
            f("emails_sent", I),
            f("recipients", J),
            f("settings", J),
            f("tracking", J),
            f("trigger_settings", J),
            f("report_summary", J),
        ],
    )
}

fn automation_emails_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_AUTOMATION_EMAILS,
        "id",
        vec![
            f("id", S),
            f("workflow_id", S),
            f("web_id", I),
            f("position", I),
            f("delay", J),
            f("create_time", Ts),
            f("start_time", Ts),
            f("send_time", Ts),
            f("status", S),
            f("emails_sent", I),
            f("content_type", S),
            f("archive_url", S),
            f("needs_block_refresh", B),
            f("has_logo_merge_tag", B),
            f("recipients", J),
            f("settings", J),
            f("tracking", J),
            f("social_card", J),
            f("trigger_settings", J),
            f("report_summary", J),
        ],
    )
}

#[async_trait]
impl Source for MailchimpSource {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn check(&self) -> Result<AccountInfo> {
        let mut raw = self.mc.account_raw().await?;
        raw.remove("_links");
        let account: super::Account =
            serde_json::from_value(Value::Object(raw.clone())).map_err(|e| Error::Decode {
                provider: PROVIDER,
                what: "API root".into(),
                path: String::new(),
                message: e.to_string(),
            })?;
        let mut info = AccountInfo {
            provider: PROVIDER.into(),
            account_id: account.account_id,
            name: account.account_name,
            user: account.email.or(account.login_id),
            ..AccountInfo::default()
        };
        info.details = raw;
        Ok(info)
    }

    async fn discover(&self) -> Result<Catalog> {
        Ok(Catalog::new(vec![
            lists_schema(),
            self.members_schema().await?,
            campaigns_schema(),
            reports_schema(),
            automations_schema(),
            automation_emails_schema(),
        ]))
    }

    async fn schema(&self, stream: &str) -> Result<StreamSchema> {
        match stream {
            STREAM_LISTS => Ok(lists_schema()),
            STREAM_LIST_MEMBERS => self.members_schema().await,
            STREAM_CAMPAIGNS => Ok(campaigns_schema()),
            STREAM_REPORTS => Ok(reports_schema()),
            STREAM_AUTOMATIONS => Ok(automations_schema()),
            STREAM_AUTOMATION_EMAILS => Ok(automation_emails_schema()),
            other => Err(Error::Config(format!(
                "`{other}` is not a Mailchimp stream (lists, list_members, campaigns, reports, automations, automation_emails)"
            ))),
        }
    }

    fn resumes_incrementally(&self, stream: &StreamSchema, completed: &StreamState) -> bool {
        let s = Some(completed);
        match stream.name.as_str() {
            STREAM_LIST_MEMBERS => matches!(
                from_state::<MembersPos>(s, STREAM_LIST_MEMBERS),
                Ok(Some(MembersPos::Done { .. }))
            ),
            STREAM_CAMPAIGNS => matches!(
                from_state::<CampaignsPos>(s, STREAM_CAMPAIGNS),
                Ok(Some(CampaignsPos::Done { .. }))
            ),
            STREAM_REPORTS => matches!(
                from_state::<ReportsPos>(s, STREAM_REPORTS),
                Ok(Some(ReportsPos::Done { .. }))
            ),
            _ => false,
        }
    }

    fn read<'a>(
        &'a self,
        stream: &'a StreamSchema,
        state: Option<StreamState>,
    ) -> BoxStream<'a, Result<Page>> {
        let state = state.as_ref();
        let mc = self.mc.clone();
        match stream.name.as_str() {
            STREAM_LIST_MEMBERS => {
                let merge: Vec<(String, FieldType)> = stream
                    .fields
                    .iter()
                    .filter_map(|f| {
                        f.name
                            .strip_prefix("merge_")
                            .filter(|_| f.name != "merge_fields")
                            .map(|tag| (tag.to_owned(), f.field_type))
                    })
                    .collect();
                let (pos, start) = match from_state::<MembersPos>(state, &stream.name) {
                    Ok(Some(MembersPos::Done { cursors })) => (None, cursors),
                    Ok(Some(p)) => (Some(p), BTreeMap::new()),
                    Ok(None) => (None, BTreeMap::new()),
                    Err(e) => return fail(e),
                };
                drive(MembersReader {
                    mc,
                    merge: Arc::new(merge),
                    hi: self.upper_bound(),
                    pos,
                    start,
                    finished: false,
                })
            }
            STREAM_CAMPAIGNS => {
                let hi = self.upper_bound();
                let pos = match from_state::<CampaignsPos>(state, &stream.name) {
                    Ok(None) => CampaignsPos::Created {
                        window: Window::new(None, hi),
                        reread_from: None,
                    },
                    Ok(Some(CampaignsPos::Done { cursor })) => CampaignsPos::Created {
                        window: Window::new(Some(cursor - 1), hi),
                        reread_from: Some(hi - self.reread_secs()),
                    },
                    Ok(Some(p)) => p,
                    Err(e) => return fail(e),
                };
                drive(CampaignsReader {
                    mc,
                    pos,
                    finished: false,
                })
            }
            STREAM_REPORTS => {
                let hi = self.upper_bound();
                let pos = match from_state::<ReportsPos>(state, &stream.name) {
                    Ok(None) => ReportsPos::Reading {
                        since: None,
                        hi,
                        offset: 0,
                        reported: None,
                    },
                    Ok(Some(ReportsPos::Done { cursor })) => ReportsPos::Reading {
                        since: Some((cursor - 1).min(hi - self.reread_secs())),
                        hi,
                        offset: 0,
                        reported: None,
                    },
                    Ok(Some(p)) => p,
                    Err(e) => return fail(e),
                };
                drive(ReportsReader {
                    mc,
                    pos,
                    finished: false,
                })
            }
            STREAM_LISTS | STREAM_AUTOMATIONS => {
                let pos = match from_state::<FullPos>(state, &stream.name) {
                    Ok(Some(p @ FullPos::Listing { .. })) => p,
                    Ok(_) => FullPos::Listing {
                        offset: 0,
                        hi: Some(self.upper_bound()),
                    },
                    Err(e) => return fail(e),
                };
                if stream.name == STREAM_LISTS {
                    drive(ListingReader {
                        stream: STREAM_LISTS,
                        req: Arc::new(move |hi| {
                            mc.audiences()
                                .sort("date_created", SortDir::Asc)
                                .time_filter("before_date_created", time_of(hi))
                        }),
                        record: |a: super::Audience| plain_record(a.id.clone(), &a),
                        pos,
                        finished: false,
                    })
                } else {
                    drive(ListingReader {
                        stream: STREAM_AUTOMATIONS,
                        req: Arc::new(move |hi| {
                            mc.automations()
                                .time_filter("before_create_time", time_of(hi))
                        }),
                        record: |a: Automation| plain_record(a.id.clone(), &a),
                        pos,
                        finished: false,
                    })
                }
            }
            STREAM_AUTOMATION_EMAILS => {
                let pos = match from_state::<FullPos>(state, &stream.name) {
                    Ok(Some(p @ FullPos::Workflows { .. })) => Some(p),
                    Ok(_) => None,
                    Err(e) => return fail(e),
                };
                drive(EmailsReader {
                    mc,
                    pos,
                    finished: false,
                })
            }
            other => fail(Error::Config(format!(
                "`{other}` is not a Mailchimp stream"
            ))),
        }
    }

    fn request_stats(&self) -> RequestStats {
        self.mc.stats()
    }

    fn read_ids<'a>(&'a self, stream: &'a StreamSchema) -> BoxStream<'a, Result<Vec<String>>> {
        if stream.name != STREAM_LIST_MEMBERS {
            return self
                .read(stream, None)
                .map_ok(|p| p.records.into_iter().map(|r| r.id).collect())
                .boxed();
        }
        // Members: ids and times only, audience by audience, through the
        // same windowed walk as a full read.
        let mc = self.mc.clone();
        let hi = self.upper_bound();
        futures::stream::once(async move { audience_ids(&mc).await.map(|l| (mc, l)) })
            .map_ok(move |(mc, lists)| {
                futures::stream::iter(lists).flat_map(move |list_id| {
                    let mc = mc.clone();
                    futures::stream::unfold(Some(Window::new(None, hi)), move |window| {
                        let (mc, list_id) = (mc.clone(), list_id.clone());
                        async move {
                            let mut window = window?;
                            let page = window_page(
                                |since| {
                                    let mut r = ListRequest::<MemberId>::new(
                                        mc.clone(),
                                        format!("lists/{}/members", super::enc(&list_id)),
                                        "members",
                                    )
                                    .param("fields", "members.id,members.last_changed,total_items")
                                    .sort("last_changed", SortDir::Asc)
                                    .time_filter("before_last_changed", time_of(hi));
                                    if let Some(s) = since {
                                        r = r.time_filter("since_last_changed", time_of(s));
                                    }
                                    r
                                },
                                &mut window,
                                |m: &MemberId| (m.id.as_str(), secs(m.last_changed)),
                            )
                            .await;
                            match page {
                                Ok((ids, done)) => {
                                    let ids = ids
                                        .into_iter()
                                        .map(|m| format!("{list_id}:{}", m.id))
                                        .collect();
                                    Some((Ok(ids), (!done).then_some(window)))
                                }
                                Err(Error::Api { status: 404, .. }) => None,
                                Err(e) => Some((Err(e), None)),
                            }
                        }
                    })
                })
            })
            .try_flatten()
            .boxed()
    }

    async fn plan(&self, stream: &StreamSchema, state: Option<&StreamState>) -> Result<StreamPlan> {
        let mut plan = StreamPlan::new(&stream.name);
        plan.incremental = state.is_some_and(|s| self.resumes_incrementally(stream, s));
        let before = self.mc.stats().requests;
        let hi = time_of(self.upper_bound());
        let pages = |n: u64| n.div_ceil(u64::from(MAX_COUNT)).max(1);
        match stream.name.as_str() {
            STREAM_LIST_MEMBERS => {
                let cursors = match from_state::<MembersPos>(state, &stream.name)? {
                    Some(MembersPos::Done { cursors }) if plan.incremental => cursors,
                    _ => BTreeMap::new(),
                };
                let mut records = 0;
                let mut requests = 1;
                for list_id in audience_ids(&self.mc).await? {
                    let mut filters = vec![("before_last_changed", hi)];
                    if let Some(c) = cursors.get(&list_id) {
                        filters.push(("since_last_changed", time_of(c - 1)));
                    }
                    let path = format!("lists/{}/members", super::enc(&list_id));
                    let n = count_of(&self.mc, &path, "members", &filters).await?;
                    records += n;
                    requests += pages(n);
                }
                plan.records = Some(records);
                plan.requests = requests;
            }
            STREAM_CAMPAIGNS | STREAM_REPORTS => {
                let n = if stream.name == STREAM_CAMPAIGNS {
                    count_of(
                        &self.mc,
                        "campaigns",
                        "campaigns",
                        &[("before_create_time", hi)],
                    )
                    .await?
                } else {
                    count_of(&self.mc, "reports", "reports", &[("before_send_time", hi)]).await?
                };
                plan.records = Some(n);
                plan.requests = pages(n);
                if plan.incremental {
                    plan.notes.push(format!(
                        "incremental: changes since the last run plus everything sent in the last {} days; the count given is the whole stream",
                        self.reread_window.as_secs() / 86_400
                    ));
                }
            }
            _ => {
                plan.notes.push("read in full every run; small".into());
                plan.requests = 1;
            }
        }
        plan.requests += self.mc.stats().requests - before;
        plan.notes
            .push("Mailchimp documents no rate quota: at most 10 requests in flight".into());
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_field_types_map_to_field_types() {
        for (t, want) in [
            ("text", S),
            ("number", N),
            ("address", J),
            ("phone", S),
            ("date", FieldType::Date),
            ("url", S),
            ("imageurl", S),
            ("radio", S),
            ("dropdown", S),
            ("birthday", S),
            ("zip", S),
            ("something_new", S),
        ] {
            assert_eq!(merge_field_type(t), want, "{t}");
        }
        assert_eq!(merge_column_name("FNAME"), "merge_FNAME");
    }

    #[test]
    fn states_round_trip_and_bad_ones_are_refused() {
        let mut cursors = BTreeMap::new();
        cursors.insert("a1".to_string(), 1_700_000_000);
        let p = MembersPos::Reading {
            lists: vec!["a1".into(), "b2".into()],
            index: 1,
            window: Window::new(Some(5), 10),
            cursors: cursors.clone(),
        };
        let s = to_state(&p);
        assert_eq!(
            from_state::<MembersPos>(Some(&s), "m").expect("state"),
            Some(p)
        );
        let done = to_state(&MembersPos::Done { cursors });
        assert!(matches!(
            from_state::<MembersPos>(Some(&done), "m"),
            Ok(Some(MembersPos::Done { .. }))
        ));
        assert!(from_state::<MembersPos>(
            Some(&StreamState(serde_json::json!({"phase": "x"}))),
            "m"
        )
        .is_err());
        assert_eq!(
            from_state::<MembersPos>(Some(&StreamState(Value::Null)), "m").expect("null"),
            None
        );
    }
}
