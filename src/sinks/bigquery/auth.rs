//! Google service-account tokens: an RS256-signed JWT exchanged at the key's
//! `token_uri` (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`),
//! cached until shortly before it expires, one refresh in flight.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::NAME;
use crate::auth::AccessTokenSource;
use crate::error::AuthErrorKind;
use crate::http::{default_http_client, parse_retry_after, send_request, Received, RetryConfig};
use crate::{Error, Result};

/// The scope the sink asks for.
pub const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// The longest a token answer's `expires_in` is believed (Google's tokens
/// live an hour).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Google's token endpoint, when a key names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A service account's key, as in the JSON file Google hands out
/// (`GOOGLE_APPLICATION_CREDENTIALS`). `Debug` never shows the private key.
#[derive(Clone)]
pub struct ServiceAccountKey {
    client_email: String,
    private_key: SecretString,
    private_key_id: Option<String>,
    token_uri: Url,
    project_id: Option<String>,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key", &"[REDACTED]")
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri.as_str())
            .field("project_id", &self.project_id)
            .finish()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: SecretString,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

impl ServiceAccountKey {
    /// A key from its parts: the account's email, its PEM private key
    /// (PKCS#8 or PKCS#1) and the token endpoint.
    pub fn new(client_email: impl Into<String>, private_key: SecretString, token_uri: Url) -> Self {
        ServiceAccountKey {
            client_email: client_email.into(),
            private_key,
            private_key_id: None,
            token_uri,
            project_id: None,
        }
    }

    /// Parses a key file's JSON (`"type": "service_account"`).
    pub fn from_json(json: &[u8]) -> Result<Self> {
        // The decode error never quotes the input: it holds the private key.
        let file: KeyFile = serde_json::from_slice(json).map_err(|e| {
            Error::Config(format!(
                "not a service-account key file (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(Error::Config(format!(
                "the key file is of type `{kind}`, not `service_account`"
            )));
        }
        let token_uri = file.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
        let token_uri = Url::parse(token_uri)
            .map_err(|e| Error::Config(format!("bad token_uri `{token_uri}` in key file: {e}")))?;
        Ok(ServiceAccountKey {
            client_email: file.client_email,
            private_key: file.private_key,
            private_key_id: file.private_key_id,
            token_uri,
            project_id: file.project_id,
        })
    }

    /// Reads and parses a key file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read key file {}: {e}", path.display())))?;
        Self::from_json(&bytes)
    }

    /// The service account's email (the JWT's `iss`).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The token endpoint (the JWT's `aud`).
    pub fn token_uri(&self) -> &Url {
        &self.token_uri
    }

    /// The project the key belongs to, if the file says.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

struct Cached {
    token: SecretString,
    /// When to stop using it (expiry minus the margin).
    refresh_at: Instant,
}

/// Access tokens for a service account (implements [`AccessTokenSource`]).
///
/// Signs a JWT (`{"alg":"RS256","typ":"JWT"}`; claims `iss`, `scope`,
/// `aud` = `token_uri`, `iat`, `exp` = `iat` + 3600) and exchanges it at the
/// key's `token_uri`. The token is reused until `margin` (default 5 minutes)
/// before it expires; concurrent callers share one refresh. 429 and 5xx from
/// the token endpoint are retried with backoff; `invalid_grant` (a deleted or
/// disabled key) is [`AuthErrorKind::Reauthorize`].
pub struct ServiceAccountTokenSource {
    key: ServiceAccountKey,
    signer: jsonwebtoken::EncodingKey,
    scope: String,
    http: reqwest::Client,
    retry: RetryConfig,
    max_body: u64,
    margin: Duration,
    current: std::sync::RwLock<Option<Cached>>,
    refresh_lock: tokio::sync::Mutex<()>,
    exchanges: AtomicU64,
}

impl std::fmt::Debug for ServiceAccountTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokenSource")
            .field("key", &self.key)
            .field("scope", &self.scope)
            .field("margin", &self.margin)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountTokenSource {
    /// A token source for `key`, asking for the BigQuery scope. Fails when
    /// the private key is not an RSA PEM key.
    pub fn new(key: ServiceAccountKey) -> Result<Self> {
        let signer =
            jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.expose_secret().as_bytes())
                .map_err(|e| {
                    Error::Config(format!("the service-account private key is unusable: {e}"))
                })?;
        Ok(ServiceAccountTokenSource {
            key,
            signer,
            scope: BIGQUERY_SCOPE.to_owned(),
            http: default_http_client(Duration::from_secs(60))?,
            retry: RetryConfig::default(),
            max_body: crate::http::DEFAULT_MAX_RESPONSE_BYTES,
            margin: Duration::from_secs(300),
            current: std::sync::RwLock::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            exchanges: AtomicU64::new(0),
        })
    }

    /// Asks for these scopes instead (joined by spaces).
    pub fn scopes<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, scopes: I) -> Self {
        self.scope = scopes
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect::<Vec<_>>()
            .join(" ");
        self
    }

    /// Uses this HTTP client for the token endpoint.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = client;
        self
    }

    /// Retries of the token exchange.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// The most bytes of a token answer (default
    /// [`crate::http::DEFAULT_MAX_RESPONSE_BYTES`]).
    pub fn max_response_bytes(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// Refreshes this long before expiry (default 5 minutes).
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The key.
    pub fn key(&self) -> &ServiceAccountKey {
        &self.key
    }

    /// How many tokens were obtained from the token endpoint so far.
    pub fn exchange_count(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    fn cached(&self) -> Option<SecretString> {
        let cur = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cur.as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    fn signed_assertion(&self) -> Result<String> {
        let iat = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: &self.key.client_email,
            scope: &self.scope,
            aud: self.key.token_uri.as_str(),
            iat,
            exp: iat + 3600,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, &claims, &self.signer)
            .map_err(|e| Error::Config(format!("cannot sign the service-account JWT: {e}")))
    }

    /// Refreshes unless `keep` says the current token is still good.
    async fn refresh(&self, keep: impl Fn(&SecretString) -> bool) -> Result<SecretString> {
        let _guard = self.refresh_lock.lock().await;
        if let Some(t) = self.cached().filter(|t| keep(t)) {
            return Ok(t);
        }
        let (token, lifetime) = self.exchange().await?;
        // A lifetime from the network: at most a day, so `now + lifetime`
        // cannot overflow (and a token is never trusted for longer).
        let lifetime = Duration::from_secs(lifetime).min(MAX_TOKEN_LIFETIME);
        // A token shorter-lived than twice the margin is used for half its life.
        let margin = self.margin.min(lifetime / 2);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now()
                .checked_add(lifetime.saturating_sub(margin))
                .unwrap_or_else(Instant::now),
        });
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(account = %self.key.client_email, "bigquery: service-account token obtained");
        Ok(token)
    }

    /// One JWT-bearer exchange (retrying 429, 5xx and transport errors).
    async fn exchange(&self) -> Result<(SecretString, u64)> {
        let url = &self.key.token_uri;
        let mut retries = 0u32;
        loop {
            let assertion = self.signed_assertion()?;
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                .append_pair("assertion", &assertion)
                .finish();
            let request = self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form);
            let Received {
                status,
                headers,
                body,
            } = match send_request(request, self.max_body).await {
                Ok(r) => r,
                Err(e) if e.is_retryable() && retries < self.retry.max_retries => {
                    tracing::debug!(error = %e, "bigquery: token endpoint unreachable, retrying");
                    tokio::time::sleep(self.retry.backoff(retries)).await;
                    retries += 1;
                    continue;
                }
                Err(e) => return Err(e.into_error(NAME, url.path())),
            };
            let retry_after = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            if status.is_success() {
                let answer: TokenAnswer =
                    serde_json::from_slice(&body).map_err(|e| Error::Auth {
                        provider: NAME,
                        kind: AuthErrorKind::Rejected,
                        message: format!("the token endpoint answered no usable token: {e}"),
                    })?;
                return Ok((answer.access_token, answer.expires_in.unwrap_or(3600)));
            }
            let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if transient && retries < self.retry.max_retries {
                let wait = retry_after
                    .filter(|d| *d <= self.retry.max_retry_after)
                    .unwrap_or_else(|| self.retry.backoff(retries));
                tokio::time::sleep(wait).await;
                retries += 1;
                continue;
            }
            let err: TokenError = serde_json::from_slice(&body).unwrap_or(TokenError {
                error: None,
                error_description: None,
            });
            let code = err.error.unwrap_or_else(|| status.as_u16().to_string());
            return Err(Error::Auth {
                provider: NAME,
                kind: if code == "invalid_grant" {
                    AuthErrorKind::Reauthorize
                } else {
                    AuthErrorKind::Rejected
                },
                message: format!(
                    "service-account token exchange for {} failed: {code}{}",
                    self.key.client_email,
                    err.error_description
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
            });
        }
    }
}

#[async_trait]
impl AccessTokenSource for ServiceAccountTokenSource {
    async fn access_token(&self) -> Result<SecretString> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        self.refresh(|_| true).await
    }

    async fn refresh_after_unauthorized(&self, refused: &SecretString) -> Result<bool> {
        let refused = refused.expose_secret().to_owned();
        self.refresh(|t| t.expose_secret() != refused).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_and_debug_hides_the_key() {
        let json = br#"{"type":"service_account","project_id":"p","private_key_id":"k1",
            "private_key":"-----BEGIN PRIVATE KEY-----\nsekrit\n-----END PRIVATE KEY-----\n",
            "client_email":"sa@p.iam.gserviceaccount.com","token_uri":"https://oauth2.googleapis.com/token"}"#;
        let key = ServiceAccountKey::from_json(json).expect("parses");
        assert_eq!(key.client_email(), "sa@p.iam.gserviceaccount.com");
        assert_eq!(key.project_id(), Some("p"));
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("sekrit"), "{dbg}");
        // Not an RSA key: refused at construction, without quoting it.
        let err = ServiceAccountTokenSource::new(key).unwrap_err().to_string();
        assert!(!err.contains("sekrit"), "{err}");
        let err = ServiceAccountKey::from_json(
            br#"{"type":"authorized_user","client_email":"x","private_key":"sekrit"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("authorized_user") && !err.contains("sekrit"),
            "{err}"
        );
        let err = ServiceAccountKey::from_json(b"{\"private_key\": \"sekrit\"")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sekrit"), "{err}");
    }
}
