//! Tables: the bookkeeping tables, a stream's table created or evolved from
//! its schema, and the statements that load it.

use std::collections::HashSet;

use serde_json::Value;

use super::encode::clean;
use super::ident::{choose, fnv1a, literal, qualified, quote};
use super::{pg_err, NAME};
use crate::schema::{FieldType, StreamSchema};
use crate::{Error, Result};

/// The committed checkpoints.
pub(crate) const STATE_TABLE: &str = "_headwater_state";
/// One row per stream: its table.
pub(crate) const STREAMS_TABLE: &str = "_headwater_streams";
/// One row per field: its column.
pub(crate) const COLUMNS_TABLE: &str = "_headwater_columns";
const META_TABLES: [&str; 3] = [STATE_TABLE, STREAMS_TABLE, COLUMNS_TABLE];

/// Metadata columns of every stream table; no field gets one of these names.
pub(crate) const META_COLUMNS: [&str; 5] = [
    "_tenant_id",
    "_record",
    "_deleted",
    "_sync_id",
    "_extracted_at",
];

/// Postgres' limit of columns in a table, dropped ones included.
pub(crate) const PG_MAX_COLUMNS: usize = 1_600;

/// The default of [`PostgresSinkBuilder::max_columns`](super::PostgresSinkBuilder::max_columns).
/// A row of that many filled columns stays under Postgres' 8 kB row limit
/// even when every value is a TOAST pointer (18 bytes); a row of 900 short
/// values (8.3 kB) does not fit.
pub(crate) const DEFAULT_MAX_COLUMNS: usize = 400;

/// Most data columns a stream table can have: Postgres' limit less the
/// metadata columns.
pub(crate) const MAX_DATA_COLUMNS: usize = PG_MAX_COLUMNS - META_COLUMNS.len();

/// The SQL type of a column made for `ty`.
pub(crate) fn sql_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "text",
        FieldType::Integer => "bigint",
        FieldType::Number => "numeric",
        FieldType::Boolean => "boolean",
        FieldType::Date => "date",
        FieldType::Timestamp => "timestamptz",
        FieldType::Json => "jsonb",
    }
}

fn type_name(ty: FieldType) -> String {
    match serde_json::to_value(ty) {
        Ok(Value::String(s)) => s,
        _ => format!("{ty:?}").to_lowercase(),
    }
}

fn parse_type(s: &str) -> Result<FieldType> {
    serde_json::from_value(Value::String(s.to_owned())).map_err(|e| {
        Error::state(
            format!("{COLUMNS_TABLE} names an unknown column type `{s}` (written by a newer headwater?)"),
            e,
        )
    })
}

/// DDL of the schema and the bookkeeping tables (idempotent).
pub(crate) fn setup_sql(schema: &str, create_schema: bool) -> String {
    let mut sql = String::new();
    if create_schema {
        sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote(schema)));
    }
    sql.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {state} (
            tenant text NOT NULL,
            stream text NOT NULL,
            sync_id uuid NOT NULL,
            complete boolean NOT NULL,
            records bigint NOT NULL,
            committed_at timestamptz NOT NULL,
            checkpoint jsonb NOT NULL,
            PRIMARY KEY (tenant, stream));
        CREATE TABLE IF NOT EXISTS {streams} (
            stream text PRIMARY KEY,
            table_name text NOT NULL UNIQUE,
            primary_key jsonb NOT NULL,
            cursor_field text,
            stream_schema jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE IF NOT EXISTS {columns} (
            stream text NOT NULL,
            position integer NOT NULL,
            field_name text NOT NULL,
            column_name text NOT NULL,
            column_type text NOT NULL,
            field_type text NOT NULL,
            PRIMARY KEY (stream, field_name),
            UNIQUE (stream, column_name));
        COMMENT ON TABLE {state} IS 'headwater: the last committed checkpoint of each tenant''s stream';
        COMMENT ON TABLE {streams} IS 'headwater: the table of each stream';
        COMMENT ON TABLE {columns} IS 'headwater: the column of each field (column_type: the type the column was made for; field_type: the type the latest schema declares)';",
        state = qualified(schema, STATE_TABLE),
        streams = qualified(schema, STREAMS_TABLE),
        columns = qualified(schema, COLUMNS_TABLE),
    ));
    sql
}

/// A data column of a stream table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// The field's name in records.
    pub field: String,
    /// The column's name (unquoted).
    pub name: String,
    /// The type the column was made for; values are converted to it.
    pub ty: FieldType,
}

/// A stream's table as prepared, with the statements that load it.
///
/// A staged row is a COPY BINARY tuple of `_tenant_id`, the data columns in
/// [`Layout::columns`] order, `_record`, `_deleted`, `_sync_id` and
/// `_extracted_at`: the same bytes go straight into the table or into the
/// staging table.
#[derive(Debug)]
pub(crate) struct Layout {
    /// The stream.
    pub stream: String,
    /// The table (unquoted).
    pub table: String,
    /// Data columns, in staging order.
    pub columns: Vec<Column>,
    /// Which of `columns` form the key (besides `_tenant_id`).
    pub is_key: Vec<bool>,
    /// Number of key columns.
    pub key_len: usize,
    /// `CREATE TEMP TABLE IF NOT EXISTS` of this layout's staging table.
    pub stage_sql: String,
    /// `COPY … FROM STDIN (FORMAT binary)` into the staging table.
    pub copy_sql: String,
    /// `INSERT … SELECT … ON CONFLICT … DO UPDATE` from staging into the table.
    pub upsert_sql: String,
    /// `COPY … FROM STDIN (FORMAT binary)` straight into the table, for rows
    /// that are all new.
    pub direct_copy_sql: String,
    /// Deletes a tenant's rows written by other runs than `$2`.
    pub delete_stale_sql: String,
}

/// Metadata cells of a staged row after the data columns.
pub(crate) const TRAILING_META: [(&str, &str); 4] = [
    ("_record", "jsonb"),
    ("_deleted", "boolean"),
    ("_sync_id", "uuid"),
    ("_extracted_at", "timestamptz"),
];

impl Layout {
    fn new(
        schema: &str,
        stream: &str,
        table: &str,
        columns: Vec<Column>,
        key: &[String],
        lz4: bool,
    ) -> Self {
        let is_key: Vec<bool> = columns.iter().map(|c| key.contains(&c.field)).collect();
        let target = qualified(schema, table);
        let mut h: Vec<Vec<u8>> = vec![schema.as_bytes().to_vec(), table.as_bytes().to_vec()];
        for c in &columns {
            h.push(c.name.as_bytes().to_vec());
            h.push(sql_type(c.ty).as_bytes().to_vec());
        }
        let parts: Vec<&[u8]> = h.iter().map(Vec::as_slice).collect();
        let stage = format!("hw_stage_{:016x}", fnv1a(&parts));
        let mut stage_cols = vec!["_tenant_id text".to_owned()];
        stage_cols.extend(
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("c{i} {}", sql_type(c.ty))),
        );
        stage_cols.extend(TRAILING_META.iter().map(|(n, t)| match *n {
            "_record" => format!("{n} {t}{}", compression(lz4)),
            _ => format!("{n} {t}"),
        }));
        let stage_sql = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} ({}) ON COMMIT DELETE ROWS",
            stage_cols.join(", ")
        );
        let copy_sql = format!("COPY pg_temp.{stage} FROM STDIN (FORMAT binary)");
        let mut target_cols = vec!["_tenant_id".to_owned()];
        target_cols.extend(columns.iter().map(|c| quote(&c.name)));
        target_cols.extend(TRAILING_META.iter().map(|(n, _)| (*n).to_owned()));
        let target_cols = target_cols.join(", ");
        let direct_copy_sql = format!("COPY {target} ({target_cols}) FROM STDIN (FORMAT binary)");
        // Key columns in the order of the schema's primary key.
        let target_key: Vec<String> = key
            .iter()
            .filter_map(|k| columns.iter().find(|c| &c.field == k))
            .map(|c| quote(&c.name))
            .collect();
        let mut updates: Vec<String> = columns
            .iter()
            .zip(&is_key)
            .filter(|(_, k)| !**k)
            .map(|(c, _)| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
            .collect();
        for (m, _) in TRAILING_META {
            updates.push(format!("{m} = EXCLUDED.{m}"));
        }
        // Keys are unique within a commit (the sink keeps the last version of
        // each), so one statement can upsert them all.
        let upsert_sql = format!(
            "INSERT INTO {target} AS t ({target_cols}) SELECT * FROM pg_temp.{stage} \
             ON CONFLICT (_tenant_id, {tkey}) DO UPDATE SET {updates}",
            tkey = target_key.join(", "),
            updates = updates.join(", "),
        );
        let delete_stale_sql =
            format!("DELETE FROM {target} WHERE _tenant_id = $1 AND _sync_id <> $2");
        Layout {
            stream: stream.to_owned(),
            table: table.to_owned(),
            key_len: target_key.len(),
            columns,
            is_key,
            stage_sql,
            copy_sql,
            upsert_sql,
            direct_copy_sql,
            delete_stale_sql,
        }
    }
}

/// A field whose declared type differs from its column's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeChange {
    pub field: String,
    pub column_type: FieldType,
    pub field_type: FieldType,
}

/// What [`prepare`] did.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub layout: Layout,
    pub created: bool,
    pub added: Vec<String>,
    pub type_changes: Vec<TypeChange>,
    /// Fields left without a column: the table is at its column budget.
    /// Their values are in `_record` only.
    pub without_column: Vec<String>,
}

/// `stream` with every NUL in its names and labels replaced (by
/// [`clean`]): records' keys are cleaned the same way, so fields still find
/// their values.
fn clean_schema(stream: &StreamSchema) -> StreamSchema {
    let c = |s: &str| clean(s).into_owned();
    let mut out = stream.clone();
    out.name = c(&stream.name);
    for f in &mut out.fields {
        f.name = c(&f.name);
        f.description = f.description.as_deref().map(c);
        f.source_type = f.source_type.as_deref().map(c);
    }
    out.primary_key = stream.primary_key.iter().map(|k| c(k)).collect();
    out.cursor_field = stream.cursor_field.as_deref().map(c);
    out
}

/// Creates or evolves the table of `stream` in `schema` (inside `tx`, which
/// holds the schema's advisory lock) and returns its layout.
/// ` COMPRESSION lz4` when the server has it: several times faster than
/// the default pglz for the `_record` of wide records (over ~2 kB, which
/// Postgres compresses), to write and to read.
fn compression(lz4: bool) -> &'static str {
    if lz4 {
        " COMPRESSION lz4"
    } else {
        ""
    }
}

pub(crate) async fn prepare(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    stream: &StreamSchema,
    lz4: bool,
    max_columns: usize,
) -> Result<Prepared> {
    let max_columns = max_columns.clamp(1, MAX_DATA_COLUMNS);
    let cleaned = clean_schema(stream);
    let stream = &cleaned;
    if stream.primary_key.is_empty() {
        return Err(Error::Config(format!(
            "postgres sink: stream `{}` has no primary key; the Postgres sink upserts by key",
            stream.name
        )));
    }
    for k in &stream.primary_key {
        match stream.field(k) {
            None => {
                return Err(Error::Config(format!(
                    "postgres sink: key field `{k}` of stream `{}` is not one of its fields",
                    stream.name
                )))
            }
            Some(f) if f.field_type == FieldType::Json => {
                return Err(Error::Config(format!(
                    "postgres sink: key field `{k}` of stream `{}` is JSON; a key must be a scalar",
                    stream.name
                )))
            }
            Some(_) => {}
        }
    }
    let streams_t = qualified(schema, STREAMS_TABLE);
    let columns_t = qualified(schema, COLUMNS_TABLE);
    let schema_json =
        serde_json::to_value(stream).map_err(|e| Error::sink(NAME, "cannot encode schema", e))?;
    let key_json = serde_json::to_value(&stream.primary_key)
        .map_err(|e| Error::sink(NAME, "cannot encode key", e))?;

    let known = tx
        .query_opt(
            &format!(
                "SELECT table_name, primary_key, cursor_field FROM {streams_t} WHERE stream = $1"
            ),
            &[&stream.name],
        )
        .await
        .map_err(pg_err("cannot read the stream table"))?;
    let mut existing: Option<(String, Value, Option<String>, u32)> = None;
    if let Some(row) = known {
        let table: String = row.get(0);
        let oid: Option<u32> = tx
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &table],
            )
            .await
            .map_err(pg_err("cannot look up a table"))?
            .map(|r| r.get(0));
        match oid {
            Some(oid) => existing = Some((table, row.get(1), row.get(2), oid)),
            None => {
                tracing::warn!(
                    stream = %stream.name,
                    table = %table,
                    "the stream's table was dropped outside headwater: creating it again"
                );
                tx.execute(
                    &format!("DELETE FROM {columns_t} WHERE stream = $1"),
                    &[&stream.name],
                )
                .await
                .map_err(pg_err("cannot reset column mappings"))?;
                tx.execute(
                    &format!("DELETE FROM {streams_t} WHERE stream = $1"),
                    &[&stream.name],
                )
                .await
                .map_err(pg_err("cannot reset the stream mapping"))?;
            }
        }
    }

    let prepared = match existing {
        None => {
            create(
                tx,
                schema,
                stream,
                &schema_json,
                &key_json,
                lz4,
                max_columns,
            )
            .await?
        }
        Some((table, key, cursor, oid)) => {
            if key != key_json {
                return Err(Error::Config(format!(
                    "postgres sink: stream `{}` is keyed by {key} in table {}, but its schema now says {key_json}; \
                     a key cannot change in place (drop the table or use another Postgres schema)",
                    stream.name,
                    qualified(schema, &table)
                )));
            }
            evolve(tx, schema, stream, &table, oid, cursor, lz4, max_columns).await?
        }
    };
    tx.execute(
        &format!(
            "UPDATE {streams_t} SET stream_schema = $2, cursor_field = $3, updated_at = now() WHERE stream = $1"
        ),
        &[&stream.name, &schema_json, &stream.cursor_field],
    )
    .await
    .map_err(pg_err("cannot record the stream's schema"))?;
    Ok(prepared)
}

/// Names of relations and types in `schema`: a new table or index must not
/// take one.
async fn names_in_schema(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
) -> Result<HashSet<String>> {
    let rows = tx
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 \
             UNION SELECT t.typname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .map_err(pg_err("cannot list the schema's relations"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn insert_mappings(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    stream: &str,
    first_position: i32,
    columns: &[(Column, FieldType)],
) -> Result<()> {
    if columns.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} (stream, position, field_name, column_name, column_type, field_type) \
         SELECT $1, $2::int4 + p.i::int4 - 1, p.f, p.c, p.ct, p.ft \
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS p(f, c, ct, ft, i)",
        qualified(schema, COLUMNS_TABLE)
    );
    let fields: Vec<&str> = columns.iter().map(|(c, _)| c.field.as_str()).collect();
    let names: Vec<&str> = columns.iter().map(|(c, _)| c.name.as_str()).collect();
    let ctypes: Vec<String> = columns.iter().map(|(c, _)| type_name(c.ty)).collect();
    let ftypes: Vec<String> = columns.iter().map(|(_, t)| type_name(*t)).collect();
    tx.execute(
        &sql,
        &[&stream, &first_position, &fields, &names, &ctypes, &ftypes],
    )
    .await
    .map_err(pg_err("cannot record column mappings"))?;
    Ok(())
}

/// Fields of `stream` once each, in schema order (a repeated name keeps its
/// first type).
fn unique_fields(stream: &StreamSchema) -> Vec<(String, FieldType)> {
    let mut seen = HashSet::new();
    stream
        .fields
        .iter()
        .filter(|f| seen.insert(f.name.clone()))
        .map(|f| (f.name.clone(), f.field_type))
        .collect()
}

/// True for fields that must have a column whatever the budget: the key
/// fields and the cursor.
fn required(stream: &StreamSchema, field: &str) -> bool {
    stream.primary_key.iter().any(|k| k == field) || stream.cursor_field.as_deref() == Some(field)
}

/// How many of `fields` are [`required`] and not in `have`: room kept for
/// them in the budget.
fn reserved(stream: &StreamSchema, fields: &[(String, FieldType)], have: &[Column]) -> usize {
    fields
        .iter()
        .filter(|(f, _)| required(stream, f) && !have.iter().any(|c| &c.field == f))
        .count()
}

async fn create(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    stream: &StreamSchema,
    schema_json: &Value,
    key_json: &Value,
    lz4: bool,
    max_columns: usize,
) -> Result<Prepared> {
    let taken = names_in_schema(tx, schema).await?;
    let table = choose(&stream.name, |n| {
        taken.contains(n) || META_TABLES.contains(&n) || n.starts_with("hw_stage_")
    });
    let mut used: HashSet<String> = META_COLUMNS.iter().map(|s| s.to_string()).collect();
    let mut columns = Vec::new();
    let mut without_column = Vec::new();
    let fields = unique_fields(stream);
    let mut room = max_columns.saturating_sub(reserved(stream, &fields, &[]));
    for (field, ty) in fields {
        if !required(stream, &field) {
            if room == 0 {
                without_column.push(field);
                continue;
            }
            room -= 1;
        }
        let name = choose(&field, |n| used.contains(n));
        used.insert(name.clone());
        columns.push(Column { field, name, ty });
    }
    let mut defs = vec!["_tenant_id text NOT NULL".to_owned()];
    for c in &columns {
        defs.push(format!("{} {}", quote(&c.name), sql_type(c.ty)));
    }
    defs.push(format!("_record jsonb{} NOT NULL", compression(lz4)));
    defs.extend(
        [
            "_deleted boolean NOT NULL DEFAULT false",
            "_sync_id uuid NOT NULL",
            "_extracted_at timestamptz NOT NULL",
        ]
        .map(String::from),
    );
    let key_cols: Vec<String> = stream
        .primary_key
        .iter()
        .filter_map(|k| columns.iter().find(|c| &c.field == k))
        .map(|c| quote(&c.name))
        .collect();
    defs.push(format!("PRIMARY KEY (_tenant_id, {})", key_cols.join(", ")));
    let target = qualified(schema, &table);
    let mut ddl = format!("CREATE TABLE {target} (\n  {}\n);\n", defs.join(",\n  "));
    ddl.push_str(&format!(
        "COMMENT ON TABLE {target} IS {};\n",
        literal(&format!("headwater: stream {}", stream.name))
    ));
    if let Some(cursor) = cursor_column(stream, &columns) {
        // Postgres names the index itself (unique, within 63 bytes).
        ddl.push_str(&format!(
            "CREATE INDEX ON {target} (_tenant_id, {});\n",
            quote(&cursor)
        ));
    }
    tx.batch_execute(&ddl)
        .await
        .map_err(pg_err(format!("cannot create table {target}")))?;
    tx.execute(
        &format!(
            "INSERT INTO {} (stream, table_name, primary_key, cursor_field, stream_schema) VALUES ($1, $2, $3, $4, $5)",
            qualified(schema, STREAMS_TABLE)
        ),
        &[&stream.name, &table, key_json, &stream.cursor_field, schema_json],
    )
    .await
    .map_err(pg_err("cannot record the stream's table"))?;
    let with_types: Vec<(Column, FieldType)> = columns.iter().map(|c| (c.clone(), c.ty)).collect();
    insert_mappings(tx, schema, &stream.name, 1, &with_types).await?;
    Ok(Prepared {
        layout: Layout::new(
            schema,
            &stream.name,
            &table,
            columns,
            &stream.primary_key,
            lz4,
        ),
        created: true,
        added: Vec::new(),
        type_changes: Vec::new(),
        without_column,
    })
}

fn cursor_column(stream: &StreamSchema, columns: &[Column]) -> Option<String> {
    let cursor = stream.cursor_field.as_ref()?;
    columns
        .iter()
        .find(|c| &c.field == cursor)
        .map(|c| c.name.clone())
}

#[allow(clippy::too_many_arguments)]
async fn evolve(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    stream: &StreamSchema,
    table: &str,
    oid: u32,
    old_cursor: Option<String>,
    lz4: bool,
    max_columns: usize,
) -> Result<Prepared> {
    let target = qualified(schema, table);
    let columns_t = qualified(schema, COLUMNS_TABLE);
    let rows = tx
        .query(
            &format!(
                "SELECT position, field_name, column_name, column_type, field_type FROM {columns_t} \
                 WHERE stream = $1 ORDER BY position"
            ),
            &[&stream.name],
        )
        .await
        .map_err(pg_err("cannot read column mappings"))?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut declared = Vec::with_capacity(rows.len());
    let mut last_position = 0i32;
    for r in &rows {
        last_position = last_position.max(r.get::<_, i32>(0));
        columns.push(Column {
            field: r.get(1),
            name: r.get(2),
            ty: parse_type(r.get(3))?,
        });
        declared.push(parse_type(r.get(4))?);
    }
    let attributes = tx
        .query(
            "SELECT attname::text, attisdropped FROM pg_attribute WHERE attrelid = $1 AND attnum > 0",
            &[&oid],
        )
        .await
        .map_err(pg_err("cannot list the table's columns"))?;
    let actual: HashSet<String> = attributes
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    // Dropped columns still count towards Postgres' limit.
    let mut attribute_count = attributes.len();

    let mut alters = Vec::new();
    // Mapped columns dropped by hand come back (empty); nothing is dropped.
    for c in &columns {
        if !actual.contains(&c.name) {
            attribute_count += 1;
            alters.push(format!(
                "ADD COLUMN IF NOT EXISTS {} {}",
                quote(&c.name),
                sql_type(c.ty)
            ));
        }
    }
    let mut used: HashSet<String> = META_COLUMNS.iter().map(|s| s.to_string()).collect();
    used.extend(actual.iter().cloned());
    used.extend(columns.iter().map(|c| c.name.clone()));
    let mut added = Vec::new();
    let mut new_columns = Vec::new();
    let mut type_changes = Vec::new();
    let mut retyped = Vec::new();
    let mut without_column = Vec::new();
    let fields = unique_fields(stream);
    // Room for new columns: within the budget, and within Postgres' limit
    // (which counts dropped columns), less what the key and cursor need.
    let need = reserved(stream, &fields, &columns);
    let mut room = max_columns
        .saturating_sub(columns.len())
        .min(PG_MAX_COLUMNS.saturating_sub(attribute_count))
        .saturating_sub(need);
    for (field, ty) in fields {
        match columns.iter().position(|c| c.field == field) {
            Some(i) => {
                if declared[i] != ty {
                    retyped.push((field.clone(), type_name(ty)));
                }
                if columns[i].ty != ty {
                    type_changes.push(TypeChange {
                        field: field.clone(),
                        column_type: columns[i].ty,
                        field_type: ty,
                    });
                }
            }
            None => {
                if !required(stream, &field) {
                    if room == 0 {
                        without_column.push(field);
                        continue;
                    }
                    room -= 1;
                }
                let name = choose(&field, |n| used.contains(n));
                used.insert(name.clone());
                alters.push(format!(
                    "ADD COLUMN IF NOT EXISTS {} {}",
                    quote(&name),
                    sql_type(ty)
                ));
                added.push(field.clone());
                new_columns.push((Column { field, name, ty }, ty));
            }
        }
    }
    if !alters.is_empty() {
        tx.batch_execute(&format!("ALTER TABLE {target} {}", alters.join(", ")))
            .await
            .map_err(pg_err(format!("cannot add columns to {target}")))?;
    }
    insert_mappings(tx, schema, &stream.name, last_position + 1, &new_columns).await?;
    for (field, ty) in &retyped {
        tx.execute(
            &format!(
                "UPDATE {columns_t} SET field_type = $3 WHERE stream = $1 AND field_name = $2"
            ),
            &[&stream.name, field, ty],
        )
        .await
        .map_err(pg_err("cannot record a type change"))?;
    }
    columns.extend(new_columns.into_iter().map(|(c, _)| c));
    if stream.cursor_field.is_some() && stream.cursor_field != old_cursor {
        if let Some(cursor) = cursor_column(stream, &columns) {
            tx.batch_execute(&format!(
                "CREATE INDEX ON {target} (_tenant_id, {})",
                quote(&cursor)
            ))
            .await
            .map_err(pg_err(format!("cannot index the cursor of {target}")))?;
        }
    }
    Ok(Prepared {
        layout: Layout::new(
            schema,
            &stream.name,
            table,
            columns,
            &stream.primary_key,
            lz4,
        ),
        created: false,
        added,
        type_changes,
        without_column,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(field: &str, name: &str, ty: FieldType) -> Column {
        Column {
            field: field.into(),
            name: name.into(),
            ty,
        }
    }

    #[test]
    fn statements_quote_every_name() {
        let hostile = "x\"; drop table deals; --";
        let l = Layout::new(
            "hw",
            "deals",
            "deals",
            vec![
                col("id", "id", FieldType::String),
                col(hostile, hostile, FieldType::Number),
            ],
            &["id".to_owned()],
            true,
        );
        assert_eq!(l.is_key, vec![true, false]);
        let cols = "_tenant_id, \"id\", \"x\"\"; drop table deals; --\", _record, _deleted, _sync_id, _extracted_at";
        assert_eq!(
            l.direct_copy_sql,
            format!("COPY \"hw\".\"deals\" ({cols}) FROM STDIN (FORMAT binary)")
        );
        assert!(l.upsert_sql.starts_with(&format!(
            "INSERT INTO \"hw\".\"deals\" AS t ({cols}) SELECT * FROM pg_temp.hw_stage_"
        )));
        assert!(l.upsert_sql.contains(
            "ON CONFLICT (_tenant_id, \"id\") DO UPDATE SET \"x\"\"; drop table deals; --\" = EXCLUDED.\"x\"\"; drop table deals; --\", _record = EXCLUDED._record"
        ));
        assert!(l
            .stage_sql
            .contains("(_tenant_id text, c0 text, c1 numeric, _record jsonb COMPRESSION lz4, _deleted boolean, _sync_id uuid, _extracted_at timestamptz) ON COMMIT DELETE ROWS"));
        // Another layout gets another staging table.
        let m = Layout::new(
            "hw",
            "deals",
            "deals",
            vec![col("id", "id", FieldType::String)],
            &["id".to_owned()],
            true,
        );
        assert_ne!(l.copy_sql, m.copy_sql);
    }

    #[test]
    fn type_names_round_trip() {
        for ty in [
            FieldType::String,
            FieldType::Integer,
            FieldType::Number,
            FieldType::Boolean,
            FieldType::Date,
            FieldType::Timestamp,
            FieldType::Json,
        ] {
            assert_eq!(parse_type(&type_name(ty)).ok(), Some(ty));
        }
        assert!(parse_type("money").is_err());
    }
}
