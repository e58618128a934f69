//! [`PostgresSinkBuilder`]: where the sink connects and how.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::Host;

use super::conn::STREAM_TIMEOUT;
use super::tls::{self, SslMode};
use super::{ident, layout, Counters, PostgresSink, DATABASE_URL_ENV, DEFAULT_SCHEMA, NAME};
use crate::{Error, Result};

/// Builds a [`PostgresSink`].
///
/// ```no_run
/// # async fn run() -> headwater::Result<()> {
/// use headwater::sinks::postgres::PostgresSinkBuilder;
/// let sink = PostgresSinkBuilder::from_env() // DATABASE_URL
///     .schema("crm")
///     .max_connections(4)
///     .build()
///     .await?;
/// # let _ = sink; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct PostgresSinkBuilder {
    url: Option<String>,
    schema: Option<String>,
    max_connections: Option<usize>,
    connect_timeout: Option<Duration>,
    optimistic_copy: Option<bool>,
    stream_timeout: Option<Duration>,
    max_columns: Option<usize>,
}

impl std::fmt::Debug for PostgresSinkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("PostgresSinkBuilder")
            .field("url", &self.url.as_ref().map(|_| "…"))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("optimistic_copy", &self.optimistic_copy)
            .field("stream_timeout", &self.stream_timeout)
            .field("max_columns", &self.max_columns)
            .finish()
    }
}

impl PostgresSinkBuilder {
    /// An empty builder: set at least [`PostgresSinkBuilder::url`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder with the URL from `DATABASE_URL`, when set.
    pub fn from_env() -> Self {
        let mut b = Self::new();
        if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
            if !url.is_empty() {
                b.url = Some(url);
            }
        }
        b
    }

    /// The database: a URL (`postgres://user:password@host:port/db`) or a
    /// `key=value` connection string.
    ///
    /// TLS is set as libpq sets it: `sslmode` is `disable`, `prefer` (the
    /// default: TLS when the server offers it), `require`, `verify-ca` (the
    /// server's certificate must chain to a trusted root) or `verify-full`
    /// (and name the host connected to); `sslrootcert` is a PEM file of
    /// trusted roots (`system`, or none, for the platform's). With
    /// `sslrootcert`, `prefer` and `require` verify the chain as `verify-ca`
    /// does; without it they encrypt without authenticating the server.
    /// `postgres://app@db.example.com/crm?sslmode=verify-full&sslrootcert=/etc/ssl/rds-ca.pem`
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The Postgres schema holding the tables (default `headwater`; created
    /// if missing).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Most connections the pool opens, and most runs streaming rows at
    /// once over connections of their own (default 4 each).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n.max(1));
        self
    }

    /// How long connecting may take (default 10 s, unless the URL sets
    /// `connect_timeout`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Whether a commit whose rows are probably all new (a first full sync,
    /// or a resumed one) first copies them straight into the table, falling
    /// back to the staging table and upsert on the first duplicate key
    /// (default true). The result is the same either way; the direct COPY
    /// skips the staging table, and a failed attempt costs one COPY and an
    /// error line in the server's log, once per run.
    pub fn optimistic_copy(mut self, yes: bool) -> Self {
        self.optimistic_copy = Some(yes);
        self
    }

    /// How long a run's streaming connection may go without rows before it
    /// is closed (default 60 s). A slow source loses nothing by it: the
    /// commit then sends the buffered rows over a pooled connection. It
    /// bounds how long a run that failed without committing keeps its
    /// transaction (and its locks) open.
    pub fn stream_timeout(mut self, timeout: Duration) -> Self {
        self.stream_timeout = Some(timeout.max(Duration::from_millis(1)));
        self
    }

    /// Most typed data columns one stream table gets (default 400; at most
    /// 1,595, Postgres' limit of 1,600 less the metadata columns).
    ///
    /// All tenants of a stream share its table, so the union of their
    /// fields (every portal's custom properties) must fit in it. Fields get
    /// columns first come, first served: the key and cursor fields always,
    /// then the others in the order they are first prepared, while the
    /// table is under this budget. A field without a column loses nothing:
    /// its values are in `_record` like every field's (`_record->>'name'`);
    /// `_headwater_columns` lists the fields that have one. A field keeps
    /// the column it got, so raising the budget later only adds columns.
    /// The default keeps a row within Postgres' 8 kB row limit even when
    /// every column is filled (each value takes up to 18 bytes in the row
    /// once TOASTed); past about 450 filled columns a row can fail with
    /// `row is too big` (SQLSTATE 54000).
    pub fn max_columns(mut self, n: usize) -> Self {
        self.max_columns = Some(n.clamp(1, layout::MAX_DATA_COLUMNS));
        self
    }

    /// Connects (once, to fail early on a wrong URL or an unreachable server)
    /// and returns the sink.
    pub async fn build(self) -> Result<PostgresSink> {
        let url = self.url.ok_or_else(|| {
            Error::Config(format!(
                "postgres sink: no database URL (set one with .url() or {DATABASE_URL_ENV})"
            ))
        })?;
        let (url, tls_settings) = tls::split_settings(&url)?;
        let tls = tls::connector(&tls_settings)?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("postgres sink: invalid database URL: {e}")))?;
        if let Some(t) = self.connect_timeout {
            pg.connect_timeout(t);
        } else if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("headwater");
        }
        let schema = self.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        if schema.is_empty() || schema.len() > ident::MAX_IDENT || schema.contains('\0') {
            return Err(Error::Config(format!(
                "postgres sink: invalid schema name {schema:?} (1 to {} bytes, no NUL)",
                ident::MAX_IDENT
            )));
        }
        pg.ssl_mode(tls_settings.mode.for_tokio_postgres());
        let target = describe(&pg, tls_settings.mode);
        let pg_config = pg.clone();
        let manager = Manager::from_config(
            pg,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let max_connections = self.max_connections.unwrap_or(4);
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .build()
            .map_err(|e| Error::sink(NAME, "cannot build the connection pool", e))?;
        let sink = PostgresSink {
            pool,
            schema,
            target,
            setup: tokio::sync::OnceCell::new(),
            buffers: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            optimistic_copy: self.optimistic_copy.unwrap_or(true),
            streams: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            stream_timeout: self.stream_timeout.unwrap_or(STREAM_TIMEOUT),
            pg_config,
            max_columns: self.max_columns.unwrap_or(layout::DEFAULT_MAX_COLUMNS),
            tls,
            leases: Mutex::default(),
        };
        drop(sink.client().await?);
        Ok(sink)
    }
}

/// `host:port/db as user (sslmode …)`, for messages (never the password).
fn describe(pg: &tokio_postgres::Config, mode: SslMode) -> String {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{} as {} (sslmode {})",
        pg.get_dbname().unwrap_or("(default db)"),
        pg.get_user().unwrap_or("(default user)"),
        mode.as_str()
    )
}
