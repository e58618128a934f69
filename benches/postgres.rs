//! Rows per second into the Postgres sink, against `psql \copy` of the same
//! rows as a file, in one run.
//!
//! ```sh
//! bash scripts/test-services.sh      # Postgres on 127.0.0.1:5432
//! cargo bench --features postgres --bench postgres
//! ```
//!
//! `DATABASE_URL` picks the server (default
//! `postgres://postgres:postgres@127.0.0.1:5432/test`), `HW_BENCH_ROWS` the
//! number of contacts (default 100,000), `HW_BENCH_RUNS` the repetitions
//! (default 3; medians are reported). `HW_BENCH_KEEP=1` keeps the last
//! run's schema and text file for profiling (their names are printed). Needs
//! `psql` on the PATH.
//!
//! Each repetition, in fresh Postgres schemas:
//! 1. **first sync**: 100,000 HubSpot-like contacts (5 system fields and 25
//!    properties, typed as the HubSpot source types them) through the sink
//!    as the engine drives it: pages of 100, a commit every 10 pages, a
//!    final commit that completes the full refresh. Into an empty table, so
//!    each commit's rows are copied straight into it (COPY BINARY, state,
//!    COMMIT).
//! 2. **first sync, upsert path**: the same into another empty table with
//!    `optimistic_copy(false)`: each commit is COPY BINARY into the staging
//!    table, `INSERT … ON CONFLICT DO UPDATE`, state, COMMIT.
//! 3. **second sync**: the contacts of 1. again in a new full refresh: every
//!    row an update through the staging table and `ON CONFLICT`, then the
//!    stale-row delete.
//! 4. **`psql \copy`**: the table's rows exported to a text file (not
//!    timed), then `\copy` of that file into a plain table with the same
//!    columns and no key or index (timed: the whole `psql` process), twice:
//!    with the server's default compression (pglz), and with the sink's
//!    (`_record` lz4, where the server has it).
//!
//! Ratios are the sink's rate over the faster `\copy`; the issue's goal is
//! at least 70 %.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use headwater::schema::StreamSchema;
use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
use headwater::sinks::postgres::PostgresSink;
use headwater::source::{Record, StreamState};
use serde_json::json;
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;
use common::*;

const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";
const COMMIT_EVERY: usize = 10;

fn checkpoint(sync_id: Uuid, page: usize, records: u64, complete: bool) -> Checkpoint {
    Checkpoint::new(
        "bench",
        "contacts",
        sync_id,
        StreamState::new(json!({ "page": page })),
        complete,
        records,
        Utc::now(),
        true,
    )
}

struct SinkRun {
    total: Duration,
    writes: Duration,
    commits: Duration,
}

/// One full-refresh sync of `pages`, driven as the engine drives a sink.
async fn sync(sink: &PostgresSink, schema: &StreamSchema, pages: Vec<Vec<Record>>) -> SinkRun {
    let sync_id = Uuid::new_v4();
    let start = Instant::now();
    sink.prepare(&StreamContext::new("bench", schema.clone(), sync_id, None))
        .await
        .expect("prepare");
    let (mut writes, mut commits) = (Duration::ZERO, Duration::ZERO);
    let mut records = 0u64;
    let n = pages.len();
    for (p, page) in pages.into_iter().enumerate() {
        records += page.len() as u64;
        let t = Instant::now();
        sink.write(Batch::new("bench", "contacts", sync_id, Utc::now(), page))
            .await
            .expect("write");
        writes += t.elapsed();
        if (p + 1) % COMMIT_EVERY == 0 && p + 1 < n {
            let t = Instant::now();
            sink.commit(&checkpoint(sync_id, p + 1, records, false))
                .await
                .expect("commit");
            commits += t.elapsed();
        }
    }
    let t = Instant::now();
    sink.commit(&checkpoint(sync_id, n, records, true))
        .await
        .expect("final commit");
    commits += t.elapsed();
    SinkRun {
        total: start.elapsed(),
        writes,
        commits,
    }
}

fn psql(url: &str, command: &str) -> Duration {
    let start = Instant::now();
    let out = Command::new("psql")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command])
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql (is it installed?): {e}"));
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "psql -c {command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let rows = env_usize("HW_BENCH_ROWS", 100_000);
    let runs = env_usize("HW_BENCH_RUNS", 3).max(1);
    let keep = std::env::var("HW_BENCH_KEEP").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let schema = schema();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("contacts.tsv");
    let file = file.to_str().expect("utf-8 path").replace('\'', "''");
    let open = |ns: &str, optimistic: bool| {
        rt.block_on(
            PostgresSink::builder()
                .url(&url)
                .schema(ns)
                .optimistic_copy(optimistic)
                .build(),
        )
        .unwrap_or_else(|e| {
            panic!("{e}: start Postgres with scripts/test-services.sh or set DATABASE_URL")
        })
    };
    println!(
        "postgres sink vs psql \\copy: {rows} contacts ({} fields), pages of {PAGE}, a commit every {COMMIT_EVERY} pages, {runs} runs",
        schema.fields.len()
    );
    println!(
        "{:>3}  {:>8} {:>7} {:>6}  {:>8}  {:>8}  {:>8} {:>8}  {:>5} {:>6} {:>5}",
        "run",
        "1st r/s",
        "write s",
        "commit",
        "upsert",
        "2nd r/s",
        "\\copy",
        "\\copy4",
        "1st",
        "upsert",
        "2nd"
    );
    let mut results: Vec<[f64; 5]> = Vec::new();
    for run in 1..=runs {
        let ns = format!("hw_bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let sink = open(&ns, true);
        let a = rt.block_on(sync(&sink, &schema, pages(rows)));
        let ns_upsert = format!("{ns}_upsert");
        let upsert_sink = open(&ns_upsert, false);
        let u = rt.block_on(sync(&upsert_sink, &schema, pages(rows)));
        psql(&url, &format!("DROP SCHEMA \"{ns_upsert}\" CASCADE"));
        let b = rt.block_on(sync(&sink, &schema, pages(rows)));
        let table = format!("\"{ns}\".contacts");
        psql(&url, &format!("\\copy {table} TO '{file}'"));
        let plain = format!("\"{ns}\".plain");
        psql(&url, &format!("CREATE TABLE {plain} (LIKE {table})"));
        let c = psql(&url, &format!("\\copy {plain} FROM '{file}'"));
        let plain_lz4 = format!("\"{ns}\".plain_lz4");
        psql(
            &url,
            &format!("CREATE TABLE {plain_lz4} (LIKE {table} INCLUDING COMPRESSION)"),
        );
        let cz = psql(&url, &format!("\\copy {plain_lz4} FROM '{file}'"));
        if keep && run == runs {
            println!("kept schema {ns} and file {file}");
        } else {
            psql(&url, &format!("DROP SCHEMA \"{ns}\" CASCADE"));
        }
        let rate = |d: Duration| rows as f64 / d.as_secs_f64();
        let r = [
            rate(a.total),
            rate(u.total),
            rate(b.total),
            rate(c),
            rate(cz),
        ];
        let best = r[3].max(r[4]);
        println!(
            "{run:>3}  {:>8.0} {:>7.2} {:>6.2}  {:>8.0}  {:>8.0}  {:>8.0} {:>8.0}  {:>4.0}% {:>5.0}% {:>4.0}%",
            r[0],
            a.writes.as_secs_f64(),
            a.commits.as_secs_f64(),
            r[1],
            r[2],
            r[3],
            r[4],
            100.0 * r[0] / best,
            100.0 * r[1] / best,
            100.0 * r[2] / best
        );
        results.push(r);
    }
    if keep {
        let _ = dir.keep();
    }
    let m: Vec<f64> = (0..5)
        .map(|i| median(results.iter().map(|r| r[i]).collect()))
        .collect();
    let best = m[3].max(m[4]);
    println!("medians, rows/s (share of the faster psql \\copy):");
    println!(
        "  first sync (direct COPY)       {:>7.0} ({:.0}%)",
        m[0],
        100.0 * m[0] / best
    );
    println!(
        "  first sync (staging, upsert)   {:>7.0} ({:.0}%)",
        m[1],
        100.0 * m[1] / best
    );
    println!(
        "  second sync (all updates)      {:>7.0} ({:.0}%)",
        m[2],
        100.0 * m[2] / best
    );
    println!("  psql \\copy, pglz               {:>7.0}", m[3]);
    println!("  psql \\copy, _record lz4        {:>7.0}", m[4]);
}
