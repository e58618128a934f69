//! A stream's table layout: which column holds each field, planned from
//! the stream's schema and the table's existing columns (see *Names* in the
//! module docs).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::names::{self, ColumnNames};
use super::values::ColumnType;
use super::{NumberType, FIELD_PREFIX, MAX_DESCRIPTION, META, SEQ_COLUMN};
use crate::schema::{FieldType, StreamSchema};
use crate::{Error, Result};

/// A column of a stream's layout.
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub(super) name: String,
    pub(super) ty: ColumnType,
}

/// Where a stream's records go: its table and columns.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) table: String,
    /// Columns each commit writes and merges: metadata, then fields.
    pub(super) columns: Vec<Column>,
    /// The schema's fields and the index of each one's column.
    pub(super) fields: Vec<(String, usize)>,
    /// Indexes of the key columns (the MERGE matches `_tenant_id` and these).
    pub(super) keys: Vec<usize>,
    /// A one-field key takes its value from `Record::id`.
    pub(super) key_from_id: bool,
}

impl Layout {
    pub(super) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A column found in an existing table.
pub(super) struct Existing {
    pub(super) name: String,
    pub(super) ty: ColumnType,
    pub(super) description: Option<String>,
}

pub(super) fn describe_field(field: &str) -> String {
    let mut d = format!("{FIELD_PREFIX}{field}");
    if d.len() > MAX_DESCRIPTION {
        let mut cut = MAX_DESCRIPTION;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
    }
    d
}

pub(super) fn existing_columns(table: &Value) -> Vec<Existing> {
    table
        .pointer("/schema/fields")
        .and_then(Value::as_array)
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| {
                    Some(Existing {
                        name: f.get("name")?.as_str()?.to_owned(),
                        ty: ColumnType::parse(f.get("type").and_then(Value::as_str).unwrap_or("")),
                        description: f
                            .get("description")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn column_json(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "type": ty, "mode": "NULLABLE", "description": description})
}

/// BigQuery's limit of columns in a table.
pub(super) const MAX_COLUMNS: usize = 10_000;

/// Maps a schema onto a table's existing columns; returns the layout and
/// the columns to add (as `TableFieldSchema` JSON).
///
/// The table's columns stay within BigQuery's limit by the Postgres sink's
/// rule: key fields always get a column, other fields get one first come,
/// first served while the table has room; a field without one is in
/// `_record` only.
pub(super) fn plan_layout(
    schema: &StreamSchema,
    table: &str,
    existing: &[Existing],
    number_type: NumberType,
) -> Result<(Layout, Vec<Value>)> {
    plan_layout_within(schema, table, existing, number_type, MAX_COLUMNS)
}

fn plan_layout_within(
    schema: &StreamSchema,
    table: &str,
    existing: &[Existing],
    number_type: NumberType,
    max_columns: usize,
) -> Result<(Layout, Vec<Value>)> {
    if schema.primary_key.is_empty() {
        return Err(Error::Config(format!(
            "stream `{}` has no primary key: the bigquery sink merges on it",
            schema.name
        )));
    }
    let mut taken = ColumnNames::default();
    for e in existing {
        taken.reserve(&e.name);
    }
    for (m, _, _) in META {
        taken.reserve(m);
    }
    taken.reserve(SEQ_COLUMN);
    let by_lower: HashMap<String, usize> = existing
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.to_ascii_lowercase(), i))
        .collect();
    let by_description: HashMap<&str, usize> = existing
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((e.description.as_deref()?, i)))
        .collect();
    let mut claimed: HashSet<usize> = HashSet::new();
    let mut columns = Vec::new();
    let mut new = Vec::new();
    for (name, ty, doc) in META {
        match by_lower.get(name) {
            Some(&i) => {
                claimed.insert(i);
                columns.push(Column {
                    name: existing[i].name.clone(),
                    ty: existing[i].ty.clone(),
                });
            }
            None => {
                new.push(column_json(name, ty, doc));
                columns.push(Column {
                    name: name.to_owned(),
                    ty: ColumnType::parse(ty),
                });
            }
        }
    }
    // The schema's fields, and key fields it does not list (as text).
    let mut wanted: Vec<(String, FieldType)> = schema
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.field_type))
        .collect();
    for k in &schema.primary_key {
        if !wanted.iter().any(|(n, _)| n == k) {
            wanted.push((k.clone(), FieldType::String));
        }
    }
    let numeric = number_type == NumberType::Numeric;
    let mut fields = Vec::with_capacity(wanted.len());
    let mut seen = HashSet::new();
    // Room for new columns, less what the key fields may still need.
    let keys_to_add = schema
        .primary_key
        .iter()
        .filter(|k| {
            let d = describe_field(k);
            !existing
                .iter()
                .any(|e| e.description.as_deref() == Some(d.as_str()))
        })
        .count();
    let mut room = max_columns
        .saturating_sub(existing.len() + new.len())
        .saturating_sub(keys_to_add);
    let mut without_column = 0usize;
    for (field, field_type) in wanted {
        if !seen.insert(field.clone()) {
            continue; // a schema naming a field twice
        }
        let is_key = schema.primary_key.contains(&field);
        let mut desired = ColumnType::of(field_type, numeric);
        if is_key && !desired.is_comparable() {
            desired = ColumnType::String;
        }
        let description = describe_field(&field);
        let found = by_description
            .get(description.as_str())
            .copied()
            .filter(|i| !claimed.contains(i))
            .or_else(|| {
                // A column made outside headwater under the plain name.
                let base = names::column_base(&field);
                by_lower
                    .get(&base.to_ascii_lowercase())
                    .copied()
                    .filter(|i| !claimed.contains(i))
                    .filter(|i| {
                        existing[*i]
                            .description
                            .as_deref()
                            .is_none_or(|d| !d.starts_with(FIELD_PREFIX))
                    })
            });
        let column = match found {
            Some(i) => {
                claimed.insert(i);
                let e = &existing[i];
                if e.ty != desired {
                    tracing::warn!(
                        table,
                        field = %field,
                        column = %e.name,
                        column_type = e.ty.name(),
                        field_type = desired.name(),
                        "bigquery: field type differs from its column; values that do not fit stay in _record"
                    );
                }
                Column {
                    name: e.name.clone(),
                    ty: e.ty.clone(),
                }
            }
            None => {
                if !is_key {
                    if room == 0 {
                        without_column += 1;
                        continue;
                    }
                    room -= 1;
                }
                let name = taken.assign(&field);
                new.push(column_json(&name, desired.name(), &description));
                Column { name, ty: desired }
            }
        };
        if is_key && !column.ty.is_comparable() {
            return Err(Error::Config(format!(
                "key field `{field}` of stream `{}` is in column `{}` of type {}, which cannot be compared",
                schema.name,
                column.name,
                column.ty.name()
            )));
        }
        columns.push(column);
        fields.push((field, columns.len() - 1));
    }
    if without_column > 0 {
        tracing::warn!(
            table,
            fields = without_column,
            max_columns,
            "bigquery: the table is at its column limit: these fields have no column; their values are in _record"
        );
    }
    let keys = schema
        .primary_key
        .iter()
        .filter_map(|k| fields.iter().find(|(f, _)| f == k).map(|(_, i)| *i))
        .collect();
    Ok((
        Layout {
            table: table.to_owned(),
            columns,
            fields,
            keys,
            key_from_id: schema.primary_key.len() == 1,
        },
        new,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Field;

    fn schema() -> StreamSchema {
        StreamSchema::new(
            "deals",
            "id",
            vec![
                Field::new("id", FieldType::String),
                Field::new("amount", FieldType::Number),
                Field::new("Email", FieldType::String),
                Field::new("email", FieldType::String),
                Field::new("x\"; drop table deals; --", FieldType::Json),
            ],
        )
    }

    #[test]
    fn layouts_keep_existing_names_and_add_new_ones() {
        let (layout, new) = plan_layout(&schema(), "deals", &[], NumberType::Numeric).unwrap();
        assert_eq!(new.len(), 5 + 5);
        assert_eq!(layout.keys.len(), 1);
        assert_eq!(layout.columns[layout.keys[0]].name, "id");
        let email2 = layout.columns[layout.fields[3].1].name.clone();
        assert!(email2.starts_with("email_"), "{email2}");
        // The table now exists with those columns (descriptions included);
        // a schema with one more field adds exactly that column.
        let existing: Vec<Existing> = new
            .iter()
            .map(|c| Existing {
                name: c["name"].as_str().unwrap().to_owned(),
                ty: ColumnType::parse(c["type"].as_str().unwrap()),
                description: c["description"].as_str().map(str::to_owned),
            })
            .collect();
        let mut s2 = schema();
        s2.fields.insert(0, Field::new("EMAIL", FieldType::String));
        s2.fields[2].field_type = FieldType::String; // amount changed type
        let (layout2, new2) = plan_layout(&s2, "deals", &existing, NumberType::Numeric).unwrap();
        assert_eq!(new2.len(), 1, "{new2:?}");
        assert_eq!(
            layout2.column(&email2).map(|c| c.ty.clone()),
            Some(ColumnType::String)
        );
        // The changed field keeps its NUMERIC column.
        let amount = layout2
            .fields
            .iter()
            .find(|(f, _)| f == "amount")
            .unwrap()
            .1;
        assert_eq!(layout2.columns[amount].ty, ColumnType::Numeric);
    }

    #[test]
    fn tables_stay_within_their_column_limit() {
        let mut s = schema();
        for i in 0..30 {
            s.fields
                .push(Field::new(format!("p{i}"), FieldType::String));
        }
        // The key always gets its column, wherever it is in the schema.
        s.fields.rotate_left(1);
        let limit = META.len() + 12;
        let (layout, new) =
            plan_layout_within(&s, "deals", &[], NumberType::Numeric, limit).unwrap();
        assert_eq!(new.len(), limit);
        assert_eq!(layout.columns.len(), limit);
        assert_eq!(layout.columns[layout.keys[0]].name, "id");
        // The table as created: a schema with more fields adds nothing.
        let existing: Vec<Existing> = new
            .iter()
            .map(|c| Existing {
                name: c["name"].as_str().unwrap().to_owned(),
                ty: ColumnType::parse(c["type"].as_str().unwrap()),
                description: c["description"].as_str().map(str::to_owned),
            })
            .collect();
        s.fields.push(Field::new("later", FieldType::String));
        let (layout2, new2) =
            plan_layout_within(&s, "deals", &existing, NumberType::Numeric, limit).unwrap();
        assert!(new2.is_empty(), "{new2:?}");
        assert_eq!(layout2.columns.len(), limit);
        assert!(!layout2.fields.iter().any(|(f, _)| f == "later"));
    }

    #[test]
    fn keys_are_required_and_comparable() {
        let mut s = schema();
        s.primary_key.clear();
        assert!(plan_layout(&s, "deals", &[], NumberType::Numeric).is_err());
        let s = StreamSchema::new("x", "k", vec![Field::new("k", FieldType::Json)]);
        let (layout, _) = plan_layout(&s, "x", &[], NumberType::Numeric).unwrap();
        assert_eq!(layout.columns[layout.keys[0]].ty, ColumnType::String);
    }
}
