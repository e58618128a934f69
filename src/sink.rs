//! The `Sink` trait: where records land, with the sync state committed
//! together with the data it covers.

use std::borrow::Cow;

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
    /// What the final commit of a full refresh may delete of the tenant's
    /// rows that the run did not write (see [`Prune`]). The engine sets it
    /// on every commit from the run's completeness checks, so an interrupted
    /// run that found a mismatch keeps withholding deletions when resumed.
    #[serde(default)]
    pub prune: Prune,
}

/// What a full refresh's final commit may delete: the tenant's rows that
/// the run did not write (records gone from the provider).
///
/// The share is measured by the sink at the final commit, against the
/// tenant's rows in the stream as they would be after a merge (the rows the
/// run wrote plus those it did not): more than the share and the sink
/// deletes nothing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Prune {
    /// Delete every row the run did not write (a [`Checkpoint::new`]'s
    /// default, for sinks driven outside the engine).
    #[default]
    All,
    /// Delete the rows the run did not write when they are at most this
    /// share (0 to 1) of the tenant's rows in the stream; otherwise delete
    /// nothing.
    UpTo(f64),
    /// Delete nothing, for this reason (a completeness check of the run did
    /// not match).
    Withheld(String),
}

/// What a commit did about deleting rows the run did not write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PruneOutcome {
    /// Nothing to decide: an intermediate commit or an incremental run.
    #[default]
    NotApplicable,
    /// The final commit of a full refresh deleted the rows the run did not
    /// write.
    Pruned {
        /// Rows deleted, when the sink counted them.
        rows: Option<u64>,
    },
    /// The final commit of a full refresh merged what the run read and
    /// deleted nothing.
    Withheld {
        /// Rows the run did not write, which stay, when the sink counted
        /// them.
        kept: Option<u64>,
        /// Why (a completeness check did not match, or the rows to delete
        /// were more than the allowed share).
        reason: String,
    },
}

impl PruneOutcome {
    /// True when a full refresh withheld its deletions.
    pub fn is_withheld(&self) -> bool {
        matches!(self, PruneOutcome::Withheld { .. })
    }
}

impl Prune {
    /// Decides, for a final commit that would delete `stale` of `total`
    /// rows (the tenant's rows after a merge), whether the deletion may
    /// happen: `Ok(())` or the [`PruneOutcome::Withheld`] to report.
    pub fn check(&self, stale: u64, total: u64) -> std::result::Result<(), PruneOutcome> {
        match self {
            Prune::All => Ok(()),
            Prune::Withheld(reason) => Err(PruneOutcome::Withheld {
                kept: Some(stale),
                reason: reason.clone(),
            }),
            Prune::UpTo(share) => {
                let share = if share.is_nan() {
                    0.0
                } else {
                    share.clamp(0.0, 1.0)
                };
                if stale == 0 || (stale as f64) <= share * total as f64 {
                    Ok(())
                } else {
                    Err(PruneOutcome::Withheld {
                        kept: Some(stale),
                        reason: format!(
                            "the full refresh would delete {stale} of {total} rows, more than the allowed share of {share}"
                        ),
                    })
                }
            }
        }
    }

    /// True when nothing may be deleted whatever the counts.
    pub fn is_withheld(&self) -> bool {
        matches!(self, Prune::Withheld(_))
    }
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
            prune: Prune::All,
        }
    }

    /// Sets what a full refresh's final commit may delete.
    pub fn with_prune(mut self, prune: Prune) -> Self {
        self.prune = prune;
        self
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

/// A record the sync could not decode, as a sink keeps it in its
/// quarantine (dead-letter table or file) instead of failing the stream:
/// the bytes as the provider sent them, why they failed, and where.
///
/// Stored (and returned by [`Sink::quarantined`]) as: `tenant`, `stream`,
/// `sync_id`, `position` (the checkpoint of the page that carried the
/// record, as JSON text), `raw` (the bytes as text, invalid UTF-8 and NUL
/// replaced by U+FFFD), `raw_base64` (the exact bytes, set only when `raw`
/// is not them), `path`, `error`, `quarantined_at`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QuarantinedRecord {
    /// The tenant.
    pub tenant: String,
    /// The stream.
    pub stream: String,
    /// The sync run that read it.
    pub sync_id: Uuid,
    /// The checkpoint of the page that carried the record: reading from the
    /// state before it reads the record again.
    pub position: StreamState,
    /// The record's bytes, exactly as received.
    pub raw: Vec<u8>,
    /// The JSON path of the failure from the page's root.
    pub path: String,
    /// The decoder's message.
    pub error: String,
    /// When it was quarantined.
    pub quarantined_at: DateTime<Utc>,
}

impl QuarantinedRecord {
    /// A record of `tenant`'s `stream` that `rejected` describes, quarantined now.
    pub fn new(
        tenant: impl Into<String>,
        stream: impl Into<String>,
        sync_id: Uuid,
        position: StreamState,
        rejected: crate::source::Rejected,
    ) -> Self {
        QuarantinedRecord {
            tenant: tenant.into(),
            stream: stream.into(),
            sync_id,
            position,
            raw: rejected.raw,
            path: rejected.path,
            error: rejected.error,
            quarantined_at: Utc::now(),
        }
    }

    /// The bytes as text: invalid UTF-8 and NUL (which Postgres `text`
    /// refuses) replaced by U+FFFD.
    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw).replace('\0', "\u{fffd}")
    }

    /// The exact bytes in base64 when [`QuarantinedRecord::raw_text`] is not
    /// them, else `None`.
    pub fn raw_base64(&self) -> Option<String> {
        use base64::Engine as _;
        let exact = std::str::from_utf8(&self.raw).is_ok_and(|s| !s.contains('\0'));
        (!exact).then(|| base64::engine::general_purpose::STANDARD.encode(&self.raw))
    }

    /// The stored form: one JSON object with the fields named in the type's
    /// docs (a line of the files sink, of an object store's quarantine).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tenant": clean_text(&self.tenant),
            "stream": clean_text(&self.stream),
            "sync_id": self.sync_id,
            "position": self.position_text(),
            "raw": self.raw_text(),
            "raw_base64": self.raw_base64(),
            "path": clean_text(&self.path),
            "error": clean_text(&self.error),
            "quarantined_at": self.quarantined_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        })
    }

    /// The record from its stored form ([`QuarantinedRecord::to_json`]).
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        #[derive(Deserialize)]
        struct Stored {
            tenant: String,
            stream: String,
            sync_id: Uuid,
            position: String,
            raw: String,
            #[serde(default)]
            raw_base64: Option<String>,
            path: String,
            error: String,
            quarantined_at: DateTime<Utc>,
        }
        let s = Stored::deserialize(v)
            .map_err(|e| crate::Error::state("unreadable quarantined record", e))?;
        Self::from_stored(
            s.tenant,
            s.stream,
            s.sync_id,
            &s.position,
            s.raw,
            s.raw_base64,
            s.path,
            s.error,
            s.quarantined_at,
        )
    }

    /// The position as JSON text (`text` columns take it whatever it holds).
    pub(crate) fn position_text(&self) -> String {
        serde_json::to_string(&self.position).unwrap_or_else(|_| "null".into())
    }

    /// The record from its stored columns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_stored(
        tenant: String,
        stream: String,
        sync_id: Uuid,
        position: &str,
        raw: String,
        raw_base64: Option<String>,
        path: String,
        error: String,
        quarantined_at: DateTime<Utc>,
    ) -> Result<Self> {
        use base64::Engine as _;
        let raw = match raw_base64 {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| crate::Error::state("unreadable quarantined record bytes", e))?,
            None => raw.into_bytes(),
        };
        let position = serde_json::from_str(position)
            .map_err(|e| crate::Error::state("unreadable quarantined record position", e))?;
        Ok(QuarantinedRecord {
            tenant,
            stream,
            sync_id,
            position,
            raw,
            path,
            error,
            quarantined_at,
        })
    }
}

/// Text a `text` column takes: NUL replaced by U+FFFD.
pub(crate) fn clean_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(s)
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
    ///
    /// It first takes the single-writer lease of the tenant's stream, held
    /// until the final commit or [`Sink::abandon`] (or until the process
    /// dies, or for sinks with expiring leases, until the lease expires
    /// without being renewed by a commit). While another run holds it,
    /// `prepare` fails at once with [`crate::Error::Busy`].
    async fn prepare(&self, ctx: &StreamContext) -> Result<()>;

    /// Takes a page of records.
    async fn write(&self, batch: Batch) -> Result<()>;

    /// Makes the records written so far and `checkpoint` durable.
    ///
    /// The final commit of a full refresh (`complete && full_refresh`) also
    /// deletes the tenant's rows that the run did not write, as far as
    /// [`Checkpoint::prune`] allows; otherwise it merges what the run wrote
    /// into what was there. It returns what it did about those rows. It
    /// releases the run's lease ([`Sink::prepare`]) when `complete`.
    async fn commit(&self, checkpoint: &Checkpoint) -> Result<PruneOutcome>;

    /// The last committed checkpoint of a tenant's stream.
    async fn load_state(&self, tenant: &str, stream: &str) -> Result<Option<Checkpoint>>;

    /// Called when a stream's run stops without its final commit (the
    /// source or the sink failed): drops what was written since the last
    /// commit and releases what the run held (its lease, connections, open
    /// uploads) at once. The next run's `prepare` recovers either way. The
    /// default does nothing.
    async fn abandon(&self, tenant: &str, stream: &str) -> Result<()> {
        let _ = (tenant, stream);
        Ok(())
    }

    /// Stores records the sync could not decode in the sink's quarantine
    /// (its dead-letter table or file), durably before it returns: the
    /// engine calls it before it writes the page that carried them, so they
    /// are stored before that page's checkpoint is committed. A crash before
    /// the commit reads them again, so a record may be stored twice. The
    /// default refuses, so a sink without a quarantine fails the stream
    /// rather than lose a record.
    async fn quarantine(&self, records: &[QuarantinedRecord]) -> Result<()> {
        Err(crate::Error::Config(format!(
            "the {} sink has no quarantine for {} undecodable record(s)",
            self.name(),
            records.len()
        )))
    }

    /// The records in a tenant's stream's quarantine, oldest first. The
    /// default says the sink has none.
    async fn quarantined(&self, tenant: &str, stream: &str) -> Result<Vec<QuarantinedRecord>> {
        let _ = (tenant, stream);
        Err(crate::Error::Config(format!(
            "the {} sink has no quarantine",
            self.name()
        )))
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
