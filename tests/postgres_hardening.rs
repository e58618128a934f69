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
