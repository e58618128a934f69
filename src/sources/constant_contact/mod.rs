//! Constant Contact (v3 API): a typed SDK ([`ConstantContact`]) and the
//! [`ConstantContactSource`] the sync engine uses, on the shared
//! [`ApiClient`].
//!
//! ```no_run
//! # async fn run(tokens: headwater::auth::TokenProvider) -> headwater::Result<()> {
//! use futures::TryStreamExt;
//! use headwater::constant_contact::ConstantContact;
//!
//! let cc = ConstantContact::builder().oauth(tokens).build()?;
//! let account = cc.account().await?;
//! let contacts: Vec<_> = cc
//!     .contacts()
//!     .status("all")
//!     .include(["custom_fields", "list_memberships"])
//!     .stream()
//!     .try_collect()
//!     .await?;
//! println!("{:?}: {} contacts", account.organization_name, contacts.len());
//! # Ok(()) }
//! ```
//!
//! # Connecting
//! OAuth 2.0 authorization code with PKCE ([`oauth_config`]): authorize at
//! [`AUTHORIZE_URL`], tokens from [`TOKEN_URL`] with HTTP Basic client
//! authentication; `offline_access` is what yields a refresh token. Access
//! tokens last 24 hours. Refresh tokens are either rotating (single use:
//! each refresh returns a new one and spends the old; reusing a spent one
//! answers `invalid_grant`) or long-lived, by the app's setting. The shared
//! [`crate::auth::TokenProvider`] saves a rotated refresh token to its store
//! *before* the new access token is used, so a crash between the two never
//! locks the account out; a spent token is reported as
//! [`crate::AuthErrorKind::Reauthorize`].
//!
//! # Paging
//! Listings page by cursor: the answer's `_links.next.href` is a path from
//! the host root that already holds `/v3/` (`/v3/contacts?cursor=…`), so it
//! is resolved against the host ([`ApiClient::resolve_link`]), never joined
//! to the versioned base (which would give `/v3/v3/…`). When the base URL
//! has a path in front of `/v3` (a proxy such as
//! `https://gateway.example/constant-contact/v3`), that prefix is kept. A
//! listing ends when `_links.next` is absent; a repeated cursor ends it with
//! [`Error::CursorRepeated`].
//!
//! # Limits
//! 4 requests per second and 10,000 per day per account, the day starting
//! 00:00 UTC ([`default_limits`]). Both are answered with 429 and told apart
//! only by the body: `throttled` is retried with backoff, `quota_exceeded`
//! stops at once with [`Error::RateLimited`] (`daily: true`, `retry_after`
//! the time to midnight UTC); the client also counts its own requests and
//! stops before sending the 10,001st. There are no rate-limit headers.
//!
//! # What the v3 API does not expose
//! Checked against the API description in this repository (a conversion of
//! the v3 spec 3.0.0; the current 3.0.193 could not be read here):
//! - **Automations.** No endpoint lists automated emails, automation paths
//!   or their reports in that description, so there is no automations
//!   stream: none is invented. (The specs notes record that newer
//!   descriptions add automation endpoints; they are unverified here.)
//! - The **email campaign summary report** covers *bulk* email campaigns
//!   (`bulk_email_campaign_summaries`), not automated emails, and takes no
//!   date filter: it is re-read (or re-read back to a trailing window).
//! - **Contact lists, custom fields, tags and segments** take no update-date
//!   filter: they are re-read in full every run.
//! - **Deleted contacts** carry only a date (`deleted_at`, no time), and the
//!   description does not say whether deleting a contact moves its
//!   `updated_at`; the source therefore also sweeps `status=deleted` on
//!   incremental runs (see [`ConstantContactSource`]).
//! - **Deleted campaign activities**: activities of a removed campaign
//!   cannot be read (`REMOVED` activities answer an error).
//! - Per-contact **tracking reports** (opens, clicks per contact) exist per
//!   activity (`/reports/email_reports/{id}/tracking/…`) but are not synced.

mod models;
mod plan;
pub(crate) mod source;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::{Stream, TryStreamExt};
use reqwest::Method;
use secrecy::SecretString;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use url::Url;

pub use models::{
    Account, ActivityReference, CampaignActivity, CampaignSummary, Contact, ContactCustomField,
    ContactList, CustomField, EmailAddress, EmailCampaign, UniqueCounts,
};
pub use source::{
    ConstantContactSource, DEFAULT_SETTLE_LAG, STREAM_CAMPAIGN_ACTIVITIES,
    STREAM_CAMPAIGN_SUMMARIES, STREAM_CONTACTS, STREAM_CONTACT_LISTS, STREAM_CUSTOM_FIELDS,
    STREAM_EMAIL_CAMPAIGNS,
};

use crate::auth::{AccessTokenSource, ClientAuth, OAuthConfig, StaticToken, TokenProvider};
use crate::http::{
    default_http_client, ApiClient, ApiRequest, DailyLimit, DailyUsage, Limits, RateLimit,
    RequestStats, RetryConfig,
};
use crate::paginate::{paginate, Paged};
use crate::source::Rejected;
use crate::sources::lenient;
use crate::{Error, Result};
use serde_json::value::RawValue;

/// The provider name used in errors and records.
pub const PROVIDER: &str = "constant_contact";
/// The v3 API's address.
pub const DEFAULT_BASE_URL: &str = "https://api.cc.email/v3";
/// The OAuth authorize page.
pub const AUTHORIZE_URL: &str = "https://authz.constantcontact.com/oauth2/default/v1/authorize";
/// The OAuth token endpoint (HTTP Basic client authentication).
pub const TOKEN_URL: &str = "https://authz.constantcontact.com/oauth2/default/v1/token";
/// Scopes a sync needs; `offline_access` yields the refresh token.
pub const SCOPES: [&str; 4] = [
    "contact_data",
    "campaign_data",
    "account_read",
    "offline_access",
];
/// Constant Contact's documented burst limit: 4 requests per second.
pub const RATE_LIMIT: RateLimit = RateLimit::per_second(4);
/// Constant Contact's documented daily quota (resets 00:00 UTC).
pub const DAILY_QUOTA: u64 = 10_000;
/// Largest page of `/contacts`.
pub const MAX_CONTACTS_LIMIT: u32 = 500;

/// The limits the client observes by default: [`RATE_LIMIT`] and
/// [`DAILY_QUOTA`] a day from 00:00 UTC.
pub fn default_limits() -> Limits {
    Limits::standard(RATE_LIMIT).with_daily(DailyLimit::utc(DAILY_QUOTA))
}

/// Constant Contact's OAuth registration for an app: [`AUTHORIZE_URL`],
/// [`TOKEN_URL`], HTTP Basic client authentication, PKCE on, and
/// [`SCOPES`]. Set the redirect URL with
/// [`OAuthConfig::with_redirect_url`]; point the token endpoint elsewhere
/// (a fake, a proxy) with [`OAuthConfig::with_token_url`].
pub fn oauth_config(client_id: impl Into<String>, client_secret: SecretString) -> OAuthConfig {
    let url = |s: &str| Url::parse(s).expect("static URL");
    OAuthConfig {
        provider: PROVIDER,
        client_id: client_id.into(),
        client_secret: Some(client_secret),
        auth_url: url(AUTHORIZE_URL),
        token_url: url(TOKEN_URL),
        redirect_url: None,
        scopes: SCOPES.map(String::from).to_vec(),
        optional_scopes: Vec::new(),
        client_auth: ClientAuth::BasicAuth,
        pkce: true,
    }
}

/// Builds a [`ConstantContact`] client.
#[derive(Debug, Default)]
pub struct ConstantContactBuilder {
    base_url: Option<String>,
    auth: Option<Arc<dyn AccessTokenSource>>,
    retry: Option<RetryConfig>,
    accepted_retry: Option<RetryConfig>,
    limits: Option<Limits>,
    timeout: Option<Duration>,
    max_response_bytes: Option<u64>,
}

impl ConstantContactBuilder {
    /// Authenticate with OAuth tokens that refresh themselves (and save a
    /// rotated refresh token before using the new access token).
    pub fn oauth(mut self, tokens: TokenProvider) -> Self {
        self.auth = Some(Arc::new(tokens));
        self
    }

    /// Authenticate with any token source.
    pub fn token_source(mut self, source: Arc<dyn AccessTokenSource>) -> Self {
        self.auth = Some(source);
        self
    }

    /// Authenticate with a fixed access token (valid 24 hours; a 401 then
    /// means the account must be connected again).
    pub fn access_token(mut self, token: SecretString) -> Self {
        self.auth = Some(Arc::new(StaticToken::revocable(token)));
        self
    }

    /// The API's address (default [`DEFAULT_BASE_URL`]): a fake, a proxy.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Retry policy for 429 `throttled`, 5xx and network errors (default
    /// [`RetryConfig::default`]).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// How a 202 "accepted, not complete" answer (contacts filtered by
    /// `segment_id`) is asked again: default 8 retries, backoff from 1 s to
    /// 15 s.
    pub fn accepted_retry(mut self, retry: RetryConfig) -> Self {
        self.accepted_retry = Some(retry);
        self
    }

    /// Rate limits (default [`default_limits`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Request timeout (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The most bytes one response body may have after decompression
    /// (default [`crate::http::DEFAULT_MAX_RESPONSE_BYTES`], 64 MiB); a
    /// larger one (an endless body, a gzip bomb) fails the request with
    /// [`Error::ResponseTooLarge`].
    pub fn max_response_bytes(mut self, bytes: u64) -> Self {
        self.max_response_bytes = Some(bytes);
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<ConstantContact> {
        let auth = self.auth.ok_or_else(|| Error::Auth {
            provider: PROVIDER,
            kind: crate::AuthErrorKind::Missing,
            message: "no credentials: set OAuth tokens, a token source or an access token".into(),
        })?;
        let base = self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let base_url = Url::parse(base)
            .map_err(|e| Error::Config(format!("bad Constant Contact base URL `{base}`: {e}")))?;
        if base_url.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "bad Constant Contact base URL `{base}`: not a base URL"
            )));
        }
        let http = default_http_client(self.timeout.unwrap_or(Duration::from_secs(60)))?;
        let client = ApiClient::new(
            PROVIDER,
            http,
            base_url,
            auth,
            self.retry.unwrap_or_default(),
            self.limits.unwrap_or_else(default_limits),
        );
        let client = match self.max_response_bytes {
            Some(n) => client.with_max_response_bytes(n),
            None => client,
        };
        Ok(ConstantContact {
            client,
            accepted_retry: Arc::new(self.accepted_retry.unwrap_or_else(|| {
                RetryConfig::default()
                    .with_max_retries(8)
                    .with_backoff(Duration::from_secs(1), Duration::from_secs(15))
            })),
        })
    }
}

/// A Constant Contact v3 API client for one account. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConstantContact {
    client: ApiClient,
    accepted_retry: Arc<RetryConfig>,
}

impl ConstantContact {
    /// A builder.
    pub fn builder() -> ConstantContactBuilder {
        ConstantContactBuilder::default()
    }

    /// The shared API client underneath.
    pub fn api_client(&self) -> &ApiClient {
        &self.client
    }

    /// Requests, retries and waits so far.
    pub fn stats(&self) -> RequestStats {
        self.client.stats()
    }

    /// Today's use of the daily quota as this client counted it.
    pub fn daily_usage(&self) -> Option<DailyUsage> {
        self.client.daily_usage()
    }

    /// The connected account (`GET /account/summary`).
    pub async fn account(&self) -> Result<Account> {
        let url = self.client.url("account/summary")?;
        self.client.get_json(url, || "account summary".into()).await
    }

    pub(crate) async fn account_raw(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let url = self.client.url("account/summary")?;
        self.client.get_json(url, || "account summary".into()).await
    }

    /// Contact lists (`GET /contact_lists`).
    pub fn contact_lists(&self) -> ListRequest<ContactList> {
        ListRequest::new(self)
    }

    /// Contacts (`GET /contacts`): set `status`, `include`, time filters.
    pub fn contacts(&self) -> ListRequest<Contact> {
        ListRequest::new(self)
    }

    /// Custom field definitions (`GET /contact_custom_fields`).
    pub fn custom_fields(&self) -> ListRequest<CustomField> {
        ListRequest::new(self)
    }

    /// Email campaigns (`GET /emails`), without their activities; filter on
    /// `updated_at` with `after_date`/`before_date`.
    pub fn email_campaigns(&self) -> ListRequest<EmailCampaign> {
        ListRequest::new(self)
    }

    /// Bulk email campaign summaries
    /// (`GET /reports/summary_reports/email_campaign_summaries`), newest
    /// send first.
    pub fn campaign_summaries(&self) -> ListRequest<CampaignSummary> {
        ListRequest::new(self)
    }

    /// One email campaign with its activities (`GET /emails/{campaign_id}`).
    pub async fn email_campaign(&self, campaign_id: &str) -> Result<EmailCampaign> {
        let url = self.segments_url(&["emails", campaign_id])?;
        self.client
            .get_json(url, || format!("email campaign {campaign_id}"))
            .await
    }

    /// One campaign activity (`GET /emails/activities/{campaign_activity_id}`),
    /// with extra properties named in `include` (`physical_address_in_footer`,
    /// `permalink_url`, `html_content`, `document_properties`).
    pub async fn campaign_activity(
        &self,
        campaign_activity_id: &str,
        include: &[&str],
    ) -> Result<CampaignActivity> {
        let mut url = self.segments_url(&["emails", "activities", campaign_activity_id])?;
        if !include.is_empty() {
            url.query_pairs_mut()
                .append_pair("include", &include.join(","));
        }
        self.client
            .get_json(url, || format!("campaign activity {campaign_activity_id}"))
            .await
    }

    /// The base URL with path segments appended (each percent-encoded).
    fn segments_url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.client.base_url().clone();
        url.path_segments_mut()
            .map_err(|_| Error::Config("base URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Where a `_links.next.href` points: a path from the host root that
    /// starts with `/v3/`. Resolved against the host ([`ApiClient::resolve_link`]),
    /// keeping any path the base URL has in front of its `/v3/` (a proxy).
    pub fn next_url(&self, href: &str) -> Result<Url> {
        let base_path = self.client.base_url().path();
        if href.starts_with("/v3/") {
            if let Some(prefix) = base_path.strip_suffix("/v3/") {
                return self.client.resolve_link(&format!("{prefix}{href}"));
            }
        }
        self.client.resolve_link(href)
    }

    /// Fetches one page of a listing; a 202 "accepted, not complete" answer
    /// (or a body with `status: processing`) is asked again with backoff.
    async fn fetch_page<T: Listed>(
        &self,
        url: Url,
        what: &str,
    ) -> Result<(ListPage<T>, Vec<Rejected>)> {
        let mut attempt = 0u32;
        loop {
            let resp = self
                .client
                .send(ApiRequest::new(Method::GET, url.clone()))
                .await?;
            let accepted = resp.status.as_u16() == 202;
            let env: Option<(Envelope<T>, Vec<Rejected>)> = if accepted {
                None
            } else {
                Some(decode_envelope(&resp.body, what)?)
            };
            match env {
                Some((env, rejected)) if !env.processing => {
                    return Ok((
                        ListPage {
                            items: env.items,
                            next: env.next,
                            count: env.count,
                        },
                        rejected,
                    ))
                }
                _ if attempt < self.accepted_retry.max_retries => {
                    let wait = self.accepted_retry.backoff(attempt);
                    tracing::debug!(what, ?wait, "202 accepted, not complete: asking again");
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    return Err(Error::Api {
                        provider: PROVIDER,
                        status: 202,
                        method: "GET".into(),
                        path: url.path().to_owned(),
                        body: Box::new(crate::ApiErrorBody {
                            message: Some(format!(
                                "{what}: still processing after {attempt} retries"
                            )),
                            ..Default::default()
                        }),
                    })
                }
            }
        }
    }
}

/// Decodes a listing's answer record by record: the records that cannot be
/// decoded are returned apart, with their bytes (see
/// [`crate::sources::lenient`]).
fn decode_envelope<T: Listed>(body: &[u8], what: &str) -> Result<(Envelope<T>, Vec<Rejected>)> {
    lenient::decode_page(
        body,
        |b| serde_json::from_slice::<Envelope<T>>(b),
        |page| {
            let env: Envelope<T, &RawValue> = serde_json::from_slice(page.bytes())?;
            let items = env
                .items
                .iter()
                .enumerate()
                .filter_map(|(i, raw)| page.record(raw, || format!("{}[{i}]", T::KEY)))
                .collect();
            Ok(Envelope {
                items,
                next: env.next,
                count: env.count,
                processing: env.processing,
                _t: PhantomData,
            })
        },
        || lenient::strict_error::<Envelope<T>>(PROVIDER, || what.to_owned(), body),
    )
}

mod sealed {
    pub trait Sealed {}
}

/// A resource with a cursor-paged listing. Implemented for
/// [`ContactList`], [`Contact`], [`CustomField`], [`EmailCampaign`] and
/// [`CampaignSummary`].
pub trait Listed: DeserializeOwned + Send + 'static + sealed::Sealed {
    /// The listing's path under the base URL.
    const PATH: &'static str;
    /// The key of the items in the answer.
    const KEY: &'static str;
    /// The key of the total count (with `include_count=true`), if any.
    const COUNT_KEY: Option<&'static str>;
    /// The largest `limit` the listing takes.
    const MAX_LIMIT: u32;
}

macro_rules! listed {
    ($t:ty, $path:literal, $key:literal, $count:expr, $max:literal) => {
        impl sealed::Sealed for $t {}
        impl Listed for $t {
            const PATH: &'static str = $path;
            const KEY: &'static str = $key;
            const COUNT_KEY: Option<&'static str> = $count;
            const MAX_LIMIT: u32 = $max;
        }
    };
}

// `/contact_lists` declares a maximum of 1000 but describes 1-500.
listed!(
    ContactList,
    "contact_lists",
    "lists",
    Some("lists_count"),
    500
);
listed!(Contact, "contacts", "contacts", Some("contacts_count"), 500);
listed!(
    CustomField,
    "contact_custom_fields",
    "custom_fields",
    None,
    100
);
listed!(EmailCampaign, "emails", "campaigns", None, 500);
listed!(
    CampaignSummary,
    "reports/summary_reports/email_campaign_summaries",
    "bulk_email_campaign_summaries",
    None,
    500
);

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ListPage<T> {
    /// The items.
    pub items: Vec<T>,
    /// The next page's link (`_links.next.href`), `None` on the last page.
    pub next: Option<String>,
    /// The total the API reported (`contacts_count`, `lists_count`) when
    /// asked with `include_count=true`.
    pub count: Option<u64>,
}

/// The answer of a listing: items under [`Listed::KEY`], `_links.next.href`,
/// the count, and the `status: processing` of a 202.
/// `I` is what each item is decoded as: `T`, or a raw record
/// (`&RawValue`) to decode on its own.
pub(crate) struct Envelope<T, I = T> {
    pub(crate) items: Vec<I>,
    pub(crate) next: Option<String>,
    pub(crate) count: Option<u64>,
    pub(crate) processing: bool,
    _t: PhantomData<fn() -> T>,
}

#[derive(Deserialize)]
struct Links {
    #[serde(default)]
    next: Option<Href>,
}

#[derive(Deserialize)]
struct Href {
    href: String,
}

impl<'de, T: Listed, I: Deserialize<'de>> Deserialize<'de> for Envelope<T, I> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T, I>(PhantomData<(fn() -> T, I)>);
        impl<'de, T: Listed, I: Deserialize<'de>> Visitor<'de> for V<T, I> {
            type Value = Envelope<T, I>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an object with `{}`", T::KEY)
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Envelope<T, I>, A::Error> {
                let mut env = Envelope {
                    items: Vec::new(),
                    next: None,
                    count: None,
                    processing: false,
                    _t: PhantomData,
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == T::KEY {
                        env.items = map.next_value::<Option<Vec<I>>>()?.unwrap_or_default();
                    } else if key == "_links" {
                        env.next = map
                            .next_value::<Option<Links>>()?
                            .and_then(|l| l.next)
                            .map(|n| n.href)
                            .filter(|h| !h.is_empty());
                    } else if T::COUNT_KEY == Some(key.as_str()) {
                        env.count = map.next_value()?;
                    } else if key == "status" {
                        env.processing =
                            map.next_value::<Option<String>>()?.as_deref() == Some("processing");
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A listing request. Nothing is sent until [`ListRequest::pages`] or
/// [`ListRequest::stream`] is polled.
#[derive(Debug, Clone)]
pub struct ListRequest<T> {
    cc: ConstantContact,
    query: Vec<(String, String)>,
    limit: u32,
    start: Option<String>,
    _t: PhantomData<fn() -> T>,
}

/// ISO 8601 with milliseconds, as the time filters take it.
fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl<T: Listed> ListRequest<T> {
    fn new(cc: &ConstantContact) -> Self {
        ListRequest {
            cc: cc.clone(),
            query: Vec::new(),
            limit: T::MAX_LIMIT,
            start: None,
            _t: PhantomData,
        }
    }

    /// Page size (clamped to what the listing takes; default its maximum).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit.clamp(1, T::MAX_LIMIT);
        self
    }

    /// Any query parameter the listing takes (replaces one of that name).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.query.retain(|(k, _)| *k != name);
        self.query.push((name, value.into()));
        self
    }

    /// Starts at a page's `_links.next.href` (from a previous page) instead
    /// of the first page.
    pub fn start_at(mut self, next_href: Option<String>) -> Self {
        self.start = next_href;
        self
    }

    /// The first page's URL.
    fn first_url(&self) -> Result<Url> {
        let mut url = self.cc.client.url(T::PATH)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &self.limit.to_string());
            for (k, v) in &self.query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// The pages, each with the next page's link. A repeated link ends the
    /// stream with [`Error::CursorRepeated`].
    pub fn pages(self) -> impl Stream<Item = Result<ListPage<T>>> + Send + 'static {
        self.lenient_pages().and_then(|(page, rejected)| {
            futures::future::ready(lenient::refuse(PROVIDER, T::PATH, rejected).map(|()| page))
        })
    }

    /// The pages, each with the records that could not be decoded (kept raw
    /// for the quarantine instead of failing the page).
    pub(crate) fn lenient_pages(
        self,
    ) -> impl Stream<Item = Result<(ListPage<T>, Vec<Rejected>)>> + Send + 'static {
        let first = self.first_url();
        let ListRequest { cc, start, .. } = self;
        let mut page_no = 0u64;
        paginate(PROVIDER, T::PATH, start, move |href: Option<String>| {
            let cc = cc.clone();
            let first = first.as_ref().map(Clone::clone).map_err(|e| e.to_string());
            page_no += 1;
            let n = page_no;
            async move {
                let url = match &href {
                    Some(h) => cc.next_url(h)?,
                    None => first.map_err(Error::Config)?,
                };
                let (page, rejected) = cc
                    .fetch_page::<T>(url, &format!("{} page {n}", T::PATH))
                    .await?;
                let next = page.next.clone();
                Ok(Paged::new(vec![(page.items, page.count, rejected)], next))
            }
        })
        .map_ok(|mut p| {
            let (items, count, rejected) = p.items.pop().unwrap_or_default();
            (
                ListPage {
                    items,
                    next: p.next,
                    count,
                },
                rejected,
            )
        })
    }

    /// The items one by one.
    pub fn stream(self) -> impl Stream<Item = Result<T>> + Send + 'static {
        self.pages()
            .map_ok(|p| futures::stream::iter(p.items.into_iter().map(Ok)))
            .try_flatten()
    }
}

impl ListRequest<Contact> {
    /// `status`: `all` (deleted contacts too), `active`, `deleted`,
    /// `not_set`, `pending_confirmation`, `temp_hold`, `unsubscribed`
    /// (comma-separated for several). Default: every status but deleted.
    pub fn status(self, status: &str) -> Self {
        self.param("status", status)
    }

    /// Sub-resources to include: `custom_fields`, `list_memberships`,
    /// `taggings`, `notes`, `phone_numbers`, `street_addresses`.
    pub fn include<I: IntoIterator<Item = S>, S: AsRef<str>>(self, include: I) -> Self {
        let v: Vec<String> = include.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self.param("include", v.join(","))
    }

    /// Only contacts updated after `t`.
    pub fn updated_after(self, t: DateTime<Utc>) -> Self {
        self.param("updated_after", iso(t))
    }

    /// Only contacts updated before `t` (newer API versions).
    pub fn updated_before(self, t: DateTime<Utc>) -> Self {
        self.param("updated_before", iso(t))
    }

    /// Only contacts of a segment; the API may answer 202 until the segment
    /// is computed, which is asked again (see
    /// [`ConstantContactBuilder::accepted_retry`]).
    pub fn segment_id(self, segment_id: &str) -> Self {
        self.param("segment_id", segment_id)
    }

    /// Ask for the total (`contacts_count`, in [`ListPage::count`]).
    pub fn include_count(self) -> Self {
        self.param("include_count", "true")
    }
}

impl ListRequest<ContactList> {
    /// Ask for the total (`lists_count`, in [`ListPage::count`]).
    pub fn include_count(self) -> Self {
        self.param("include_count", "true")
    }
}

impl ListRequest<EmailCampaign> {
    /// Only campaigns updated after `t`.
    pub fn after_date(self, t: DateTime<Utc>) -> Self {
        self.param("after_date", iso(t))
    }

    /// Only campaigns updated before `t`.
    pub fn before_date(self, t: DateTime<Utc>) -> Self {
        self.param("before_date", iso(t))
    }
}
