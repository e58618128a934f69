//! The `Sink` trait: where records land, with the sync state committed
//! together with the data it covers.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema::StreamSchema;
use crate::source::{Record, StreamState};
use crate::Result;

/// The sync's position in one stream of one tenant, as committed in a sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The tenant (connected account) id.
    pub tenant: String,
    /// The stream.
    pub stream: String,
    /// The sync run this checkpoint belongs to (kept across a resume).
    pub sync_id: Uuid,
    /// The source's state: where to continue.
    pub state: StreamState,
    /// True when the sync of this stream finished.
    pub complete: bool,
    /// Records committed by this sync run so far.
    pub records: u64,
    /// When this sync run started.
    pub started_at: DateTime<Utc>,
    /// When this checkpoint was committed.
    pub committed_at: DateTime<Utc>,
    /// True for a full refresh (the stream's records replace what the sink
    /// held), false for an incremental sync (changes merged into it).
    #[serde(default = "yes")]
    pub full_refresh: bool,
}

fn yes() -> bool {
    true
}

impl Checkpoint {
    /// A checkpoint committed now (for sinks driven outside the engine:
    /// tests, benches, tools).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: impl Into<String>,
        stream: impl Into<String>,
        sync_id: Uuid,
        state: StreamState,
        complete: bool,
        records: u64,
        started_at: DateTime<Utc>,
        full_refresh: bool,
    ) -> Self {
        Checkpoint {
            tenant: tenant.into(),
            stream: stream.into(),
            sync_id,
            state,
            complete,
            records,
            started_at,
            committed_at: Utc::now(),
            full_refresh,
        }
    }
}

/// What a sink is told before a stream's records arrive.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamContext {
    /// The tenant.
    pub tenant: String,
    /// The stream's schema.
    pub schema: StreamSchema,
    /// This sync run's id.
    pub sync_id: Uuid,
    /// The unfinished checkpoint this run resumes from, if any. A sink that
    /// keeps data beyond its last commit (an append-only file) discards that
    /// tail here.
    pub resume: Option<Checkpoint>,
    /// True when the run reads the whole stream (its records replace what
    /// the sink held when it completes); false when it reads only changes,
    /// to be merged by key.
    pub full_refresh: bool,
}

impl StreamContext {
    /// A context (for sinks driven outside the engine: tests, benches).
    pub fn new(
        tenant: impl Into<String>,
        schema: StreamSchema,
        sync_id: Uuid,
        resume: Option<Checkpoint>,
    ) -> Self {
        StreamContext {
            tenant: tenant.into(),
            schema,
            sync_id,
            resume,
            full_refresh: true,
        }
    }

    /// Marks the run as incremental (`false`) or a full refresh (`true`).
    pub fn with_full_refresh(mut self, full_refresh: bool) -> Self {
        self.full_refresh = full_refresh;
        self
    }
}

/// Records of one page on their way to a sink.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Batch {
    /// The tenant.
    pub tenant: String,
    /// The stream.
    pub stream: String,
    /// This sync run's id.
    pub sync_id: Uuid,
    /// When these records were read from the provider.
    pub extracted_at: DateTime<Utc>,
    /// The records.
    pub records: Vec<Record>,
}

impl Batch {
    /// A batch.
    pub fn new(
        tenant: impl Into<String>,
        stream: impl Into<String>,
        sync_id: Uuid,
        extracted_at: DateTime<Utc>,
        records: Vec<Record>,
    ) -> Self {
        Batch {
            tenant: tenant.into(),
            stream: stream.into(),
            sync_id,
            extracted_at,
            records,
        }
    }
}

/// A destination for records.
///
/// The engine calls, per tenant and stream: [`Sink::load_state`], then
/// [`Sink::prepare`], then [`Sink::write`] for each page and
/// [`Sink::commit`] every few pages and at the end.
///
/// The contract that makes syncs resumable without loss or duplicates:
/// - `write` hands records over; a sink may buffer them.
/// - `commit` makes every record written before it durable *together with*
///   the checkpoint (or, where that cannot be atomic, data first and the
///   checkpoint after it). After `commit` returns, `load_state` returns it.
/// - Writing the same records again (after a crash between write and commit)
///   never duplicates them: sinks upsert by key, or drop the uncommitted tail
///   in `prepare`.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// The sink's name (`files`, `postgres`, …).
    fn name(&self) -> &'static str;

    /// Creates or evolves the stream's table or layout, and recovers from an
    /// interrupted run.
    async fn prepare(&self, ctx: &StreamContext) -> Result<()>;

    /// Takes a page of records.
    async fn write(&self, batch: Batch) -> Result<()>;

    /// Makes the records written so far and `checkpoint` durable.
    async fn commit(&self, checkpoint: &Checkpoint) -> Result<()>;

    /// The last committed checkpoint of a tenant's stream.
    async fn load_state(&self, tenant: &str, stream: &str) -> Result<Option<Checkpoint>>;

    /// Called when a stream's run stops without its final commit because the
    /// sink itself failed (a write or a commit): drops what was written since
    /// the last commit and releases what the run held (connections, open
    /// uploads) at once. The next run's `prepare` recovers either way; this
    /// only frees resources sooner. The default does nothing.
    async fn abandon(&self, tenant: &str, stream: &str) -> Result<()> {
        let _ = (tenant, stream);
        Ok(())
    }

    /// The keys of the live (not deleted) records the sink holds for a
    /// tenant's stream, for [`crate::sync::verify`]; a composite key's
    /// values are joined by `:` in the order of `stream.primary_key`, as
    /// [`crate::source::Source::read_ids`] gives them. The default says the
    /// sink cannot list them.
    async fn live_ids(&self, tenant: &str, stream: &StreamSchema) -> Result<Vec<String>> {
        let _ = (tenant, stream);
        Err(crate::Error::Config(format!(
            "the {} sink cannot list the ids it holds",
            self.name()
        )))
    }
}

/// The key of a stored row as [`Sink::live_ids`] lists it: the values of
/// the `key` fields, text as it is and anything else as JSON, joined by `:`.
pub(crate) fn row_key(row: &serde_json::Map<String, serde_json::Value>, key: &[String]) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|k| match row.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        })
        .collect();
    parts.join(":")
}
