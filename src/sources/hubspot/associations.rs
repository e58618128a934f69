//! Associations between CRM records, read in batches through the v4 API,
//! and the association streams of [`HubSpotSource`].
//!
//! An association stream (`contacts_to_companies`, …) holds one record per
//! associated pair: `id` = `{from_id}-{to_id}`, `from_id`, `to_id`, `types`
//! (every association type between them: `category`, `typeId`, `label`)
//! and `labels` (the labels among them). It is read as
//! - an id-only listing of the from-type (`GET /crm/v3/objects/{from}` with
//!   `properties=hs_object_id`, 100 ids a call), and
//! - for every 1,000 ids one `POST /crm/v4/associations/{from}/{to}/batch/read`
//!   (the API's limit since February 2025), followed by more batch reads
//!   with `{id, after}` for the records whose associations span several
//!   result pages.
//!
//! Changing an association does not change either record's last-modified
//! date, so association streams cannot be read incrementally: they are
//! read in full on a schedule ([`HubSpotSource::with_association_refresh`],
//! default every 24 hours). Between refreshes a run reads nothing (no API
//! call); a due refresh is a full refresh, after which the sinks mark the
//! associations that vanished as deleted.
//!
//! A batch read answers `207` with `errors` for some inputs. An error of
//! category `OBJECT_NOT_FOUND` (`crm.associations.NO_ASSOCIATIONS_FOUND`:
//! the record has no such associations, or was deleted since it was listed)
//! means "no associations" and is not an error. Any other error fails the
//! read with [`Error::Api`] (status 207, the error's category and message):
//! the stream's refresh is then not complete, so no association is marked
//! deleted, and the next run reads the stream again.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::Utc;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

use super::{enc, HubSpot, HubSpotSource, PROVIDER};
use crate::error::ApiErrorBody;
use crate::http::RequestClass;
use crate::paginate::CursorGuard;
use crate::schema::{Field, FieldType, StreamSchema};
use crate::source::{Page, Record, StreamState};
use crate::{Error, Result};

/// Most ids one association batch read takes.
pub const MAX_ASSOCIATION_BATCH: usize = 1000;

/// Default time between full reads of an association stream.
pub const DEFAULT_ASSOCIATION_REFRESH: Duration = Duration::from_secs(24 * 60 * 60);

/// The association streams [`HubSpotSource`] offers by default: one
/// direction of each pair of contacts, companies, deals and tickets.
pub const DEFAULT_ASSOCIATIONS: [(&str, &str); 6] = [
    ("contacts", "companies"),
    ("contacts", "deals"),
    ("companies", "deals"),
    ("deals", "tickets"),
    ("contacts", "tickets"),
    ("companies", "tickets"),
];

/// The name of the association stream from `from` to `to`
/// (`contacts_to_companies`).
pub fn association_stream_name(from: &str, to: &str) -> String {
    format!("{from}_to_{to}")
}

/// One association type between two records (`AssociationSpecWithLabel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AssociationType {
    /// `HUBSPOT_DEFINED`, `USER_DEFINED`, `INTEGRATOR_DEFINED`, `WORK`.
    pub category: String,
    /// The type's id (`279`: contact to company, unlabeled).
    pub type_id: i64,
    /// The label, if the type has one (`Primary`, custom labels).
    #[serde(default)]
    pub label: Option<String>,
}

/// The records of another type one record is associated with
/// (`MultiAssociatedObjectWithLabel`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AssociatedObject {
    /// The associated record's id.
    #[serde(deserialize_with = "id_string")]
    pub to_object_id: String,
    /// Every association type between the two records.
    #[serde(default)]
    pub association_types: Vec<AssociationType>,
}

/// One association between two records.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Association {
    /// The from-record's id.
    pub from_id: String,
    /// The to-record's id.
    pub to_id: String,
    /// Every association type between them.
    pub types: Vec<AssociationType>,
}

/// An id, sent as a string (the spec) or a number (seen in practice).
fn id_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected an id, got {other}"
        ))),
    }
}

#[derive(Deserialize)]
struct FromId {
    #[serde(deserialize_with = "id_string")]
    id: String,
}

#[derive(Deserialize)]
struct ResultPaging {
    #[serde(default)]
    next: Option<super::NextPage>,
}

#[derive(Deserialize)]
pub(crate) struct BatchResult {
    from: FromId,
    #[serde(default)]
    to: Vec<AssociatedObject>,
    #[serde(default)]
    paging: Option<ResultPaging>,
}

#[derive(Deserialize)]
pub(crate) struct BatchAnswer {
    #[serde(default)]
    pub(crate) results: Vec<BatchResult>,
    #[serde(default)]
    pub(crate) errors: Vec<Value>,
}

#[derive(Serialize)]
struct BatchInput<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<&'a str>,
}

/// The associations from one CRM object type to another
/// ([`HubSpot::associations`]).
#[derive(Debug, Clone)]
pub struct Associations {
    hs: HubSpot,
    from: String,
    to: String,
}

impl HubSpot {
    /// The associations from records of `from` to records of `to`
    /// (`contacts`, `companies`; any object type).
    pub fn associations(&self, from: impl Into<String>, to: impl Into<String>) -> Associations {
        Associations {
            hs: self.clone(),
            from: from.into(),
            to: to.into(),
        }
    }
}

impl Associations {
    /// Every association of the records `ids` (at most
    /// [`MAX_ASSOCIATION_BATCH`]), in as many batch reads as their result
    /// pages need: one, plus one for each further page of the records with
    /// the most associations. Records without associations are left out;
    /// a result cursor `HubSpot` repeats for a record fails the read with
    /// [`Error::CursorRepeated`];
    /// an error `HubSpot` reports for an input other than "no associations"
    /// fails the read (see the module docs).
    pub async fn read(&self, ids: &[String]) -> Result<Vec<Association>> {
        if ids.len() > MAX_ASSOCIATION_BATCH {
            return Err(Error::Config(format!(
                "an association batch read takes at most {MAX_ASSOCIATION_BATCH} ids, got {}",
                ids.len()
            )));
        }
        let mut out = Vec::new();
        let mut pending: VecDeque<(String, Option<String>)> =
            ids.iter().map(|id| (id.clone(), None)).collect();
        // Every (record, cursor) followed so far: a cursor HubSpot hands out
        // again for the same record ends the read instead of looping.
        let mut followed = CursorGuard::new();
        while !pending.is_empty() {
            let n = pending.len().min(MAX_ASSOCIATION_BATCH);
            let inputs: Vec<(String, Option<String>)> = pending.drain(..n).collect();
            let answer = self.batch_read(&inputs).await?;
            for r in answer.results {
                let from_id = r.from.id;
                if let Some(after) = r.paging.and_then(|p| p.next).map(|n| n.after) {
                    if !followed.first_time(&(from_id.as_str(), after.as_str())) {
                        return Err(Error::CursorRepeated {
                            provider: PROVIDER,
                            what: format!(
                                "{} to {} associations of record {from_id}",
                                self.from, self.to
                            ),
                            cursor: after,
                            pages: followed.len() as u64,
                        });
                    }
                    pending.push_back((from_id.clone(), Some(after)));
                }
                out.extend(r.to.into_iter().map(|t| Association {
                    from_id: from_id.clone(),
                    to_id: t.to_object_id,
                    types: t.association_types,
                }));
            }
        }
        Ok(out)
    }

    /// One batch read of `inputs` (`(id, after)`), its non-benign errors
    /// turned into [`Error::Api`].
    async fn batch_read(&self, inputs: &[(String, Option<String>)]) -> Result<BatchAnswer> {
        #[derive(Serialize)]
        struct Body<'a> {
            inputs: Vec<BatchInput<'a>>,
        }
        let path = format!(
            "crm/v4/associations/{}/{}/batch/read",
            enc(&self.from),
            enc(&self.to)
        );
        let url = self.hs.client.url(&path)?;
        let body = Body {
            inputs: inputs
                .iter()
                .map(|(id, after)| BatchInput {
                    id,
                    after: after.as_deref(),
                })
                .collect(),
        };
        let answer: BatchAnswer = self
            .hs
            .client
            .post_json(url, &body, RequestClass::Standard, || {
                format!(
                    "{} to {} association batch read of {} ids",
                    self.from,
                    self.to,
                    inputs.len()
                )
            })
            .await?;
        if let Some(e) = answer.errors.iter().find(|e| !is_benign(e)) {
            let bytes = serde_json::to_vec(e).unwrap_or_default();
            return Err(Error::Api {
                provider: PROVIDER,
                status: 207,
                method: "POST".into(),
                path: format!("/{path}"),
                body: Box::new(ApiErrorBody::parse(&bytes)),
            });
        }
        Ok(answer)
    }
}

/// An error of a batch read that only says "nothing here": the record has
/// no associations of that type (or no longer exists).
pub(crate) fn is_benign(error: &Value) -> bool {
    let s = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("");
    s("category") == "OBJECT_NOT_FOUND" || s("subCategory").ends_with("NO_ASSOCIATIONS_FOUND")
}

/// Where an association stream stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub(crate) enum AssocPosition {
    /// A full read under way: the id listing's cursor, and when it began.
    Reading {
        after: Option<String>,
        started_ms: i64,
    },
    /// A full read finished; it began at `read_ms`.
    Done { read_ms: i64 },
}

impl AssocPosition {
    pub(crate) fn from_state(state: Option<&StreamState>) -> Result<Option<AssocPosition>> {
        state
            .map(|s| {
                serde_json::from_value(s.0.clone())
                    .map_err(|e| Error::state("unreadable HubSpot association stream state", e))
            })
            .transpose()
    }

    pub(crate) fn to_state(&self) -> StreamState {
        StreamState(serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// The schema of an association stream.
pub(super) fn association_schema(name: &str) -> StreamSchema {
    StreamSchema::new(
        name,
        "id",
        vec![
            Field::new("id", FieldType::String).with_description("`{from_id}-{to_id}`"),
            Field::new("from_id", FieldType::String),
            Field::new("to_id", FieldType::String),
            Field::new("types", FieldType::Json)
                .with_description("Association types: category, typeId, label"),
            Field::new("labels", FieldType::Json).with_description("The types' labels"),
        ],
    )
}

fn association_record(a: Association) -> Record {
    let labels: Vec<Value> = a
        .types
        .iter()
        .filter_map(|t| t.label.clone())
        .filter(|l| !l.is_empty())
        .map(Value::String)
        .collect();
    let types: Vec<Value> = a
        .types
        .iter()
        .map(|t| json!({"category": t.category, "typeId": t.type_id, "label": t.label}))
        .collect();
    let id = format!("{}-{}", a.from_id, a.to_id);
    let mut data = Map::new();
    data.insert("id".into(), Value::String(id.clone()));
    data.insert("from_id".into(), Value::String(a.from_id));
    data.insert("to_id".into(), Value::String(a.to_id));
    data.insert("types".into(), Value::Array(types));
    data.insert("labels".into(), Value::Array(labels));
    Record::new(id, data)
}

impl HubSpotSource {
    /// The `(from, to)` object types of association stream `name`, if it is
    /// one of this source's.
    pub(super) fn association(&self, name: &str) -> Option<&(String, String)> {
        self.associations
            .iter()
            .find(|(from, to)| association_stream_name(from, to) == name)
    }

    /// The association stream names this source offers.
    pub(super) fn association_streams(&self) -> Vec<String> {
        self.associations
            .iter()
            .map(|(f, t)| association_stream_name(f, t))
            .collect()
    }

    /// True when a finished read of an association stream is younger than
    /// the refresh interval.
    pub(super) fn association_fresh(&self, state: &StreamState) -> bool {
        match AssocPosition::from_state(Some(state)) {
            Ok(Some(AssocPosition::Done { read_ms })) => {
                let age = Utc::now().timestamp_millis().saturating_sub(read_ms);
                u128::try_from(age).is_ok_and(|age| age < self.association_refresh.as_millis())
            }
            _ => false,
        }
    }

    /// Reads an association stream from `state`: nothing from a finished
    /// read (one empty page, the state unchanged), else the rest of a full
    /// read, a page per [`MAX_ASSOCIATION_BATCH`] from-records.
    pub(super) fn read_associations<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        state: Option<StreamState>,
    ) -> BoxStream<'a, Result<Page>> {
        let (after, started_ms) = match AssocPosition::from_state(state.as_ref()) {
            Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
            Ok(Some(AssocPosition::Done { .. })) => {
                let state = state.unwrap_or(StreamState(Value::Null));
                return futures::stream::once(async move { Ok(Page::new(Vec::new(), state)) })
                    .boxed();
            }
            Ok(Some(AssocPosition::Reading { after, started_ms })) => (after, started_ms),
            Ok(None) => (None, Utc::now().timestamp_millis()),
        };
        let assoc = self.hs.associations(from, to);
        // Ten id pages (100 each) make one batch read of 1,000.
        let per_batch =
            MAX_ASSOCIATION_BATCH / usize::try_from(super::MAX_LIST_LIMIT).unwrap_or(100);
        let ids = self.hs.id_pages(from, after);
        let pages = ids
            .try_chunks(per_batch.max(1))
            .map_err(|e| e.1)
            .and_then(move |chunk| {
                let assoc = assoc.clone();
                async move {
                    let next = chunk.last().and_then(|p| p.next.clone());
                    let ids: Vec<String> = chunk.into_iter().flat_map(|p| p.items).collect();
                    let found = if ids.is_empty() {
                        Vec::new()
                    } else {
                        assoc.read(&ids).await?
                    };
                    let pos = match next {
                        Some(after) => AssocPosition::Reading {
                            after: Some(after),
                            started_ms,
                        },
                        None => AssocPosition::Done {
                            read_ms: started_ms,
                        },
                    };
                    let records = found.into_iter().map(association_record).collect();
                    Ok(Page::new(records, pos.to_state()))
                }
            });
        super::source::stop_after_error(pages).boxed()
    }
}
