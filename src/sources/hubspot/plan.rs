//! What a `HubSpot` sync of one stream will cost, estimated before it runs
//! ([`crate::source::Source::plan`]).
//!
//! The estimate asks `HubSpot` how many records the read will see (one
//! search of one result, with the filter the read will use) and turns that
//! into calls by the read's own request plan: list pages of 100 (two calls
//! each when the properties do not fit a URL), search pages of 200, batch
//! reads of associations of 1,000 ids. What `HubSpot` cannot count (archived
//! records, owners, associations per record) is counted at its minimum and
//! named in the notes.

use std::time::Duration;

use chrono::Utc;

use super::source::{
    last_modified_property, request_properties, window_filters, HubSpotSource, Position,
};
use super::{
    needs_batch_read, HubSpot, MAX_ASSOCIATION_BATCH, MAX_LIST_LIMIT, MAX_SEARCH_LIMIT,
    STREAM_DEAL_PIPELINES, STREAM_OWNERS, STREAM_TICKET_PIPELINES,
};
use crate::http::{Limits, RateLimit};
use crate::schema::StreamSchema;
use crate::source::{StreamPlan, StreamState};
use crate::Result;

/// Calls counted for a plan: those the estimate made, and those the read
/// will make (search calls also count against the general limit).
#[derive(Debug, Default)]
pub(super) struct Calls {
    pub(super) own: u64,
    pub(super) standard: u64,
    pub(super) search: u64,
}

/// Calls of a listing of `records` in pages of `page`, `per_page` calls a
/// page (an empty listing is one call).
pub(super) fn pages(records: u64, page: u64, per_page: u64) -> u64 {
    if records == 0 {
        1
    } else {
        records.div_ceil(page) * per_page
    }
}

/// The least time `calls` take through `limit` as the client paces them
/// (burst 1, one call per replenish interval).
fn pace(limit: Option<RateLimit>, calls: u64) -> Duration {
    match limit {
        Some(l) if calls > 1 => l
            .quota()
            .replenish_interval()
            .saturating_mul(u32::try_from(calls - 1).unwrap_or(u32::MAX)),
        _ => Duration::ZERO,
    }
}

/// How long the client's limiters make `calls` (of which `search` go to the
/// search endpoints) take at least.
pub(super) fn min_duration(limits: &Limits, calls: u64, search: u64) -> Duration {
    pace(limits.standard, calls).max(pace(limits.search, search))
}

/// The total of one search of `object_type`: filtered by `filters` (none:
/// every live record), one result. `None` when the type cannot be searched.
pub(super) async fn search_total(
    hs: &HubSpot,
    object_type: &str,
    filters: Option<Vec<super::Filter>>,
) -> Result<Option<u64>> {
    let mut search = hs
        .objects(object_type)
        .search()
        .properties(["hs_object_id"])
        .limit(1);
    if let Some(filters) = filters {
        search = search.filter_group(filters);
    }
    match search.send().await {
        Ok(page) => Ok(Some(page.total)),
        Err(crate::Error::Api {
            status: 400 | 403 | 404,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl HubSpotSource {
    /// [`crate::source::Source::plan`] of `HubSpot`.
    pub(super) async fn plan_stream(
        &self,
        stream: &StreamSchema,
        state: Option<&StreamState>,
    ) -> Result<StreamPlan> {
        let mut plan = StreamPlan::new(&stream.name);
        let mut calls = Calls::default();
        match stream.name.as_str() {
            STREAM_OWNERS => {
                calls.standard = 1 + u64::from(self.include_archived);
                plan.notes.push(
                    "owners: one call per 500 live owners, then per 500 archived ones \
                     (HubSpot does not count owners: counted at one page each)"
                        .into(),
                );
            }
            STREAM_DEAL_PIPELINES | STREAM_TICKET_PIPELINES => {
                calls.standard = 1;
                plan.notes
                    .push("pipelines: one unpaged call, read in full every run".into());
            }
            name if self.association(name).is_some() => {
                self.plan_associations(stream, state, &mut plan, &mut calls)
                    .await?;
            }
            _ => {
                self.plan_objects(stream, state, &mut plan, &mut calls)
                    .await?
            }
        }
        plan.requests = calls.own + calls.standard + calls.search;
        plan.min_duration = min_duration(
            self.hs.api_client().limits(),
            calls.standard + calls.search,
            calls.search,
        );
        if calls.own > 0 {
            plan.notes.push(format!(
                "{} of the {} calls made by this estimate; the duration counts the read's calls",
                calls.own, plan.requests
            ));
        }
        Ok(plan)
    }

    async fn plan_associations(
        &self,
        stream: &StreamSchema,
        state: Option<&StreamState>,
        plan: &mut StreamPlan,
        calls: &mut Calls,
    ) -> Result<()> {
        let Some((from, to)) = self.association(&stream.name).cloned() else {
            return Ok(());
        };
        if let Some(state) = state {
            if self.association_fresh(state) {
                plan.incremental = true;
                plan.records = Some(0);
                plan.notes.push(format!(
                    "associations are read again every {} s; the last read is younger: no call",
                    self.association_refresh.as_secs()
                ));
                return Ok(());
            }
            plan.notes
                .push("resumes a read under way: counted as a whole read (an upper bound)".into());
        }
        calls.own += 1;
        let page = u64::from(MAX_LIST_LIMIT);
        let batch = MAX_ASSOCIATION_BATCH as u64;
        match search_total(&self.hs, &from, None).await? {
            Some(n) => {
                let (ids, batches) = (pages(n, page, 1), n.div_ceil(batch));
                calls.standard += ids + batches;
                plan.notes.push(format!(
                    "{n} {from}: {ids} id-listing calls and {batches} batch reads of up to                      {batch} to {to}"
                ));
            }
            None => {
                calls.standard += 2;
                plan.notes.push(format!(
                    "{from} cannot be counted (no search): at least 1 id-listing call and                      1 batch read"
                ));
            }
        }
        plan.notes.push(
            "a record with more than 500 associations needs one more batch read per further              500 (HubSpot does not count associations: not counted)"
                .into(),
        );
        Ok(())
    }

    async fn plan_objects(
        &self,
        stream: &StreamSchema,
        state: Option<&StreamState>,
        plan: &mut StreamPlan,
        calls: &mut Calls,
    ) -> Result<()> {
        let t = stream.name.as_str();
        let last_modified = last_modified_property(stream);
        let pos = Position::from_state(state.cloned())?;
        let per_page = if needs_batch_read(&request_properties(stream)) {
            plan.notes.push(
                "the properties do not fit a URL: 2 calls per page of 100 (ids, then a batch read)"
                    .into(),
            );
            2
        } else {
            1
        };
        let page = u64::from(MAX_LIST_LIMIT);
        let search_page = u64::from(MAX_SEARCH_LIMIT);
        calls.standard += 1;
        plan.notes
            .push("1 call for the properties (the run reads the schema)".into());
        let mut archived = self.include_archived;
        let incremental =
            matches!(pos, Position::Done { cursor_ms: Some(_) }) && last_modified.is_some();
        match (pos, last_modified) {
            (
                Position::Done {
                    cursor_ms: Some(lo),
                },
                Some(lm),
            ) if incremental => {
                plan.incremental = true;
                let hi = Utc::now().timestamp_millis() - self.settle_lag_ms();
                if hi < lo {
                    plan.records = Some(0);
                    plan.notes.push(
                        "incremental: the settle lag has not passed since the last run, \
                         nothing to search"
                            .into(),
                    );
                } else {
                    calls.own += 1;
                    let total = search_total(&self.hs, t, Some(window_filters(lm, (lo, hi), None)))
                        .await?
                        .unwrap_or(0);
                    plan.records = Some(total);
                    calls.search += total / search_page + 1;
                    plan.notes.push(format!(
                        "incremental: {total} changed records, {} search calls of 200 \
                         (each query restarts after the last id: no 10,000 cap)",
                        total / search_page + 1
                    ));
                }
            }
            (
                Position::Changes {
                    lo, hi, last_id, ..
                },
                Some(lm),
            ) => {
                plan.incremental = true;
                calls.own += 1;
                let total = search_total(
                    &self.hs,
                    t,
                    Some(window_filters(lm, (lo, hi), last_id.as_deref())),
                )
                .await?
                .unwrap_or(0);
                plan.records = Some(total);
                calls.search += total / search_page + 1;
                plan.notes.push(format!(
                    "resumes an incremental window: {total} records left, {} search calls",
                    total / search_page + 1
                ));
            }
            (Position::Changes { .. }, None) => {}
            (Position::Archived { .. }, _) => {
                plan.records = None;
                plan.notes
                    .push("resumes the archived listing: only archived records are left".into());
                archived = true;
            }
            (
                Position::Active {
                    after: Some(_),
                    reported,
                    loaded,
                    ..
                },
                _,
            ) => {
                let total = match reported {
                    Some(r) => Some(r),
                    None => {
                        calls.own += 1;
                        search_total(&self.hs, t, None).await?
                    }
                };
                let left = total.map(|n| n.saturating_sub(loaded));
                plan.records = left;
                calls.standard += left.map_or(1, |n| pages(n, page, per_page).max(1));
                plan.notes.push(format!(
                    "resumes the full listing after {loaded} records{}",
                    left.map(|n| format!(": {n} left"))
                        .unwrap_or_else(|| ": the number left is unknown".into())
                ));
            }
            _ => {
                // A full read: the live total, then pages of 100.
                let total = if last_modified.is_some() {
                    calls.own += 1;
                    search_total(&self.hs, t, None).await?
                } else {
                    None
                };
                if total.is_some() {
                    // The read takes the same total again for its check.
                    calls.search += 1;
                }
                plan.records = total;
                calls.standard += total.map_or(1, |n| pages(n, page, per_page));
                plan.notes.push(match total {
                    Some(n) => format!(
                        "full: {n} live records in {} list calls, plus 1 search for the \
                         completeness check",
                        pages(n, page, per_page)
                    ),
                    None => "full: HubSpot cannot count this type (no search): at least 1 \
                             list call, 1 per 100 records"
                        .into(),
                });
            }
        }
        if archived && self.include_archived {
            calls.standard += per_page;
            plan.notes.push(format!(
                "archived records: {per_page} call(s) per 100, their number unknown (search \
                 cannot count them): counted as one page"
            ));
        }
        Ok(())
    }
}
