//! What the benches share: HubSpot-like contacts with 25 typed properties,
//! their schema, and small helpers.
#![allow(dead_code)]

use headwater::schema::{Field, FieldType, StreamSchema};
use headwater::source::Record;
use serde_json::{json, Map, Value};

/// Records per page, as HubSpot lists them.
pub const PAGE: usize = 100;

/// 25 contact properties with their types, as HubSpot types them.
pub const PROPS: [(&str, FieldType); 25] = [
    ("email", FieldType::String),
    ("firstname", FieldType::String),
    ("lastname", FieldType::String),
    ("phone", FieldType::String),
    ("company", FieldType::String),
    ("website", FieldType::String),
    ("city", FieldType::String),
    ("state", FieldType::String),
    ("country", FieldType::String),
    ("jobtitle", FieldType::String),
    ("lifecyclestage", FieldType::String),
    ("hs_lead_status", FieldType::String),
    ("createdate", FieldType::Timestamp),
    ("lastmodifieddate", FieldType::Timestamp),
    ("hs_object_id", FieldType::Number),
    ("num_notes", FieldType::Number),
    ("hubspotscore", FieldType::Number),
    ("hs_email_optout", FieldType::Boolean),
    ("closedate", FieldType::Date),
    ("annualrevenue", FieldType::Number),
    ("industry", FieldType::String),
    ("zip", FieldType::String),
    ("address", FieldType::String),
    ("hubspot_owner_id", FieldType::String),
    ("custom_score", FieldType::Number),
];

/// The contacts stream schema.
pub fn schema() -> StreamSchema {
    let mut fields = vec![
        Field::new("id", FieldType::String),
        Field::new("createdAt", FieldType::Timestamp),
        Field::new("updatedAt", FieldType::Timestamp),
        Field::new("archived", FieldType::Boolean),
        Field::new("archivedAt", FieldType::Timestamp),
    ];
    for (name, t) in PROPS {
        fields.push(Field::new(name, t).with_source_type("string"));
    }
    StreamSchema::new("contacts", "id", fields).with_cursor_field("updatedAt")
}

/// Contact `i` as the HubSpot source delivers it (values already typed).
pub fn contact(i: usize) -> Record {
    let mut data = Map::new();
    data.insert("id".into(), json!((1000 + i).to_string()));
    data.insert("createdAt".into(), json!("2024-01-01T00:00:00.000Z"));
    data.insert(
        "updatedAt".into(),
        json!(format!(
            "2024-03-01T10:{:02}:{:02}.123Z",
            (i / 60) % 60,
            i % 60
        )),
    );
    data.insert("archived".into(), json!(false));
    data.insert("archivedAt".into(), Value::Null);
    for (k, (name, t)) in PROPS.iter().enumerate() {
        let v = match t {
            FieldType::Number => json!((1000 + i * 7 + k) as f64 / 4.0),
            FieldType::Boolean => json!(i % 3 == 0),
            FieldType::Timestamp => json!("2024-03-01T10:00:00.123Z"),
            FieldType::Date => json!(format!("2024-05-{:02}", 1 + i % 28)),
            _ => json!(format!("{name} value for contact number {i}")),
        };
        data.insert((*name).into(), v);
    }
    Record::new((1000 + i).to_string(), data)
}

/// `rows` contacts in pages of [`PAGE`].
pub fn pages(rows: usize) -> Vec<Vec<Record>> {
    (0..rows)
        .step_by(PAGE)
        .map(|start| (start..(start + PAGE).min(rows)).map(contact).collect())
        .collect()
}

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
