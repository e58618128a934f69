//! Rows per second into the BigQuery sink: 100,000 HubSpot contacts (25
//! properties, decoded from list pages as the source does), written in pages
//! of 100 and committed every 10 and every 100 pages, against the BigQuery
//! emulator on loopback (`bash scripts/test-services.sh` starts it).
//!
//! `cargo bench --bench bigquery --features bigquery` prints, per run:
//! rows/s end to end, the CPU-side cost of `write` (encoding) per row, and
//! the time spent in commits (upload, load job, MERGE). The emulator is a
//! single Python process running DuckDB: it sets the pace, not headwater,
//! and real BigQuery adds seconds of job latency per commit instead.

use std::time::{Duration, Instant};

use headwater::hubspot::decode_list_page;
use headwater::schema::FieldType;
use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
use headwater::sinks::bigquery::BigQuerySink;
use serde_json::{json, Map, Value};

#[path = "common/mod.rs"]
mod common;
use common::*;

const ROWS: usize = 100_000;

fn page_json(page: usize) -> Vec<u8> {
    let results: Vec<Value> = (0..PAGE)
        .map(|i| {
            let n = page * PAGE + i;
            let mut props = Map::new();
            for (name, t) in PROPS {
                let v = match t {
                    FieldType::Number => json!(format!("{}", 1000 + n * 7)),
                    FieldType::Boolean => json!(if n % 3 == 0 { "true" } else { "false" }),
                    FieldType::Timestamp => json!("2024-03-01T10:00:00.123Z"),
                    FieldType::Date => json!("2024-05-17"),
                    _ => json!(format!("{name} value for contact number {n}")),
                };
                props.insert(name.into(), v);
            }
            json!({
                "id": format!("{}", 1000 + n),
                "properties": props,
                "createdAt": "2024-01-01T00:00:00.000Z",
                "updatedAt": "2024-03-01T10:00:00.123Z",
                "archived": false
            })
        })
        .collect();
    serde_json::to_vec(&json!({"results": results})).expect("json")
}

fn checkpoint(sync_id: uuid::Uuid, page: usize, complete: bool) -> Checkpoint {
    serde_json::from_value(json!({
        "tenant": "bench", "stream": "contacts", "sync_id": sync_id,
        "state": {"page": page}, "complete": complete, "records": page * PAGE,
        "started_at": chrono::Utc::now(), "committed_at": chrono::Utc::now(),
    }))
    .expect("checkpoint")
}

fn main() {
    // `cargo test --benches` runs benches with `--bench`-less arguments: do
    // the full run only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let endpoint =
        std::env::var("BIGQUERY_EMULATOR_URL").unwrap_or_else(|_| "http://127.0.0.1:9050".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let schema = schema();
    let bodies: Vec<Vec<u8>> = (0..ROWS / PAGE).map(page_json).collect();
    for every in [10usize, 100] {
        let dataset = format!(
            "hw_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let sink = BigQuerySink::builder("test-project", &dataset)
            .emulator(url::Url::parse(&endpoint).expect("url"))
            .build()
            .expect("sink");
        let sync_id = uuid::Uuid::new_v4();
        let (total, writing, committing) = rt.block_on(async {
            if let Err(e) = sink.ensure_dataset().await {
                panic!("the BigQuery emulator at {endpoint} is not usable ({e}): run `bash scripts/test-services.sh`");
            }
            let start = Instant::now();
            sink.prepare(&StreamContext::new("bench", schema.clone(), sync_id, None))
                .await
                .expect("prepare");
            let (mut writing, mut committing) = (Duration::ZERO, Duration::ZERO);
            for (p, body) in bodies.iter().enumerate() {
                let t = Instant::now();
                let records = decode_list_page(body, &schema).expect("decode").items;
                sink.write(Batch::new("bench", "contacts", sync_id, chrono::Utc::now(), records))
                    .await
                    .expect("write");
                writing += t.elapsed();
                if (p + 1) % every == 0 {
                    let t = Instant::now();
                    sink.commit(&checkpoint(sync_id, p + 1, false)).await.expect("commit");
                    committing += t.elapsed();
                }
            }
            let t = Instant::now();
            sink.commit(&checkpoint(sync_id, bodies.len(), true)).await.expect("commit");
            committing += t.elapsed();
            (start.elapsed(), writing, committing)
        });
        let rows = rt
            .block_on(sink.query(
                &format!("SELECT COUNT(*) AS n FROM {}", sink.table_ref("contacts")),
                &[],
            ))
            .expect("count");
        assert_eq!(rows[0]["n"], json!(ROWS), "rows in the table");
        // The emulator keeps everything in memory: drop the dataset.
        let drop = format!(
            "{endpoint}/bigquery/v2/projects/test-project/datasets/{dataset}?deleteContents=true"
        );
        let _ = rt.block_on(reqwest::Client::new().delete(drop).send());
        println!(
            "bigquery (emulator), {ROWS} contacts, commit every {every} pages: {:.1} s, {:.0} rows/s; \
             decode+write {:.1} µs/row; commits {:.1} s ({} commits)",
            total.as_secs_f64(),
            ROWS as f64 / total.as_secs_f64(),
            writing.as_secs_f64() * 1e6 / ROWS as f64,
            committing.as_secs_f64(),
            ROWS / PAGE / every + 1,
        );
    }
}
