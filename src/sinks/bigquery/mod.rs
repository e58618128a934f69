//! The BigQuery sink (feature `bigquery`): a table per stream, loaded by load
//! jobs into a staging table and merged into the target on the tenant and
//! the primary key, with the sync state in a state table.
//!
//! ```no_run
//! use std::sync::Arc;
//! use headwater::sinks::bigquery::BigQuerySink;
//!
//! # fn run() -> headwater::Result<()> {
//! // BIGQUERY_PROJECT, BIGQUERY_DATASET, and GOOGLE_APPLICATION_CREDENTIALS
//! // (a service-account key file) or BIGQUERY_ENDPOINT (an emulator, no auth).
//! let sink = Arc::new(BigQuerySink::from_env()?);
//! # let _ = sink; Ok(()) }
//! ```
//!
//! # Tables
//! The dataset is created if missing (in the configured location). Each
//! stream gets a table named after it (see *Names*), with these columns:
//!
//! | column | type | what |
//! |---|---|---|
//! | `_tenant_id` | STRING | the tenant (connected account) |
//! | `_extracted_at` | TIMESTAMP | when the record was read from the provider |
//! | `_sync_id` | STRING | the sync run that wrote it last |
//! | `_deleted` | BOOL | true when the provider reports the record archived |
//! | `_record` | JSON | the whole record as the source gave it |
//! | one per field | by type | String→STRING, Integer→INT64, Number→NUMERIC, Boolean→BOOL, Date→DATE, Timestamp→TIMESTAMP, Json→JSON |
//!
//! **Number → NUMERIC** (exact decimal; 29 integer and 9 fractional digits)
//! by default, so sums of amounts are exact; more fractional digits are
//! rounded half away from zero. [`NumberType::Float64`] picks FLOAT64
//! instead. A value that does not fit its column (text in a number field, a
//! number beyond NUMERIC's range, a type changed at the source after the
//! column was made) is written as NULL in that column, counted in a warning,
//! and is still in `_record`: nothing is lost. A field's primary-key column
//! of type JSON is made STRING (JSON cannot be compared).
//!
//! New fields add columns (`tables.patch`); columns are never dropped or
//! retyped. The table is clustered on `_tenant_id` and the key.
//!
//! # Names
//! Column names are ASCII letters, digits and `_`, start with a letter or
//! `_`, at most 300 characters, case-insensitive. A field name is mapped by
//! replacing every other character with `_`, prefixing `_` to a leading
//! digit, prefixing `f` to a reserved prefix (`_TABLE_`, `_PARTITION`, …,
//! `_headwater`), cutting to 300, and — only when the result is already
//! taken, compared without case — appending `_` and 8 hex digits of a hash
//! of the original name (`Email` → `Email`, then `email` → `email_1a2b3c4d`).
//! Each field column's description is `field: <original name>`: the mapping
//! is read back from the table, so a name never changes once given. Table
//! names: the stream name when it is a plain identifier, else mapped the
//! same way with the hash always appended.
//!
//! # Loads and merges
//! [`Sink::write`] encodes records as newline-delimited JSON in memory.
//! [`Sink::commit`]:
//! 1. creates a staging table `_headwater_staging_{table}_{uuid}` (unique per
//!    commit, so concurrent tenants never share one; it expires after a day
//!    should headwater stop before dropping it);
//! 2. loads the rows by load jobs with a multipart upload
//!    (`POST /upload/bigquery/v2/projects/{p}/jobs?uploadType=multipart`),
//!    one job per [`BigQuerySinkBuilder::max_upload_bytes`] of rows, each
//!    polled until `DONE`;
//! 3. runs one script by `jobs.query`:
//!    `BEGIN TRANSACTION; MERGE target USING (staging rows, the last one per
//!    key: QUALIFY ROW_NUMBER() … = 1) ON _tenant_id and the key …; MERGE
//!    the state row …; COMMIT TRANSACTION;` — data and state commit together
//!    (the state's values are inlined as base64 literals: the emulator binds
//!    no query parameters in scripts);
//! 4. drops the staging table.
//!
//! The last commit of a full refresh ([`Checkpoint::full_refresh`]) then
//! deletes the tenant's rows that the run did not write (their `_sync_id`
//! is another run's), as far as [`Checkpoint::prune`] allows: it counts
//! them first, and deletes nothing when the run's completeness checks did
//! not match or they are more than the allowed share. The DELETE runs right
//! after the final commit's transaction, not in it (the count must see the
//! merged rows): a crash in between leaves rows that the next full refresh
//! removes, never fewer rows. An incremental run only merges.
//!
//! # One writer per stream
//! [`Sink::prepare`] takes a lease row in `_headwater_leases` (tenant,
//! stream, token, holder, expires_at), created if missing, by a `MERGE`
//! in a transaction that inserts the row or takes over an expired one
//! (`WHEN MATCHED AND expires_at < CURRENT_TIMESTAMP()`), then reads it
//! back: another run's unexpired token means [`Error::Busy`]. Real
//! BigQuery aborts one of two concurrent transactions on the table; the
//! read-back decides either way. Commits renew it once half of its
//! [`LEASE_TTL`] is gone (checking it is still this run's); the final
//! commit and [`Sink::abandon`] delete it. A run killed with its process
//! leaves the row to expire.
//!
//! A crash before step 3 leaves the state at the previous checkpoint: the
//! resumed sync reads the same records again and the MERGE makes that
//! harmless. Re-running a MERGE never duplicates a row, so every retry
//! (HTTP, job, whole commit) is safe; `insertAll` and its best-effort
//! `insertId` are not used. Transient job failures (backend errors,
//! concurrent DML on a table) run the job again.
//!
//! The state table `_headwater_state` holds `tenant`, `stream`,
//! `checkpoint` (the [`Checkpoint`] as a JSON string) and `committed_at`.
//!
//! Records the sync could not decode go to `_headwater_quarantine` (created
//! on first use, loaded by a load job before the page's checkpoint is
//! committed): the columns of [`QuarantinedRecord`]'s stored form, all
//! `STRING` but `quarantined_at` (`TIMESTAMP`).
//!
//! Each commit costs four API calls and two jobs: give BigQuery bigger
//! commits with [`crate::sync::Sync::checkpoint_every`].
//!
//! # Auth
//! A bearer token you supply ([`BigQuerySinkBuilder::access_token`]), a
//! service-account key ([`ServiceAccountTokenSource`]: a signed JWT
//! exchanged at the key's `token_uri`, cached until 5 minutes before
//! expiry), any [`crate::auth::AccessTokenSource`], or none for an
//! emulator ([`BigQuerySinkBuilder::emulator`]).
//!
//! # Emulator (bqemulator)
//! Differences the sink copes with and does not rely on: TIMESTAMPs come
//! back as integer microseconds (real BigQuery: float seconds; both parse,
//! and queries ask for `useInt64Timestamp`); invalid SQL answers 200 with
//! `errors` (checked like a failed job); upload jobs get the server's job id
//! (the id in the answer is polled); `tables.patch` records new columns
//! without adding them to its storage, so new columns are also added with
//! `ALTER TABLE … ADD COLUMN IF NOT EXISTS` (a no-op on real BigQuery after
//! the patch).

mod auth;
mod client;
mod config;
mod layout;
mod names;
pub(crate) mod values;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

pub use auth::{ServiceAccountKey, ServiceAccountTokenSource, BIGQUERY_SCOPE};
pub use config::{BigQuerySinkBuilder, NumberType, DEFAULT_ENDPOINT};

use crate::schema::StreamSchema;
use crate::sink::{Batch, Checkpoint, Prune, PruneOutcome, QuarantinedRecord, Sink, StreamContext};
use crate::{Error, Result};
use client::{string_param, Api};
use layout::{column_json, existing_columns, plan_layout, Layout};
use values::{to_load_value, ColumnType};

pub(crate) const NAME: &str = "bigquery";

/// The table holding each tenant's and stream's last checkpoint.
pub const STATE_TABLE: &str = "_headwater_state";

/// The table holding the runs' leases of tenants' streams.
pub const LEASE_TABLE: &str = "_headwater_leases";

/// How long a run's lease lasts after it was taken or last renewed: a run
/// killed with its process blocks its stream that long.
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// The quarantine table's name (see the module docs).
pub const QUARANTINE_TABLE: &str = "_headwater_quarantine";

/// Orders rows in a staging table (the last write of a key wins).
const SEQ_COLUMN: &str = "_headwater_seq";
/// The prefix of a field column's description that names its field.
const FIELD_PREFIX: &str = "field: ";
/// BigQuery's limit on a column description.
const MAX_DESCRIPTION: usize = 1024;

/// The metadata columns, in table order.
const META: [(&str, &str, &str); 5] = [
    (
        "_tenant_id",
        "STRING",
        "headwater: the tenant (connected account)",
    ),
    (
        "_extracted_at",
        "TIMESTAMP",
        "headwater: when the record was read from the provider",
    ),
    (
        "_sync_id",
        "STRING",
        "headwater: the sync run that wrote the record last",
    ),
    (
        "_deleted",
        "BOOL",
        "headwater: true when the provider reports the record archived",
    ),
    (
        "_record",
        "JSON",
        "headwater: the whole record as the source gave it",
    ),
];

/// A column of a stream's table, as [`BigQuerySink::columns`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ColumnInfo {
    /// The column's name.
    pub name: String,
    /// Its BigQuery type, legacy names normalized (`INTEGER` → `INT64`,
    /// `FLOAT` → `FLOAT64`, `BOOLEAN` → `BOOL`).
    pub column_type: String,
    /// The field it holds (`None` for metadata and foreign columns).
    pub field: Option<String>,
}

/// Records buffered for one tenant's stream since the last commit.
#[derive(Debug)]
struct OpenStream {
    layout: Arc<Layout>,
    /// Full upload chunks.
    chunks: Vec<Bytes>,
    /// The chunk being filled.
    current: Vec<u8>,
    rows: u64,
    /// Position of the next row (orders duplicates of a key).
    seq: u64,
    /// Values that did not fit their column, per column, since the last commit.
    rejected: HashMap<String, u64>,
    /// The run's lease: its token and when it was last renewed.
    lease: Option<(String, std::time::Instant)>,
}

struct Inner {
    api: Api,
    dataset: String,
    number_type: NumberType,
    max_upload_bytes: usize,
    staging_expiration: Duration,
    dataset_ready: OnceCell<()>,
    state_ready: OnceCell<()>,
    /// One table creation or change at a time (per sink).
    ddl: tokio::sync::Mutex<()>,
    open: Mutex<HashMap<(String, String), OpenStream>>,
}

/// BigQuery as a [`Sink`]. See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct BigQuerySink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BigQuerySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let api = &self.inner.api;
        f.debug_struct("BigQuerySink")
            .field("project", &api.project)
            .field("dataset", &self.inner.dataset)
            .field("location", &api.location)
            .field("endpoint", &api.base.as_str())
            .field("auth", &api.http.auth)
            .finish_non_exhaustive()
    }
}

/// A GoogleSQL expression of the text `s` that no content can break out of.
fn sql_string(s: &str) -> String {
    use base64::Engine;
    format!(
        "SAFE_CONVERT_BYTES_TO_STRING(FROM_BASE64('{}'))",
        base64::engine::general_purpose::STANDARD.encode(s)
    )
}

fn quote(ident: &str) -> String {
    // Every identifier is validated or generated: no backtick can occur.
    format!("`{ident}`")
}

impl BigQuerySink {
    /// A builder for `dataset` in `project`.
    pub fn builder(project: impl Into<String>, dataset: impl Into<String>) -> BigQuerySinkBuilder {
        BigQuerySinkBuilder::new(project, dataset)
    }

    /// A sink configured from the environment ([`BigQuerySinkBuilder::from_env`]).
    pub fn from_env() -> Result<Self> {
        BigQuerySinkBuilder::from_env()?.build()
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.inner.api.project
    }

    /// The dataset.
    pub fn dataset(&self) -> &str {
        &self.inner.dataset
    }

    /// The table name a stream's records go to.
    pub fn table_name(&self, stream: &str) -> String {
        names::table_name(stream)
    }

    /// `project.dataset.table` of a stream, quoted with backticks for SQL.
    pub fn table_ref(&self, stream: &str) -> String {
        self.quoted_table(&names::table_name(stream))
    }

    fn quoted_table(&self, table: &str) -> String {
        quote(&format!(
            "{}.{}.{}",
            self.inner.api.project, self.inner.dataset, table
        ))
    }

    /// Creates the dataset if it does not exist (done by the first
    /// [`Sink::prepare`] anyway).
    pub async fn ensure_dataset(&self) -> Result<()> {
        self.inner
            .dataset_ready
            .get_or_try_init(|| self.inner.api.ensure_dataset(&self.inner.dataset))
            .await
            .map(|_| ())
    }

    async fn ensure_state_table(&self) -> Result<()> {
        self.inner
            .state_ready
            .get_or_try_init(|| async {
                let api = &self.inner.api;
                if api.get_table(&self.inner.dataset, STATE_TABLE).await?.is_some() {
                    return Ok(());
                }
                let table = json!({
                    "tableReference": {
                        "projectId": api.project, "datasetId": self.inner.dataset,
                        "tableId": STATE_TABLE,
                    },
                    "description": "headwater: the last committed checkpoint of each tenant's stream",
                    "schema": {"fields": [
                        column_json("tenant", "STRING", "the tenant"),
                        column_json("stream", "STRING", "the stream"),
                        column_json("checkpoint", "STRING", "the checkpoint, as JSON"),
                        column_json("committed_at", "TIMESTAMP", "when it was committed"),
                    ]},
                    "clustering": {"fields": ["tenant", "stream"]},
                });
                api.insert_table(&self.inner.dataset, &table).await?;
                Ok::<(), Error>(())
            })
            .await
            .map(|_| ())
    }

    async fn ensure_quarantine_table(&self) -> Result<()> {
        self.ensure_dataset().await?;
        let api = &self.inner.api;
        if api
            .get_table(&self.inner.dataset, QUARANTINE_TABLE)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let s = |name: &str, what: &str| column_json(name, "STRING", what);
        let table = json!({
            "tableReference": {
                "projectId": api.project, "datasetId": self.inner.dataset,
                "tableId": QUARANTINE_TABLE,
            },
            "description": "headwater: records the sync could not decode",
            "schema": {"fields": [
                s("tenant", "the tenant"),
                s("stream", "the stream"),
                s("sync_id", "the sync run that read it"),
                s("position", "the checkpoint of the page that carried it, as JSON"),
                s("raw", "the bytes as text (invalid UTF-8 and NUL as U+FFFD)"),
                s("raw_base64", "the exact bytes in base64, when raw is not them"),
                s("path", "the JSON path of the failure"),
                s("error", "the decoder's message"),
                column_json("quarantined_at", "TIMESTAMP", "when it was quarantined"),
            ]},
            "clustering": {"fields": ["tenant", "stream"]},
        });
        api.insert_table(&self.inner.dataset, &table).await?;
        Ok(())
    }

    /// Creates or evolves a stream's table; returns its layout.
    async fn layout(&self, schema: &StreamSchema) -> Result<Arc<Layout>> {
        let _ddl = self.inner.ddl.lock().await;
        let api = &self.inner.api;
        let dataset = &self.inner.dataset;
        let table = names::table_name(&schema.name);
        for _ in 0..3 {
            let Some(found) = api.get_table(dataset, &table).await? else {
                let (layout, new) = plan_layout(schema, &table, &[], self.inner.number_type)?;
                let mut clustering: Vec<&str> = vec!["_tenant_id"];
                clustering.extend(layout.keys.iter().map(|i| layout.columns[*i].name.as_str()));
                clustering.truncate(4);
                let body = json!({
                    "tableReference": {"projectId": api.project, "datasetId": dataset, "tableId": table},
                    "description": format!("headwater: stream `{}`", schema.name),
                    "schema": {"fields": new},
                    "clustering": {"fields": clustering},
                });
                if api.insert_table(dataset, &body).await? {
                    tracing::info!(table, stream = %schema.name, "bigquery: table created");
                    return Ok(Arc::new(layout));
                }
                continue; // created meanwhile by someone else: read it
            };
            let existing = existing_columns(&found);
            let (layout, new) = plan_layout(schema, &table, &existing, self.inner.number_type)?;
            if !new.is_empty() {
                let mut fields: Vec<Value> = found
                    .pointer("/schema/fields")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                fields.extend(new.iter().cloned());
                api.patch_table_schema(dataset, &table, &fields).await?;
                // The emulator's tables.patch does not reach its storage;
                // on BigQuery this is a no-op after the patch.
                let script: String = new
                    .iter()
                    .filter_map(|c| {
                        Some(format!(
                            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {};\n",
                            self.quoted_table(&table),
                            quote(c.get("name")?.as_str()?),
                            c.get("type")?.as_str()?
                        ))
                    })
                    .collect();
                api.query(&script, &[], &format!("add columns to {table}"))
                    .await?;
                tracing::info!(table, added = new.len(), "bigquery: columns added");
            }
            return Ok(Arc::new(layout));
        }
        Err(Error::Sink {
            sink: NAME,
            message: format!("table {table} keeps changing while being created"),
            source: None,
        })
    }

    /// The columns of a stream's table and the fields they hold (empty when
    /// the table does not exist).
    pub async fn columns(&self, stream: &str) -> Result<Vec<ColumnInfo>> {
        let table = names::table_name(stream);
        let Some(found) = self
            .inner
            .api
            .get_table(&self.inner.dataset, &table)
            .await?
        else {
            return Ok(Vec::new());
        };
        Ok(existing_columns(&found)
            .into_iter()
            .map(|e| ColumnInfo {
                field: e
                    .description
                    .as_deref()
                    .and_then(|d| d.strip_prefix(FIELD_PREFIX))
                    .map(str::to_owned),
                column_type: e.ty.name().to_owned(),
                name: e.name,
            })
            .collect())
    }

    /// Runs GoogleSQL with named `STRING` parameters (`@name`) and returns
    /// the rows as JSON objects: INT64 and numbers as JSON numbers (NUMERIC
    /// through f64 unless whole), BOOL as booleans, TIMESTAMP as RFC 3339
    /// UTC text, JSON parsed, everything else as text.
    pub async fn query(
        &self,
        sql: &str,
        params: &[(&str, &str)],
    ) -> Result<Vec<Map<String, Value>>> {
        let params: Vec<Value> = params.iter().map(|(k, v)| string_param(k, v)).collect();
        Ok(self.inner.api.query(sql, &params, "query").await?.rows)
    }

    /// A tenant's rows of a stream, keyed by field name (the original names,
    /// through the column mapping) and the metadata column names, in no
    /// particular order. Empty when the table does not exist.
    pub async fn read_rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
        let columns = self.columns(stream).await?;
        if columns.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT * FROM {} WHERE `_tenant_id` = @tenant",
            self.table_ref(stream)
        );
        let rows = self.query(&sql, &[("tenant", tenant)]).await?;
        let rename: HashMap<String, String> = columns
            .into_iter()
            .filter_map(|c| Some((c.name, c.field?)))
            .collect();
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(k, v)| match rename.get(&k) {
                        Some(field) => (field.clone(), v),
                        None => (k, v),
                    })
                    .collect()
            })
            .collect())
    }

    /// Takes the lease of a tenant's stream (see the module docs); returns
    /// its token, or fails with [`Error::Busy`].
    async fn take_lease(&self, tenant: &str, stream: &str, sync_id: uuid::Uuid) -> Result<String> {
        let api = &self.inner.api;
        let table = self.quoted_table(LEASE_TABLE);
        api.query(
            &format!(
                "CREATE TABLE IF NOT EXISTS {table} (tenant STRING, stream STRING, token STRING,                  holder STRING, expires_at TIMESTAMP)"
            ),
            &[],
            "lease table",
        )
        .await?;
        let token = uuid::Uuid::new_v4().to_string();
        let holder = format!("process {} run {sync_id}", std::process::id());
        let script = format!(
            "BEGIN TRANSACTION;
             MERGE {table} AS t
             USING (SELECT {tenant} AS tenant, {stream} AS stream, {token} AS token, {holder} AS holder,              TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {ttl} SECOND) AS expires_at) AS s
             ON t.tenant = s.tenant AND t.stream = s.stream
             WHEN MATCHED AND t.expires_at < CURRENT_TIMESTAMP() THEN UPDATE SET token = s.token,              holder = s.holder, expires_at = s.expires_at
             WHEN NOT MATCHED THEN INSERT (tenant, stream, token, holder, expires_at)              VALUES (s.tenant, s.stream, s.token, s.holder, s.expires_at);
             COMMIT TRANSACTION;",
            tenant = sql_string(tenant),
            stream = sql_string(stream),
            token = sql_string(&token),
            holder = sql_string(&holder),
            ttl = LEASE_TTL.as_secs(),
        );
        if let Err(e) = api.query(&script, &[], "lease").await {
            // A concurrent transaction on the lease table aborts this one:
            // the read-back below says who holds the lease.
            tracing::debug!(tenant, stream, error = %e, "bigquery: taking the lease failed; reading it back");
        }
        let rows = self
            .query(
                &format!(
                    "SELECT token, holder, CAST(expires_at AS STRING) AS until FROM {table}                      WHERE tenant = @tenant AND stream = @stream"
                ),
                &[("tenant", tenant), ("stream", stream)],
            )
            .await?;
        let mine = rows
            .iter()
            .any(|r| r.get("token").and_then(Value::as_str) == Some(token.as_str()));
        if mine && rows.len() == 1 {
            return Ok(token);
        }
        let holder = rows
            .iter()
            .find(|r| r.get("token").and_then(Value::as_str) != Some(token.as_str()))
            .map(|r| {
                let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                format!("{}, lease until {}", s("holder"), s("until"))
            })
            .unwrap_or_else(|| "another run".into());
        if mine {
            self.release_lease(tenant, stream, &token).await;
        }
        Err(Error::Busy {
            sink: NAME,
            tenant: tenant.to_owned(),
            stream: stream.to_owned(),
            holder,
        })
    }

    /// Extends the lease when half of its time is gone; fails with
    /// [`Error::Busy`] when another run took it over.
    async fn renew_lease(&self, tenant: &str, stream: &str, token: &str) -> Result<()> {
        let table = self.quoted_table(LEASE_TABLE);
        self.inner
            .api
            .query(
                &format!(
                    "UPDATE {table} SET expires_at = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {ttl} SECOND)                      WHERE tenant = {tenant} AND stream = {stream} AND token = {token}",
                    ttl = LEASE_TTL.as_secs(),
                    tenant = sql_string(tenant),
                    stream = sql_string(stream),
                    token = sql_string(token),
                ),
                &[],
                "lease renewal",
            )
            .await?;
        let rows = self
            .query(
                &format!("SELECT holder FROM {table} WHERE tenant = @tenant AND stream = @stream AND token = @token"),
                &[("tenant", tenant), ("stream", stream), ("token", token)],
            )
            .await?;
        if rows.is_empty() {
            return Err(Error::Busy {
                sink: NAME,
                tenant: tenant.to_owned(),
                stream: stream.to_owned(),
                holder: "the lease expired and was taken over by another run".into(),
            });
        }
        Ok(())
    }

    /// Deletes the lease row if it is still `token`'s.
    async fn release_lease(&self, tenant: &str, stream: &str, token: &str) {
        let sql = format!(
            "DELETE FROM {} WHERE tenant = {} AND stream = {} AND token = {}",
            self.quoted_table(LEASE_TABLE),
            sql_string(tenant),
            sql_string(stream),
            sql_string(token),
        );
        if let Err(e) = self.inner.api.query(&sql, &[], "lease release").await {
            tracing::warn!(tenant, stream, error = %e, "bigquery: cannot release the lease: it expires by itself");
        }
    }

    /// After the final commit of a full refresh: counts the tenant's rows
    /// the run did not write and deletes them if `checkpoint.prune` allows.
    async fn prune(&self, layout: &Layout, checkpoint: &Checkpoint) -> Result<PruneOutcome> {
        if checkpoint.prune != Prune::All {
            let sql = format!(
                "SELECT SUM(CASE WHEN `_sync_id` IS NULL OR `_sync_id` != @sync_id THEN 1 ELSE 0 END) AS stale,                  COUNT(*) AS total FROM {} WHERE `_tenant_id` = @tenant",
                self.quoted_table(&layout.table)
            );
            let sync_id = checkpoint.sync_id.to_string();
            let rows = self
                .query(
                    &sql,
                    &[("sync_id", &sync_id), ("tenant", &checkpoint.tenant)],
                )
                .await?;
            let count = |k: &str| {
                rows.first()
                    .and_then(|r| r.get(k))
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                    .unwrap_or(0)
            };
            let (stale, total) = (count("stale"), count("total"));
            if let Err(withheld) = checkpoint.prune.check(stale, total) {
                return Ok(withheld);
            }
        }
        self.inner
            .api
            .query(
                &self.stale_rows_sql(layout, checkpoint),
                &[],
                &format!("delete stale rows of {}", layout.table),
            )
            .await?;
        Ok(PruneOutcome::Pruned { rows: None })
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), OpenStream>> {
        self.inner
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The MERGE of staged rows into the target (one statement).
    fn merge_sql(&self, layout: &Layout, staging: &str) -> String {
        let cols: Vec<String> = layout.columns.iter().map(|c| quote(&c.name)).collect();
        let mut keys = vec![quote("_tenant_id")];
        keys.extend(layout.keys.iter().map(|i| quote(&layout.columns[*i].name)));
        let on: Vec<String> = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect();
        // The key columns are equal on a match: only the others are set.
        let set: Vec<String> = cols
            .iter()
            .filter(|c| !keys.contains(c))
            .map(|c| format!("{c} = s.{c}"))
            .collect();
        let values: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
        format!(
            "MERGE {target} AS t\n\
             USING (\n  SELECT {cols} FROM {staging} WHERE TRUE\n  \
             QUALIFY ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {seq} DESC) = 1\n) AS s\n\
             ON {on}\n\
             WHEN MATCHED THEN UPDATE SET {set}\n\
             WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values});\n",
            target = self.quoted_table(&layout.table),
            staging = self.quoted_table(staging),
            cols = cols.join(", "),
            keys = keys.join(", "),
            seq = quote(SEQ_COLUMN),
            on = on.join(" AND "),
            set = set.join(", "),
            values = values.join(", "),
        )
    }

    /// The DELETE of a tenant's rows that a completing full refresh did not
    /// write (every row it wrote carries its sync id, kept across a resume).
    fn stale_rows_sql(&self, layout: &Layout, checkpoint: &Checkpoint) -> String {
        format!(
            "DELETE FROM {table} WHERE `_tenant_id` = {tenant} \
             AND (`_sync_id` IS NULL OR `_sync_id` != {sync_id});\n",
            table = self.quoted_table(&layout.table),
            tenant = sql_string(&checkpoint.tenant),
            sync_id = sql_string(&checkpoint.sync_id.to_string()),
        )
    }

    /// The MERGE of the state row of `checkpoint`.
    ///
    /// Its values are inlined as base64 literals
    /// (`SAFE_CONVERT_BYTES_TO_STRING(FROM_BASE64('…'))`), not passed as
    /// query parameters: the emulator binds no parameters in a multi-statement
    /// script, and base64 text cannot end a string literal, whatever the
    /// tenant, stream or state holds.
    fn state_sql(&self, checkpoint: &Checkpoint) -> Result<String> {
        let state = serde_json::to_string(checkpoint)
            .map_err(|e| Error::sink(NAME, "cannot encode the checkpoint", e))?;
        Ok(format!(
            "MERGE {table} AS t\n\
             USING (SELECT {tenant} AS tenant, {stream} AS stream, {state} AS checkpoint, \
             TIMESTAMP('{at}') AS committed_at) AS s\n\
             ON t.tenant = s.tenant AND t.stream = s.stream\n\
             WHEN MATCHED THEN UPDATE SET checkpoint = s.checkpoint, committed_at = s.committed_at\n\
             WHEN NOT MATCHED THEN INSERT (tenant, stream, checkpoint, committed_at) \
             VALUES (s.tenant, s.stream, s.checkpoint, s.committed_at);\n",
            table = self.quoted_table(STATE_TABLE),
            tenant = sql_string(&checkpoint.tenant),
            stream = sql_string(&checkpoint.stream),
            state = sql_string(&state),
            at = checkpoint
                .committed_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        ))
    }

    /// Loads `chunks` into a fresh staging table and merges them and the
    /// state in one transaction; the staging table is dropped after.
    async fn merge_commit(&self, layout: &Layout, chunks: &[Bytes], state_sql: &str) -> Result<()> {
        let api = &self.inner.api;
        let dataset = &self.inner.dataset;
        let mut stem = layout.table.clone();
        stem.truncate(900);
        let staging = format!(
            "_headwater_staging_{stem}_{}",
            uuid::Uuid::new_v4().simple()
        );
        let mut fields: Vec<Value> = layout
            .columns
            .iter()
            .map(|c| json!({"name": c.name, "type": c.ty.name(), "mode": "NULLABLE"}))
            .collect();
        fields.push(json!({"name": SEQ_COLUMN, "type": "INT64", "mode": "NULLABLE"}));
        let expires = Utc::now()
            + chrono::Duration::from_std(self.inner.staging_expiration)
                .unwrap_or(chrono::Duration::days(1));
        let body = json!({
            "tableReference": {"projectId": api.project, "datasetId": dataset, "tableId": staging},
            "description": format!("headwater: staging for {}, dropped after the merge", layout.table),
            "schema": {"fields": fields},
            "expirationTime": expires.timestamp_millis().to_string(),
        });
        api.insert_table(dataset, &body).await?;
        let merged = async {
            for chunk in chunks {
                api.load_ndjson(dataset, &staging, chunk.clone()).await?;
            }
            let script = format!(
                "BEGIN TRANSACTION;\n{}{state_sql}COMMIT TRANSACTION;",
                self.merge_sql(layout, &staging),
            );
            api.query(&script, &[], &format!("merge into {}", layout.table))
                .await
        }
        .await;
        if let Err(e) = api.delete_table(dataset, &staging).await {
            tracing::warn!(table = %staging, error = %e, "bigquery: cannot drop staging table; it expires by itself");
        }
        merged.map(|_| ())
    }
}

/// Appends `value` as a JSON string to `out`.
fn push_json(out: &mut Vec<u8>, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(|e| Error::sink(NAME, "cannot encode a row", e))
}

#[async_trait]
impl Sink for BigQuerySink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, ctx: &StreamContext) -> Result<()> {
        self.ensure_dataset().await?;
        self.ensure_state_table().await?;
        let token = self
            .take_lease(&ctx.tenant, &ctx.schema.name, ctx.sync_id)
            .await?;
        let layout = match self.layout(&ctx.schema).await {
            Ok(layout) => layout,
            Err(e) => {
                self.release_lease(&ctx.tenant, &ctx.schema.name, &token)
                    .await;
                return Err(e);
            }
        };
        // Rows are merged by key: a resumed run has no tail to drop, only
        // an unsent buffer to forget.
        self.open_map().insert(
            (ctx.tenant.clone(), ctx.schema.name.clone()),
            OpenStream {
                layout,
                chunks: Vec::new(),
                current: Vec::new(),
                rows: 0,
                seq: 0,
                rejected: HashMap::new(),
                lease: Some((token, std::time::Instant::now())),
            },
        );
        Ok(())
    }

    async fn abandon(&self, tenant: &str, stream: &str) -> Result<()> {
        let open = self
            .open_map()
            .remove(&(tenant.to_owned(), stream.to_owned()));
        if let Some((token, _)) = open.and_then(|o| o.lease) {
            self.release_lease(tenant, stream, &token).await;
        }
        Ok(())
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        let max = self.inner.max_upload_bytes;
        let mut map = self.open_map();
        let open = map
            .get_mut(&(batch.tenant.clone(), batch.stream.clone()))
            .ok_or_else(|| Error::Sink {
                sink: NAME,
                message: format!("write to `{}` before prepare", batch.stream),
                source: None,
            })?;
        let layout = Arc::clone(&open.layout);
        // The metadata is the same for the whole batch: encode it once.
        let mut prefix = Vec::with_capacity(160);
        prefix.extend_from_slice(b"{\"_tenant_id\":");
        push_json(&mut prefix, &batch.tenant)?;
        prefix.extend_from_slice(
            format!(
                ",\"_sync_id\":\"{}\",\"_extracted_at\":\"{}\"",
                batch.sync_id,
                batch
                    .extracted_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            )
            .as_bytes(),
        );
        let record_as_text = layout
            .column("_record")
            .is_some_and(|c| c.ty == ColumnType::String);
        let mut line = Vec::with_capacity(4096);
        for record in &batch.records {
            line.clear();
            line.extend_from_slice(&prefix);
            line.extend_from_slice(if record.deleted {
                b",\"_deleted\":true"
            } else {
                b",\"_deleted\":false"
            });
            line.extend_from_slice(format!(",\"{SEQ_COLUMN}\":\"{}\"", open.seq).as_bytes());
            line.extend_from_slice(b",\"_record\":");
            if record_as_text {
                let text = serde_json::to_string(&record.data)
                    .map_err(|e| Error::sink(NAME, "cannot encode a row", e))?;
                push_json(&mut line, &text)?;
            } else {
                push_json(&mut line, &record.data)?;
            }
            for (field, idx) in &layout.fields {
                let column = &layout.columns[*idx];
                let is_key = layout.keys.contains(idx);
                let id_value;
                let value = if is_key && layout.key_from_id {
                    id_value = Value::String(record.id.clone());
                    &id_value
                } else {
                    record.data.get(field).unwrap_or(&Value::Null)
                };
                match to_load_value(value, &column.ty) {
                    Ok(Some(v)) => {
                        line.push(b',');
                        push_json(&mut line, &column.name)?;
                        line.push(b':');
                        push_json(&mut line, &v)?;
                    }
                    Ok(None) if is_key => {
                        return Err(Error::Sink {
                            sink: NAME,
                            message: format!(
                                "record `{}` of `{}` has no value for key field `{field}`",
                                record.id, batch.stream
                            ),
                            source: None,
                        })
                    }
                    Ok(None) => {}
                    Err(()) if is_key => {
                        return Err(Error::Sink {
                            sink: NAME,
                            message: format!(
                                "record `{}` of `{}`: key field `{field}` does not fit column `{}` ({})",
                                record.id,
                                batch.stream,
                                column.name,
                                column.ty.name()
                            ),
                            source: None,
                        })
                    }
                    Err(()) => *open.rejected.entry(column.name.clone()).or_insert(0) += 1,
                }
            }
            line.extend_from_slice(b"}\n");
            if !open.current.is_empty() && open.current.len() + line.len() > max {
                let full = std::mem::take(&mut open.current);
                open.chunks.push(Bytes::from(full));
            }
            open.current.extend_from_slice(&line);
            open.rows += 1;
            open.seq += 1;
        }
        Ok(())
    }

    async fn commit(&self, checkpoint: &Checkpoint) -> Result<PruneOutcome> {
        let key = (checkpoint.tenant.clone(), checkpoint.stream.clone());
        let (layout, chunks, rows, lease) = {
            let mut map = self.open_map();
            let open = map.get_mut(&key).ok_or_else(|| Error::Sink {
                sink: NAME,
                message: format!("commit of `{}` before prepare", checkpoint.stream),
                source: None,
            })?;
            let mut chunks = std::mem::take(&mut open.chunks);
            if !open.current.is_empty() {
                chunks.push(Bytes::from(std::mem::take(&mut open.current)));
            }
            for (column, n) in open.rejected.drain() {
                tracing::warn!(
                    table = %open.layout.table,
                    column = %column,
                    values = n,
                    "bigquery: values did not fit their column: written as NULL, kept in _record"
                );
            }
            let rows = std::mem::take(&mut open.rows);
            (Arc::clone(&open.layout), chunks, rows, open.lease.clone())
        };
        // Still this run's stream? Checked (and extended) once half of the
        // lease's time is gone.
        if let Some((token, renewed)) = &lease {
            if renewed.elapsed() > LEASE_TTL / 2 {
                if let Err(e) = self
                    .renew_lease(&checkpoint.tenant, &checkpoint.stream, token)
                    .await
                {
                    let mut map = self.open_map();
                    if let Some(open) = map.get_mut(&key) {
                        let mut back = chunks;
                        back.append(&mut open.chunks);
                        open.chunks = back;
                        open.rows += rows;
                    }
                    return Err(e);
                }
                if let Some(open) = self.open_map().get_mut(&key) {
                    if let Some(l) = &mut open.lease {
                        l.1 = std::time::Instant::now();
                    }
                }
            }
        }
        // Data and state: one transaction. A full refresh completing then
        // deletes the rows it did not write, as far as allowed.
        let state_sql = self.state_sql(checkpoint)?;
        let result = if rows == 0 {
            self.inner
                .api
                .query(
                    &format!("BEGIN TRANSACTION;\n{state_sql}COMMIT TRANSACTION;"),
                    &[],
                    "state update",
                )
                .await
                .map(|_| ())
        } else {
            self.merge_commit(&layout, &chunks, &state_sql).await
        };
        let result = match result {
            Ok(()) if checkpoint.complete && checkpoint.full_refresh => {
                self.prune(&layout, checkpoint).await
            }
            Ok(()) => Ok(PruneOutcome::NotApplicable),
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => {
                tracing::debug!(table = %layout.table, rows, "bigquery: committed");
                if checkpoint.complete {
                    let open = self.open_map().remove(&key);
                    if let Some((token, _)) = open.and_then(|o| o.lease) {
                        self.release_lease(&checkpoint.tenant, &checkpoint.stream, &token)
                            .await;
                    }
                }
                Ok(outcome)
            }
            Err(e) => {
                // Keep the rows: a retried commit sends them again.
                let mut map = self.open_map();
                if let Some(open) = map.get_mut(&key) {
                    let mut back = chunks;
                    back.append(&mut open.chunks);
                    open.chunks = back;
                    open.rows += rows;
                }
                Err(e)
            }
        }
    }

    /// Loads the records into `_headwater_quarantine` (one load job).
    async fn quarantine(&self, records: &[QuarantinedRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.ensure_quarantine_table().await?;
        let mut data = Vec::new();
        for r in records {
            data.extend_from_slice(r.to_json().to_string().as_bytes());
            data.push(b'\n');
        }
        self.inner
            .api
            .load_ndjson(&self.inner.dataset, QUARANTINE_TABLE, Bytes::from(data))
            .await
    }

    async fn quarantined(&self, tenant: &str, stream: &str) -> Result<Vec<QuarantinedRecord>> {
        if self
            .inner
            .api
            .get_table(&self.inner.dataset, QUARANTINE_TABLE)
            .await?
            .is_none()
        {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT * FROM {} WHERE tenant = @tenant AND stream = @stream \
             ORDER BY quarantined_at",
            self.quoted_table(QUARANTINE_TABLE)
        );
        let rows = self
            .query(&sql, &[("tenant", tenant), ("stream", stream)])
            .await?;
        rows.into_iter()
            .map(|row| QuarantinedRecord::from_json(&Value::Object(row)))
            .collect()
    }

    async fn load_state(&self, tenant: &str, stream: &str) -> Result<Option<Checkpoint>> {
        if self.inner.state_ready.get().is_none()
            && self
                .inner
                .api
                .get_table(&self.inner.dataset, STATE_TABLE)
                .await?
                .is_none()
        {
            return Ok(None);
        }
        let sql = format!(
            "SELECT checkpoint FROM {} WHERE tenant = @tenant AND stream = @stream \
             ORDER BY committed_at DESC LIMIT 1",
            self.quoted_table(STATE_TABLE)
        );
        let rows = self
            .query(&sql, &[("tenant", tenant), ("stream", stream)])
            .await?;
        let Some(text) = rows
            .first()
            .and_then(|r| r.get("checkpoint"))
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        serde_json::from_str(text).map(Some).map_err(|e| {
            Error::state(
                format!("unreadable checkpoint of {tenant}/{stream} in {STATE_TABLE}"),
                e,
            )
        })
    }

    /// The keys of the tenant's live rows (one query); a composite key's
    /// columns are cast to text and joined by `:`. Empty when the table does
    /// not exist.
    async fn live_ids(&self, tenant: &str, stream: &StreamSchema) -> Result<Vec<String>> {
        if stream.primary_key.is_empty() {
            return Err(Error::Config(format!(
                "stream `{}` has no primary key to list",
                stream.name
            )));
        }
        let columns = self.columns(&stream.name).await?;
        if columns.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(stream.primary_key.len());
        for field in &stream.primary_key {
            let column = columns
                .iter()
                .find(|c| c.field.as_deref() == Some(field.as_str()))
                .ok_or_else(|| Error::Sink {
                    sink: NAME,
                    message: format!(
                        "table {} has no column for key field `{field}` of stream `{}`",
                        self.table_ref(&stream.name),
                        stream.name
                    ),
                    source: None,
                })?;
            keys.push(format!("CAST({} AS STRING)", quote(&column.name)));
        }
        let key = if keys.len() == 1 {
            keys.remove(0)
        } else {
            format!("CONCAT({})", keys.join(", ':', "))
        };
        let sql = format!(
            "SELECT {key} AS k FROM {} \
             WHERE `_tenant_id` = @tenant AND NOT IFNULL(`_deleted`, FALSE)",
            self.table_ref(&stream.name)
        );
        let rows = self.query(&sql, &[("tenant", tenant)]).await?;
        rows.into_iter()
            .map(|row| match row.get("k") {
                Some(Value::String(k)) => Ok(k.clone()),
                other => Err(Error::Sink {
                    sink: NAME,
                    message: format!("a key of {} reads as {other:?}", stream.name),
                    source: None,
                }),
            })
            .collect()
    }
}
