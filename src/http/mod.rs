//! The API client every provider shares: `reqwest`, a `governor` limiter per
//! account (and per endpoint class), retries with backoff and jitter on 429,
//! 5xx and timeouts honouring `Retry-After`, one token refresh on 401, the
//! provider's error body parsed into [`crate::Error`], and `tracing` spans.

mod events;
pub(crate) mod limit;
mod retry;
mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use tracing::Instrument;
use url::Url;

pub use events::{observe, HttpEvent, Observer};
pub use limit::{DailyLimit, DailyUsage, RateLimit};
pub use retry::{RetryConfig, MAX_RETRY_AFTER};
pub(crate) use transport::{read_body, send as send_request, Received};
pub use transport::{DEFAULT_MAX_RESPONSE_BYTES, MAX_ERROR_BODY_BYTES};

use crate::auth::AccessTokenSource;
use crate::error::{ApiErrorBody, AuthErrorKind};
use crate::{Error, Result};

/// Counters of one client's traffic, for reports and progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestStats {
    /// HTTP requests sent (every attempt).
    pub requests: u64,
    /// Attempts that were retries (after 429, 5xx, timeouts).
    pub retries: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Time spent waiting on the client-side rate limiter.
    pub limiter_wait: Duration,
}

impl std::ops::Sub for RequestStats {
    type Output = RequestStats;
    fn sub(self, rhs: RequestStats) -> RequestStats {
        RequestStats {
            requests: self.requests.saturating_sub(rhs.requests),
            retries: self.retries.saturating_sub(rhs.retries),
            rate_limited: self.rate_limited.saturating_sub(rhs.rate_limited),
            limiter_wait: self.limiter_wait.saturating_sub(rhs.limiter_wait),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    limiter_wait_us: AtomicU64,
}

/// Which limiter a request passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestClass {
    /// Ordinary API calls.
    Standard,
    /// Search endpoints with their own, tighter quota (`HubSpot` CRM search).
    Search,
}

/// Limits a client observes; `None` turns one off.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// The account's general request limit.
    pub standard: Option<RateLimit>,
    /// The search endpoints' own limit (counted in addition to `standard`).
    pub search: Option<RateLimit>,
    /// Most requests in flight at once (Mailchimp: 10 connections per user).
    pub concurrency: Option<usize>,
    /// A daily quota (Constant Contact: 10,000 a day). When it is spent,
    /// requests fail at once with [`Error::RateLimited`] (`daily: true`,
    /// `retry_after` = time to the reset) instead of drawing 429s, so a sync
    /// stops at its checkpoint and says when it can resume.
    pub daily: Option<DailyLimit>,
}

/// A request to send through [`ApiClient::send`].
#[derive(Debug)]
pub(crate) struct ApiRequest {
    pub method: Method,
    pub url: Url,
    pub json: Option<Vec<u8>>,
    pub class: RequestClass,
    /// The path as logged and put in errors (a path holding a token is not).
    pub log_path: String,
}

impl Limits {
    /// No limits at all (tests against a fake, a proxy that limits for you).
    pub fn none() -> Self {
        Limits::default()
    }

    /// A general limit only.
    pub fn standard(limit: RateLimit) -> Self {
        Limits {
            standard: Some(limit),
            ..Limits::default()
        }
    }

    /// Sets the search endpoints' own limit.
    pub fn with_search(mut self, limit: RateLimit) -> Self {
        self.search = Some(limit);
        self
    }

    /// Sets the most requests in flight at once.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Sets a daily quota.
    pub fn with_daily(mut self, limit: DailyLimit) -> Self {
        self.daily = Some(limit);
        self
    }
}

impl ApiRequest {
    pub(crate) fn new(method: Method, url: Url) -> Self {
        let log_path = url.path().to_owned();
        ApiRequest {
            method,
            url,
            json: None,
            class: RequestClass::Standard,
            log_path,
        }
    }
}

/// A successful response: status, headers and body.
#[derive(Debug)]
pub(crate) struct ApiResponse {
    #[allow(dead_code)]
    pub status: StatusCode,
    pub body: Bytes,
}

/// The shared HTTP client of one provider account. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    provider: &'static str,
    http: reqwest::Client,
    base_url: Url,
    auth: Arc<dyn AccessTokenSource>,
    retry: RetryConfig,
    standard: Option<Arc<limit::FairLimiter>>,
    search: Option<Arc<limit::FairLimiter>>,
    concurrency: Option<Arc<tokio::sync::Semaphore>>,
    daily: Option<limit::DailyCounter>,
    limits: Limits,
    max_body: u64,
    counters: Counters,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("provider", &self.inner.provider)
            .field("base_url", &self.inner.base_url.as_str())
            .field("auth", &self.inner.auth)
            .field("retry", &self.inner.retry)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

/// The `reqwest` client headwater builds by default: rustls, gzip, a connect
/// timeout of 10 s and a request timeout of `timeout`, no redirects (a
/// redirect could carry the bearer token elsewhere).
pub fn default_http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("headwater/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(32)
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

impl ApiClient {
    /// A client for `provider` at `base_url`.
    pub fn new(
        provider: &'static str,
        http: reqwest::Client,
        base_url: Url,
        auth: Arc<dyn AccessTokenSource>,
        retry: RetryConfig,
        limits: Limits,
    ) -> Self {
        let mut base_url = base_url;
        // Joining "/v3" + "contacts" must give "/v3/contacts".
        if !base_url.path().ends_with('/') {
            let p = format!("{}/", base_url.path());
            base_url.set_path(&p);
        }
        ApiClient {
            inner: Arc::new(Inner {
                provider,
                http,
                base_url,
                auth,
                retry,
                standard: limits.standard.map(|l| l.limiter()),
                search: limits.search.map(|l| l.limiter()),
                concurrency: limits
                    .concurrency
                    .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
                daily: limits.daily.map(limit::DailyCounter::new),
                limits,
                max_body: transport::DEFAULT_MAX_RESPONSE_BYTES,
                counters: Counters::default(),
            }),
        }
    }

    /// A client like this one whose response bodies may be at most `bytes`
    /// long after decompression (default [`DEFAULT_MAX_RESPONSE_BYTES`]); a
    /// longer one fails the request with [`Error::ResponseTooLarge`].
    /// Counters start afresh.
    pub fn with_max_response_bytes(&self, bytes: u64) -> ApiClient {
        let mut c = self.with_limits(self.inner.limits.clone());
        if let Some(inner) = Arc::get_mut(&mut c.inner) {
            inner.max_body = bytes;
        }
        c
    }

    /// The most bytes a response body may have (after decompression).
    pub fn max_response_bytes(&self) -> u64 {
        self.inner.max_body
    }

    /// A client like this one (same HTTP pool, base URL, tokens and retry
    /// policy) with other limits and fresh counters.
    pub fn with_limits(&self, limits: Limits) -> ApiClient {
        let i = &self.inner;
        let mut c = ApiClient::new(
            i.provider,
            i.http.clone(),
            i.base_url.clone(),
            i.auth.clone(),
            i.retry.clone(),
            limits,
        );
        if let Some(inner) = Arc::get_mut(&mut c.inner) {
            inner.max_body = i.max_body;
        }
        c
    }

    /// The limits this client observes.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The provider this client talks to.
    pub fn provider(&self) -> &'static str {
        self.inner.provider
    }

    /// The base URL requests are joined to.
    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// The token source.
    pub fn auth(&self) -> &Arc<dyn AccessTokenSource> {
        &self.inner.auth
    }

    /// Counters of this client's traffic so far.
    pub fn stats(&self) -> RequestStats {
        let c = &self.inner.counters;
        RequestStats {
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            limiter_wait: Duration::from_micros(c.limiter_wait_us.load(Ordering::Relaxed)),
        }
    }

    /// Today's use of the daily quota, when one is set.
    pub fn daily_usage(&self) -> Option<DailyUsage> {
        self.inner
            .daily
            .as_ref()
            .map(|d| d.usage(chrono::Utc::now()))
    }

    /// `path` (relative, e.g. `crm/v3/objects/contacts`) joined to the base URL.
    pub fn url(&self, path: &str) -> Result<Url> {
        self.inner
            .base_url
            .join(path.trim_start_matches('/'))
            .map_err(|e| Error::Config(format!("bad path `{path}`: {e}")))
    }

    /// A link the API returned (absolute, or a path from the host root such as
    /// Constant Contact's `/v3/contacts?cursor=…`), resolved against the
    /// host, never against the versioned base path. A link to another host is
    /// refused: the bearer token is only ever sent to the API's own host.
    pub fn resolve_link(&self, link: &str) -> Result<Url> {
        let url = self
            .inner
            .base_url
            .join(link)
            .map_err(|e| Error::Config(format!("bad link `{link}`: {e}")))?;
        if url.origin() != self.inner.base_url.origin() {
            return Err(Error::Config(format!(
                "{}: refusing to follow a link to another host: {}",
                self.inner.provider,
                url.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }

    /// GETs `url` and decodes the JSON body, naming the JSON path on failure.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        let resp = self.send(ApiRequest::new(Method::GET, url)).await?;
        Error::decode(self.inner.provider, what, &resp.body)
    }

    /// POSTs a JSON body and decodes the JSON answer.
    pub(crate) async fn post_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
        body: &B,
        class: RequestClass,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        let json = serde_json::to_vec(body)
            .map_err(|e| Error::Config(format!("cannot encode request body: {e}")))?;
        let resp = self
            .send(ApiRequest {
                json: Some(json),
                class,
                ..ApiRequest::new(Method::POST, url)
            })
            .await?;
        Error::decode(self.inner.provider, what, &resp.body)
    }

    /// Sends a request: waits on the limiters, adds the bearer token, retries
    /// 429/5xx/timeouts with backoff (honouring `Retry-After`), refreshes the
    /// token once on 401, and maps failures to [`Error`].
    pub(crate) async fn send(&self, req: ApiRequest) -> Result<ApiResponse> {
        let inner = &*self.inner;
        let span = tracing::debug_span!(
            "http",
            provider = inner.provider,
            method = %req.method,
            path = %req.log_path,
        );
        async move {
            let mut retries = 0u32;
            let mut refreshed = false;
            loop {
                let _permit = match &inner.concurrency {
                    Some(sem) => Some(sem.clone().acquire_owned().await.map_err(|_| {
                        Error::Config("client concurrency semaphore closed".into())
                    })?),
                    None => None,
                };
                self.wait_for_limiters(req.class).await;
                if let Some(daily) = &inner.daily {
                    let now = chrono::Utc::now();
                    if let Err(reset) = daily.take(now) {
                        return Err(daily_quota_spent(inner.provider, now, reset, None));
                    }
                }
                let token = inner.auth.access_token().await?;
                let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                    .map_err(|_| {
                        Error::Config("access token is not a valid header value".into())
                    })?;
                auth.set_sensitive(true);
                let mut builder = inner
                    .http
                    .request(req.method.clone(), req.url.clone())
                    .header(AUTHORIZATION, auth);
                if let Some(json) = &req.json {
                    builder = builder
                        .header(CONTENT_TYPE, "application/json")
                        .body(json.clone());
                }
                inner.counters.requests.fetch_add(1, Ordering::Relaxed);
                events::emit(HttpEvent::Request);
                let (status, headers, body) = match transport::send(builder, inner.max_body).await {
                    Ok(Received {
                        status,
                        headers,
                        body,
                    }) => (status, headers, body),
                    Err(e) if e.is_retryable() && retries < inner.retry.max_retries => {
                        let wait = inner.retry.backoff(retries);
                        tracing::debug!(error = %e, ?wait, "transport error, retrying");
                        retries += 1;
                        events::emit(HttpEvent::Retry {
                            attempt: retries,
                            status: None,
                            wait,
                        });
                        inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Err(e) => return Err(e.into_error(inner.provider, req.log_path.clone())),
                };
                if let Some(daily) = &inner.daily {
                    if let Some(remaining) = headers
                        .get(DAILY_REMAINING)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                    {
                        daily.set_remaining(chrono::Utc::now(), remaining);
                    }
                }
                if status.is_success() {
                    tracing::trace!(status = status.as_u16(), bytes = body.len(), "ok");
                    return Ok(ApiResponse { status, body });
                }
                let parsed = ApiErrorBody::parse(&body);
                if status == StatusCode::UNAUTHORIZED {
                    drop(_permit);
                    if !refreshed && inner.auth.refresh_after_unauthorized(&token).await? {
                        tracing::debug!("401: token refreshed, retrying once");
                        refreshed = true;
                        continue;
                    }
                    return Err(Error::Auth {
                        provider: inner.provider,
                        kind: if refreshed {
                            AuthErrorKind::Rejected
                        } else {
                            inner.auth.unauthorized_kind()
                        },
                        message: parsed.to_string(),
                    });
                }
                if status == StatusCode::TOO_MANY_REQUESTS {
                    inner.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    events::emit(HttpEvent::RateLimited);
                    let retry_after = headers
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry::parse_retry_after);
                    let daily = is_daily_quota(&parsed);
                    if daily {
                        if let Some(counter) = &inner.daily {
                            let now = chrono::Utc::now();
                            let reset = counter.exhaust(now);
                            return Err(daily_quota_spent(
                                inner.provider,
                                now,
                                reset,
                                Some(parsed),
                            ));
                        }
                    }
                    let too_long = retry_after.is_some_and(|d| d > inner.retry.max_retry_after);
                    if !daily && !too_long && retries < inner.retry.max_retries {
                        let wait = retry_after.unwrap_or_else(|| inner.retry.backoff(retries));
                        tracing::debug!(?wait, policy = ?parsed.policy_name, "429, retrying");
                        retries += 1;
                        events::emit(HttpEvent::Retry {
                            attempt: retries,
                            status: Some(429),
                            wait,
                        });
                        inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                        drop(_permit);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(Error::RateLimited {
                        provider: inner.provider,
                        retry_after,
                        daily,
                        body: Box::new(parsed),
                    });
                }
                if status.is_server_error() && retries < inner.retry.max_retries {
                    let wait = headers
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(retry::parse_retry_after)
                        .filter(|d| *d <= inner.retry.max_retry_after)
                        .unwrap_or_else(|| inner.retry.backoff(retries));
                    tracing::debug!(status = status.as_u16(), ?wait, "server error, retrying");
                    retries += 1;
                    events::emit(HttpEvent::Retry {
                        attempt: retries,
                        status: Some(status.as_u16()),
                        wait,
                    });
                    inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                    drop(_permit);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(Error::Api {
                    provider: inner.provider,
                    status: status.as_u16(),
                    method: req.method.to_string(),
                    path: req.log_path.clone(),
                    body: Box::new(parsed),
                });
            }
        }
        .instrument(span)
        .await
    }

    async fn wait_for_limiters(&self, class: RequestClass) {
        let inner = &*self.inner;
        let start = Instant::now();
        if class == RequestClass::Search {
            if let Some(l) = &inner.search {
                l.until_ready().await;
            }
        }
        if let Some(l) = &inner.standard {
            l.until_ready().await;
        }
        let waited = start.elapsed();
        if waited > Duration::from_micros(50) {
            events::emit(HttpEvent::LimiterWait { waited });
            inner
                .counters
                .limiter_wait_us
                .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// `HubSpot`'s count of requests left today, sent with every response.
const DAILY_REMAINING: &str = "x-hubspot-ratelimit-daily-remaining";

/// The error of a spent daily quota: no retry, come back at `reset`.
fn daily_quota_spent(
    provider: &'static str,
    now: chrono::DateTime<chrono::Utc>,
    reset: chrono::DateTime<chrono::Utc>,
    body: Option<ApiErrorBody>,
) -> Error {
    let body = body.unwrap_or_else(|| ApiErrorBody {
        message: Some(format!(
            "the daily request quota is spent; it resets at {}",
            reset.to_rfc3339()
        )),
        category: Some("DAILY_QUOTA".into()),
        ..ApiErrorBody::default()
    });
    Error::RateLimited {
        provider,
        retry_after: Some((reset - now).to_std().unwrap_or(Duration::ZERO)),
        daily: true,
        body: Box::new(body),
    }
}

/// A 429 that means "come back tomorrow" rather than "slow down":
/// `HubSpot`'s `policyName: DAILY`, Constant Contact's `error_key: quota_exceeded`.
fn is_daily_quota(body: &ApiErrorBody) -> bool {
    body.policy_name.as_deref() == Some("DAILY")
        || body.error_key.as_deref() == Some("quota_exceeded")
}

/// An error and its sources on one line, any URL in them replaced with
/// `[url]` (a URL can carry a token).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    transport::scrub_urls(&s)
}

pub(crate) use retry::parse_retry_after;
