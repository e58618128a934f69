//! The sync engine: source to sink for one tenant (account), stream by
//! stream, with checkpoints every N pages, resume after a crash, per-stream
//! failure isolation and progress events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::http::RequestStats;
use crate::sink::{Batch, Checkpoint, Sink, StreamContext};
use crate::source::{Page, Source, StreamState};
use crate::{Error, Result};

/// Something the engine reports while it runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Progress {
    /// A stream started (or resumed from a checkpoint).
    StreamStarted {
        /// Tenant.
        tenant: String,
        /// Stream.
        stream: String,
        /// True when resuming an interrupted sync.
        resumed: bool,
        /// Records already committed by the interrupted sync.
        committed: u64,
    },
    /// A page was read and handed to the sink.
    PageWritten {
        /// Tenant.
        tenant: String,
        /// Stream.
        stream: String,
        /// Records in the page.
        records: usize,
        /// Records written by this sync of the stream so far.
        total: u64,
    },
    /// A checkpoint was committed.
    Committed {
        /// Tenant.
        tenant: String,
        /// Stream.
        stream: String,
        /// Records committed by this sync of the stream.
        records: u64,
    },
    /// A stream finished.
    StreamFinished(StreamReport),
    /// A stream failed; the report carries the error.
    StreamFailed(StreamReport),
}

/// What happened to one stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamReport {
    /// Tenant.
    pub tenant: String,
    /// Stream.
    pub stream: String,
    /// The sync run's id (kept across a resume).
    pub sync_id: Option<Uuid>,
    /// True when this run resumed an interrupted one.
    pub resumed: bool,
    /// True when this run read only changes since the last one.
    pub incremental: bool,
    /// Records written in this run.
    pub records: u64,
    /// Pages read in this run.
    pub pages: u64,
    /// Requests, retries, 429s and limiter waits during this stream.
    pub requests: RequestStats,
    /// Wall time.
    pub duration: Duration,
    /// The last committed state.
    pub final_state: Option<StreamState>,
    /// The error, if the stream failed (its committed checkpoints stay).
    pub error: Option<Arc<Error>>,
}

/// What happened to one tenant's sync.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncReport {
    /// Tenant.
    pub tenant: String,
    /// One report per stream, in order.
    pub streams: Vec<StreamReport>,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// Wall time.
    pub duration: Duration,
    /// An error before any stream ran (e.g. discovery failed).
    pub error: Option<Arc<Error>>,
}

impl SyncReport {
    /// True when every stream finished.
    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.streams.iter().all(|s| s.error.is_none())
    }

    /// Records written across streams.
    pub fn records(&self) -> u64 {
        self.streams.iter().map(|s| s.records).sum()
    }
}

type ProgressFn = Arc<dyn Fn(&Progress) + Send + std::marker::Sync>;

/// A sync of one tenant from a source into a sink.
///
/// ```no_run
/// # async fn run(source: std::sync::Arc<dyn headwater::source::Source>) -> headwater::Result<()> {
/// use std::sync::Arc;
/// use headwater::sinks::files::FilesSink;
/// use headwater::sync::Sync;
///
/// let sink = Arc::new(FilesSink::new("data")?);
/// let report = Sync::new(source, sink)
///     .tenant("acme")
///     .streams(["contacts", "deals"])
///     .run()
///     .await;
/// for s in &report.streams {
///     println!("{}: {} records", s.stream, s.records);
/// }
/// # Ok(()) }
/// ```
///
/// Each stream resumes from its last committed checkpoint if the previous
/// run did not finish it, and starts a full refresh otherwise. A failing
/// stream is reported and the others still run.
#[derive(Clone)]
pub struct Sync {
    source: Arc<dyn Source>,
    sink: Arc<dyn Sink>,
    tenant: String,
    streams: Option<Vec<String>>,
    checkpoint_every: usize,
    read_ahead: usize,
    full_refresh: bool,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sync")
            .field("source", &self.source)
            .field("sink", &self.sink)
            .field("tenant", &self.tenant)
            .field("streams", &self.streams)
            .field("checkpoint_every", &self.checkpoint_every)
            .finish_non_exhaustive()
    }
}

impl Sync {
    /// A sync of every stream `source` discovers, for tenant `default`.
    pub fn new(source: Arc<dyn Source>, sink: Arc<dyn Sink>) -> Self {
        Sync {
            source,
            sink,
            tenant: "default".into(),
            streams: None,
            checkpoint_every: 10,
            read_ahead: 4,
            full_refresh: false,
            progress: None,
        }
    }

    /// The tenant id recorded with every record and checkpoint.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Streams to sync, in order (default: all that `discover()` lists).
    pub fn streams<I: IntoIterator<Item = S>, S: Into<String>>(mut self, streams: I) -> Self {
        self.streams = Some(streams.into_iter().map(Into::into).collect());
        self
    }

    /// Commit a checkpoint every `pages` pages (default 10; at least 1).
    pub fn checkpoint_every(mut self, pages: usize) -> Self {
        self.checkpoint_every = pages.max(1);
        self
    }

    /// Pages read ahead of the sink (default 4), so the network and the sink
    /// work at the same time.
    pub fn read_ahead(mut self, pages: usize) -> Self {
        self.read_ahead = pages.max(1);
        self
    }

    /// Read every stream in full even where the source could read only
    /// changes (default false: the first sync of a stream is full, later ones
    /// incremental where the source supports it).
    pub fn full_refresh(mut self, full: bool) -> Self {
        self.full_refresh = full;
        self
    }

    /// Calls `f` with every progress event.
    pub fn on_progress(
        mut self,
        f: impl Fn(&Progress) + Send + std::marker::Sync + 'static,
    ) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    fn emit(&self, p: Progress) {
        if let Some(f) = &self.progress {
            f(&p);
        }
    }

    /// Runs the sync. Never fails as a whole: errors are in the report.
    pub async fn run(&self) -> SyncReport {
        let span =
            tracing::info_span!("sync", tenant = %self.tenant, provider = self.source.provider());
        self.run_all().instrument(span).await
    }

    async fn run_all(&self) -> SyncReport {
        let started_at = Utc::now();
        let start = Instant::now();
        let mut report = SyncReport {
            tenant: self.tenant.clone(),
            streams: Vec::new(),
            started_at,
            duration: Duration::ZERO,
            error: None,
        };
        let streams = match &self.streams {
            Some(s) => s.clone(),
            None => match self.source.discover().await {
                Ok(c) => c.streams.into_iter().map(|s| s.name).collect(),
                Err(e) => {
                    report.error = Some(Arc::new(e));
                    report.duration = start.elapsed();
                    return report;
                }
            },
        };
        for stream in streams {
            let r = self.run_stream(&stream).await;
            if r.error.is_some() {
                self.emit(Progress::StreamFailed(r.clone()));
            } else {
                self.emit(Progress::StreamFinished(r.clone()));
            }
            report.streams.push(r);
        }
        report.duration = start.elapsed();
        report
    }

    async fn run_stream(&self, stream: &str) -> StreamReport {
        let start = Instant::now();
        let before = self.source.request_stats();
        let mut report = StreamReport {
            tenant: self.tenant.clone(),
            stream: stream.to_owned(),
            sync_id: None,
            resumed: false,
            incremental: false,
            records: 0,
            pages: 0,
            requests: RequestStats::default(),
            duration: Duration::ZERO,
            final_state: None,
            error: None,
        };
        let span = tracing::info_span!("stream", stream);
        if let Err(e) = self.sync_stream(stream, &mut report).instrument(span).await {
            tracing::warn!(stream, error = %e, "stream failed");
            report.error = Some(Arc::new(e));
        }
        report.requests = self.source.request_stats() - before;
        report.duration = start.elapsed();
        report
    }

    async fn sync_stream(&self, stream: &str, report: &mut StreamReport) -> Result<()> {
        let tenant = &self.tenant;
        let schema = self.source.schema(stream).await?;
        let previous = self.sink.load_state(tenant, stream).await?;
        // An unfinished run is resumed as it was (full or incremental); a
        // finished one is followed by an incremental run where the source
        // can read only changes, else by a full refresh.
        let (resume, state, full_refresh) = match previous {
            Some(cp) if !cp.complete => {
                let (state, full) = (Some(cp.state.clone()), cp.full_refresh);
                (Some(cp), state, full)
            }
            Some(cp)
                if !self.full_refresh && self.source.resumes_incrementally(&schema, &cp.state) =>
            {
                (None, Some(cp.state), false)
            }
            _ => (None, None, true),
        };
        let (sync_id, started_at, base) = match &resume {
            Some(cp) => (cp.sync_id, cp.started_at, cp.records),
            None => (Uuid::new_v4(), Utc::now(), 0),
        };
        report.sync_id = Some(sync_id);
        report.resumed = resume.is_some();
        report.incremental = !full_refresh;
        self.sink
            .prepare(
                &StreamContext::new(tenant.clone(), schema.clone(), sync_id, resume)
                    .with_full_refresh(full_refresh),
            )
            .await?;
        self.emit(Progress::StreamStarted {
            tenant: tenant.clone(),
            stream: stream.to_owned(),
            resumed: report.resumed,
            committed: base,
        });

        // Reader and writer run together, joined by a bounded channel: the
        // network fetches ahead while the sink writes; backpressure is the
        // channel being full.
        let (tx, rx) = tokio::sync::mpsc::channel::<(DateTime<Utc>, Result<Page>)>(self.read_ahead);
        let reader = async {
            let mut pages = self.source.read(&schema, state);
            while let Some(page) = pages.next().await {
                let failed = page.is_err();
                if tx.send((Utc::now(), page)).await.is_err() || failed {
                    break;
                }
            }
            drop(tx);
        };
        let writer = async {
            // Owned here, so a failing writer closes the channel and the
            // reader stops instead of waiting on a full channel.
            let mut rx = rx;
            let mut since_commit = 0usize;
            let mut last_state: Option<StreamState> = None;
            while let Some((extracted_at, page)) = rx.recv().await {
                let page = page?;
                let n = page.records.len();
                report.pages += 1;
                report.records += n as u64;
                self.sink
                    .write(Batch {
                        tenant: tenant.clone(),
                        stream: stream.to_owned(),
                        sync_id,
                        extracted_at,
                        records: page.records,
                    })
                    .await?;
                self.emit(Progress::PageWritten {
                    tenant: tenant.clone(),
                    stream: stream.to_owned(),
                    records: n,
                    total: report.records,
                });
                last_state = Some(page.checkpoint);
                since_commit += 1;
                if since_commit >= self.checkpoint_every {
                    since_commit = 0;
                    let state = last_state
                        .clone()
                        .unwrap_or(StreamState(serde_json::Value::Null));
                    let cp = StreamCheckpoint {
                        sync_id,
                        started_at,
                        state: state.clone(),
                        complete: false,
                        records: base + report.records,
                        full_refresh,
                    };
                    self.commit(stream, cp).await?;
                    report.final_state = Some(state);
                }
            }
            let state = last_state.unwrap_or(StreamState(serde_json::Value::Null));
            let cp = StreamCheckpoint {
                sync_id,
                started_at,
                state: state.clone(),
                complete: true,
                records: base + report.records,
                full_refresh,
            };
            self.commit(stream, cp).await?;
            report.final_state = Some(state);
            Ok::<(), Error>(())
        };
        let ((), written) = futures::join!(reader, writer);
        written
    }

    async fn commit(&self, stream: &str, checkpoint: StreamCheckpoint) -> Result<()> {
        self.sink
            .commit(&Checkpoint {
                tenant: self.tenant.clone(),
                stream: stream.to_owned(),
                sync_id: checkpoint.sync_id,
                state: checkpoint.state,
                complete: checkpoint.complete,
                records: checkpoint.records,
                started_at: checkpoint.started_at,
                committed_at: Utc::now(),
                full_refresh: checkpoint.full_refresh,
            })
            .await?;
        self.emit(Progress::Committed {
            tenant: self.tenant.clone(),
            stream: stream.to_owned(),
            records: checkpoint.records,
        });
        Ok(())
    }
}

/// Runs many tenants' syncs at once, at most `concurrency` at a time, and
/// returns their reports in the order given.
///
/// Each [`Sync`] brings its own source, so each tenant has its own token
/// provider and rate limiters: a busy account never spends another's quota.
/// A tenant's failure (a revoked token, repeated 5xx) is in its own report
/// and does not stop the others.
pub async fn run_tenants<I>(syncs: I, concurrency: usize) -> Vec<SyncReport>
where
    I: IntoIterator<Item = Sync>,
{
    let mut reports: Vec<(usize, SyncReport)> =
        futures::stream::iter(syncs.into_iter().enumerate())
            .map(|(i, sync)| async move { (i, sync.run().await) })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

struct StreamCheckpoint {
    full_refresh: bool,
    sync_id: Uuid,
    started_at: DateTime<Utc>,
    state: StreamState,
    complete: bool,
    records: u64,
}
