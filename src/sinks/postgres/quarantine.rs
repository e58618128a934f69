//! The quarantine: `_headwater_quarantine` in the sink's schema, one row per
//! record the sync could not decode (see [`QuarantinedRecord`]).
//!
//! | column | type | |
//! |---|---|---|
//! | `id` | `bigserial` | insertion order |
//! | `tenant`, `stream` | `text` | |
//! | `sync_id` | `uuid` | the run that read it |
//! | `position` | `text` | the checkpoint of the page that carried it (JSON text) |
//! | `raw` | `text` | the bytes as text (invalid UTF-8 and NUL as U+FFFD) |
//! | `raw_base64` | `text` | the exact bytes, set only when `raw` is not them |
//! | `path`, `error` | `text` | the JSON path and the decoder's message |
//! | `quarantined_at` | `timestamptz` | |
//!
//! Rows are inserted in their own transaction before the engine commits the
//! page's checkpoint, so a crash never loses one (it may store one twice:
//! the page is read again).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ident, pg_err, PostgresSink};
use crate::sink::{clean_text, QuarantinedRecord};
use crate::Result;

/// The quarantine table's name.
pub(crate) const QUARANTINE_TABLE: &str = "_headwater_quarantine";

impl PostgresSink {
    fn quarantine_table(&self) -> String {
        ident::qualified(self.schema(), QUARANTINE_TABLE)
    }

    /// Creates the table when missing (under the schema's setup lock, so two
    /// sinks do not race on `CREATE TABLE`) and inserts the records.
    pub(crate) async fn insert_quarantined(&self, records: &[QuarantinedRecord]) -> Result<()> {
        self.setup().await?;
        let table = self.quarantine_table();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err("cannot begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_key()])
            .await
            .map_err(pg_err("cannot lock the schema"))?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                id bigserial PRIMARY KEY,
                tenant text NOT NULL,
                stream text NOT NULL,
                sync_id uuid NOT NULL,
                position text NOT NULL,
                raw text NOT NULL,
                raw_base64 text,
                path text NOT NULL,
                error text NOT NULL,
                quarantined_at timestamptz NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {} ON {table} (tenant, stream, id);",
            ident::quote("_headwater_quarantine_by_stream"),
        ))
        .await
        .map_err(pg_err("cannot create the quarantine table"))?;
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {table} (tenant, stream, sync_id, position, raw, raw_base64, \
                 path, error, quarantined_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .await
            .map_err(pg_err("cannot prepare the quarantine insert"))?;
        for r in records {
            let (tenant, stream) = (clean_text(&r.tenant), clean_text(&r.stream));
            let (path, error) = (clean_text(&r.path), clean_text(&r.error));
            let position = r.position_text();
            tx.execute(
                &insert,
                &[
                    &tenant.as_ref(),
                    &stream.as_ref(),
                    &r.sync_id,
                    &position,
                    &r.raw_text(),
                    &r.raw_base64(),
                    &path.as_ref(),
                    &error.as_ref(),
                    &r.quarantined_at,
                ],
            )
            .await
            .map_err(pg_err("cannot store a quarantined record"))?;
        }
        tx.commit()
            .await
            .map_err(pg_err("cannot commit the quarantined records"))
    }

    /// The quarantined records of a tenant's stream, oldest first.
    pub(crate) async fn select_quarantined(
        &self,
        tenant: &str,
        stream: &str,
    ) -> Result<Vec<QuarantinedRecord>> {
        self.setup().await?;
        let client = self.client().await?;
        let exists = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&self.quarantine_table()],
            )
            .await
            .map_err(pg_err("cannot look up the quarantine table"))?
            .get::<_, bool>(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = client
            .query(
                &format!(
                    "SELECT tenant, stream, sync_id, position, raw, raw_base64, path, error, \
                     quarantined_at FROM {} WHERE tenant = $1 AND stream = $2 ORDER BY id",
                    self.quarantine_table()
                ),
                &[&clean_text(tenant).as_ref(), &clean_text(stream).as_ref()],
            )
            .await
            .map_err(pg_err("cannot read the quarantine"))?;
        rows.into_iter()
            .map(|row| {
                let position: String = row.get(3);
                QuarantinedRecord::from_stored(
                    row.get(0),
                    row.get(1),
                    row.get::<_, Uuid>(2),
                    &position,
                    row.get(4),
                    row.get(5),
                    row.get(6),
                    row.get(7),
                    row.get::<_, DateTime<Utc>>(8),
                )
            })
            .collect()
    }
}
