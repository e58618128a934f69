//! Mailchimp Marketing API 3.0: a typed SDK ([`Mailchimp`]) and the
//! [`MailchimpSource`] the sync engine uses, on one shared [`ApiClient`].
//!
//! ```no_run
//! # async fn run() -> headwater::Result<()> {
//! use futures::TryStreamExt;
//! use headwater::mailchimp::Mailchimp;
//!
//! // An API key (`key-dc`): requests go to the key's data centre.
//! let mc = Mailchimp::builder()
//!     .api_key("0123456789abcdef0123456789abcdef-us6".into())
//!     .build()?;
//! let account = mc.account().await?;
//! for audience in mc.audiences().stream().try_collect::<Vec<_>>().await? {
//!     let members: Vec<_> = mc.members(&audience.id).stream().try_collect().await?;
//!     println!("{} / {}: {} members", account.account_id, audience.name, members.len());
//! }
//! # Ok(()) }
//! ```
//!
//! # Connecting
//! - **API key** (`0123…-us6`): [`MailchimpBuilder::api_key`]; the base URL
//!   becomes `https://{dc}.api.mailchimp.com/3.0/` from the key's suffix.
//! - **OAuth 2.0**: [`oauth_config`] for [`crate::auth::OAuthClient`]
//!   (authorize, callback check, code exchange), then
//!   [`MailchimpBuilder::access_token`]. Mailchimp's tokens never expire and
//!   there is no refresh token: a token that stops working was revoked, and
//!   the client reports a 401 as [`crate::AuthErrorKind::Reauthorize`].
//!   Mailchimp now documents `https://api.mailchimp.com/3.0/` for every
//!   account (the default for tokens); the legacy data-centre host comes
//!   from [`oauth_metadata`] and [`MailchimpBuilder::metadata`].
//!
//! # Limits
//! Mailchimp allows 10 simultaneous connections per user and documents no
//! per-second or daily quota; the client keeps at most
//! [`MAX_CONNECTIONS`] requests in flight (clones of a client share them)
//! and backs off on 429. Calls time out after 120 s at Mailchimp.
//!
//! # Paging
//! Collections page by `count` (at most [`MAX_COUNT`]) and `offset` and
//! report `total_items`; listings request `exclude_fields=…_links` so the
//! hypermedia links Mailchimp adds to every object are not transferred.

mod models;
pub(crate) mod source;
mod window;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use url::Url;

pub use models::{
    Account, Audience, AudienceStats, Automation, AutomationEmail, Bounces, Campaign,
    CampaignRecipients, CampaignReport, CampaignSettings, Clicks, Member, MemberStats, MergeField,
    OAuthMetadata, Opens, ReportSummary, Tag,
};
pub use source::{
    merge_field_type, MailchimpSource, DEFAULT_REREAD_WINDOW, DEFAULT_SETTLE_LAG,
    STREAM_AUTOMATIONS, STREAM_AUTOMATION_EMAILS, STREAM_CAMPAIGNS, STREAM_LISTS,
    STREAM_LIST_MEMBERS, STREAM_REPORTS,
};

use crate::auth::{AccessTokenSource, ClientAuth, OAuthConfig, StaticToken};
use crate::error::{ApiErrorBody, AuthErrorKind};
use crate::http::{default_http_client, ApiClient, Limits, RequestStats, RetryConfig};
use crate::paginate::{paginate_offset, OffsetPage, Paged};
use crate::{Error, Result};

/// The subscriber hash that addresses a member of an audience, as
/// Mailchimp computes it: the MD5 of the lower-cased email, in lower-case
/// hex (`lists/{list_id}/members/{subscriber_hash}`).
pub fn subscriber_hash(email: &str) -> String {
    use md5::Digest;
    format!(
        "{:x}",
        md5::Md5::digest(email.trim().to_lowercase().as_bytes())
    )
}

/// The provider name used in errors and records.
pub const PROVIDER: &str = "mailchimp";
/// The API's address for every account, as Mailchimp now documents it.
pub const DEFAULT_BASE_URL: &str = "https://api.mailchimp.com/3.0/";
/// The legacy OAuth metadata endpoint (data centre and API host of a token).
pub const METADATA_URL: &str = "https://login.mailchimp.com/oauth2/metadata";
/// Mailchimp's OAuth authorize page.
pub const AUTHORIZE_URL: &str = "https://login.mailchimp.com/oauth2/authorize";
/// Mailchimp's OAuth token endpoint.
pub const TOKEN_URL: &str = "https://login.mailchimp.com/oauth2/token";
/// The largest page (`count`) a collection serves.
pub const MAX_COUNT: u32 = 1000;
/// Simultaneous connections Mailchimp allows per user.
pub const MAX_CONNECTIONS: usize = 10;
/// Mailchimp's own timeout for an API call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The data centre of an API key: the part after its last `-`
/// (`0123…-us6` → `us6`). A key without one, or with a suffix that is not
/// letters followed by digits, is a [`Error::Config`].
pub fn data_center(api_key: &str) -> Result<&str> {
    let bad = |why: &str| {
        Error::Config(format!(
            "not a Mailchimp API key ({why}): keys look like `<32 hex characters>-us6`"
        ))
    };
    let (key, dc) = api_key
        .trim()
        .rsplit_once('-')
        .ok_or_else(|| bad("no `-dc` suffix"))?;
    if key.is_empty() {
        return Err(bad("nothing before the data centre"));
    }
    let letters = dc.bytes().take_while(u8::is_ascii_lowercase).count();
    let digits = &dc[letters..];
    if letters == 0 || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the suffix is not a data centre such as `us6`"));
    }
    Ok(dc)
}

/// The API base URL of a data centre: `https://{dc}.api.mailchimp.com/3.0/`.
pub fn data_center_base_url(dc: &str) -> Result<Url> {
    Url::parse(&format!("https://{dc}.api.mailchimp.com/3.0/"))
        .map_err(|e| Error::Config(format!("bad Mailchimp data centre `{dc}`: {e}")))
}

/// Mailchimp's OAuth endpoints (`login.mailchimp.com/oauth2/authorize` and
/// `/oauth2/token`) for an app, client credentials in the form body. Mailchimp
/// has no scopes; add the redirect URL the app registered with
/// [`OAuthConfig::with_redirect_url`].
///
/// The token answer carries `expires_in: 0` although the token never
/// expires: take its `access_token` into [`MailchimpBuilder::access_token`]
/// rather than into a refreshing [`crate::auth::TokenProvider`].
pub fn oauth_config(client_id: impl Into<String>, client_secret: SecretString) -> OAuthConfig {
    OAuthConfig {
        provider: PROVIDER,
        client_id: client_id.into(),
        client_secret: Some(client_secret),
        auth_url: Url::parse(AUTHORIZE_URL).expect("static URL"),
        token_url: Url::parse(TOKEN_URL).expect("static URL"),
        redirect_url: None,
        scopes: Vec::new(),
        optional_scopes: Vec::new(),
        client_auth: ClientAuth::RequestBody,
        pkce: false,
    }
}

/// Asks the legacy metadata endpoint ([`METADATA_URL`]) which data centre
/// and API host an OAuth token belongs to.
pub async fn oauth_metadata(token: &SecretString) -> Result<OAuthMetadata> {
    oauth_metadata_at(METADATA_URL, token, RetryConfig::default()).await
}

/// [`oauth_metadata`] at another address (a proxy, a fake): `GET url` with
/// `Authorization: OAuth <token>`, retrying 429 and 5xx.
pub async fn oauth_metadata_at(
    url: &str,
    token: &SecretString,
    retry: RetryConfig,
) -> Result<OAuthMetadata> {
    let url = Url::parse(url)
        .map_err(|e| Error::Config(format!("bad Mailchimp metadata URL `{url}`: {e}")))?;
    let http = default_http_client(Duration::from_secs(30))?;
    let mut auth = HeaderValue::from_str(&format!("OAuth {}", token.expose_secret()))
        .map_err(|_| Error::Config("access token is not a valid header value".into()))?;
    auth.set_sensitive(true);
    let path = url.path().to_owned();
    let mut retries = 0;
    loop {
        let request = http.get(url.clone()).header(AUTHORIZATION, auth.clone());
        let (status, body) = match crate::http::send_request(request, MAX_METADATA_BYTES).await {
            Ok(r) => (r.status.as_u16(), r.body),
            Err(e) if e.is_retryable() && retries < retry.max_retries => {
                tracing::debug!(error = %e, "metadata: transport error, retrying");
                retries += 1;
                tokio::time::sleep(retry.backoff(retries - 1)).await;
                continue;
            }
            Err(e) => return Err(e.into_error(PROVIDER, path)),
        };
        match status {
            200..=299 => {
                return Error::decode(PROVIDER, || "OAuth metadata".into(), &body);
            }
            401 | 403 => {
                return Err(Error::Auth {
                    provider: PROVIDER,
                    kind: AuthErrorKind::Reauthorize,
                    message: ApiErrorBody::parse(&body).to_string(),
                })
            }
            429 | 500..=599 if retries < retry.max_retries => {
                retries += 1;
                tokio::time::sleep(retry.backoff(retries - 1)).await;
            }
            _ => {
                return Err(Error::Api {
                    provider: PROVIDER,
                    status,
                    method: "GET".into(),
                    path,
                    body: Box::new(ApiErrorBody::parse(&body)),
                })
            }
        }
    }
}

/// The most bytes of a metadata answer (a few hundred in practice).
const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// Builds a [`Mailchimp`] client.
#[derive(Debug, Default)]
pub struct MailchimpBuilder {
    base_url: Option<String>,
    auth: Option<Arc<dyn AccessTokenSource>>,
    key_dc: Option<Result<String>>,
    retry: Option<RetryConfig>,
    limits: Option<Limits>,
    timeout: Option<Duration>,
    max_response_bytes: Option<u64>,
}

impl MailchimpBuilder {
    /// Authenticate with an API key (`<key>-<dc>`). Unless a base URL is
    /// set, requests go to the key's data centre,
    /// `https://{dc}.api.mailchimp.com/3.0/`; a key without a valid `-dc`
    /// suffix fails [`MailchimpBuilder::build`] with [`Error::Config`].
    /// A refused key is [`AuthErrorKind::Rejected`].
    pub fn api_key(mut self, key: SecretString) -> Self {
        self.key_dc = Some(data_center(key.expose_secret()).map(str::to_owned));
        self.auth = Some(Arc::new(StaticToken::new(key)));
        self
    }

    /// Authenticate with an OAuth access token. Mailchimp's tokens do not
    /// expire and cannot be refreshed, so a 401 means the user revoked the
    /// app: it is reported as [`AuthErrorKind::Reauthorize`].
    pub fn access_token(mut self, token: SecretString) -> Self {
        self.key_dc = None;
        self.auth = Some(Arc::new(StaticToken::revocable(token)));
        self
    }

    /// Authenticate with any token source.
    pub fn token_source(mut self, source: Arc<dyn AccessTokenSource>) -> Self {
        self.key_dc = None;
        self.auth = Some(source);
        self
    }

    /// The API's address, ending in `/3.0/` (default: the API key's data
    /// centre, or [`DEFAULT_BASE_URL`] for OAuth tokens): a proxy, a fake, a
    /// data-centre host.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sends requests to a data centre's host (`us6` →
    /// `https://us6.api.mailchimp.com/3.0/`).
    pub fn data_center(mut self, dc: &str) -> Self {
        self.base_url = Some(format!("https://{dc}.api.mailchimp.com/3.0/"));
        self
    }

    /// Sends requests to the API host the legacy metadata endpoint named
    /// (`api_endpoint` + `/3.0/`).
    pub fn metadata(mut self, metadata: &OAuthMetadata) -> Self {
        self.base_url = Some(format!(
            "{}/3.0/",
            metadata.api_endpoint.trim_end_matches('/')
        ));
        self
    }

    /// Retry policy (default [`RetryConfig::default`]).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Limits (default: at most [`MAX_CONNECTIONS`] requests in flight, no
    /// rate limit: `Limits::none().with_concurrency(10)`).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Request timeout (default [`DEFAULT_TIMEOUT`], Mailchimp's own).
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
    pub fn build(self) -> Result<Mailchimp> {
        let auth = self.auth.ok_or_else(|| Error::Auth {
            provider: PROVIDER,
            kind: AuthErrorKind::Missing,
            message: "no credentials: set an API key or an OAuth access token".into(),
        })?;
        let key_dc = self.key_dc.transpose()?;
        let base_url = match (self.base_url, key_dc) {
            (Some(base), _) => Url::parse(&base)
                .map_err(|e| Error::Config(format!("bad Mailchimp base URL `{base}`: {e}")))?,
            (None, Some(dc)) => data_center_base_url(&dc)?,
            (None, None) => Url::parse(DEFAULT_BASE_URL)
                .map_err(|e| Error::Config(format!("bad default base URL: {e}")))?,
        };
        let limits = self
            .limits
            .unwrap_or_else(|| Limits::none().with_concurrency(MAX_CONNECTIONS));
        let http = default_http_client(self.timeout.unwrap_or(DEFAULT_TIMEOUT))?;
        let client = ApiClient::new(
            PROVIDER,
            http,
            base_url,
            auth,
            self.retry.unwrap_or_default(),
            limits,
        );
        let client = match self.max_response_bytes {
            Some(n) => client.with_max_response_bytes(n),
            None => client,
        };
        Ok(Mailchimp { client })
    }
}

/// A Mailchimp Marketing API client for one account. Cheap to clone; clones
/// share the connection limit.
#[derive(Debug, Clone)]
pub struct Mailchimp {
    client: ApiClient,
}

impl Mailchimp {
    /// A builder.
    pub fn builder() -> MailchimpBuilder {
        MailchimpBuilder::default()
    }

    /// The shared API client underneath.
    pub fn api_client(&self) -> &ApiClient {
        &self.client
    }

    /// Requests, retries and waits so far.
    pub fn stats(&self) -> RequestStats {
        self.client.stats()
    }

    /// The account (`GET /`): id, name, login, email.
    pub async fn account(&self) -> Result<Account> {
        let url = self.client.url("")?;
        self.client.get_json(url, || "API root".into()).await
    }

    /// The raw account answer, for [`crate::source::AccountInfo::details`].
    pub(crate) async fn account_raw(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut url = self.client.url("")?;
        url.query_pairs_mut()
            .append_pair("exclude_fields", "_links");
        self.client.get_json(url, || "API root".into()).await
    }

    /// Audiences (`GET /lists`).
    pub fn audiences(&self) -> ListRequest<Audience> {
        ListRequest::new(self.clone(), "lists".into(), "lists")
    }

    /// Members of an audience (`GET /lists/{list_id}/members`).
    pub fn members(&self, list_id: &str) -> ListRequest<Member> {
        ListRequest::new(
            self.clone(),
            format!("lists/{}/members", enc(list_id)),
            "members",
        )
    }

    /// Merge fields of an audience (`GET /lists/{list_id}/merge-fields`).
    pub fn merge_fields(&self, list_id: &str) -> ListRequest<MergeField> {
        ListRequest::new(
            self.clone(),
            format!("lists/{}/merge-fields", enc(list_id)),
            "merge_fields",
        )
    }

    /// Campaigns (`GET /campaigns`).
    pub fn campaigns(&self) -> ListRequest<Campaign> {
        ListRequest::new(self.clone(), "campaigns".into(), "campaigns")
    }

    /// Campaign reports (`GET /reports`).
    pub fn reports(&self) -> ListRequest<CampaignReport> {
        ListRequest::new(self.clone(), "reports".into(), "reports")
    }

    /// One campaign's report (`GET /reports/{campaign_id}`).
    pub async fn report(&self, campaign_id: &str) -> Result<CampaignReport> {
        let mut url = self.client.url(&format!("reports/{}", enc(campaign_id)))?;
        url.query_pairs_mut()
            .append_pair("exclude_fields", "_links");
        self.client
            .get_json(url, || format!("report of campaign `{campaign_id}`"))
            .await
    }

    /// Classic automations (`GET /automations`).
    pub fn automations(&self) -> ListRequest<Automation> {
        ListRequest::new(self.clone(), "automations".into(), "automations")
    }

    /// The emails of an automation (`GET /automations/{workflow_id}/emails`,
    /// one unpaged answer).
    pub async fn automation_emails(&self, workflow_id: &str) -> Result<Vec<AutomationEmail>> {
        let mut url = self
            .client
            .url(&format!("automations/{}/emails", enc(workflow_id)))?;
        url.query_pairs_mut()
            .append_pair("exclude_fields", "emails._links,_links");
        let bytes = get_bytes(&self.client, url).await?;
        let c: Collection<AutomationEmail> = decode_collection(&bytes, "emails", || {
            format!("emails of automation `{workflow_id}`")
        })?;
        Ok(c.items)
    }
}

/// Percent-encodes one path segment.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A time as Mailchimp's filters take it: `2015-10-21T15:41:36+00:00`.
pub(crate) fn api_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// One page of a collection: its items and `total_items`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Collection<T> {
    /// The items (under the collection's key: `members`, `lists`, …).
    pub items: Vec<T>,
    /// How many items the whole collection (with its filters) holds.
    pub total_items: Option<u64>,
}

/// Decodes a collection answer whose items are under `key`, naming the
/// JSON path of a failure (`members[3].last_changed`).
pub(crate) fn decode_collection<T: DeserializeOwned>(
    bytes: &[u8],
    key: &'static str,
    what: impl FnOnce() -> String,
) -> Result<Collection<T>> {
    let seed = CollectionSeed::<T> {
        key,
        _t: PhantomData,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    if let Ok(c) = seed.deserialize(&mut de).and_then(|c| de.end().map(|()| c)) {
        return Ok(c);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let seed = CollectionSeed::<T> {
        key,
        _t: PhantomData,
    };
    let result = seed
        .deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
        .and_then(|c| de.end().map(|()| c));
    result.map_err(|e| Error::Decode {
        provider: PROVIDER,
        what: what(),
        path: track.path().to_string(),
        message: e.to_string(),
    })
}

struct CollectionSeed<T> {
    key: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for CollectionSeed<T> {
    type Value = Collection<T>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for CollectionSeed<T> {
    type Value = Collection<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a Mailchimp collection with `{}`", self.key)
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut items = None;
        let mut total_items = None;
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key {
                items = Some(map.next_value::<Vec<T>>()?);
            } else if k == "total_items" {
                total_items = map.next_value::<Option<u64>>()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        let items = items.ok_or_else(|| serde::de::Error::missing_field(self.key))?;
        Ok(Collection { items, total_items })
    }
}

/// GETs `url` and returns the body.
pub(crate) async fn get_bytes(client: &ApiClient, url: Url) -> Result<bytes::Bytes> {
    let resp = client
        .send(crate::http::ApiRequest::new(reqwest::Method::GET, url))
        .await?;
    Ok(resp.body)
}

/// Sort direction of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SortDir {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

impl SortDir {
    fn as_str(self) -> &'static str {
        match self {
            SortDir::Asc => "ASC",
            SortDir::Desc => "DESC",
        }
    }
}

/// A listing request of one collection. Nothing is sent until
/// [`ListRequest::send`], [`ListRequest::pages`] or [`ListRequest::stream`].
///
/// Pages hold [`MAX_COUNT`] items by default; `_links` are excluded.
#[derive(Debug, Clone)]
pub struct ListRequest<T> {
    mc: Mailchimp,
    path: String,
    key: &'static str,
    params: Vec<(String, String)>,
    offset: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send + 'static> ListRequest<T> {
    fn new(mc: Mailchimp, path: String, key: &'static str) -> Self {
        ListRequest {
            mc,
            path,
            key,
            params: vec![
                ("count".into(), MAX_COUNT.to_string()),
                ("exclude_fields".into(), format!("{key}._links,_links")),
            ],
            offset: 0,
            _t: PhantomData,
        }
    }

    /// Sets a query parameter (replacing an earlier value of the same name):
    /// any filter the endpoint documents (`status`, `type`, `list_id`, …).
    pub fn param(mut self, name: &str, value: impl Into<String>) -> Self {
        self.params.retain(|(k, _)| k != name);
        self.params.push((name.to_owned(), value.into()));
        self
    }

    /// Page size, 1 to [`MAX_COUNT`] (default [`MAX_COUNT`]).
    pub fn count(self, count: u32) -> Self {
        self.param("count", count.clamp(1, MAX_COUNT).to_string())
    }

    /// Start at this offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// A time filter (`since_last_changed`, `before_send_time`, …).
    pub fn time_filter(self, name: &str, t: DateTime<Utc>) -> Self {
        self.param(name, api_time(t))
    }

    /// Sorts by `field` (`last_changed`, `create_time`, `date_created`, …;
    /// each endpoint documents which it takes).
    pub fn sort(self, field: &str, dir: SortDir) -> Self {
        self.param("sort_field", field)
            .param("sort_dir", dir.as_str())
    }

    fn page_size(&self) -> u32 {
        self.params
            .iter()
            .find(|(k, _)| k == "count")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(MAX_COUNT)
    }

    fn url_at(&self, offset: u64) -> Result<Url> {
        let mut url = self.mc.client.url(&self.path)?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &self.params {
                q.append_pair(k, v);
            }
            q.append_pair("offset", &offset.to_string());
        }
        Ok(url)
    }

    /// Sends one request: the page at the offset.
    pub async fn send(self) -> Result<Collection<T>> {
        fetch_page(
            &self.mc,
            self.url_at(self.offset)?,
            self.key,
            &self.path,
            self.offset,
        )
        .await
    }

    /// The pages, each with the offset of the next.
    pub fn pages(self) -> impl Stream<Item = Result<Paged<T, u64>>> + Send + 'static {
        let page_size = self.page_size();
        let what = self.path.clone();
        let start = self.offset;
        let req = Arc::new(self);
        paginate_offset(PROVIDER, what, start, page_size, move |offset| {
            let req = req.clone();
            async move {
                let url = req.url_at(offset)?;
                let c: Collection<T> = fetch_page(&req.mc, url, req.key, &req.path, offset).await?;
                Ok(OffsetPage::new(c.items, c.total_items))
            }
        })
    }

    /// The items one by one.
    pub fn stream(self) -> impl Stream<Item = Result<T>> + Send + 'static {
        self.pages()
            .map_ok(|p| futures::stream::iter(p.items.into_iter().map(Ok)))
            .try_flatten()
    }
}

impl ListRequest<Member> {
    /// Members whose information changed at or after `t`.
    pub fn since_last_changed(self, t: DateTime<Utc>) -> Self {
        self.time_filter("since_last_changed", t)
    }

    /// Members whose information changed before `t`.
    pub fn before_last_changed(self, t: DateTime<Utc>) -> Self {
        self.time_filter("before_last_changed", t)
    }

    /// Members with this status (`subscribed`, `archived`, …).
    pub fn status(self, status: &str) -> Self {
        self.param("status", status)
    }
}

impl ListRequest<Campaign> {
    /// Campaigns created at or after `t`.
    pub fn since_create_time(self, t: DateTime<Utc>) -> Self {
        self.time_filter("since_create_time", t)
    }

    /// Campaigns sent at or after `t`.
    pub fn since_send_time(self, t: DateTime<Utc>) -> Self {
        self.time_filter("since_send_time", t)
    }
}

impl ListRequest<CampaignReport> {
    /// Reports of campaigns sent at or after `t`.
    pub fn since_send_time(self, t: DateTime<Utc>) -> Self {
        self.time_filter("since_send_time", t)
    }
}

/// GETs one collection page and decodes it, naming the page in errors.
async fn fetch_page<T: DeserializeOwned>(
    mc: &Mailchimp,
    url: Url,
    key: &'static str,
    path: &str,
    offset: u64,
) -> Result<Collection<T>> {
    let bytes = get_bytes(&mc.client, url).await?;
    decode_collection(&bytes, key, || format!("{path} page at offset {offset}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_hashes_are_the_md5_of_the_lower_cased_email() {
        // RFC 1321's test vector for "abc".
        assert_eq!(subscriber_hash(" ABC "), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            subscriber_hash("Urist.McVankab@freddiesjokes.com"),
            subscriber_hash("urist.mcvankab@freddiesjokes.com")
        );
    }

    #[test]
    fn api_keys_route_to_their_data_centre() {
        assert_eq!(
            data_center("0123456789abcdef0123456789abcdef-us6").expect("dc"),
            "us6"
        );
        assert_eq!(data_center("abc-us21").expect("dc"), "us21");
        for bad in [
            "0123456789abcdef",
            "-us6",
            "abc-",
            "abc-6us",
            "abc-us",
            "abc-US6",
            "abc-us6x",
        ] {
            assert!(
                matches!(data_center(bad), Err(Error::Config(_))),
                "`{bad}` must be refused"
            );
        }
        let mc = Mailchimp::builder()
            .api_key("0123456789abcdef0123456789abcdef-us6".into())
            .build()
            .expect("client");
        assert_eq!(
            mc.api_client().base_url().as_str(),
            "https://us6.api.mailchimp.com/3.0/"
        );
        // An explicit base URL wins over the key's data centre.
        let mc = Mailchimp::builder()
            .api_key("k-us6".into())
            .base_url("http://127.0.0.1:9/3.0/")
            .build()
            .expect("client");
        assert_eq!(
            mc.api_client().base_url().as_str(),
            "http://127.0.0.1:9/3.0/"
        );
        // OAuth tokens go to the single documented host by default.
        let mc = Mailchimp::builder()
            .access_token("token".into())
            .build()
            .expect("client");
        assert_eq!(mc.api_client().base_url().as_str(), DEFAULT_BASE_URL);
        let err = Mailchimp::builder()
            .api_key("no-suffix-here-".into())
            .build()
            .expect_err("bad key");
        assert!(matches!(err, Error::Config(_)), "{err}");
        // The default limit: 10 in flight, no rate limit.
        let limits = Mailchimp::builder()
            .access_token("t".into())
            .build()
            .expect("client")
            .api_client()
            .limits()
            .clone();
        assert_eq!(limits, Limits::none().with_concurrency(MAX_CONNECTIONS));
        // The key never shows in Debug output.
        let dbg = format!(
            "{:?}",
            Mailchimp::builder()
                .api_key("sekrit-us6".into())
                .build()
                .expect("client")
        );
        assert!(!dbg.contains("sekrit"), "{dbg}");
    }

    #[test]
    fn collections_decode_with_paths() {
        let c: Collection<Tag> = decode_collection(
            br#"{"tags":[{"id":1,"name":"a"}],"total_items":7,"_links":[]}"#,
            "tags",
            || "tags".into(),
        )
        .expect("decode");
        assert_eq!(c.total_items, Some(7));
        assert_eq!(c.items.len(), 1);
        let err = decode_collection::<Tag>(
            br#"{"tags":[{"id":1,"name":"a"},{"id":"x","name":"b"}],"total_items":2}"#,
            "tags",
            || "tags page".into(),
        )
        .expect_err("bad id");
        match err {
            Error::Decode { path, what, .. } => {
                assert_eq!(path, "tags[1].id");
                assert_eq!(what, "tags page");
            }
            other => panic!("{other}"),
        }
        let err = decode_collection::<Tag>(br#"{"total_items":2}"#, "tags", || "t".into())
            .expect_err("missing");
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    #[test]
    fn oauth_config_points_at_login_mailchimp() {
        let c = oauth_config("client", "secret".into());
        assert_eq!(c.auth_url.as_str(), AUTHORIZE_URL);
        assert_eq!(c.token_url.as_str(), TOKEN_URL);
        assert_eq!(c.client_auth, ClientAuth::RequestBody);
        assert!(!c.pkce);
        assert_eq!(
            api_time("2024-03-01T10:00:05Z".parse().expect("t")),
            "2024-03-01T10:00:05+00:00"
        );
    }
}
