//! The BigQuery sink against the BigQuery emulator on loopback (bqemulator,
//! started by `scripts/test-services.sh`; CI runs it), and its
//! service-account auth against a wiremock token endpoint.
//!
//! Every test uses a fresh dataset. When the emulator is not reachable the
//! tests fail, saying how to start it: they never skip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use headwater::http::RetryConfig;
use headwater::schema::{Field, FieldType, StreamSchema};
use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
use headwater::sinks::bigquery::{BigQuerySink, ServiceAccountKey, BIGQUERY_SCOPE, STATE_TABLE};
use headwater::source::Record;
use headwater::testkit::sink_suite::{self, Capabilities, SinkInspector};
use headwater::{AuthErrorKind, Error};
use serde_json::{json, Map, Value};
use url::Url;
use uuid::Uuid;
use wiremock::matchers::{header, method, path, path_regex, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const PROJECT: &str = "test-project";

/// A private key made with `openssl genpkey` for these tests only. It
/// signs nothing but JWTs sent to a wiremock server in this file.
const TEST_ONLY_KEY: &str = include_str!("fixtures/bigquery-test-only-do-not-use.key.pem");
const TEST_ONLY_PUBLIC_KEY: &str = include_str!("fixtures/bigquery-test-only-do-not-use.pub.pem");

fn emulator_url() -> String {
    std::env::var("BIGQUERY_EMULATOR_URL").unwrap_or_else(|_| "http://127.0.0.1:9050".into())
}

/// Fails (never skips) when the emulator is down.
async fn require_emulator() -> Url {
    let base = emulator_url();
    let probe = format!("{base}/bigquery/v2/projects/{PROJECT}/datasets");
    let ok = reqwest::Client::new()
        .get(&probe)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    assert!(
        ok,
        "the BigQuery emulator is not reachable at {base} (GET {probe} failed): \
         start it with `bash scripts/test-services.sh` (CI runs it before the tests)"
    );
    Url::parse(&base).expect("emulator URL")
}

fn fresh_dataset() -> String {
    format!("hw_test_{}", &Uuid::new_v4().simple().to_string()[..12])
}

async fn sink_in(dataset: &str) -> BigQuerySink {
    BigQuerySink::builder(PROJECT, dataset)
        .emulator(require_emulator().await)
        .retry(
            RetryConfig::default()
                .with_max_retries(3)
                .with_backoff(Duration::from_millis(50), Duration::from_secs(1)),
        )
        .build()
        .expect("sink")
}

async fn fresh_sink() -> BigQuerySink {
    sink_in(&fresh_dataset()).await
}

/// Drops a test's dataset (the emulator keeps everything in memory). Only
/// after a test passed: a failed one leaves its dataset to look at.
async fn drop_dataset(sink: &BigQuerySink) {
    let url = format!(
        "{}/bigquery/v2/projects/{PROJECT}/datasets/{}?deleteContents=true",
        emulator_url(),
        sink.dataset()
    );
    let _ = reqwest::Client::new().delete(url).send().await;
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn deals_schema() -> StreamSchema {
    StreamSchema::new(
        "deals",
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("name", FieldType::String),
            Field::new("count", FieldType::Integer),
            Field::new("amount", FieldType::Number),
            Field::new("active", FieldType::Boolean),
            Field::new("day", FieldType::Date),
            Field::new("updated", FieldType::Timestamp),
            Field::new("tags", FieldType::Json),
        ],
    )
}

fn deal(n: u64, version: u64) -> Record {
    Record::new(
        n.to_string(),
        obj(json!({
            "id": n.to_string(),
            "name": format!("deal {n} v{version}"),
            "count": n * 10 + version,
            "amount": n as f64 + 0.25,
            "active": n % 2 == 0,
            "day": "2024-03-01",
            "updated": format!("2024-03-01T10:00:{:02}.123456Z", version),
            "tags": ["a", {"v": version}],
        })),
    )
}

/// A checkpoint of a full refresh ([`incremental`] makes it one of an
/// incremental run).
fn checkpoint(
    tenant: &str,
    stream: &str,
    sync_id: Uuid,
    state: Value,
    complete: bool,
    records: u64,
) -> Checkpoint {
    // Checkpoint is non-exhaustive: build it the way a store reads it back.
    serde_json::from_value(json!({
        "tenant": tenant,
        "stream": stream,
        "sync_id": sync_id,
        "state": state,
        "complete": complete,
        "records": records,
        "started_at": "2024-03-01T00:00:00Z",
        "committed_at": Utc::now(),
        "full_refresh": true,
    }))
    .expect("checkpoint")
}

fn incremental(mut cp: Checkpoint) -> Checkpoint {
    cp.full_refresh = false;
    cp
}

async fn write(
    sink: &BigQuerySink,
    tenant: &str,
    stream: &str,
    sync_id: Uuid,
    records: Vec<Record>,
) {
    sink.write(Batch::new(tenant, stream, sync_id, Utc::now(), records))
        .await
        .expect("write");
}

/// Rows of a tenant's stream by id.
async fn rows_by_id(
    sink: &BigQuerySink,
    tenant: &str,
    stream: &str,
) -> HashMap<String, Map<String, Value>> {
    let rows = sink.read_rows(tenant, stream).await.expect("read rows");
    let n = rows.len();
    let by_id: HashMap<String, Map<String, Value>> = rows
        .into_iter()
        .map(|r| (r["id"].as_str().expect("id").to_owned(), r))
        .collect();
    assert_eq!(by_id.len(), n, "an id appears twice");
    by_id
}

#[tokio::test]
async fn tables_get_mapped_types_and_sanitized_names() {
    let sink = fresh_sink().await;
    let long = "L".repeat(200);
    let hostile = [
        "select",
        "x\"; drop table deals; --",
        "prénom",
        "名前",
        long.as_str(),
        "Email",
        "email",
        "1st",
        "_tenant_id",
    ];
    let mut schema = deals_schema();
    schema
        .fields
        .extend(hostile.iter().map(|n| Field::new(*n, FieldType::String)));
    let sync_id = Uuid::new_v4();
    sink.prepare(&StreamContext::new("acme", schema.clone(), sync_id, None))
        .await
        .expect("prepare");

    let columns = sink.columns("deals").await.expect("columns");
    let types: HashMap<&str, &str> = columns
        .iter()
        .map(|c| {
            (
                c.field.as_deref().unwrap_or(c.name.as_str()),
                c.column_type.as_str(),
            )
        })
        .collect();
    for (name, ty) in [
        ("_tenant_id", "STRING"),
        ("_extracted_at", "TIMESTAMP"),
        ("_sync_id", "STRING"),
        ("_deleted", "BOOL"),
        ("_record", "JSON"),
        ("id", "STRING"),
        ("name", "STRING"),
        ("count", "INT64"),
        ("amount", "NUMERIC"),
        ("active", "BOOL"),
        ("day", "DATE"),
        ("updated", "TIMESTAMP"),
        ("tags", "JSON"),
    ] {
        assert_eq!(
            types.get(name).copied(),
            Some(ty),
            "column of {name}: {columns:#?}"
        );
    }
    let by_field: HashMap<&str, &str> = columns
        .iter()
        .filter_map(|c| Some((c.field.as_deref()?, c.name.as_str())))
        .collect();
    assert_eq!(by_field["select"], "select");
    assert_eq!(
        by_field["x\"; drop table deals; --"],
        "x___drop_table_deals____"
    );
    assert_eq!(by_field["prénom"], "pr_nom");
    assert_eq!(by_field[long.as_str()], long);
    assert_eq!(by_field["Email"], "Email");
    assert!(
        by_field["email"].starts_with("email_"),
        "{}",
        by_field["email"]
    );
    assert_eq!(by_field["1st"], "_1st");
    assert!(by_field["_tenant_id"].starts_with("_tenant_id_"));
    // Every name valid, and unique without regard to case.
    let mut seen = HashSet::new();
    for c in &columns {
        let b = c.name.as_bytes();
        assert!(
            !b.is_empty()
                && b.len() <= 300
                && (b[0].is_ascii_alphabetic() || b[0] == b'_')
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'_'),
            "invalid column name {:?}",
            c.name
        );
        assert!(
            seen.insert(c.name.to_ascii_lowercase()),
            "{:?} twice",
            c.name
        );
    }

    // The odd columns take values, and the mapping reads them back.
    let mut r = deal(1, 1);
    for (i, n) in hostile.iter().enumerate() {
        r.data.insert((*n).to_owned(), json!(format!("value {i}")));
    }
    write(&sink, "acme", "deals", sync_id, vec![r.clone()]).await;
    sink.commit(&checkpoint(
        "acme",
        "deals",
        sync_id,
        json!({"p": 1}),
        true,
        1,
    ))
    .await
    .expect("commit");
    let rows = rows_by_id(&sink, "acme", "deals").await;
    let row = &rows["1"];
    for (i, n) in hostile.iter().enumerate() {
        assert_eq!(row[*n], json!(format!("value {i}")), "{n}");
    }
    assert_eq!(row["count"], json!(11));
    assert_eq!(row["amount"], json!(1.25));
    assert_eq!(row["active"], json!(false));
    assert_eq!(row["day"], json!("2024-03-01"));
    assert_eq!(row["updated"], json!("2024-03-01T10:00:01.123456Z"));
    assert_eq!(row["tags"], json!(["a", {"v": 1}]));
    assert_eq!(row["_record"], Value::Object(r.data.clone()));

    // A new field adds a column (tables.patch, and the emulator's storage
    // too); a later prepare with the same schema changes nothing.
    schema
        .fields
        .push(Field::new("Added Field!", FieldType::Integer));
    let sync2 = Uuid::new_v4();
    sink.prepare(&StreamContext::new("acme", schema.clone(), sync2, None))
        .await
        .expect("prepare with a new field");
    let mut r2 = deal(2, 1);
    r2.data.insert("Added Field!".into(), json!(7));
    write(&sink, "acme", "deals", sync2, vec![r2]).await;
    sink.commit(&incremental(checkpoint(
        "acme",
        "deals",
        sync2,
        json!({"p": 2}),
        true,
        1,
    )))
    .await
    .expect("commit after the new field");
    let columns2 = sink.columns("deals").await.expect("columns");
    assert_eq!(columns2.len(), columns.len() + 1);
    assert!(columns2
        .iter()
        .any(|c| c.name == "Added_Field_" && c.field.as_deref() == Some("Added Field!")));
    let rows = rows_by_id(&sink, "acme", "deals").await;
    assert_eq!(rows["2"]["Added Field!"], json!(7));
    assert_eq!(rows["1"]["Added Field!"], Value::Null);
    sink.prepare(&StreamContext::new("acme", schema, Uuid::new_v4(), None))
        .await
        .expect("prepare again");
    assert_eq!(
        sink.columns("deals").await.expect("columns").len(),
        columns2.len()
    );
    drop_dataset(&sink).await;
}

#[tokio::test]
async fn merge_dedupes_replaces_and_flags_deletes() {
    let sink = fresh_sink().await;
    let schema = deals_schema();
    let run1 = Uuid::new_v4();
    sink.prepare(&StreamContext::new("t", schema.clone(), run1, None))
        .await
        .expect("prepare");
    let batch: Vec<Record> = (1..=5).map(|n| deal(n, 1)).collect();
    // The same batch twice before one commit, then again in its own commit.
    write(&sink, "t", "deals", run1, batch.clone()).await;
    write(&sink, "t", "deals", run1, batch.clone()).await;
    sink.commit(&checkpoint("t", "deals", run1, json!(1), false, 10))
        .await
        .expect("commit 1");
    write(&sink, "t", "deals", run1, batch.clone()).await;
    sink.commit(&checkpoint("t", "deals", run1, json!(2), true, 15))
        .await
        .expect("commit 2");
    let counted = sink
        .query(
            &format!(
                "SELECT id, COUNT(*) AS n FROM {} WHERE _tenant_id = @t GROUP BY id",
                sink.table_ref("deals")
            ),
            &[("t", "t")],
        )
        .await
        .expect("count");
    assert_eq!(counted.len(), 5);
    assert!(counted.iter().all(|r| r["n"] == json!(1)), "{counted:?}");

    // A later, incremental run: updates (the last version in a commit
    // wins), a delete, a new row.
    let run2 = Uuid::new_v4();
    sink.prepare(&StreamContext::new("t", schema.clone(), run2, None).with_full_refresh(false))
        .await
        .expect("prepare 2");
    write(&sink, "t", "deals", run2, vec![deal(2, 2), deal(6, 1)]).await;
    write(
        &sink,
        "t",
        "deals",
        run2,
        vec![deal(2, 3), deal(3, 1).deleted(true)],
    )
    .await;
    sink.commit(&incremental(checkpoint(
        "t",
        "deals",
        run2,
        json!(3),
        true,
        4,
    )))
    .await
    .expect("commit 3");
    let rows = rows_by_id(&sink, "t", "deals").await;
    assert_eq!(rows.len(), 6);
    assert_eq!(rows["2"]["name"], json!("deal 2 v3"));
    assert_eq!(rows["2"]["count"], json!(23));
    assert_eq!(rows["2"]["_sync_id"], json!(run2.to_string()));
    assert_eq!(rows["3"]["_deleted"], json!(true));
    assert_eq!(rows["1"]["_deleted"], json!(false));
    assert_eq!(rows["1"]["_sync_id"], json!(run1.to_string()));
    assert_eq!(rows["6"]["name"], json!("deal 6 v1"));

    // A full refresh with fewer records: exactly its rows remain once it
    // completes (until then, its commits only merge).
    let run3 = Uuid::new_v4();
    sink.prepare(&StreamContext::new("t", schema, run3, None))
        .await
        .expect("prepare 3");
    write(&sink, "t", "deals", run3, vec![deal(1, 1), deal(6, 4)]).await;
    sink.commit(&checkpoint("t", "deals", run3, json!(4), false, 2))
        .await
        .expect("commit 4");
    assert_eq!(rows_by_id(&sink, "t", "deals").await.len(), 6);
    sink.commit(&checkpoint("t", "deals", run3, json!(5), true, 2))
        .await
        .expect("commit 5");
    let rows = rows_by_id(&sink, "t", "deals").await;
    let mut ids: Vec<&str> = rows.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "6"]);
    assert_eq!(rows["6"]["name"], json!("deal 6 v4"));
    // No staging table is left behind.
    let tables = sink
        .query(
            &format!(
                "SELECT table_name FROM `{PROJECT}.{}.INFORMATION_SCHEMA.TABLES`",
                sink.dataset()
            ),
            &[],
        )
        .await;
    if let Ok(tables) = tables {
        assert!(
            tables
                .iter()
                .all(|t| !t["table_name"].as_str().unwrap_or("").contains("staging")),
            "{tables:?}"
        );
    }
    drop_dataset(&sink).await;
}

#[tokio::test]
async fn state_round_trips_per_tenant_and_stream() {
    let sink = fresh_sink().await;
    assert_eq!(sink.load_state("t", "deals").await.expect("state"), None);
    let run = Uuid::new_v4();
    sink.prepare(&StreamContext::new("t", deals_schema(), run, None))
        .await
        .expect("prepare");
    assert_eq!(sink.load_state("t", "deals").await.expect("state"), None);
    write(&sink, "t", "deals", run, vec![deal(1, 1)]).await;
    let state = json!({"after": "x\"; drop table deals; --", "big": 12_345_678_901_234_567u64, "名前": [1, null]});
    let cp = checkpoint("t", "deals", run, state, false, 1);
    sink.commit(&cp).await.expect("commit");
    assert_eq!(
        sink.load_state("t", "deals").await.expect("state"),
        Some(cp.clone())
    );
    // An empty commit moves the state alone.
    let done = checkpoint("t", "deals", run, json!({"done": true}), true, 1);
    sink.commit(&done).await.expect("commit");
    assert_eq!(
        sink.load_state("t", "deals").await.expect("state"),
        Some(done)
    );
    assert_eq!(sink.load_state("T", "deals").await.expect("state"), None);
    assert_eq!(sink.load_state("t", "contacts").await.expect("state"), None);
    let n = sink
        .query(
            &format!(
                "SELECT COUNT(*) AS n FROM `{PROJECT}.{}.{STATE_TABLE}`",
                sink.dataset()
            ),
            &[],
        )
        .await
        .expect("count");
    assert_eq!(n[0]["n"], json!(1), "one state row per tenant and stream");
    drop_dataset(&sink).await;
}

#[tokio::test]
async fn resume_after_a_crash_between_merge_and_state_merges_again() {
    let dataset = fresh_dataset();
    let sink = sink_in(&dataset).await;
    let run = Uuid::new_v4();
    sink.prepare(&StreamContext::new("t", deals_schema(), run, None))
        .await
        .expect("prepare");
    write(
        &sink,
        "t",
        "deals",
        run,
        (1..=10).map(|n| deal(n, 1)).collect(),
    )
    .await;
    let first = checkpoint("t", "deals", run, json!({"page": 1}), false, 10);
    sink.commit(&first).await.expect("commit 1");
    write(
        &sink,
        "t",
        "deals",
        run,
        (11..=20).map(|n| deal(n, 1)).collect(),
    )
    .await;
    sink.commit(&checkpoint(
        "t",
        "deals",
        run,
        json!({"page": 2}),
        false,
        20,
    ))
    .await
    .expect("commit 2");
    // The crash: page 2's rows are in the table, its state is not (as if
    // the process died between the data and the state).
    sink.query(
        &format!(
            "UPDATE `{PROJECT}.{dataset}.{STATE_TABLE}` SET checkpoint = @cp WHERE tenant = 't'"
        ),
        &[("cp", &serde_json::to_string(&first).expect("json"))],
    )
    .await
    .expect("rewind state");

    // The crashed process's lease expired (15 minutes after its last
    // renewal; here at once).
    sink.query(
        &format!(
            "UPDATE `{PROJECT}.{dataset}._headwater_leases` \
             SET expires_at = TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 SECOND) WHERE tenant = 't'"
        ),
        &[],
    )
    .await
    .expect("expire the lease");
    // A new process resumes from page 1 and writes page 2 again (fresher).
    let sink = sink_in(&dataset).await;
    let resume = sink.load_state("t", "deals").await.expect("state");
    assert_eq!(resume.as_ref(), Some(&first));
    sink.prepare(&StreamContext::new("t", deals_schema(), run, resume))
        .await
        .expect("prepare resumed");
    write(
        &sink,
        "t",
        "deals",
        run,
        (11..=20).map(|n| deal(n, 2)).collect(),
    )
    .await;
    let done = checkpoint("t", "deals", run, json!({"page": 2}), true, 20);
    sink.commit(&done).await.expect("commit resumed");
    let rows = rows_by_id(&sink, "t", "deals").await;
    assert_eq!(rows.len(), 20, "merged, not duplicated");
    assert_eq!(rows["15"]["name"], json!("deal 15 v2"));
    assert_eq!(
        sink.load_state("t", "deals").await.expect("state"),
        Some(done)
    );

    // A crash after writes and before any commit: nothing is visible, and
    // the next run's prepare forgets the buffered rows.
    let run2 = Uuid::new_v4();
    let ctx = StreamContext::new("t", deals_schema(), run2, None).with_full_refresh(false);
    sink.prepare(&ctx).await.expect("prepare");
    write(&sink, "t", "deals", run2, vec![deal(99, 1)]).await;
    // The failed run is abandoned (as the engine does), which frees the
    // stream's lease.
    sink.abandon("t", "deals").await.expect("abandon");
    sink.prepare(&ctx).await.expect("prepare again");
    sink.commit(&incremental(checkpoint(
        "t",
        "deals",
        run2,
        json!(null),
        true,
        0,
    )))
    .await
    .expect("commit");
    let rows = rows_by_id(&sink, "t", "deals").await;
    assert_eq!(rows.len(), 20);
    assert!(!rows.contains_key("99"));
    drop_dataset(&sink).await;
}

#[tokio::test]
async fn tenants_stay_apart() {
    let sink = fresh_sink().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (tenant, run) in [("acme", a), ("ACME", b)] {
        sink.prepare(&StreamContext::new(tenant, deals_schema(), run, None))
            .await
            .expect("prepare");
    }
    write(
        &sink,
        "acme",
        "deals",
        a,
        (1..=3).map(|n| deal(n, 1)).collect(),
    )
    .await;
    write(
        &sink,
        "ACME",
        "deals",
        b,
        (2..=5).map(|n| deal(n, 7)).collect(),
    )
    .await;
    sink.commit(&checkpoint("acme", "deals", a, json!("a"), true, 3))
        .await
        .expect("commit a");
    sink.commit(&checkpoint("ACME", "deals", b, json!("b"), true, 4))
        .await
        .expect("commit b");
    let ra = rows_by_id(&sink, "acme", "deals").await;
    let rb = rows_by_id(&sink, "ACME", "deals").await;
    assert_eq!(ra.len(), 3);
    assert_eq!(rb.len(), 4);
    assert_eq!(ra["2"]["name"], json!("deal 2 v1"));
    assert_eq!(rb["2"]["name"], json!("deal 2 v7"));
    assert!(ra.values().all(|r| r["_tenant_id"] == json!("acme")));
    let sa = sink
        .load_state("acme", "deals")
        .await
        .expect("state")
        .expect("some");
    let sb = sink
        .load_state("ACME", "deals")
        .await
        .expect("state")
        .expect("some");
    assert_eq!((sa.state.0, sb.state.0), (json!("a"), json!("b")));
    drop_dataset(&sink).await;
}

#[tokio::test]
async fn sql_and_job_errors_are_sink_errors() {
    let sink = fresh_sink().await;
    sink.ensure_dataset().await.expect("dataset");
    // The emulator answers 200 with `errors`; BigQuery answers 400.
    let err = sink
        .query("SELEC nonsense", &[])
        .await
        .expect_err("bad SQL");
    assert!(
        matches!(
            err,
            Error::Sink {
                sink: "bigquery",
                ..
            }
        ),
        "{err:?}"
    );
    let err = sink
        .query(
            &format!("SELECT * FROM `{PROJECT}.{}.missing`", sink.dataset()),
            &[],
        )
        .await
        .expect_err("missing table");
    assert!(
        matches!(
            err,
            Error::Sink {
                sink: "bigquery",
                ..
            }
        ),
        "{err:?}"
    );
    // Write before prepare is refused, not lost.
    let err = sink
        .write(Batch::new(
            "t",
            "nope",
            Uuid::new_v4(),
            Utc::now(),
            vec![deal(1, 1)],
        ))
        .await
        .expect_err("write before prepare");
    assert!(err.to_string().contains("before prepare"), "{err}");
    drop_dataset(&sink).await;
}

#[tokio::test]
async fn unfit_and_blank_values_are_null_in_columns_and_kept_in_record() {
    let sink = fresh_sink().await;
    let run = Uuid::new_v4();
    sink.prepare(&StreamContext::new("t", deals_schema(), run, None))
        .await
        .expect("prepare");
    let mut bad = deal(1, 1);
    bad.data.extend(obj(json!({
        "count": "12abc", "amount": "1e40", "active": "maybe", "day": "2024-02-30",
        "updated": "yesterday", "tags": "",
    })));
    let mut precise = deal(2, 1);
    precise.data.insert("amount".into(), json!("0.12345678951"));
    write(&sink, "t", "deals", run, vec![bad.clone(), precise]).await;
    sink.commit(&checkpoint("t", "deals", run, json!(1), true, 2))
        .await
        .expect("commit");
    let rows = rows_by_id(&sink, "t", "deals").await;
    for f in ["count", "amount", "active", "day", "updated", "tags"] {
        assert_eq!(rows["1"][f], Value::Null, "{f}");
    }
    assert_eq!(rows["1"]["_record"], Value::Object(bad.data));
    // NUMERIC keeps 9 fractional digits, rounded.
    assert_eq!(rows["2"]["amount"], json!(0.12345679));
    drop_dataset(&sink).await;
}

#[tokio::test]
async fn big_commits_are_split_into_several_load_jobs() {
    let dataset = fresh_dataset();
    let sink = BigQuerySink::builder(PROJECT, &dataset)
        .emulator(require_emulator().await)
        .max_upload_bytes(2_000)
        .build()
        .expect("sink");
    let run = Uuid::new_v4();
    sink.prepare(&StreamContext::new("t", deals_schema(), run, None))
        .await
        .expect("prepare");
    // About 500 bytes a row: 40 rows make about ten uploads.
    write(
        &sink,
        "t",
        "deals",
        run,
        (1..=40).map(|n| deal(n, 1)).collect(),
    )
    .await;
    write(
        &sink,
        "t",
        "deals",
        run,
        (1..=40).map(|n| deal(n, 2)).collect(),
    )
    .await;
    sink.commit(&checkpoint("t", "deals", run, json!(1), true, 80))
        .await
        .expect("commit");
    let rows = rows_by_id(&sink, "t", "deals").await;
    assert_eq!(rows.len(), 40);
    assert!(rows
        .values()
        .all(|r| r["name"].as_str().unwrap_or("").ends_with("v2")));
    drop_dataset(&sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_commit_concurrently_into_one_table() {
    let sink = fresh_sink().await;
    let tenants: Vec<String> = (0..4).map(|i| format!("tenant-{i}")).collect();
    let runs: Vec<Uuid> = tenants.iter().map(|_| Uuid::new_v4()).collect();
    for (t, run) in tenants.iter().zip(&runs) {
        sink.prepare(&StreamContext::new(t.as_str(), deals_schema(), *run, None))
            .await
            .expect("prepare");
        write(
            &sink,
            t,
            "deals",
            *run,
            (1..=50).map(|n| deal(n, 1)).collect(),
        )
        .await;
    }
    let commits = tenants.iter().zip(&runs).map(|(t, run)| {
        let sink = sink.clone();
        let cp = checkpoint(t, "deals", *run, json!(1), true, 50);
        tokio::spawn(async move { sink.commit(&cp).await })
    });
    for c in futures::future::join_all(commits).await {
        c.expect("task").expect("commit");
    }
    for t in &tenants {
        assert_eq!(rows_by_id(&sink, t, "deals").await.len(), 50, "{t}");
    }
    drop_dataset(&sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_fake_to_bigquery_through_the_engine() {
    use headwater::http::Limits;
    use headwater::hubspot::{HubSpot, HubSpotSource};
    use headwater::sync::Sync;
    use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};

    let sink = Arc::new(fresh_sink().await);
    let mut config = FakeConfig::default();
    config.objects.insert(
        "contacts".into(),
        ObjectSeed {
            count: 450,
            archived: 20,
        },
    );
    let fake = HubSpotFake::start(config).await;
    let hubspot = HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(fake.uri())
        .limits(Limits::default())
        .build()
        .expect("client");
    let source = Arc::new(HubSpotSource::new(hubspot));
    for round in 0..2 {
        let report = Sync::new(source.clone(), sink.clone())
            .tenant("hub-1")
            .streams(["contacts"])
            .checkpoint_every(2)
            .run()
            .await;
        assert!(report.is_success(), "round {round}: {report:?}");
    }
    let rows = rows_by_id(&sink, "hub-1", "contacts").await;
    let live = fake.ids("contacts", false);
    let archived = fake.ids("contacts", true);
    assert_eq!(rows.len(), live.len() + archived.len());
    for id in &archived {
        assert_eq!(rows[id]["_deleted"], json!(true), "{id}");
    }
    let state = sink
        .load_state("hub-1", "contacts")
        .await
        .expect("state")
        .expect("some");
    assert!(state.complete);
    // Every property of the fake's schema has its column.
    let columns = sink.columns("contacts").await.expect("columns");
    for p in fake.property_names("contacts") {
        assert!(
            columns
                .iter()
                .any(|c| c.field.as_deref() == Some(p.as_str())),
            "no column for {p}"
        );
    }
    drop_dataset(&sink).await;
}

// ---------------------------------------------------------------------------
// Service-account auth (JWT bearer) against a wiremock token endpoint.

#[derive(Debug, serde::Deserialize)]
struct SeenClaims {
    iss: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Answers each token request with a new token: `token-1`, `token-2`, …
struct Tokens(AtomicUsize);

impl Respond for Tokens {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": format!("token-{n}"),
            "expires_in": 3599,
            "token_type": "Bearer",
        }))
    }
}

fn test_key(token_uri: &str) -> ServiceAccountKey {
    ServiceAccountKey::from_json(
        json!({
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "test-only",
            "private_key": TEST_ONLY_KEY,
            "client_email": "headwater-test@p.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
        .as_bytes(),
    )
    .expect("key")
}

fn assertion_of(req: &Request) -> String {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    form.get("assertion").cloned().expect("assertion")
}

#[tokio::test]
async fn service_account_jwt_is_signed_exchanged_cached_and_refreshed() {
    let server = MockServer::start().await;
    let token_uri = format!("{}/token", server.uri());
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(Tokens(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let table_path = "/bigquery/v2/projects/p/datasets/d/tables/deals";
    // The first call with token-2 is refused once (as if revoked): the sink
    // refreshes and retries.
    Mock::given(method("GET"))
        .and(path(table_path))
        .and(header("authorization", "Bearer token-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"schema": {"fields": []}})))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(table_path))
        .and(header("authorization", "Bearer token-1"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": {"code": 401, "message": "Request had invalid authentication credentials.",
                      "status": "UNAUTHENTICATED"}
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(table_path))
        .and(header("authorization", "Bearer token-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"schema": {"fields": []}})))
        .mount(&server)
        .await;

    let key = test_key(&token_uri);
    assert!(
        !format!("{key:?}").contains("PRIVATE KEY"),
        "Debug shows the key"
    );
    let sink = BigQuerySink::builder("p", "d")
        .endpoint(Url::parse(&server.uri()).expect("uri"))
        .service_account_key(key)
        .build()
        .expect("sink");
    let dbg = format!("{sink:?}");
    assert!(
        !dbg.contains("PRIVATE KEY") && !dbg.contains("token-"),
        "{dbg}"
    );

    // Two calls, one exchange: the token is cached.
    sink.columns("deals").await.expect("first call");
    sink.columns("deals")
        .await
        .expect("second call, cached token");
    let exchanges = |reqs: &[Request]| reqs.iter().filter(|r| r.url.path() == "/token").count();
    let seen = server.received_requests().await.expect("requests");
    assert_eq!(exchanges(&seen), 1, "the token was not cached");
    // The third call is refused with token-1: one refresh, then token-2.
    sink.columns("deals").await.expect("after a 401, refreshed");
    let seen = server.received_requests().await.expect("requests");
    assert_eq!(exchanges(&seen), 2);

    // The JWT: header, claims and signature (checked with the public key).
    let jwt = assertion_of(
        seen.iter()
            .find(|r| r.url.path() == "/token")
            .expect("token request"),
    );
    let head = jsonwebtoken::decode_header(&jwt).expect("header");
    assert_eq!(head.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(head.typ.as_deref(), Some("JWT"));
    let header_json: Value = serde_json::from_slice(&base64_url_decode(
        jwt.split('.').next().expect("header part"),
    ))
    .expect("header json");
    assert_eq!(header_json, json!({"alg": "RS256", "typ": "JWT"}));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[token_uri.as_str()]);
    validation.set_issuer(&["headwater-test@p.iam.gserviceaccount.com"]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let decoded = jsonwebtoken::decode::<SeenClaims>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_rsa_pem(TEST_ONLY_PUBLIC_KEY.as_bytes())
            .expect("public key"),
        &validation,
    )
    .expect("the JWT verifies with the key's public half");
    let c = decoded.claims;
    assert_eq!(c.iss, "headwater-test@p.iam.gserviceaccount.com");
    assert_eq!(c.scope, BIGQUERY_SCOPE);
    assert_eq!(c.aud, token_uri);
    assert!(
        c.exp > c.iat && c.exp - c.iat <= 3600,
        "iat {} exp {}",
        c.iat,
        c.exp
    );
    assert!((c.iat - Utc::now().timestamp()).abs() < 60);
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

#[tokio::test]
async fn a_refused_service_account_key_must_be_replaced() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "Invalid JWT Signature."
        })))
        .mount(&server)
        .await;
    let sink = BigQuerySink::builder("p", "d")
        .endpoint(Url::parse(&server.uri()).expect("uri"))
        .service_account_key(test_key(&format!("{}/token", server.uri())))
        .build()
        .expect("sink");
    let err = sink.columns("deals").await.expect_err("refused");
    assert!(
        matches!(
            err,
            Error::Auth {
                kind: AuthErrorKind::Reauthorize,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Invalid JWT Signature"), "{err}");
    assert!(err.needs_reauthorization());
}

// ---------------------------------------------------------------------------
// What the emulator never does (jobs that take time, paging, float
// timestamps, transient failures), against wiremock speaking BigQuery's
// shapes.

fn mock_sink(server: &MockServer) -> BigQuerySink {
    BigQuerySink::builder("p", "d")
        .endpoint(Url::parse(&server.uri()).expect("uri"))
        .access_token("tok".to_owned().into())
        .retry(
            RetryConfig::default()
                .with_max_retries(2)
                .with_backoff(Duration::from_millis(10), Duration::from_millis(50)),
        )
        .location("EU")
        .build()
        .expect("sink")
}

#[tokio::test]
async fn queries_wait_page_and_parse_float_timestamps() {
    let server = MockServer::start().await;
    let q = "/bigquery/v2/projects/p/queries";
    Mock::given(method("POST"))
        .and(path(q))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(q))
        .and(header("authorization", "Bearer tok"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "jobComplete": false,
            "jobReference": {"projectId": "p", "jobId": "j1", "location": "EU"},
        })))
        .mount(&server)
        .await;
    let schema = json!({"fields": [
        {"name": "t", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "n", "type": "INTEGER", "mode": "NULLABLE"},
    ]});
    let reference = json!({"projectId": "p", "jobId": "j1", "location": "EU"});
    Mock::given(method("GET"))
        .and(path(format!("{q}/j1")))
        .and(query_param("pageToken", "page-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "jobComplete": true, "schema": schema, "jobReference": reference,
            "rows": [{"f": [{"v": "1709251200000000"}, {"v": "2"}]}],
        })))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{q}/j1")))
        .and(query_param("location", "EU"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "jobComplete": true, "schema": schema, "jobReference": reference,
            "rows": [{"f": [{"v": "1.709251200123456E9"}, {"v": "1"}]}],
            "pageToken": "page-2",
        })))
        .mount(&server)
        .await;
    let sink = mock_sink(&server);
    let rows = sink.query("SELECT t, n FROM x", &[]).await.expect("query");
    assert_eq!(
        Value::Array(rows.into_iter().map(Value::Object).collect()),
        json!([
            {"t": "2024-03-01T00:00:00.123456Z", "n": 1},
            {"t": "2024-03-01T00:00:00Z", "n": 2},
        ])
    );
    let body: Value = server.received_requests().await.expect("requests")[1]
        .body_json()
        .expect("json body");
    assert_eq!(body["useLegacySql"], json!(false));
    assert_eq!(body["location"], json!("EU"));
    assert_eq!(body["formatOptions"]["useInt64Timestamp"], json!(true));
}

/// Mounts the calls a prepare makes for a new `deals` table.
/// Answers the lease queries of a mocked BigQuery as BigQuery would for a
/// free stream: the MERGE takes it, the read-back shows its token.
#[derive(Default)]
struct LeaseEcho {
    token: std::sync::Mutex<Option<String>>,
}

impl Respond for LeaseEcho {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        use base64::Engine as _;
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let sql = body["query"].as_str().unwrap_or("");
        if sql.contains("MERGE") {
            // Literals: tenant, stream, token, holder.
            let token = sql
                .split("FROM_BASE64('")
                .nth(3)
                .and_then(|rest| rest.split('\'').next())
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .and_then(|bytes| String::from_utf8(bytes).ok());
            *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
        }
        if sql.starts_with("SELECT token") {
            let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return ResponseTemplate::new(200).set_body_json(json!({
                "jobComplete": true,
                "schema": {"fields": [
                    {"name": "token", "type": "STRING"},
                    {"name": "holder", "type": "STRING"},
                    {"name": "until", "type": "STRING"},
                ]},
                "rows": [{"f": [{"v": token}, {"v": "this run"}, {"v": "later"}]}],
                "totalRows": "1",
            }));
        }
        ResponseTemplate::new(200).set_body_json(json!({"jobComplete": true}))
    }
}

async fn mount_prepare(server: &MockServer) {
    let base = "/bigquery/v2/projects/p/datasets/d";
    Mock::given(method("POST"))
        .and(path("/bigquery/v2/projects/p/queries"))
        .and(wiremock::matchers::body_string_contains(
            "_headwater_leases",
        ))
        .respond_with(LeaseEcho::default())
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(base))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{base}/tables/{STATE_TABLE}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"schema": {}})))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{base}/tables/deals")))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "error": {"code": 404, "message": "Not found: Table p:d.deals", "status": "NOT_FOUND",
                      "errors": [{"reason": "notFound", "message": "Not found"}]}
        })))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{base}/tables")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(server)
        .await;
    Mock::given(method("DELETE"))
        .and(path_regex(format!(
            "^{base}/tables/_headwater_staging_deals_[0-9a-f]{{32}}$"
        )))
        .respond_with(ResponseTemplate::new(204))
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_commit_uploads_waits_for_the_job_and_retries_a_transient_merge() {
    let server = MockServer::start().await;
    mount_prepare(&server).await;
    Mock::given(method("POST"))
        .and(path("/upload/bigquery/v2/projects/p/jobs"))
        .and(query_param("uploadType", "multipart"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "jobReference": {"projectId": "p", "jobId": "load-1", "location": "EU"},
            "status": {"state": "PENDING"},
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/bigquery/v2/projects/p/jobs/load-1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": {"state": "RUNNING"}})),
        )
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/bigquery/v2/projects/p/jobs/load-1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": {"state": "DONE"}})),
        )
        .mount(&server)
        .await;
    let q = "/bigquery/v2/projects/p/queries";
    Mock::given(method("POST"))
        .and(path(q))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "jobComplete": true,
            "errors": [{"reason": "invalidQuery", "message":
                "Transaction is aborted due to concurrent update against table p:d.deals"}],
        })))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(q))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"jobComplete": true})))
        .mount(&server)
        .await;

    let sink = mock_sink(&server);
    let run = Uuid::new_v4();
    sink.prepare(&StreamContext::new("acme", deals_schema(), run, None))
        .await
        .expect("prepare");
    write(&sink, "acme", "deals", run, vec![deal(1, 1), deal(1, 2)]).await;
    sink.commit(&checkpoint("acme", "deals", run, json!({"p": 1}), true, 2))
        .await
        .expect("commit");

    let seen = server.received_requests().await.expect("requests");
    assert!(seen.iter().all(
        |r| r.headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok")
    ));
    // The upload: JSON metadata, then the rows as application/octet-stream.
    let upload = seen
        .iter()
        .find(|r| r.url.path().starts_with("/upload/"))
        .expect("upload");
    let ctype = upload.headers["content-type"].to_str().expect("ascii");
    let boundary = ctype
        .strip_prefix("multipart/related; boundary=")
        .expect("multipart/related");
    let body = String::from_utf8(upload.body.clone()).expect("utf-8");
    let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 4, "{body}");
    let (meta_head, meta) = parts[1].split_once("\r\n\r\n").expect("meta part");
    assert!(meta_head.contains("application/json"));
    let meta: Value = serde_json::from_str(meta.trim()).expect("meta json");
    let load = &meta["configuration"]["load"];
    assert_eq!(load["sourceFormat"], json!("NEWLINE_DELIMITED_JSON"));
    assert_eq!(load["writeDisposition"], json!("WRITE_APPEND"));
    assert_eq!(load["destinationTable"]["datasetId"], json!("d"));
    let staging = load["destinationTable"]["tableId"].as_str().expect("table");
    assert!(
        staging.starts_with("_headwater_staging_deals_"),
        "{staging}"
    );
    assert_eq!(meta["jobReference"]["location"], json!("EU"));
    let (media_head, media) = parts[2].split_once("\r\n\r\n").expect("media part");
    assert!(media_head.contains("application/octet-stream"));
    let lines: Vec<Value> = media
        .trim_end()
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["name"], json!("deal 1 v2"));
    assert_eq!(lines[1]["count"], json!("12"));
    assert_eq!(lines[1]["amount"], json!("1.25"));
    assert_eq!(lines[1]["_headwater_seq"], json!("1"));
    assert_eq!(lines[1]["_tenant_id"], json!("acme"));
    assert_eq!(lines[1]["_record"]["tags"], json!(["a", {"v": 2}]));
    // The load job was polled until DONE, with its location.
    let polls: Vec<&Request> = seen
        .iter()
        .filter(|r| r.url.path().ends_with("/jobs/load-1"))
        .collect();
    assert_eq!(polls.len(), 3);
    assert!(polls[0].url.query().unwrap_or("").contains("location=EU"));
    // The merge ran twice (a concurrent update is transient), each time as
    // one transaction with the state.
    let merges: Vec<Value> = seen
        .iter()
        .filter(|r| r.url.path() == q)
        .map(|r| r.body_json::<Value>().expect("json"))
        .filter(|b| {
            !b["query"]
                .as_str()
                .unwrap_or("")
                .contains("_headwater_leases")
        })
        .collect();
    // The merges, then (a full refresh completing) the delete of the rows
    // it did not write, after the merge's transaction.
    assert_eq!(merges.len(), 3);
    assert_ne!(merges[0]["requestId"], merges[1]["requestId"]);
    let delete = merges[2]["query"].as_str().expect("sql");
    assert!(
        delete.starts_with("DELETE FROM `p.d.deals` WHERE `_tenant_id` = "),
        "{delete}"
    );
    let sql = merges[1]["query"].as_str().expect("sql");
    for part in [
        "BEGIN TRANSACTION;",
        "MERGE `p.d.deals` AS t",
        "QUALIFY ROW_NUMBER() OVER (PARTITION BY `_tenant_id`, `id` ORDER BY `_headwater_seq` DESC) = 1",
        "ON t.`_tenant_id` = s.`_tenant_id` AND t.`id` = s.`id`",
        "MERGE `p.d._headwater_state` AS t",
        "COMMIT TRANSACTION;",
    ] {
        assert!(sql.contains(part), "{part:?} not in\n{sql}");
    }
    assert!(
        !sql.contains("acme"),
        "values are inlined as base64 only:\n{sql}"
    );
    assert!(
        seen.iter().any(|r| r.method.as_str() == "DELETE"),
        "staging dropped"
    );
}

#[tokio::test]
async fn a_failed_load_job_fails_the_commit_and_keeps_the_rows() {
    let server = MockServer::start().await;
    mount_prepare(&server).await;
    Mock::given(method("POST"))
        .and(path("/upload/bigquery/v2/projects/p/jobs"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "jobReference": {"projectId": "p", "jobId": "load-2"},
            "status": {"state": "DONE",
                       "errorResult": {"reason": "invalid", "message": "Error while reading data"},
                       "errors": [{"reason": "invalid", "message": "row 1: bad value"}]},
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/bigquery/v2/projects/p/jobs/load-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "status": {"state": "DONE",
                       "errorResult": {"reason": "invalid", "message": "Error while reading data"},
                       "errors": [{"reason": "invalid", "message": "row 1: bad value"}]},
        })))
        .mount(&server)
        .await;
    let sink = mock_sink(&server);
    let run = Uuid::new_v4();
    sink.prepare(&StreamContext::new("acme", deals_schema(), run, None))
        .await
        .expect("prepare");
    write(&sink, "acme", "deals", run, vec![deal(1, 1)]).await;
    let cp = checkpoint("acme", "deals", run, json!(1), false, 1);
    let err = sink.commit(&cp).await.expect_err("load failed");
    assert!(
        matches!(
            err,
            Error::Sink {
                sink: "bigquery",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("Error while reading data") && text.contains("row 1: bad value"),
        "{text}"
    );
    let seen = server.received_requests().await.expect("requests");
    assert!(
        seen.iter().any(|r| r.method.as_str() == "DELETE"),
        "staging dropped"
    );
    assert!(
        !seen.iter().any(|r| r.url.path().ends_with("/queries")
            && !String::from_utf8_lossy(&r.body).contains("_headwater_leases")),
        "no merge after a failed load"
    );
    // The rows are kept: a second commit sends them again.
    let uploads = |reqs: &[Request]| {
        reqs.iter()
            .filter(|r| r.url.path().starts_with("/upload/"))
            .count()
    };
    assert_eq!(uploads(&seen), 1);
    let _ = sink.commit(&cp).await;
    assert_eq!(
        uploads(&server.received_requests().await.expect("requests")),
        2
    );
}

// ---------------------------------------------------------------------------
// The shared conformance suite.

/// Reads the sink's tables back for the suite.
struct Inspector(BigQuerySink);

#[async_trait]
impl SinkInspector for Inspector {
    /// `_record` (the record as received) and the metadata columns.
    async fn rows(&self, tenant: &str, stream: &str) -> headwater::Result<Vec<Map<String, Value>>> {
        let rows = self.0.read_rows(tenant, stream).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut out = match r.get("_record") {
                    Some(Value::Object(data)) => data.clone(),
                    _ => Map::new(),
                };
                for k in sink_suite::META_KEYS {
                    out.insert(k.to_owned(), r.get(k).cloned().unwrap_or(Value::Null));
                }
                out
            })
            .collect())
    }

    async fn columns(&self, _tenant: &str, stream: &str) -> headwater::Result<Vec<String>> {
        Ok(self
            .0
            .columns(stream)
            .await?
            .into_iter()
            .filter_map(|c| c.field)
            .collect())
    }

    /// The typed columns, by field name.
    async fn typed_rows(
        &self,
        tenant: &str,
        stream: &str,
    ) -> headwater::Result<Vec<Map<String, Value>>> {
        self.0.read_rows(tenant, stream).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let sink = Arc::new(fresh_sink().await);
    let inspector = Inspector((*sink).clone());
    let start = Instant::now();
    let result = sink_suite::run_all(
        sink.as_ref(),
        &inspector,
        &Capabilities::default()
            .typed_columns(true)
            .lists_live_ids(true),
    )
    .await;
    eprintln!(
        "conformance suite against the emulator: {:.1?}",
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    drop_dataset(&sink).await;
}
