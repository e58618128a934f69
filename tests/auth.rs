//! Token providers against failing stores and re-granted connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use headwater::auth::{
    AccessTokenSource, MemoryTokenStore, OAuthClient, OAuthConfig, TokenLease, TokenProvider,
    TokenSet, TokenStore,
};
use headwater::testkit::hubspot::{FakeConfig, HubSpotFake};
use headwater::{Error, Result};
use secrecy::ExposeSecret;

/// A memory store whose next `fail` saves fail.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemoryTokenStore,
    fail: AtomicUsize,
}

#[async_trait]
impl TokenStore for FlakyStore {
    async fn load(&self, key: &str) -> Result<Option<TokenSet>> {
        self.inner.load(key).await
    }
    async fn save(&self, key: &str, tokens: &TokenSet) -> Result<()> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::State {
                message: "disk full".into(),
                source: None,
            });
        }
        self.inner.save(key, tokens).await
    }
    async fn lock(&self, key: &str) -> Result<TokenLease> {
        self.inner.lock(key).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn keys(&self) -> Result<Vec<String>> {
        self.inner.keys().await
    }
}

fn oauth(fake: &HubSpotFake) -> OAuthClient {
    OAuthClient::new(
        OAuthConfig::hubspot(
            fake.config().client_id.clone(),
            fake.config().client_secret.clone().into(),
        )
        .with_token_url(&format!("{}/oauth/v1/token", fake.uri()))
        .expect("url"),
    )
    .expect("oauth")
}

fn rotating_fake_config() -> FakeConfig {
    FakeConfig {
        rotate_refresh_tokens: true,
        access_token_ttl: Duration::from_secs(1800),
        ..FakeConfig::default()
    }
}

#[tokio::test]
async fn a_rotated_token_the_store_failed_to_save_is_saved_before_any_token_is_used() {
    let fake = HubSpotFake::start(rotating_fake_config()).await;
    let (_, refresh) = fake.mint_tokens();
    let store = Arc::new(FlakyStore::default());
    let provider = TokenProvider::new(
        oauth(&fake),
        store.clone(),
        "hubspot/acme",
        Some(TokenSet::from_refresh_token(refresh.clone().into())),
    )
    .await
    .expect("provider");
    // The refresh spends the old refresh token; saving the new one fails.
    store.fail.store(1, Ordering::SeqCst);
    let err = provider.access_token().await.expect_err("the save failed");
    assert!(matches!(err, Error::State { .. }), "{err}");
    assert_eq!(fake.stats().token_refreshes, 1);
    // The store still holds the spent token, and the provider hands out
    // nothing while that is so.
    store.fail.store(1, Ordering::SeqCst);
    assert!(provider.access_token().await.is_err());
    let stored = store
        .load("hubspot/acme")
        .await
        .expect("load")
        .expect("some");
    assert_eq!(
        stored
            .refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        Some(refresh)
    );
    // Once the store works, the new pair is saved first, then used, with no
    // second refresh.
    let token = provider.access_token().await.expect("token");
    let stored = store
        .load("hubspot/acme")
        .await
        .expect("load")
        .expect("some");
    assert_eq!(
        stored
            .access_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        Some(token.expose_secret().to_owned())
    );
    assert_eq!(fake.stats().token_refreshes, 1);
    // A provider built from the store after a crash keeps working.
    let again = TokenProvider::new(oauth(&fake), store.clone(), "hubspot/acme", None)
        .await
        .expect("provider");
    assert_eq!(
        again.access_token().await.expect("token").expose_secret(),
        token.expose_secret()
    );
}

#[tokio::test]
async fn a_connection_marked_for_reauthorization_takes_a_new_grant_from_configuration() {
    let fake = HubSpotFake::start(rotating_fake_config()).await;
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let stale = TokenSet::from_refresh_token("revoked-refresh-token".into());
    let provider = TokenProvider::new(
        oauth(&fake),
        store.clone(),
        "hubspot/acme",
        Some(stale.clone()),
    )
    .await
    .expect("provider");
    let err = provider.access_token().await.expect_err("refused");
    assert!(err.needs_reauthorization(), "{err}");
    assert!(store
        .load("hubspot/acme")
        .await
        .expect("load")
        .expect("some")
        .needs_reauthorization());
    // The same refused grant again: still marked, no request spent.
    let before = fake.stats().token_requests;
    let same = TokenProvider::new(oauth(&fake), store.clone(), "hubspot/acme", Some(stale))
        .await
        .expect("provider");
    assert!(same.access_token().await.is_err());
    assert_eq!(fake.stats().token_requests, before);
    // A new refresh token (the user connected again): it wins.
    let (_, fresh) = fake.mint_tokens();
    let renewed = TokenProvider::new(
        oauth(&fake),
        store.clone(),
        "hubspot/acme",
        Some(TokenSet::from_refresh_token(fresh.into())),
    )
    .await
    .expect("provider");
    renewed
        .access_token()
        .await
        .expect("a token from the new grant");
    assert!(!store
        .load("hubspot/acme")
        .await
        .expect("load")
        .expect("some")
        .needs_reauthorization());
}

/// A store another writer changes behind the lease: on the `nth` load it
/// first saves `write` (as a process that did not take the lease would).
#[derive(Debug)]
struct RogueWriterStore {
    inner: MemoryTokenStore,
    loads: AtomicUsize,
    nth: usize,
    write: TokenSet,
}

#[async_trait]
impl TokenStore for RogueWriterStore {
    async fn load(&self, key: &str) -> Result<Option<TokenSet>> {
        if self.loads.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            self.inner.save(key, &self.write).await?;
        }
        self.inner.load(key).await
    }
    async fn lock(&self, key: &str) -> Result<TokenLease> {
        self.inner.lock(key).await
    }
    async fn save(&self, key: &str, tokens: &TokenSet) -> Result<()> {
        self.inner.save(key, tokens).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn keys(&self) -> Result<Vec<String>> {
        self.inner.keys().await
    }
}

#[tokio::test]
async fn a_refused_refresh_adopts_a_newer_stored_token_instead_of_marking() {
    let fake = HubSpotFake::start(rotating_fake_config()).await;
    let (_, newer) = fake.mint_tokens();
    // Loads: 1 by `new`, 2 under the lease before refreshing, 3 after the
    // refusal: the newer token appears between 2 and 3.
    let store = Arc::new(RogueWriterStore {
        inner: MemoryTokenStore::new(),
        loads: AtomicUsize::new(0),
        nth: 3,
        write: TokenSet::from_refresh_token(newer.clone().into()),
    });
    let provider = TokenProvider::new(
        oauth(&fake),
        store.clone(),
        "hubspot/rogue",
        Some(TokenSet::from_refresh_token("spent-refresh-token".into())),
    )
    .await
    .expect("provider");
    provider
        .access_token()
        .await
        .expect("the newer refresh token is adopted and used");
    let stored = store
        .inner
        .load("hubspot/rogue")
        .await
        .expect("load")
        .expect("tokens");
    assert!(!stored.needs_reauthorization(), "falsely marked");
    let rotated = stored
        .refresh_token
        .map(|r| r.expose_secret().to_owned())
        .expect("refresh token");
    assert_ne!(rotated, newer, "the newer token was spent and rotated");
}

// ----- what a failed refresh means (issue 9, item 6) -----

use headwater::http::RetryConfig;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A provider for `token_url` seeded with refresh token `r1`, retries fast.
async fn provider_at(token_url: &str, store: Arc<MemoryTokenStore>) -> TokenProvider {
    let oauth = OAuthClient::new(
        OAuthConfig::new(
            "test",
            "client-id",
            Some("client-secret".into()),
            "http://127.0.0.1:9/authorize",
            token_url,
        )
        .expect("config"),
    )
    .expect("oauth")
    .with_retry(
        RetryConfig::default()
            .with_max_retries(3)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    TokenProvider::new(
        oauth,
        store,
        "test/acme",
        Some(TokenSet::from_refresh_token("r1".into())),
    )
    .await
    .expect("provider")
}

async fn stored(store: &MemoryTokenStore) -> TokenSet {
    store
        .load("test/acme")
        .await
        .expect("load")
        .expect("tokens")
}

fn token_answer(expires_in: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(
        format!(
            r#"{{"access_token":"a2","token_type":"bearer","refresh_token":"r2","expires_in":{expires_in}}}"#
        ),
        "application/json",
    )
}

#[tokio::test]
async fn a_proxy_403_a_5xx_or_a_config_error_never_marks_and_is_never_resent() {
    let cases: Vec<(&str, ResponseTemplate)> = vec![
        (
            "an HTML 403 from a proxy",
            ResponseTemplate::new(403)
                .set_body_raw("<html><body>Forbidden by proxy</body></html>", "text/html"),
        ),
        (
            "a 401 with an unknown JSON body",
            ResponseTemplate::new(401).set_body_raw(r#"{"message":"nope"}"#, "application/json"),
        ),
        ("a 500", ResponseTemplate::new(500).set_body_string("oops")),
        ("a 503", ResponseTemplate::new(503).set_body_string("busy")),
        (
            "invalid_client",
            ResponseTemplate::new(401).set_body_raw(
                r#"{"error":"invalid_client","error_description":"bad secret"}"#,
                "application/json",
            ),
        ),
        (
            "unauthorized_client",
            ResponseTemplate::new(400)
                .set_body_raw(r#"{"error":"unauthorized_client"}"#, "application/json"),
        ),
    ];
    for (what, answer) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(answer)
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(token_answer("1800"))
            .mount(&server)
            .await;
        let store = Arc::new(MemoryTokenStore::new());
        let provider = provider_at(&format!("{}/token", server.uri()), store.clone()).await;
        let err = provider.access_token().await.expect_err(what);
        assert!(!err.needs_reauthorization(), "{what}: {err}");
        assert!(!stored(&store).await.needs_reauthorization(), "{what}");
        assert_eq!(
            server.received_requests().await.map(|r| r.len()),
            Some(1),
            "{what}: the refresh token was sent again within one refresh"
        );
        if what.ends_with("_client") {
            assert!(matches!(err, Error::Config(_)), "{what}: {err}");
        }
        if what.starts_with("a 5") {
            assert!(err.is_retryable(), "{what}: {err}");
        }
        // The connection still works once the endpoint does.
        let token = provider.access_token().await.expect("works again");
        assert_eq!(token.expose_secret(), "a2", "{what}");
    }
}

#[tokio::test]
async fn invalid_grant_marks_and_hubspot_bad_client_secret_is_a_config_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_raw(
            r#"{"error":"invalid_grant","error_description":"revoked"}"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let store = Arc::new(MemoryTokenStore::new());
    let provider = provider_at(&format!("{}/token", server.uri()), store.clone()).await;
    let err = provider.access_token().await.expect_err("refused");
    assert!(err.needs_reauthorization(), "{err}");
    assert!(stored(&store).await.needs_reauthorization());

    // HubSpot's own body for a wrong client secret.
    let fake = HubSpotFake::start(FakeConfig::default()).await;
    let (_, refresh) = fake.mint_tokens();
    let oauth = OAuthClient::new(
        OAuthConfig::hubspot(fake.config().client_id.clone(), "wrong-secret".into())
            .with_token_url(&format!("{}/oauth/v1/token", fake.uri()))
            .expect("url"),
    )
    .expect("oauth");
    let store = Arc::new(MemoryTokenStore::new());
    let provider = TokenProvider::new(
        oauth,
        store.clone(),
        "hubspot/acme",
        Some(TokenSet::from_refresh_token(refresh.clone().into())),
    )
    .await
    .expect("provider");
    let err = provider.access_token().await.expect_err("bad secret");
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(!err.to_string().contains("wrong-secret"), "{err}");
    let kept = store
        .load("hubspot/acme")
        .await
        .expect("load")
        .expect("set");
    assert!(!kept.needs_reauthorization());
}

#[tokio::test]
async fn a_429_is_retried_but_a_lost_answer_is_not_resent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(token_answer("1800"))
        .mount(&server)
        .await;
    let store = Arc::new(MemoryTokenStore::new());
    let provider = provider_at(&format!("{}/token", server.uri()), store).await;
    provider.access_token().await.expect("429 then a token");
    assert_eq!(server.received_requests().await.map(|r| r.len()), Some(2));

    // An endpoint that reads the request and drops the connection: the
    // provider may have processed it, so it is not sent again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
            drop(conn);
        }
    });
    let store = Arc::new(MemoryTokenStore::new());
    let provider = provider_at(&format!("http://{addr}/token"), store.clone()).await;
    let err = provider.access_token().await.expect_err("lost answer");
    assert!(matches!(err, Error::Transport { .. }), "{err}");
    assert!(!err.needs_reauthorization());
    assert!(!stored(&store).await.needs_reauthorization());
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "sent once");
}

#[tokio::test]
async fn a_huge_expires_in_is_clamped_to_a_year() {
    for raw in ["18446744073709551615", "1e30", "100000000000000"] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(token_answer(raw))
            .mount(&server)
            .await;
        let store = Arc::new(MemoryTokenStore::new());
        let provider = provider_at(&format!("{}/token", server.uri()), store).await;
        provider.access_token().await.expect(raw);
        let at = provider.tokens().expires_at.expect("an expiry");
        let left = at - chrono::Utc::now();
        assert!(
            left <= chrono::Duration::days(365) && left > chrono::Duration::days(364),
            "{raw}: {left}"
        );
    }
}
