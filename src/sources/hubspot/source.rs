//! [`HubSpotSource`]: `HubSpot` as a [`Source`] for the sync engine.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::associations::{association_schema, DEFAULT_ASSOCIATIONS, DEFAULT_ASSOCIATION_REFRESH};
use super::plan::search_total;
use super::{CrmObject, Filter, HubSpot, Operator, PropertyDefinition, MAX_SEARCH_LIMIT, PROVIDER};
use crate::http::{DailyUsage, RequestStats};
use crate::paginate::Paged;
use crate::schema::{coerce, Catalog, Field, FieldType, StreamSchema};
use crate::source::{
    AccountInfo, CountCheck, Page, Record, Rejected, Source, StreamPlan, StreamState,
};
use crate::{Error, Result};

/// The stream of CRM owners.
pub const STREAM_OWNERS: &str = "owners";
/// The stream of deal pipelines (with stages).
pub const STREAM_DEAL_PIPELINES: &str = "deal_pipelines";
/// The stream of ticket pipelines (with stages).
pub const STREAM_TICKET_PIPELINES: &str = "ticket_pipelines";

/// Default settle lag of incremental reads.
pub const DEFAULT_SETTLE_LAG: std::time::Duration = std::time::Duration::from_secs(60);

/// Fields every CRM object record has besides its properties.
const SYSTEM_FIELDS: [&str; 6] = [
    "id",
    "createdAt",
    "updatedAt",
    "archived",
    "archivedAt",
    "mergedInto",
];

/// `HubSpot` as a source: contacts, companies, deals, tickets, any other CRM
/// object type by name (calls, meetings, emails, notes, tasks, custom
/// objects), owners, and deal and ticket pipelines.
///
/// A CRM object stream reads every property by default (or an allow-list),
/// live records first and then archived ones (marked deleted), so deletes
/// reach the sink. Property values arrive as strings and are typed by the
/// schema from the properties API: numbers, booleans, dates; blanks become
/// null.
///
/// # Completeness
/// Each read says whether it got what `HubSpot` reported, as a
/// [`CountCheck`] on the page that finishes a listing or window (the engine
/// puts them in its report):
/// - an incremental window: the search `total` of the window's first query
///   against the records read from the window;
/// - a full read: the live total from one search of one result without
///   filters (one extra call, made when the live listing starts) against the
///   live records listed. Archived records are not checked: search cannot
///   see them.
///
/// Counts survive a resume (they travel in the stream state). A difference
/// is not always a loss: records created, changed or deleted while the read
/// runs can enter or leave a listing or window after its count was taken.
/// What changed during a sync is read by the next incremental run (its
/// window starts at or before this run's start), so a difference that
/// persists across runs is the one to look into (see also
/// [`crate::sync::verify`]).
#[derive(Debug, Clone)]
pub struct HubSpotSource {
    pub(super) hs: HubSpot,
    object_types: Vec<String>,
    allow: HashMap<String, Vec<String>>,
    pub(super) include_archived: bool,
    settle_lag: std::time::Duration,
    pub(super) associations: Vec<(String, String)>,
    pub(super) association_refresh: std::time::Duration,
}

/// Where a CRM object or owners stream stands (the stream state).
///
/// A full read walks the live listing (`Active`), then the archived one;
/// `started_ms` is when it began. An incremental read (`Changes`) drains the
/// records modified in the fixed window `lo..=hi` through search, ordered by
/// `hs_object_id` and restarted after the last id seen on every page, so a
/// window of any size (more than 10,000 records on one timestamp included)
/// is read without hitting the search cap, skipping or repeating a record.
/// `Done` keeps `cursor_ms`, where the next incremental read starts: never
/// later than the read's start minus the settle lag, so records the search
/// index had not caught up with are read next time.
///
/// `reported` and `loaded` carry the completeness check of the listing or
/// window under way across a resume: what `HubSpot` said it holds when it
/// began, and how many records were read from it so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub(crate) enum Position {
    Active {
        after: Option<String>,
        #[serde(default)]
        started_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reported: Option<u64>,
        #[serde(default)]
        loaded: u64,
    },
    Changes {
        lo: i64,
        hi: i64,
        #[serde(default)]
        last_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reported: Option<u64>,
        #[serde(default)]
        loaded: u64,
    },
    Archived {
        after: Option<String>,
        #[serde(default)]
        cursor_ms: Option<i64>,
    },
    Done {
        #[serde(default)]
        cursor_ms: Option<i64>,
    },
}

impl Position {
    pub(crate) fn from_state(state: Option<StreamState>) -> Result<Self> {
        match state {
            None => Ok(Position::Active {
                after: None,
                started_ms: None,
                reported: None,
                loaded: 0,
            }),
            Some(s) => serde_json::from_value(s.0)
                .map_err(|e| Error::state("unreadable HubSpot stream state", e)),
        }
    }

    pub(crate) fn to_state(&self) -> StreamState {
        StreamState(serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// A completeness count under way: what `HubSpot` reported for a listing or
/// window (once known) and how many records were read from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    reported: Option<u64>,
    loaded: u64,
}

/// One phase of a read, with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Live {
        after: Option<String>,
        tally: Tally,
    },
    Changes {
        lo: i64,
        hi: i64,
        last_id: Option<String>,
        tally: Tally,
    },
    Archived(Option<String>),
}

impl Step {
    #[cfg(test)]
    fn live(after: Option<String>) -> Step {
        Step::Live {
            after,
            tally: Tally::default(),
        }
    }

    fn changes(lo: i64, hi: i64) -> Step {
        Step::Changes {
            lo,
            hi,
            last_id: None,
            tally: Tally::default(),
        }
    }
}

/// What is left to read from a position: the steps, and the incremental
/// cursor the read ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    steps: Vec<Step>,
    cursor_ms: Option<i64>,
    started_ms: Option<i64>,
}

impl Plan {
    fn new(
        pos: Position,
        now_ms: i64,
        lag_ms: i64,
        include_archived: bool,
        incremental: bool,
    ) -> Plan {
        let archived = |after| {
            if include_archived {
                vec![Step::Archived(after)]
            } else {
                Vec::new()
            }
        };
        match pos {
            Position::Active {
                after,
                started_ms,
                reported,
                loaded,
            } => {
                let started = started_ms.unwrap_or(now_ms);
                let mut steps = vec![Step::Live {
                    after,
                    tally: Tally { reported, loaded },
                }];
                steps.extend(archived(None));
                Plan {
                    steps,
                    cursor_ms: incremental.then_some(started - lag_ms),
                    started_ms: Some(started),
                }
            }
            Position::Changes {
                lo,
                hi,
                last_id,
                reported,
                loaded,
            } => {
                let mut steps = vec![Step::Changes {
                    lo,
                    hi,
                    last_id,
                    tally: Tally { reported, loaded },
                }];
                steps.extend(archived(None));
                Plan {
                    steps,
                    cursor_ms: Some(hi + 1),
                    started_ms: None,
                }
            }
            Position::Archived { after, cursor_ms } => Plan {
                steps: archived(after),
                cursor_ms,
                started_ms: None,
            },
            Position::Done {
                cursor_ms: Some(lo),
            } if incremental => {
                let hi = now_ms - lag_ms;
                let mut steps = Vec::new();
                if hi >= lo {
                    steps.push(Step::changes(lo, hi));
                }
                steps.extend(archived(None));
                Plan {
                    steps,
                    cursor_ms: Some(if hi >= lo { hi + 1 } else { lo }),
                    started_ms: None,
                }
            }
            Position::Done { cursor_ms } => Plan {
                steps: Vec::new(),
                cursor_ms,
                started_ms: None,
            },
        }
    }

    /// The position after a page of step `i` whose next cursor is `next`,
    /// with the step's count so far.
    fn after_page(&self, i: usize, next: Option<String>, tally: Tally) -> Position {
        match (&self.steps[i], next) {
            (Step::Live { .. }, Some(after)) => Position::Active {
                after: Some(after),
                started_ms: self.started_ms,
                reported: tally.reported,
                loaded: tally.loaded,
            },
            (Step::Changes { lo, hi, .. }, Some(last)) => Position::Changes {
                lo: *lo,
                hi: *hi,
                last_id: Some(last),
                reported: tally.reported,
                loaded: tally.loaded,
            },
            (Step::Archived(_), Some(after)) => Position::Archived {
                after: Some(after),
                cursor_ms: self.cursor_ms,
            },
            (_, None) => self.start_of(i + 1),
        }
    }

    fn start_of(&self, i: usize) -> Position {
        match self.steps.get(i) {
            Some(Step::Live { after, tally }) => Position::Active {
                after: after.clone(),
                started_ms: self.started_ms,
                reported: tally.reported,
                loaded: tally.loaded,
            },
            Some(Step::Changes {
                lo,
                hi,
                last_id,
                tally,
            }) => Position::Changes {
                lo: *lo,
                hi: *hi,
                last_id: last_id.clone(),
                reported: tally.reported,
                loaded: tally.loaded,
            },
            Some(Step::Archived(after)) => Position::Archived {
                after: after.clone(),
                cursor_ms: self.cursor_ms,
            },
            None => Position::Done {
                cursor_ms: self.cursor_ms,
            },
        }
    }
}

/// The name of the last-modified property of an object schema, if it has
/// one (`lastmodifieddate` for contacts, `hs_lastmodifieddate` for the rest).
pub(super) fn last_modified_property(schema: &StreamSchema) -> Option<&'static str> {
    ["hs_lastmodifieddate", "lastmodifieddate"]
        .into_iter()
        .find(|p| schema.field(p).is_some())
}

/// One page of a step: its objects, the next cursor, and what `HubSpot`
/// reported for the query that served it (search's `total`).
struct StepPage {
    items: Vec<CrmObject>,
    next: Option<String>,
    total: Option<u64>,
    /// Records read that could not be decoded.
    rejected: Vec<Rejected>,
}

impl StepPage {
    fn listed((p, rejected): (Paged<CrmObject, String>, Vec<Rejected>)) -> StepPage {
        StepPage {
            items: p.items,
            next: p.next,
            total: None,
            rejected,
        }
    }
}

/// The id of a record that could not be decoded, when its `id` can still be
/// read (the search cursor must move past it).
fn rejected_id(r: &Rejected) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_slice::<IdOnly>(&r.raw)
        .ok()
        .and_then(|o| o.id.parse().ok())
}

/// The filters of the window `lo..=hi` on `last_modified`, after `last_id`.
pub(super) fn window_filters(
    last_modified: &str,
    (lo, hi): (i64, i64),
    last_id: Option<&str>,
) -> Vec<Filter> {
    let mut filters = vec![Filter::between(
        last_modified,
        lo.to_string(),
        hi.to_string(),
    )];
    if let Some(id) = last_id {
        filters.push(Filter::new("hs_object_id", Operator::Gt, id));
    }
    filters
}

/// Search pages of the records modified in `lo..=hi`, ordered by id, each
/// query restarting after the last id seen; the cursor is that id. Every
/// page carries its query's `total`.
fn changes(
    hs: &HubSpot,
    object_type: String,
    props: Vec<String>,
    last_modified: &'static str,
    (lo, hi): (i64, i64),
    start: Option<String>,
) -> impl Stream<Item = Result<StepPage>> + Send + 'static {
    let hs = hs.clone();
    crate::paginate::paginate(
        PROVIDER,
        format!("{object_type} changes {lo}..={hi}"),
        start,
        move |last_id: Option<String>| {
            let search = hs
                .objects(object_type.clone())
                .search()
                .filter_group(window_filters(last_modified, (lo, hi), last_id.as_deref()))
                .sort("hs_object_id", true)
                .properties(props.clone())
                .limit(MAX_SEARCH_LIMIT);
            async move {
                let (page, rejected) = search.send_lenient().await?;
                let read = page.items.len() + rejected.len();
                let full = read as u32 >= MAX_SEARCH_LIMIT;
                // The page is sorted by id: the next query starts after its
                // last record, good or not (a rejected record whose id cannot
                // be read is passed by the good ones after it).
                let last = page
                    .items
                    .iter()
                    .filter_map(|o| o.id.parse::<u64>().ok())
                    .chain(rejected.iter().filter_map(rejected_id))
                    .max();
                let next = if full {
                    last.map(|id| id.to_string())
                        .or_else(|| page.items.last().map(|o| o.id.clone()))
                } else {
                    None
                };
                Ok(Paged::new(vec![(page.total, page.items, rejected)], next))
            }
        },
    )
    .map(|r| {
        r.map(|mut p| {
            let (total, items, rejected) = p.items.pop().unwrap_or_default();
            StepPage {
                items,
                next: p.next,
                total: Some(total),
                rejected,
            }
        })
    })
}

/// `ms` as an RFC 3339 time for messages.
fn iso_ms(ms: i64) -> String {
    ts(DateTime::from_timestamp_millis(ms))
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| ms.to_string())
}

impl HubSpotSource {
    /// A source on `hs`, offering contacts, companies, deals and tickets
    /// (plus owners and pipelines) in `discover()`.
    pub fn new(hs: HubSpot) -> Self {
        HubSpotSource {
            hs,
            object_types: ["contacts", "companies", "deals", "tickets"]
                .map(String::from)
                .to_vec(),
            allow: HashMap::new(),
            include_archived: true,
            settle_lag: DEFAULT_SETTLE_LAG,
            associations: DEFAULT_ASSOCIATIONS
                .iter()
                .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
                .collect(),
            association_refresh: DEFAULT_ASSOCIATION_REFRESH,
        }
    }

    /// The association streams offered, as `(from, to)` object types
    /// (default [`DEFAULT_ASSOCIATIONS`]; the stream of `(contacts,
    /// companies)` is `contacts_to_companies`). An empty list offers none.
    pub fn with_associations<I, S, T>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (S, T)>,
        S: Into<String>,
        T: Into<String>,
    {
        self.associations = pairs
            .into_iter()
            .map(|(f, t)| (f.into(), t.into()))
            .collect();
        self
    }

    /// How often association streams are read again (default 24 hours):
    /// a run within this time of the last finished read of an association
    /// stream reads nothing; a later one reads it in full, and the sinks
    /// mark vanished associations deleted. See [`super::associations`].
    pub fn with_association_refresh(mut self, every: std::time::Duration) -> Self {
        self.association_refresh = every;
        self
    }

    /// Adds CRM object types to `discover()` (`calls`, `notes`, `p_widgets`).
    /// Any type can be read by name without this.
    pub fn with_object_types<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        types: I,
    ) -> Self {
        for t in types {
            let t = t.into();
            if !self.object_types.contains(&t) {
                self.object_types.push(t);
            }
        }
        self
    }

    /// Reads only these properties of `stream` (default: all).
    pub fn with_properties<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        stream: &str,
        props: I,
    ) -> Self {
        self.allow.insert(
            stream.to_owned(),
            props.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Whether archived records are read (and marked deleted). Default true.
    pub fn with_archived(mut self, include: bool) -> Self {
        self.include_archived = include;
        self
    }

    /// How far behind "now" an incremental read stops (default 60 s), so
    /// records the search index has not caught up with are read next time.
    pub fn with_settle_lag(mut self, lag: std::time::Duration) -> Self {
        self.settle_lag = lag;
        self
    }

    /// The client underneath.
    pub fn client(&self) -> &HubSpot {
        &self.hs
    }

    /// True for a CRM object stream (not owners, pipelines or associations).
    fn is_object_stream(&self, name: &str) -> bool {
        !matches!(
            name,
            STREAM_OWNERS | STREAM_DEAL_PIPELINES | STREAM_TICKET_PIPELINES
        ) && self.association(name).is_none()
    }

    async fn object_schema(&self, object_type: &str) -> Result<StreamSchema> {
        let props = self.hs.properties(object_type).await?;
        let allow = self.allow.get(object_type);
        let mut fields = vec![
            Field::new("id", FieldType::String).with_description("Record id"),
            Field::new("createdAt", FieldType::Timestamp),
            Field::new("updatedAt", FieldType::Timestamp),
            Field::new("archived", FieldType::Boolean),
            Field::new("archivedAt", FieldType::Timestamp),
            Field::new("mergedInto", FieldType::String)
                .with_description("Set on the deleted record of an object merged into this id"),
        ];
        let mut props: Vec<PropertyDefinition> = props
            .into_iter()
            .filter(|p| !p.archived)
            .filter(|p| allow.is_none_or(|a| a.contains(&p.name)))
            .collect();
        props.sort_by(|a, b| a.name.cmp(&b.name));
        for p in props {
            let name = record_field_name(&p.name);
            fields.push(
                Field::new(name, property_field_type(&p.property_type, &p.field_type))
                    .with_description(p.label)
                    .with_source_type(p.property_type),
            );
        }
        Ok(StreamSchema::new(object_type, "id", fields).with_cursor_field("updatedAt"))
    }

    fn read_objects<'a>(
        &'a self,
        schema: &'a StreamSchema,
        state: Option<StreamState>,
    ) -> BoxStream<'a, Result<Page>> {
        let pos = match Position::from_state(state) {
            Ok(p) => p,
            Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
        };
        let props = request_properties(schema);
        let types = Arc::new(property_types(schema));
        let last_modified = last_modified_property(schema);
        let plan = Arc::new(Plan::new(
            pos,
            Utc::now().timestamp_millis(),
            self.settle_lag_ms(),
            self.include_archived,
            last_modified.is_some(),
        ));
        let object_type = schema.name.clone();
        let hs = self.hs.clone();
        let steps = plan.steps.clone().into_iter().enumerate();
        let pages = futures::stream::iter(steps)
            .map(move |(i, step)| {
                let (types, plan) = (types.clone(), plan.clone());
                let objects = hs.objects(object_type.clone());
                // The count this step checks (none for archived records:
                // search does not see them), and whether the step's first
                // answer says what to count against.
                let (mut tally, scope, take_total) = match &step {
                    Step::Live { tally, .. } => (
                        *tally,
                        Some(format!("{object_type}: all live records")),
                        false,
                    ),
                    Step::Changes {
                        lo,
                        hi,
                        last_id,
                        tally,
                    } => (
                        *tally,
                        last_modified.map(|lm| {
                            format!("{object_type}: {lm} in [{}, {}]", iso_ms(*lo), iso_ms(*hi))
                        }),
                        // A window resumed from a state without its total
                        // (written by an older version) is not checked.
                        tally.reported.is_none() && last_id.is_none(),
                    ),
                    Step::Archived(_) => (Tally::default(), None, false),
                };
                let pages: BoxStream<'static, Result<StepPage>> = match step {
                    Step::Live { after, .. } => {
                        let list = objects
                            .list()
                            .properties(props.clone())
                            .after(after.clone())
                            .lenient_pages()
                            .map(|r| r.map(StepPage::listed));
                        // A fresh listing starts with the live total, asked
                        // while its first page is fetched (search has its own,
                        // slower limiter: waiting for it first would leave
                        // the main limit idle).
                        if after.is_none() && tally.reported.is_none() && last_modified.is_some() {
                            let (hs, t) = (hs.clone(), object_type.clone());
                            let mut list = list.boxed();
                            futures::stream::once(async move {
                                let (total, first) =
                                    futures::join!(search_total(&hs, &t, None), list.next());
                                let total = total?;
                                Ok(futures::stream::iter(first)
                                    .chain(list)
                                    .map_ok(move |mut p| {
                                        p.total = total;
                                        p
                                    }))
                            })
                            .try_flatten()
                            .boxed()
                        } else {
                            list.boxed()
                        }
                    }
                    Step::Archived(after) => objects
                        .list()
                        .properties(props.clone())
                        .archived(true)
                        .after(after)
                        .lenient_pages()
                        .map(|r| r.map(StepPage::listed))
                        .boxed(),
                    Step::Changes {
                        lo, hi, last_id, ..
                    } => match last_modified {
                        Some(lm) => changes(
                            &hs,
                            object_type.clone(),
                            props.clone(),
                            lm,
                            (lo, hi),
                            last_id,
                        )
                        .boxed(),
                        None => futures::stream::empty().boxed(),
                    },
                };
                let fresh_live = matches!(&plan.steps[i], Step::Live { after: None, .. });
                let take_total = take_total || fresh_live;
                pages.map(move |r| {
                    r.map(|p| {
                        if take_total && tally.reported.is_none() {
                            tally.reported = p.total;
                        }
                        // A quarantined record was read: it counts as loaded.
                        tally.loaded += (p.items.len() + p.rejected.len()) as u64;
                        let done = p.next.is_none();
                        let next = plan.after_page(i, p.next, tally);
                        let page = Page::new(object_records(p.items, &types), next.to_state())
                            .with_rejected(p.rejected);
                        match (&scope, tally.reported) {
                            (Some(scope), Some(reported)) if done => page
                                .with_count(CountCheck::new(scope.clone(), reported, tally.loaded)),
                            _ => page,
                        }
                    })
                })
            })
            .flatten();
        stop_after_error(pages).boxed()
    }

    pub(super) fn settle_lag_ms(&self) -> i64 {
        i64::try_from(self.settle_lag.as_millis()).unwrap_or(i64::MAX / 2)
    }

    fn read_owners(&self, state: Option<StreamState>) -> BoxStream<'_, Result<Page>> {
        let pos = match Position::from_state(state) {
            Ok(p) => p,
            Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
        };
        // Owners have no search: always a full read (live, then archived).
        let pos = match pos {
            Position::Done { .. } | Position::Changes { .. } => Position::Active {
                after: None,
                started_ms: None,
                reported: None,
                loaded: 0,
            },
            other => other,
        };
        let plan = Arc::new(Plan::new(pos, 0, 0, self.include_archived, false));
        let hs = self.hs.clone();
        let steps = plan.steps.clone().into_iter().enumerate();
        let pages = futures::stream::iter(steps)
            .map(move |(i, step)| {
                let plan = plan.clone();
                let (archived, start) = match step {
                    Step::Archived(after) => (true, after),
                    Step::Live { after, .. } => (false, after),
                    Step::Changes { .. } => (false, None),
                };
                hs.owner_pages(archived, start)
                    .map(move |r: Result<Paged<Value, String>>| {
                        r.map(|p| {
                            let next = plan.after_page(i, p.next.clone(), Tally::default());
                            let records = p
                                .items
                                .into_iter()
                                .filter_map(|v| json_record(v, archived))
                                .collect();
                            Page::new(records, next.to_state())
                        })
                    })
            })
            .flatten();
        stop_after_error(pages).boxed()
    }

    /// Pipelines are one small, unpaged answer: always read in full.
    fn read_pipelines(&self, object_type: &'static str) -> BoxStream<'_, Result<Page>> {
        let hs = self.hs.clone();
        futures::stream::once(async move {
            let pipelines = hs.pipelines_raw(object_type).await?;
            let records = pipelines
                .into_iter()
                .filter_map(|(p, v)| json_record(v, p.archived))
                .collect();
            Ok(Page::new(
                records,
                Position::Done { cursor_ms: None }.to_state(),
            ))
        })
        .boxed()
    }
}

/// Ends a stream after its first error.
pub(super) fn stop_after_error<S, T>(s: S) -> impl Stream<Item = Result<T>>
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

/// The record field name of a property: its own name, unless it collides with
/// a system field (`id`, `archived`), then `property_{name}`.
fn record_field_name(prop: &str) -> String {
    if SYSTEM_FIELDS.contains(&prop) {
        format!("property_{prop}")
    } else {
        prop.to_owned()
    }
}

fn source_property_name(field: &str) -> &str {
    match field.strip_prefix("property_") {
        Some(p) if SYSTEM_FIELDS.contains(&p) => p,
        _ => field,
    }
}

/// Maps a `HubSpot` property type (and UI field type) to a field type.
///
/// | `type` | `fieldType` | field type |
/// |---|---|---|
/// | `string`, `phone_number`, `enumeration` | any but `booleancheckbox` | String |
/// | `enumeration` | `booleancheckbox` | Boolean |
/// | `number` | any | Number |
/// | `bool` | any | Boolean |
/// | `date` | any | Date |
/// | `datetime` | any | Timestamp |
/// | `json`, `object_coordinates` | any | Json / String |
/// | anything else | | String |
pub fn property_field_type(property_type: &str, field_type: &str) -> FieldType {
    match property_type {
        "number" => FieldType::Number,
        "bool" | "boolean" => FieldType::Boolean,
        "enumeration" if field_type == "booleancheckbox" => FieldType::Boolean,
        "date" => FieldType::Date,
        "datetime" => FieldType::Timestamp,
        "json" => FieldType::Json,
        _ => FieldType::String,
    }
}

fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// Properties to request for an object schema: its fields less the system
/// ones.
pub(super) fn request_properties(schema: &StreamSchema) -> Vec<String> {
    schema
        .fields
        .iter()
        .filter(|f| f.source_type.is_some())
        .map(|f| source_property_name(&f.name).to_owned())
        .collect()
}

/// The field type of each requested property of an object schema.
fn property_types(schema: &StreamSchema) -> HashMap<String, FieldType> {
    schema
        .fields
        .iter()
        .filter(|f| f.source_type.is_some())
        .map(|f| (source_property_name(&f.name).to_owned(), f.field_type))
        .collect()
}

/// Decodes one answer of `GET /crm/v3/objects/{type}` into records typed by
/// `schema`, and the next cursor: the same steps [`HubSpotSource`] takes for
/// every page (useful to replay stored answers, and measured in `benches/`).
pub fn decode_list_page(body: &[u8], schema: &StreamSchema) -> Result<Paged<Record, String>> {
    let what = || format!("{} page", schema.name);
    let (page, rejected) = super::decode_results(body, what)?;
    crate::sources::lenient::refuse(PROVIDER, &what(), rejected)?;
    let types = property_types(schema);
    let paged = page.into_paged();
    Ok(Paged::new(object_records(paged.items, &types), paged.next))
}

/// The records of a page: one per object, plus a deleted record for each id
/// an object lists in `hs_merged_object_ids` (records merged into it, which
/// `HubSpot` removes without archiving), with `mergedInto` naming the
/// survivor, so sinks drop the stale duplicates.
fn object_records(objects: Vec<CrmObject>, types: &HashMap<String, FieldType>) -> Vec<Record> {
    let mut out = Vec::with_capacity(objects.len());
    for o in objects {
        let merged: Vec<String> = match o.properties.get(MERGED_IDS) {
            Some(Value::String(ids)) if !ids.is_empty() => ids
                .split(';')
                .map(str::trim)
                .filter(|m| !m.is_empty() && *m != o.id)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let survivor = o.id.clone();
        out.push(object_record(o, types));
        for loser in merged {
            let mut data = serde_json::Map::new();
            data.insert("id".into(), Value::String(loser.clone()));
            data.insert("mergedInto".into(), Value::String(survivor.clone()));
            out.push(Record::new(loser, data).deleted(true));
        }
    }
    out
}

/// The property listing the ids merged into a record.
const MERGED_IDS: &str = "hs_merged_object_ids";

/// A CRM object as a record: typed properties plus the system fields.
fn object_record(o: CrmObject, types: &HashMap<String, FieldType>) -> Record {
    let CrmObject {
        id,
        properties,
        created_at,
        updated_at,
        archived,
        archived_at,
    } = o;
    // Reuse the decoded map: type the values in place, then add the system
    // fields (renaming the rare property that collides with one).
    let mut data = properties;
    for (k, v) in data.iter_mut() {
        if let Some(t) = types.get(k) {
            *v = coerce(std::mem::take(v), *t);
        }
    }
    for name in SYSTEM_FIELDS {
        if let Some(v) = data.remove(name) {
            data.insert(record_field_name(name), v);
        }
    }
    data.insert("id".into(), Value::String(id.clone()));
    data.insert("createdAt".into(), ts(created_at));
    data.insert("updatedAt".into(), ts(updated_at));
    data.insert("archived".into(), Value::Bool(archived));
    data.insert("archivedAt".into(), ts(archived_at));
    Record::new(id, data).deleted(archived)
}

/// A JSON object with an `id` as a record; a value without one is dropped.
pub(crate) fn json_record(v: Value, deleted: bool) -> Option<Record> {
    let Value::Object(map) = v else { return None };
    let id = match map.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return None,
    };
    Some(Record::new(id, map).deleted(deleted))
}

fn owners_schema() -> StreamSchema {
    StreamSchema::new(
        STREAM_OWNERS,
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("email", FieldType::String),
            Field::new("firstName", FieldType::String),
            Field::new("lastName", FieldType::String),
            Field::new("userId", FieldType::Integer),
            Field::new("type", FieldType::String),
            Field::new("createdAt", FieldType::Timestamp),
            Field::new("updatedAt", FieldType::Timestamp),
            Field::new("archived", FieldType::Boolean),
            Field::new("teams", FieldType::Json),
        ],
    )
    .with_cursor_field("updatedAt")
}

fn pipelines_schema(name: &str) -> StreamSchema {
    StreamSchema::new(
        name,
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("label", FieldType::String),
            Field::new("displayOrder", FieldType::Integer),
            Field::new("createdAt", FieldType::Timestamp),
            Field::new("updatedAt", FieldType::Timestamp),
            Field::new("archived", FieldType::Boolean),
            Field::new("stages", FieldType::Json),
        ],
    )
}

#[async_trait]
impl Source for HubSpotSource {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn check(&self) -> Result<AccountInfo> {
        self.hs.account().await
    }

    async fn discover(&self) -> Result<Catalog> {
        let mut streams = Vec::new();
        for t in &self.object_types {
            streams.push(self.object_schema(t).await?);
        }
        streams.push(owners_schema());
        streams.push(pipelines_schema(STREAM_DEAL_PIPELINES));
        streams.push(pipelines_schema(STREAM_TICKET_PIPELINES));
        streams.extend(
            self.association_streams()
                .iter()
                .map(|n| association_schema(n)),
        );
        Ok(Catalog::new(streams))
    }

    async fn schema(&self, stream: &str) -> Result<StreamSchema> {
        match stream {
            STREAM_OWNERS => Ok(owners_schema()),
            STREAM_DEAL_PIPELINES | STREAM_TICKET_PIPELINES => Ok(pipelines_schema(stream)),
            a if self.association(a).is_some() => Ok(association_schema(a)),
            t if !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                self.object_schema(t).await
            }
            other => Err(Error::Config(format!(
                "`{other}` is not a HubSpot stream or object type"
            ))),
        }
    }

    fn resumes_incrementally(&self, stream: &StreamSchema, completed: &StreamState) -> bool {
        if self.association(&stream.name).is_some() {
            return self.association_fresh(completed);
        }
        self.is_object_stream(&stream.name)
            && last_modified_property(stream).is_some()
            && matches!(
                Position::from_state(Some(completed.clone())),
                Ok(Position::Done { cursor_ms: Some(_) })
            )
    }

    fn read<'a>(
        &'a self,
        stream: &'a StreamSchema,
        state: Option<StreamState>,
    ) -> BoxStream<'a, Result<Page>> {
        match stream.name.as_str() {
            STREAM_OWNERS => self.read_owners(state),
            STREAM_DEAL_PIPELINES => self.read_pipelines("deals"),
            STREAM_TICKET_PIPELINES => self.read_pipelines("tickets"),
            name => match self.association(name) {
                Some((from, to)) => self.read_associations(from, to, state),
                None => self.read_objects(stream, state),
            },
        }
    }

    fn request_stats(&self) -> RequestStats {
        self.hs.stats()
    }

    /// One search of one result counts what the read will see (the live
    /// total, the window's total, the from-type's total for associations);
    /// calls follow the read's request plan: list pages of 100 (two calls
    /// each when the properties do not fit a URL), search pages of 200,
    /// association batch reads of 1,000 ids. What `HubSpot` cannot count
    /// (archived records, owners, associations per record) is counted at
    /// its minimum and named in the notes. The duration is the client's
    /// pace (its limiters) for the read's calls.
    async fn plan(&self, stream: &StreamSchema, state: Option<&StreamState>) -> Result<StreamPlan> {
        self.plan_stream(stream, state).await
    }

    /// CRM objects: an id-only listing (`properties=hs_object_id`, one call
    /// per 100 live ids). Other streams: their records' ids.
    fn read_ids<'a>(&'a self, stream: &'a StreamSchema) -> BoxStream<'a, Result<Vec<String>>> {
        if self.is_object_stream(&stream.name) {
            return self
                .hs
                .id_pages(&stream.name, None)
                .map(|p| p.map(|p| p.items))
                .boxed();
        }
        self.read(stream, None)
            .map(|page| {
                page.map(|p| {
                    p.records
                        .into_iter()
                        .filter(|r| !r.deleted)
                        .map(|r| r.id)
                        .collect()
                })
            })
            .boxed()
    }

    /// The client's count of today's calls against its daily limit (see
    /// [`super::HubSpotBuilder::daily_limit`]).
    fn daily_usage(&self) -> Option<DailyUsage> {
        self.hs.api_client().daily_usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_types_map_to_field_types() {
        let cases = [
            ("string", "text", FieldType::String),
            ("string", "textarea", FieldType::String),
            ("number", "number", FieldType::Number),
            ("number", "calculation_equation", FieldType::Number),
            ("date", "date", FieldType::Date),
            ("datetime", "date", FieldType::Timestamp),
            ("enumeration", "select", FieldType::String),
            ("enumeration", "checkbox", FieldType::String),
            ("enumeration", "booleancheckbox", FieldType::Boolean),
            ("bool", "booleancheckbox", FieldType::Boolean),
            ("phone_number", "phonenumber", FieldType::String),
            ("json", "text", FieldType::Json),
            ("object_coordinates", "text", FieldType::String),
            ("something_new", "x", FieldType::String),
        ];
        for (t, f, want) in cases {
            assert_eq!(property_field_type(t, f), want, "{t}/{f}");
        }
    }

    #[test]
    fn a_full_read_walks_live_then_archived_and_ends_with_a_lagged_cursor() {
        let plan = Plan::new(
            Position::from_state(None).expect("start"),
            10_000,
            1_000,
            true,
            true,
        );
        assert_eq!(plan.steps, vec![Step::live(None), Step::Archived(None)]);
        assert_eq!(
            plan.after_page(
                0,
                Some("5".into()),
                Tally {
                    reported: Some(7),
                    loaded: 3
                }
            ),
            Position::Active {
                after: Some("5".into()),
                started_ms: Some(10_000),
                reported: Some(7),
                loaded: 3,
            }
        );
        assert_eq!(
            plan.after_page(0, None, Tally::default()),
            Position::Archived {
                after: None,
                cursor_ms: Some(9_000)
            }
        );
        assert_eq!(
            plan.after_page(1, None, Tally::default()),
            Position::Done {
                cursor_ms: Some(9_000)
            }
        );
        // A resumed full read keeps its start time, so the cursor does not move
        // past records changed while it ran.
        let resumed = Plan::new(
            Position::Active {
                after: Some("5".into()),
                started_ms: Some(10_000),
                reported: None,
                loaded: 0,
            },
            99_000,
            1_000,
            false,
            true,
        );
        assert_eq!(
            resumed.after_page(0, None, Tally::default()),
            Position::Done {
                cursor_ms: Some(9_000)
            }
        );
        // Without a last-modified property there is no cursor.
        let plain = Plan::new(
            Position::from_state(None).expect("start"),
            10_000,
            1_000,
            false,
            false,
        );
        assert_eq!(
            plain.after_page(0, None, Tally::default()),
            Position::Done { cursor_ms: None }
        );
    }

    #[test]
    fn an_incremental_read_drains_one_fixed_window_then_archived() {
        let done = Position::Done {
            cursor_ms: Some(5_000),
        };
        let plan = Plan::new(done.clone(), 60_000, 10_000, true, true);
        assert_eq!(
            plan.steps,
            vec![Step::changes(5_000, 50_000), Step::Archived(None)]
        );
        assert_eq!(
            plan.after_page(
                0,
                Some("1234".into()),
                Tally {
                    reported: Some(450),
                    loaded: 200
                }
            ),
            Position::Changes {
                lo: 5_000,
                hi: 50_000,
                last_id: Some("1234".into()),
                reported: Some(450),
                loaded: 200,
            }
        );
        assert_eq!(
            plan.after_page(0, None, Tally::default()),
            Position::Archived {
                after: None,
                cursor_ms: Some(50_001)
            }
        );
        assert_eq!(
            plan.after_page(1, None, Tally::default()),
            Position::Done {
                cursor_ms: Some(50_001)
            }
        );
        // Run again before the lag has passed: nothing to search, cursor kept.
        let early = Plan::new(done, 12_000, 10_000, false, true);
        assert!(early.steps.is_empty());
        assert_eq!(
            early.start_of(0),
            Position::Done {
                cursor_ms: Some(5_000)
            }
        );
        // States round-trip and bad ones are refused.
        let p = Position::Changes {
            lo: 1,
            hi: 2,
            last_id: Some("9".into()),
            reported: Some(5),
            loaded: 2,
        };
        assert_eq!(Position::from_state(Some(p.to_state())).expect("state"), p);
        // A state written before completeness counts reads as "no count".
        let old = serde_json::json!({"phase": "changes", "lo": 1, "hi": 2, "last_id": "9"});
        assert_eq!(
            Position::from_state(Some(StreamState(old))).expect("old state"),
            Position::Changes {
                lo: 1,
                hi: 2,
                last_id: Some("9".into()),
                reported: None,
                loaded: 0,
            }
        );
        assert!(
            Position::from_state(Some(StreamState(serde_json::json!({"phase": "nope"})))).is_err()
        );
    }

    #[test]
    fn colliding_property_names_are_renamed_and_found_again() {
        assert_eq!(record_field_name("id"), "property_id");
        assert_eq!(source_property_name("property_id"), "id");
        assert_eq!(record_field_name("email"), "email");
        assert_eq!(source_property_name("property_other"), "property_other");
    }
}
