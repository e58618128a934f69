//! Decoding HubSpot list pages into records, and records into JSON Lines.
//!
//! `cargo bench --bench decode` — per-record costs are the reported time
//! divided by 100 (records per page).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use headwater::hubspot::decode_list_page;
use headwater::schema::FieldType;
use headwater::sink::{Batch, Sink, StreamContext};
use headwater::sinks::files::FilesSink;
use serde_json::{json, Map, Value};

#[path = "common/mod.rs"]
mod common;
use common::*;

fn page_json() -> Vec<u8> {
    let results: Vec<Value> = (0..100)
        .map(|i| {
            let mut props = Map::new();
            for (name, t) in PROPS {
                let v = match t {
                    FieldType::Number => json!(format!("{}", 1000 + i * 7)),
                    FieldType::Boolean => json!(if i % 3 == 0 { "true" } else { "false" }),
                    FieldType::Timestamp => json!("2024-03-01T10:00:00.123Z"),
                    FieldType::Date => json!("2024-05-17"),
                    _ => json!(format!("{name} value for contact number {i}")),
                };
                props.insert(name.into(), v);
            }
            json!({
                "id": format!("{}", 1000 + i),
                "properties": props,
                "createdAt": "2024-01-01T00:00:00.000Z",
                "updatedAt": "2024-03-01T10:00:00.123Z",
                "archived": false
            })
        })
        .collect();
    serde_json::to_vec(
        &json!({"results": results, "paging": {"next": {"after": "1100", "link": "?after=1100"}}}),
    )
    .expect("json")
}

fn bench(c: &mut Criterion) {
    let schema = schema();
    let body = page_json();
    let mut g = c.benchmark_group("hubspot_page");
    g.throughput(Throughput::Elements(100));
    g.bench_function("decode_100_contacts", |b| {
        b.iter(|| decode_list_page(std::hint::black_box(&body), &schema).expect("decode"))
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let sync_id = uuid::Uuid::new_v4();
    rt.block_on(sink.prepare(&StreamContext::new("bench", schema.clone(), sync_id, None)))
        .expect("prepare");
    let records = decode_list_page(&body, &schema).expect("decode").items;
    g.bench_function("jsonl_write_100_contacts", |b| {
        b.iter_batched(
            || records.clone(),
            |records| {
                rt.block_on(sink.write(Batch::new(
                    "bench",
                    "contacts",
                    sync_id,
                    chrono::Utc::now(),
                    records,
                )))
                .expect("write")
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("decode_and_write_100_contacts", |b| {
        b.iter(|| {
            let records = decode_list_page(&body, &schema).expect("decode").items;
            rt.block_on(sink.write(Batch::new(
                "bench",
                "contacts",
                sync_id,
                chrono::Utc::now(),
                records,
            )))
            .expect("write")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
