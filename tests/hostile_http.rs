//! Every client against hostile upstreams: absurd `Retry-After` values and
//! token lifetimes (no panics), dropped connections, timeouts and refused
//! connections (no secret in any error or log line), endless bodies and
//! gzip bombs (a typed error, not all the memory), endless cursors (an
//! error, not a loop).

#![cfg(all(
    feature = "hubspot",
    feature = "mailchimp",
    feature = "constant-contact",
    feature = "bigquery",
    feature = "files",
    feature = "testkit"
))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwater::auth::AccessTokenSource;
use headwater::auth::{OAuthClient, OAuthConfig, StaticToken};
use headwater::constant_contact::ConstantContact;
use headwater::http::{Limits, RetryConfig, MAX_RETRY_AFTER};
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::mailchimp::{oauth_metadata_at, Mailchimp};
use headwater::sinks::bigquery::{
    BigQuerySinkBuilder, ServiceAccountKey, ServiceAccountTokenSource,
};
use headwater::sinks::files::FilesSink;
use headwater::sync::Sync;
use headwater::Error;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "SECRET-ACCESS-abc123";
const TEST_ONLY_KEY: &str = include_str!("fixtures/bigquery-test-only-do-not-use.key.pem");

fn no_retry() -> RetryConfig {
    RetryConfig::none()
}

fn fast_retry() -> RetryConfig {
    RetryConfig::default()
        .with_max_retries(2)
        .with_backoff(Duration::from_millis(5), Duration::from_millis(10))
}

fn hubspot_pat(base: &str) -> HubSpot {
    HubSpot::builder()
        .private_app_token(SECRET.into())
        .base_url(base)
        .retry(no_retry())
        .limits(Limits::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

// ---------------------------------------------------------------------------
// Item 4: numbers from the network never panic.

#[tokio::test]
async fn a_retry_after_of_1e20_fails_with_rate_limited_instead_of_panicking() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1e20")
                .set_body_json(json!({"status": "error", "message": "slow down"})),
        )
        .mount(&server)
        .await;
    let hs = HubSpot::builder()
        .private_app_token(SECRET.into())
        .base_url(server.uri())
        .retry(fast_retry())
        .limits(Limits::none())
        .build()
        .expect("client");
    let err = hs.account().await.expect_err("429");
    match err {
        Error::RateLimited {
            retry_after, daily, ..
        } => {
            assert_eq!(retry_after, Some(MAX_RETRY_AFTER));
            assert!(!daily);
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test]
async fn a_daily_429_with_a_huge_retry_after_gives_a_resume_time_instead_of_panicking() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                // 1e15 s fits a chrono::Duration; now + it does not fit a date.
                .insert_header("retry-after", "1000000000000000")
                .set_body_json(json!({
                    "status": "error", "message": "daily limit", "policyName": "DAILY",
                })),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1000000000000000")
                .set_body_json(json!({
                    "status": "error", "message": "daily limit", "policyName": "DAILY",
                })),
        )
        .mount(&server)
        .await;
    let source = Arc::new(HubSpotSource::new(hubspot_pat(&server.uri())));
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let report = Sync::new(source, sink)
        .tenant("acme")
        .streams(["contacts"])
        .run()
        .await;
    let s = &report.streams[0];
    assert!(
        matches!(
            s.error.as_deref(),
            Some(Error::RateLimited { daily: true, .. })
        ),
        "{s:#?}"
    );
    let resume = report.resume_at().expect("a resume time");
    assert!(
        resume <= chrono::Utc::now() + chrono::Duration::days(367),
        "{resume}"
    );
}

fn service_account_key(token_uri: &str) -> ServiceAccountKey {
    ServiceAccountKey::from_json(
        json!({
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "test-only",
            "private_key": TEST_ONLY_KEY,
            "client_email": "headwater-test@p.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
        .as_bytes(),
    )
    .expect("key")
}

#[tokio::test]
async fn a_huge_bigquery_token_lifetime_is_bounded_instead_of_panicking() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "token-1",
            "expires_in": u64::MAX,
            "token_type": "Bearer",
        })))
        .mount(&server)
        .await;
    let source =
        ServiceAccountTokenSource::new(service_account_key(&format!("{}/token", server.uri())))
            .expect("source")
            .retry(no_retry());
    let t = source.access_token().await.expect("a token");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&t), "token-1");
    // Cached, not exchanged again.
    source.access_token().await.expect("a token");
    assert_eq!(source.exchange_count(), 1);
}

// ---------------------------------------------------------------------------
// Item 5: no secret in any error or log line, whatever the transport does.

/// The ways a connection fails.
#[derive(Debug, Clone, Copy)]
enum Failing {
    /// Accepts, reads the request, closes without answering.
    Dropped,
    /// Accepts and never answers.
    Silent,
    /// Nothing listens.
    Refused,
}

const FAILURES: [Failing; 3] = [Failing::Dropped, Failing::Silent, Failing::Refused];

/// An address that fails the way `how` says, for the test's lifetime.
async fn failing_upstream(how: Failing) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    match how {
        Failing::Refused => drop(listener),
        Failing::Dropped | Failing::Silent => {
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((mut sock, _)) = listener.accept().await {
                    let mut buf = vec![0u8; 16 * 1024];
                    let _ = sock.read(&mut buf).await;
                    match how {
                        Failing::Dropped => drop(sock),
                        _ => held.push(sock),
                    }
                }
            });
        }
    }
    format!("http://{addr}")
}

/// A `tracing` subscriber writing every event (TRACE and up) into a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let cap = Captured::default();
    let writer = cap.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (cap, tracing::subscriber::set_default(subscriber))
}

fn assert_no_secret(what: &str, err: &Error, logs: &str) {
    let shown = err.to_string();
    let debug = format!("{err:?}");
    for (name, text) in [("Display", &shown), ("Debug", &debug)] {
        assert!(
            !text.contains(SECRET),
            "{what}: the secret is in the error's {name}: {text}"
        );
        assert!(
            !text.contains("http://"),
            "{what}: a URL is in the error's {name}: {text}"
        );
    }
    assert!(!logs.is_empty(), "{what}: nothing was logged");
    assert!(
        !logs.contains(SECRET),
        "{what}: the secret is in the logs: {logs}"
    );
}

#[tokio::test]
async fn hubspot_token_info_failures_never_show_the_token() {
    for how in FAILURES {
        let base = failing_upstream(how).await;
        let (cap, _guard) = capture();
        let hs = HubSpot::builder()
            .oauth_token_source(Arc::new(StaticToken::new(SECRET.into())))
            .base_url(&base)
            .retry(fast_retry())
            .limits(Limits::none())
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let err = hs.account().await.expect_err("fails");
        assert!(matches!(err, Error::Transport { .. }), "{how:?}: {err:?}");
        assert_no_secret(&format!("hubspot {how:?}"), &err, &cap.text());
    }
}

#[tokio::test]
async fn mailchimp_failures_never_show_the_key_or_token() {
    for how in FAILURES {
        let base = failing_upstream(how).await;
        let (cap, _guard) = capture();
        // The API client.
        let mc = Mailchimp::builder()
            .api_key(format!("{SECRET}-us6").into())
            .base_url(format!("{base}/3.0/"))
            .retry(fast_retry())
            .limits(Limits::none())
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let err = mc.account().await.expect_err("fails");
        assert!(matches!(err, Error::Transport { .. }), "{how:?}: {err:?}");
        assert_no_secret(&format!("mailchimp {how:?}"), &err, &cap.text());
        // The metadata call, with a secret in its address too (its timeout
        // is a fixed 30 s: not waited for here).
        if matches!(how, Failing::Silent) {
            continue;
        }
        let err = oauth_metadata_at(
            &format!("{base}/oauth2/metadata?key={SECRET}"),
            &SecretString::from(SECRET),
            fast_retry(),
        )
        .await
        .expect_err("fails");
        assert_no_secret(&format!("mailchimp metadata {how:?}"), &err, &cap.text());
    }
}

#[tokio::test]
async fn constant_contact_failures_never_show_the_token() {
    use futures::TryStreamExt;
    for how in FAILURES {
        let base = failing_upstream(how).await;
        let (cap, _guard) = capture();
        let cc = ConstantContact::builder()
            .access_token(SECRET.into())
            .base_url(format!("{base}/v3"))
            .retry(fast_retry())
            .limits(Limits::none())
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let err = cc
            .contact_lists()
            .pages()
            .try_collect::<Vec<_>>()
            .await
            .expect_err("fails");
        assert!(matches!(err, Error::Transport { .. }), "{how:?}: {err:?}");
        assert_no_secret(&format!("constant contact {how:?}"), &err, &cap.text());
    }
}

#[tokio::test]
async fn oauth_token_endpoint_failures_never_show_the_secrets() {
    for how in [Failing::Dropped, Failing::Refused] {
        let base = failing_upstream(how).await;
        let (cap, _guard) = capture();
        // A token endpoint whose address carries a secret (an API gateway key).
        let config = OAuthConfig::hubspot("client-id", SECRET.into())
            .with_token_url(&format!("{base}/oauth/v1/token?gateway_key={SECRET}"))
            .expect("config");
        let client = OAuthClient::new(config)
            .expect("client")
            .with_retry(fast_retry());
        let err = client
            .refresh(&SecretString::from(SECRET))
            .await
            .expect_err("fails");
        assert_no_secret(&format!("oauth {how:?}"), &err, &cap.text());
    }
}

#[tokio::test]
async fn bigquery_failures_never_show_the_token() {
    for how in FAILURES {
        let base = failing_upstream(how).await;
        let (cap, _guard) = capture();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .expect("http");
        // The token exchange, at an address carrying a secret.
        let source = ServiceAccountTokenSource::new(service_account_key(&format!(
            "{base}/token?key={SECRET}"
        )))
        .expect("source")
        .http_client(http.clone())
        .retry(fast_retry());
        let err = source.access_token().await.expect_err("fails");
        assert!(matches!(err, Error::Transport { .. }), "{how:?}: {err:?}");
        assert_no_secret(&format!("bigquery auth {how:?}"), &err, &cap.text());
        // The sink's API calls with a bearer token.
        let sink = BigQuerySinkBuilder::new("test-project", "hw_hostile")
            .endpoint(url::Url::parse(&base).expect("url"))
            .access_token(SECRET.into())
            .http_client(http)
            .retry(fast_retry())
            .build()
            .expect("sink");
        let err = headwater::sink::Sink::live_ids(&sink, "acme", &test_schema())
            .await
            .expect_err("fails");
        assert_no_secret(&format!("bigquery {how:?}"), &err, &cap.text());
    }
}

fn test_schema() -> headwater::schema::StreamSchema {
    use headwater::schema::{Field, FieldType, StreamSchema};
    StreamSchema::new("contacts", "id", vec![Field::new("id", FieldType::String)])
}

// ---------------------------------------------------------------------------
// Item 10: bodies are capped, cursors are guarded.

/// 1 GiB of zeros as a gzip member of about 1 MiB: 1,024 copies of one
/// full-flushed deflate block sequence (each stands alone), a final empty
/// block, and a trailer with the right CRC and length (so an uncapped
/// client reads the whole GiB without complaint).
fn gzip_bomb() -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    const MIB: usize = 1024 * 1024;
    let zeros = vec![0u8; MIB];
    let mut c = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(16 * 1024);
    c.compress_vec(&zeros, &mut block, FlushCompress::Full)
        .expect("deflate");
    assert_eq!(c.total_in() as usize, MIB, "one call takes the MiB");
    let mut end = Vec::with_capacity(64);
    c.compress_vec(&[], &mut end, FlushCompress::Finish)
        .expect("deflate end");
    let mut crc = flate2::Crc::new();
    for _ in 0..1024 {
        crc.update(&zeros);
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    for _ in 0..1024 {
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&end);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(crc.amount()).to_le_bytes());
    out
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_with_response_too_large() {
    let bomb = gzip_bomb();
    assert!(bomb.len() < 4 * 1024 * 1024, "{}", bomb.len());
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .insert_header("content-type", "application/json")
                .set_body_bytes(bomb),
        )
        .mount(&server)
        .await;
    let err = hubspot_pat(&server.uri())
        .account()
        .await
        .expect_err("refused");
    match &err {
        Error::ResponseTooLarge { limit, path, .. } => {
            assert_eq!(*limit, headwater::http::DEFAULT_MAX_RESPONSE_BYTES);
            assert_eq!(path, "/account-info/v3/details");
        }
        other => panic!("expected ResponseTooLarge, got {other:?}"),
    }
    assert!(!err.is_retryable());
    // One request: a body too large is not retried.
    assert_eq!(server.received_requests().await.map(|r| r.len()), Some(1));
}

/// A raw HTTP/1.1 server answering every request with `head` and then an
/// endless body (until the client hangs up).
async fn endless_body(head: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = sock.read(&mut buf).await;
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while sock.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_endless_plain_body_is_refused_at_the_configured_cap() {
    let base = endless_body(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
    )
    .await;
    let hs = HubSpot::builder()
        .private_app_token(SECRET.into())
        .base_url(&base)
        .retry(fast_retry())
        .limits(Limits::none())
        .timeout(Duration::from_secs(10))
        .max_response_bytes(1024 * 1024)
        .build()
        .expect("client");
    let err = hs.account().await.expect_err("refused");
    assert!(
        matches!(
            err,
            Error::ResponseTooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{err:?}"
    );
    // A declared length over the cap is refused before reading.
    let base = endless_body(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 999999999999\r\n\r\n",
    )
    .await;
    let hs = HubSpot::builder()
        .private_app_token(SECRET.into())
        .base_url(&base)
        .retry(no_retry())
        .limits(Limits::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let err = hs.account().await.expect_err("refused");
    assert!(matches!(err, Error::ResponseTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn an_endless_error_body_is_cut_not_read_to_the_end() {
    let base = endless_body(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n",
    )
    .await;
    let hs = HubSpot::builder()
        .private_app_token(SECRET.into())
        .base_url(&base)
        .retry(no_retry())
        .limits(Limits::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let err = hs.account().await.expect_err("fails");
    assert!(matches!(err, Error::Api { status: 400, .. }), "{err:?}");
    assert!(
        err.to_string().len() < 8 * 1024,
        "{}",
        err.to_string().len()
    );
}

#[tokio::test]
async fn an_absurdly_long_header_is_a_transport_error_not_a_panic() {
    let long = Box::leak(
        format!(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: {}\r\nx-hubspot-ratelimit-daily-remaining: {}\r\nconnection: close\r\n\r\n",
            "9".repeat(2 * 1024 * 1024),
            "9".repeat(64),
        )
        .into_boxed_str(),
    );
    let base = endless_body(long).await;
    let err = hubspot_pat(&base).account().await.expect_err("fails");
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    // A long but acceptable one parses as the clamp.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "9".repeat(8 * 1024).as_str())
                .insert_header(
                    "x-hubspot-ratelimit-daily-remaining",
                    "9".repeat(64).as_str(),
                ),
        )
        .mount(&server)
        .await;
    let err = hubspot_pat(&server.uri())
        .account()
        .await
        .expect_err("fails");
    assert!(
        matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d == MAX_RETRY_AFTER),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_association_cursor_that_never_ends_is_an_error_not_a_loop() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(
            "^/crm/v4/associations/contacts/companies/batch/read$",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "status": "COMPLETE",
            "results": [{
                "from": {"id": "1"},
                "to": [{"toObjectId": 2, "associationTypes": []}],
                "paging": {"next": {"after": "SAME-CURSOR"}},
            }],
        })))
        .mount(&server)
        .await;
    let hs = hubspot_pat(&server.uri());
    let assoc = hs.associations("contacts", "companies");
    let ids = vec!["1".to_owned()];
    let read = assoc.read(&ids);
    let got = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the read ends");
    match got {
        Err(Error::CursorRepeated { cursor, .. }) => assert_eq!(cursor, "SAME-CURSOR"),
        other => panic!("expected CursorRepeated, got {other:?}"),
    }
    assert_eq!(server.received_requests().await.map(|r| r.len()), Some(2));
}
