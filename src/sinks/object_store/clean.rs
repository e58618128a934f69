//! The clean layer's part: typed Arrow columns built as records arrive,
//! written as one Parquet file per part.
//!
//! | field type | Arrow / Parquet column |
//! |---|---|
//! | `String` | `Utf8` (numbers and booleans as their text, arrays and objects as JSON) |
//! | `Integer` | `Int64` |
//! | `Number` | `Float64` |
//! | `Boolean` | `Boolean` |
//! | `Date` | `Date32` |
//! | `Timestamp` | `Timestamp(Microsecond, "UTC")` |
//! | `Json` | `Utf8` holding JSON text |
//!
//! A value that does not fit its column becomes null there and is counted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::schema::{Field as SchemaField, FieldType, StreamSchema};
use crate::sink::Batch;
use crate::{Error, Result};

use super::raw::META_KEYS;
use super::NAME;

/// Field metadata key naming the headwater type of a column.
const TYPE_KEY: &str = "headwater.type";

/// The columns of a stream's Parquet files, fixed when the stream is
/// prepared.
#[derive(Debug)]
pub(super) struct ColumnPlan {
    fields: Vec<(String, FieldType)>,
    schema: SchemaRef,
}

/// The clean layer's columns for a sync: the columns of earlier syncs
/// (`previous`, each keeping its type), then the schema's new fields. A
/// field that changed type keeps its column's type (values that no longer
/// fit are null there, and kept in the raw layer); a field that left the
/// schema keeps its column (null from now on). So every Parquet file of a
/// stream has the columns of the files before it, with the same types, and
/// readers can read them together.
pub(super) fn merge_columns(previous: &[SchemaField], schema: &StreamSchema) -> Vec<SchemaField> {
    let mut out: Vec<SchemaField> = previous
        .iter()
        .map(|f| SchemaField::new(f.name.clone(), f.field_type))
        .collect();
    for f in &schema.fields {
        match out.iter().find(|c| c.name == f.name) {
            Some(c) if c.field_type != f.field_type => tracing::warn!(
                stream = %schema.name,
                field = %f.name,
                now = ?f.field_type,
                column = ?c.field_type,
                "a field changed type: its Parquet column keeps its type; values that do not fit are null there (the raw layer keeps them)"
            ),
            Some(_) => {}
            None => out.push(SchemaField::new(f.name.clone(), f.field_type)),
        }
    }
    out
}

impl ColumnPlan {
    /// The metadata columns, then one column per field, in order. A field
    /// named like a metadata column, or like an earlier field, is left out
    /// (and reported).
    pub(super) fn new(stream: &str, fields_in: &[SchemaField]) -> Self {
        let utc: Arc<str> = Arc::from("UTC");
        let mut columns = vec![
            Field::new("_tenant_id", DataType::Utf8, false),
            Field::new("_sync_id", DataType::Utf8, false),
            Field::new(
                "_extracted_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some(utc.clone())),
                false,
            ),
            Field::new("_deleted", DataType::Boolean, false),
        ];
        let mut seen: HashSet<&str> = META_KEYS.iter().copied().collect();
        let mut fields = Vec::with_capacity(fields_in.len());
        for f in fields_in {
            if !seen.insert(f.name.as_str()) {
                tracing::warn!(
                    stream,
                    field = %f.name,
                    "field left out of the Parquet columns: its name is taken by a metadata column or an earlier field"
                );
                continue;
            }
            let data_type = match f.field_type {
                FieldType::Integer => DataType::Int64,
                FieldType::Number => DataType::Float64,
                FieldType::Boolean => DataType::Boolean,
                FieldType::Date => DataType::Date32,
                FieldType::Timestamp => {
                    DataType::Timestamp(TimeUnit::Microsecond, Some(utc.clone()))
                }
                // String, Json and types added later.
                _ => DataType::Utf8,
            };
            let type_name = serde_json::to_value(f.field_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            columns.push(
                Field::new(f.name.as_str(), data_type, true)
                    .with_metadata(HashMap::from([(TYPE_KEY.to_owned(), type_name)])),
            );
            fields.push((f.name.clone(), f.field_type));
        }
        ColumnPlan {
            fields,
            schema: Arc::new(Schema::new(columns)),
        }
    }

    /// The Arrow schema of the files.
    #[cfg(test)]
    pub(super) fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

#[derive(Debug)]
enum Column {
    Utf8(StringBuilder),
    Json(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Date32(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Column {
    fn new(t: FieldType) -> Self {
        match t {
            FieldType::Integer => Column::Int64(Int64Builder::new()),
            FieldType::Number => Column::Float64(Float64Builder::new()),
            FieldType::Boolean => Column::Boolean(BooleanBuilder::new()),
            FieldType::Date => Column::Date32(Date32Builder::new()),
            FieldType::Timestamp => {
                Column::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            FieldType::Json => Column::Json(StringBuilder::new()),
            _ => Column::Utf8(StringBuilder::new()),
        }
    }

    /// Appends `value`; returns false when it did not fit (null appended).
    fn append(&mut self, value: Option<&Value>) -> bool {
        let value = match value {
            None | Some(Value::Null) => {
                self.append_null();
                return true;
            }
            Some(v) => v,
        };
        match self {
            Column::Utf8(b) => {
                match value {
                    Value::String(s) => b.append_value(s),
                    Value::Bool(v) => b.append_value(if *v { "true" } else { "false" }),
                    other => b.append_value(other.to_string()),
                }
                true
            }
            Column::Json(b) => {
                match value {
                    // Blank is null, a string holding JSON text is that JSON
                    // (as `schema::coerce` reads them); any other string is a
                    // JSON string.
                    Value::String(s) if s.trim().is_empty() => b.append_null(),
                    Value::String(s) if is_json_text(s) => b.append_value(s.trim()),
                    other => b.append_value(other.to_string()),
                }
                true
            }
            Column::Int64(b) => fit(b, to_i64(value)),
            Column::Float64(b) => fit(b, to_f64(value)),
            Column::Boolean(b) => match to_bool(value) {
                Fit::Value(v) => {
                    b.append_value(v);
                    true
                }
                Fit::Null => {
                    b.append_null();
                    true
                }
                Fit::Mismatch => {
                    b.append_null();
                    false
                }
            },
            Column::Date32(b) => fit(b, to_date32(value)),
            Column::Timestamp(b) => fit(b, to_micros(value)),
        }
    }

    fn append_null(&mut self) {
        match self {
            Column::Utf8(b) | Column::Json(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::Float64(b) => b.append_null(),
            Column::Boolean(b) => b.append_null(),
            Column::Date32(b) => b.append_null(),
            Column::Timestamp(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Utf8(b) | Column::Json(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::Boolean(b) => Arc::new(b.finish()),
            Column::Date32(b) => Arc::new(b.finish()),
            Column::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

fn fit<T: arrow_array::ArrowPrimitiveType>(
    b: &mut arrow_array::builder::PrimitiveBuilder<T>,
    v: Fit<T::Native>,
) -> bool {
    match v {
        Fit::Value(v) => {
            b.append_value(v);
            true
        }
        Fit::Null => {
            b.append_null();
            true
        }
        Fit::Mismatch => {
            b.append_null();
            false
        }
    }
}

/// A value converted to a column's type.
#[derive(Debug, PartialEq)]
enum Fit<T> {
    Value(T),
    /// Blank: null, not an error (`HubSpot` sends `""` for an empty number).
    Null,
    /// Does not fit: null, counted.
    Mismatch,
}

fn is_json_text(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// The trimmed text of a string value; `None` for a blank one.
fn text(s: &str) -> Option<&str> {
    let t = s.trim();
    (!t.is_empty()).then_some(t)
}

fn to_i64(v: &Value) -> Fit<i64> {
    fn from_f64(f: f64) -> Fit<i64> {
        // Whole numbers within i64's range only (2^63 is exactly representable).
        if f.fract() == 0.0
            && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
        {
            Fit::Value(f as i64)
        } else {
            Fit::Mismatch
        }
    }
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Fit::Value(i),
            None if n.is_u64() => Fit::Mismatch,
            None => n.as_f64().map_or(Fit::Mismatch, from_f64),
        },
        Value::String(s) => match text(s) {
            None => Fit::Null,
            Some(t) => match t.parse::<i64>() {
                Ok(i) => Fit::Value(i),
                Err(_) => t.parse::<f64>().map_or(Fit::Mismatch, from_f64),
            },
        },
        _ => Fit::Mismatch,
    }
}

fn to_f64(v: &Value) -> Fit<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match text(s) {
            None => return Fit::Null,
            Some(t) => t.parse::<f64>().ok(),
        },
        _ => None,
    };
    match f {
        Some(f) if f.is_finite() => Fit::Value(f),
        _ => Fit::Mismatch,
    }
}

fn to_bool(v: &Value) -> Fit<bool> {
    match v {
        Value::Bool(b) => Fit::Value(*b),
        Value::String(s) => match text(s) {
            None => Fit::Null,
            Some(t) if t.eq_ignore_ascii_case("true") => Fit::Value(true),
            Some(t) if t.eq_ignore_ascii_case("false") => Fit::Value(false),
            Some(_) => Fit::Mismatch,
        },
        _ => Fit::Mismatch,
    }
}

/// Days from 0001-01-01 (day 1) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

fn days(d: NaiveDate) -> Fit<i32> {
    // Within chrono's range of years this cannot overflow.
    Fit::Value(d.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
}

/// Days since 1970-01-01: `YYYY-MM-DD` (or the date part of a longer ISO
/// 8601 value, as written), or epoch milliseconds.
fn to_date32(v: &Value) -> Fit<i32> {
    match v {
        Value::Number(n) => match n.as_i64().and_then(DateTime::from_timestamp_millis) {
            Some(dt) => days(dt.date_naive()),
            None => Fit::Mismatch,
        },
        Value::String(s) => {
            let Some(t) = text(s) else { return Fit::Null };
            if let Ok(ms) = t.parse::<i64>() {
                return match DateTime::from_timestamp_millis(ms) {
                    Some(dt) => days(dt.date_naive()),
                    None => Fit::Mismatch,
                };
            }
            let head = match t.get(..10) {
                Some(h) if matches!(t.as_bytes().get(10), None | Some(b'T' | b't' | b' ')) => h,
                _ => return Fit::Mismatch,
            };
            NaiveDate::parse_from_str(head, "%Y-%m-%d").map_or(Fit::Mismatch, days)
        }
        _ => Fit::Mismatch,
    }
}

/// Microseconds since the epoch, UTC: RFC 3339, ISO 8601 without an offset
/// (taken as UTC), a bare date (midnight UTC), or epoch milliseconds.
fn to_micros(v: &Value) -> Fit<i64> {
    match v {
        Value::Number(n) => match n.as_i64().and_then(DateTime::from_timestamp_millis) {
            Some(dt) => Fit::Value(dt.timestamp_micros()),
            None => Fit::Mismatch,
        },
        Value::String(s) => {
            let Some(t) = text(s) else { return Fit::Null };
            if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
                return Fit::Value(dt.with_timezone(&Utc).timestamp_micros());
            }
            if let Ok(ms) = t.parse::<i64>() {
                return match DateTime::from_timestamp_millis(ms) {
                    Some(dt) => Fit::Value(dt.timestamp_micros()),
                    None => Fit::Mismatch,
                };
            }
            for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(dt) = NaiveDateTime::parse_from_str(t, f) {
                    return Fit::Value(dt.and_utc().timestamp_micros());
                }
            }
            match NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                Ok(d) => Fit::Value(
                    d.and_time(chrono::NaiveTime::MIN)
                        .and_utc()
                        .timestamp_micros(),
                ),
                Err(_) => Fit::Mismatch,
            }
        }
        _ => Fit::Mismatch,
    }
}

/// One part being built: a column builder per column.
#[derive(Debug)]
pub(super) struct CleanPart {
    plan: Arc<ColumnPlan>,
    tenant: StringBuilder,
    sync_id: StringBuilder,
    extracted_at: TimestampMicrosecondBuilder,
    deleted: BooleanBuilder,
    columns: Vec<Column>,
    /// Values nulled per column (same order as `plan.fields`).
    nulled: Vec<u64>,
    rows: usize,
}

/// A finished Parquet file.
#[derive(Debug)]
pub(super) struct CleanFile {
    pub(super) bytes: Vec<u8>,
    pub(super) rows: u64,
    /// Values that did not fit, per field name (only fields with some).
    pub(super) nulled: Vec<(String, u64)>,
}

impl CleanFile {
    pub(super) fn nulled_total(&self) -> u64 {
        self.nulled.iter().map(|(_, n)| n).sum()
    }
}

impl CleanPart {
    pub(super) fn new(plan: Arc<ColumnPlan>) -> Self {
        let columns = plan.fields.iter().map(|(_, t)| Column::new(*t)).collect();
        let nulled = vec![0; plan.fields.len()];
        CleanPart {
            plan,
            tenant: StringBuilder::new(),
            sync_id: StringBuilder::new(),
            extracted_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            deleted: BooleanBuilder::new(),
            columns,
            nulled,
            rows: 0,
        }
    }

    /// Appends a batch: one row per record.
    pub(super) fn push(&mut self, batch: &Batch) {
        let sync_id = batch.sync_id.to_string();
        let at = batch.extracted_at.timestamp_micros();
        for record in &batch.records {
            self.tenant.append_value(&batch.tenant);
            self.sync_id.append_value(&sync_id);
            self.extracted_at.append_value(at);
            self.deleted.append_value(record.deleted);
            for (i, ((name, _), col)) in self
                .plan
                .fields
                .iter()
                .zip(self.columns.iter_mut())
                .enumerate()
            {
                if !col.append(record.data.get(name)) {
                    self.nulled[i] += 1;
                }
            }
        }
        self.rows += batch.records.len();
    }

    /// The finished Parquet file (Snappy-compressed, one row group per 1 Mi rows).
    pub(super) fn finish(mut self) -> Result<CleanFile> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(4 + self.columns.len());
        arrays.push(Arc::new(self.tenant.finish()));
        arrays.push(Arc::new(self.sync_id.finish()));
        arrays.push(Arc::new(self.extracted_at.finish()));
        arrays.push(Arc::new(self.deleted.finish()));
        arrays.extend(self.columns.iter_mut().map(Column::finish));
        let batch = RecordBatch::try_new(self.plan.schema.clone(), arrays)
            .map_err(|e| Error::sink(NAME, "cannot build the Parquet columns", e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("headwater {}", env!("CARGO_PKG_VERSION")))
            .build();
        let parquet_err = |e| Error::sink(NAME, "cannot write Parquet", e);
        let mut writer = ArrowWriter::try_new(Vec::new(), self.plan.schema.clone(), Some(props))
            .map_err(parquet_err)?;
        writer.write(&batch).map_err(parquet_err)?;
        let bytes = writer.into_inner().map_err(parquet_err)?;
        let nulled = self
            .plan
            .fields
            .iter()
            .zip(&self.nulled)
            .filter(|(_, n)| **n > 0)
            .map(|((name, _), n)| (name.clone(), *n))
            .collect();
        Ok(CleanFile {
            bytes,
            rows: self.rows as u64,
            nulled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use serde_json::json;

    #[test]
    fn values_convert_or_become_null() {
        assert_eq!(to_i64(&json!(42)), Fit::Value(42));
        assert_eq!(to_i64(&json!("42")), Fit::Value(42));
        assert_eq!(to_i64(&json!(" 7.0 ")), Fit::Value(7));
        assert_eq!(to_i64(&json!("")), Fit::Null);
        assert_eq!(to_i64(&json!(1.5)), Fit::Mismatch);
        assert_eq!(to_i64(&json!(u64::MAX)), Fit::Mismatch);
        assert_eq!(to_i64(&json!(1e300)), Fit::Mismatch);
        assert_eq!(to_i64(&json!("n/a")), Fit::Mismatch);
        assert_eq!(to_i64(&json!(true)), Fit::Mismatch);
        assert_eq!(to_f64(&json!("1.5")), Fit::Value(1.5));
        assert_eq!(to_f64(&json!(3)), Fit::Value(3.0));
        assert_eq!(to_f64(&json!("NaN")), Fit::Mismatch);
        assert_eq!(to_f64(&json!("inf")), Fit::Mismatch);
        assert_eq!(to_f64(&json!([1])), Fit::Mismatch);
        assert_eq!(to_bool(&json!("TRUE")), Fit::Value(true));
        assert_eq!(to_bool(&json!(false)), Fit::Value(false));
        assert_eq!(to_bool(&json!("yes")), Fit::Mismatch);
        assert_eq!(to_bool(&json!(" ")), Fit::Null);
        assert_eq!(to_date32(&json!("1970-01-02")), Fit::Value(1));
        assert_eq!(to_date32(&json!("1969-12-31")), Fit::Value(-1));
        assert_eq!(to_date32(&json!("2024-03-01T00:00:00Z")), Fit::Value(19783));
        assert_eq!(to_date32(&json!(1_709_251_200_000_i64)), Fit::Value(19783));
        assert_eq!(to_date32(&json!("2024-02-30")), Fit::Mismatch);
        assert_eq!(to_date32(&json!("2024-03-01garbage")), Fit::Mismatch);
        assert_eq!(to_date32(&json!("é2024-03-01")), Fit::Mismatch);
        assert_eq!(
            to_micros(&json!("2024-03-01T00:00:00.5Z")),
            Fit::Value(1_709_251_200_500_000)
        );
        assert_eq!(
            to_micros(&json!("2024-03-01T01:00:00+01:00")),
            Fit::Value(1_709_251_200_000_000)
        );
        assert_eq!(
            to_micros(&json!("1709251200000")),
            Fit::Value(1_709_251_200_000_000)
        );
        assert_eq!(
            to_micros(&json!("2024-03-01 00:00:00")),
            Fit::Value(1_709_251_200_000_000)
        );
        assert_eq!(
            to_micros(&json!("2024-03-01")),
            Fit::Value(1_709_251_200_000_000)
        );
        assert_eq!(to_micros(&json!("yesterday")), Fit::Mismatch);
        assert_eq!(to_micros(&json!(i64::MAX)), Fit::Mismatch);
    }

    #[test]
    fn strings_and_json_always_fit() {
        let mut s = Column::new(FieldType::String);
        for v in [json!("x"), json!(7), json!(true), json!({"a": 1})] {
            assert!(s.append(Some(&v)));
        }
        let mut j = Column::new(FieldType::Json);
        for v in [json!("[1,2]"), json!("plain"), json!({"a": 1}), json!(" ")] {
            assert!(j.append(Some(&v)));
        }
        let arr = j.finish();
        let arr = arr
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .expect("utf8");
        assert_eq!(arr.value(0), "[1,2]");
        assert_eq!(arr.value(1), "\"plain\"");
        assert_eq!(arr.value(2), "{\"a\":1}");
        assert!(arr.is_null(3), "blank is null");
    }

    #[test]
    fn columns_are_kept_with_their_first_type() {
        let first = StreamSchema::new(
            "s",
            "id",
            vec![
                SchemaField::new("id", FieldType::String),
                SchemaField::new("count", FieldType::Integer),
                SchemaField::new("gone", FieldType::Boolean),
            ],
        );
        let cols = merge_columns(&[], &first);
        let second = StreamSchema::new(
            "s",
            "id",
            vec![
                SchemaField::new("new", FieldType::Date),
                SchemaField::new("id", FieldType::String),
                SchemaField::new("count", FieldType::String),
            ],
        );
        let merged = merge_columns(&cols, &second);
        let got: Vec<(&str, FieldType)> = merged
            .iter()
            .map(|f| (f.name.as_str(), f.field_type))
            .collect();
        assert_eq!(
            got,
            [
                ("id", FieldType::String),
                ("count", FieldType::Integer),
                ("gone", FieldType::Boolean),
                ("new", FieldType::Date),
            ]
        );
    }

    #[test]
    fn metadata_names_are_not_repeated() {
        let schema = StreamSchema::new(
            "s",
            "id",
            vec![
                SchemaField::new("id", FieldType::String),
                SchemaField::new("_deleted", FieldType::String),
                SchemaField::new("id", FieldType::Integer),
                SchemaField::new("n", FieldType::Number),
            ],
        );
        let plan = ColumnPlan::new("s", &schema.fields);
        let names: Vec<&str> = plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "_tenant_id",
                "_sync_id",
                "_extracted_at",
                "_deleted",
                "id",
                "n"
            ]
        );
    }
}
