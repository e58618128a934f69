//! The Postgres sink against a hostile world: TLS settings, NUL characters
//! outside record values, portals with more custom properties than a table
//! has columns, and numbers wider than 64 bits.
//!
//! Needs the local Postgres of `scripts/test-services.sh` (TLS on, with
//! Debian's self-signed "snakeoil" certificate for `localhost`).
#![cfg(feature = "postgres")]

use headwater::sinks::postgres::PostgresSink;
use uuid::Uuid;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
const BASE: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";

async fn plain_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(BASE, tokio_postgres::NoTls)
        .await
        .expect("Postgres at 127.0.0.1:5432: start it with scripts/test-services.sh");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn snakeoil() -> &'static str {
    assert!(
        std::path::Path::new(SNAKEOIL).exists(),
        "{SNAKEOIL} is missing: scripts/test-services.sh sets up TLS with it"
    );
    SNAKEOIL
}

/// Whether the sink's pooled connection (named `app`) uses TLS, as the
/// server sees it.
async fn sink_uses_tls(app: &str) -> Option<bool> {
    plain_client()
        .await
        .query_opt(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_stat_ssl")
        .map(|r| r.get(0))
}

async fn build(url: String) -> headwater::Result<PostgresSink> {
    PostgresSink::builder()
        .url(url)
        .schema(format!(
            "hw_tls_{}",
            &Uuid::new_v4().simple().to_string()[..8]
        ))
        .build()
        .await
}

#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    let app = format!("hw-tls-{}", Uuid::new_v4().simple());
    let sink = build(format!("{BASE}?sslmode=require&application_name={app}"))
        .await
        .expect("sslmode=require connects");
    assert_eq!(sink_uses_tls(&app).await, Some(true));
    drop(sink);
}

#[tokio::test]
async fn sslmode_disable_connects_in_clear() {
    let app = format!("hw-tls-{}", Uuid::new_v4().simple());
    let sink = build(format!("{BASE}?sslmode=disable&application_name={app}"))
        .await
        .expect("sslmode=disable connects");
    assert_eq!(sink_uses_tls(&app).await, Some(false));
    drop(sink);
}

#[tokio::test]
async fn verify_ca_with_the_servers_certificate_connects() {
    let app = format!("hw-tls-{}", Uuid::new_v4().simple());
    // 127.0.0.1 is not the certificate's name (localhost): verify-ca does
    // not look at names.
    let sink = build(format!(
        "{BASE}?sslmode=verify-ca&sslrootcert={}&application_name={app}",
        snakeoil()
    ))
    .await
    .expect("verify-ca with the snakeoil certificate connects");
    assert_eq!(sink_uses_tls(&app).await, Some(true));
    drop(sink);
}

#[tokio::test]
async fn verify_full_checks_the_host_name() {
    let app = format!("hw-tls-{}", Uuid::new_v4().simple());
    let sink = build(format!(
        "postgres://postgres:postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={}&application_name={app}",
        snakeoil()
    ))
    .await
    .expect("verify-full to localhost, the certificate's name, connects");
    assert_eq!(sink_uses_tls(&app).await, Some(true));
    drop(sink);
    let err = build(format!(
        "{BASE}?sslmode=verify-full&sslrootcert={}",
        snakeoil()
    ))
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("sslmode verify-full"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn verify_full_with_the_wrong_ca_fails_clearly() {
    let wrong = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/untrusted-ca.pem"
    );
    let err = build(format!(
        "postgres://postgres:postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={wrong}"
    ))
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("cannot connect to Postgres at localhost:5432/test"),
        "{err}"
    );
    assert!(err.contains("sslmode verify-full"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        !err.contains("postgres:postgres"),
        "no password in errors: {err}"
    );
}

mod shared_tables {
    use std::sync::Arc;
    use std::time::Duration;

    use headwater::http::RetryConfig;
    use headwater::hubspot::{HubSpot, HubSpotSource};
    use headwater::sinks::postgres::PostgresSink;
    use headwater::sync::Sync;
    use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};
    use serde_json::Value;
    use uuid::Uuid;

    use super::{plain_client, BASE};

    fn source(fake: &HubSpotFake) -> Arc<HubSpotSource> {
        let hs = HubSpot::builder()
            .private_app_token("pat-fake-token".into())
            .base_url(fake.uri())
            .retry(
                RetryConfig::default()
                    .with_backoff(Duration::from_millis(5), Duration::from_millis(20)),
            )
            .build()
            .expect("client");
        Arc::new(HubSpotSource::new(hs))
    }

    async fn portal(prefix: &str, hub_id: u64) -> HubSpotFake {
        let mut c = FakeConfig {
            custom_properties: 900,
            custom_property_prefix: prefix.to_owned(),
            hub_id,
            ..FakeConfig::default()
        };
        c.objects.clear();
        c.objects.insert("contacts".into(), ObjectSeed::new(40, 0));
        HubSpotFake::start(c).await
    }

    /// Two portals with 900 custom properties each (1,800 different ones)
    /// share one contacts table: both sync, every property of every record
    /// is in `_record`, and the table stays within its column budget.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_portals_of_900_custom_properties_share_one_table() {
        let schema = format!("hw_wide_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let sink = Arc::new(
            PostgresSink::builder()
                .url(format!("{BASE}?sslmode=disable"))
                .schema(&schema)
                .build()
                .await
                .expect("sink"),
        );
        let client = plain_client().await;
        let alpha = portal("alpha_prop_", 1001).await;
        let beta = portal("beta_prop_", 1002).await;
        for (tenant, fake) in [("alpha", &alpha), ("beta", &beta)] {
            let report = Sync::new(source(fake), sink.clone())
                .tenant(tenant)
                .streams(["contacts"])
                .run()
                .await;
            assert!(report.is_success(), "{tenant}: {report:?}");
        }
        let q = |t: &str| format!("\"{schema}\".\"{t}\"");
        let table: String = client
            .query_one(
                &format!(
                    "SELECT table_name FROM {} WHERE stream = 'contacts'",
                    q("_headwater_streams")
                ),
                &[],
            )
            .await
            .expect("table")
            .get(0);
        // The typed columns are listed in _headwater_columns, within budget.
        let typed: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE stream = 'contacts'",
                    q("_headwater_columns")
                ),
                &[],
            )
            .await
            .expect("columns")
            .get(0);
        // The default budget: 400 typed columns; the first portal's
        // properties took them (in schema order), the rest are in _record.
        assert_eq!(typed, 400, "typed columns");
        let in_table: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0",
                &[&q(&table)],
            )
            .await
            .expect("attributes")
            .get(0);
        assert_eq!(in_table, 400 + 5, "data and metadata columns");
        for (tenant, fake, prefix) in [
            ("alpha", &alpha, "alpha_prop_"),
            ("beta", &beta, "beta_prop_"),
        ] {
            let rows = client
                .query(
                    &format!(
                        "SELECT id::text, _record FROM {} WHERE _tenant_id = $1",
                        q(&table)
                    ),
                    &[&tenant],
                )
                .await
                .expect("rows");
            let mut ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            ids.sort();
            let mut truth = fake.ids("contacts", false);
            truth.sort();
            assert_eq!(ids, truth, "{tenant}: every record");
            let mut checked = 0;
            for row in &rows {
                let id: String = row.get(0);
                let record: Value = row.get(1);
                let source = fake.record_by_id("contacts", &id).expect("fake record");
                let props = source["properties"].as_object().expect("properties");
                for (name, value) in props.iter().filter(|(n, _)| n.starts_with(prefix)) {
                    // Blanks are no value (`schema::coerce`).
                    if value.is_null() || value.as_str().is_some_and(|v| v.trim().is_empty()) {
                        continue;
                    }
                    assert!(
                        record.get(name).is_some_and(|v| !v.is_null()),
                        "{tenant} {id}: {name} = {value} is not in _record"
                    );
                    checked += 1;
                }
            }
            assert!(
                checked > 40 * 300,
                "{tenant}: only {checked} values checked"
            );
        }
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}

mod nul_and_numbers {
    use headwater::schema::{coerce, Field, FieldType, StreamSchema};
    use headwater::sink::{Batch, Checkpoint, Sink, StreamContext};
    use headwater::sinks::postgres::PostgresSink;
    use headwater::source::{Record, StreamState};
    use serde_json::{json, Map, Value};
    use uuid::Uuid;

    use super::{plain_client, BASE};

    async fn sink() -> (PostgresSink, String) {
        let schema = format!("hw_nul_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let sink = PostgresSink::builder()
            .url(format!("{BASE}?sslmode=disable"))
            .schema(&schema)
            .build()
            .await
            .expect("sink");
        (sink, schema)
    }

    async fn load(
        sink: &PostgresSink,
        tenant: &str,
        s: &StreamSchema,
        records: Vec<Record>,
        state: Value,
    ) {
        let sync_id = Uuid::new_v4();
        sink.prepare(&StreamContext::new(tenant, s.clone(), sync_id, None))
            .await
            .expect("prepare");
        sink.write(Batch::new(
            tenant,
            s.name.clone(),
            sync_id,
            chrono::Utc::now(),
            records,
        ))
        .await
        .expect("write");
        let cp = Checkpoint::new(
            tenant,
            s.name.clone(),
            sync_id,
            StreamState::new(state),
            true,
            1,
            chrono::Utc::now(),
            true,
        );
        sink.commit(&cp).await.expect("commit");
        let back = sink
            .load_state(tenant, &s.name)
            .await
            .expect("load_state")
            .expect("a checkpoint");
        // The checkpoint comes back exactly: a resume needs its cursor.
        assert_eq!(back.state, cp.state);
        assert_eq!(back.tenant, tenant);
        assert_eq!(back.stream, s.name);
    }

    /// NUL in a tenant, a stream name, a field name, a label, a record id
    /// and a checkpoint: the commit succeeds; names and values hold U+FFFD
    /// in their place, the checkpoint comes back exactly.
    #[tokio::test]
    async fn nul_outside_record_values_does_not_fail_commits() {
        let (sink, schema) = sink().await;
        let s = StreamSchema::new(
            "notes\u{0}x",
            "id",
            vec![
                Field::new("id", FieldType::String).with_description("The id\u{0}"),
                Field::new("body\u{0}", FieldType::String).with_description("Label \u{0} here"),
            ],
        );
        let mut data = Map::new();
        data.insert("body\u{0}".into(), json!("text"));
        let record = Record::new("id\u{0}1", data);
        load(
            &sink,
            "ten\u{0}ant",
            &s,
            vec![record],
            json!({"after": "cur\u{0}sor"}),
        )
        .await;
        assert_eq!(
            sink.live_ids("ten\u{0}ant", &s).await.expect("live ids"),
            ["id\u{FFFD}1"]
        );
        let client = plain_client().await;
        let q = |t: &str| format!("\"{schema}\".\"{t}\"");
        let row = client
            .query_one(
                &format!(
                    "SELECT table_name, stream, stream_schema FROM {}",
                    q("_headwater_streams")
                ),
                &[],
            )
            .await
            .expect("stream row");
        let table: String = row.get(0);
        assert_eq!(row.get::<_, String>(1), "notes\u{FFFD}x");
        let stored: Value = row.get(2);
        assert_eq!(
            stored["fields"][1]["description"],
            json!("Label \u{FFFD} here")
        );
        let row = client
            .query_one(
                &format!("SELECT _tenant_id, id, _record FROM {}", q(&table)),
                &[],
            )
            .await
            .expect("data row");
        assert_eq!(row.get::<_, String>(0), "ten\u{FFFD}ant");
        assert_eq!(row.get::<_, String>(1), "id\u{FFFD}1");
        assert_eq!(row.get::<_, Value>(2), json!({"body\u{FFFD}": "text"}));
        let field: String = client
            .query_one(
                &format!(
                    "SELECT field_name FROM {} WHERE field_name LIKE 'body%'",
                    q("_headwater_columns")
                ),
                &[],
            )
            .await
            .expect("column row")
            .get(0);
        assert_eq!(field, "body\u{FFFD}");
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }

    /// A HubSpot number wider than f64 lands exactly in `_record` and in
    /// the `numeric` column.
    #[tokio::test]
    async fn wide_decimals_land_exactly() {
        let (sink, schema) = sink().await;
        let wide = "123456789012345678901234567890.123456789";
        let s = StreamSchema::new(
            "deals",
            "id",
            vec![
                Field::new("id", FieldType::String),
                Field::new("amount", FieldType::Number),
            ],
        );
        let mut data = Map::new();
        data.insert("id".into(), json!("1"));
        // As the HubSpot source types its string properties.
        data.insert("amount".into(), coerce(json!(wide), FieldType::Number));
        load(&sink, "acme", &s, vec![Record::new("1", data)], json!({})).await;
        let client = plain_client().await;
        let row = client
            .query_one(
                &format!("SELECT amount::text, _record->>'amount' FROM \"{schema}\".\"deals\""),
                &[],
            )
            .await
            .expect("row");
        assert_eq!(row.get::<_, String>(0), wide);
        assert_eq!(row.get::<_, String>(1), wide);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}
