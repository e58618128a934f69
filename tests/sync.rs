//! The sync engine into the local files sink, against the HubSpot fake:
//! checkpoints, resume after a crash with each record exactly once,
//! metadata on every record, re-sync without duplicates.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use headwater::http::{Limits, RetryConfig};
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::sink::{Batch, Checkpoint, PruneOutcome, Sink, StreamContext};
use headwater::sinks::files::FilesSink;
use headwater::sync::{Progress, ReadMode, Sync};
use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};
use headwater::{Error, Result};

fn source(fake: &HubSpotFake) -> Arc<HubSpotSource> {
    let hs = HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(fake.uri())
        .retry(
            RetryConfig::default()
                .with_backoff(Duration::from_millis(5), Duration::from_millis(20)),
        )
        .limits(Limits::default())
        .build()
        .expect("client");
    Arc::new(HubSpotSource::new(hs))
}

async fn fake(contacts: usize, archived: usize) -> HubSpotFake {
    let mut c = FakeConfig::default();
    c.objects.insert(
        "contacts".into(),
        ObjectSeed {
            count: contacts,
            archived,
        },
    );
    HubSpotFake::start(c).await
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

fn ids_once(rows: &[serde_json::Value]) -> HashSet<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in rows {
        *counts
            .entry(r["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated records: {dups:?}");
    counts.into_keys().collect()
}

fn truth(fake: &HubSpotFake, object_type: &str) -> HashSet<String> {
    let mut all: HashSet<String> = fake.ids(object_type, false).into_iter().collect();
    all.extend(fake.ids(object_type, true));
    all
}

#[tokio::test]
async fn a_full_sync_writes_every_record_with_its_metadata() {
    let fake = fake(730, 12).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let report = Sync::new(source(&fake), sink.clone())
        .tenant("acme")
        .streams(["contacts", "deals", "owners", "deal_pipelines"])
        .checkpoint_every(2)
        .on_progress(move |p| ev.lock().expect("lock").push(p.clone()))
        .run()
        .await;
    assert!(report.is_success(), "{report:#?}");
    let contacts = &report.streams[0];
    assert_eq!(contacts.records, 742);
    assert_eq!(contacts.pages, 9);
    assert_eq!(
        contacts.requests.requests,
        9 + 1 + 1,
        "9 list pages, the properties call and the completeness count"
    );
    let rows = lines(&sink.data_path("acme", "contacts"));
    assert_eq!(ids_once(&rows), truth(&fake, "contacts"));
    let sync_id = contacts.sync_id.expect("sync id").to_string();
    for r in &rows {
        assert_eq!(r["_tenant_id"], "acme");
        assert_eq!(r["_sync_id"], sync_id.as_str());
        assert!(
            chrono::DateTime::parse_from_rfc3339(r["_extracted_at"].as_str().expect("time"))
                .is_ok()
        );
        assert_eq!(r["_deleted"], r["archived"]);
    }
    let deals = lines(&sink.data_path("acme", "deals"));
    assert_eq!(ids_once(&deals), truth(&fake, "deals"));
    // State says complete; nothing partial is left behind.
    let cp = sink
        .load_state("acme", "contacts")
        .await
        .expect("state")
        .expect("some");
    assert!(cp.complete);
    assert_eq!(cp.records, 742);
    assert!(!dir.path().join("acme/contacts.jsonl.partial").exists());
    // Progress: started, pages, commits every 2 pages, finished.
    let events = events.lock().expect("lock");
    let commits = events
        .iter()
        .filter(|e| matches!(e, Progress::Committed { stream, .. } if stream == "contacts"))
        .count();
    assert_eq!(
        commits, 5,
        "4 intermediate commits (every 2 of 9 pages) and the final one"
    );
    assert!(matches!(
        events.first(),
        Some(Progress::StreamStarted { .. })
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Progress::StreamFinished(_)))
            .count(),
        4
    );
}

/// A sink that fails at the n-th call of `write` or `commit`: a crash.
#[derive(Debug)]
struct CrashingSink {
    inner: FilesSink,
    fail_write_at: Option<usize>,
    fail_commit_at: Option<usize>,
    writes: AtomicUsize,
    commits: AtomicUsize,
}

fn crash() -> Error {
    Error::Sink {
        sink: "crashing",
        message: "simulated crash".into(),
        source: None,
    }
}

#[async_trait]
impl Sink for CrashingSink {
    fn name(&self) -> &'static str {
        "crashing"
    }
    async fn prepare(&self, ctx: &StreamContext) -> Result<()> {
        self.inner.prepare(ctx).await
    }
    async fn write(&self, batch: Batch) -> Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        // Write first, then fail: records past the last commit hit the disk.
        self.inner.write(batch).await?;
        if Some(n) == self.fail_write_at {
            return Err(crash());
        }
        Ok(())
    }
    async fn commit(&self, checkpoint: &Checkpoint) -> Result<PruneOutcome> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(n) == self.fail_commit_at {
            return Err(crash());
        }
        self.inner.commit(checkpoint).await
    }
    async fn load_state(&self, tenant: &str, stream: &str) -> Result<Option<Checkpoint>> {
        self.inner.load_state(tenant, stream).await
    }
    async fn abandon(&self, tenant: &str, stream: &str) -> Result<()> {
        self.inner.abandon(tenant, stream).await
    }
}

async fn crash_then_resume(fail_write_at: Option<usize>, fail_commit_at: Option<usize>) {
    let fake = fake(1_234, 40).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let crashing = Arc::new(CrashingSink {
        inner: FilesSink::new(dir.path()).expect("sink"),
        fail_write_at,
        fail_commit_at,
        writes: AtomicUsize::new(0),
        commits: AtomicUsize::new(0),
    });
    let first = Sync::new(source(&fake), crashing)
        .tenant("t1")
        .streams(["contacts"])
        .checkpoint_every(3)
        .run()
        .await;
    assert!(!first.is_success(), "the first run must crash");
    // Uncommitted records are on disk in the partial file.
    assert!(dir.path().join("t1/contacts.jsonl.partial").exists());
    assert!(!dir.path().join("t1/contacts.jsonl").exists());

    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let second = Sync::new(source(&fake), sink.clone())
        .tenant("t1")
        .streams(["contacts"])
        .checkpoint_every(3)
        .run()
        .await;
    assert!(second.is_success(), "{second:#?}");
    let s = &second.streams[0];
    assert!(s.resumed);
    assert_eq!(
        s.sync_id, first.streams[0].sync_id,
        "the resumed run keeps its sync id"
    );
    assert!(
        s.records < 1_274,
        "the resume did not start over ({} records)",
        s.records
    );
    let rows = lines(&sink.data_path("t1", "contacts"));
    assert_eq!(rows.len(), 1_274);
    assert_eq!(ids_once(&rows), truth(&fake, "contacts"));
    let cp = sink
        .load_state("t1", "contacts")
        .await
        .expect("state")
        .expect("some");
    assert_eq!(cp.records, 1_274);
}

#[tokio::test]
async fn a_crash_after_page_k_then_resume_yields_each_record_exactly_once() {
    // Page 8 written but not committed (last commit after page 6).
    crash_then_resume(Some(8), None).await;
}

#[tokio::test]
async fn a_crash_between_write_and_commit_then_resume_yields_each_record_exactly_once() {
    // The 3rd commit fails: pages 7-9 were written, the checkpoint was not.
    crash_then_resume(None, Some(3)).await;
}

#[tokio::test]
async fn a_crash_while_reading_archived_records_then_resume_yields_each_record_exactly_once() {
    // 13 live pages, then the archived page: fail at the 14th write.
    crash_then_resume(Some(14), None).await;
}

#[tokio::test]
async fn running_twice_replaces_the_snapshot_without_duplicates() {
    let fake = fake(321, 5).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let mut sync_ids = Vec::new();
    for _ in 0..2 {
        let report = Sync::new(source(&fake), sink.clone())
            .tenant("acme")
            .streams(["contacts"])
            .run()
            .await;
        assert!(report.is_success());
        assert!(!report.streams[0].resumed);
        sync_ids.push(report.streams[0].sync_id);
        let rows = lines(&sink.data_path("acme", "contacts"));
        assert_eq!(ids_once(&rows), truth(&fake, "contacts"));
    }
    assert_ne!(sync_ids[0], sync_ids[1]);
}

#[tokio::test]
async fn a_failing_stream_does_not_stop_the_others() {
    let fake = fake(150, 0).await;
    fake.malformed_page("contacts", 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    // Strict: the malformed record fails its stream (else it is quarantined).
    let report = Sync::new(source(&fake), sink.clone())
        .tenant("acme")
        .streams(["contacts", "companies"])
        .strict(true)
        .run()
        .await;
    assert!(!report.is_success());
    assert!(matches!(
        report.streams[0].error.as_deref(),
        Some(Error::Decode { .. })
    ));
    assert!(report.streams[1].error.is_none());
    assert_eq!(
        ids_once(&lines(&sink.data_path("acme", "companies"))),
        truth(&fake, "companies")
    );
}

#[tokio::test]
async fn tenants_are_kept_apart_and_hostile_names_stay_inside_the_root() {
    let fake = fake(20, 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let sink = Arc::new(FilesSink::new(&root).expect("sink"));
    for tenant in ["../escape", "a/b", "plain"] {
        let r = Sync::new(source(&fake), sink.clone())
            .tenant(tenant)
            .streams(["contacts"])
            .run()
            .await;
        assert!(r.is_success());
        let path = sink.data_path(tenant, "contacts");
        assert!(path.starts_with(&root), "{}", path.display());
        for row in lines(&path) {
            assert_eq!(row["_tenant_id"], tenant);
        }
    }
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tenants_run_at_once_and_one_failure_stays_with_its_tenant() {
    let fakes = [fake(230, 2).await, fake(120, 0).await, fake(310, 1).await];
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let mut syncs = Vec::new();
    for (i, f) in fakes.iter().enumerate() {
        syncs.push(
            Sync::new(source(f), sink.clone())
                .tenant(format!("portal-{i}"))
                .streams(["contacts"]),
        );
    }
    // A fourth portal whose token was revoked.
    let revoked = HubSpot::builder()
        .private_app_token("pat-revoked".into())
        .base_url(fakes[0].uri())
        .build()
        .expect("client");
    syncs.push(
        Sync::new(Arc::new(HubSpotSource::new(revoked)), sink.clone())
            .tenant("portal-revoked")
            .streams(["contacts"]),
    );
    let reports = headwater::sync::run_tenants(syncs, 3).await;
    assert_eq!(reports.len(), 4);
    for (i, f) in fakes.iter().enumerate() {
        assert_eq!(reports[i].tenant, format!("portal-{i}"));
        assert!(reports[i].is_success(), "{:#?}", reports[i]);
        assert_eq!(
            ids_once(&lines(&sink.data_path(&format!("portal-{i}"), "contacts"))),
            truth(f, "contacts")
        );
    }
    assert!(!reports[3].is_success());
    let err = reports[3].streams[0].error.as_deref().expect("error");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
}

#[tokio::test]
async fn a_finished_stream_is_followed_by_an_incremental_run_that_merges_changes() {
    use headwater::source::{Source, StreamState};
    let fake = fake(600, 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let src = source(&fake);
    let first = Sync::new(src.clone(), sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .run()
        .await;
    assert!(first.is_success(), "{first:#?}");
    assert_eq!(first.streams[0].mode, ReadMode::FirstSync);
    let cp = sink
        .load_state("acme", "contacts")
        .await
        .expect("state")
        .expect("some");
    let schema = src.schema("contacts").await.expect("schema");
    assert!(
        src.resumes_incrementally(&schema, &cp.state),
        "{:?}",
        cp.state
    );

    // Pretend the last sync ended at a point in the fake's history: the next
    // run must read exactly the records modified since, through search.
    let all: Vec<serde_json::Value> = (0..600).map(|i| fake.record("contacts", i)).collect();
    let mut times: Vec<i64> = all
        .iter()
        .map(|r| {
            chrono::DateTime::parse_from_rfc3339(r["updatedAt"].as_str().expect("updatedAt"))
                .expect("time")
                .timestamp_millis()
        })
        .collect();
    times.sort_unstable();
    let cursor = times[450];
    let want: HashSet<String> = all
        .iter()
        .filter(|r| {
            chrono::DateTime::parse_from_rfc3339(r["updatedAt"].as_str().expect("t"))
                .expect("t")
                .timestamp_millis()
                >= cursor
        })
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    let state = StreamState(serde_json::json!({"phase": "done", "cursor_ms": cursor}));
    let pages: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(src.read(&schema, Some(state.clone())))
            .await
            .expect("read");
    let got: Vec<String> = pages
        .iter()
        .flat_map(|p| p.records.iter().map(|r| r.id.clone()))
        .collect();
    let got_set: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "no record twice");
    assert_eq!(
        got_set, want,
        "exactly the records modified since the cursor"
    );
    fake.reset_stats();

    // Through the engine: the snapshot keeps every record once.
    let mut cp2 = cp.clone();
    cp2.state = state;
    std::fs::write(
        dir.path().join("acme/contacts.state.json"),
        serde_json::to_vec(&serde_json::json!({"checkpoint": cp2, "partial_len": 0}))
            .expect("json"),
    )
    .expect("state");
    let second = Sync::new(src.clone(), sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .run()
        .await;
    assert!(second.is_success(), "{second:#?}");
    assert!(second.streams[0].is_incremental());
    assert_eq!(second.streams[0].records as usize, want.len());
    assert!(
        fake.stats().per_path.keys().any(|k| k.contains("/search")),
        "{:?}",
        fake.stats().per_path
    );
    let rows = lines(&sink.data_path("acme", "contacts"));
    assert_eq!(ids_once(&rows), truth(&fake, "contacts"));
    let new_sync = second.streams[0].sync_id.expect("id").to_string();
    let updated = rows
        .iter()
        .filter(|r| r["_sync_id"] == new_sync.as_str())
        .count();
    assert_eq!(
        updated,
        want.len(),
        "the changed records carry the new sync id"
    );
    let cp3 = sink
        .load_state("acme", "contacts")
        .await
        .expect("state")
        .expect("some");
    assert!(cp3.complete && !cp3.full_refresh);
}

#[tokio::test]
async fn the_report_says_how_each_stream_was_read_and_why_a_later_run_read_in_full() {
    let fake = fake(250, 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let src = source(&fake);
    let run = |full: bool| {
        let sync = Sync::new(src.clone(), sink.clone())
            .tenant("acme")
            .streams(["contacts", "owners"])
            .full_refresh(full);
        async move { sync.run().await }
    };
    let modes = |r: &headwater::sync::SyncReport| -> Vec<ReadMode> {
        assert!(r.is_success(), "{r:#?}");
        r.streams.iter().map(|s| s.mode).collect()
    };
    let first = run(false).await;
    assert_eq!(modes(&first), [ReadMode::FirstSync, ReadMode::FirstSync]);
    // Owners have no change filter in HubSpot's API: the second run lists
    // them in full, and the report says that it fell back.
    let second = run(false).await;
    assert_eq!(
        modes(&second),
        [ReadMode::Incremental, ReadMode::FullListing]
    );
    assert_eq!(second.streams[1].records, first.streams[1].records);
    let third = run(true).await;
    assert_eq!(
        modes(&third),
        [ReadMode::FullRefresh, ReadMode::FullRefresh]
    );
    assert_eq!(third.streams[0].records, 250);
    assert!(third.streams.iter().all(|s| s.mode.is_full()));
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lagged_source(fake: &HubSpotFake, lag: Duration) -> Arc<HubSpotSource> {
    let hs = HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(fake.uri())
        .retry(
            RetryConfig::default()
                .with_backoff(Duration::from_millis(5), Duration::from_millis(20)),
        )
        .limits(Limits::default())
        .build()
        .expect("client");
    Arc::new(HubSpotSource::new(hs).with_settle_lag(lag))
}

fn rows_by_id(path: &Path) -> HashMap<String, serde_json::Value> {
    let rows = lines(path);
    ids_once(&rows);
    rows.into_iter()
        .map(|r| (r["id"].as_str().expect("id").to_owned(), r))
        .collect()
}

#[tokio::test]
async fn incremental_runs_capture_updates_deletes_and_merges_and_respect_the_settle_lag() {
    let fake = fake(400, 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let lag = Duration::from_secs(5);
    let run = |src: Arc<HubSpotSource>| {
        let sink = sink.clone();
        async move {
            Sync::new(src, sink)
                .tenant("acme")
                .streams(["contacts"])
                .run()
                .await
        }
    };
    let t0 = now_ms();
    let first = run(lagged_source(&fake, lag)).await;
    assert!(first.is_success() && !first.streams[0].is_incremental());

    // Changes stamped 3 s before the first run began: inside its settle lag,
    // so the first run's cursor (its start less 5 s) is before them.
    let t = t0 - 3_000;
    fake.touch("contacts", 3, t);
    fake.touch("contacts", 250, t);
    fake.archive("contacts", 10, t);
    fake.merge("contacts", 20, 21, t);
    let added = fake.add("contacts", 3, t);
    // Wait until they are older than the lag; then one update so recent
    // that the search index may not have it yet.
    tokio::time::sleep(Duration::from_millis((t0 + 2_500 - now_ms()).max(0) as u64)).await;
    fake.touch("contacts", 99, now_ms());

    let second = run(lagged_source(&fake, lag)).await;
    assert!(second.is_success(), "{second:#?}");
    assert!(second.streams[0].is_incremental());
    let rows = rows_by_id(&sink.data_path("acme", "contacts"));
    let version = |i: usize| fake.record("contacts", i)["properties"]["firstname"].clone();
    assert_eq!(rows["1003"]["firstname"], version(3), "update read");
    assert_eq!(rows["1250"]["firstname"], version(250));
    assert_eq!(
        rows["1010"]["_deleted"], true,
        "archive captured as a delete"
    );
    assert_eq!(
        rows["1020"]["_deleted"], true,
        "merged record marked deleted"
    );
    assert_eq!(rows["1020"]["mergedInto"], "1021");
    for i in added.clone() {
        assert!(rows.contains_key(&(1000 + i).to_string()), "new record {i}");
    }
    assert_ne!(
        rows["1099"]["firstname"],
        version(99),
        "inside the settle lag: not read yet"
    );

    // The next run, once the lag has passed, reads it; nothing else changes.
    let third = run(lagged_source(&fake, Duration::ZERO)).await;
    assert!(third.is_success());
    let rows = rows_by_id(&sink.data_path("acme", "contacts"));
    assert_eq!(rows["1099"]["firstname"], version(99));
    assert_eq!(
        rows.len(),
        403,
        "400 + 3 new, each once (deleted ones kept as deleted)"
    );
    let live: HashSet<String> = rows
        .iter()
        .filter(|(_, r)| r["_deleted"] == false)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        live,
        fake.ids("contacts", false)
            .into_iter()
            .collect::<HashSet<_>>()
    );
}

#[tokio::test]
async fn more_than_ten_thousand_changes_on_one_timestamp_are_read_once_each() {
    let fake = fake(10_600, 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let first = Sync::new(lagged_source(&fake, Duration::ZERO), sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .checkpoint_every(20)
        .run()
        .await;
    assert!(first.is_success());
    // A bulk import touches 10,500 records at one millisecond.
    // (Stamped after the first run began, so after its cursor.)
    fake.touch_many("contacts", 50..10_550, now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = Sync::new(lagged_source(&fake, Duration::ZERO), sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .checkpoint_every(20)
        .run()
        .await;
    assert!(second.is_success(), "{second:#?}");
    assert!(second.streams[0].is_incremental());
    assert_eq!(
        second.streams[0].records, 10_500,
        "each changed record once, no loop"
    );
    let rows = rows_by_id(&sink.data_path("acme", "contacts"));
    assert_eq!(rows.len(), 10_600);
    assert_eq!(
        rows["1050"]["firstname"],
        fake.record("contacts", 50)["properties"]["firstname"]
    );
}

// ---------------------------------------------------------------------------
// Failures mid-stream, daily quotas, progress events, concurrency, revoked
// grants, verify.
// ---------------------------------------------------------------------------

fn source_with_limits(fake: &HubSpotFake, limits: Limits) -> Arc<HubSpotSource> {
    let hs = HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(fake.uri())
        .retry(
            RetryConfig::default()
                .with_backoff(Duration::from_millis(5), Duration::from_millis(20)),
        )
        .limits(limits)
        .build()
        .expect("client");
    Arc::new(HubSpotSource::new(hs))
}

#[tokio::test]
async fn a_source_failure_commits_the_pages_read_before_it_and_the_next_run_resumes_after_them() {
    let fake = fake(1_050, 0).await;
    fake.malformed_page("contacts", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let run = || {
        Sync::new(source(&fake), sink.clone())
            .tenant("acme")
            .streams(["contacts"])
            .checkpoint_every(100)
            .strict(true)
    };
    let first = run().run().await;
    assert!(matches!(
        first.streams[0].error.as_deref(),
        Some(Error::Decode { .. })
    ));
    // Pages 0-4 were committed although no checkpoint was due.
    let cp = sink
        .load_state("acme", "contacts")
        .await
        .expect("state")
        .expect("a checkpoint");
    assert!(!cp.complete);
    assert_eq!(cp.records, 500);
    fake.clear_faults();
    let second = run().run().await;
    assert!(second.is_success(), "{second:#?}");
    assert!(second.streams[0].resumed);
    assert_eq!(
        second.streams[0].records, 550,
        "only the pages not committed"
    );
    let rows = lines(&sink.data_path("acme", "contacts"));
    assert_eq!(ids_once(&rows), truth(&fake, "contacts"));
}

#[tokio::test]
async fn a_spent_daily_quota_stops_at_a_checkpoint_says_when_to_resume_and_resumes_exactly() {
    use headwater::http::DailyLimit;
    let fake = fake(1_050, 10).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    // The properties call, the completeness count and four pages, then the
    // quota is spent.
    let limited = source_with_limits(&fake, Limits::default().with_daily(DailyLimit::utc(6)));
    let first = Sync::new(limited.clone(), sink.clone())
        .tenant("acme")
        .streams(["contacts", "companies"])
        .checkpoint_every(100)
        .run()
        .await;
    let s = &first.streams[0];
    assert!(
        matches!(
            s.error.as_deref(),
            Some(Error::RateLimited { daily: true, .. })
        ),
        "{s:#?}"
    );
    assert_eq!(s.records, 400);
    assert_eq!(s.requests.requests, 6);
    let resume_at = first.resume_at().expect("when to resume");
    let tomorrow = chrono::Utc::now().date_naive().succ_opt().expect("date");
    assert_eq!(resume_at.date_naive(), tomorrow, "at the next 00:00 UTC");
    // The quota is spent for the other stream too: no request is made.
    assert!(matches!(
        first.streams[1].error.as_deref(),
        Some(Error::RateLimited { daily: true, .. })
    ));
    assert_eq!(first.streams[1].requests.requests, 0);
    // "Tomorrow": a fresh quota. The run resumes after the 500 committed.
    let second = Sync::new(source(&fake), sink.clone())
        .tenant("acme")
        .streams(["contacts", "companies"])
        .run()
        .await;
    assert!(second.is_success(), "{second:#?}");
    assert!(second.streams[0].resumed);
    assert_eq!(second.streams[0].records, 660);
    assert_eq!(
        ids_once(&lines(&sink.data_path("acme", "contacts"))),
        truth(&fake, "contacts")
    );
}

#[tokio::test]
async fn progress_reports_retries_and_limiter_waits_and_reports_count_them() {
    use headwater::http::RateLimit;
    let fake = fake(250, 5).await;
    fake.fail_next(2, 503);
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    // 5 per second: each request waits about 250 ms on the limiter.
    let limited = source_with_limits(&fake, Limits::standard(RateLimit::per_second(5)));
    let report = Sync::new(limited, sink)
        .tenant("acme")
        .streams(["contacts"])
        .on_progress(move |p| ev.lock().expect("lock").push(p.clone()))
        .run()
        .await;
    assert!(report.is_success(), "{report:#?}");
    let s = &report.streams[0];
    assert_eq!(s.requests.retries, 2);
    // The properties call, the completeness count, 3 pages of 100 live
    // contacts, 1 archived page, and the 2 retried attempts.
    assert_eq!(s.requests.requests, 8);
    assert_eq!(fake.stats().requests, 8);
    let events = events.lock().expect("lock");
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Progress::Retrying {
                stream,
                status,
                attempt,
                ..
            } => Some((stream.clone(), *status, *attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![
            ("contacts".to_owned(), Some(503), 1),
            ("contacts".to_owned(), Some(503), 2)
        ]
    );
    let throttled: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Progress::Throttled { waited, .. } => Some(*waited),
            _ => None,
        })
        .collect();
    assert!(
        throttled.len() >= 4,
        "most of 8 requests wait ~200 ms: {throttled:?}"
    );
    assert!(throttled.iter().all(|w| *w >= Sync::THROTTLE_EVENT_MIN));
    assert!(s.requests.limiter_wait >= throttled.iter().sum::<Duration>());
}

#[tokio::test]
async fn streams_run_at_once_and_each_report_counts_its_own_requests() {
    let fake = fake(450, 5).await;
    fake.set_latency(Duration::from_millis(20));
    let streams = ["contacts", "companies", "deals", "tickets"];
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let report = Sync::new(source(&fake), sink.clone())
        .tenant("acme")
        .streams(streams)
        .stream_concurrency(4)
        .on_progress(move |p| ev.lock().expect("lock").push(p.clone()))
        .run()
        .await;
    assert!(report.is_success(), "{report:#?}");
    // Reports come in the order asked, whatever order the streams ended in.
    let names: Vec<_> = report.streams.iter().map(|s| s.stream.as_str()).collect();
    assert_eq!(names, streams);
    // All four started before any finished: they ran at once.
    let events = events.lock().expect("lock").clone();
    let first_finish = events
        .iter()
        .position(|e| matches!(e, Progress::StreamFinished(_)))
        .expect("a finish");
    let started_before = events[..first_finish]
        .iter()
        .filter(|e| matches!(e, Progress::StreamStarted { .. }))
        .count();
    assert_eq!(started_before, 4);
    // Each request is counted once, by the stream that made it: the same
    // counts as when the streams run one after another.
    let total: u64 = report.streams.iter().map(|s| s.requests.requests).sum();
    assert_eq!(total, fake.stats().requests);
    fake.reset_stats();
    let dir2 = tempfile::tempdir().expect("tempdir");
    let sequential = Sync::new(
        source(&fake),
        Arc::new(FilesSink::new(dir2.path()).expect("sink")),
    )
    .tenant("acme")
    .streams(streams)
    .run()
    .await;
    for (a, b) in report.streams.iter().zip(&sequential.streams) {
        assert_eq!(a.requests.requests, b.requests.requests, "{}", a.stream);
        assert_eq!(a.records, b.records, "{}", a.stream);
        assert_eq!(
            ids_once(&lines(&sink.data_path("acme", &a.stream))),
            truth(&fake, &a.stream)
        );
    }
}

#[tokio::test]
async fn a_refused_refresh_token_marks_the_connection_and_stops_only_that_tenant() {
    use headwater::auth::{
        MemoryTokenStore, OAuthClient, OAuthConfig, TokenProvider, TokenSet, TokenStore,
    };
    use headwater::sync::run_tenants;
    let fake = fake(120, 0).await;
    let oauth = OAuthClient::new(
        OAuthConfig::hubspot(
            fake.config().client_id.clone(),
            fake.config().client_secret.clone().into(),
        )
        .with_token_url(&format!("{}/oauth/v1/token", fake.uri()))
        .expect("url"),
    )
    .expect("oauth");
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let (_, good_refresh) = fake.mint_tokens();
    let mut syncs = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    for (tenant, refresh) in [
        ("revoked", "spent-refresh-token".to_owned()),
        ("fine", good_refresh),
    ] {
        let key = format!("hubspot/{tenant}");
        let provider = TokenProvider::new(
            oauth.clone(),
            store.clone(),
            &key,
            Some(TokenSet::from_refresh_token(refresh.into())),
        )
        .await
        .expect("provider");
        let hs = HubSpot::builder()
            .oauth(provider)
            .base_url(fake.uri())
            .limits(Limits::default())
            .build()
            .expect("client");
        syncs.push(
            Sync::new(Arc::new(HubSpotSource::new(hs)), sink.clone())
                .tenant(tenant)
                .streams(["contacts", "companies", "deals"]),
        );
    }
    let token_requests_before = fake.stats().token_requests;
    let reports = run_tenants(syncs, 2).await;
    let (revoked, fine) = (&reports[0], &reports[1]);
    assert!(fine.is_success(), "{fine:#?}");
    assert!(!fine.needs_reauthorization());
    assert!(revoked.needs_reauthorization(), "{revoked:#?}");
    // The grant was tried once; the other streams were not started.
    assert_eq!(
        fake.stats().token_requests - token_requests_before,
        2,
        "one refresh per tenant"
    );
    assert!(revoked.streams.iter().all(|s| s.needs_reauthorization()));
    assert!(revoked.streams.iter().all(|s| s.requests.requests == 0));
    // The connection is marked in the store, and a new provider built from
    // it fails at once, without spending a request.
    let stored = store
        .load("hubspot/revoked")
        .await
        .expect("load")
        .expect("some");
    assert!(stored.needs_reauthorization());
    let again = TokenProvider::new(oauth, store.clone(), "hubspot/revoked", None)
        .await
        .expect("provider");
    let before = fake.stats().token_requests;
    let err = headwater::auth::AccessTokenSource::access_token(&again)
        .await
        .expect_err("marked");
    assert!(err.needs_reauthorization(), "{err}");
    assert_eq!(fake.stats().token_requests, before);
    assert!(!store
        .load("hubspot/fine")
        .await
        .expect("load")
        .expect("some")
        .needs_reauthorization());
}

#[tokio::test]
async fn verify_lists_what_the_sink_is_missing_and_what_it_holds_extra() {
    use headwater::sync::verify;
    let fake = fake(260, 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let src = source(&fake);
    let report = Sync::new(src.clone(), sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .run()
        .await;
    assert!(report.is_success());
    let v = verify(src.as_ref(), sink.as_ref(), "acme", "contacts")
        .await
        .expect("verify");
    assert!(v.is_exact(), "{v:#?}");
    assert_eq!((v.source_count, v.sink_count), (260, 260));
    // Changes at the provider the sink has not seen yet.
    let added = fake.add("contacts", 2, now_ms());
    fake.archive("contacts", 7, now_ms());
    let v = verify(src.as_ref(), sink.as_ref(), "acme", "contacts")
        .await
        .expect("verify");
    let mut want_missing: Vec<String> = added
        .map(|i| {
            fake.record("contacts", i)["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    want_missing.sort();
    assert_eq!(v.missing, want_missing);
    assert_eq!(
        v.extra,
        vec![fake.record("contacts", 7)["id"]
            .as_str()
            .expect("id")
            .to_owned()]
    );
}
