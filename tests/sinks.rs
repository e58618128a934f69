//! Every sink against the conformance suite (`headwater::testkit::sink_suite`)
//! on its real server, and what is particular to each.
//!
//! Postgres is reached at `DATABASE_URL`, by default
//! `postgres://postgres:postgres@127.0.0.1:5432/test`, the server that
//! `scripts/test-services.sh` starts (CI runs it). Each Postgres test works in
//! a fresh schema `hw_test_<random>`, dropped at the end. An unreachable
//! server fails the tests: they never skip.
#![cfg(all(feature = "files", feature = "testkit"))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use headwater::sinks::files::FilesSink;
use headwater::testkit::sink_suite::{self, Capabilities, SinkInspector, META_KEYS};
use headwater::{Error, Result};
use serde_json::{Map, Value};

/// Reads a [`FilesSink`]'s directory: the last complete snapshot
/// (`.jsonl`), or before the first one completes, the committed part of
/// `.jsonl.partial`; the last line of each id wins.
struct FilesInspector {
    sink: Arc<FilesSink>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Sink {
        sink: "files-inspector",
        message: what,
        source: Some(Box::new(e)),
    }
}

impl FilesInspector {
    fn lines(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
        let data = self.sink.data_path(tenant, stream);
        let text: Vec<u8> = if data.exists() {
            std::fs::read(&data).map_err(io(format!("cannot read {}", data.display())))?
        } else {
            let partial = PathBuf::from(format!("{}.partial", data.display()));
            let state = data.with_extension("state.json");
            if !partial.exists() || !state.exists() {
                return Ok(Vec::new());
            }
            let state: Value = serde_json::from_slice(
                &std::fs::read(&state).map_err(io(format!("cannot read {}", state.display())))?,
            )
            .map_err(|e| Error::Config(format!("bad state file: {e}")))?;
            let len = state["partial_len"].as_u64().unwrap_or(0) as usize;
            let mut bytes = std::fs::read(&partial)
                .map_err(io(format!("cannot read {}", partial.display())))?;
            bytes.truncate(len);
            bytes
        };
        let text = String::from_utf8(text).map_err(|e| Error::Sink {
            sink: "files-inspector",
            message: format!("{} is not UTF-8", data.display()),
            source: Some(Box::new(e)),
        })?;
        let mut out: Vec<Map<String, Value>> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let row: Map<String, Value> = serde_json::from_str(line).map_err(|e| Error::Sink {
                sink: "files-inspector",
                message: format!(
                    "{} line {}: not a JSON object: {:?}",
                    data.display(),
                    n + 1,
                    line.chars().take(80).collect::<String>()
                ),
                source: Some(Box::new(e)),
            })?;
            let id = row.get("id").map(|v| v.to_string()).unwrap_or_default();
            match at.get(&id) {
                Some(i) => out[*i] = row,
                None => {
                    at.insert(id, out.len());
                    out.push(row);
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl SinkInspector for FilesInspector {
    async fn rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
        self.lines(tenant, stream)
    }

    async fn columns(&self, tenant: &str, stream: &str) -> Result<Vec<String>> {
        let mut cols: Vec<String> = self
            .lines(tenant, stream)?
            .into_iter()
            .flat_map(|r| r.into_iter().map(|(k, _)| k))
            .filter(|k| !META_KEYS.contains(&k.as_str()))
            .collect();
        cols.sort();
        cols.dedup();
        Ok(cols)
    }
}

fn files_sink() -> (tempfile::TempDir, Arc<FilesSink>, FilesInspector) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let inspector = FilesInspector { sink: sink.clone() };
    (dir, sink, inspector)
}

/// The files sink publishes a snapshot when a run completes, and keeps values
/// as the source typed them (no typed columns).
fn files_caps() -> Capabilities {
    Capabilities::default()
        .publishes_on_complete(true)
        .lists_live_ids(true)
}

/// Every check, `crash_then_resume` included: it re-runs a failed stream on
/// the same instance, so `FilesSink::prepare` must drop the failed run's
/// buffered, uncommitted records unwritten rather than flush them after the
/// truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_sink_passes_the_conformance_suite() {
    let (_dir, sink, inspector) = files_sink();
    if let Err(e) = sink_suite::run(
        sink.as_ref(),
        &inspector,
        &files_caps(),
        &sink_suite::CHECKS,
    )
    .await
    {
        panic!("{e}");
    }
}

/// A run that delivers a record twice (HubSpot lists a record archived
/// during the sync among the live ones, then among the archived) leaves one
/// line for it, its last, in a full refresh and in an incremental run.
#[tokio::test]
async fn files_sink_keeps_one_line_per_record_when_a_run_repeats_one() {
    use headwater::schema::{Field, FieldType, StreamSchema};
    use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
    use headwater::source::{Record, StreamState};
    use serde_json::json;

    let (_dir, sink, _) = files_sink();
    let schema = StreamSchema::new(
        "things",
        "id",
        vec![
            Field::new("id", FieldType::String),
            Field::new("v", FieldType::Integer),
        ],
    );
    let rec = |id: u32, v: u32| {
        let data = json!({"id": id.to_string(), "v": v});
        Record::new(
            id.to_string(),
            data.as_object().cloned().unwrap_or_default(),
        )
    };
    let run = |pages: Vec<Vec<Record>>, full: bool| {
        let sink = sink.clone();
        let schema = schema.clone();
        async move {
            let id = uuid::Uuid::new_v4();
            let ctx = StreamContext::new("t", schema, id, None).with_full_refresh(full);
            sink.prepare(&ctx).await.expect("prepare");
            for page in pages {
                let batch = Batch::new("t", "things", id, chrono::Utc::now(), page);
                sink.write(batch).await.expect("write");
            }
            let state = StreamState(json!({}));
            let cp = Checkpoint::new("t", "things", id, state, true, 0, chrono::Utc::now(), full);
            sink.commit(&cp).await.expect("commit");
        }
    };
    let lines = || -> Vec<(String, u64, bool)> {
        let text = std::fs::read_to_string(sink.data_path("t", "things")).expect("snapshot");
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("json");
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                (id, v["v"].as_u64().unwrap_or(0), v["_deleted"] == true)
            })
            .collect()
    };
    run(
        vec![
            vec![rec(1, 1), rec(2, 1), rec(3, 1)],
            vec![rec(2, 2).deleted(true)],
        ],
        true,
    )
    .await;
    let mut got = lines();
    got.sort();
    let want = [("1", 1, false), ("2", 2, true), ("3", 1, false)];
    let want: Vec<(String, u64, bool)> = want.map(|(i, v, d)| (i.to_owned(), v, d)).into();
    assert_eq!(got, want);

    // Changes that repeat a record: merged, the last version once.
    run(vec![vec![rec(3, 2)], vec![rec(3, 3), rec(4, 1)]], false).await;
    let mut got = lines();
    got.sort();
    let want = [
        ("1", 1, false),
        ("2", 2, true),
        ("3", 3, false),
        ("4", 1, false),
    ];
    let want: Vec<(String, u64, bool)> = want.map(|(i, v, d)| (i.to_owned(), v, d)).into();
    assert_eq!(got, want);
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::future::Future;
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt;
    use headwater::schema::{Field, FieldType, StreamSchema};
    use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
    use headwater::sinks::postgres::PostgresSink;
    use headwater::source::{Record, StreamState};
    use serde_json::json;
    use tokio_postgres::NoTls;
    use uuid::Uuid;

    use super::*;

    const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";

    fn url() -> String {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned())
    }

    async fn client() -> tokio_postgres::Client {
        let url = url();
        let (client, conn) = match tokio_postgres::connect(&url, NoTls).await {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot reach Postgres at DATABASE_URL or {DEFAULT_URL} ({e}): \
                 start it with scripts/test-services.sh (CI runs it)"
            ),
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// A sink in a fresh schema, and a plain client to look at it.
    struct Pg {
        sink: Arc<PostgresSink>,
        client: tokio_postgres::Client,
        schema: String,
    }

    /// Runs `f` against a fresh schema, dropped afterwards whatever happens.
    async fn with_pg<F, Fut>(f: F)
    where
        F: FnOnce(Arc<Pg>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let schema = format!("hw_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let client = client().await;
        let sink = match PostgresSink::builder()
            .url(url())
            .schema(&schema)
            .build()
            .await
        {
            Ok(s) => Arc::new(s),
            Err(e) => panic!(
                "cannot open the Postgres sink at DATABASE_URL or {DEFAULT_URL} ({e}): \
                 start Postgres with scripts/test-services.sh (CI runs it)"
            ),
        };
        let pg = Arc::new(Pg {
            sink,
            client,
            schema: schema.clone(),
        });
        let result = AssertUnwindSafe(f(pg.clone())).catch_unwind().await;
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        if let Err(e) = pg.client.batch_execute(&drop).await {
            eprintln!("could not drop schema {schema}: {e}");
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// Reads the sink's tables with plain SQL, through the mapping tables.
    struct PgInspector {
        pg: Arc<Pg>,
    }

    impl Pg {
        fn q(&self, name: &str) -> String {
            format!(
                "\"{}\".\"{}\"",
                self.schema.replace('"', "\"\""),
                name.replace('"', "\"\"")
            )
        }

        async fn table(&self, stream: &str) -> Option<String> {
            self.client
                .query_opt(
                    &format!(
                        "SELECT table_name FROM {} WHERE stream = $1",
                        self.q("_headwater_streams")
                    ),
                    &[&stream],
                )
                .await
                .expect("streams table")
                .map(|r| r.get(0))
        }

        /// column name -> field name
        async fn mapping(&self, stream: &str) -> HashMap<String, String> {
            self.client
                .query(
                    &format!(
                        "SELECT column_name, field_name FROM {} WHERE stream = $1",
                        self.q("_headwater_columns")
                    ),
                    &[&stream],
                )
                .await
                .expect("columns table")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }
    }

    fn sql_err(e: tokio_postgres::Error) -> Error {
        Error::Sink {
            sink: "postgres-inspector",
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    #[async_trait]
    impl SinkInspector for PgInspector {
        async fn rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
            let Some(table) = self.pg.table(stream).await else {
                return Ok(Vec::new());
            };
            let rows = self
                .pg
                .client
                .query(
                    &format!(
                        "SELECT _record, _tenant_id, _sync_id, _extracted_at, _deleted FROM {} WHERE _tenant_id = $1",
                        self.pg.q(&table)
                    ),
                    &[&tenant],
                )
                .await
                .map_err(sql_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let mut m = match r.get::<_, Value>(0) {
                        Value::Object(m) => m,
                        other => Map::from_iter([("_record".to_owned(), other)]),
                    };
                    m.insert("_tenant_id".into(), json!(r.get::<_, String>(1)));
                    m.insert("_sync_id".into(), json!(r.get::<_, Uuid>(2).to_string()));
                    let at: chrono::DateTime<chrono::Utc> = r.get(3);
                    m.insert(
                        "_extracted_at".into(),
                        json!(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                    );
                    m.insert("_deleted".into(), json!(r.get::<_, bool>(4)));
                    m
                })
                .collect())
        }

        async fn columns(&self, _tenant: &str, stream: &str) -> Result<Vec<String>> {
            let Some(table) = self.pg.table(stream).await else {
                return Ok(Vec::new());
            };
            // Fields whose mapped column really exists in the table.
            let rows = self
                .pg
                .client
                .query(
                    &format!(
                        "SELECT m.field_name FROM {} m JOIN pg_attribute a \
                         ON a.attrelid = $2::text::regclass AND a.attname = m.column_name \
                         AND a.attnum > 0 AND NOT a.attisdropped WHERE m.stream = $1",
                        self.pg.q("_headwater_columns")
                    ),
                    &[&stream, &self.pg.q(&table)],
                )
                .await
                .map_err(sql_err)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }

        async fn typed_rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
            let Some(table) = self.pg.table(stream).await else {
                return Ok(Vec::new());
            };
            let mapping = self.pg.mapping(stream).await;
            let rows = self
                .pg
                .client
                .query(
                    &format!(
                        "SELECT to_jsonb(t) FROM {} t WHERE _tenant_id = $1",
                        self.pg.q(&table)
                    ),
                    &[&tenant],
                )
                .await
                .map_err(sql_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let Value::Object(cols) = r.get::<_, Value>(0) else {
                        return Map::new();
                    };
                    cols.into_iter()
                        .filter_map(|(c, v)| mapping.get(&c).map(|f| (f.clone(), v)))
                        .collect()
                })
                .collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_sink_passes_the_conformance_suite() {
        with_pg(|pg| async move {
            let inspector = PgInspector { pg: pg.clone() };
            let caps = Capabilities::default()
                .typed_columns(true)
                .lists_live_ids(true);
            if let Err(e) = sink_suite::run_all(pg.sink.as_ref(), &inspector, &caps).await {
                panic!("{e}");
            }
        })
        .await;
    }

    /// Every commit through the staging table and the upsert (no direct
    /// COPY), so both write paths pass the whole suite.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_sink_passes_the_conformance_suite_through_staging_only() {
        with_pg(|pg| async move {
            let sink = PostgresSink::builder()
                .url(url())
                .schema(&pg.schema)
                .optimistic_copy(false)
                .build()
                .await
                .expect("sink");
            let inspector = PgInspector { pg: pg.clone() };
            let caps = Capabilities::default()
                .typed_columns(true)
                .lists_live_ids(true);
            if let Err(e) = sink_suite::run_all(&sink, &inspector, &caps).await {
                panic!("{e}");
            }
            assert_eq!(sink.stats().direct_commits, 0);
        })
        .await;
    }

    // --- Postgres-specific ---------------------------------------------------

    #[tokio::test]
    async fn a_direct_copy_that_meets_existing_rows_falls_back_to_the_upsert() {
        with_pg(|pg| async move {
            let s = schema("contacts", vec![Field::new("v", FieldType::Integer)]);
            let rows = |from: u64, to: u64, v: u64| -> Vec<Record> {
                (from..to)
                    .map(|i| record(&i.to_string(), json!({"v": v})))
                    .collect()
            };
            // A first sync: all rows new, copied straight into the table.
            let first = load(&pg.sink, "acme", &s, rows(0, 10, 1)).await;
            assert_eq!(pg.sink.stats().direct_commits, 1);
            // A resumed full refresh tries the direct COPY (rows after a
            // checkpoint are usually new) and meets rows 5..10.
            let resume = checkpoint("acme", "contacts", first, 1, false);
            pg.sink
                .prepare(&StreamContext::new("acme", s.clone(), first, Some(resume)))
                .await
                .expect("prepare");
            pg.sink
                .write(Batch::new(
                    "acme",
                    "contacts",
                    first,
                    chrono::Utc::now(),
                    rows(5, 15, 2),
                ))
                .await
                .expect("write");
            // A key repeated within the commit: its last version wins.
            pg.sink
                .write(Batch::new(
                    "acme",
                    "contacts",
                    first,
                    chrono::Utc::now(),
                    rows(14, 15, 3),
                ))
                .await
                .expect("write");
            pg.sink
                .commit(&checkpoint("acme", "contacts", first, 2, true))
                .await
                .expect("commit");
            let stats = pg.sink.stats();
            assert_eq!((stats.commits, stats.direct_commits), (2, 1), "{stats:?}");
            let got = text(
                &pg,
                &format!(
                    "SELECT string_agg(id || '=' || v, ',' ORDER BY id::int) FROM {}",
                    pg.q("contacts")
                ),
            )
            .await;
            assert_eq!(
                got,
                [Some(
                    "0=1,1=1,2=1,3=1,4=1,5=2,6=2,7=2,8=2,9=2,10=2,11=2,12=2,13=2,14=3".to_owned()
                )]
            );
        })
        .await;
    }

    fn schema(name: &str, fields: Vec<Field>) -> StreamSchema {
        let mut all = vec![Field::new("id", FieldType::String)];
        all.extend(fields);
        StreamSchema::new(name, "id", all)
    }

    fn record(id: &str, data: Value) -> Record {
        let mut m = match data {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        m.insert("id".into(), json!(id));
        Record::new(id, m)
    }

    fn checkpoint(
        tenant: &str,
        stream: &str,
        sync_id: Uuid,
        page: u64,
        complete: bool,
    ) -> Checkpoint {
        Checkpoint::new(
            tenant,
            stream,
            sync_id,
            StreamState::new(json!({ "page": page })),
            complete,
            page,
            chrono::Utc::now(),
            true,
        )
    }

    /// prepare, write each page, one commit (complete).
    async fn load(
        sink: &PostgresSink,
        tenant: &str,
        schema: &StreamSchema,
        records: Vec<Record>,
    ) -> Uuid {
        let sync_id = Uuid::new_v4();
        sink.prepare(&StreamContext::new(tenant, schema.clone(), sync_id, None))
            .await
            .expect("prepare");
        sink.write(Batch::new(
            tenant,
            schema.name.clone(),
            sync_id,
            chrono::Utc::now(),
            records,
        ))
        .await
        .expect("write");
        sink.commit(&checkpoint(tenant, &schema.name, sync_id, 1, true))
            .await
            .expect("commit");
        sync_id
    }

    async fn text(pg: &Pg, sql: &str) -> Vec<Option<String>> {
        pg.client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    #[tokio::test]
    async fn hostile_identifiers_become_quoted_columns_and_nothing_else() {
        with_pg(|pg| async move {
            let hostile = "x\"; drop table deals; --";
            let long_a = format!("{}a", "n".repeat(199));
            let long_b = format!("{}b", "n".repeat(199));
            // A table the hostile names would drop if they were ever unquoted.
            let deals = schema("deals", vec![Field::new("amount", FieldType::Number)]);
            load(&pg.sink, "acme", &deals, vec![record("1", json!({"amount": 5}))]).await;
            let s = schema(
                hostile,
                vec![
                    Field::new(hostile, FieldType::String),
                    Field::new("select", FieldType::Integer),
                    Field::new("Email", FieldType::String),
                    Field::new("email", FieldType::String),
                    Field::new(long_a.clone(), FieldType::Boolean),
                    Field::new(long_b.clone(), FieldType::Date),
                    Field::new("_deleted", FieldType::String),
                ],
            );
            load(
                &pg.sink,
                "acme",
                &s,
                vec![record(
                    "1",
                    json!({
                        hostile: "v", "select": 7, "Email": "A@x", "email": "a@x",
                        long_a.clone(): true, long_b.clone(): "2024-03-01", "_deleted": "field",
                    }),
                )],
            )
            .await;
            // The stream's table has exactly the hostile name.
            assert_eq!(pg.table(hostile).await.as_deref(), Some(hostile));
            let table = pg.q(hostile);
            let cols: HashMap<String, String> = pg
                .client
                .query(
                    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
                    &[&table],
                )
                .await
                .expect("columns")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(cols.get(hostile).map(String::as_str), Some("text"), "{cols:?}");
            assert_eq!(cols.get("select").map(String::as_str), Some("bigint"));
            assert_eq!(cols.get("Email").map(String::as_str), Some("text"));
            assert_eq!(cols.get("email").map(String::as_str), Some("text"));
            for m in ["_tenant_id", "_record", "_deleted", "_sync_id", "_extracted_at"] {
                assert!(cols.contains_key(m), "{m} missing: {cols:?}");
            }
            assert_eq!(cols.get("_deleted").map(String::as_str), Some("boolean"));
            // Long names: shortened, distinct, at most 63 bytes, mapped back.
            let mapping = pg.mapping(hostile).await;
            let col_of = |f: &str| {
                mapping
                    .iter()
                    .find(|(_, field)| field.as_str() == f)
                    .map(|(c, _)| c.clone())
                    .unwrap_or_else(|| panic!("no column for {f}"))
            };
            let (ca, cb) = (col_of(&long_a), col_of(&long_b));
            assert_ne!(ca, cb);
            assert!(ca.len() <= 63 && cb.len() <= 63);
            assert_eq!(cols.get(&ca).map(String::as_str), Some("boolean"));
            assert_eq!(cols.get(&cb).map(String::as_str), Some("date"));
            // The field named like a metadata column has a column of its own.
            let cd = col_of("_deleted");
            assert_ne!(cd, "_deleted");
            assert_eq!(cols.get(&cd).map(String::as_str), Some("text"));
            let v = text(
                &pg,
                &format!(
                    "SELECT concat_ws('|', {}, \"select\"::text, \"Email\", email, {}::text, {}::text, {}, _deleted::text) FROM {table}",
                    pg.q_col(hostile),
                    pg.q_col(&ca),
                    pg.q_col(&cb),
                    pg.q_col(&cd),
                ),
            )
            .await;
            assert_eq!(v, [Some("v|7|A@x|a@x|true|2024-03-01|field|false".to_owned())]);
            // And `deals` is still there, untouched.
            assert_eq!(
                text(&pg, &format!("SELECT amount::text FROM {}", pg.q("deals"))).await,
                [Some("5".to_owned())]
            );
        })
        .await;
    }

    impl Pg {
        fn q_col(&self, name: &str) -> String {
            format!("\"{}\"", name.replace('"', "\"\""))
        }
    }

    #[tokio::test]
    async fn a_failing_commit_moves_neither_data_nor_state() {
        with_pg(|pg| async move {
            let s = schema("contacts", vec![Field::new("n", FieldType::Integer)]);
            let sink = &pg.sink;
            let sync_id = Uuid::new_v4();
            sink.prepare(&StreamContext::new("acme", s.clone(), sync_id, None))
                .await
                .expect("prepare");
            let page = |from: u64, v: u64| -> Vec<Record> {
                (from..from + 100)
                    .map(|i| record(&i.to_string(), json!({"n": v})))
                    .collect()
            };
            sink.write(Batch::new("acme", "contacts", sync_id, chrono::Utc::now(), page(0, 1)))
                .await
                .expect("write");
            let cp1 = checkpoint("acme", "contacts", sync_id, 1, false);
            sink.commit(&cp1).await.expect("first commit");

            // The state upsert fails, after the COPY and the upsert ran in
            // the same transaction.
            pg.client
                .batch_execute(&format!(
                    "CREATE FUNCTION {schema}.fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
                     CREATE TRIGGER fail BEFORE INSERT OR UPDATE ON {state} FOR EACH ROW EXECUTE FUNCTION {schema}.fail();",
                    schema = pg.q_col(&pg.schema),
                    state = pg.q("_headwater_state"),
                ))
                .await
                .expect("trigger");
            sink.write(Batch::new("acme", "contacts", sync_id, chrono::Utc::now(), page(50, 2)))
                .await
                .expect("write");
            let cp2 = checkpoint("acme", "contacts", sync_id, 2, false);
            match sink.commit(&cp2).await {
                Err(Error::Sink { sink: "postgres", message, source: Some(_) }) => {
                    assert!(message.contains("injected failure"), "{message}");
                }
                other => panic!("expected a postgres sink error, got {other:?}"),
            }
            let table = pg.q("contacts");
            let counts = text(
                &pg,
                &format!("SELECT count(*)::text || '/' || sum(n)::text FROM {table}"),
            )
            .await;
            assert_eq!(counts, [Some("100/100".to_owned())], "data moved");
            assert_eq!(sink.load_state("acme", "contacts").await.expect("state"), Some(cp1));

            // The rows stay buffered: once the failure is gone the same
            // commit goes through.
            pg.client
                .batch_execute(&format!("DROP TRIGGER fail ON {}", pg.q("_headwater_state")))
                .await
                .expect("drop trigger");
            sink.commit(&cp2).await.expect("retried commit");
            let counts = text(
                &pg,
                &format!("SELECT count(*)::text || '/' || sum(n)::text FROM {table}"),
            )
            .await;
            assert_eq!(counts, [Some("150/250".to_owned())]);
            assert_eq!(sink.load_state("acme", "contacts").await.expect("state"), Some(cp2));
        })
        .await;
    }

    #[tokio::test]
    async fn values_that_do_not_fit_stay_in_record_and_are_counted() {
        with_pg(|pg| async move {
            let s = schema(
                "deals",
                vec![
                    Field::new("amount", FieldType::Number),
                    Field::new("count", FieldType::Integer),
                    Field::new("close", FieldType::Date),
                ],
            );
            load(
                &pg.sink,
                "acme",
                &s,
                vec![
                    record("1", json!({"amount": "n/a", "count": "abc", "close": "soon"})),
                    record("2", json!({"amount": "", "count": "", "close": ""})),
                    record("3", json!({"amount": 12.5, "count": 7, "close": "2024-03-01"})),
                ],
            )
            .await;
            assert_eq!(pg.sink.stats().mismatched_values, 3, "blanks are not mismatches");
            let rows = text(
                &pg,
                &format!(
                    "SELECT concat_ws('|', id, coalesce(amount::text, 'NULL'), coalesce(count::text, 'NULL'), \
                     coalesce(close::text, 'NULL'), _record->>'amount', _record->>'count') FROM {} ORDER BY id",
                    pg.q("deals")
                ),
            )
            .await;
            assert_eq!(
                rows,
                [
                    Some("1|NULL|NULL|NULL|n/a|abc".to_owned()),
                    Some("2|NULL|NULL|NULL||".to_owned()),
                    Some("3|12.5|7|2024-03-01|12.5|7".to_owned()),
                ]
            );

            // The type of `count` changes: the bigint column stays, values
            // that fit it land there, the others stay in _record only.
            let mut changed = s.clone();
            for f in &mut changed.fields {
                if f.name == "count" {
                    f.field_type = FieldType::String;
                }
            }
            load(
                &pg.sink,
                "acme",
                &changed,
                vec![
                    record("4", json!({"count": "many"})),
                    record("5", json!({"count": "5"})),
                ],
            )
            .await;
            let stats = pg.sink.stats();
            assert_eq!(stats.type_changes, 1);
            assert_eq!(stats.mismatched_values, 4);
            let kind = text(
                &pg,
                &format!(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{}'::regclass AND attname = 'count'",
                    pg.q("deals")
                ),
            )
            .await;
            assert_eq!(kind, [Some("bigint".to_owned())]);
            let rows = text(
                &pg,
                &format!(
                    "SELECT concat_ws('|', id, coalesce(count::text, 'NULL'), _record->>'count') FROM {} WHERE id IN ('4', '5') ORDER BY id",
                    pg.q("deals")
                ),
            )
            .await;
            assert_eq!(rows, [Some("4|NULL|many".to_owned()), Some("5|5|5".to_owned())]);
            let declared = text(
                &pg,
                &format!(
                    "SELECT column_type || '/' || field_type FROM {} WHERE stream = 'deals' AND field_name = 'count'",
                    pg.q("_headwater_columns")
                ),
            )
            .await;
            assert_eq!(declared, [Some("integer/string".to_owned())]);
        })
        .await;
    }

    #[tokio::test]
    async fn numbers_timestamps_and_json_are_stored_exactly() {
        with_pg(|pg| async move {
            let numbers = [
                json!(0),
                json!(-0.0),
                json!(1),
                json!(-1),
                json!(9_223_372_036_854_775_807i64),
                json!(u64::MAX),
                json!(-9_223_372_036_854_775_808i64),
                json!(0.1),
                json!(1.5e300),
                json!(-2.5e-300),
                json!(123_456_789.123_456_79),
                json!("12.50"),
                json!(" 7 "),
                json!("-0.000001"),
                json!("1e20"),
                json!("1E-5"),
                json!("99999999999999999999999999999.999999"),
                json!(10000),
                json!(100_000_000),
            ];
            let s = schema(
                "values",
                vec![
                    Field::new("num", FieldType::Number),
                    Field::new("at", FieldType::Timestamp),
                    Field::new("doc", FieldType::Json),
                ],
            );
            let records: Vec<Record> = numbers
                .iter()
                .enumerate()
                .map(|(i, n)| record(&format!("n{i:02}"), json!({"num": n})))
                .collect();
            load(&pg.sink, "acme", &s, records).await;
            assert_eq!(pg.sink.stats().mismatched_values, 0);
            for (i, n) in numbers.iter().enumerate() {
                let literal = match n {
                    Value::String(s) => s.trim().to_owned(),
                    other => other.to_string(),
                };
                let row = pg
                    .client
                    .query_one(
                        &format!(
                            "SELECT num::text, $2::text::numeric::text FROM {} WHERE id = $1",
                            pg.q("values")
                        ),
                        &[&format!("n{i:02}"), &literal],
                    )
                    .await
                    .expect("query");
                let (stored, expected): (String, String) = (row.get(0), row.get(1));
                assert_eq!(stored, expected, "{n}");
            }

            let times = [
                (
                    "t1",
                    json!("2024-03-01T10:00:00.123Z"),
                    "2024-03-01 10:00:00.123+00",
                ),
                (
                    "t2",
                    json!("2024-03-01T10:00:00.123456789+02:00"),
                    "2024-03-01 08:00:00.123456+00",
                ),
                ("t3", json!("2024-03-01 10:00:00"), "2024-03-01 10:00:00+00"),
                ("t4", json!(1_709_287_200_000i64), "2024-03-01 10:00:00+00"),
                ("t5", json!("1709287200000"), "2024-03-01 10:00:00+00"),
                (
                    "t6",
                    json!("0001-01-01T00:00:00Z"),
                    "0001-01-01 00:00:00+00",
                ),
            ];
            let docs = json!({"a": [1, 2.5, null, {"b": "c\"'"}], "unicode": "名前 🚀"});
            let records: Vec<Record> = times
                .iter()
                .map(|(id, t, _)| record(id, json!({"at": t, "doc": docs})))
                .collect();
            load(&pg.sink, "acme", &s, records).await;
            pg.client
                .batch_execute("SET TIME ZONE 'UTC'")
                .await
                .expect("tz");
            for (id, _, want) in times {
                let row = pg
                    .client
                    .query_one(
                        &format!("SELECT at::text, doc FROM {} WHERE id = $1", pg.q("values")),
                        &[&id],
                    )
                    .await
                    .expect("query");
                assert_eq!(row.get::<_, String>(0), want, "{id}");
                assert_eq!(row.get::<_, Value>(1), docs);
            }
            assert_eq!(pg.sink.stats().mismatched_values, 0);
        })
        .await;
    }

    #[tokio::test]
    async fn nul_characters_are_replaced_not_fatal() {
        with_pg(|pg| async move {
            let s = schema(
                "notes",
                vec![
                    Field::new("body", FieldType::String),
                    Field::new("meta", FieldType::Json),
                ],
            );
            load(
                &pg.sink,
                "acme",
                &s,
                vec![record(
                    "1",
                    json!({"body": "a\u{0}b", "meta": {"k\u{0}": ["\u{0}"]}}),
                )],
            )
            .await;
            assert_eq!(pg.sink.stats().sanitized_records, 1);
            let row = pg
                .client
                .query_one(&format!("SELECT body, meta FROM {}", pg.q("notes")), &[])
                .await
                .expect("query");
            assert_eq!(row.get::<_, String>(0), "a\u{FFFD}b");
            assert_eq!(row.get::<_, Value>(1), json!({"k\u{FFFD}": ["\u{FFFD}"]}));
            // A tenant id with a NUL is stored with U+FFFD in its place.
            let ok = pg
                .sink
                .prepare(&StreamContext::new(
                    "a\u{0}",
                    s.clone(),
                    Uuid::new_v4(),
                    None,
                ))
                .await;
            assert!(ok.is_ok(), "{ok:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn tables_have_their_key_indexes_and_bookkeeping() {
        with_pg(|pg| async move {
            let s = schema(
                "contacts",
                vec![Field::new("updatedAt", FieldType::Timestamp)],
            )
            .with_cursor_field("updatedAt");
            let sync_id = load(&pg.sink, "acme", &s, vec![record("1", json!({"updatedAt": "2024-03-01T00:00:00Z"}))]).await;
            let indexes = text(
                &pg,
                &format!(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = '{}' AND tablename = 'contacts' ORDER BY indexdef",
                    pg.schema
                ),
            )
            .await;
            let defs: Vec<String> = indexes.into_iter().flatten().collect();
            assert!(
                defs.iter().any(|d| d.contains("UNIQUE") && d.contains("(_tenant_id, id)")),
                "{defs:?}"
            );
            assert!(
                defs.iter().any(|d| d.contains("(_tenant_id, \"updatedAt\")")),
                "{defs:?}"
            );
            let state = text(
                &pg,
                &format!(
                    "SELECT concat_ws('|', tenant, stream, sync_id::text, complete::text, checkpoint->>'sync_id') FROM {}",
                    pg.q("_headwater_state")
                ),
            )
            .await;
            assert_eq!(state, [Some(format!("acme|contacts|{sync_id}|true|{sync_id}"))]);
            assert_eq!(pg.sink.table_name("contacts").await.expect("table").as_deref(), Some("contacts"));
            // `_record` is compressed with lz4 where the server can.
            let lz4 = text(
                &pg,
                "SELECT ('lz4' = ANY(enumvals))::text FROM pg_settings WHERE name = 'default_toast_compression'",
            )
            .await;
            let method = text(
                &pg,
                &format!(
                    "SELECT attcompression::text FROM pg_attribute WHERE attrelid = '{}'::regclass AND attname = '_record'",
                    pg.q("contacts")
                ),
            )
            .await;
            let want = if lz4 == [Some("true".to_owned())] { "l" } else { "" };
            assert_eq!(method, [Some(want.to_owned())]);
            assert_eq!(pg.sink.table_name("nope").await.expect("table"), None);
            // A key that changes is refused, not silently ignored.
            let mut rekeyed = s.clone();
            rekeyed.primary_key = vec!["updatedAt".into()];
            let err = pg
                .sink
                .prepare(&StreamContext::new("acme", rekeyed, Uuid::new_v4(), None))
                .await;
            assert!(matches!(err, Err(Error::Config(_))), "{err:?}");
        })
        .await;
    }

    /// A sink in `pg`'s schema whose streaming connections are closed after
    /// `idle` without rows.
    async fn impatient_sink(pg: &Pg, idle: std::time::Duration) -> PostgresSink {
        PostgresSink::builder()
            .url(url())
            .schema(&pg.schema)
            .stream_timeout(idle)
            .build()
            .await
            .expect("sink")
    }

    #[tokio::test]
    async fn a_stream_closed_for_idleness_still_commits_its_rows() {
        with_pg(|pg| async move {
            let sink = impatient_sink(&pg, std::time::Duration::from_millis(300)).await;
            let s = schema("contacts", vec![Field::new("v", FieldType::Integer)]);
            let sync_id = Uuid::new_v4();
            sink.prepare(&StreamContext::new("acme", s.clone(), sync_id, None))
                .await
                .expect("prepare");
            let page = |from: u64| -> Vec<Record> {
                (from..from + 100)
                    .map(|i| record(&i.to_string(), json!({"v": i})))
                    .collect()
            };
            sink.write(Batch::new(
                "acme",
                "contacts",
                sync_id,
                chrono::Utc::now(),
                page(0),
            ))
            .await
            .expect("write");
            // A slow source: the watchdog closes the idle streaming connection.
            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
            sink.write(Batch::new(
                "acme",
                "contacts",
                sync_id,
                chrono::Utc::now(),
                page(100),
            ))
            .await
            .expect("write after the stream ended");
            let cp = checkpoint("acme", "contacts", sync_id, 2, true);
            sink.commit(&cp).await.expect("commit");
            assert_eq!(
                text(
                    &pg,
                    &format!("SELECT count(*)::text FROM {}", pg.q("contacts"))
                )
                .await,
                [Some("200".to_owned())]
            );
            assert_eq!(
                sink.load_state("acme", "contacts").await.expect("state"),
                Some(cp)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_run_abandoned_without_commit_does_not_hold_the_table() {
        with_pg(|pg| async move {
            let sink = impatient_sink(&pg, std::time::Duration::from_millis(300)).await;
            let s = schema("contacts", vec![Field::new("v", FieldType::Integer)]);
            load(&sink, "other", &s, vec![record("0", json!({"v": 0}))]).await;
            // Tenant A writes and its run fails: no commit, no new prepare.
            let sync_id = Uuid::new_v4();
            sink.prepare(&StreamContext::new("a", s.clone(), sync_id, None))
                .await
                .expect("prepare");
            let rows: Vec<Record> = (0..100)
                .map(|i| record(&i.to_string(), json!({"v": i})))
                .collect();
            sink.write(Batch::new(
                "a",
                "contacts",
                sync_id,
                chrono::Utc::now(),
                rows,
            ))
            .await
            .expect("write");
            // Tenant B's run adds a column to the same table: ALTER TABLE
            // waits for A's open COPY until its connection is closed.
            let mut wider = s.clone();
            wider.fields.push(Field::new("w", FieldType::String));
            let b = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                pg.sink
                    .prepare(&StreamContext::new("b", wider, Uuid::new_v4(), None)),
            )
            .await;
            assert!(matches!(b, Ok(Ok(()))), "{b:?}");
            let a_rows = text(
                &pg,
                &format!(
                    "SELECT count(*)::text FROM {} WHERE _tenant_id = 'a'",
                    pg.q("contacts")
                ),
            )
            .await;
            assert_eq!(a_rows, [Some("0".to_owned())], "nothing of A was committed");
        })
        .await;
    }

    #[tokio::test]
    async fn a_rerun_that_adds_a_column_does_not_wait_for_the_failed_run() {
        with_pg(|pg| async move {
            let s = schema("contacts", vec![Field::new("v", FieldType::Integer)]);
            let first = Uuid::new_v4();
            pg.sink
                .prepare(&StreamContext::new("acme", s.clone(), first, None))
                .await
                .expect("prepare");
            let rows = |v: u64| -> Vec<Record> {
                (0..100)
                    .map(|i| record(&i.to_string(), json!({"v": v, "w": "x"})))
                    .collect()
            };
            // The run streams a page and fails: its COPY stays open.
            pg.sink
                .write(Batch::new(
                    "acme",
                    "contacts",
                    first,
                    chrono::Utc::now(),
                    rows(1),
                ))
                .await
                .expect("write");
            // The re-run on the same instance adds a column (ALTER TABLE).
            let mut wider = s.clone();
            wider.fields.push(Field::new("w", FieldType::String));
            let second = Uuid::new_v4();
            // While the failed run holds the stream's lease, a re-run is
            // refused at once; the engine abandons a failed run, which
            // releases it.
            let refused = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                pg.sink
                    .prepare(&StreamContext::new("acme", wider.clone(), second, None)),
            )
            .await;
            assert!(matches!(&refused, Ok(Err(e)) if e.is_busy()), "{refused:?}");
            pg.sink.abandon("acme", "contacts").await.expect("abandon");
            let prepared = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                pg.sink
                    .prepare(&StreamContext::new("acme", wider, second, None)),
            )
            .await;
            assert!(matches!(prepared, Ok(Ok(()))), "{prepared:?}");
            pg.sink
                .write(Batch::new(
                    "acme",
                    "contacts",
                    second,
                    chrono::Utc::now(),
                    rows(2),
                ))
                .await
                .expect("write");
            pg.sink
                .commit(&checkpoint("acme", "contacts", second, 1, true))
                .await
                .expect("commit");
            assert_eq!(
                text(
                    &pg,
                    &format!(
                        "SELECT count(*) || '/' || sum(v) || '/' || min(w) FROM {}",
                        pg.q("contacts")
                    )
                )
                .await,
                [Some("100/200/x".to_owned())]
            );
        })
        .await;
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error() {
        let err = PostgresSink::builder()
            .url("postgres://postgres:secret-password@127.0.0.1:1/test")
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()
            .await
            .expect_err("nothing listens on port 1");
        let text = err.to_string();
        assert!(
            matches!(
                err,
                Error::Sink {
                    sink: "postgres",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            text.contains("cannot connect to Postgres at 127.0.0.1:1/test"),
            "{text}"
        );
        assert!(!text.contains("secret-password"), "{text}");
        assert!(!format!("{err:?}").contains("secret-password"));
        let missing = PostgresSink::builder().build().await.expect_err("no url");
        assert!(matches!(missing, Error::Config(_)));
    }
}
