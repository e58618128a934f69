//! Authentication: OAuth 2.0 connect ([`OAuthClient`]), access tokens that
//! refresh themselves ([`TokenProvider`]), static tokens (private apps, API
//! keys) and where tokens are kept ([`TokenStore`]).

mod oauth;
mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use oauth::{
    AuthorizationRequest, Callback, ClientAuth, OAuthClient, OAuthConfig, PendingAuthorization,
};
pub use store::{EncryptedFileTokenStore, EncryptionKey, MemoryTokenStore, TokenLease, TokenStore};

use crate::error::AuthErrorKind;
use crate::{Error, Result};

/// What the API client asks for a bearer token before every request.
#[async_trait]
pub trait AccessTokenSource: Send + Sync + std::fmt::Debug {
    /// A token valid for at least the next request.
    async fn access_token(&self) -> Result<SecretString>;

    /// Called when the API answered 401 to a request made with `refused`.
    /// Returns true when a different token is now available (the request is
    /// then retried once). The default: no second chance.
    async fn refresh_after_unauthorized(&self, refused: &SecretString) -> Result<bool> {
        let _ = refused;
        Ok(false)
    }

    /// What a 401 means when no refresh helped: [`AuthErrorKind::Rejected`]
    /// by default; a Mailchimp OAuth token that stops working was revoked, so
    /// its source says [`AuthErrorKind::Reauthorize`].
    fn unauthorized_kind(&self) -> AuthErrorKind {
        AuthErrorKind::Rejected
    }
}

/// A token that never changes: a `HubSpot` private-app token, a Mailchimp API
/// key or OAuth token.
#[derive(Debug, Clone)]
pub struct StaticToken {
    token: SecretString,
    on_unauthorized: AuthErrorKind,
}

impl StaticToken {
    /// A static token; a 401 is reported as [`AuthErrorKind::Rejected`].
    pub fn new(token: SecretString) -> Self {
        StaticToken {
            token,
            on_unauthorized: AuthErrorKind::Rejected,
        }
    }

    /// A token that, once refused, means the account must be connected again.
    pub fn revocable(token: SecretString) -> Self {
        StaticToken {
            token,
            on_unauthorized: AuthErrorKind::Reauthorize,
        }
    }
}

#[async_trait]
impl AccessTokenSource for StaticToken {
    async fn access_token(&self) -> Result<SecretString> {
        Ok(self.token.clone())
    }
    fn unauthorized_kind(&self) -> AuthErrorKind {
        self.on_unauthorized
    }
}

/// The tokens of one connected account.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TokenSet {
    /// The bearer token, if one was issued yet.
    pub access_token: Option<SecretString>,
    /// The refresh token, if the provider issues one.
    pub refresh_token: Option<SecretString>,
    /// When the access token expires (`None`: never, or unknown).
    pub expires_at: Option<DateTime<Utc>>,
    /// Granted scopes, when the provider says.
    pub scopes: Vec<String>,
    /// Set when the connection must be authorized again (its grant was
    /// revoked, its refresh token refused): the account's owner has to
    /// connect it again, and until then no request is made with it.
    pub reauthorization: Option<Reauthorization>,
}

/// Why and since when a connection needs to be authorized again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reauthorization {
    /// When the need was found.
    pub since: DateTime<Utc>,
    /// What the provider said.
    pub reason: String,
}

impl Reauthorization {
    /// A need found now.
    pub fn now(reason: impl Into<String>) -> Self {
        Reauthorization {
            since: Utc::now(),
            reason: reason.into(),
        }
    }
}

impl TokenSet {
    /// Only a refresh token (as read from configuration): the first use
    /// refreshes.
    pub fn from_refresh_token(refresh_token: SecretString) -> Self {
        TokenSet {
            refresh_token: Some(refresh_token),
            ..Default::default()
        }
    }

    /// An access token with its lifetime, and an optional refresh token.
    pub fn new(
        access_token: SecretString,
        refresh_token: Option<SecretString>,
        expires_in: Option<Duration>,
    ) -> Self {
        TokenSet {
            access_token: Some(access_token),
            refresh_token,
            expires_at: expires_in.map(expiry_after),
            scopes: Vec::new(),
            reauthorization: None,
        }
    }

    /// True when the connection is marked as needing authorization again.
    pub fn needs_reauthorization(&self) -> bool {
        self.reauthorization.is_some()
    }

    /// True when there is no access token or it expires within `margin`.
    pub fn needs_refresh(&self, margin: Duration) -> bool {
        match (&self.access_token, self.expires_at) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(at)) => {
                let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::zero());
                Utc::now() + margin >= at
            }
        }
    }

    pub(crate) fn to_stored(&self) -> StoredTokens {
        StoredTokens {
            access_token: self
                .access_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            refresh_token: self
                .refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            expires_at: self.expires_at,
            scopes: self.scopes.clone(),
            reauthorization: self.reauthorization.clone(),
        }
    }

    pub(crate) fn from_stored(s: StoredTokens) -> Self {
        TokenSet {
            access_token: s.access_token.map(SecretString::from),
            refresh_token: s.refresh_token.map(SecretString::from),
            expires_at: s.expires_at,
            scopes: s.scopes,
            reauthorization: s.reauthorization,
        }
    }
}

/// The longest access-token lifetime believed: a server's larger
/// `expires_in` (up to `u64::MAX`) is clamped to it.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + lifetime`, with the lifetime clamped to [`MAX_TOKEN_LIFETIME`] and
/// checked arithmetic: never panics, whatever a server says.
pub(crate) fn expiry_after(lifetime: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    chrono::Duration::from_std(lifetime.min(MAX_TOKEN_LIFETIME))
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}

fn same_secret(a: &Option<SecretString>, b: &Option<SecretString>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
        (None, None) => true,
        _ => false,
    }
}

/// The serialized form of a [`TokenSet`], only ever written encrypted or to
/// a store the user chose.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredTokens {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reauthorization: Option<Reauthorization>,
}

/// Access tokens that refresh themselves.
///
/// - Refreshes `margin` (default 5 minutes) before expiry, so a long sync
///   never sends an expired token (`HubSpot` tokens live 30 minutes).
/// - One refresh in flight per account however many tasks ask, and however
///   many processes share the store: a refresh holds the store's lease of
///   the account ([`TokenStore::lock`]); the others wait and then use its
///   result.
/// - A rotated refresh token is saved to the [`TokenStore`] *before* the new
///   access token is handed out, so a crash never loses the only valid
///   refresh token (Constant Contact's rotating tokens are single use).
/// - Before refreshing, the store is read again under the lease: if another
///   process already rotated the tokens, its result is adopted instead of
///   spending the old refresh token.
/// - The connection is marked "re-authorize" only when the provider
///   definitely refused the grant (`invalid_grant`, `HubSpot`'s
///   `BAD_REFRESH_TOKEN`), after reading the store again (a newer refresh
///   token there is adopted, not marked), and the mark is written onto what
///   the store holds. Network errors, 5xx, proxies' HTML answers and
///   configuration errors (`invalid_client`) never mark.
/// - A refresh token is never sent twice in one refresh: after an ambiguous
///   failure (a timeout, a connection lost after the request went out, a
///   5xx) the error is returned; the next attempt takes the lease and
///   reads the store again first.
/// - On a 401, refreshes once if the refused token is still the current one.
///
/// Cheap to clone; clones share the tokens.
#[derive(Clone)]
pub struct TokenProvider {
    inner: Arc<ProviderInner>,
}

struct ProviderInner {
    key: String,
    oauth: OAuthClient,
    store: Arc<dyn TokenStore>,
    current: std::sync::RwLock<TokenSet>,
    refresh_lock: tokio::sync::Mutex<()>,
    margin: Duration,
    refreshes: AtomicU64,
    /// The tokens in memory could not be saved yet (the store failed after
    /// a refresh spent the old refresh token): saved before any is used.
    unsaved: AtomicBool,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("key", &self.inner.key)
            .field("oauth", &self.inner.oauth)
            .field("store", &self.inner.store)
            .field("margin", &self.inner.margin)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// A provider for the account stored under `key` in `store`.
    ///
    /// If the store has no tokens for `key`, `seed` (for example a refresh
    /// token from configuration) is saved and used; if it has some, they win,
    /// because they may hold a refresh token rotated since `seed` was issued.
    pub async fn new(
        oauth: OAuthClient,
        store: Arc<dyn TokenStore>,
        key: impl Into<String>,
        seed: Option<TokenSet>,
    ) -> Result<Self> {
        let key = key.into();
        let tokens = match store.load(&key).await? {
            // A connection marked for re-authorization, given a new grant
            // (a refresh token from configuration that is not the refused
            // one): the new grant wins.
            Some(stored)
                if stored.needs_reauthorization()
                    && seed.as_ref().is_some_and(|s| {
                        s.refresh_token.is_some()
                            && !same_secret(&s.refresh_token, &stored.refresh_token)
                    }) =>
            {
                let seed = seed.unwrap_or_default();
                store.save(&key, &seed).await?;
                seed
            }
            Some(stored) => stored,
            None => match seed {
                Some(seed) => {
                    store.save(&key, &seed).await?;
                    seed
                }
                None => {
                    return Err(Error::Auth {
                        provider: oauth.provider(),
                        kind: AuthErrorKind::Missing,
                        message: format!("no tokens stored under `{key}`"),
                    })
                }
            },
        };
        Ok(TokenProvider {
            inner: Arc::new(ProviderInner {
                key,
                oauth,
                store,
                current: std::sync::RwLock::new(tokens),
                refresh_lock: tokio::sync::Mutex::new(()),
                margin: Duration::from_secs(300),
                refreshes: AtomicU64::new(0),
                unsaved: AtomicBool::new(false),
            }),
        })
    }

    /// Refresh this long before expiry (default 5 minutes). Call before
    /// cloning.
    pub fn with_margin(mut self, margin: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.margin = margin;
        }
        self
    }

    /// The store key of this account.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// How many refreshes this provider made.
    pub fn refresh_count(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    /// A copy of the current tokens.
    pub fn tokens(&self) -> TokenSet {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TokenSet> {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TokenSet> {
        self.inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refreshes when `stale` holds for the current tokens, with one refresh
    /// in flight at a time per provider and, through the store's lease
    /// ([`TokenStore::lock`]), per connection across processes; returns the
    /// access token to use.
    ///
    /// Under the lease the store is the truth: what it holds is adopted
    /// first (another process may have refreshed while this one waited), so
    /// a refresh token is only ever sent by the one process that holds the
    /// newest. A refusal (`invalid_grant`) re-reads the store before marking
    /// anything, and the mark is written onto what the store holds then.
    async fn refresh_if(&self, stale: impl Fn(&TokenSet) -> bool) -> Result<SecretString> {
        let _guard = self.inner.refresh_lock.lock().await;
        if let Some(token) = self.usable(&stale) {
            return Ok(token);
        }
        let _lease = self.inner.store.lock(&self.inner.key).await?;
        self.sync_with_store().await?;
        self.check_marked()?;
        if let Some(token) = self.usable(&stale) {
            return Ok(token);
        }
        // At most a few rounds: a refused refresh token is retried only
        // with a different one found in the store.
        for _ in 0..3 {
            let refresh_token = self
                .read()
                .refresh_token
                .clone()
                .ok_or_else(|| Error::Auth {
                    provider: self.inner.oauth.provider(),
                    kind: AuthErrorKind::Reauthorize,
                    message: "the access token expired and there is no refresh token".into(),
                })?;
            let mut fresh = match self.inner.oauth.refresh(&refresh_token).await {
                Ok(fresh) => fresh,
                Err(e) if e.needs_reauthorization() => {
                    // A definite refusal of `refresh_token`. If the store
                    // holds another refresh token (written by a process that
                    // did not take the lease), that one is current: adopt it.
                    let now = self.inner.store.load(&self.inner.key).await?;
                    if let Some(now) = now.as_ref() {
                        if now.refresh_token.is_some()
                            && !same_secret(&now.refresh_token, &Some(refresh_token.clone()))
                        {
                            *self.write() = now.clone();
                            self.check_marked()?;
                            if let Some(token) = self.usable(&stale) {
                                return Ok(token);
                            }
                            continue;
                        }
                    }
                    // Mark the connection, so no process spends requests on
                    // it until its owner connects it again: onto what the
                    // store holds, under the lease, so nothing newer is
                    // overwritten.
                    let mut marked = now.unwrap_or_else(|| self.read().clone());
                    marked.reauthorization = Some(Reauthorization::now(e.to_string()));
                    if let Err(save) = self.inner.store.save(&self.inner.key, &marked).await {
                        tracing::warn!(key = %self.inner.key, error = %save, "cannot mark the connection");
                    }
                    *self.write() = marked;
                    return Err(e);
                }
                // Anything else (a network error, a timeout, a 5xx, a
                // configuration error) is not a verdict on the grant:
                // nothing is marked, and the refresh token is not sent again
                // now. The token endpoint retries only what certainly was not
                // processed (see `OAuthClient::refresh`); the next call takes
                // the lease and reads the store again before trying.
                Err(e) => return Err(e),
            };
            if fresh.refresh_token.is_none() {
                fresh.refresh_token = Some(refresh_token);
            }
            self.inner.refreshes.fetch_add(1, Ordering::Relaxed);
            // Persist first: the old refresh token may already be spent. If
            // the store fails, the new tokens are kept in memory (the old
            // ones are dead) but none is handed out until a save succeeds.
            let saved = self.inner.store.save(&self.inner.key, &fresh).await;
            let access = fresh.access_token.clone();
            *self.write() = fresh;
            if saved.is_err() {
                self.inner.unsaved.store(true, Ordering::SeqCst);
            }
            saved?;
            tracing::debug!(key = %self.inner.key, "access token refreshed");
            return access.ok_or_else(|| Error::Auth {
                provider: self.inner.oauth.provider(),
                kind: AuthErrorKind::Rejected,
                message: "the token endpoint returned no access token".into(),
            });
        }
        Err(Error::Auth {
            provider: self.inner.oauth.provider(),
            kind: AuthErrorKind::Rejected,
            message: "the refresh tokens in the store kept changing and being refused".into(),
        })
    }

    /// The current access token, unless `stale` holds for the tokens.
    fn usable(&self, stale: &impl Fn(&TokenSet) -> bool) -> Option<SecretString> {
        let cur = self.read();
        if cur.reauthorization.is_some() || stale(&cur) {
            return None;
        }
        cur.access_token.clone()
    }

    /// Under the lease: saves tokens a failed save left in memory only, or
    /// else adopts what the store holds (it is never older than memory).
    async fn sync_with_store(&self) -> Result<()> {
        if self.inner.unsaved.load(Ordering::SeqCst) {
            let current = self.read().clone();
            self.inner.store.save(&self.inner.key, &current).await?;
            self.inner.unsaved.store(false, Ordering::SeqCst);
        } else if let Some(stored) = self.inner.store.load(&self.inner.key).await? {
            *self.write() = stored;
        }
        Ok(())
    }

    /// The re-authorization error when the connection is marked.
    fn check_marked(&self) -> Result<()> {
        match &self.read().reauthorization {
            None => Ok(()),
            Some(r) => Err(Error::Auth {
                provider: self.inner.oauth.provider(),
                kind: AuthErrorKind::Reauthorize,
                message: format!(
                    "the connection `{}` needs to be authorized again (since {}): {}",
                    self.inner.key,
                    r.since.to_rfc3339(),
                    r.reason
                ),
            }),
        }
    }
}

#[async_trait]
impl AccessTokenSource for TokenProvider {
    async fn access_token(&self) -> Result<SecretString> {
        let margin = self.inner.margin;
        if self.inner.unsaved.load(Ordering::SeqCst) {
            let _guard = self.inner.refresh_lock.lock().await;
            if self.inner.unsaved.load(Ordering::SeqCst) {
                let _lease = self.inner.store.lock(&self.inner.key).await?;
                self.sync_with_store().await?;
            }
        }
        self.check_marked()?;
        if let Some(token) = self.usable(&|t: &TokenSet| t.needs_refresh(margin)) {
            return Ok(token);
        }
        self.refresh_if(|t| t.needs_refresh(margin)).await
    }

    async fn refresh_after_unauthorized(&self, refused: &SecretString) -> Result<bool> {
        let refused = refused.expose_secret().to_owned();
        self.refresh_if(|t| match &t.access_token {
            Some(a) => a.expose_secret() == refused,
            None => true,
        })
        .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_margin() {
        let t = TokenSet::new("a".into(), None, Some(Duration::from_secs(60)));
        assert!(!t.needs_refresh(Duration::from_secs(10)));
        assert!(t.needs_refresh(Duration::from_secs(120)));
        assert!(TokenSet::from_refresh_token("r".into()).needs_refresh(Duration::ZERO));
        assert!(!TokenSet::new("a".into(), None, None).needs_refresh(Duration::from_secs(1 << 20)));
    }

    #[test]
    fn a_huge_lifetime_is_clamped_to_a_year_without_panicking() {
        let year = chrono::Duration::days(365);
        for secs in [u64::MAX, 1 << 53, 1_000_000_000_000_000, 10_000_000_000_000] {
            let t = TokenSet::new("a".into(), None, Some(Duration::from_secs(secs)));
            let at = t.expires_at.expect("an expiry");
            let left = at - Utc::now();
            assert!(
                left <= year && left > year - chrono::Duration::minutes(1),
                "{secs}: {left}"
            );
            assert!(!t.needs_refresh(Duration::MAX));
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let t = TokenSet::new("sekrit-access".into(), Some("sekrit-refresh".into()), None);
        let s = format!("{t:?} {:?}", StaticToken::new("sekrit-static".into()));
        assert!(!s.contains("sekrit"), "{s}");
    }
}
