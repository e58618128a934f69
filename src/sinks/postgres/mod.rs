//! Postgres: a typed table per stream, bulk upserts, and the sync state
//! committed in the same transaction as the data it covers.
//!
//! ```no_run
//! # async fn run() -> headwater::Result<()> {
//! use headwater::sinks::postgres::PostgresSink;
//!
//! let sink = PostgresSink::builder()
//!     .url("postgres://postgres:postgres@127.0.0.1:5432/test")
//!     .schema("headwater")
//!     .build()
//!     .await?;
//! // or: PostgresSink::connect(url).await?, PostgresSink::from_env().await? (DATABASE_URL)
//! # let _ = sink; Ok(()) }
//! ```
//!
//! # Tables
//! Everything lives in one Postgres schema (default `headwater`, created if
//! missing). Each stream gets a table shared by all tenants:
//!
//! | column | type | what |
//! |---|---|---|
//! | `_tenant_id` | `text` | the tenant (connected account) |
//! | one per field | from the field type (below) | the typed value, NULL when blank or when it does not fit |
//! | `_record` | `jsonb` | the whole record as the source delivered it (lz4-compressed where the server can) |
//! | `_deleted` | `boolean` | true for records the provider reports deleted (archived): a soft delete |
//! | `_sync_id` | `uuid` | the last sync run that wrote the row |
//! | `_extracted_at` | `timestamptz` | when that run read it from the provider |
//!
//! ## Column budget
//! All tenants of a stream share its table, so the table needs a column for
//! the union of their fields, and Postgres allows 1,600 columns (and 8 kB
//! per row). Each table has a budget of typed columns
//! ([`PostgresSinkBuilder::max_columns`], default 400): the key and cursor
//! fields always get one, the other fields get one first come, first served
//! (in schema order, as streams are prepared) while the table is under the
//! budget. A field without a column loses nothing: every field's value is in
//! `_record` (`_record->>'custom_prop'`). `_headwater_columns` lists exactly
//! the fields that have a column; a field keeps its column for good. So one
//! portal with thousands of custom properties never stops the stream for
//! the others; the warning `the stream's table is at its column budget`
//! says when fields are left to `_record`. The BigQuery sink applies the
//! same rule with BigQuery's limit of 10,000 columns.
//!
//! Field types map to `text` (String), `bigint` (Integer), `numeric`
//! (Number), `boolean`, `date`, `timestamptz` (Timestamp) and `jsonb` (Json).
//! The primary key is (`_tenant_id`, the stream's key fields); it also serves
//! every query by tenant. When the stream has a cursor field (last modified),
//! an index on (`_tenant_id`, cursor) serves incremental reads.
//!
//! Bookkeeping tables in the same schema:
//! - `_headwater_state(tenant, stream, sync_id, complete, records,
//!   committed_at, checkpoint jsonb)`: the last committed checkpoint.
//! - `_headwater_streams(stream, table_name, primary_key, cursor_field,
//!   stream_schema)`: the table of each stream and its latest schema.
//! - `_headwater_columns(stream, position, field_name, column_name,
//!   column_type, field_type)`: the column of each field.
//! - `_headwater_quarantine(tenant, stream, sync_id, position, raw,
//!   raw_base64, path, error, quarantined_at)`: records the sync could not
//!   decode, created on first use ([`Sink::quarantine`]).
//!
//! # Names
//! Identifiers are always quoted, so a property called `select`, `Email`
//! next to `email`, or `x"; drop table deals; --` is just a column. Postgres
//! cuts identifiers at 63 bytes; a longer name (or an empty one, or one that
//! would take a metadata column's name) is shortened at a character boundary
//! and given an 8-hex-digit hash suffix, unique and stable. Look names up in
//! `_headwater_streams` and `_headwater_columns` (or with
//! [`PostgresSink::table_name`]).
//!
//! # NUL characters
//! Postgres stores no NUL (`\u0000`) in `text` or `jsonb`. Every string on
//! its way to the database goes through one helper that replaces each NUL
//! with U+FFFD (`�`): tenants, stream and field names, labels and
//! descriptions in the stored schema, record ids, and record values and
//! keys in the columns and `_record` (counted in
//! [`PostgresStats::sanitized_records`] and logged once per stream). Look
//! such names up with U+FFFD in place of the NUL. The checkpoint alone,
//! which must come back exactly for a resume, is stored as its JSON text
//! (where NUL is the escape `\u0000`) under the key `headwater_json_text`
//! when it holds a NUL; [`Sink::load_state`] reads it back unchanged.
//!
//! # Writes
//! [`Sink::write`] converts each record to Postgres' binary COPY format
//! (keeping the last version of a key written twice) and buffers it until
//! the next commit. [`Sink::commit`] makes the buffered rows and the
//! checkpoint durable in one transaction:
//!
//! - **upsert**: `COPY … FROM STDIN (FORMAT binary)` into a temporary
//!   staging table, one `INSERT … SELECT … ON CONFLICT (key) DO UPDATE` into
//!   the stream's table, the upsert of the state row, `COMMIT`;
//! - **direct**: when the rows are most likely all new (a full refresh of a
//!   tenant with no rows yet, or a resumed run), COPY straight into the
//!   table, the state row, `COMMIT`. A key that is already there fails that
//!   COPY with a unique violation; the transaction is then rolled back and
//!   the commit takes the upsert path (as does the rest of the run). The
//!   result is the same; see [`PostgresSinkBuilder::optimistic_copy`].
//!
//! While a run writes, its rows already stream into the COPY of the
//! commit's transaction, on a connection of the run's own, so the server
//! works while the next pages are read and encoded; the commit then only
//! ends the COPY. Should that stream break (a key written twice, a slow
//! source and [`PostgresSinkBuilder::stream_timeout`], a lost connection),
//! the commit sends the buffered rows itself. Either way data and state
//! become durable together, and a crash before the commit loses only rows
//! that the engine reads again from the last checkpoint.
//!
//! Writing rows again (a resumed or repeated sync) leaves their data columns
//! and `_record` as they are, and sets `_sync_id` and `_extracted_at` to the
//! run that wrote them last.
//!
//! A full refresh replaces what the tenant's stream held: its final commit
//! also deletes, in the same transaction, the tenant's rows that the run did
//! not write (records gone from the provider, such as hard or GDPR
//! deletions; archived records are still read and kept with `_deleted`), as
//! far as [`Checkpoint::prune`] allows: it counts them first, and when the
//! run's completeness checks did not match or they are more than the allowed
//! share of the tenant's rows, it deletes nothing. An incremental run only
//! merges its changes. Readers see each commit's rows as soon as it is
//! committed.
//!
//! # One writer per stream
//! [`Sink::prepare`] takes a session-level advisory lock
//! (`pg_try_advisory_lock`, keyed by a hash of the schema, tenant and
//! stream) on a connection of the run's own, taken out of the pool and held
//! until the run's final commit or [`Sink::abandon`]. The server releases it
//! when that connection ends, so a run killed with its process never blocks
//! the stream: the next run takes the lock as soon as the server sees the
//! connection close. A run started meanwhile fails with [`Error::Busy`].
//! Session locks need a session: put a transaction-pooling proxy (PgBouncer
//! in `transaction` mode) in front of the sink and the lock means nothing.
//!
//! # Values
//! Values are converted to their column's type. Blank strings become NULL in
//! every non-text column (HubSpot sends `""` for an empty number or date). A
//! value that does not fit (`"n/a"` in a numeric column) becomes NULL in the
//! typed column, stays in `_record`, is logged (`tracing::warn!`, once per
//! field) and counted in [`PostgresStats::mismatched_values`]. NUL characters,
//! which neither `text` nor `jsonb` can hold, are replaced by U+FFFD and
//! counted in [`PostgresStats::sanitized_records`].
//!
//! # Schema evolution
//! [`Sink::prepare`] adds a column for each new field
//! (`ALTER TABLE … ADD COLUMN IF NOT EXISTS`). A field whose type changed
//! keeps its column: values are converted to the column's type, those that no
//! longer fit are NULL there and kept in `_record`; the change is logged and
//! counted ([`PostgresStats::type_changes`]). Nothing is ever dropped. A
//! stream's primary key cannot change in place.
//!
//! # Connections
//! A [`deadpool_postgres`] pool of `tokio-postgres` connections for
//! `prepare`, `load_state` and commits, and, for each run that is writing,
//! one more connection of its own to stream rows (at most
//! [`PostgresSinkBuilder::max_connections`] of each). TLS (rustls) follows
//! the URL's `sslmode` and `sslrootcert` as libpq does: see
//! [`PostgresSinkBuilder::url`].
//!
//! `_record` is compressed with lz4 where the server supports it (Postgres
//! 14 and later, built with lz4), which is several times cheaper than the
//! default pglz for records wide enough to be compressed.
//!
//! [`Sink::write`]: crate::sink::Sink::write
//! [`Sink::commit`]: crate::sink::Sink::commit
//! [`Sink::prepare`]: crate::sink::Sink::prepare
//! [`Sink::load_state`]: crate::sink::Sink::load_state

mod builder;
mod conn;
pub(crate) mod encode;
mod ident;
mod layout;
mod quarantine;
mod rows;
mod tls;

pub use builder::PostgresSinkBuilder;

use self::conn::{send_chunks, Conn, OpenCopy, TxConn, COPY_HEADER, COPY_TRAILER};
use self::rows::{Buffer, Encoded, Rows};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use deadpool_postgres::Pool;
use futures::SinkExt;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;

use self::encode::Cell;
use self::layout::{Layout, COLUMNS_TABLE, STATE_TABLE, STREAMS_TABLE};
use crate::schema::StreamSchema;
use crate::sink::{Batch, Checkpoint, Prune, PruneOutcome, QuarantinedRecord, Sink, StreamContext};
use crate::{Error, Result};

pub(crate) const NAME: &str = "postgres";

/// The Postgres schema used when none is set.
pub const DEFAULT_SCHEMA: &str = "headwater";

/// The environment variable [`PostgresSinkBuilder::from_env`] reads.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// Cells of a staged row besides the data columns: `_tenant_id` and
/// [`layout::TRAILING_META`].
const META_CELLS: usize = 5;

/// Maps a tokio-postgres error into [`Error::Sink`], keeping the server's
/// message and SQLSTATE in the text.
pub(crate) fn pg_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let what = what.into();
    move |e| {
        let message = match e.as_db_error() {
            Some(db) => format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
            None => format!("{what}: {e}"),
        };
        Error::Sink {
            sink: NAME,
            message,
            source: Some(Box::new(e)),
        }
    }
}

/// `e` and its causes, `: `-separated (a TLS failure says why only in its
/// source: `invalid peer certificate: UnknownIssuer`).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the sink has counted since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresStats {
    /// Values that did not fit their typed column: NULL there, kept in
    /// `_record`.
    pub mismatched_values: u64,
    /// Records in which NUL characters were replaced by U+FFFD.
    pub sanitized_records: u64,
    /// Fields found (by `prepare`) declared with another type than their
    /// existing column has; each field counts once per sink.
    pub type_changes: u64,
    /// Rows committed (the last version of each key, per commit).
    pub rows_committed: u64,
    /// Commits done.
    pub commits: u64,
    /// Commits whose rows went straight into the table (see
    /// [`PostgresSinkBuilder::optimistic_copy`]); the others went through
    /// the staging table and the upsert.
    pub direct_commits: u64,
}

#[derive(Debug, Default)]
struct Counters {
    mismatched: AtomicU64,
    sanitized: AtomicU64,
    type_changes: AtomicU64,
    rows: AtomicU64,
    commits: AtomicU64,
    direct: AtomicU64,
}

/// A [`Sink`] writing into Postgres. See the module docs.
pub struct PostgresSink {
    pool: Pool,
    schema: String,
    target: String,
    /// Set up once: whether the server compresses with lz4.
    setup: tokio::sync::OnceCell<bool>,
    buffers: Mutex<HashMap<(String, String), Buffer>>,
    /// (stream, field) pairs already logged, so a bad field warns once.
    reported: Mutex<HashSet<(String, String, &'static str)>>,
    counters: Counters,
    optimistic_copy: bool,
    /// Permits for connections taken out of the pool to stream rows.
    streams: Arc<tokio::sync::Semaphore>,
    /// See [`PostgresSinkBuilder::stream_timeout`].
    stream_timeout: Duration,
    /// For the streaming connections.
    pg_config: tokio_postgres::Config,
    /// The runs' leases: per (tenant, stream), the connection holding its
    /// session advisory lock.
    leases: Mutex<HashMap<(String, String), Lease>>,
    /// See [`PostgresSinkBuilder::max_columns`].
    max_columns: usize,
    /// TLS for the streaming connections (the pool has its own clone).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// A run's lease: a connection out of the pool holding a session advisory
/// lock; dropping it closes the connection, which releases the lock.
struct Lease {
    client: deadpool_postgres::ClientWrapper,
    key: i64,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("target", &self.target)
            .field("schema", &self.schema)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PostgresSink {
    /// A builder.
    pub fn builder() -> PostgresSinkBuilder {
        PostgresSinkBuilder::new()
    }

    /// A sink on `url` with the default schema.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder().url(url).build().await
    }

    /// A sink on `DATABASE_URL` with the default schema.
    pub async fn from_env() -> Result<Self> {
        PostgresSinkBuilder::from_env().build().await
    }

    /// The Postgres schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Counters since the sink was built.
    pub fn stats(&self) -> PostgresStats {
        let c = &self.counters;
        PostgresStats {
            mismatched_values: c.mismatched.load(Ordering::Relaxed),
            sanitized_records: c.sanitized.load(Ordering::Relaxed),
            type_changes: c.type_changes.load(Ordering::Relaxed),
            rows_committed: c.rows.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            direct_commits: c.direct.load(Ordering::Relaxed),
        }
    }

    /// The table (unquoted name, in [`PostgresSink::schema`]) of a stream
    /// prepared before, if any.
    pub async fn table_name(&self, stream: &str) -> Result<Option<String>> {
        self.setup().await?;
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT table_name FROM {} WHERE stream = $1",
                    ident::qualified(&self.schema, STREAMS_TABLE)
                ),
                &[&encode::clean(stream)],
            )
            .await
            .map_err(pg_err("cannot read the stream table"))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| Error::Sink {
            sink: NAME,
            message: format!(
                "cannot connect to Postgres at {}: {}",
                self.target,
                error_chain(&e)
            ),
            source: Some(Box::new(e)),
        })
    }

    fn lock_key(&self) -> i64 {
        ident::fnv1a(&[b"headwater", self.schema.as_bytes()]) as i64
    }

    /// The advisory lock key of a tenant's stream: its lease.
    fn lease_key(&self, tenant: &str, stream: &str) -> i64 {
        ident::fnv1a(&[
            b"headwater-lease",
            self.schema.as_bytes(),
            tenant.as_bytes(),
            stream.as_bytes(),
        ]) as i64
    }

    /// Takes the run's lease of a tenant's stream, or fails with
    /// [`Error::Busy`] naming the session that holds it.
    async fn take_lease(&self, tenant: &str, stream: &str) -> Result<()> {
        let key = self.lease_key(tenant, stream);
        let client = deadpool_postgres::Object::take(self.client().await?);
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(pg_err("cannot take the stream's lease"))?
            .get(0);
        if !locked {
            // Who holds it: a bigint key is (classid, objid) = (high, low) 32 bits.
            let holder = client
                .query_opt(
                    "SELECT format('Postgres session pid %s (%s, connected %s)', a.pid,                      coalesce(nullif(a.application_name, ''), 'no application name'), a.backend_start)                      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid                      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1                      AND l.classid = (($1::bigint >> 32) & 4294967295)::oid                      AND l.objid = ($1::bigint & 4294967295)::oid",
                    &[&key],
                )
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_else(|| "another Postgres session".to_owned());
            return Err(Error::Busy {
                sink: NAME,
                tenant: tenant.to_owned(),
                stream: stream.to_owned(),
                holder,
            });
        }
        let previous = lock(&self.leases).insert(
            (tenant.to_owned(), stream.to_owned()),
            Lease { client, key },
        );
        // Another connection of this instance held it: the server said no to
        // this one then, so this cannot happen; release it anyway.
        if let Some(old) = previous {
            drop(old);
        }
        Ok(())
    }

    /// Releases the run's lease of a tenant's stream, if held.
    async fn release_lease(&self, tenant: &str, stream: &str) {
        let lease = lock(&self.leases).remove(&(tenant.to_owned(), stream.to_owned()));
        if let Some(lease) = lease {
            // Unlock before closing, so a run that starts right after this
            // one finished finds the lock free (closing is asynchronous).
            if let Err(e) = lease
                .client
                .execute("SELECT pg_advisory_unlock($1)", &[&lease.key])
                .await
            {
                tracing::debug!(error = %e, "cannot unlock the lease: closing its connection releases it");
            }
        }
    }

    /// Creates the schema and the bookkeeping tables, once per sink, and
    /// returns whether the server can compress with lz4.
    async fn setup(&self) -> Result<bool> {
        self.setup
            .get_or_try_init(|| async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_err("cannot begin"))?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_key()])
                    .await
                    .map_err(pg_err("cannot lock the schema"))?;
                // CREATE SCHEMA needs a privilege on the database even when the
                // schema exists: only ask for it when it does not.
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                        &[&self.schema],
                    )
                    .await
                    .map_err(pg_err("cannot look up the schema"))?
                    .is_some();
                tx.batch_execute(&layout::setup_sql(&self.schema, !exists))
                    .await
                    .map_err(pg_err(format!(
                        "cannot create the schema {} and its bookkeeping tables",
                        ident::quote(&self.schema)
                    )))?;
                let lz4: bool = tx
                    .query_one(
                        "SELECT coalesce(bool_or('lz4' = ANY(enumvals)), false) FROM pg_settings \
                         WHERE name = 'default_toast_compression'",
                        &[],
                    )
                    .await
                    .map_err(pg_err("cannot read the server's settings"))?
                    .get(0);
                tx.commit()
                    .await
                    .map_err(pg_err("cannot commit the setup"))?;
                Ok::<bool, Error>(lz4)
            })
            .await
            .copied()
    }

    fn report_once(&self, stream: &str, field: &str, kind: &'static str) -> bool {
        lock(&self.reported).insert((stream.to_owned(), field.to_owned(), kind))
    }

    /// Encodes `batch` as COPY BINARY tuples of `layout`, with each row's
    /// key in a canonical form (equal keys, equal bytes).
    fn encode(&self, layout: &Layout, batch: &Batch) -> Result<Encoded> {
        let ncols = layout.columns.len();
        let fields = i16::try_from(ncols + META_CELLS).map_err(|_| Error::Sink {
            sink: NAME,
            message: format!(
                "stream `{}` has too many fields for one table",
                layout.stream
            ),
            source: None,
        })?;
        let mut out = BytesMut::with_capacity(batch.records.len() * 1024);
        let mut rows = Vec::with_capacity(batch.records.len());
        let mut mismatches = vec![0u64; ncols];
        let mut samples: Vec<Option<String>> = vec![None; ncols];
        let mut sanitized = 0u64;
        let tenant = encode::clean(&batch.tenant);
        for record in &batch.records {
            let clean;
            let data = if encode::map_has_nul(&record.data) {
                sanitized += 1;
                clean = encode::replace_nul(&record.data);
                &clean
            } else {
                &record.data
            };
            let row_start = out.len();
            let mut key = Vec::with_capacity(32);
            out.put_i16(fields);
            encode::text_cell(&tenant, &mut out);
            for (c, col) in layout.columns.iter().enumerate() {
                let start = out.len();
                let value = data.get(&col.field);
                let got = encode::cell(value, col.ty, &mut out);
                if got == Cell::Mismatch {
                    mismatches[c] += 1;
                    if samples[c].is_none() {
                        samples[c] = value.map(|v| v.to_string().chars().take(80).collect());
                    }
                }
                if !layout.is_key[c] {
                    continue;
                }
                if got != Cell::Value {
                    // A key cannot be NULL: a one-field key falls back to the
                    // record's id.
                    out.truncate(start);
                    let id = Value::String(encode::clean(&record.id).into_owned());
                    if layout.key_len != 1
                        || encode::cell(Some(&id), col.ty, &mut out) != Cell::Value
                    {
                        return Err(Error::Sink {
                            sink: NAME,
                            message: format!(
                                "record `{}` of stream `{}` has no value for its key field `{}` that fits a {} column",
                                record.id,
                                layout.stream,
                                col.field,
                                layout::sql_type(col.ty)
                            ),
                            source: None,
                        });
                    }
                }
                encode::canonical_key(&out[start..], col.ty, &mut key);
            }
            encode::jsonb_cell(data, &mut out);
            encode::bool_cell(record.deleted, &mut out);
            encode::uuid_cell(&batch.sync_id, &mut out);
            encode::timestamp_cell(&batch.extracted_at, &mut out);
            rows.push((row_start, out.len(), key));
        }
        let total: u64 = mismatches.iter().sum();
        if total > 0 {
            self.counters.mismatched.fetch_add(total, Ordering::Relaxed);
            for (c, n) in mismatches.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                let col = &layout.columns[c];
                if self.report_once(&layout.stream, &col.field, "mismatch") {
                    tracing::warn!(
                        stream = %layout.stream,
                        field = %col.field,
                        column_type = layout::sql_type(col.ty),
                        example = samples[c].as_deref().unwrap_or(""),
                        "values that do not fit their column are stored as NULL there and kept in _record"
                    );
                }
            }
        }
        if sanitized > 0 {
            self.counters
                .sanitized
                .fetch_add(sanitized, Ordering::Relaxed);
            if self.report_once(&layout.stream, "", "nul") {
                tracing::warn!(
                    stream = %layout.stream,
                    "NUL characters (which Postgres cannot store) were replaced by U+FFFD"
                );
            }
        }
        Ok(Encoded {
            bytes: out.freeze(),
            rows,
        })
    }

    /// A connection of its own for a run that streams rows (outside the
    /// pool, which stays free for everything else); `None` when
    /// [`PostgresSinkBuilder::max_connections`] of them are in use. A
    /// watchdog closes it when nothing was sent on it for
    /// [`PostgresSinkBuilder::stream_timeout`] (a run that failed and will
    /// not commit): the server then ends its transaction and frees its locks.
    async fn stream_conn(&self) -> Option<Conn> {
        let permit = match self.streams.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.reap_idle_streams();
                self.streams.clone().try_acquire_owned().ok()?
            }
        };
        match Conn::own(
            &self.pg_config,
            self.tls.clone(),
            permit,
            self.stream_timeout,
        )
        .await
        {
            Ok(conn) => Some(conn),
            Err(e) => {
                tracing::debug!(error = %e, "no connection to stream rows: they go at commit");
                None
            }
        }
    }

    /// Closes the streaming connections of runs that wrote nothing for
    /// longer than the stream timeout: runs that failed and were not
    /// prepared again.
    fn reap_idle_streams(&self) {
        let limit = self.stream_timeout;
        let stale: Vec<Conn> = {
            let mut map = lock(&self.buffers);
            let mut out = Vec::new();
            for buf in map.values_mut() {
                if buf.idle.as_ref().is_some_and(|c| c.stale(limit)) {
                    out.extend(buf.idle.take());
                }
                if buf
                    .copy
                    .as_ref()
                    .is_some_and(|c| c.conn.conn().is_some_and(|c| c.stale(limit)))
                {
                    if let Some(copy) = buf.copy.take() {
                        out.extend(copy.conn.into_conn());
                    }
                    buf.streamable = false;
                }
            }
            out
        };
        for conn in stale {
            conn.close();
        }
    }

    /// Opens a transaction on `conn` and a COPY into the table (`direct`)
    /// or the staging table, and sends the COPY header.
    async fn open_copy(&self, conn: Conn, layout: &Layout, direct: bool) -> Result<OpenCopy> {
        let conn = TxConn::begin(conn).await?;
        if !direct {
            conn.client()
                .batch_execute(&layout.stage_sql)
                .await
                .map_err(pg_err("cannot create the staging table"))?;
        }
        let sql = if direct {
            &layout.direct_copy_sql
        } else {
            &layout.copy_sql
        };
        let statement = conn
            .client()
            .prepare_cached(sql)
            .await
            .map_err(pg_err("cannot prepare COPY"))?;
        let sink = conn
            .client()
            .copy_in::<_, Bytes>(&statement)
            .await
            .map_err(pg_err("cannot start COPY"))?;
        let mut copy = OpenCopy {
            conn,
            sink: Box::pin(sink),
            direct,
        };
        copy.sink
            .feed(Bytes::from_static(COPY_HEADER))
            .await
            .map_err(pg_err("cannot send to COPY"))?;
        Ok(copy)
    }

    /// Sends one batch into the commit's open COPY, opening it first (on
    /// the run's streaming connection) when needed. Returns the COPY to
    /// keep, or `None` when streaming is not possible or failed: the commit
    /// then sends the buffered rows itself.
    async fn stream(
        &self,
        layout: &Layout,
        open: Option<OpenCopy>,
        idle: Option<Conn>,
        direct: bool,
        bytes: Bytes,
    ) -> Option<OpenCopy> {
        let mut copy = match open {
            Some(c) => c,
            None => {
                let conn = match idle {
                    Some(c) => c,
                    None => self.stream_conn().await?,
                };
                match self.open_copy(conn, layout, direct).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(stream = %layout.stream, error = %e, "cannot stream rows: they go at commit");
                        return None;
                    }
                }
            }
        };
        match send_chunks(copy.sink.as_mut(), &[bytes]).await {
            Ok(()) => {
                copy.conn.touch();
                Some(copy)
            }
            Err(e) => {
                tracing::debug!(stream = %layout.stream, error = %e, "streaming stopped: the rows go at commit");
                drop(copy); // closes the connection: the server aborts its transaction
                None
            }
        }
    }

    /// Ends a streamed commit: finishes the COPY, upserts from staging when
    /// the rows were staged, then [`PostgresSink::finish_tx`]. Returns the
    /// connection for the next commit, or `None` when a direct COPY met a
    /// row already there: then nothing was committed, and the commit must go
    /// through staging.
    async fn commit_streamed(
        &self,
        layout: &Layout,
        copy: OpenCopy,
        cp: &Checkpoint,
    ) -> Result<Option<(Conn, PruneOutcome)>> {
        let OpenCopy {
            conn,
            mut sink,
            direct,
        } = copy;
        if let Some(c) = conn.conn() {
            c.busy(true);
        }
        let finished = async {
            sink.feed(Bytes::from_static(COPY_TRAILER)).await?;
            sink.as_mut().finish().await
        }
        .await;
        match finished {
            Ok(_) => {}
            Err(e) if direct && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                drop(sink);
                drop(conn.rollback().await);
                return Ok(None);
            }
            Err(e) => {
                return Err(pg_err(format!(
                    "COPY into {} of `{}`",
                    if direct {
                        "the table"
                    } else {
                        "the staging table"
                    },
                    layout.stream
                ))(e))
            }
        }
        if !direct {
            self.upsert(&conn, layout).await?;
        }
        let (conn, outcome) = self.finish_tx(conn, layout, cp).await?;
        conn.busy(false);
        Ok(Some((conn, outcome)))
    }

    /// A commit of buffered rows in one go, on a pooled connection. When
    /// `direct`, the rows are first copied straight into the table: that
    /// succeeds exactly when none of their keys is there yet, which is then
    /// what the upsert would have done. On a unique violation the
    /// transaction is rolled back and the rows go through the staging table
    /// and the upsert. Returns whether the direct path was taken.
    async fn commit_buffered(
        &self,
        layout: &Layout,
        payload: &[Bytes],
        rows: u64,
        cp: &Checkpoint,
        direct: bool,
    ) -> Result<(bool, PruneOutcome)> {
        if rows == 0 {
            let conn = TxConn::begin(Conn::Pooled(self.client().await?)).await?;
            let (_, outcome) = self.finish_tx(conn, layout, cp).await?;
            return Ok((false, outcome));
        }
        for try_direct in [true, false].into_iter().filter(|d| direct || !d) {
            let conn = Conn::Pooled(self.client().await?);
            let mut copy = self.open_copy(conn, layout, try_direct).await?;
            if let Err(e) = send_chunks(copy.sink.as_mut(), payload).await {
                return Err(pg_err(format!("COPY of `{}`", layout.stream))(e));
            }
            if let Some((_, outcome)) = self.commit_streamed(layout, copy, cp).await? {
                return Ok((try_direct, outcome));
            }
            tracing::debug!(stream = %layout.stream, "rows already present: upserting through staging");
        }
        Err(Error::Sink {
            sink: NAME,
            message: format!("the staged commit of `{}` did not run", layout.stream),
            source: None,
        })
    }

    /// `INSERT … SELECT … ON CONFLICT DO UPDATE` from the staging table.
    async fn upsert(&self, conn: &TxConn, layout: &Layout) -> Result<()> {
        let upsert = conn
            .client()
            .prepare_cached(&layout.upsert_sql)
            .await
            .map_err(pg_err("cannot prepare the upsert"))?;
        conn.client()
            .execute(&upsert, &[])
            .await
            .map_err(pg_err(format!(
                "cannot upsert into {}",
                ident::qualified(&self.schema, &layout.table)
            )))?;
        Ok(())
    }

    /// The end of every commit transaction: a complete full refresh deletes
    /// the tenant's rows it did not write (as far as [`Checkpoint::prune`]
    /// allows), the state row is upserted, COMMIT. Returns the connection
    /// and what was deleted.
    async fn finish_tx(
        &self,
        conn: TxConn,
        layout: &Layout,
        cp: &Checkpoint,
    ) -> Result<(Conn, PruneOutcome)> {
        let client = conn.client();
        let mut outcome = PruneOutcome::NotApplicable;
        let mut may_delete = cp.complete && cp.full_refresh;
        if may_delete && cp.prune != Prune::All {
            let counts = client
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE _sync_id <> $2), count(*) FROM {} WHERE _tenant_id = $1",
                        ident::qualified(&self.schema, &layout.table)
                    ),
                    &[&cp.tenant, &cp.sync_id],
                )
                .await
                .map_err(pg_err("cannot count the rows a full refresh would delete"))?;
            let stale = u64::try_from(counts.get::<_, i64>(0)).unwrap_or(0);
            let total = u64::try_from(counts.get::<_, i64>(1)).unwrap_or(0);
            if let Err(withheld) = cp.prune.check(stale, total) {
                outcome = withheld;
                may_delete = false;
            }
        }
        if may_delete {
            let stale = client
                .prepare_cached(&layout.delete_stale_sql)
                .await
                .map_err(pg_err("cannot prepare the delete of stale rows"))?;
            let n = client
                .execute(&stale, &[&encode::clean(&cp.tenant), &cp.sync_id])
                .await
                .map_err(pg_err(format!(
                    "cannot delete stale rows from {}",
                    ident::qualified(&self.schema, &layout.table)
                )))?;
            if n > 0 {
                tracing::info!(stream = %layout.stream, tenant = %cp.tenant, rows = n, "full refresh removed rows no longer in the source");
            }
            outcome = PruneOutcome::Pruned { rows: Some(n) };
        }
        let state = client
            .prepare_cached(&format!(
                "INSERT INTO {} (tenant, stream, sync_id, complete, records, committed_at, checkpoint) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (tenant, stream) DO UPDATE SET sync_id = EXCLUDED.sync_id, \
                 complete = EXCLUDED.complete, records = EXCLUDED.records, \
                 committed_at = EXCLUDED.committed_at, checkpoint = EXCLUDED.checkpoint",
                ident::qualified(&self.schema, STATE_TABLE)
            ))
            .await
            .map_err(pg_err("cannot prepare the state upsert"))?;
        let records = i64::try_from(cp.records).unwrap_or(i64::MAX);
        let checkpoint = encode::state_to_jsonb(cp)
            .map_err(|e| Error::sink(NAME, "cannot encode the checkpoint", e))?;
        client
            .execute(
                &state,
                &[
                    &encode::clean(&cp.tenant),
                    &encode::clean(&cp.stream),
                    &cp.sync_id,
                    &cp.complete,
                    &records,
                    &cp.committed_at,
                    &checkpoint,
                ],
            )
            .await
            .map_err(pg_err("cannot store the checkpoint"))?;
        let conn = conn.commit().await.map_err(pg_err("cannot commit"))?;
        Ok((conn, outcome))
    }

    /// True when the tenant has rows in the stream's table.
    async fn has_rows(&self, layout: &Layout, tenant: &str) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE _tenant_id = $1)",
                    ident::qualified(&self.schema, &layout.table)
                ),
                &[&encode::clean(tenant)],
            )
            .await
            .map_err(pg_err("cannot look for existing rows"))?;
        Ok(row.get(0))
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, ctx: &StreamContext) -> Result<()> {
        let lz4 = self.setup().await?;
        self.take_lease(&ctx.tenant, &ctx.schema.name).await?;
        match self.prepare_leased(ctx, lz4).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.release_lease(&ctx.tenant, &ctx.schema.name).await;
                Err(e)
            }
        }
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        self.write_batch(batch).await
    }

    async fn commit(&self, checkpoint: &Checkpoint) -> Result<PruneOutcome> {
        let outcome = self.commit_run(checkpoint).await?;
        if checkpoint.complete {
            self.release_lease(&checkpoint.tenant, &checkpoint.stream)
                .await;
        }
        Ok(outcome)
    }

    async fn abandon(&self, tenant: &str, stream: &str) -> Result<()> {
        // End the run's open COPY now rather than by the idle watchdog: the
        // server rolls its transaction back and frees its locks.
        let previous = lock(&self.buffers).remove(&(tenant.to_owned(), stream.to_owned()));
        if let Some(copy) = previous.and_then(|b| b.copy) {
            drop(copy.abort().await);
        }
        self.release_lease(tenant, stream).await;
        Ok(())
    }

    /// The keys of the tenant's live rows; a composite key's columns are
    /// joined by `:`.
    async fn live_ids(&self, tenant: &str, stream: &StreamSchema) -> Result<Vec<String>> {
        let stream = encode::clean(&stream.name);
        let stream = stream.as_ref();
        let tenant = encode::clean(tenant);
        let tenant = tenant.as_ref();
        self.setup().await?;
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                &format!(
                    "SELECT table_name, primary_key FROM {} WHERE stream = $1",
                    ident::qualified(&self.schema, STREAMS_TABLE)
                ),
                &[&stream],
            )
            .await
            .map_err(pg_err("cannot read the stream table"))?
        else {
            return Ok(Vec::new());
        };
        let table: String = row.get(0);
        let Json(key): Json<Vec<String>> = row
            .try_get(1)
            .map_err(pg_err("cannot read the stream's key"))?;
        let mut columns = Vec::with_capacity(key.len());
        for field in &key {
            let col: String = client
                .query_one(
                    &format!(
                        "SELECT column_name FROM {} WHERE stream = $1 AND field_name = $2",
                        ident::qualified(&self.schema, COLUMNS_TABLE)
                    ),
                    &[&stream, field],
                )
                .await
                .map_err(pg_err("cannot read the key's column"))?
                .get(0);
            columns.push(format!("{}::text", ident::quote(&col)));
        }
        let sql = format!(
            "SELECT concat_ws(':', {}) FROM {} WHERE _tenant_id = $1 AND NOT _deleted",
            columns.join(", "),
            ident::qualified(&self.schema, &table)
        );
        let rows = client
            .query(&sql, &[&tenant])
            .await
            .map_err(pg_err("cannot list the ids"))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Inserts the records into `_headwater_quarantine` (see the
    /// `quarantine` module's table).
    async fn quarantine(&self, records: &[QuarantinedRecord]) -> Result<()> {
        self.insert_quarantined(records).await
    }

    async fn quarantined(&self, tenant: &str, stream: &str) -> Result<Vec<QuarantinedRecord>> {
        self.select_quarantined(tenant, stream).await
    }

    async fn load_state(&self, tenant: &str, stream: &str) -> Result<Option<Checkpoint>> {
        self.setup().await?;
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT checkpoint FROM {} WHERE tenant = $1 AND stream = $2",
                    ident::qualified(&self.schema, STATE_TABLE)
                ),
                &[&encode::clean(tenant), &encode::clean(stream)],
            )
            .await
            .map_err(pg_err("cannot read the checkpoint"))?;
        let Some(row) = row else { return Ok(None) };
        let Json(value): Json<Value> = row
            .try_get(0)
            .map_err(pg_err("cannot read the checkpoint"))?;
        encode::state_from_jsonb(value)
            .and_then(serde_json::from_value)
            .map(Some)
            .map_err(|e| {
                Error::state(
                    format!(
                        "unreadable checkpoint of `{stream}` for tenant `{tenant}` in Postgres"
                    ),
                    e,
                )
            })
    }
}

impl PostgresSink {
    /// [`Sink::prepare`] once the run holds its lease.
    async fn prepare_leased(&self, ctx: &StreamContext, lz4: bool) -> Result<()> {
        // A new run (or a resumed one) starts from what is committed: rows
        // buffered or streamed by an interrupted run on this instance are
        // dropped (the engine reads them again from the checkpoint), and its
        // open COPY ends first, so that its locks do not hold up the DDL
        // below.
        let previous = lock(&self.buffers).remove(&(ctx.tenant.clone(), ctx.schema.name.clone()));
        if let Some(copy) = previous.and_then(|b| b.copy) {
            drop(copy.abort().await);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err("cannot begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_key()])
            .await
            .map_err(pg_err("cannot lock the schema"))?;
        let prepared =
            layout::prepare(&tx, &self.schema, &ctx.schema, lz4, self.max_columns).await?;
        tx.commit().await.map_err(pg_err(format!(
            "cannot commit the table of `{}`",
            ctx.schema.name
        )))?;
        drop(client);

        let stream = &ctx.schema.name;
        if prepared.created {
            tracing::info!(stream = %stream, table = %prepared.layout.table, "created table");
        }
        if !prepared.added.is_empty() {
            tracing::info!(stream = %stream, fields = ?prepared.added, "added columns");
        }
        if !prepared.without_column.is_empty() && self.report_once(stream, "", "budget") {
            tracing::warn!(
                stream = %stream,
                fields = prepared.without_column.len(),
                max_columns = self.max_columns,
                "the stream's table is at its column budget: these fields have no typed column; their values are in _record"
            );
        }
        for change in &prepared.type_changes {
            if self.report_once(stream, &change.field, "type") {
                self.counters.type_changes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    stream = %stream,
                    field = %change.field,
                    column_type = layout::sql_type(change.column_type),
                    declared_type = layout::sql_type(change.field_type),
                    "field type changed: the column keeps its type; values that no longer fit are NULL there and kept in _record"
                );
            }
        }
        // Rows of a full refresh are new when the tenant has none yet (a
        // first sync) or when they follow a checkpoint (a resumed run); then
        // COPY straight into the table is tried first.
        let direct = self.optimistic_copy
            && ctx.full_refresh
            && (ctx.resume.is_some() || !self.has_rows(&prepared.layout, &ctx.tenant).await?);
        let raced = lock(&self.buffers).insert(
            (ctx.tenant.clone(), stream.clone()),
            Buffer {
                layout: Arc::new(prepared.layout),
                rows: Rows::default(),
                direct,
                copy: None,
                idle: None,
                streamable: true,
            },
        );
        // Another prepare of the same stream ran meanwhile: its run is over.
        drop(raced);
        Ok(())
    }

    async fn write_batch(&self, batch: Batch) -> Result<()> {
        let key = (batch.tenant.clone(), batch.stream.clone());
        let layout = lock(&self.buffers)
            .get(&key)
            .map(|b| b.layout.clone())
            .ok_or_else(|| Error::Sink {
                sink: NAME,
                message: format!("write to `{}` before prepare", batch.stream),
                source: None,
            })?;
        if batch.records.is_empty() {
            return Ok(());
        }
        let encoded = self.encode(&layout, &batch)?;
        let bytes = encoded.bytes.clone();
        let replaced = || Error::Sink {
            sink: NAME,
            message: format!(
                "stream `{}` was prepared again while a batch was written",
                batch.stream
            ),
            source: None,
        };
        // Buffer the rows (kept until committed), and take the open COPY
        // out to stream them.
        let (copy, idle, direct, stream) = {
            let mut map = lock(&self.buffers);
            let buf = match map.get_mut(&key) {
                Some(buf) if Arc::ptr_eq(&buf.layout, &layout) => buf,
                _ => return Err(replaced()),
            };
            if !buf.rows.push(encoded) {
                buf.streamable = false;
            }
            if buf.streamable {
                (buf.copy.take(), buf.idle.take(), buf.direct, true)
            } else {
                (buf.copy.take(), None, buf.direct, false)
            }
        };
        let (copy, idle) = if stream {
            (self.stream(&layout, copy, idle, direct, bytes).await, None)
        } else {
            // A key repeated: the COPY holds an older version; the commit
            // sends the buffered rows.
            match copy {
                Some(c) => (None, c.abort().await),
                None => (None, idle),
            }
        };
        let orphan = {
            let mut map = lock(&self.buffers);
            match map.get_mut(&key) {
                Some(buf) if Arc::ptr_eq(&buf.layout, &layout) => {
                    // Without a COPY holding every row since the last
                    // commit, the commit sends the buffered rows.
                    if copy.is_none() {
                        buf.streamable = false;
                    }
                    buf.copy = copy;
                    if idle.is_some() {
                        buf.idle = idle;
                    }
                    return Ok(());
                }
                _ => copy,
            }
        };
        drop(orphan); // closes its connection: the server aborts the COPY
        Err(replaced())
    }

    async fn commit_run(&self, checkpoint: &Checkpoint) -> Result<PruneOutcome> {
        let key = (checkpoint.tenant.clone(), checkpoint.stream.clone());
        let (layout, rows, direct, copy, streamable) = {
            let mut map = lock(&self.buffers);
            let buf = map.get_mut(&key).ok_or_else(|| Error::Sink {
                sink: NAME,
                message: format!("commit of `{}` before prepare", checkpoint.stream),
                source: None,
            })?;
            let streamable = std::mem::replace(&mut buf.streamable, true);
            (
                buf.layout.clone(),
                std::mem::take(&mut buf.rows),
                buf.direct,
                buf.copy.take(),
                streamable,
            )
        };
        let live = rows.live;
        // Rows streamed into an open COPY are committed with it. Otherwise
        // (nothing streamed, a key repeated, streaming failed, or a direct
        // COPY met existing rows) the buffered rows are sent now, on a
        // pooled connection; so they are too when the streamed commit fails
        // on its way (a closed connection, say).
        let mut direct = direct;
        let mut done = None;
        let mut idle = None;
        if let Some(copy) = copy {
            if streamable && live > 0 {
                let was_direct = copy.direct;
                match self.commit_streamed(&layout, copy, checkpoint).await {
                    Ok(Some((conn, outcome))) => {
                        done = Some((was_direct, outcome));
                        idle = Some(conn);
                    }
                    // A direct COPY met rows already there.
                    Ok(None) => direct = false,
                    Err(e) => {
                        tracing::debug!(stream = %layout.stream, error = %e, "streamed commit failed: sending the buffered rows");
                    }
                }
            } else {
                idle = copy.abort().await;
            }
        }
        let result = match done {
            Some(done) => Ok(done),
            None => {
                let payload = rows.payload();
                self.commit_buffered(&layout, &payload, live, checkpoint, direct)
                    .await
            }
        };
        let mut map = lock(&self.buffers);
        let current = map
            .get_mut(&key)
            .filter(|b| Arc::ptr_eq(&b.layout, &layout));
        match result {
            Ok((took_direct, outcome)) => {
                self.counters.rows.fetch_add(live, Ordering::Relaxed);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                if took_direct {
                    self.counters.direct.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(buf) = current {
                    // Once rows turned out to exist, stop trying the direct
                    // path for this run.
                    buf.direct = direct && (took_direct || live == 0);
                    if checkpoint.complete && buf.rows.live == 0 && buf.copy.is_none() {
                        // The run is over; its streaming connection closes.
                        map.remove(&key);
                    } else if buf.idle.is_none() {
                        buf.idle = idle;
                    }
                }
                Ok(outcome)
            }
            Err(e) => {
                // Nothing was committed: keep the rows, so a retried commit
                // still holds them.
                if let Some(buf) = current {
                    let later = std::mem::replace(&mut buf.rows, rows);
                    buf.rows.append(later);
                    buf.streamable = false;
                }
                Err(e)
            }
        }
    }
}
