//! The sync engine: source to sink for one tenant (account), stream by
//! stream, with checkpoints every N pages, resume after a crash, per-stream
//! failure isolation and progress events.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tracing::Instrument;
use uuid::Uuid;

use crate::http::{DailyUsage, HttpEvent, RequestStats};
use crate::sink::{Batch, Checkpoint, Prune, PruneOutcome, QuarantinedRecord, Sink, StreamContext};
use crate::source::{CountCheck, Page, Source, StreamPlan, StreamState};
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
    /// A request failed and will be retried (429, 5xx, timeout).
    Retrying {
        /// Tenant.
        tenant: String,
        /// Stream.
        stream: String,
        /// 1 for the first retry of the request.
        attempt: u32,
        /// The status that failed (`None`: transport error or timeout).
        status: Option<u16>,
        /// Backoff or `Retry-After` before the next attempt.
        wait: Duration,
    },
    /// A request waited on the client-side rate limiter (reported for waits
    /// of [`Sync::THROTTLE_EVENT_MIN`] or more; the report counts them all).
    Throttled {
        /// Tenant.
        tenant: String,
        /// Stream.
        stream: String,
        /// Time spent waiting.
        waited: Duration,
    },
    /// A stream finished.
    StreamFinished(StreamReport),
    /// A stream failed; the report carries the error.
    StreamFailed(StreamReport),
}

/// How a stream was read, and for a full read, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadMode {
    /// Only what changed since the last finished sync (or, resumed, the
    /// rest of an interrupted incremental read).
    Incremental,
    /// In full: the sink holds no finished sync of the stream.
    FirstSync,
    /// In full: the caller asked for it ([`Sync::full_refresh`]).
    FullRefresh,
    /// In full although a finished sync exists: the source cannot read only
    /// this stream's changes (no change filter, such as HubSpot owners and
    /// pipelines, or association tables that are due for their re-read), so
    /// the engine fell back to a full listing.
    FullListing,
    /// In full: the rest of an interrupted full read, from its checkpoint.
    ResumedFull,
}

impl ReadMode {
    /// True for every mode that reads the stream in full.
    pub fn is_full(self) -> bool {
        self != ReadMode::Incremental
    }
}

impl std::fmt::Display for ReadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadMode::Incremental => "changes only",
            ReadMode::FirstSync => "full (first sync)",
            ReadMode::FullRefresh => "full (refresh asked)",
            ReadMode::FullListing => "full (the source cannot read only changes)",
            ReadMode::ResumedFull => "full (resumed)",
        })
    }
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
    /// How the stream was read: only its changes, or in full and why.
    pub mode: ReadMode,
    /// Records written in this run.
    pub records: u64,
    /// Records read in this run that could not be decoded and went to the
    /// sink's quarantine ([`Sink::quarantine`]) instead of stopping the
    /// stream. They were read, not lost: a completeness check counts them
    /// as read.
    pub quarantined: u64,
    /// Pages read in this run.
    pub pages: u64,
    /// Requests, retries, 429s and limiter waits during this stream.
    pub requests: RequestStats,
    /// Wall time.
    pub duration: Duration,
    /// The last committed state.
    pub final_state: Option<StreamState>,
    /// Completeness checks: per window, what the provider reported against
    /// what was read.
    pub counts: Vec<CountCheck>,
    /// When the stream stopped because a daily quota is spent: when the
    /// quota resets and the sync can resume from its checkpoint.
    pub resume_at: Option<DateTime<Utc>>,
    /// The error, if the stream failed (its committed checkpoints stay).
    pub error: Option<Arc<Error>>,
    /// What the final commit of a full refresh did about the tenant's rows
    /// the run did not write: deleted them, or withheld the deletion and why
    /// (a completeness check did not match, or they were more than
    /// [`Sync::max_delete_share`] of the stream).
    pub prune: PruneOutcome,
}

impl StreamReport {
    /// True when this run read only what changed since the last one.
    pub fn is_incremental(&self) -> bool {
        self.mode == ReadMode::Incremental
    }

    /// The completeness checks where what was read differs from what the
    /// provider reported.
    pub fn count_mismatches(&self) -> impl Iterator<Item = &CountCheck> {
        self.counts.iter().filter(|c| !c.matches())
    }

    /// True when the stream failed because the account must be connected
    /// again (revoked grant, `invalid_grant`).
    pub fn needs_reauthorization(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(Error::needs_reauthorization)
    }
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

    /// True when the tenant's connection must be authorized again: its
    /// grant was revoked or its refresh token refused. Mark the connection
    /// (e.g. [`crate::auth::TokenStore::mark_reauthorization_needed`]) and
    /// ask the account's owner to connect it again.
    pub fn needs_reauthorization(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(Error::needs_reauthorization)
            || self.streams.iter().any(StreamReport::needs_reauthorization)
    }

    /// When the streams that stopped on a spent daily quota can resume.
    pub fn resume_at(&self) -> Option<DateTime<Utc>> {
        self.streams.iter().filter_map(|s| s.resume_at).max()
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
    stream_concurrency: usize,
    max_delete_share: f64,
    progress: Option<ProgressFn>,
    strict: bool,
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
            stream_concurrency: 1,
            max_delete_share: Self::DEFAULT_MAX_DELETE_SHARE,
            progress: None,
            strict: false,
        }
    }

    /// The default of [`Sync::max_delete_share`].
    pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.25;

    /// The largest share (0 to 1) of a tenant's rows in a stream that a full
    /// refresh may delete because it did not read them (default
    /// [`Sync::DEFAULT_MAX_DELETE_SHARE`]). A refresh that would delete more
    /// (a listing that ended early) deletes nothing, merges what it read,
    /// and says so in [`StreamReport::prune`]. `1.0` allows any deletion;
    /// deletions are withheld whenever a completeness check of the run does
    /// not match, whatever the share.
    pub fn max_delete_share(mut self, share: f64) -> Self {
        self.max_delete_share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// Limiter waits at least this long are reported as
    /// [`Progress::Throttled`] events.
    pub const THROTTLE_EVENT_MIN: Duration = Duration::from_millis(100);

    /// Streams of this tenant synced at once (default 1). They share the
    /// tenant's client and rate limiters, so more streams keep the limiter
    /// busy while each waits on the network, but never exceed the
    /// account's limits.
    pub fn stream_concurrency(mut self, n: usize) -> Self {
        self.stream_concurrency = n.max(1);
        self
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

    /// Fail a stream on the first record its source cannot decode, as
    /// before quarantines existed (default false: such a record goes to the
    /// sink's quarantine with its raw bytes and error, the report counts it
    /// in [`StreamReport::quarantined`], and the stream goes on). The error
    /// is an [`Error::Decode`] naming the record's JSON path; the page is
    /// not written and its checkpoint not committed.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
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
        // A grant found revoked stops the streams not yet started: they
        // would fail the same way, each spending another refresh attempt.
        let revoked: Arc<Mutex<Option<Arc<Error>>>> = Arc::default();
        let mut reports: Vec<(usize, StreamReport)> =
            futures::stream::iter(streams.into_iter().enumerate())
                .map(|(i, stream)| {
                    let revoked = revoked.clone();
                    async move {
                        let known = revoked.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let r = match known {
                            Some(e) => self.skipped(&stream, e),
                            None => self.run_stream(&stream).await,
                        };
                        if r.needs_reauthorization() {
                            let mut g = revoked.lock().unwrap_or_else(|p| p.into_inner());
                            if g.is_none() {
                                *g = r.error.clone();
                            }
                        }
                        if r.error.is_some() {
                            self.emit(Progress::StreamFailed(r.clone()));
                        } else {
                            self.emit(Progress::StreamFinished(r.clone()));
                        }
                        (i, r)
                    }
                })
                .buffer_unordered(self.stream_concurrency)
                .collect()
                .await;
        reports.sort_by_key(|(i, _)| *i);
        report.streams = reports.into_iter().map(|(_, r)| r).collect();
        report.duration = start.elapsed();
        report
    }

    fn empty_report(&self, stream: &str) -> StreamReport {
        StreamReport {
            tenant: self.tenant.clone(),
            stream: stream.to_owned(),
            sync_id: None,
            resumed: false,
            mode: ReadMode::FirstSync,
            records: 0,
            quarantined: 0,
            pages: 0,
            requests: RequestStats::default(),
            duration: Duration::ZERO,
            final_state: None,
            counts: Vec::new(),
            resume_at: None,
            error: None,
            prune: PruneOutcome::NotApplicable,
        }
    }

    fn skipped(&self, stream: &str, error: Arc<Error>) -> StreamReport {
        StreamReport {
            error: Some(error),
            ..self.empty_report(stream)
        }
    }

    /// Estimates what the sync will cost before it runs: per stream, the
    /// records and API calls the source expects and the least time its rate
    /// limits allow, and whether today's remaining daily quota covers it.
    pub async fn plan(&self) -> Result<SyncPlan> {
        let streams = match &self.streams {
            Some(s) => s.clone(),
            None => self
                .source
                .discover()
                .await?
                .streams
                .into_iter()
                .map(|s| s.name)
                .collect(),
        };
        let mut plans = Vec::with_capacity(streams.len());
        for stream in &streams {
            let schema = self.source.schema(stream).await?;
            let state = match self.sink.load_state(&self.tenant, stream).await? {
                Some(cp) if !cp.complete || !self.full_refresh => Some(cp.state),
                _ => None,
            };
            plans.push(self.source.plan(&schema, state.as_ref()).await?);
        }
        Ok(SyncPlan {
            tenant: self.tenant.clone(),
            requests: plans.iter().map(|p| p.requests).sum(),
            min_duration: plans.iter().map(|p| p.min_duration).sum(),
            streams: plans,
            daily: self.source.daily_usage(),
        })
    }

    async fn run_stream(&self, stream: &str) -> StreamReport {
        let start = Instant::now();
        let mut report = self.empty_report(stream);
        let counters = Arc::new(StreamCounters::default());
        let span = tracing::info_span!("stream", stream);
        let result = self
            .sync_stream(stream, &mut report, &counters)
            .instrument(span)
            .await;
        if let Err(e) = result {
            tracing::warn!(stream, error = %e, "stream failed");
            if let Error::RateLimited {
                daily: true,
                retry_after: Some(wait),
                ..
            } = &e
            {
                // Checked: the wait comes from a server's `Retry-After`.
                report.resume_at = chrono::Duration::from_std(*wait)
                    .ok()
                    .and_then(|d| Utc::now().checked_add_signed(d));
            }
            report.error = Some(Arc::new(e));
        }
        report.requests = counters.stats();
        report.duration = start.elapsed();
        report
    }

    /// The observer of one stream's HTTP events: counts them for the report
    /// and turns retries and long limiter waits into progress events.
    fn observer(&self, stream: &str, counters: Arc<StreamCounters>) -> crate::http::Observer {
        let (sync, stream) = (self.clone(), stream.to_owned());
        Arc::new(move |event: &HttpEvent| {
            counters.count(event);
            match *event {
                HttpEvent::Retry {
                    attempt,
                    status,
                    wait,
                    ..
                } => sync.emit(Progress::Retrying {
                    tenant: sync.tenant.clone(),
                    stream: stream.clone(),
                    attempt,
                    status,
                    wait,
                }),
                HttpEvent::LimiterWait { waited, .. } if waited >= Self::THROTTLE_EVENT_MIN => sync
                    .emit(Progress::Throttled {
                        tenant: sync.tenant.clone(),
                        stream: stream.clone(),
                        waited,
                    }),
                _ => {}
            }
        })
    }

    async fn sync_stream(
        &self,
        stream: &str,
        report: &mut StreamReport,
        counters: &Arc<StreamCounters>,
    ) -> Result<()> {
        let tenant = &self.tenant;
        let observer = self.observer(stream, counters.clone());
        let schema = crate::http::observe(observer.clone(), self.source.schema(stream)).await?;
        let previous = self.sink.load_state(tenant, stream).await?;
        // An unfinished run is resumed as it was (full or incremental); a
        // finished one is followed by an incremental run where the source
        // can read only changes, else by a full refresh.
        let (resume, state, mode) = match previous {
            Some(cp) if !cp.complete => {
                let mode = if cp.full_refresh {
                    ReadMode::ResumedFull
                } else {
                    ReadMode::Incremental
                };
                let state = Some(cp.state.clone());
                (Some(cp), state, mode)
            }
            Some(_) if self.full_refresh => (None, None, ReadMode::FullRefresh),
            Some(cp) if self.source.resumes_incrementally(&schema, &cp.state) => {
                (None, Some(cp.state), ReadMode::Incremental)
            }
            Some(_) => {
                tracing::info!(
                    tenant = %tenant,
                    stream,
                    "the source cannot read only this stream's changes: reading it in full"
                );
                (None, None, ReadMode::FullListing)
            }
            None => (None, None, ReadMode::FirstSync),
        };
        let full_refresh = mode.is_full();
        let (sync_id, started_at, base) = match &resume {
            Some(cp) => (cp.sync_id, cp.started_at, cp.records),
            None => (Uuid::new_v4(), Utc::now(), 0),
        };
        report.sync_id = Some(sync_id);
        report.resumed = resume.is_some();
        report.mode = mode;
        // Deletions withheld by the interrupted part of a resumed run stay
        // withheld (its completeness checks are not in this report).
        let earlier_withheld = resume
            .as_ref()
            .map(|cp| &cp.prune)
            .filter(|p| p.is_withheld())
            .cloned();
        self.sink
            .prepare(
                &StreamContext::new(tenant.clone(), schema.clone(), sync_id, resume)
                    .with_full_refresh(full_refresh),
            )
            .await?;
        let prune_of = |counts: &[CountCheck], quarantined: u64| -> Prune {
            if let Some(p) = &earlier_withheld {
                return p.clone();
            }
            let bad: Vec<String> = counts
                .iter()
                .filter(|c| !c.matches())
                .map(|c| {
                    format!(
                        "{}: the provider reported {}, {} were read",
                        c.scope, c.reported, c.loaded
                    )
                })
                .collect();
            if !bad.is_empty() {
                Prune::Withheld(format!(
                    "completeness checks did not match ({})",
                    bad.join("; ")
                ))
            } else if quarantined > 0 {
                // A quarantined record was read but not written: its row
                // would look deleted.
                Prune::Withheld(format!(
                    "{quarantined} records were quarantined, so their rows are kept"
                ))
            } else {
                Prune::UpTo(self.max_delete_share)
            }
        };
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
        let reader = crate::http::observe(observer, async {
            let mut pages = self.source.read(&schema, state);
            while let Some(page) = pages.next().await {
                let failed = page.is_err();
                if tx.send((Utc::now(), page)).await.is_err() || failed {
                    break;
                }
            }
            drop(tx);
        });
        let writer = async {
            // Owned here, so a failing writer closes the channel and the
            // reader stops instead of waiting on a full channel.
            let mut rx = rx;
            let mut since_commit = 0usize;
            let mut last_state: Option<StreamState> = None;
            while let Some((extracted_at, page)) = rx.recv().await {
                // Strict: an undecodable record fails the stream as a
                // source error does (the pages before it are committed).
                let page = match page {
                    Ok(page) if self.strict && !page.rejected.is_empty() => {
                        Err(self.strict_error(stream, &page.rejected[0]))
                    }
                    other => other,
                };
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        // The pages before the failure are good: commit them
                        // with their checkpoint, so the next run resumes
                        // after them (a daily quota stop is clean).
                        if since_commit > 0 {
                            if let Some(state) = last_state.clone() {
                                let cp = StreamCheckpoint {
                                    sync_id,
                                    started_at,
                                    state: state.clone(),
                                    complete: false,
                                    records: base + report.records,
                                    full_refresh,
                                    prune: prune_of(&report.counts, report.quarantined),
                                };
                                self.commit(stream, cp).await?;
                                report.final_state = Some(state);
                            }
                        }
                        return Err(e);
                    }
                };
                report.counts.extend(page.counts);
                if !page.rejected.is_empty() {
                    let n_rejected = page.rejected.len() as u64;
                    // Stored before the page's checkpoint can be committed,
                    // so a crash never loses one.
                    self.quarantine(stream, sync_id, &page.checkpoint, page.rejected)
                        .await?;
                    report.quarantined += n_rejected;
                }
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
                        prune: prune_of(&report.counts, report.quarantined),
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
                prune: prune_of(&report.counts, report.quarantined),
            };
            report.prune = self.commit(stream, cp).await?;
            if let PruneOutcome::Withheld { reason, kept } = &report.prune {
                tracing::warn!(
                    tenant = %tenant,
                    stream,
                    kept = ?kept,
                    reason = %reason,
                    "full refresh kept the rows it did not read"
                );
            }
            report.final_state = Some(state);
            Ok::<(), Error>(())
        };
        let ((), written) = futures::join!(reader, writer);
        if written.is_err() {
            // The run is over without its final commit: release what it
            // holds in the sink (its lease first of all) now.
            if let Err(abandon) = self.sink.abandon(tenant, stream).await {
                tracing::warn!(stream, error = %abandon, "sink could not abandon the run");
            }
        }
        written
    }

    /// The error of a strict sync on an undecodable record.
    fn strict_error(&self, stream: &str, r: &crate::source::Rejected) -> Error {
        Error::Decode {
            provider: self.source.provider(),
            what: format!("{stream} page"),
            path: r.path.clone(),
            message: r.error.clone(),
        }
    }

    /// Quarantines a page's undecodable records in the sink.
    async fn quarantine(
        &self,
        stream: &str,
        sync_id: Uuid,
        position: &StreamState,
        rejected: Vec<crate::source::Rejected>,
    ) -> Result<()> {
        let records: Vec<QuarantinedRecord> = rejected
            .into_iter()
            .map(|r| QuarantinedRecord::new(&self.tenant, stream, sync_id, position.clone(), r))
            .collect();
        for r in &records {
            tracing::warn!(
                tenant = %self.tenant,
                stream,
                path = %r.path,
                error = %r.error,
                "quarantined a record that cannot be decoded"
            );
        }
        self.sink.quarantine(&records).await
    }

    async fn commit(&self, stream: &str, checkpoint: StreamCheckpoint) -> Result<PruneOutcome> {
        let outcome = self
            .sink
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
                prune: checkpoint.prune,
            })
            .await?;
        self.emit(Progress::Committed {
            tenant: self.tenant.clone(),
            stream: stream.to_owned(),
            records: checkpoint.records,
        });
        Ok(outcome)
    }
}

/// Runs many tenants' syncs at once, at most `concurrency` at a time, and
/// returns their reports in the order given.
///
/// Each [`Sync`] brings its own source, so each tenant has its own token
/// provider and rate limiters: a busy account never spends another's quota.
/// A tenant's failure (a revoked token, repeated 5xx) is in its own report
/// and does not stop the others. Each tenant runs as its own task on the
/// Tokio runtime, so tenants spread over its worker threads (must be called
/// within a runtime); a tenant whose task panics is reported failed.
pub async fn run_tenants<I>(syncs: I, concurrency: usize) -> Vec<SyncReport>
where
    I: IntoIterator<Item = Sync>,
{
    let mut reports: Vec<(usize, SyncReport)> =
        futures::stream::iter(syncs.into_iter().enumerate())
            .map(|(i, sync)| async move {
                let tenant = sync.tenant.clone();
                let started_at = Utc::now();
                let report = match tokio::spawn(async move { sync.run().await }).await {
                    Ok(report) => report,
                    Err(e) => SyncReport {
                        tenant,
                        streams: Vec::new(),
                        started_at,
                        duration: Duration::ZERO,
                        error: Some(Arc::new(Error::Config(format!(
                            "the tenant's sync task failed: {e}"
                        )))),
                    },
                };
                (i, report)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// A stream's request counters, fed by its observer.
#[derive(Debug, Default)]
struct StreamCounters {
    requests: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    limiter_wait_ns: AtomicU64,
}

impl StreamCounters {
    fn count(&self, event: &HttpEvent) {
        let c = match event {
            HttpEvent::Request => &self.requests,
            HttpEvent::Retry { .. } => &self.retries,
            HttpEvent::RateLimited => &self.rate_limited,
            HttpEvent::LimiterWait { waited } => {
                let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
                self.limiter_wait_ns.fetch_add(ns, Ordering::Relaxed);
                return;
            }
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> RequestStats {
        RequestStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            limiter_wait: Duration::from_nanos(self.limiter_wait_ns.load(Ordering::Relaxed)),
        }
    }
}

/// What a sync will cost, from [`Sync::plan`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncPlan {
    /// Tenant.
    pub tenant: String,
    /// One estimate per stream, in order.
    pub streams: Vec<StreamPlan>,
    /// API calls across streams.
    pub requests: u64,
    /// The least time the rate limits allow, streams run one after another.
    pub min_duration: Duration,
    /// Today's use of the account's daily quota, where it has one.
    pub daily: Option<DailyUsage>,
}

impl SyncPlan {
    /// True unless the account's remaining daily quota is smaller than the
    /// calls the sync needs (the sync would then stop at a checkpoint when
    /// the quota runs out and resume after the reset).
    pub fn fits_daily_quota(&self) -> bool {
        self.daily.is_none_or(|d| d.remaining() >= self.requests)
    }
}

/// What [`verify`] found: the ids the provider holds against the sink's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Tenant.
    pub tenant: String,
    /// Stream.
    pub stream: String,
    /// Live records at the provider.
    pub source_count: u64,
    /// Live records in the sink.
    pub sink_count: u64,
    /// Ids at the provider the sink lacks, sorted.
    pub missing: Vec<String>,
    /// Ids in the sink the provider no longer has live, sorted.
    pub extra: Vec<String>,
}

impl VerifyReport {
    /// True when the sink holds exactly the provider's live records.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Compares the full id set of a tenant's stream at the provider with the
/// sink's live records, and lists what is missing or extra.
///
/// Run it after a sync (records changed at the provider since show up as
/// differences until the next sync reads them). It costs an id-only listing
/// of the stream ([`Source::read_ids`]) and one query of the sink.
pub async fn verify(
    source: &dyn Source,
    sink: &dyn Sink,
    tenant: &str,
    stream: &str,
) -> Result<VerifyReport> {
    let schema = source.schema(stream).await?;
    let at_source: BTreeSet<String> = source
        .read_ids(&schema)
        .try_fold(BTreeSet::new(), |mut all, page| async move {
            all.extend(page);
            Ok(all)
        })
        .await?;
    let in_sink: BTreeSet<String> = sink.live_ids(tenant, &schema).await?.into_iter().collect();
    let missing = at_source.difference(&in_sink).cloned().collect();
    let extra = in_sink.difference(&at_source).cloned().collect();
    Ok(VerifyReport {
        tenant: tenant.to_owned(),
        stream: stream.to_owned(),
        source_count: at_source.len() as u64,
        sink_count: in_sink.len() as u64,
        missing,
        extra,
    })
}

struct StreamCheckpoint {
    full_refresh: bool,
    prune: Prune,
    sync_id: Uuid,
    started_at: DateTime<Utc>,
    state: StreamState,
    complete: bool,
    records: u64,
}
