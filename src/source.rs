//! The `Source` trait: what the sync engine needs from a provider.

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::{DailyUsage, RequestStats};
use crate::schema::{Catalog, StreamSchema};
use crate::Result;

/// One record of a stream: its key, its fields, and whether the provider
/// reports it deleted (archived).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Record {
    /// The record's primary key within its tenant and stream.
    pub id: String,
    /// The fields, typed by the stream's schema.
    pub data: Map<String, Value>,
    /// True when the provider reports the record deleted or archived.
    pub deleted: bool,
}

impl Record {
    /// A live record.
    pub fn new(id: impl Into<String>, data: Map<String, Value>) -> Self {
        Record {
            id: id.into(),
            data,
            deleted: false,
        }
    }

    /// Marks the record deleted (archived at the provider).
    pub fn deleted(mut self, deleted: bool) -> Self {
        self.deleted = deleted;
        self
    }
}

/// A source's position in a stream, opaque to the engine and the sinks.
///
/// It is whatever the source needs to continue after the page it came with
/// (`HubSpot`: phase and `after` cursor; Mailchimp: offset and cutoff).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamState(pub Value);

impl StreamState {
    /// Wraps a JSON value.
    pub fn new(value: Value) -> Self {
        StreamState(value)
    }
}

/// One page of a stream: its records and the state that is valid once they
/// are stored.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Page {
    /// The records.
    pub records: Vec<Record>,
    /// Where to resume after these records.
    pub checkpoint: StreamState,
    /// Completeness checks of the windows (or listings) this page finished:
    /// what the provider said a window holds against what was read.
    pub counts: Vec<CountCheck>,
    /// Records of this page that could not be decoded, kept raw: the engine
    /// quarantines them in the sink (or, with [`crate::sync::Sync::strict`],
    /// fails the stream on them) before it commits the page's checkpoint.
    pub rejected: Vec<Rejected>,
}

impl Page {
    /// A page.
    pub fn new(records: Vec<Record>, checkpoint: StreamState) -> Self {
        Page {
            records,
            checkpoint,
            counts: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// Adds records of this page that could not be decoded.
    pub fn with_rejected(mut self, rejected: Vec<Rejected>) -> Self {
        self.rejected.extend(rejected);
        self
    }

    /// Adds the completeness check of a window this page finished.
    pub fn with_count(mut self, check: CountCheck) -> Self {
        self.counts.push(check);
        self
    }
}

/// A record a source read but could not decode (invalid UTF-8, an unpaired
/// surrogate, nesting deeper than the decoder allows, a value of the wrong
/// type): its bytes exactly as the provider sent them, and why.
///
/// A source reports it on its [`Page`] instead of failing the page, so one
/// bad record does not stop the stream at the same checkpoint on every run;
/// the engine hands it to [`crate::sink::Sink::quarantine`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// The record's bytes as the provider sent them (not necessarily UTF-8).
    pub raw: Vec<u8>,
    /// The JSON path of the failure from the page's root
    /// (`results[3].archivedAt`).
    pub path: String,
    /// The decoder's message.
    pub error: String,
}

impl Rejected {
    /// A rejected record.
    pub fn new(raw: impl Into<Vec<u8>>, path: impl Into<String>, error: impl Into<String>) -> Self {
        Rejected {
            raw: raw.into(),
            path: path.into(),
            error: error.into(),
        }
    }
}

/// A completeness check: how many records the provider reported for a
/// window of a stream (`HubSpot` search's `total`) against how many the sync
/// read from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CountCheck {
    /// The window, in words (`lastmodifieddate in [2026-11-20T00:00:00Z,
    /// 2026-11-22T05:00:00Z]`).
    pub scope: String,
    /// What the provider reported.
    pub reported: u64,
    /// What was read.
    pub loaded: u64,
}

impl CountCheck {
    /// A check of `scope`.
    pub fn new(scope: impl Into<String>, reported: u64, loaded: u64) -> Self {
        CountCheck {
            scope: scope.into(),
            reported,
            loaded,
        }
    }

    /// True when what was read is what the provider reported.
    pub fn matches(&self) -> bool {
        self.reported == self.loaded
    }
}

/// What a sync of one stream will cost, estimated before it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamPlan {
    /// The stream.
    pub stream: String,
    /// True when the sync would read only changes.
    pub incremental: bool,
    /// Records the provider says the sync will read, when it says.
    pub records: Option<u64>,
    /// API calls the sync needs (pages, batches, association reads),
    /// counting the calls made to estimate them.
    pub requests: u64,
    /// How long the provider's rate limits make those calls take at least.
    pub min_duration: std::time::Duration,
    /// How the estimate was made, and anything it could not count.
    pub notes: Vec<String>,
}

impl StreamPlan {
    /// A plan of `stream` with nothing counted yet.
    pub fn new(stream: impl Into<String>) -> Self {
        StreamPlan {
            stream: stream.into(),
            ..Default::default()
        }
    }
}

/// What a source learned about the connected account in [`Source::check`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccountInfo {
    /// Provider name (`hubspot`).
    pub provider: String,
    /// The account's id at the provider (`HubSpot`: hub id / portal id).
    pub account_id: String,
    /// The account's domain or name (`HubSpot`: hub domain).
    pub name: Option<String>,
    /// The user who connected it, if known (OAuth).
    pub user: Option<String>,
    /// Granted scopes (OAuth).
    pub scopes: Vec<String>,
    /// Everything else the provider said.
    pub details: Map<String, Value>,
}

/// A provider, seen by the sync engine: it names and describes its streams
/// and reads them as a stream of pages.
///
/// Implementations sit on a typed client (e.g. [`crate::hubspot::HubSpot`]); the
/// trait is dyn-compatible so the engine can hold any source.
#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The provider's name, lower case (`hubspot`).
    fn provider(&self) -> &'static str;

    /// Checks the credentials and returns who is connected.
    async fn check(&self) -> Result<AccountInfo>;

    /// The streams this source offers by default, with their schemas.
    async fn discover(&self) -> Result<Catalog>;

    /// The schema of one stream by name, including streams that
    /// [`Source::discover`] does not list by default (`HubSpot`: any CRM object
    /// type). The default looks the name up in `discover()`.
    async fn schema(&self, stream: &str) -> Result<StreamSchema> {
        let catalog = self.discover().await?;
        catalog
            .stream(stream)
            .cloned()
            .ok_or_else(|| crate::Error::Config(format!("unknown stream `{stream}`")))
    }

    /// Whether reading from `completed` (the state a finished sync of the
    /// stream left) reads only what changed since. When it does, the engine
    /// passes that state to [`Source::read`] for an incremental sync; when it
    /// does not (the default), the engine starts a full refresh.
    fn resumes_incrementally(&self, stream: &StreamSchema, completed: &StreamState) -> bool {
        let _ = (stream, completed);
        false
    }

    /// Reads a stream from `state` (or from the start), page by page. Nothing
    /// is requested until the stream is polled; the stream ends after the
    /// first error.
    fn read<'a>(
        &'a self,
        stream: &'a StreamSchema,
        state: Option<StreamState>,
    ) -> BoxStream<'a, Result<Page>>;

    /// Requests, retries and rate-limit waits so far (monotonic counters).
    fn request_stats(&self) -> RequestStats;

    /// Estimates what reading `stream` from `state` will cost (see
    /// [`crate::sync::Sync::plan`]). The default says it cannot tell.
    async fn plan(&self, stream: &StreamSchema, state: Option<&StreamState>) -> Result<StreamPlan> {
        let mut plan = StreamPlan::new(&stream.name);
        plan.incremental = state.is_some_and(|s| self.resumes_incrementally(stream, s));
        plan.notes
            .push(format!("{} does not estimate its syncs", self.provider()));
        Ok(plan)
    }

    /// The ids of every live (not deleted) record of `stream` at the
    /// provider, in pages, for [`crate::sync::verify`]. The default reads the
    /// whole stream; sources override it with a cheaper id-only listing.
    fn read_ids<'a>(&'a self, stream: &'a StreamSchema) -> BoxStream<'a, Result<Vec<String>>> {
        use futures::StreamExt;
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

    /// Today's use of the account's daily quota, where the provider has one
    /// and the client counts it.
    fn daily_usage(&self) -> Option<DailyUsage> {
        None
    }
}
