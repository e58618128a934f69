//! Rows per second into the object store sink, on local disk and on S3
//! (moto on loopback), next to the plain JSON Lines files sink.
//!
//! ```sh
//! bash scripts/test-services.sh      # S3 (moto) on 127.0.0.1:5000
//! cargo bench --features object-store --bench object_store
//! ```
//!
//! `HW_BENCH_ROWS` sets the number of contacts (default 100,000),
//! `HW_BENCH_RUNS` the repetitions (default 3; medians are reported),
//! `HW_BENCH_BACKENDS` which stores (default `local,s3`).
//!
//! Each run is one full-refresh sync of HubSpot-like contacts (5 system
//! fields and 25 properties, typed as the HubSpot source types them) driven
//! as the engine drives a sink: pages of 100, a commit every 10 pages, a
//! final commit. `write s` is the time in `write` (JSON Lines into gzip,
//! values into Arrow columns), `commit s` the time in `commit` (finishing
//! gzip and Parquet, uploads, manifest, state). Variants: both layers at
//! gzip level 6 (the default), at level 1, and the raw layer alone; the
//! files sink (`FilesSink`, uncompressed JSON Lines on local disk) is the
//! reference. CPU-µs per row is this process's CPU time (the S3 server's is
//! not counted), steadier than rows/s on a shared machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use headwater::schema::StreamSchema;
use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
#[cfg(feature = "files")]
use headwater::sinks::files::FilesSink;
use headwater::sinks::object_store::{ObjectStoreSink, ObjectStoreSinkBuilder, S3Config};
use headwater::source::{Record, StreamState};
use serde_json::json;
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;
use common::*;

const COMMIT_EVERY: usize = 10;
const S3_ENDPOINT: &str = "http://127.0.0.1:5000";

fn checkpoint(
    sync_id: Uuid,
    started_at: DateTime<Utc>,
    page: usize,
    records: u64,
    complete: bool,
) -> Checkpoint {
    Checkpoint::new(
        "bench",
        "contacts",
        sync_id,
        StreamState::new(json!({ "page": page })),
        complete,
        records,
        started_at,
        true,
    )
}

struct SinkRun {
    total: Duration,
    writes: Duration,
    commits: Duration,
    /// CPU time of this process (all threads) during the run.
    cpu: Duration,
}

/// CPU time used by this process so far (user and system, all threads),
/// from `/proc/self/stat`; zero where that is not available. Unlike wall
/// time it does not grow when other processes share the cores.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 10) // USER_HZ is 100 on Linux
}

/// One full-refresh sync of `pages`, driven as the engine drives a sink.
async fn sync(sink: &dyn Sink, schema: &StreamSchema, pages: Vec<Vec<Record>>) -> SinkRun {
    let sync_id = Uuid::new_v4();
    let started_at = Utc::now();
    let cpu = cpu_time();
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
            sink.commit(&checkpoint(sync_id, started_at, p + 1, records, false))
                .await
                .expect("commit");
            commits += t.elapsed();
        }
    }
    let t = Instant::now();
    sink.commit(&checkpoint(sync_id, started_at, n, records, true))
        .await
        .expect("final commit");
    commits += t.elapsed();
    SinkRun {
        total: start.elapsed(),
        writes,
        commits,
        cpu: cpu_time().saturating_sub(cpu),
    }
}

async fn s3_builder() -> ObjectStoreSinkBuilder {
    let bucket = format!("hw-bench-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let created = reqwest::Client::new()
        .put(format!("{S3_ENDPOINT}/{bucket}"))
        .send()
        .await
        .and_then(|r| r.error_for_status());
    if let Err(e) = created {
        panic!("S3 (moto) at {S3_ENDPOINT}: {e}: start it with `bash scripts/test-services.sh`, or set HW_BENCH_BACKENDS=local");
    }
    S3Config::new(&bucket)
        .endpoint(S3_ENDPOINT)
        .credentials("bench", secrecy::SecretString::from("bench"))
        .sink_builder()
        .expect("s3")
}

/// The reference: the files sink, uncompressed JSON Lines on local disk.
#[cfg(feature = "files")]
fn files_reference(
    rt: &tokio::runtime::Runtime,
    schema: &StreamSchema,
    rows: usize,
    runs: usize,
    report: &dyn Fn(&str, &[Measured]),
) {
    let mut results = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FilesSink::new(dir.path()).expect("files sink");
        let run = rt.block_on(sync(&sink, schema, pages(rows)));
        let size = std::fs::metadata(sink.data_path("bench", "contacts"))
            .map(|m| m.len())
            .unwrap_or(0);
        results.push((run, size, 0, 0));
    }
    report("files (JSON Lines, local)", &results);
}

/// A run, raw bytes, Parquet bytes, multipart uploads.
type Measured = (SinkRun, u64, u64, u64);

/// A variant of the sink: its name and how to build it from a base builder.
type Variant = (
    &'static str,
    fn(ObjectStoreSinkBuilder) -> ObjectStoreSinkBuilder,
);

fn main() {
    let rows = env_usize("HW_BENCH_ROWS", 100_000);
    let runs = env_usize("HW_BENCH_RUNS", 3).max(1);
    let backends = std::env::var("HW_BENCH_BACKENDS").unwrap_or_else(|_| "local,s3".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let schema = schema();
    println!(
        "object store sink: {rows} contacts ({} fields), pages of {PAGE}, a commit every {COMMIT_EVERY} pages, median of {runs} runs",
        schema.fields.len()
    );
    println!(
        "{:<38} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "sink", "rows/s", "CPU-µs/row", "write s", "commit s", "raw B/row", "pq B/row", "multipart"
    );
    let report = |name: &str, results: &[Measured]| {
        let rate = median(
            results
                .iter()
                .map(|(r, ..)| rows as f64 / r.total.as_secs_f64())
                .collect(),
        );
        let cpu = median(
            results
                .iter()
                .map(|(r, ..)| r.cpu.as_secs_f64() * 1e6 / rows as f64)
                .collect(),
        );
        let w = median(
            results
                .iter()
                .map(|(r, ..)| r.writes.as_secs_f64())
                .collect(),
        );
        let c = median(
            results
                .iter()
                .map(|(r, ..)| r.commits.as_secs_f64())
                .collect(),
        );
        let (_, raw, clean, multipart) = &results[0];
        println!(
            "{name:<38} {rate:>8.0} {cpu:>10.1} {w:>8.2} {c:>8.2} {:>9.1} {:>9.1} {multipart:>9}",
            *raw as f64 / rows as f64,
            *clean as f64 / rows as f64,
        );
    };

    #[cfg(feature = "files")]
    files_reference(&rt, &schema, rows, runs, &report);

    let variants: [Variant; 3] = [
        ("gzip 6 + parquet", |b| b),
        ("gzip 1 + parquet", |b| b.gzip_level(1)),
        ("gzip 6, raw only", |b| b.clean_layer(false)),
    ];
    for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        for (label, configure) in variants {
            let mut results = Vec::new();
            for _ in 0..runs {
                let dir = tempfile::tempdir().expect("tempdir");
                let builder = match backend {
                    "local" => ObjectStoreSink::local(dir.path()).expect("local"),
                    "s3" => rt.block_on(s3_builder()),
                    other => panic!("unknown backend {other:?} in HW_BENCH_BACKENDS (local, s3)"),
                };
                let sink = Arc::new(configure(builder).build().expect("sink"));
                let run = rt.block_on(sync(sink.as_ref(), &schema, pages(rows)));
                let s = sink.stats();
                assert_eq!(s.records, rows as u64);
                results.push((run, s.raw_bytes, s.clean_bytes, s.multipart_uploads));
            }
            report(&format!("object store {backend}: {label}"), &results);
        }
    }
}
