//! Issue 9, items 2 and 3, through the engine and the HubSpot fake into
//! Postgres: overlapping runs of one stream, and a full refresh whose
//! listing lost its `paging`.
//!
//! Postgres is reached at `DATABASE_URL` or
//! `postgres://postgres:postgres@127.0.0.1:5432/test`.

use std::sync::Arc;
use std::time::Duration;

use headwater::http::Limits;
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::sink::PruneOutcome;
use headwater::sinks::files::FilesSink;
use headwater::sinks::postgres::PostgresSink;
use headwater::sync::{verify, Progress, Sync};
use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};

const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";

fn url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

fn source(fake: &HubSpotFake) -> Arc<HubSpotSource> {
    let hs = HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(fake.uri())
        .limits(Limits::none())
        .build()
        .expect("client");
    Arc::new(HubSpotSource::new(hs))
}

async fn fake(contacts: usize) -> HubSpotFake {
    let mut config = FakeConfig::default();
    config.objects.clear();
    config
        .objects
        .insert("contacts".into(), ObjectSeed::new(contacts, 0));
    HubSpotFake::start(config).await
}

/// A Postgres schema of its own, dropped at the end.
struct Pg {
    schema: String,
}

impl Pg {
    fn new() -> Pg {
        Pg {
            schema: format!(
                "hw_overlap_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..10]
            ),
        }
    }

    async fn sink(&self) -> Arc<PostgresSink> {
        Arc::new(
            PostgresSink::builder()
                .url(url())
                .schema(&self.schema)
                .build()
                .await
                .unwrap_or_else(|e| {
                    panic!("cannot open the Postgres sink at DATABASE_URL or {DEFAULT_URL} ({e}): start Postgres with scripts/test-services.sh")
                }),
        )
    }

    async fn contacts(&self, tenant: &str) -> i64 {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let sql = format!(
            "SELECT count(*) FROM \"{}\".contacts WHERE _tenant_id = $1",
            self.schema
        );
        client
            .query_one(&sql, &[&tenant])
            .await
            .expect("count")
            .get(0)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &url(),
                "-qc",
                &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema),
            ])
            .env("PGOPTIONS", "--client-min-messages=warning")
            .status();
    }
}

/// The reported incident: a `--full-refresh` of 4,000 contacts whose
/// listing answered its first page without `paging` (a 200 that ends the
/// listing early). Before the fix, the refresh completed "successfully" and
/// deleted every contact it had not read; now every contact stays and the
/// report says why nothing was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refresh_whose_listing_lost_its_paging_deletes_nothing() {
    let fake = fake(4_000).await;
    let pg = Pg::new();
    let sink = pg.sink().await;
    let first = Sync::new(source(&fake), sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .run()
        .await;
    assert!(first.is_success(), "{first:?}");
    assert_eq!(pg.contacts("acme").await, 4_000);

    fake.drop_paging("contacts", 0);
    let refresh = Sync::new(source(&fake), sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .full_refresh(true)
        .run()
        .await;
    assert!(refresh.is_success(), "{refresh:?}");
    let report = &refresh.streams[0];
    assert!(
        report.records < 4_000,
        "the listing was cut short: {report:?}"
    );
    assert_eq!(pg.contacts("acme").await, 4_000, "every contact stays");
    match &report.prune {
        PruneOutcome::Withheld { reason, .. } => {
            assert!(!reason.is_empty());
            eprintln!("withheld: {reason}");
        }
        other => panic!("the report does not say deletions were withheld: {other:?}"),
    }

    // The listing is whole again: a refresh may delete (nothing to delete).
    fake.clear_faults();
    let again = Sync::new(source(&fake), sink)
        .tenant("acme")
        .streams(["contacts"])
        .full_refresh(true)
        .run()
        .await;
    assert!(again.is_success(), "{again:?}");
    assert!(
        matches!(again.streams[0].prune, PruneOutcome::Pruned { .. }),
        "{:?}",
        again.streams[0].prune
    );
    assert_eq!(pg.contacts("acme").await, 4_000);
}

/// The share limit alone (every completeness check matching): contacts
/// deleted at the provider between two refreshes are deleted when they are
/// few, kept (and reported) when they are more than the allowed share,
/// and deleted when the caller allows it explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refresh_deletes_no_more_than_the_allowed_share() {
    let fake = fake(1_000).await;
    let pg = Pg::new();
    let sink = pg.sink().await;
    let sync = |share: Option<f64>| {
        let s = Sync::new(source(&fake), sink.clone())
            .tenant("acme")
            .streams(["contacts"])
            .full_refresh(true);
        match share {
            Some(share) => s.max_delete_share(share),
            None => s,
        }
    };
    assert!(sync(None).run().await.is_success());
    assert_eq!(pg.contacts("acme").await, 1_000);
    // 1,500 contacts deleted at the provider since: 60% of the rows.
    fake_tenant_rows(&pg, "acme", "gone-a-", 1_000).await;
    let big = fake_tenant_rows(&pg, "acme", "gone-b-", 500).await;
    assert_eq!(big, 2_500);
    let r = sync(None).run().await;
    assert!(r.is_success(), "{r:?}");
    assert!(r.streams[0].prune.is_withheld(), "{:?}", r.streams[0].prune);
    assert_eq!(
        pg.contacts("acme").await,
        2_500,
        "60% is over the default share"
    );
    let r = sync(Some(1.0)).run().await;
    assert!(r.is_success(), "{r:?}");
    assert_eq!(
        r.streams[0].prune,
        PruneOutcome::Pruned { rows: Some(1_500) }
    );
    assert_eq!(pg.contacts("acme").await, 1_000);
}

/// Copies `n` rows of the tenant's contacts under new ids (rows the provider
/// no longer has); returns the tenant's rows after.
async fn fake_tenant_rows(pg: &Pg, tenant: &str, prefix: &str, n: i64) -> i64 {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let t = format!("\"{}\".contacts", pg.schema);
    client
        .execute(
            &format!("INSERT INTO {t} SELECT * FROM {t} WHERE _tenant_id = $1 LIMIT 0"),
            &[&tenant],
        )
        .await
        .expect("probe");
    // Same columns; new ids: prefix and a number.
    let cols: Vec<String> = client
        .query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 \
             AND table_name = 'contacts' ORDER BY ordinal_position",
            &[&pg.schema],
        )
        .await
        .expect("columns")
        .into_iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let select: Vec<String> = cols
        .iter()
        .map(|c| {
            if c == "id" {
                format!("'{prefix}' || row_number() OVER ()")
            } else {
                format!("\"{c}\"")
            }
        })
        .collect();
    let quoted: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
    client
        .execute(
            &format!(
                "INSERT INTO {t} ({}) SELECT {} FROM {t} WHERE _tenant_id = $1 AND id NOT LIKE 'gone-%' LIMIT {n}",
                quoted.join(", "),
                select.join(", ")
            ),
            &[&tenant],
        )
        .await
        .expect("insert");
    pg.contacts(tenant).await
}

/// Two runs of one tenant's stream, the second started while the first
/// runs (two processes: two sinks on one schema): the second is refused
/// with `Error::Busy` and writes nothing; the first completes; every
/// contact is there; a run after it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_stream_is_refused_while_the_first_runs_postgres() {
    let fake = fake(3_000).await;
    fake.set_latency(Duration::from_millis(30));
    let pg = Pg::new();
    let a_sink = pg.sink().await;
    let b_sink = pg.sink().await;
    overlapping_runs(&fake, a_sink, b_sink.clone()).await;
    assert_eq!(pg.contacts("acme").await, 3_000);
    let v = verify(source(&fake).as_ref(), b_sink.as_ref(), "acme", "contacts")
        .await
        .expect("verify");
    assert!(v.is_exact(), "{v:?}");
}

/// The same through the files sink (two sinks on one directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_stream_is_refused_while_the_first_runs_files() {
    let fake = fake(3_000).await;
    fake.set_latency(Duration::from_millis(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let a_sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let b_sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    overlapping_runs(&fake, a_sink, b_sink.clone()).await;
    let v = verify(source(&fake).as_ref(), b_sink.as_ref(), "acme", "contacts")
        .await
        .expect("verify");
    assert!(v.is_exact(), "{v:?}");
    assert_eq!(v.sink_count, 3_000);
}

async fn overlapping_runs(
    fake: &HubSpotFake,
    a_sink: Arc<dyn headwater::sink::Sink>,
    b_sink: Arc<dyn headwater::sink::Sink>,
) {
    // A first sync, so both later runs are full refreshes of existing rows.
    let first = Sync::new(source(fake), a_sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .run()
        .await;
    assert!(first.is_success(), "{first:?}");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let a = Sync::new(source(fake), a_sink)
        .tenant("acme")
        .streams(["contacts"])
        .full_refresh(true)
        .checkpoint_every(2)
        .on_progress(move |p| {
            if let Progress::Committed { .. } = p {
                if let Some(tx) = started_tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(());
                }
            }
        });
    let a = tokio::spawn(async move { a.run().await });
    started_rx.await.expect("the first run committed");
    // A second after the first started, a second run of the same stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = Sync::new(source(fake), b_sink.clone())
        .tenant("acme")
        .streams(["contacts"])
        .full_refresh(true)
        .run()
        .await;
    let a = a.await.expect("first run");
    assert!(a.is_success(), "{a:?}");
    assert_eq!(a.streams[0].records, 3_000);
    let err = b.streams[0]
        .error
        .as_deref()
        .expect("the second run is refused");
    assert!(err.is_busy(), "{err}");
    assert_eq!(b.streams[0].records, 0);
    // The first is done: a new run goes through.
    let c = Sync::new(source(fake), b_sink)
        .tenant("acme")
        .streams(["contacts"])
        .full_refresh(true)
        .run()
        .await;
    assert!(c.is_success(), "{c:?}");
}
