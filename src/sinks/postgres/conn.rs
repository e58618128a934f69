//! Connections in transactions begun by hand, and the COPY of a run that
//! streams its rows.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::CopyInSink;

use super::{lock, pg_err};
use crate::Result;

/// COPY BINARY's file header: signature, flags, header extension length.
pub(super) const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// COPY BINARY's trailer: a tuple with -1 fields.
pub(super) const COPY_TRAILER: &[u8] = &[0xff, 0xff];
/// Bytes per COPY data message.
pub(super) const COPY_CHUNK: usize = 1 << 20;

/// The default of [`PostgresSinkBuilder::stream_timeout`](super::PostgresSinkBuilder::stream_timeout).
pub(super) const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection: from the pool, or a run's own one for streaming.
pub(super) enum Conn {
    Pooled(deadpool_postgres::Object),
    Own(Own),
}

/// A streaming run's connection, closed by a watchdog when unused for too
/// long.
pub(super) struct Own {
    client: tokio_postgres::Client,
    statements: Mutex<HashMap<String, tokio_postgres::Statement>>,
    watch: Arc<Watch>,
    /// The task driving the connection: aborting it closes the socket.
    task: tokio::task::AbortHandle,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What the watchdog of a streaming connection looks at.
pub(super) struct Watch {
    /// When rows were last sent.
    used: Mutex<Instant>,
    /// True while a commit runs on the connection (however long it takes).
    busy: AtomicBool,
}

impl Watch {
    pub(super) fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            lock(&self.used).elapsed()
        }
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Pooled(_) => "Conn::Pooled",
            Conn::Own(_) => "Conn::Own",
        })
    }
}

impl std::ops::Deref for Conn {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        match self {
            Conn::Pooled(o) => o,
            Conn::Own(o) => &o.client,
        }
    }
}

impl Conn {
    /// A run's own connection on `config` (outside the pool), and a watchdog
    /// that closes it once nothing was sent on it for `limit` outside a
    /// commit: the server then ends its transaction and frees its locks.
    pub(super) async fn own(
        config: &tokio_postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
        permit: tokio::sync::OwnedSemaphorePermit,
        limit: Duration,
    ) -> std::result::Result<Conn, tokio_postgres::Error> {
        let (client, connection) = config.connect(tls).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "streaming connection ended");
            }
        })
        .abort_handle();
        let watch = Arc::new(Watch {
            used: Mutex::new(Instant::now()),
            busy: AtomicBool::new(false),
        });
        let (watched, w) = (task.clone(), watch.clone());
        tokio::spawn(async move {
            let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
            while !watched.is_finished() {
                tokio::time::sleep(tick).await;
                if w.idle_for() > limit {
                    watched.abort();
                    break;
                }
            }
        });
        Ok(Conn::Own(Own {
            client,
            statements: Mutex::new(HashMap::new()),
            watch,
            task,
            _permit: permit,
        }))
    }

    /// A prepared statement, from the connection's cache when it was
    /// prepared on it before.
    pub(super) async fn prepare_cached(
        &self,
        sql: &str,
    ) -> std::result::Result<tokio_postgres::Statement, tokio_postgres::Error> {
        match self {
            Conn::Pooled(o) => o.prepare_cached(sql).await,
            Conn::Own(o) => {
                if let Some(st) = lock(&o.statements).get(sql) {
                    return Ok(st.clone());
                }
                let st = o.client.prepare(sql).await?;
                lock(&o.statements).insert(sql.to_owned(), st.clone());
                Ok(st)
            }
        }
    }

    /// Closes the connection (a pooled one leaves the pool), which ends any
    /// transaction on it.
    pub(super) fn close(self) {
        match self {
            Conn::Pooled(o) => drop(deadpool_postgres::Object::take(o)),
            Conn::Own(o) => drop(o),
        }
    }

    /// A streaming connection unused for longer than `limit`.
    pub(super) fn stale(&self, limit: Duration) -> bool {
        matches!(self, Conn::Own(o) if o.watch.idle_for() > limit)
    }

    /// Notes that rows were just sent.
    pub(super) fn touch(&self) {
        if let Conn::Own(o) = self {
            *lock(&o.watch.used) = Instant::now();
        }
    }

    /// Marks a commit running on the connection (the watchdog leaves it
    /// alone meanwhile), or over.
    pub(super) fn busy(&self, busy: bool) {
        if let Conn::Own(o) = self {
            o.watch.busy.store(busy, Ordering::Relaxed);
            *lock(&o.watch.used) = Instant::now();
        }
    }
}

/// A connection in a transaction begun by hand. Dropped before COMMIT or
/// ROLLBACK, it is closed (a pooled one does not go back to the pool), which
/// makes the server abort the transaction.
pub(super) struct TxConn(Option<Conn>);

impl TxConn {
    pub(super) async fn begin(conn: Conn) -> Result<TxConn> {
        let tx = TxConn(Some(conn));
        tx.client()
            .batch_execute("BEGIN")
            .await
            .map_err(pg_err("cannot begin"))?;
        Ok(tx)
    }

    pub(super) fn conn(&self) -> Option<&Conn> {
        self.0.as_ref()
    }

    pub(super) fn client(&self) -> &Conn {
        // Some from `begin` until `commit` or `rollback` consume the value.
        self.0
            .as_ref()
            .expect("a connection until commit or rollback")
    }

    pub(super) fn touch(&self) {
        if let Some(conn) = &self.0 {
            conn.touch();
        }
    }

    /// The connection, given up without ending the transaction: to close.
    pub(super) fn into_conn(mut self) -> Option<Conn> {
        self.0.take()
    }

    pub(super) async fn commit(mut self) -> std::result::Result<Conn, tokio_postgres::Error> {
        let conn = self
            .0
            .take()
            .expect("a connection until commit or rollback");
        match conn.batch_execute("COMMIT").await {
            Ok(()) => Ok(conn),
            Err(e) => {
                conn.close();
                Err(e)
            }
        }
    }

    /// Rolls back; the connection when it is still good.
    pub(super) async fn rollback(mut self) -> Option<Conn> {
        let conn = self.0.take()?;
        match conn.batch_execute("ROLLBACK").await {
            Ok(()) => Some(conn),
            Err(_) => {
                conn.close();
                None
            }
        }
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.close();
        }
    }
}

/// A COPY in progress inside a commit's transaction: streamed rows reach
/// the server as they are written, so it works while the next pages are
/// read and encoded.
pub(super) struct OpenCopy {
    pub(super) conn: TxConn,
    pub(super) sink: Pin<Box<CopyInSink<Bytes>>>,
    /// Into the table itself (else into the staging table).
    pub(super) direct: bool,
}

impl std::fmt::Debug for OpenCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCopy")
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl OpenCopy {
    /// Abandons the COPY and its transaction; the connection when it is
    /// still good.
    pub(super) async fn abort(self) -> Option<Conn> {
        let OpenCopy { conn, sink, .. } = self;
        drop(sink); // sends CopyFail
        conn.rollback().await
    }
}

/// Sends COPY data in messages of at most [`COPY_CHUNK`] bytes.
pub(super) async fn send_chunks(
    mut sink: Pin<&mut CopyInSink<Bytes>>,
    payload: &[Bytes],
) -> std::result::Result<(), tokio_postgres::Error> {
    for chunk in payload {
        let mut at = 0;
        while at < chunk.len() {
            let end = (at + COPY_CHUNK).min(chunk.len());
            sink.feed(chunk.slice(at..end)).await?;
            at = end;
        }
    }
    Ok(())
}
