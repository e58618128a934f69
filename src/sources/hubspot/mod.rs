//! `HubSpot`: a typed SDK (`HubSpot`) and the [`HubSpotSource`] the sync engine
//! uses, on one shared [`ApiClient`].
//!
//! ```no_run
//! # async fn run() -> headwater::Result<()> {
//! use futures::TryStreamExt;
//! use headwater::hubspot::HubSpot;
//!
//! let hubspot = HubSpot::builder()
//!     .private_app_token("pat-na1-…".into())
//!     .build()?;
//! let contacts: Vec<_> = hubspot.contacts().list().stream().try_collect().await?;
//! println!("{} contacts", contacts.len());
//! # Ok(()) }
//! ```
//!
//! # Request plan for properties
//! A list call names the properties it wants in the URL
//! (`?properties=a,b,c`); portals with hundreds of custom properties make
//! that URL too long and `HubSpot` answers 414. Splitting the properties over
//! several GETs costs one call per chunk per page, so headwater picks, per
//! listing, the plan with the fewest calls:
//! - properties fit in [`MAX_PROPERTIES_QUERY_LEN`] bytes: one `GET` per page
//!   of 100 (one call per 100 records);
//! - they do not: a `GET` of ids (`properties=hs_object_id`) and a
//!   `POST …/batch/read` with the properties in the body: two calls per 100
//!   records, whatever the number of properties (chunked GETs would need at
//!   least two, and a merge).
//!
//! The search endpoint (one call per 200 records, properties in the body) is
//! kept for incremental reads, since it cannot list archived records and has
//! its own, lower rate limit.
//!
//! # Associations, plans, quotas
//! [`associations`] reads the associations between records in batches of
//! 1,000 through the v4 API; [`HubSpotSource`] offers them as streams
//! (`contacts_to_companies`, …) read again on a schedule. Before a sync,
//! `Source::plan` says how many calls it will make and how long the
//! client's limits make it take; [`HubSpotBuilder::daily_limit`] makes the
//! client count a private app's daily quota and stop cleanly when it is
//! spent.

pub mod associations;
mod models;
mod plan;
pub(crate) mod source;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

pub use associations::{
    association_stream_name, AssociatedObject, Association, AssociationType, Associations,
    DEFAULT_ASSOCIATIONS, DEFAULT_ASSOCIATION_REFRESH, MAX_ASSOCIATION_BATCH,
};
pub use models::{
    AccessTokenInfo, AccountDetails, Company, Contact, CrmObject, Deal, Owner, Pipeline,
    PipelineStage, PropertyDefinition, Ticket,
};
pub use source::{
    decode_list_page, property_field_type, HubSpotSource, STREAM_DEAL_PIPELINES, STREAM_OWNERS,
    STREAM_TICKET_PIPELINES,
};

use crate::auth::{AccessTokenSource, StaticToken, TokenProvider};
use crate::http::{
    default_http_client, ApiClient, ApiRequest, DailyLimit, Limits, RateLimit, RequestClass,
    RequestStats, RetryConfig,
};
use crate::paginate::{paginate, Paged};
use crate::source::Rejected;
use crate::sources::lenient;
use crate::{Error, Result};
use serde_json::value::RawValue;

/// The provider name used in errors and records.
pub const PROVIDER: &str = "hubspot";
/// `HubSpot`'s API address.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";
/// Longest `properties=` query value a list call sends before switching to
/// list-ids-then-batch-read (see the module docs).
pub const MAX_PROPERTIES_QUERY_LEN: usize = 6_000;
/// Largest page of the v3 list endpoints.
pub const MAX_LIST_LIMIT: u32 = 100;
/// Largest batch of a batch read.
pub const MAX_BATCH_READ: usize = 100;

/// `HubSpot`'s documented limit for private apps (Professional and
/// Enterprise): 190 requests per rolling 10 seconds.
pub const PRIVATE_APP_LIMIT: RateLimit = RateLimit::new(190, Duration::from_secs(10));
/// `HubSpot`'s documented limit for OAuth apps: 100 requests per 10 seconds
/// per account.
pub const OAUTH_APP_LIMIT: RateLimit = RateLimit::new(100, Duration::from_secs(10));
/// CRM search: 4 requests per second per token.
pub const SEARCH_LIMIT: RateLimit = RateLimit::per_second(4);

/// A CRM model with a fixed object type and a default property set.
pub trait CrmModel: From<CrmObject> + Send + 'static {
    /// The object type in URLs (`contacts`).
    const OBJECT_TYPE: &'static str;
    /// Properties requested by default.
    const PROPERTIES: &'static [&'static str];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    PrivateApp,
    OAuth,
}

/// Builds a [`HubSpot`] client.
#[derive(Debug, Default)]
pub struct HubSpotBuilder {
    base_url: Option<String>,
    auth: Option<(Arc<dyn AccessTokenSource>, AuthKind)>,
    retry: Option<RetryConfig>,
    limits: Option<Limits>,
    daily: Option<DailyLimit>,
    timeout: Option<Duration>,
    max_response_bytes: Option<u64>,
}

impl HubSpotBuilder {
    /// Authenticate with a private-app access token.
    pub fn private_app_token(mut self, token: SecretString) -> Self {
        self.auth = Some((Arc::new(StaticToken::new(token)), AuthKind::PrivateApp));
        self
    }

    /// Authenticate with OAuth tokens that refresh themselves.
    pub fn oauth(mut self, tokens: TokenProvider) -> Self {
        self.auth = Some((Arc::new(tokens), AuthKind::OAuth));
        self
    }

    /// Authenticate with any OAuth token source.
    pub fn oauth_token_source(mut self, source: Arc<dyn AccessTokenSource>) -> Self {
        self.auth = Some((source, AuthKind::OAuth));
        self
    }

    /// The API's address (default [`DEFAULT_BASE_URL`]): a fake, a proxy.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Retry policy (default [`RetryConfig::default`]).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Rate limits. Default: [`PRIVATE_APP_LIMIT`] or [`OAUTH_APP_LIMIT`] by
    /// the kind of token, and [`SEARCH_LIMIT`] for search.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The general rate limit (e.g. 250 per 10 s with the API limit increase).
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        let mut limits = self.limits.take().unwrap_or_else(|| Limits {
            search: Some(SEARCH_LIMIT),
            ..Limits::default()
        });
        limits.standard = limit;
        self.limits = Some(limits);
        self
    }

    /// The account's daily request quota, counted by the client: when it is
    /// spent, calls fail at once with [`Error::RateLimited`] (`daily: true`,
    /// `retry_after` = the time to the reset) instead of drawing 429s, so a
    /// sync stops at a checkpoint and says when it can resume. The count
    /// follows `HubSpot`'s `X-HubSpot-RateLimit-Daily-Remaining` header, so
    /// calls made by other clients of the account are counted too.
    ///
    /// Private apps only: `HubSpot` documents 250,000 (Free, Starter) to
    /// 1,000,000 (Enterprise) calls a day, plus 1,000,000 with the API limit
    /// increase, the day starting at midnight in the account's time zone
    /// (`DailyLimit::utc(650_000).with_reset_offset(offset)`; the offset is
    /// `utcOffsetMilliseconds` in [`HubSpot::account`]'s details). OAuth apps
    /// have no daily limit. Default: none (replaces the `daily` of
    /// [`HubSpotBuilder::limits`]).
    pub fn daily_limit(mut self, limit: DailyLimit) -> Self {
        self.daily = Some(limit);
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
    pub fn build(self) -> Result<HubSpot> {
        let (auth, kind) = self.auth.ok_or_else(|| Error::Auth {
            provider: PROVIDER,
            kind: crate::AuthErrorKind::Missing,
            message: "no credentials: set a private-app token or OAuth tokens".into(),
        })?;
        let base = self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let base_url = Url::parse(base)
            .map_err(|e| Error::Config(format!("bad HubSpot base URL `{base}`: {e}")))?;
        let mut limits = self.limits.unwrap_or(Limits {
            standard: Some(match kind {
                AuthKind::PrivateApp => PRIVATE_APP_LIMIT,
                AuthKind::OAuth => OAUTH_APP_LIMIT,
            }),
            search: Some(SEARCH_LIMIT),
            ..Limits::default()
        });
        if let Some(daily) = self.daily {
            limits.daily = Some(daily);
        }
        let http = default_http_client(self.timeout.unwrap_or(Duration::from_secs(60)))?;
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
        Ok(HubSpot { client, kind })
    }
}

/// A `HubSpot` API client for one account. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubSpot {
    client: ApiClient,
    kind: AuthKind,
}

impl HubSpot {
    /// A builder.
    pub fn builder() -> HubSpotBuilder {
        HubSpotBuilder::default()
    }

    /// The shared API client underneath.
    pub fn api_client(&self) -> &ApiClient {
        &self.client
    }

    /// This client with another general rate limit (`None`: unlimited); the
    /// search limit stays. Counters start again from zero.
    pub fn with_rate_limit(&self, limit: Option<RateLimit>) -> HubSpot {
        let mut limits = self.client.limits().clone();
        limits.standard = limit;
        HubSpot {
            client: self.client.with_limits(limits),
            kind: self.kind,
        }
    }

    /// Requests, retries and waits so far.
    pub fn stats(&self) -> RequestStats {
        self.client.stats()
    }

    /// Any CRM object type by name (`calls`, `notes`, `p_widgets`, `2-1234`).
    pub fn objects(&self, object_type: impl Into<String>) -> Objects<CrmObject> {
        Objects {
            hs: self.clone(),
            object_type: object_type.into(),
            default_properties: &[],
            _t: PhantomData,
        }
    }

    fn typed<T: CrmModel>(&self) -> Objects<T> {
        Objects {
            hs: self.clone(),
            object_type: T::OBJECT_TYPE.to_owned(),
            default_properties: T::PROPERTIES,
            _t: PhantomData,
        }
    }

    /// Contacts.
    pub fn contacts(&self) -> Objects<Contact> {
        self.typed()
    }

    /// Companies.
    pub fn companies(&self) -> Objects<Company> {
        self.typed()
    }

    /// Deals.
    pub fn deals(&self) -> Objects<Deal> {
        self.typed()
    }

    /// Tickets.
    pub fn tickets(&self) -> Objects<Ticket> {
        self.typed()
    }

    /// Property definitions of an object type.
    pub async fn properties(&self, object_type: &str) -> Result<Vec<PropertyDefinition>> {
        #[derive(Deserialize)]
        struct R {
            results: Vec<PropertyDefinition>,
        }
        let url = self
            .client
            .url(&format!("crm/v3/properties/{}", enc(object_type)))?;
        let r: R = self
            .client
            .get_json(url, || format!("properties of `{object_type}`"))
            .await?;
        Ok(r.results)
    }

    /// Pipelines of `deals` or `tickets`, with their stages.
    pub async fn pipelines(&self, object_type: &str) -> Result<Vec<Pipeline>> {
        Ok(self
            .pipelines_raw(object_type)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    pub(crate) async fn pipelines_raw(
        &self,
        object_type: &str,
    ) -> Result<Vec<(Pipeline, serde_json::Value)>> {
        #[derive(Deserialize)]
        struct R {
            results: Vec<serde_json::Value>,
        }
        let url = self
            .client
            .url(&format!("crm/v3/pipelines/{}", enc(object_type)))?;
        let r: R = self
            .client
            .get_json(url, || format!("pipelines of `{object_type}`"))
            .await?;
        r.results
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let p = serde_path_to_error::deserialize(&v).map_err(|e| Error::Decode {
                    provider: PROVIDER,
                    what: format!("pipelines of `{object_type}`"),
                    path: format!("results[{i}].{}", e.path()),
                    message: e.inner().to_string(),
                })?;
                Ok((p, v))
            })
            .collect()
    }

    /// CRM owners one by one (live, or archived ones).
    pub fn owners(&self, archived: bool) -> impl Stream<Item = Result<Owner>> + Send + 'static {
        self.owner_pages(archived, None)
            .map_ok(|p| {
                futures::stream::iter(p.items.into_iter().enumerate().map(|(i, v)| {
                    serde_path_to_error::deserialize(v).map_err(|e| Error::Decode {
                        provider: PROVIDER,
                        what: "owners page".into(),
                        path: format!("results[{i}].{}", e.path()),
                        message: e.inner().to_string(),
                    })
                }))
            })
            .try_flatten()
    }

    /// Pages of owners as JSON, starting after `start` (resumable).
    pub(crate) fn owner_pages(
        &self,
        archived: bool,
        start: Option<String>,
    ) -> impl Stream<Item = Result<Paged<serde_json::Value, String>>> + Send + 'static {
        let hs = self.clone();
        paginate(
            PROVIDER,
            format!("owners (archived={archived})"),
            start,
            move |after: Option<String>| {
                let hs = hs.clone();
                async move {
                    let mut url = hs.client.url("crm/v3/owners")?;
                    {
                        let mut q = url.query_pairs_mut();
                        q.append_pair("limit", "500");
                        q.append_pair("archived", if archived { "true" } else { "false" });
                        if let Some(a) = &after {
                            q.append_pair("after", a);
                        }
                    }
                    let page: ListPage<serde_json::Value> = hs
                        .client
                        .get_json(url, || format!("owners page (after={after:?})"))
                        .await?;
                    Ok(page.into_paged())
                }
            },
        )
    }

    /// Pages of the ids of the live records of `object_type`, starting after
    /// `start`: an id-only listing (`properties=hs_object_id`), one call per
    /// 100 ids.
    pub fn id_pages(
        &self,
        object_type: &str,
        start: Option<String>,
    ) -> impl Stream<Item = Result<Paged<String, String>>> + Send + 'static {
        self.objects(object_type)
            .list()
            .properties(["hs_object_id"])
            .after(start)
            .pages()
            .map_ok(|p| Paged::new(p.items.into_iter().map(|o| o.id).collect(), p.next))
    }

    /// Who is connected: for OAuth tokens the token's hub, user and scopes
    /// (`/oauth/v1/access-tokens/{token}`); for private apps the account
    /// details (`/account-info/v3/details`).
    pub async fn account(&self) -> Result<crate::source::AccountInfo> {
        let mut info = crate::source::AccountInfo {
            provider: PROVIDER.into(),
            ..Default::default()
        };
        match self.kind {
            AuthKind::OAuth => {
                let token = self.client.auth().access_token().await?;
                let mut url = self.client.url("oauth/v1/access-tokens/")?;
                url.path_segments_mut()
                    .map_err(|_| Error::Config("base URL cannot take a path".into()))?
                    .pop_if_empty()
                    .push(token.expose_secret());
                let req = ApiRequest {
                    log_path: "/oauth/v1/access-tokens/[REDACTED]".into(),
                    ..ApiRequest::new(Method::GET, url)
                };
                let resp = self.client.send(req).await?;
                let raw: serde_json::Map<String, serde_json::Value> =
                    Error::decode(PROVIDER, || "access token info".into(), &resp.body)?;
                let t: AccessTokenInfo =
                    Error::decode(PROVIDER, || "access token info".into(), &resp.body)?;
                info.account_id = t.hub_id.to_string();
                info.name = t.hub_domain;
                info.user = t.user;
                info.scopes = t.scopes;
                info.details = raw;
                info.details.remove("token");
                info.details.remove("signed_access_token");
            }
            AuthKind::PrivateApp => {
                let url = self.client.url("account-info/v3/details")?;
                let raw: serde_json::Map<String, serde_json::Value> = self
                    .client
                    .get_json(url, || "account details".into())
                    .await?;
                let d: AccountDetails = serde_json::from_value(serde_json::Value::Object(
                    raw.clone(),
                ))
                .map_err(|e| Error::Decode {
                    provider: PROVIDER,
                    what: "account details".into(),
                    path: String::new(),
                    message: e.to_string(),
                })?;
                info.account_id = d.portal_id.to_string();
                info.name = d.ui_domain;
                info.details = raw;
            }
        }
        Ok(info)
    }
}

/// True when `properties` do not fit a list call's URL, so a listing reads
/// ids and then batch-reads them (see the module docs).
pub(crate) fn needs_batch_read(properties: &[String]) -> bool {
    let len: usize = properties.iter().map(|p| p.len() + 3).sum();
    len > MAX_PROPERTIES_QUERY_LEN
}

/// Percent-encodes one path segment.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An answer with its records under `results` (listing, search, batch
/// read): `paging` and `total` where the endpoint has them.
#[derive(Deserialize)]
pub(crate) struct ListPage<T> {
    results: Vec<T>,
    #[serde(default)]
    paging: Option<Paging>,
    #[serde(default)]
    total: Option<u64>,
}

/// Decodes an answer with its records under `results` record by record:
/// the records that cannot be decoded are returned apart, with their bytes
/// (see [`crate::sources::lenient`]).
fn decode_results(
    body: &[u8],
    what: impl FnOnce() -> String,
) -> Result<(ListPage<CrmObject>, Vec<Rejected>)> {
    lenient::decode_page(
        body,
        |b| serde_json::from_slice::<ListPage<CrmObject>>(b),
        |page| {
            let env: ListPage<&RawValue> = serde_json::from_slice(page.bytes())?;
            let results = env
                .results
                .iter()
                .enumerate()
                .filter_map(|(i, raw)| page.record(raw, || format!("results[{i}]")))
                .collect();
            Ok(ListPage {
                results,
                paging: env.paging,
                total: env.total,
            })
        },
        || lenient::strict_error::<ListPage<CrmObject>>(PROVIDER, what, body),
    )
}

/// POSTs a JSON body and returns the answer's bytes.
async fn post_bytes<B: Serialize>(
    hs: &HubSpot,
    url: Url,
    body: &B,
    class: RequestClass,
) -> Result<bytes::Bytes> {
    let json = serde_json::to_vec(body)
        .map_err(|e| Error::Config(format!("cannot encode request body: {e}")))?;
    let resp = hs
        .client
        .send(ApiRequest {
            json: Some(json),
            class,
            ..ApiRequest::new(Method::POST, url)
        })
        .await?;
    Ok(resp.body)
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default)]
    next: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    after: String,
}

impl<T> ListPage<T> {
    pub(crate) fn into_paged(self) -> Paged<T, String> {
        let next = self.paging.and_then(|p| p.next).map(|n| n.after);
        Paged::new(self.results, next)
    }
}

/// The objects of one type. `T` is a typed model ([`Contact`], …) or
/// [`CrmObject`] for any type.
#[derive(Debug, Clone)]
pub struct Objects<T> {
    hs: HubSpot,
    object_type: String,
    default_properties: &'static [&'static str],
    _t: PhantomData<fn() -> T>,
}

impl<T: From<CrmObject> + Send + 'static> Objects<T> {
    /// The object type.
    pub fn object_type(&self) -> &str {
        &self.object_type
    }

    /// A listing (`GET /crm/v3/objects/{type}`).
    pub fn list(&self) -> ListObjects<T> {
        ListObjects {
            hs: self.hs.clone(),
            object_type: self.object_type.clone(),
            properties: self
                .default_properties
                .iter()
                .map(|s| s.to_string())
                .collect(),
            archived: false,
            limit: MAX_LIST_LIMIT,
            after: None,
            _t: PhantomData,
        }
    }

    /// A search (`POST /crm/v3/objects/{type}/search`): filters, one sort,
    /// properties in the body, pages of up to 200. Goes through the search
    /// limiter ([`SEARCH_LIMIT`]). `HubSpot` answers at most 10,000 results per
    /// query; page past that and it answers 400, so narrow the filters
    /// (e.g. by `hs_object_id`) instead.
    pub fn search(&self) -> SearchObjects<T> {
        SearchObjects {
            hs: self.hs.clone(),
            object_type: self.object_type.clone(),
            body: SearchBody {
                filter_groups: Vec::new(),
                sorts: Vec::new(),
                properties: self
                    .default_properties
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                limit: MAX_SEARCH_LIMIT,
                after: None,
            },
            _t: PhantomData,
        }
    }

    /// Reads up to 100 objects by id with the given properties
    /// (`POST …/batch/read`). Ids not found are left out.
    pub async fn batch_read(
        &self,
        ids: &[String],
        properties: &[String],
        archived: bool,
    ) -> Result<Vec<T>> {
        let (objects, rejected) =
            batch_read(&self.hs, &self.object_type, ids, properties, archived).await?;
        lenient::refuse(
            PROVIDER,
            &format!("{} batch read", self.object_type),
            rejected,
        )?;
        Ok(objects.into_iter().map(T::from).collect())
    }
}

/// A list request. Nothing is sent until [`ListObjects::pages`] or
/// [`ListObjects::stream`] is polled.
#[derive(Debug, Clone)]
pub struct ListObjects<T> {
    hs: HubSpot,
    object_type: String,
    properties: Vec<String>,
    archived: bool,
    limit: u32,
    after: Option<String>,
    _t: PhantomData<fn() -> T>,
}

impl<T: From<CrmObject> + Send + 'static> ListObjects<T> {
    /// Properties to read (replaces the defaults).
    pub fn properties<I: IntoIterator<Item = S>, S: Into<String>>(mut self, props: I) -> Self {
        self.properties = props.into_iter().map(Into::into).collect();
        self
    }

    /// Lists archived objects instead of live ones.
    pub fn archived(mut self, archived: bool) -> Self {
        self.archived = archived;
        self
    }

    /// Page size (1 to 100; default 100).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit.clamp(1, MAX_LIST_LIMIT);
        self
    }

    /// Start after this cursor (from a previous page).
    pub fn after(mut self, after: Option<String>) -> Self {
        self.after = after;
        self
    }

    /// The pages, each with the cursor of the next. Uses the request plan
    /// with the fewest calls (see the module docs).
    pub fn pages(self) -> impl Stream<Item = Result<Paged<T, String>>> + Send + 'static {
        let what = format!("{} list", self.object_type);
        self.lenient_pages().and_then(move |(p, rejected)| {
            futures::future::ready(lenient::refuse(PROVIDER, &what, rejected).map(|()| p))
        })
    }

    /// The pages, each with the records that could not be decoded (kept raw
    /// for the quarantine instead of failing the page).
    pub(crate) fn lenient_pages(
        self,
    ) -> impl Stream<Item = Result<(Paged<T, String>, Vec<Rejected>)>> + Send + 'static {
        let plan_batch = needs_batch_read(&self.properties);
        let what = format!(
            "{}{} list",
            self.object_type,
            if self.archived { " (archived)" } else { "" }
        );
        let ListObjects {
            hs,
            object_type,
            properties,
            archived,
            limit,
            after,
            ..
        } = self;
        let properties = Arc::new(properties);
        let mut page_no = 0u64;
        paginate(PROVIDER, what, after, move |after: Option<String>| {
            let (hs, object_type, properties) =
                (hs.clone(), object_type.clone(), properties.clone());
            page_no += 1;
            let n = page_no;
            async move {
                let mut url = hs
                    .client
                    .url(&format!("crm/v3/objects/{}", enc(&object_type)))?;
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("limit", &limit.to_string());
                    q.append_pair("archived", if archived { "true" } else { "false" });
                    if plan_batch {
                        q.append_pair("properties", "hs_object_id");
                    } else if !properties.is_empty() {
                        q.append_pair("properties", &properties.join(","));
                    }
                    if let Some(a) = &after {
                        q.append_pair("after", a);
                    }
                }
                let what = || format!("{object_type} page {n} (after={after:?})");
                let resp = hs.client.send(ApiRequest::new(Method::GET, url)).await?;
                let (page, mut rejected) = decode_results(&resp.body, what)?;
                let mut paged = page.into_paged();
                if plan_batch && !paged.items.is_empty() {
                    let ids: Vec<String> = paged.items.iter().map(|o| o.id.clone()).collect();
                    let (items, bad) =
                        batch_read(&hs, &object_type, &ids, &properties, archived).await?;
                    paged.items = items;
                    rejected.extend(bad);
                }
                // One item carries the page's rejected records through the
                // paginator (which knows only items and a cursor).
                Ok(Paged::new(
                    vec![(
                        paged.items.into_iter().map(T::from).collect::<Vec<T>>(),
                        rejected,
                    )],
                    paged.next,
                ))
            }
        })
        .map_ok(|mut p| {
            let (items, rejected) = p.items.pop().unwrap_or_default();
            (Paged::new(items, p.next), rejected)
        })
    }

    /// The objects one by one.
    pub fn stream(self) -> impl Stream<Item = Result<T>> + Send + 'static {
        self.pages()
            .map_ok(|p| futures::stream::iter(p.items.into_iter().map(Ok)))
            .try_flatten()
    }
}

/// Largest page of the search endpoint.
pub const MAX_SEARCH_LIMIT: u32 = 200;

/// A search filter operator (schema `Filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Operator {
    /// Equal.
    Eq,
    /// Not equal.
    Neq,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Between `value` and `high_value`.
    Between,
    /// Has any value.
    HasProperty,
    /// Has no value.
    NotHasProperty,
}

/// One search filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Filter {
    /// The property.
    pub property_name: String,
    /// The operator.
    pub operator: Operator,
    /// The value (as `HubSpot` compares it: a string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The upper bound for [`Operator::Between`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_value: Option<String>,
}

impl Filter {
    /// `property operator value`.
    pub fn new(property: impl Into<String>, operator: Operator, value: impl Into<String>) -> Self {
        Filter {
            property_name: property.into(),
            operator,
            value: Some(value.into()),
            high_value: None,
        }
    }

    /// `low <= property <= high`.
    pub fn between(
        property: impl Into<String>,
        low: impl Into<String>,
        high: impl Into<String>,
    ) -> Self {
        Filter {
            property_name: property.into(),
            operator: Operator::Between,
            value: Some(low.into()),
            high_value: Some(high.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct FilterGroup {
    filters: Vec<Filter>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Sort {
    property_name: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct SearchBody {
    filter_groups: Vec<FilterGroup>,
    sorts: Vec<Sort>,
    properties: Vec<String>,
    limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

/// A search request. Nothing is sent until [`SearchObjects::pages`] is
/// polled.
#[derive(Debug, Clone)]
pub struct SearchObjects<T> {
    hs: HubSpot,
    object_type: String,
    body: SearchBody,
    _t: PhantomData<fn() -> T>,
}

/// One page of search results with the total `HubSpot` reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SearchPage<T> {
    /// The objects.
    pub items: Vec<T>,
    /// The next cursor.
    pub next: Option<String>,
    /// The number of matches `HubSpot` reports for the whole query.
    pub total: u64,
}

impl<T: From<CrmObject> + Send + 'static> SearchObjects<T> {
    /// Adds a group of filters that must all hold (groups are OR-ed; at most
    /// 6 groups).
    pub fn filter_group(mut self, filters: Vec<Filter>) -> Self {
        self.body.filter_groups.push(FilterGroup { filters });
        self
    }

    /// Sorts by `property`, ascending or descending (one sort).
    pub fn sort(mut self, property: impl Into<String>, ascending: bool) -> Self {
        self.body.sorts = vec![Sort {
            property_name: property.into(),
            direction: if ascending { "ASCENDING" } else { "DESCENDING" },
        }];
        self
    }

    /// Properties to return (in the body: no URL length limit).
    pub fn properties<I: IntoIterator<Item = S>, S: Into<String>>(mut self, props: I) -> Self {
        self.body.properties = props.into_iter().map(Into::into).collect();
        self
    }

    /// Page size (1 to 200; default 200).
    pub fn limit(mut self, limit: u32) -> Self {
        self.body.limit = limit.clamp(1, MAX_SEARCH_LIMIT);
        self
    }

    /// Sends the query once: the first page (or the page at the cursor set
    /// by a previous page's `next`).
    pub async fn send(self) -> Result<SearchPage<T>> {
        let (page, rejected) = search_page(&self.hs, &self.object_type, &self.body).await?;
        lenient::refuse(PROVIDER, &format!("{} search", self.object_type), rejected)?;
        Ok(page)
    }

    /// Sends the query once, returning the records that could not be
    /// decoded apart (kept raw for the quarantine).
    pub(crate) async fn send_lenient(self) -> Result<(SearchPage<T>, Vec<Rejected>)> {
        search_page(&self.hs, &self.object_type, &self.body).await
    }

    /// The pages, each with the total and the cursor of the next.
    pub fn pages(self) -> impl Stream<Item = Result<SearchPage<T>>> + Send + 'static {
        let SearchObjects {
            hs,
            object_type,
            body,
            ..
        } = self;
        let start = body.after.clone();
        let body = Arc::new(body);
        paginate(
            PROVIDER,
            format!("{object_type} search"),
            start,
            move |after: Option<String>| {
                let (hs, object_type, body) = (hs.clone(), object_type.clone(), body.clone());
                async move {
                    let mut body = (*body).clone();
                    body.after = after;
                    let (page, rejected) = search_page(&hs, &object_type, &body).await?;
                    lenient::refuse(PROVIDER, &format!("{object_type} search"), rejected)?;
                    Ok(Paged::new(vec![(page.total, page.items)], page.next))
                }
            },
        )
        .map_ok(|mut p| {
            let (total, items) = p.items.pop().unwrap_or_default();
            SearchPage {
                items,
                next: p.next,
                total,
            }
        })
    }
}

async fn search_page<T: From<CrmObject>>(
    hs: &HubSpot,
    object_type: &str,
    body: &SearchBody,
) -> Result<(SearchPage<T>, Vec<Rejected>)> {
    let url = hs
        .client
        .url(&format!("crm/v3/objects/{}/search", enc(object_type)))?;
    let bytes = post_bytes(hs, url, body, RequestClass::Search).await?;
    let (r, rejected) = decode_results(&bytes, || {
        format!("{object_type} search page (after={:?})", body.after)
    })?;
    Ok((
        SearchPage {
            items: r.results.into_iter().map(T::from).collect(),
            next: r.paging.and_then(|p| p.next).map(|n| n.after),
            total: r.total.unwrap_or_default(),
        },
        rejected,
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchReadBody<'a> {
    inputs: Vec<IdInput<'a>>,
    properties: &'a [String],
    properties_with_history: [&'a str; 0],
}

#[derive(Serialize)]
struct IdInput<'a> {
    id: &'a str,
}

async fn batch_read(
    hs: &HubSpot,
    object_type: &str,
    ids: &[String],
    properties: &[String],
    archived: bool,
) -> Result<(Vec<CrmObject>, Vec<Rejected>)> {
    if ids.len() > MAX_BATCH_READ {
        return Err(Error::Config(format!(
            "batch read takes at most {MAX_BATCH_READ} ids, got {}",
            ids.len()
        )));
    }
    let mut url = hs
        .client
        .url(&format!("crm/v3/objects/{}/batch/read", enc(object_type)))?;
    url.query_pairs_mut()
        .append_pair("archived", if archived { "true" } else { "false" });
    let body = BatchReadBody {
        inputs: ids.iter().map(|id| IdInput { id }).collect(),
        properties,
        properties_with_history: [],
    };
    // 207 (some ids not found) is a success carrying `errors`: the missing
    // ids were deleted between the listing and the read.
    let bytes = post_bytes(hs, url, &body, RequestClass::Standard).await?;
    let (r, rejected) = decode_results(&bytes, || {
        format!("{object_type} batch read of {} ids", ids.len())
    })?;
    // Keep the listing's order.
    let mut by_id: std::collections::HashMap<String, CrmObject> =
        r.results.into_iter().map(|o| (o.id.clone(), o)).collect();
    Ok((
        ids.iter().filter_map(|id| by_id.remove(id)).collect(),
        rejected,
    ))
}
