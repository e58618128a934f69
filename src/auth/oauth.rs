//! The OAuth 2.0 authorization-code flow on the `oauth2` crate: authorize URL
//! (scopes, `state`, optional PKCE), callback check, code exchange, refresh.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::TokenSet;
use crate::error::{ApiErrorBody, AuthErrorKind};
use crate::http::{error_chain, RetryConfig};
use crate::{Error, Result};

type Oauth2Client =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (`HubSpot`, Mailchimp).
    RequestBody,
    /// HTTP Basic `base64(client_id:client_secret)` (Constant Contact).
    BasicAuth,
}

/// An OAuth application's registration with a provider.
#[derive(Clone)]
#[non_exhaustive]
pub struct OAuthConfig {
    /// Provider name, for errors (`hubspot`).
    pub provider: &'static str,
    /// The app's client id.
    pub client_id: String,
    /// The app's client secret (absent for public PKCE clients).
    pub client_secret: Option<SecretString>,
    /// The provider's authorize page.
    pub auth_url: Url,
    /// The provider's token endpoint.
    pub token_url: Url,
    /// Where the provider sends the user back.
    pub redirect_url: Option<Url>,
    /// Scopes to request.
    pub scopes: Vec<String>,
    /// Scopes the user may decline (`HubSpot`'s `optional_scope`).
    pub optional_scopes: Vec<String>,
    /// How the token endpoint wants client credentials.
    pub client_auth: ClientAuth,
    /// Use PKCE (S256).
    pub pkce: bool,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("provider", &self.provider)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("auth_url", &self.auth_url.as_str())
            .field("token_url", &self.token_url.as_str())
            .field("redirect_url", &self.redirect_url.as_ref().map(Url::as_str))
            .field("scopes", &self.scopes)
            .field("pkce", &self.pkce)
            .finish()
    }
}

fn parse_url(s: &str) -> Result<Url> {
    Url::parse(s).map_err(|e| Error::Config(format!("bad URL `{s}`: {e}")))
}

impl OAuthConfig {
    /// A configuration with the given endpoints.
    pub fn new(
        provider: &'static str,
        client_id: impl Into<String>,
        client_secret: Option<SecretString>,
        auth_url: &str,
        token_url: &str,
    ) -> Result<Self> {
        Ok(OAuthConfig {
            provider,
            client_id: client_id.into(),
            client_secret,
            auth_url: parse_url(auth_url)?,
            token_url: parse_url(token_url)?,
            redirect_url: None,
            scopes: Vec::new(),
            optional_scopes: Vec::new(),
            client_auth: ClientAuth::RequestBody,
            pkce: false,
        })
    }

    /// `HubSpot`'s endpoints (`app.hubspot.com/oauth/authorize`,
    /// `api.hubapi.com/oauth/v1/token`), credentials in the form body, and the
    /// scopes a CRM sync needs.
    pub fn hubspot(client_id: impl Into<String>, client_secret: SecretString) -> Self {
        OAuthConfig {
            provider: "hubspot",
            client_id: client_id.into(),
            client_secret: Some(client_secret),
            auth_url: Url::parse("https://app.hubspot.com/oauth/authorize").expect("static URL"),
            token_url: Url::parse("https://api.hubapi.com/oauth/v1/token").expect("static URL"),
            redirect_url: None,
            scopes: [
                "oauth",
                "crm.objects.contacts.read",
                "crm.objects.companies.read",
                "crm.objects.deals.read",
            ]
            .map(String::from)
            .to_vec(),
            optional_scopes: [
                "tickets",
                "crm.objects.owners.read",
                "crm.schemas.custom.read",
                "crm.objects.custom.read",
            ]
            .map(String::from)
            .to_vec(),
            client_auth: ClientAuth::RequestBody,
            pkce: false,
        }
    }

    /// Points the token endpoint elsewhere (a proxy, a fake).
    pub fn with_token_url(mut self, url: &str) -> Result<Self> {
        self.token_url = parse_url(url)?;
        Ok(self)
    }

    /// Points the authorize page elsewhere.
    pub fn with_auth_url(mut self, url: &str) -> Result<Self> {
        self.auth_url = parse_url(url)?;
        Ok(self)
    }

    /// Sets the redirect URL registered with the app.
    pub fn with_redirect_url(mut self, url: &str) -> Result<Self> {
        self.redirect_url = Some(parse_url(url)?);
        Ok(self)
    }

    /// Replaces the requested scopes.
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the optional scopes.
    pub fn with_optional_scopes<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        scopes: I,
    ) -> Self {
        self.optional_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Turns PKCE on or off.
    pub fn with_pkce(mut self, pkce: bool) -> Self {
        self.pkce = pkce;
        self
    }

    /// Sets how client credentials reach the token endpoint.
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }
}

/// The URL to send the user to, and what to keep until they come back.
#[derive(Debug)]
#[non_exhaustive]
pub struct AuthorizationRequest {
    /// The provider's authorize page with all parameters.
    pub url: Url,
    /// Keep this (e.g. in the user's session) and pass it to
    /// [`OAuthClient::exchange_code`], which consumes it.
    pub pending: PendingAuthorization,
}

/// The secret half of an authorization in progress: the `state` value and
/// the PKCE verifier. Serializable so a web app can keep it in a session
/// store; treat the serialized form as a secret.
///
/// Single use: [`OAuthClient::exchange_code`] takes it by value, and it is
/// not `Clone`, so one pending authorization is exchanged at most once. A
/// web app that keeps the serialized form must *remove* it from the
/// session (not just read it) before exchanging, so that a replayed
/// callback finds nothing.
#[derive(Serialize, Deserialize)]
pub struct PendingAuthorization {
    state: String,
    pkce_verifier: Option<String>,
}

impl std::fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingAuthorization([REDACTED])")
    }
}

impl PendingAuthorization {
    /// The `state` value sent to the provider (to find this pending
    /// authorization when the callback arrives).
    pub fn state(&self) -> &str {
        &self.state
    }
}

/// The query parameters of the redirect back from the provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Callback {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state` echoed back.
    pub state: Option<String>,
    /// An error code, when the user declined or the provider failed.
    pub error: Option<String>,
    /// The provider's description of the error.
    pub error_description: Option<String>,
}

impl Callback {
    /// Reads the callback from a query string (`code=…&state=…`).
    pub fn from_query(query: &str) -> Self {
        let mut cb = Callback::default();
        for (k, v) in url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes()) {
            let v = Some(v.into_owned());
            match &*k {
                "code" => cb.code = v,
                "state" => cb.state = v,
                "error" => cb.error = v,
                "error_description" => cb.error_description = v,
                _ => {}
            }
        }
        cb
    }
}

/// Constant-time comparison, so the `state` check leaks nothing by timing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct TokenHttpError {
    message: String,
    timeout: bool,
}

impl TokenHttpError {
    fn new(message: impl Into<String>) -> Self {
        TokenHttpError {
            message: message.into(),
            timeout: false,
        }
    }
}

impl From<reqwest::Error> for TokenHttpError {
    fn from(e: reqwest::Error) -> Self {
        TokenHttpError {
            timeout: e.is_timeout(),
            // Never the URL: a token endpoint's path or query may hold a secret.
            message: error_chain(&e.without_url()),
        }
    }
}

/// `HubSpot`'s error category of a token-endpoint answer (`status` or
/// `category`: `BAD_REFRESH_TOKEN`, `BAD_CLIENT_ID`, …).
fn hubspot_category(body: &ApiErrorBody) -> Option<&str> {
    body.category.as_deref()
}

/// The token endpoint refused the app itself: a deployment mistake (wrong
/// client id or secret, a grant the app may not use), not the grant.
fn misconfigured(provider: &'static str, message: &str) -> Error {
    Error::Config(format!(
        "{provider}: the token endpoint refused the app's credentials ({message}); \
         check the client id, the client secret and the app's allowed grants"
    ))
}

/// An OAuth client: authorize URL, code exchange and refresh, with 429 and
/// 5xx answers of the token endpoint retried with backoff (`HubSpot`'s token
/// endpoint rate-limits too).
#[derive(Clone, Debug)]
pub struct OAuthClient {
    config: Arc<OAuthConfig>,
    http: reqwest::Client,
    retry: RetryConfig,
}

impl OAuthClient {
    /// A client for `config`.
    pub fn new(config: OAuthConfig) -> Result<Self> {
        Ok(OAuthClient {
            config: Arc::new(config),
            http: crate::http::default_http_client(Duration::from_secs(30))?,
            retry: RetryConfig::default(),
        })
    }

    /// Sets the retry policy for the token endpoint.
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// The provider name.
    pub fn provider(&self) -> &'static str {
        self.config.provider
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    fn client(&self) -> Oauth2Client {
        let c = &self.config;
        let mut client = BasicClient::new(ClientId::new(c.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(c.auth_url.clone()))
            .set_token_uri(TokenUrl::from_url(c.token_url.clone()))
            .set_auth_type(match c.client_auth {
                ClientAuth::RequestBody => AuthType::RequestBody,
                ClientAuth::BasicAuth => AuthType::BasicAuth,
            });
        if let Some(secret) = &c.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        if let Some(redirect) = &c.redirect_url {
            client = client.set_redirect_uri(RedirectUrl::from_url(redirect.clone()));
        }
        client
    }

    /// The URL to send the user to, with scopes, a random `state` and (if
    /// configured) a PKCE challenge.
    pub fn authorize_url(&self) -> AuthorizationRequest {
        let client = self.client();
        let mut req = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new));
        if !self.config.optional_scopes.is_empty() {
            req = req.add_extra_param("optional_scope", self.config.optional_scopes.join(" "));
        }
        let mut verifier = None;
        if self.config.pkce {
            let (challenge, v) = PkceCodeChallenge::new_random_sha256();
            req = req.set_pkce_challenge(challenge);
            verifier = Some(v.secret().clone());
        }
        let (url, state) = req.url();
        AuthorizationRequest {
            url,
            pending: PendingAuthorization {
                state: state.secret().clone(),
                pkce_verifier: verifier,
            },
        }
    }

    /// Checks the callback against `pending` and exchanges the code for
    /// tokens, consuming `pending`: it cannot be exchanged twice.
    ///
    /// The `state` is checked first (in constant time): a callback that
    /// does not carry the state of this authorization is a
    /// [`AuthErrorKind::StateMismatch`] whatever else it says, so a forged
    /// `error=` cannot pass for the user's answer. Only then is the
    /// provider's `error` honoured ([`AuthErrorKind::Denied`]).
    ///
    /// ```compile_fail
    /// # async fn f(client: headwater::auth::OAuthClient, cb: headwater::auth::Callback) {
    /// let req = client.authorize_url();
    /// let _ = client.exchange_code(req.pending, &cb).await;
    /// let _ = client.exchange_code(req.pending, &cb).await; // moved: refused
    /// # }
    /// ```
    pub async fn exchange_code(
        &self,
        pending: PendingAuthorization,
        callback: &Callback,
    ) -> Result<TokenSet> {
        let provider = self.config.provider;
        let state_ok = callback
            .state
            .as_deref()
            .is_some_and(|s| ct_eq(s.as_bytes(), pending.state.as_bytes()));
        if !state_ok {
            return Err(Error::Auth {
                provider,
                kind: AuthErrorKind::StateMismatch,
                message: "the callback's `state` does not match the authorization that was started"
                    .into(),
            });
        }
        if let Some(err) = &callback.error {
            return Err(Error::Auth {
                provider,
                kind: AuthErrorKind::Denied,
                message: format!(
                    "{err}: {}",
                    callback.error_description.as_deref().unwrap_or("")
                ),
            });
        }
        let code = callback.code.clone().ok_or_else(|| Error::Auth {
            provider,
            kind: AuthErrorKind::Denied,
            message: "the callback carries no authorization code".into(),
        })?;
        let client = self.client();
        let mut req = client.exchange_code(AuthorizationCode::new(code));
        if let Some(v) = pending.pkce_verifier {
            req = req.set_pkce_verifier(PkceCodeVerifier::new(v));
        }
        let status = Arc::new(AtomicU16::new(0));
        let result = req.request_async(&self.http_fn(&status)).await;
        self.to_token_set(result, &status)
    }

    /// Exchanges a refresh token for new tokens. The answer may carry a new
    /// refresh token (rotation); the caller must keep it.
    ///
    /// How the answer is read:
    /// - `invalid_grant` (RFC 6749 JSON) or `HubSpot`'s `BAD_REFRESH_TOKEN` /
    ///   `BAD_AUTH_CODE`: the grant is refused for good,
    ///   [`AuthErrorKind::Reauthorize`];
    /// - `invalid_client`, `unauthorized_client`, `HubSpot`'s
    ///   `BAD_CLIENT_ID` / `BAD_CLIENT_SECRET` / `BAD_REDIRECT_URI`: the app
    ///   is misconfigured, [`Error::Config`], never a verdict on the grant;
    /// - any other 4xx (a proxy's HTML 403), a 5xx, a network error: an
    ///   [`Error::Api`] or [`Error::Transport`], never a verdict on the grant.
    ///
    /// Retries: a token request is not idempotent (a refresh token may be
    /// single use, a code always is), so it is retried only when it
    /// certainly was not processed: the connection could not be made, or
    /// the endpoint answered 429. A timeout, a connection lost after the
    /// request was sent, or a 5xx is ambiguous (the provider may have
    /// rotated the token and the answer been lost): the error is returned,
    /// and the refresh token is not sent again by this call.
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet> {
        let client = self.client();
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let status = Arc::new(AtomicU16::new(0));
        let result = client
            .exchange_refresh_token(&token)
            .request_async(&self.http_fn(&status))
            .await;
        self.to_token_set(result, &status)
    }

    fn to_token_set<R: TokenResponse>(
        &self,
        result: std::result::Result<
            R,
            RequestTokenError<
                TokenHttpError,
                oauth2::StandardErrorResponse<BasicErrorResponseType>,
            >,
        >,
        status: &AtomicU16,
    ) -> Result<TokenSet> {
        let provider = self.config.provider;
        let status = status.load(Ordering::Relaxed);
        match result {
            Ok(resp) => Ok(TokenSet {
                access_token: Some(SecretString::from(resp.access_token().secret().clone())),
                refresh_token: resp
                    .refresh_token()
                    .map(|r| SecretString::from(r.secret().clone())),
                // `expires_in: 0` (Mailchimp) means the token never expires;
                // a huge one is clamped (never an overflow).
                expires_at: resp
                    .expires_in()
                    .filter(|d| !d.is_zero())
                    .map(super::expiry_after),
                scopes: resp
                    .scopes()
                    .map(|s| s.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
                reauthorization: None,
            }),
            Err(RequestTokenError::ServerResponse(err)) => {
                let message = format!(
                    "{}{}",
                    err.error(),
                    err.error_description()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
                match err.error() {
                    BasicErrorResponseType::InvalidGrant => Err(Error::Auth {
                        provider,
                        kind: AuthErrorKind::Reauthorize,
                        message,
                    }),
                    BasicErrorResponseType::InvalidClient
                    | BasicErrorResponseType::UnauthorizedClient => {
                        Err(misconfigured(provider, &message))
                    }
                    _ => Err(Error::Api {
                        provider,
                        status,
                        method: "POST".into(),
                        path: self.config.token_url.path().to_owned(),
                        body: Box::new(ApiErrorBody {
                            message: Some(message),
                            ..Default::default()
                        }),
                    }),
                }
            }
            Err(RequestTokenError::Parse(e, body)) => {
                let parsed = ApiErrorBody::parse(&body);
                match status {
                    200..=299 => Err(Error::Decode {
                        provider,
                        what: "token response".into(),
                        path: e.path().to_string(),
                        message: e.inner().to_string(),
                    }),
                    // HubSpot answers with 400 and its own error body: a
                    // spent or unknown refresh token is BAD_REFRESH_TOKEN,
                    // bad app credentials BAD_CLIENT_ID / BAD_CLIENT_SECRET.
                    // Anything else (a proxy's HTML 403) says nothing
                    // about the grant.
                    400 | 401 | 403 => match hubspot_category(&parsed) {
                        Some("BAD_REFRESH_TOKEN" | "BAD_AUTH_CODE") => Err(Error::Auth {
                            provider,
                            kind: AuthErrorKind::Reauthorize,
                            message: parsed.to_string(),
                        }),
                        Some("BAD_CLIENT_ID" | "BAD_CLIENT_SECRET" | "BAD_REDIRECT_URI") => {
                            Err(misconfigured(provider, &parsed.to_string()))
                        }
                        _ => Err(Error::Api {
                            provider,
                            status,
                            method: "POST".into(),
                            path: self.config.token_url.path().to_owned(),
                            body: Box::new(parsed),
                        }),
                    },
                    429 => Err(Error::RateLimited {
                        provider,
                        retry_after: None,
                        daily: false,
                        body: Box::new(parsed),
                    }),
                    _ => Err(Error::Api {
                        provider,
                        status,
                        method: "POST".into(),
                        path: self.config.token_url.path().to_owned(),
                        body: Box::new(parsed),
                    }),
                }
            }
            Err(RequestTokenError::Request(e)) => Err(Error::Transport {
                provider,
                path: self.config.token_url.path().to_owned(),
                timeout: e.timeout,
                message: e.message,
            }),
            Err(RequestTokenError::Other(m)) => Err(Error::Auth {
                provider,
                kind: AuthErrorKind::Rejected,
                message: m,
            }),
        }
    }

    /// The HTTP function handed to `oauth2`: owns what it needs, so its
    /// futures are `Send + 'static`.
    fn http_fn(
        &self,
        status: &Arc<AtomicU16>,
    ) -> impl Fn(
        oauth2::HttpRequest,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = std::result::Result<oauth2::HttpResponse, TokenHttpError>,
                > + Send,
        >,
    > {
        let (http, retry, status) = (self.http.clone(), self.retry.clone(), status.clone());
        move |req| Box::pin(token_http(http.clone(), retry.clone(), req, status.clone()))
    }
}

/// Sends one token-endpoint request, retrying (with backoff) only what
/// certainly was not processed: a connection that could not be made, a
/// 429. Anything ambiguous (timeout, reset after sending, 5xx) is returned:
/// resending a spent single-use refresh token or code is never safe.
/// Records the final status for error mapping.
async fn token_http(
    http: reqwest::Client,
    retry: RetryConfig,
    req: oauth2::HttpRequest,
    status_out: Arc<AtomicU16>,
) -> std::result::Result<oauth2::HttpResponse, TokenHttpError> {
    {
        let mut retries = 0;
        loop {
            let sent = http
                .request(req.method().clone(), req.uri().to_string())
                .headers(req.headers().clone())
                .body(req.body().clone())
                .send()
                .await;
            let retryable = match &sent {
                Ok(r) => r.status().as_u16() == 429,
                Err(e) => e.is_connect(),
            };
            if retryable && retries < retry.max_retries {
                let wait = sent
                    .as_ref()
                    .ok()
                    .and_then(|r| r.headers().get(reqwest::header::RETRY_AFTER))
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::http::parse_retry_after)
                    .filter(|d| *d <= retry.max_retry_after)
                    .unwrap_or_else(|| retry.backoff(retries));
                tracing::debug!(?wait, "token endpoint failed, retrying");
                retries += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            let resp = sent?;
            let status = resp.status();
            status_out.store(status.as_u16(), Ordering::Relaxed);
            let headers = resp.headers().clone();
            let body = crate::http::read_body(resp, crate::http::DEFAULT_MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| TokenHttpError::new(e.to_string()))?;
            let body = if status.is_success() {
                with_token_type(body.to_vec())
            } else {
                body.to_vec()
            };
            let mut out = http::Response::builder().status(status);
            if let Some(h) = out.headers_mut() {
                *h = headers;
            }
            return out
                .body(body)
                .map_err(|e| TokenHttpError::new(e.to_string()));
        }
    }
}

/// A token answer without `token_type` (Mailchimp's
/// `{access_token, expires_in: 0, scope: null}`) gets `"bearer"`, which RFC
/// 6749 makes the only type a bearer API can mean; the `oauth2` crate
/// requires the field. An `expires_in` the crate cannot read as seconds
/// (`1e30`, `3600.5`, `"3600"`, a negative number) is made whole seconds,
/// clamped to a year: a token answer never fails or overflows on it.
fn with_token_type(body: Vec<u8>) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut map)) => {
            let mut changed = false;
            if !map.contains_key("token_type") {
                map.insert("token_type".into(), "bearer".into());
                changed = true;
            }
            if let Some(v) = map.get_mut("expires_in") {
                if let Some(secs) = expires_in_secs(v) {
                    if v.as_u64() != Some(secs) {
                        *v = secs.into();
                        changed = true;
                    }
                }
            }
            if changed {
                serde_json::to_vec(&map).unwrap_or(body)
            } else {
                body
            }
        }
        _ => body,
    }
}

/// `expires_in` as whole seconds within [`super::MAX_TOKEN_LIFETIME`]; a
/// negative or non-finite value is 1 (expired: refresh at once); `None`
/// when it is not a number at all.
fn expires_in_secs(v: &serde_json::Value) -> Option<u64> {
    let max = super::MAX_TOKEN_LIFETIME.as_secs();
    let f = match v {
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(u) => return Some(u.min(max)),
            None => n.as_f64()?,
        },
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if f.is_finite() && f >= 0.0 {
        // In range after `min`, so the cast is exact enough and cannot wrap.
        Some(f.min(max as f64).ceil() as u64)
    } else {
        Some(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_answer_without_a_type_is_a_bearer_token() {
        let fixed =
            with_token_type(br#"{"access_token":"a","expires_in":0,"scope":null}"#.to_vec());
        let v: serde_json::Value = serde_json::from_slice(&fixed).expect("json");
        assert_eq!(v["token_type"], "bearer");
        let kept = with_token_type(br#"{"access_token":"a","token_type":"Bearer"}"#.to_vec());
        assert!(String::from_utf8_lossy(&kept).contains("\"Bearer\""));
        assert_eq!(with_token_type(b"not json".to_vec()), b"not json".to_vec());
    }

    #[test]
    fn authorize_url_carries_scopes_state_and_pkce() {
        let cfg = OAuthConfig::hubspot("client-1", "secret".into())
            .with_redirect_url("http://127.0.0.1:8080/callback")
            .expect("url")
            .with_pkce(true);
        let client = OAuthClient::new(cfg).expect("client");
        let req = client.authorize_url();
        let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], "client-1");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8080/callback");
        assert!(q["scope"].contains("crm.objects.contacts.read"));
        assert!(q["optional_scope"].contains("tickets"));
        assert_eq!(q["state"], req.pending.state());
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(!format!("{:?} {:?}", req.pending, client).contains("secret\""));
    }

    fn kind(err: &Error) -> Option<AuthErrorKind> {
        match err {
            Error::Auth { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_callback_with_the_wrong_state_is_refused() {
        let client = OAuthClient::new(OAuthConfig::hubspot("c", "s".into())).expect("client");
        let cb = Callback::from_query("code=abc&state=forged");
        let err = client
            .exchange_code(client.authorize_url().pending, &cb)
            .await
            .expect_err("must fail");
        assert_eq!(kind(&err), Some(AuthErrorKind::StateMismatch), "{err}");
        // An error with the right state is the user's answer.
        let req = client.authorize_url();
        let cb = Callback::from_query(&format!(
            "error=access_denied&error_description=no&state={}",
            req.pending.state()
        ));
        let err = client
            .exchange_code(req.pending, &cb)
            .await
            .expect_err("must fail");
        assert_eq!(kind(&err), Some(AuthErrorKind::Denied), "{err}");
    }

    #[tokio::test]
    async fn an_error_callback_with_a_forged_or_missing_state_is_a_state_mismatch() {
        let client = OAuthClient::new(OAuthConfig::hubspot("c", "s".into())).expect("client");
        for query in [
            "error=access_denied&error_description=no&state=forged",
            "error=access_denied",
        ] {
            let err = client
                .exchange_code(client.authorize_url().pending, &Callback::from_query(query))
                .await
                .expect_err("must fail");
            assert_eq!(
                kind(&err),
                Some(AuthErrorKind::StateMismatch),
                "{query}: {err}"
            );
        }
    }

    #[test]
    fn a_huge_or_odd_expires_in_is_clamped_to_a_year() {
        let year = MAX_YEAR_SECS;
        for (raw, want) in [
            ("18446744073709551615", Some(year)),
            ("1e30", Some(year)),
            ("1.8e19", Some(year)),
            ("\"3600\"", Some(3600)),
            ("3600.2", Some(3601)),
            ("-5", Some(1)),
            ("0", Some(0)),
        ] {
            let body =
                format!(r#"{{"access_token":"a","token_type":"bearer","expires_in":{raw}}}"#);
            let fixed = with_token_type(body.into_bytes());
            let v: serde_json::Value = serde_json::from_slice(&fixed).expect("json");
            assert_eq!(v["expires_in"].as_u64(), want, "{raw}");
        }
    }

    const MAX_YEAR_SECS: u64 = 365 * 24 * 3600;
}
