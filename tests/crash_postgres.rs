//! Crash safety for real: a sync of 50,000 HubSpot contacts into Postgres,
//! run as a separate process and killed with SIGKILL at random moments (at
//! least 20 times), restarted each time; afterwards the table must equal the
//! source exactly, no record lost and none duplicated.
//!
//! The child process is this test binary again, running the ignored test
//! `crash_child` with its settings in `HW_CRASH_CHILD`; it prints a line per
//! page written and per checkpoint committed, so the parent can kill it at
//! chosen points of the stream (before the first page, between pages,
//! between a write and its commit, during a commit).
//!
//! Postgres is reached at `DATABASE_URL` or
//! `postgres://postgres:postgres@127.0.0.1:5432/test`.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use headwater::http::Limits;
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::sink::Sink;
use headwater::sinks::postgres::PostgresSink;
use headwater::sync::{verify, Progress, Sync};
use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};

const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";
const CONTACTS: usize = 50_000;
const ARCHIVED: usize = 120;
const KILLS: usize = 24;
const TENANT: &str = "crash";

fn url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

fn source(base_url: &str) -> Arc<HubSpotSource> {
    let hs = HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(base_url)
        .limits(Limits::none())
        .build()
        .expect("client");
    Arc::new(HubSpotSource::new(hs))
}

async fn sink(schema: &str) -> PostgresSink {
    PostgresSink::builder()
        .url(url())
        .schema(schema)
        .build()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot open the Postgres sink at DATABASE_URL or {DEFAULT_URL} ({e}): start Postgres with scripts/test-services.sh")
        })
}

/// The child: syncs the contacts, printing its progress line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by sigkill_at_random_moments_then_resume_leaves_the_table_equal_to_the_source"]
async fn crash_child() {
    let Ok(settings) = std::env::var("HW_CRASH_CHILD") else {
        return;
    };
    let (base_url, schema) = settings.split_once(' ').expect("settings");
    let sink = Arc::new(sink(schema).await);
    let report = Sync::new(source(base_url), sink)
        .tenant(TENANT)
        .streams(["contacts"])
        .checkpoint_every(5)
        .on_progress(|p| {
            use std::io::Write;
            let line = match p {
                Progress::PageWritten { total, .. } => format!("page {total}"),
                Progress::Committed { records, .. } => format!("commit {records}"),
                _ => return,
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        })
        .run()
        .await;
    assert!(report.is_success(), "{report:#?}");
    println!("done {}", report.records());
}

struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .arg(url())
            .args([
                "-qc",
                &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0),
            ])
            .env("PGOPTIONS", "--client-min-messages=warning")
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_then_resume_leaves_the_table_equal_to_the_source() {
    let mut config = FakeConfig::default();
    config
        .objects
        .insert("contacts".into(), ObjectSeed::new(CONTACTS, ARCHIVED));
    let fake = HubSpotFake::start(config).await;
    let schema = Schema(format!(
        "hw_crash_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ));
    let settings = format!("{} {}", fake.uri(), schema.0);
    let exe = std::env::current_exe().expect("test binary");
    let seed: u64 = std::env::var("HW_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("kill schedule seed {seed} (HW_CRASH_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let spawn = || {
        tokio::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HW_CRASH_CHILD", &settings)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child")
    };

    let mut kills = 0;
    let mut last_committed = 0u64;
    while kills < KILLS {
        let mut child = spawn();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Where to kill: a fifth of the time after a random delay (startup,
        // prepare), else after a random number of lines (pages and commits),
        // plus up to 20 ms, which lands between a write and its commit or
        // inside a commit.
        let finished = if rng.gen_ratio(1, 5) {
            let delay = Duration::from_millis(rng.gen_range(0..400));
            let mut done = false;
            let _ = tokio::time::timeout(delay, async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("done") {
                        done = true;
                    }
                }
            })
            .await;
            done
        } else {
            let target = rng.gen_range(1..=30);
            let mut seen = 0;
            let mut done = false;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.strip_prefix("commit ") {
                    last_committed = n.parse().unwrap_or(last_committed);
                }
                if line.starts_with("done") {
                    done = true;
                    break;
                }
                seen += 1;
                if seen >= target {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
            done
        };
        assert!(
            !finished,
            "the sync finished before {KILLS} kills; make it longer"
        );
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.expect("wait");
        assert!(!status.success(), "the child was killed, not finished");
        kills += 1;
    }
    eprintln!("{kills} kills; the last run had committed {last_committed} records");

    // The last run, to the end.
    let child = spawn();
    let out = child.wait_with_output().await.expect("the last run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the last run failed:\n{stdout}");
    let resumed_with: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("done "))
        .and_then(|n| n.parse().ok())
        .expect("the last run's record count");
    assert!(
        last_committed > 0 && resumed_with < (CONTACTS + ARCHIVED) as u64,
        "the runs made progress and the last one resumed ({last_committed} committed, \
         the last run wrote {resumed_with})"
    );

    // The table equals the source: every id once, archived ones marked.
    let sink = sink(&schema.0).await;
    let table = sink
        .table_name("contacts")
        .await
        .expect("table")
        .expect("a contacts table");
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let rows = client
        .query(
            &format!(
                "SELECT id::text, _deleted, email FROM \"{}\".\"{}\" WHERE _tenant_id = $1",
                schema.0, table
            ),
            &[&TENANT],
        )
        .await
        .expect("query");
    assert_eq!(rows.len(), CONTACTS + ARCHIVED, "one row per record");
    let live: HashSet<String> = fake.ids("contacts", false).into_iter().collect();
    let archived: HashSet<String> = fake.ids("contacts", true).into_iter().collect();
    let mut seen = HashSet::new();
    for row in &rows {
        let id: String = row.get(0);
        let deleted: bool = row.get(1);
        assert!(seen.insert(id.clone()), "{id} twice");
        assert_eq!(deleted, archived.contains(&id), "{id}: deleted flag");
        assert!(
            live.contains(&id) || archived.contains(&id),
            "{id} is not at the source"
        );
    }
    // Values too, on a sample.
    for i in (0..CONTACTS).step_by(997) {
        let want = fake.record("contacts", i);
        let id = want["id"].as_str().expect("id");
        let row = rows
            .iter()
            .find(|r| r.get::<_, String>(0) == id)
            .expect("row");
        assert_eq!(
            row.get::<_, Option<String>>(2).as_deref(),
            want["properties"]["email"].as_str(),
            "{id}: email"
        );
    }
    let cp = sink
        .load_state(TENANT, "contacts")
        .await
        .expect("state")
        .expect("a checkpoint");
    assert!(cp.complete);
    assert_eq!(
        cp.records,
        (CONTACTS + ARCHIVED) as u64,
        "records counted once"
    );
    let v = verify(source(&fake.uri()).as_ref(), &sink, TENANT, "contacts")
        .await
        .expect("verify");
    assert!(v.is_exact(), "{v:#?}");
}
