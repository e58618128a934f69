//! The object store sink against a real S3 server on loopback (moto on
//! 127.0.0.1:5000, started by `scripts/test-services.sh`) and against local
//! disk: the raw and clean layers at their documented paths, typed Parquet,
//! exact resume, multipart uploads, hostile names, tenants apart, state,
//! incremental snapshots, and the sync engine with the HubSpot fake.
//!
//! Every test runs on both backends (`…::s3` and `…::local`); each S3 test
//! uses fresh buckets. When S3 is unreachable the S3 tests fail and say how
//! to start it: they never skip.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use headwater::schema::{Field, FieldType, StreamSchema};
use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
use headwater::sinks::object_store::object_store::path::Path;
use headwater::sinks::object_store::object_store::ObjectStore;
use headwater::sinks::object_store::{ObjectStoreSink, ObjectStoreSinkBuilder, S3Config, Snapshot};
use headwater::source::{Record, StreamState};
use headwater::testkit::sink_suite::{self, Capabilities, SinkInspector};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Map, Value};
use uuid::Uuid;

const S3_ENDPOINT: &str = "http://127.0.0.1:5000";

// ---------------------------------------------------------------------------
// Backends.

#[derive(Debug, Clone, Copy)]
enum Backend {
    S3,
    Local,
}

/// A sink on fresh storage, and the stores to inspect it.
struct Lake {
    sink: Arc<ObjectStoreSink>,
    raw: Arc<dyn ObjectStore>,
    clean: Arc<dyn ObjectStore>,
    _dir: Option<tempfile::TempDir>,
}

async fn create_bucket(name: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("{S3_ENDPOINT}/{name}");
    match client.put(&url).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => panic!(
            "the S3 test server at {S3_ENDPOINT} refused to create bucket {name}: {}",
            r.status()
        ),
        Err(e) => panic!(
            "the S3 test server (moto) is not reachable at {S3_ENDPOINT} ({e}): \
             start it with `bash scripts/test-services.sh`"
        ),
    }
}

fn s3_config(raw: &str, clean: &str) -> S3Config {
    S3Config::new(raw)
        .clean_bucket(clean)
        .endpoint(S3_ENDPOINT)
        .credentials("test", secrecy::SecretString::from("test"))
        .region("us-east-1")
}

async fn lake(
    backend: Backend,
    configure: impl FnOnce(ObjectStoreSinkBuilder) -> ObjectStoreSinkBuilder,
) -> Lake {
    match backend {
        Backend::S3 => {
            let id = &Uuid::new_v4().simple().to_string()[..12];
            let (raw, clean) = (format!("hw-{id}-raw"), format!("hw-{id}-clean"));
            create_bucket(&raw).await;
            create_bucket(&clean).await;
            let config = s3_config(&raw, &clean);
            let sink = configure(config.sink_builder().expect("builder"))
                .build()
                .expect("sink");
            Lake {
                sink: Arc::new(sink),
                raw: config.store(&raw).expect("raw store"),
                clean: config.store(&clean).expect("clean store"),
                _dir: None,
            }
        }
        Backend::Local => {
            let dir = tempfile::tempdir().expect("tempdir");
            let sink = configure(ObjectStoreSink::local(dir.path()).expect("local"))
                .build()
                .expect("sink");
            let raw = sink.raw_store().clone();
            let clean = sink.clean_store().expect("clean layer").clone();
            Lake {
                sink: Arc::new(sink),
                raw,
                clean,
                _dir: Some(dir),
            }
        }
    }
}

/// Runs each named `async fn(Backend)` as two tests: `name::s3` and
/// `name::local`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$name(super::Backend::S3).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$name(super::Backend::Local).await
            }
        }
    )*};
}

on_both_backends!(
    a_crashed_runs_lease_expires_and_is_taken_over,
    raw_files_are_gzip_json_lines_at_the_documented_paths,
    parquet_files_have_typed_columns,
    a_resumed_sync_leaves_each_record_once,
    a_crash_after_an_upload_leaves_no_stray_part,
    large_parts_go_by_multipart_upload,
    hostile_names_are_kept_exactly,
    tenants_are_kept_apart,
    state_round_trips,
    incremental_syncs_extend_the_snapshot,
    columns_only_grow,
);
#[cfg(feature = "hubspot")]
on_both_backends!(the_engine_syncs_the_hubspot_fake_twice);

// ---------------------------------------------------------------------------
// Driving the sink as the engine does.

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn checkpoint(run: &Run, complete: bool) -> Checkpoint {
    Checkpoint::new(
        run.tenant.clone(),
        run.schema.name.clone(),
        run.sync_id,
        StreamState::new(json!({"page": run.pages})),
        complete,
        run.records,
        run.started_at,
        run.full_refresh,
    )
}

struct Run {
    tenant: String,
    schema: StreamSchema,
    sync_id: Uuid,
    started_at: DateTime<Utc>,
    full_refresh: bool,
    records: u64,
    pages: u64,
}

impl Run {
    /// `load_state` then `prepare`, resuming an unfinished sync.
    async fn start(sink: &dyn Sink, tenant: &str, schema: &StreamSchema) -> Run {
        Self::start_as(sink, tenant, schema, true).await
    }

    async fn start_as(
        sink: &dyn Sink,
        tenant: &str,
        schema: &StreamSchema,
        full_refresh: bool,
    ) -> Run {
        // A run before this one on the same instance that did not complete
        // crashed: abandoned, as the engine does, which frees its lease.
        sink.abandon(tenant, &schema.name).await.expect("abandon");
        let previous = sink
            .load_state(tenant, &schema.name)
            .await
            .expect("load_state");
        let resume = previous.filter(|cp| !cp.complete);
        let run = match &resume {
            Some(cp) => Run {
                tenant: tenant.to_owned(),
                schema: schema.clone(),
                sync_id: cp.sync_id,
                started_at: cp.started_at,
                full_refresh: cp.full_refresh,
                records: cp.records,
                pages: cp.state.0["page"].as_u64().expect("page"),
            },
            None => Run {
                tenant: tenant.to_owned(),
                schema: schema.clone(),
                sync_id: Uuid::new_v4(),
                started_at: Utc::now(),
                full_refresh,
                records: 0,
                pages: 0,
            },
        };
        let ctx = StreamContext::new(tenant, schema.clone(), run.sync_id, resume)
            .with_full_refresh(run.full_refresh);
        sink.prepare(&ctx).await.expect("prepare");
        run
    }

    async fn write(&mut self, sink: &dyn Sink, records: Vec<Record>) {
        self.records += records.len() as u64;
        self.pages += 1;
        let batch = Batch::new(
            self.tenant.clone(),
            self.schema.name.clone(),
            self.sync_id,
            Utc::now(),
            records,
        );
        sink.write(batch).await.expect("write");
    }

    async fn commit(&self, sink: &dyn Sink, complete: bool) -> Checkpoint {
        let cp = checkpoint(self, complete);
        sink.commit(&cp).await.expect("commit");
        cp
    }
}

/// A whole sync: one commit per page, and the final one.
async fn sync(sink: &dyn Sink, tenant: &str, schema: &StreamSchema, pages: Vec<Vec<Record>>) {
    let mut run = Run::start(sink, tenant, schema).await;
    for page in pages {
        run.write(sink, page).await;
        run.commit(sink, false).await;
    }
    run.commit(sink, true).await;
}

fn contacts_schema() -> StreamSchema {
    StreamSchema::new(
        "contacts",
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("email", FieldType::String),
            Field::new("employees", FieldType::Integer),
            Field::new("revenue", FieldType::Number),
            Field::new("subscribed", FieldType::Boolean),
            Field::new("birthday", FieldType::Date),
            Field::new("updatedAt", FieldType::Timestamp),
            Field::new("tags", FieldType::Json),
        ],
    )
}

fn contact(n: u64, version: u64) -> Record {
    Record::new(
        n.to_string(),
        obj(json!({
            "id": n.to_string(),
            "email": format!("c{n}@example.com"),
            "employees": n * 10 + version,
            "revenue": n as f64 + 0.5,
            "subscribed": n % 2 == 0,
            "birthday": format!("1990-01-{:02}", 1 + n % 28),
            "updatedAt": format!("2024-03-01T10:00:{:02}.123456Z", version % 60),
            "tags": ["crm", {"v": version}],
        })),
    )
}

fn page(from: u64, to: u64, version: u64) -> Vec<Record> {
    (from..to).map(|n| contact(n, version)).collect()
}

// ---------------------------------------------------------------------------
// Reading back.

async fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let prefix = Path::parse(prefix).expect("prefix");
    let mut out: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    out.sort();
    out
}

async fn exists(store: &Arc<dyn ObjectStore>, path: &str) -> bool {
    match store.head(&Path::parse(path).expect("path")).await {
        Ok(_) => true,
        Err(headwater::sinks::object_store::object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {path}: {e}"),
    }
}

async fn get(store: &Arc<dyn ObjectStore>, path: &str) -> Bytes {
    store
        .get(&Path::parse(path).expect("path"))
        .await
        .unwrap_or_else(|e| panic!("get {path}: {e}"))
        .bytes()
        .await
        .expect("bytes")
}

fn gunzip(bytes: &[u8]) -> String {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("gzip");
    text
}

async fn snapshot(lake: &Lake, tenant: &str, stream: &str) -> Snapshot {
    lake.sink
        .snapshot(tenant, stream)
        .await
        .expect("snapshot")
        .expect("a complete sync")
}

/// Every raw line of the snapshot's files, in reading order.
async fn snapshot_lines(lake: &Lake, snap: &Snapshot) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for f in snap.raw_files() {
        for v in lake.sink.read_raw(f).await.expect("read_raw") {
            out.push(obj(v));
        }
    }
    out
}

/// The current rows of a stream: the snapshot's raw lines, last per id.
async fn current_rows(
    lake: &Lake,
    tenant: &str,
    stream: &str,
) -> BTreeMap<String, Map<String, Value>> {
    let snap = snapshot(lake, tenant, stream).await;
    let mut rows = BTreeMap::new();
    for line in snapshot_lines(lake, &snap).await {
        let id = line["id"].as_str().expect("id").to_owned();
        rows.insert(id, line);
    }
    rows
}

fn read_parquet(bytes: Bytes) -> (arrow_schema::SchemaRef, Vec<RecordBatch>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
    let schema = builder.schema().clone();
    let batches = builder
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("batches");
    (schema, batches)
}

/// One cell of a Parquet column as JSON (timestamps as RFC 3339, dates as
/// `YYYY-MM-DD`).
fn cell(col: &dyn Array, row: usize) -> Value {
    if col.is_null(row) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Utf8 => json!(col.as_string::<i32>().value(row)),
        DataType::Int64 => json!(col.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => json!(col.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => json!(col.as_boolean().value(row)),
        DataType::Date32 => {
            let days = col.as_primitive::<Date32Type>().value(row);
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
            json!((epoch + chrono::Duration::days(days.into())).to_string())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let us = col.as_primitive::<TimestampMicrosecondType>().value(row);
            json!(DateTime::from_timestamp_micros(us)
                .expect("time")
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        }
        other => panic!("unexpected column type {other}"),
    }
}

/// Rows of Parquet batches as maps of column name to JSON.
fn parquet_rows(batches: &[RecordBatch]) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for b in batches {
        for row in 0..b.num_rows() {
            let mut m = Map::new();
            for (i, f) in b.schema().fields().iter().enumerate() {
                m.insert(f.name().clone(), cell(b.column(i).as_ref(), row));
            }
            out.push(m);
        }
    }
    out
}

/// The current typed rows: the snapshot's Parquet rows, last per id.
async fn current_typed_rows(
    lake: &Lake,
    tenant: &str,
    stream: &str,
) -> BTreeMap<String, Map<String, Value>> {
    let snap = snapshot(lake, tenant, stream).await;
    let mut rows = BTreeMap::new();
    for f in snap.clean_files() {
        let (_, batches) = read_parquet(get(&lake.clean, &f.path).await);
        for r in parquet_rows(&batches) {
            rows.insert(r["id"].as_str().expect("id").to_owned(), r);
        }
    }
    rows
}

fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

// ---------------------------------------------------------------------------
// The tests.

async fn raw_files_are_gzip_json_lines_at_the_documented_paths(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let schema = contacts_schema();
    let mut run = Run::start(sink, "acme", &schema).await;
    run.write(sink, page(0, 100, 1)).await;
    run.write(sink, page(100, 150, 1)).await;
    run.commit(sink, false).await;
    run.write(sink, page(150, 230, 1)).await;
    let done = run.commit(sink, true).await;

    let dt = day_of(run.started_at);
    let id = run.sync_id;
    let raw = list(&lake.raw, "raw/acme/contacts").await;
    assert_eq!(
        raw,
        [
            format!("raw/acme/contacts/_manifests/{id}.json"),
            "raw/acme/contacts/_snapshot.json".to_owned(),
            "raw/acme/contacts/_state.json".to_owned(),
            format!("raw/acme/contacts/dt={dt}/{id}-00000.jsonl.gz"),
            format!("raw/acme/contacts/dt={dt}/{id}-00001.jsonl.gz"),
        ]
    );
    let clean = list(&lake.clean, "clean/acme/contacts").await;
    assert_eq!(
        clean,
        [
            format!("clean/acme/contacts/_manifests/{id}.json"),
            "clean/acme/contacts/_snapshot.json".to_owned(),
            format!("clean/acme/contacts/dt={dt}/{id}-00000.parquet"),
            format!("clean/acme/contacts/dt={dt}/{id}-00001.parquet"),
        ]
    );

    // Part 0: the first commit's 150 records, gzip JSON Lines, metadata first.
    let text = gunzip(
        &get(
            &lake.raw,
            &format!("raw/acme/contacts/dt={dt}/{id}-00000.jsonl.gz"),
        )
        .await,
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 150);
    for (i, line) in lines.iter().enumerate() {
        let prefix =
            format!("{{\"_tenant_id\":\"acme\",\"_sync_id\":\"{id}\",\"_extracted_at\":\"");
        assert!(line.starts_with(&prefix), "{line}");
        let v: Value = serde_json::from_str(line).expect("json line");
        assert_eq!(v["_deleted"], json!(false));
        assert!(DateTime::parse_from_rfc3339(v["_extracted_at"].as_str().expect("at")).is_ok());
        let want = contact(i as u64, 1);
        for (k, val) in &want.data {
            assert_eq!(&v[k], val, "field {k} of line {i}");
        }
    }

    // The manifest lists both layers' files with counts and sizes.
    let m = lake
        .sink
        .manifest("acme", "contacts", id)
        .await
        .expect("manifest")
        .expect("some");
    assert!(m.complete && m.full_refresh);
    assert_eq!(m.records, 230);
    assert_eq!(
        m.raw.iter().map(|f| f.records).collect::<Vec<_>>(),
        [150, 80]
    );
    assert_eq!(
        m.clean.iter().map(|f| f.records).collect::<Vec<_>>(),
        [150, 80]
    );
    for f in &m.raw {
        let size = lake
            .raw
            .head(&Path::parse(&f.path).expect("p"))
            .await
            .expect("head")
            .size;
        assert_eq!(size, f.bytes, "{}", f.path);
    }
    for f in &m.clean {
        let size = lake
            .clean
            .head(&Path::parse(&f.path).expect("p"))
            .await
            .expect("head")
            .size;
        assert_eq!(size, f.bytes, "{}", f.path);
    }
    // The clean layer has the same manifest and snapshot.
    let clean_manifest: Value = serde_json::from_slice(
        &get(
            &lake.clean,
            &format!("clean/acme/contacts/_manifests/{id}.json"),
        )
        .await,
    )
    .expect("json");
    assert_eq!(clean_manifest, serde_json::to_value(&m).expect("json"));
    let snap = snapshot(&lake, "acme", "contacts").await;
    assert_eq!(snap.latest_sync_id, id);
    assert_eq!(snap.syncs, vec![m]);
    assert_eq!(
        sink.load_state("acme", "contacts").await.expect("state"),
        Some(done)
    );
    let stats = lake.sink.stats();
    assert_eq!(
        (stats.parts, stats.records, stats.nulled_values),
        (2, 230, 0)
    );
}

async fn parquet_files_have_typed_columns(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let schema = contacts_schema();
    let blank = Record::new(
        "blank",
        obj(
            json!({"id": "blank", "email": "", "employees": "", "revenue": "", "subscribed": "",
                   "birthday": "", "updatedAt": "", "tags": ""}),
        ),
    );
    let unfit = Record::new(
        "unfit",
        obj(
            json!({"id": "unfit", "email": 42, "employees": "12abc", "revenue": "n/a",
                   "subscribed": "maybe", "birthday": "2024-02-30", "updatedAt": "yesterday",
                   "tags": "plain text"}),
        ),
    );
    let strings = Record::new(
        "strings",
        obj(
            json!({"id": "strings", "email": "s@x.y", "employees": "7", "revenue": "2.5",
                   "subscribed": "TRUE", "birthday": "2024-03-01T00:00:00Z",
                   "updatedAt": "1709251200000", "tags": "[1,2]", "not_in_schema": "raw only"}),
        ),
    )
    .deleted(true);
    sync(
        sink,
        "acme",
        &schema,
        vec![vec![contact(1, 1), blank, unfit, strings]],
    )
    .await;

    let snap = snapshot(&lake, "acme", "contacts").await;
    let file = snap.clean_files().next().expect("a clean file").clone();
    assert_eq!(
        file.nulled_values, 5,
        "the unfit number, integer, boolean, date and timestamp"
    );
    assert_eq!(lake.sink.stats().nulled_values, 5);
    let (pq_schema, batches) = read_parquet(get(&lake.clean, &file.path).await);
    let types: Vec<(String, DataType, bool)> = pq_schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    assert_eq!(
        types,
        [
            ("_tenant_id".to_owned(), DataType::Utf8, false),
            ("_sync_id".to_owned(), DataType::Utf8, false),
            ("_extracted_at".to_owned(), utc.clone(), false),
            ("_deleted".to_owned(), DataType::Boolean, false),
            ("id".to_owned(), DataType::Utf8, true),
            ("email".to_owned(), DataType::Utf8, true),
            ("employees".to_owned(), DataType::Int64, true),
            ("revenue".to_owned(), DataType::Float64, true),
            ("subscribed".to_owned(), DataType::Boolean, true),
            ("birthday".to_owned(), DataType::Date32, true),
            ("updatedAt".to_owned(), utc, true),
            ("tags".to_owned(), DataType::Utf8, true),
        ]
    );
    assert_eq!(
        pq_schema
            .field_with_name("tags")
            .expect("tags")
            .metadata()
            .get("headwater.type"),
        Some(&"json".to_owned())
    );
    let rows: HashMap<String, Map<String, Value>> = parquet_rows(&batches)
        .into_iter()
        .map(|r| (r["id"].as_str().expect("id").to_owned(), r))
        .collect();
    let fields = |id: &str| -> Value {
        let mut r = rows[id].clone();
        for k in ["_tenant_id", "_sync_id", "_extracted_at"] {
            r.remove(k);
        }
        Value::Object(r)
    };
    assert_eq!(
        fields("1"),
        json!({"_deleted": false, "id": "1", "email": "c1@example.com", "employees": 11,
               "revenue": 1.5, "subscribed": false, "birthday": "1990-01-02",
               "updatedAt": "2024-03-01T10:00:01.123456Z", "tags": "[\"crm\",{\"v\":1}]"})
    );
    assert_eq!(
        fields("blank"),
        json!({"_deleted": false, "id": "blank", "email": "", "employees": null, "revenue": null,
               "subscribed": null, "birthday": null, "updatedAt": null, "tags": null})
    );
    assert_eq!(
        fields("unfit"),
        json!({"_deleted": false, "id": "unfit", "email": "42", "employees": null, "revenue": null,
               "subscribed": null, "birthday": null, "updatedAt": null, "tags": "\"plain text\""})
    );
    assert_eq!(
        fields("strings"),
        json!({"_deleted": true, "id": "strings", "email": "s@x.y", "employees": 7, "revenue": 2.5,
               "subscribed": true, "birthday": "2024-03-01",
               "updatedAt": "2024-03-01T00:00:00.000000Z", "tags": "[1,2]"})
    );
    let r1 = &rows["1"];
    assert_eq!(r1["_tenant_id"], json!("acme"));
    assert_eq!(r1["_sync_id"], json!(snap.latest_sync_id.to_string()));
    // The raw layer keeps the unfit values, and fields outside the schema.
    let raw = current_rows(&lake, "acme", "contacts").await;
    assert_eq!(raw["unfit"]["revenue"], json!("n/a"));
    assert_eq!(raw["strings"]["not_in_schema"], json!("raw only"));
    assert_eq!(raw["strings"]["_deleted"], json!(true));
    // Timestamps of the two layers agree.
    assert_eq!(
        DateTime::parse_from_rfc3339(raw["1"]["_extracted_at"].as_str().expect("t")).expect("t"),
        DateTime::parse_from_rfc3339(r1["_extracted_at"].as_str().expect("t")).expect("t"),
    );
}

/// A crash after two commits with pages written and not committed, then a
/// resume that rewrites the rest: every record exactly once across the
/// snapshot's files, and the directory holds exactly the manifest's files.
async fn a_resumed_sync_leaves_each_record_once(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let schema = contacts_schema();
    let mut run = Run::start(sink, "acme", &schema).await;
    for p in 0..7 {
        run.write(sink, page(p * 100, (p + 1) * 100, 1)).await;
        if p % 3 == 2 {
            run.commit(sink, false).await; // after pages 3 and 6
        }
    }
    // Page 7 is written and never committed: the process dies here.
    let committed = sink
        .load_state("acme", "contacts")
        .await
        .expect("state")
        .expect("cp");
    assert_eq!(committed.records, 600);

    let mut resumed = Run::start(sink, "acme", &schema).await;
    assert_eq!(resumed.sync_id, run.sync_id);
    assert_eq!(resumed.pages, 6);
    for p in 6..10 {
        resumed.write(sink, page(p * 100, (p + 1) * 100, 2)).await;
        if p == 7 {
            resumed.commit(sink, false).await;
        }
    }
    let done = resumed.commit(sink, true).await;
    assert_eq!(done.records, 1000);

    let snap = snapshot(&lake, "acme", "contacts").await;
    assert_eq!(snap.syncs.len(), 1);
    let m = &snap.syncs[0];
    assert_eq!(
        m.raw.iter().map(|f| f.part).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(m.records, 1000);
    let lines = snapshot_lines(&lake, &snap).await;
    let mut seen = HashSet::new();
    for l in &lines {
        assert!(
            seen.insert(l["id"].as_str().expect("id").to_owned()),
            "duplicate {}",
            l["id"]
        );
    }
    assert_eq!(seen.len(), 1000);
    let v2: usize = lines
        .iter()
        .filter(|l| l["employees"].as_u64().expect("n") % 10 == 2)
        .count();
    assert_eq!(v2, 400, "pages 6..10 come from the resumed run");
    let dt = day_of(run.started_at);
    let on_disk = list(&lake.raw, &format!("raw/acme/contacts/dt={dt}")).await;
    let listed: Vec<String> = m.raw.iter().map(|f| f.path.clone()).collect();
    assert_eq!(on_disk, listed);
    let on_disk = list(&lake.clean, &format!("clean/acme/contacts/dt={dt}")).await;
    let listed: Vec<String> = m.clean.iter().map(|f| f.path.clone()).collect();
    assert_eq!(on_disk, listed);
    let typed = current_typed_rows(&lake, "acme", "contacts").await;
    assert_eq!(typed.len(), 1000);
}

/// A crash after a part's upload (and manifest) but before its state: the
/// resumed run drops that part, and rewrites the same part name only if it
/// has records for it.
async fn a_crash_after_an_upload_leaves_no_stray_part(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let schema = contacts_schema();
    let state_path = Path::parse("raw/acme/contacts/_state.json").expect("path");
    let mut run = Run::start(sink, "acme", &schema).await;
    run.write(sink, page(0, 100, 1)).await;
    run.commit(sink, false).await;
    let before = get(&lake.raw, state_path.as_ref()).await;
    run.write(sink, page(100, 300, 1)).await;
    run.commit(sink, false).await;
    // Undo the state write: the crash came between the upload and the state.
    lake.raw.put(&state_path, before.into()).await.expect("put");
    let dt = day_of(run.started_at);
    let part1 = format!("raw/acme/contacts/dt={dt}/{}-00001.jsonl.gz", run.sync_id);
    assert!(exists(&lake.raw, &part1).await, "part 1 was uploaded");

    // The source has no more records after the checkpoint (they were deleted
    // at the provider): the resumed run completes at once.
    let resumed = Run::start(sink, "acme", &schema).await;
    assert_eq!(resumed.pages, 1);
    assert!(
        !exists(&lake.raw, &part1).await,
        "the uncommitted part is gone"
    );
    let manifest = lake
        .sink
        .manifest("acme", "contacts", run.sync_id)
        .await
        .expect("manifest")
        .expect("some");
    assert_eq!(
        manifest.raw.len(),
        1,
        "the manifest lists committed parts only"
    );
    resumed.commit(sink, true).await;
    let rows = current_rows(&lake, "acme", "contacts").await;
    assert_eq!(rows.len(), 100);
    let parquet = list(&lake.clean, &format!("clean/acme/contacts/dt={dt}")).await;
    assert_eq!(parquet.len(), 1, "{parquet:?}");

    // A sync whose only commit had no records (no partition yet) resumes too.
    let deals = StreamSchema::new("deals", "id", vec![Field::new("id", FieldType::String)]);
    let first = Run::start(sink, "acme", &deals).await;
    first.commit(sink, false).await;
    let mut again = Run::start(sink, "acme", &deals).await;
    assert_eq!(again.sync_id, first.sync_id);
    again.write(sink, page(0, 3, 1)).await;
    again.commit(sink, true).await;
    assert_eq!(current_rows(&lake, "acme", "deals").await.len(), 3);
}

async fn large_parts_go_by_multipart_upload(backend: Backend) {
    use base64::Engine as _;
    use rand::RngCore as _;
    const MIB: usize = 1024 * 1024;
    let lake = lake(backend, |b| {
        b.multipart_threshold(MIB)
            .multipart_part_size(5 * MIB)
            .gzip_level(1)
    })
    .await;
    let sink = lake.sink.as_ref();
    let schema = StreamSchema::new(
        "blobs",
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("blob", FieldType::String),
        ],
    );
    // About 8 MiB of base64 of random bytes: about 6 MiB gzip, so the raw
    // file goes in two pieces (5 MiB, then the rest), the Parquet one in two.
    let mut rng = rand::thread_rng();
    let records: Vec<Record> = (0..2_000)
        .map(|n| {
            let mut bytes = vec![0u8; 3 * 1024];
            rng.fill_bytes(&mut bytes);
            let blob = base64::engine::general_purpose::STANDARD.encode(&bytes);
            Record::new(
                n.to_string(),
                obj(json!({"id": n.to_string(), "blob": blob})),
            )
        })
        .collect();
    sync(sink, "acme", &schema, vec![records.clone()]).await;

    let stats = lake.sink.stats();
    assert_eq!(stats.multipart_uploads, 2, "{stats:?}");
    assert!(stats.raw_bytes > 5 * MIB as u64, "{stats:?}");
    let snap = snapshot(&lake, "acme", "blobs").await;
    let raw = &snap.syncs[0].raw[0];
    if matches!(backend, Backend::S3) {
        // S3 gives a multipart object an ETag of the form "{md5}-{pieces}".
        for (store, f) in [(&lake.raw, raw), (&lake.clean, &snap.syncs[0].clean[0])] {
            let head = store
                .head(&Path::parse(&f.path).expect("p"))
                .await
                .expect("head");
            let etag = head.e_tag.unwrap_or_default();
            assert!(
                etag.trim_matches('"').ends_with("-2"),
                "{}: ETag {etag}",
                f.path
            );
        }
    }
    let lines = lake.sink.read_raw(raw).await.expect("read");
    assert_eq!(lines.len(), 2_000);
    for (line, r) in lines.iter().zip(&records) {
        assert_eq!(line["blob"], r.data["blob"]);
    }
    let typed = current_typed_rows(&lake, "acme", "blobs").await;
    assert_eq!(typed.len(), 2_000);
    assert_eq!(typed["1999"]["blob"], records[1999].data["blob"]);
}

async fn hostile_names_are_kept_exactly(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let long = format!("{}_end", "p".repeat(196));
    let names: Vec<String> = [
        "x\"; drop table deals; --",
        "semi;colon;",
        "it's",
        "naïve ünïcödé 名前 🚀",
        "dot.ted",
        "with space",
        "Email",
        "email",
        "back\\slash",
        "%percent",
        "select",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long.clone(), "é".repeat(200)])
    .collect();
    let mut fields = vec![Field::new("id", FieldType::String)];
    fields.extend(
        names
            .iter()
            .map(|n| Field::new(n.clone(), FieldType::String)),
    );
    fields.push(Field::new("quo\"ted; int", FieldType::Integer));
    let tenant = "t'; drop table x; -- Ünï/../..";
    let stream = "order \"x\"; drop table deals; -- 名前";
    let schema = StreamSchema::new(stream, "id", fields);
    let records: Vec<Record> = (0..3u64)
        .map(|n| {
            let mut data = Map::new();
            data.insert("id".into(), json!(n.to_string()));
            for (i, name) in names.iter().enumerate() {
                data.insert(name.clone(), json!(format!("{n}:{i}:{name}")));
            }
            data.insert("quo\"ted; int".into(), json!(n));
            Record::new(n.to_string(), data)
        })
        .collect();
    sync(sink, tenant, &schema, vec![records.clone()]).await;

    // Tenant and stream are one path segment each, inside the prefix.
    let raw = list(&lake.raw, "").await;
    let clean = list(&lake.clean, "").await;
    let all: HashSet<&String> = raw.iter().chain(&clean).collect();
    assert_eq!(all.len(), 7, "{all:#?}");
    for p in all {
        let rest = p
            .strip_prefix("raw/")
            .or_else(|| p.strip_prefix("clean/"))
            .unwrap_or_else(|| panic!("{p} is outside the prefixes"));
        assert!(
            rest.starts_with(
                "t'; drop table x; -- %C3%9Cn%C3%AF%2F..%2F../order %22x%22; drop table deals; -- %E5%90%8D%E5%89%8D/"
            ),
            "{p}"
        );
    }
    // Raw lines keep every name and value.
    let rows = current_rows(&lake, tenant, stream).await;
    for r in &records {
        for (k, v) in &r.data {
            assert_eq!(rows[&r.id].get(k), Some(v), "field {k:?}");
        }
        assert_eq!(rows[&r.id]["_tenant_id"], json!(tenant));
    }
    // Parquet columns are named exactly as the fields.
    let snap = snapshot(&lake, tenant, stream).await;
    let f = snap.clean_files().next().expect("file");
    let (pq_schema, batches) = read_parquet(get(&lake.clean, &f.path).await);
    let columns: Vec<&str> = pq_schema
        .fields()
        .iter()
        .skip(4)
        .map(|f| f.name().as_str())
        .collect();
    let want: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(columns, want);
    let typed = parquet_rows(&batches);
    for (row, r) in typed.iter().zip(&records) {
        for (k, v) in &r.data {
            assert_eq!(row.get(k), Some(v), "column {k:?}");
        }
    }
}

async fn tenants_are_kept_apart(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let schema = contacts_schema();
    sync(sink, "acme", &schema, vec![page(0, 50, 1)]).await;
    sync(sink, "ACME", &schema, vec![page(25, 80, 2)]).await;
    // acme syncs again, and crashes in a third run.
    sync(sink, "acme", &schema, vec![page(0, 10, 3)]).await;
    let mut crashed = Run::start(sink, "acme", &schema).await;
    crashed.write(sink, page(0, 100, 9)).await;

    let a = current_rows(&lake, "acme", "contacts").await;
    let b = current_rows(&lake, "ACME", "contacts").await;
    assert_eq!(a.len(), 10);
    assert!(a
        .values()
        .all(|r| r["_tenant_id"] == "acme" && r["employees"].as_u64().expect("n") % 10 == 3));
    assert_eq!(b.len(), 55);
    assert!(b
        .values()
        .all(|r| r["_tenant_id"] == "ACME" && r["employees"].as_u64().expect("n") % 10 == 2));
    let ta = current_typed_rows(&lake, "acme", "contacts").await;
    assert!(ta.values().all(|r| r["_tenant_id"] == "acme"));
    for p in list(&lake.raw, "raw/ACME").await {
        assert!(p.starts_with("raw/ACME/contacts/"), "{p}");
    }
    let sa = sink
        .load_state("acme", "contacts")
        .await
        .expect("s")
        .expect("s");
    let sb = sink
        .load_state("ACME", "contacts")
        .await
        .expect("s")
        .expect("s");
    assert_ne!(sa.sync_id, sb.sync_id);
    assert_eq!((sa.tenant.as_str(), sb.tenant.as_str()), ("acme", "ACME"));
}

async fn state_round_trips(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let schema = contacts_schema();
    assert_eq!(
        sink.load_state("acme", "contacts").await.expect("state"),
        None
    );
    let mut run = Run::start(sink, "acme", &schema).await;
    run.write(sink, page(0, 5, 1)).await;
    let mut cp = checkpoint(&run, false);
    cp.state = StreamState::new(json!({
        "after": "x\"; drop table deals; --",
        "big": 12_345_678_901_234_567u64,
        "half": 0.5,
        "unicode": "名前 🚀",
        "list": [1, null, true, {"empty": {}}],
    }));
    sink.commit(&cp).await.expect("commit");
    assert_eq!(
        sink.load_state("acme", "contacts").await.expect("state"),
        Some(cp)
    );
    run.write(sink, page(5, 10, 1)).await;
    let done = run.commit(sink, true).await;
    assert_eq!(
        sink.load_state("acme", "contacts").await.expect("state"),
        Some(done.clone())
    );
    assert_eq!(
        sink.load_state("other", "contacts").await.expect("state"),
        None
    );
    assert_eq!(sink.load_state("acme", "deals").await.expect("state"), None);
    // A new run prepares: the committed state stays until it commits, and a
    // fresh sink instance on the same storage reads it too.
    let _next = Run::start(sink, "acme", &schema).await;
    assert_eq!(
        sink.load_state("acme", "contacts").await.expect("state"),
        Some(done.clone())
    );
    let again = ObjectStoreSink::builder()
        .store(lake.raw.clone())
        .clean_store(lake.clean.clone())
        .build()
        .expect("sink");
    assert_eq!(
        again.load_state("acme", "contacts").await.expect("state"),
        Some(done)
    );
}

async fn incremental_syncs_extend_the_snapshot(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let schema = contacts_schema();
    sync(sink, "acme", &schema, vec![page(0, 10, 1)]).await;
    let full = snapshot(&lake, "acme", "contacts").await;

    // Changes: 2 updated, 3 archived, 10 new.
    let mut run = Run::start_as(sink, "acme", &schema, false).await;
    run.write(
        sink,
        vec![contact(2, 2), contact(3, 1).deleted(true), contact(10, 1)],
    )
    .await;
    let cp = run.commit(sink, true).await;
    assert!(!cp.full_refresh);
    let snap = snapshot(&lake, "acme", "contacts").await;
    assert_eq!(snap.syncs.len(), 2);
    assert_eq!(snap.syncs[0], full.syncs[0]);
    assert!(!snap.syncs[1].full_refresh);
    assert_eq!(snap.latest_sync_id, run.sync_id);
    let rows = current_rows(&lake, "acme", "contacts").await;
    assert_eq!(rows.len(), 11);
    assert_eq!(rows["2"]["employees"], json!(22));
    assert_eq!(rows["2"]["_sync_id"], json!(run.sync_id.to_string()));
    assert_eq!(rows["3"]["_deleted"], json!(true));
    assert_eq!(
        rows["4"]["_sync_id"],
        json!(full.latest_sync_id.to_string())
    );
    let typed = current_typed_rows(&lake, "acme", "contacts").await;
    assert_eq!(typed["2"]["employees"], json!(22));
    assert_eq!(typed["3"]["_deleted"], json!(true));

    // An incremental sync without changes writes no file and keeps the list.
    let quiet = Run::start_as(sink, "acme", &schema, false).await;
    quiet.commit(sink, true).await;
    let after = snapshot(&lake, "acme", "contacts").await;
    assert_eq!(after.syncs, snap.syncs);
    assert_eq!(after.latest_sync_id, quiet.sync_id);

    // A full refresh replaces the list; an empty one still has its files.
    sync(sink, "acme", &schema, vec![]).await;
    let empty = snapshot(&lake, "acme", "contacts").await;
    assert_eq!(empty.syncs.len(), 1);
    assert_eq!(empty.syncs[0].raw.len(), 1);
    assert_eq!(empty.syncs[0].clean.len(), 1);
    assert!(current_rows(&lake, "acme", "contacts").await.is_empty());
    let (pq_schema, _) = read_parquet(get(&lake.clean, &empty.syncs[0].clean[0].path).await);
    assert_eq!(pq_schema.fields().len(), 4 + schema.fields.len());
}

async fn columns_only_grow(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let sink = lake.sink.as_ref();
    let s1 = StreamSchema::new(
        "evolve",
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("count", FieldType::Integer),
            Field::new("gone", FieldType::Boolean),
        ],
    );
    let rec = |n: u64, extra: Value| {
        let mut data = obj(json!({"id": n.to_string()}));
        data.extend(obj(extra));
        Record::new(n.to_string(), data)
    };
    sync(
        sink,
        "acme",
        &s1,
        vec![vec![rec(1, json!({"count": 1, "gone": true}))]],
    )
    .await;
    let s2 = StreamSchema::new(
        "evolve",
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("count", FieldType::String),
            Field::new("added", FieldType::Date),
        ],
    );
    sync(
        sink,
        "acme",
        &s2,
        vec![vec![
            rec(2, json!({"count": "seven", "added": "2024-03-01"})),
            rec(3, json!({"count": "8"})),
        ]],
    )
    .await;
    let snap = snapshot(&lake, "acme", "evolve").await;
    let (pq_schema, batches) = read_parquet(get(&lake.clean, &snap.syncs[0].clean[0].path).await);
    let cols: Vec<(String, DataType)> = pq_schema
        .fields()
        .iter()
        .skip(4)
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(
        cols,
        [
            ("id".to_owned(), DataType::Utf8),
            ("count".to_owned(), DataType::Int64),
            ("gone".to_owned(), DataType::Boolean),
            ("added".to_owned(), DataType::Date32),
        ]
    );
    let rows = parquet_rows(&batches);
    assert_eq!(
        rows[0]["count"],
        Value::Null,
        "\"seven\" does not fit the Int64 column"
    );
    assert_eq!(rows[1]["count"], json!(8));
    assert_eq!(rows[0]["added"], json!("2024-03-01"));
    assert_eq!(rows[0]["gone"], Value::Null);
    assert_eq!(snap.syncs[0].clean[0].nulled_values, 1);
    let raw = current_rows(&lake, "acme", "evolve").await;
    assert_eq!(raw["2"]["count"], json!("seven"));
}

#[cfg(feature = "hubspot")]
async fn the_engine_syncs_the_hubspot_fake_twice(backend: Backend) {
    use headwater::http::{Limits, RetryConfig};
    use headwater::hubspot::{HubSpot, HubSpotSource};
    use headwater::sync::Sync;
    use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};

    let mut config = FakeConfig::default();
    config.objects.insert(
        "contacts".into(),
        ObjectSeed {
            count: 730,
            archived: 12,
        },
    );
    let fake = HubSpotFake::start(config).await;
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
    let source = Arc::new(HubSpotSource::new(hs));
    let lake = lake(backend, |b| b).await;
    let mut truth: HashSet<String> = fake.ids("contacts", false).into_iter().collect();
    truth.extend(fake.ids("contacts", true));
    for run in 0..2 {
        let report = Sync::new(source.clone(), lake.sink.clone())
            .tenant("hub-1")
            .streams(["contacts", "owners"])
            .checkpoint_every(3)
            .run()
            .await;
        assert!(report.is_success(), "run {run}: {report:#?}");
        let rows = current_rows(&lake, "hub-1", "contacts").await;
        let ids: HashSet<String> = rows.keys().cloned().collect();
        assert_eq!(ids, truth, "run {run}");
        let archived = rows
            .values()
            .filter(|r| r["_deleted"] == json!(true))
            .count();
        assert_eq!(archived, 12, "run {run}");
        let snap = snapshot(&lake, "hub-1", "contacts").await;
        let lines = snapshot_lines(&lake, &snap).await;
        if run == 0 {
            assert_eq!(
                lines.len(),
                truth.len(),
                "a full sync writes each record once"
            );
        }
        let typed = current_typed_rows(&lake, "hub-1", "contacts").await;
        assert_eq!(typed.len(), truth.len());
    }
}

// ---------------------------------------------------------------------------
// The shared conformance suite.

/// Reads an [`ObjectStoreSink`]'s current contents the way a reader should:
/// the files its snapshot lists, in order, the last version of each id
/// winning (raw layer for `rows`, Parquet for `typed_rows` and `columns`).
struct LakeInspector {
    sink: Arc<ObjectStoreSink>,
    clean: Arc<dyn ObjectStore>,
}

fn last_per_id(rows: impl IntoIterator<Item = Map<String, Value>>) -> Vec<Map<String, Value>> {
    let mut out: Vec<Map<String, Value>> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let id = row.get("id").map(|v| v.to_string()).unwrap_or_default();
        match at.get(&id) {
            Some(i) => out[*i] = row,
            None => {
                at.insert(id, out.len());
                out.push(row);
            }
        }
    }
    out
}

#[async_trait::async_trait]
impl SinkInspector for LakeInspector {
    async fn rows(&self, tenant: &str, stream: &str) -> headwater::Result<Vec<Map<String, Value>>> {
        let Some(snap) = self.sink.snapshot(tenant, stream).await? else {
            return Ok(Vec::new());
        };
        let mut lines = Vec::new();
        for f in snap.raw_files() {
            lines.extend(self.sink.read_raw(f).await?.into_iter().map(obj));
        }
        Ok(last_per_id(lines))
    }

    async fn columns(&self, tenant: &str, stream: &str) -> headwater::Result<Vec<String>> {
        // Columns only grow: the last Parquet file has them all.
        let Some(snap) = self.sink.snapshot(tenant, stream).await? else {
            return Ok(Vec::new());
        };
        let Some(last) = snap.clean_files().last() else {
            return Ok(Vec::new());
        };
        let (schema, _) = read_parquet(get(&self.clean, &last.path).await);
        Ok(schema.fields().iter().map(|f| f.name().clone()).collect())
    }

    async fn typed_rows(
        &self,
        tenant: &str,
        stream: &str,
    ) -> headwater::Result<Vec<Map<String, Value>>> {
        let Some(snap) = self.sink.snapshot(tenant, stream).await? else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        for f in snap.clean_files() {
            let (schema, batches) = read_parquet(get(&self.clean, &f.path).await);
            let json_columns: Vec<&String> = schema
                .fields()
                .iter()
                .filter(|f| f.metadata().get("headwater.type").map(String::as_str) == Some("json"))
                .map(|f| f.name())
                .collect();
            for mut row in parquet_rows(&batches) {
                // A JSON column holds JSON text: read it back as JSON.
                for c in &json_columns {
                    if let Some(Value::String(text)) = row.get(c.as_str()) {
                        let v = serde_json::from_str(text).expect("a JSON column holds JSON");
                        row.insert((*c).clone(), v);
                    }
                }
                rows.push(row);
            }
        }
        Ok(last_per_id(rows))
    }
}

fn caps() -> Capabilities {
    Capabilities::default()
        .typed_columns(true)
        .publishes_on_complete(true)
        .lists_live_ids(true)
}

async fn passes_the_conformance_suite(backend: Backend) {
    let lake = lake(backend, |b| b).await;
    let inspector = LakeInspector {
        sink: lake.sink.clone(),
        clean: lake.clean.clone(),
    };
    if let Err(e) = sink_suite::run_all(lake.sink.as_ref(), &inspector, &caps()).await {
        panic!("{e}");
    }
}

on_both_backends!(passes_the_conformance_suite);

/// A run killed with its process leaves its lease object behind: another
/// process (another sink on the same bucket) is refused while it lasts,
/// and takes it over once it expired; then the resumed run completes.
async fn a_crashed_runs_lease_expires_and_is_taken_over(backend: Backend) {
    let ttl = std::time::Duration::from_secs(1);
    let lake = lake(backend, |b| b.lease_ttl(ttl)).await;
    let schema = contacts_schema();
    // The crashed process: prepared, committed a page, never finished.
    let mut run = Run::start(lake.sink.as_ref(), "acme", &schema).await;
    run.write(lake.sink.as_ref(), page(0, 100, 1)).await;
    run.commit(lake.sink.as_ref(), false).await;
    // Another process on the same bucket.
    let builder = ObjectStoreSink::builder()
        .store(lake.raw.clone())
        .clean_store(lake.clean.clone());
    let other = builder.lease_ttl(ttl).build().expect("sink");
    let resume = other
        .load_state("acme", "contacts")
        .await
        .expect("load_state")
        .filter(|cp| !cp.complete);
    let ctx = StreamContext::new("acme", schema.clone(), run.sync_id, resume.clone());
    let refused = other.prepare(&ctx).await;
    assert!(matches!(&refused, Err(e) if e.is_busy()), "{refused:?}");
    // Wait for the lease to expire (the crashed run never renews it).
    tokio::time::sleep(ttl + std::time::Duration::from_millis(200)).await;
    other
        .prepare(&ctx)
        .await
        .expect("prepare after the lease expired");
    // The crashed run's own instance has lost it: its next commit fails.
    run.write(lake.sink.as_ref(), page(100, 200, 1)).await;
    let lost = lake.sink.commit(&checkpoint(&run, false)).await;
    assert!(matches!(&lost, Err(e) if e.is_busy()), "{lost:?}");
    let mut resumed = Run {
        pages: 1,
        records: 100,
        ..run
    };
    resumed.write(&other, page(100, 200, 2)).await;
    resumed.commit(&other, true).await;
    let rows = current_rows(&lake, "acme", "contacts").await;
    assert_eq!(rows.len(), 200);
}
