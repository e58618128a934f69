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
