//! What a Constant Contact sync of one stream will cost, estimated before it
//! runs ([`crate::source::Source::plan`]): with 10,000 requests a day, a
//! caller wants to know whether a sync fits before it starts.
//!
//! Contacts and contact lists can be counted: one request of one record
//! with `include_count=true` and the filters the read will use gives
//! `contacts_count` / `lists_count`, which the read's pages of 500 turn into
//! calls. The other listings have no count: they are estimated at their
//! least (one call) and say so in the notes.

use std::time::Duration;

use chrono::Utc;

use super::source::{ms_to_time, Kind, Plan, Position, Step, OVERLAP_MS};
use super::{ConstantContactSource, Contact, ContactList, ListRequest, MAX_CONTACTS_LIMIT};
use crate::http::RateLimit;
use crate::schema::StreamSchema;
use crate::source::{Source, StreamPlan, StreamState};
use crate::Result;

use super::source::{
    STREAM_CAMPAIGN_ACTIVITIES, STREAM_CAMPAIGN_SUMMARIES, STREAM_CONTACTS, STREAM_CONTACT_LISTS,
    STREAM_CUSTOM_FIELDS, STREAM_EMAIL_CAMPAIGNS,
};

/// Calls of a listing of `records` in pages of `page` (an empty listing is
/// one call).
fn pages(records: u64, page: u64) -> u64 {
    if records == 0 {
        1
    } else {
        records.div_ceil(page)
    }
}

/// The least time `calls` take through `limit` as the client paces them.
fn pace(limit: Option<RateLimit>, calls: u64) -> Duration {
    match limit {
        Some(l) if calls > 1 => l
            .quota()
            .replenish_interval()
            .saturating_mul(u32::try_from(calls - 1).unwrap_or(u32::MAX)),
        _ => Duration::ZERO,
    }
}

/// The count a listing reports for one record of it.
async fn count<T: super::Listed>(req: ListRequest<T>) -> Result<Option<u64>> {
    use futures::TryStreamExt;
    let mut pages = Box::pin(req.limit(1).pages());
    Ok(pages.try_next().await?.and_then(|p| p.count))
}

impl ConstantContactSource {
    /// [`Source::plan`] of Constant Contact.
    pub(super) async fn plan_stream(
        &self,
        stream: &StreamSchema,
        state: Option<&StreamState>,
    ) -> Result<StreamPlan> {
        let mut plan = StreamPlan::new(&stream.name);
        plan.incremental = state.is_some_and(|s| self.resumes_incrementally(stream, s));
        // A completed state the engine would not resume from starts over.
        let state = state.filter(|s| {
            !matches!(
                Position::from_state(Some((*s).clone())),
                Ok(Position::Done { .. })
            ) || plan.incremental
        });
        let cc = self.client();
        let mut own = 0u64;
        let mut calls = 0u64;
        let mut records = Some(0u64);
        let add = |records: &mut Option<u64>, n: Option<u64>| {
            *records = match (*records, n) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        };
        match stream.name.as_str() {
            STREAM_CONTACTS
            | STREAM_CONTACT_LISTS
            | STREAM_EMAIL_CAMPAIGNS
            | STREAM_CAMPAIGN_SUMMARIES
            | STREAM_CUSTOM_FIELDS => {
                let steps = Plan::new(
                    self.kind(&stream.name),
                    Position::from_state(state.cloned())?,
                    Utc::now().timestamp_millis(),
                    self.lag_ms(),
                )?
                .steps;
                for step in steps {
                    match (stream.name.as_str(), step) {
                        (STREAM_CONTACTS, step) => {
                            let base = cc.contacts().include_count();
                            let (req, sweep): (ListRequest<Contact>, bool) = match &step {
                                Step::Full(_) => (base.status("all"), false),
                                Step::Changes { lo, hi, .. } => (
                                    base.status("all")
                                        .updated_after(ms_to_time(lo - OVERLAP_MS))
                                        .updated_before(ms_to_time(*hi)),
                                    false,
                                ),
                                _ => (base.status("deleted"), true),
                            };
                            if matches!(
                                &step,
                                Step::Full(Some(_))
                                    | Step::Changes { next: Some(_), .. }
                                    | Step::Deleted { next: Some(_), .. }
                            ) {
                                plan.notes.push(
                                    "resuming a listing: counted in full, the read does less"
                                        .into(),
                                );
                            }
                            own += 1;
                            let n = count(req).await?;
                            calls += pages(n.unwrap_or(0), u64::from(MAX_CONTACTS_LIMIT));
                            if sweep {
                                plan.notes.push(format!(
                                    "contacts: the sweep of {} deleted contacts emits only those \
                                     deleted since the window's first day",
                                    n.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
                                ));
                            } else {
                                add(&mut records, n);
                            }
                        }
                        (STREAM_CONTACT_LISTS, _) => {
                            own += 1;
                            let req: ListRequest<ContactList> = cc.contact_lists().include_count();
                            let n = count(req).await?;
                            calls += pages(n.unwrap_or(0), 500);
                            add(&mut records, n);
                        }
                        (name, _) => {
                            calls += 1;
                            records = None;
                            plan.notes.push(format!(
                                "{name}: the API gives no count; estimated at one call \
                                 (one per {} records)",
                                if name == STREAM_CUSTOM_FIELDS {
                                    100
                                } else {
                                    500
                                }
                            ));
                        }
                    }
                }
                if stream.name == STREAM_CONTACTS {
                    // The schema's custom field definitions.
                    calls += 1;
                }
                if matches!(
                    self.kind(&stream.name),
                    Kind::Summaries { window_ms: Some(_) }
                ) && plan.incremental
                {
                    plan.notes.push(
                        "summaries: only the campaigns sent within the window are re-read".into(),
                    );
                }
            }
            STREAM_CAMPAIGN_ACTIVITIES => {
                calls += 1;
                records = None;
                plan.notes.push(
                    "email_campaign_activities: one call per 500 campaigns (changed ones on \
                     incremental runs), then 1 + one per activity (usually 2 or 3) for each: \
                     the API gives no count; estimated at one call"
                        .into(),
                );
            }
            other => {
                return Err(crate::Error::Config(format!(
                    "`{other}` is not a Constant Contact stream"
                )))
            }
        }
        plan.records = records;
        plan.requests = own + calls;
        plan.min_duration = pace(cc.api_client().limits().standard, plan.requests);
        Ok(plan)
    }
}
