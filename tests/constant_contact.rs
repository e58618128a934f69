//! The Constant Contact client and source against the testkit fake: every
//! stream with exact truth, cursor links, faults, incremental reads and
//! deletes, OAuth with rotating refresh tokens and a crash between save and
//! use, throttling, the daily quota and resume, and whole syncs into files.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use headwater::auth::{
    Callback, MemoryTokenStore, OAuthClient, PendingAuthorization, TokenProvider, TokenSet,
    TokenStore,
};
use headwater::constant_contact::{
    oauth_config, ConstantContact, ConstantContactSource, STREAM_CAMPAIGN_ACTIVITIES,
    STREAM_CAMPAIGN_SUMMARIES, STREAM_CONTACTS, STREAM_CONTACT_LISTS, STREAM_CUSTOM_FIELDS,
    STREAM_EMAIL_CAMPAIGNS,
};
use headwater::http::{DailyLimit, Limits, RetryConfig};
use headwater::schema::FieldType;
use headwater::sink::Sink;
use headwater::sinks::files::FilesSink;
use headwater::source::{Page, Record, Source};
use headwater::sync::{ReadMode, Sync};
use headwater::testkit::constant_contact::{ConstantContactFake, FakeConfig};
use headwater::{AuthErrorKind, Error, Result};
use serde_json::Value;

const TOKEN: &str = "cc-fake-token";

const ALL_STREAMS: [&str; 6] = [
    STREAM_CONTACT_LISTS,
    STREAM_CUSTOM_FIELDS,
    STREAM_CONTACTS,
    STREAM_EMAIL_CAMPAIGNS,
    STREAM_CAMPAIGN_ACTIVITIES,
    STREAM_CAMPAIGN_SUMMARIES,
];

fn fast_retry() -> RetryConfig {
    RetryConfig::default().with_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn small(contacts: usize) -> FakeConfig {
    FakeConfig {
        contacts,
        ..FakeConfig::default()
    }
}

/// A client on the fake with a static token, no client-side limits and
/// fast retries.
fn client(fake: &ConstantContactFake) -> ConstantContact {
    ConstantContact::builder()
        .access_token(TOKEN.into())
        .base_url(fake.base_url())
        .retry(fast_retry())
        .accepted_retry(fast_retry())
        .limits(Limits::none())
        .build()
        .expect("client")
}

fn source(fake: &ConstantContactFake) -> ConstantContactSource {
    ConstantContactSource::new(client(fake)).with_settle_lag(Duration::ZERO)
}

async fn read_all(source: &ConstantContactSource, stream: &str) -> Result<Vec<Page>> {
    let schema = source.schema(stream).await?;
    source.read(&schema, None).try_collect().await
}

fn records(pages: &[Page]) -> Vec<&Record> {
    pages.iter().flat_map(|p| p.records.iter()).collect()
}

/// Records by id, asserting none appears twice.
fn by_id<'a>(recs: &[&'a Record]) -> HashMap<String, &'a Record> {
    let mut out = HashMap::new();
    for r in recs {
        assert!(out.insert(r.id.clone(), *r).is_none(), "{} twice", r.id);
    }
    out
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// A custom field date as the fake writes it (`YYYY-MM-DD` or `MM/DD/YYYY`).
fn date(v: &str) -> NaiveDate {
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(v, "%m/%d/%Y"))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[tokio::test]
async fn every_stream_reads_exactly_what_the_fake_holds() {
    let fake = ConstantContactFake::start(FakeConfig::default()).await;
    let src = source(&fake);

    let info = src.check().await.expect("check");
    assert_eq!(info.account_id, "a07e1fake0001");
    assert_eq!(info.name.as_deref(), Some("Example Shop"));
    assert_eq!(info.user.as_deref(), Some("owner@example.com"));

    // Lists and custom fields.
    let pages = read_all(&src, STREAM_CONTACT_LISTS).await.expect("lists");
    let got = by_id(&records(&pages));
    assert_eq!(got.len(), fake.lists().len());
    for l in fake.lists() {
        assert_eq!(got[s(&l, "list_id")].data["name"], l["name"]);
    }
    let pages = read_all(&src, STREAM_CUSTOM_FIELDS).await.expect("fields");
    let fields = fake.custom_fields();
    assert_eq!(by_id(&records(&pages)).len(), fields.len());

    // Contacts: every one once, deleted ones marked, custom fields typed.
    let schema = src.schema(STREAM_CONTACTS).await.expect("schema");
    let mut columns = HashMap::new();
    for f in &fields {
        let column = format!("cf_{}", s(f, "name"));
        let field = schema.field(&column).expect("custom field column");
        let want = if s(f, "type") == "date" {
            FieldType::Date
        } else {
            FieldType::String
        };
        assert_eq!(field.field_type, want, "{column}");
        columns.insert(s(f, "custom_field_id").to_owned(), (column, want));
    }
    let pages = read_all(&src, STREAM_CONTACTS).await.expect("contacts");
    assert_eq!(pages.len(), 3, "1,212 contacts in pages of 500");
    // The listing's own count, checked against what was read, on the last page.
    let checks: Vec<_> = pages.iter().flat_map(|p| p.counts.iter()).collect();
    assert_eq!(checks.len(), 1);
    assert_eq!((checks[0].reported, checks[0].loaded), (1_212, 1_212));
    assert_eq!(pages[2].counts.len(), 1);
    let got = by_id(&records(&pages));
    let truth = fake.contacts(true);
    assert_eq!(got.len(), truth.len());
    let deleted: HashSet<String> = fake.contact_ids(true).into_iter().collect();
    assert_eq!(deleted.len(), 12);
    for t in &truth {
        let id = s(t, "contact_id");
        let r = got[id];
        assert_eq!(r.deleted, deleted.contains(id), "{id}");
        assert_eq!(r.data["first_name"], t["first_name"]);
        assert_eq!(r.data["email"], t["email_address"]["address"]);
        assert_eq!(r.data["list_memberships"], t["list_memberships"]);
        assert_eq!(
            r.data["deleted_at"],
            t.get("deleted_at").cloned().unwrap_or(Value::Null)
        );
        let when = |v: &Value| {
            chrono::DateTime::parse_from_rfc3339(v.as_str().expect("time")).expect("time")
        };
        assert_eq!(when(&r.data["updated_at"]), when(&t["updated_at"]));
        let values: HashMap<&str, &str> = t["custom_fields"]
            .as_array()
            .expect("custom_fields")
            .iter()
            .map(|v| (s(v, "custom_field_id"), s(v, "value")))
            .collect();
        for (fid, (column, kind)) in &columns {
            let got = &r.data[column.as_str()];
            match (values.get(fid.as_str()), kind) {
                (None, _) => assert_eq!(got, &Value::Null, "{id} {column}"),
                (Some(v), FieldType::Date) => {
                    assert_eq!(got.as_str().map(date), Some(date(v)), "{id} {column}")
                }
                (Some(v), _) => assert_eq!(got, v, "{id} {column}"),
            }
        }
    }
    assert!(
        columns.values().any(|(c, k)| *k == FieldType::Date
            && got.values().any(|r| r.data[c.as_str()].as_str().is_some())),
        "some contact has a date custom field"
    );

    // Campaigns: the removed one is a deleted record.
    let pages = read_all(&src, STREAM_EMAIL_CAMPAIGNS)
        .await
        .expect("campaigns");
    let got = by_id(&records(&pages));
    let campaigns = fake.campaigns();
    assert_eq!(got.len(), campaigns.len());
    for c in &campaigns {
        let r = got[s(c, "campaign_id")];
        assert_eq!(r.data["name"], c["name"]);
        assert_eq!(r.deleted, c["current_status"] == "Removed");
    }
    assert!(got.values().any(|r| r.deleted));

    // Activities: every readable one, those of the removed campaign deleted.
    let pages = read_all(&src, STREAM_CAMPAIGN_ACTIVITIES)
        .await
        .expect("activities");
    assert_eq!(pages.len(), campaigns.len(), "one page per campaign");
    let got = by_id(&records(&pages));
    let live: Vec<Value> = fake.activities();
    for a in &live {
        let r = got[s(a, "campaign_activity_id")];
        assert!(!r.deleted);
        assert_eq!(r.data["subject"], a["subject"]);
        assert_eq!(r.data["campaign_id"], a["campaign_id"]);
        assert_eq!(r.data["contact_list_ids"], a["contact_list_ids"]);
    }
    let removed = fake.activity_ids(6);
    for id in &removed {
        assert!(got[id].deleted, "{id}");
    }
    assert_eq!(got.len(), live.len() + removed.len());

    // Summaries: figures as the report holds them.
    let pages = read_all(&src, STREAM_CAMPAIGN_SUMMARIES)
        .await
        .expect("summaries");
    let got = by_id(&records(&pages));
    let summaries = fake.summaries();
    assert_eq!(got.len(), summaries.len());
    for t in &summaries {
        let r = got[s(t, "campaign_id")];
        for k in [
            "sends",
            "opens",
            "clicks",
            "forwards",
            "optouts",
            "abuse",
            "bounces",
            "not_opened",
        ] {
            assert_eq!(r.data[k], t["unique_counts"][k], "{k}");
        }
    }

    // The typed SDK walks the same listing.
    let typed: Vec<_> = client(&fake)
        .contacts()
        .status("all")
        .include(["custom_fields", "list_memberships"])
        .limit(200)
        .stream()
        .try_collect()
        .await
        .expect("typed");
    assert_eq!(typed.len(), truth.len());
    assert_eq!(typed.iter().filter(|c| c.is_deleted()).count(), 12);
}

#[tokio::test]
async fn next_links_resolve_against_the_host_also_behind_a_proxy_path() {
    for prefix in ["", "/gateway/constant-contact"] {
        let fake = ConstantContactFake::start(FakeConfig {
            path_prefix: prefix.into(),
            ..small(230)
        })
        .await;
        assert!(fake.base_url().ends_with(&format!("{prefix}/v3")));
        let cc = client(&fake);
        let mut pages = Box::pin(cc.contacts().limit(50).pages());
        let mut n = 0;
        let mut ids = HashSet::new();
        while let Some(p) = pages.try_next().await.expect("page") {
            n += 1;
            if let Some(next) = &p.next {
                assert!(next.starts_with("/v3/contacts?cursor="), "{next}");
            }
            ids.extend(p.items.into_iter().map(|c| c.contact_id));
        }
        assert_eq!((n, ids.len()), (5, 230), "prefix {prefix:?}");
        let stats = fake.stats();
        assert_eq!(
            stats.per_path.get("GET /v3/contacts"),
            Some(&5),
            "{:?}",
            stats.per_path
        );
        assert_eq!(stats.per_path.len(), 1, "no /v3/v3: {:?}", stats.per_path);
    }
}

#[tokio::test]
async fn a_repeated_cursor_stops_with_a_clear_error() {
    let fake = ConstantContactFake::start(small(1_400)).await;
    fake.repeat_cursor("contacts", 1);
    let err = read_all(&source(&fake), STREAM_CONTACTS)
        .await
        .expect_err("must stop");
    match err {
        Error::CursorRepeated { what, pages, .. } => {
            assert!(what.contains("contacts"), "{what}");
            assert_eq!(pages, 1);
        }
        other => panic!("expected CursorRepeated, got {other}"),
    }
    assert_eq!(fake.stats().per_path["GET /v3/contacts"], 2);
}

#[tokio::test]
async fn a_malformed_page_is_a_decode_error_naming_the_page_and_path() {
    let fake = ConstantContactFake::start(small(1_400)).await;
    fake.malformed_page("contacts", 1);
    // The typed SDK stays strict: the listing fails naming the path.
    let err = client(&fake)
        .contacts()
        .pages()
        .try_collect::<Vec<_>>()
        .await
        .expect_err("must fail");
    match &err {
        Error::Decode { path, .. } => assert_eq!(path, "contacts[3].custom_fields"),
        other => panic!("expected Decode, got {other}"),
    }
    // The source reports the record on its page, for the quarantine.
    let pages = read_all(&source(&fake), STREAM_CONTACTS)
        .await
        .expect("read");
    let rejected: Vec<_> = pages.iter().flat_map(|p| &p.rejected).collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].path, "contacts[3].custom_fields");
}

#[tokio::test]
async fn accepted_answers_are_asked_again_until_complete() {
    let fake = ConstantContactFake::start(small(120)).await;
    let got: Vec<_> = client(&fake)
        .contacts()
        .segment_id("14")
        .stream()
        .try_collect()
        .await
        .expect("contacts");
    assert_eq!(got.len(), 120);
    let stats = fake.stats();
    assert_eq!((stats.accepted, stats.per_path["GET /v3/contacts"]), (2, 3));
}

#[tokio::test]
async fn incremental_contacts_read_only_changes_and_capture_deletes() {
    let fake = ConstantContactFake::start(small(1_100)).await;
    let src = source(&fake);
    let schema = src.schema(STREAM_CONTACTS).await.expect("schema");
    let full: Vec<Page> = src.read(&schema, None).try_collect().await.expect("full");
    let state = full.last().expect("pages").checkpoint.clone();
    assert!(src.resumes_incrementally(&schema, &state), "{state:?}");

    let now = Utc::now();
    fake.update_contact(3, now);
    fake.update_contact(800, now);
    fake.delete_contact(10, now);
    fake.delete_contact(700, now);
    let added = fake.add_contacts(2, now);
    tokio::time::sleep(Duration::from_millis(20)).await;
    fake.reset_stats();

    let pages: Vec<Page> = src
        .read(&schema, Some(state))
        .try_collect()
        .await
        .expect("changes");
    let got = by_id(&records(&pages));
    let mut want: HashSet<String> = [3, 800, 10, 700].map(|i| fake.contact_id(i)).into();
    want.extend(added.iter().cloned());
    assert_eq!(
        got.keys().cloned().collect::<HashSet<_>>(),
        want,
        "exactly the changed contacts"
    );
    assert!(got[&fake.contact_id(10)].deleted && got[&fake.contact_id(700)].deleted);
    assert!(!got[&fake.contact_id(3)].deleted);
    assert_eq!(
        got[&fake.contact_id(800)].data["first_name"]
            .as_str()
            .map(|n| n.ends_with("(v1)")),
        Some(true)
    );
    // One window of changes and one sweep of deletes: two requests.
    assert_eq!(fake.stats().per_path["GET /v3/contacts"], 2);

    // Run again at once: consecutive windows overlap by a second (the API
    // does not say whether its bounds are inclusive), and deletes are swept
    // by day, so a run right after may re-read some of the same changes;
    // nothing else, and never a record twice.
    let state = pages.last().expect("pages").checkpoint.clone();
    let again: Vec<Page> = src
        .read(&schema, Some(state.clone()))
        .try_collect()
        .await
        .expect("again");
    let again = by_id(&records(&again));
    assert!(
        again.keys().all(|id| want.contains(id)),
        "{:?}",
        again.keys()
    );
}

fn oauth_client(fake: &ConstantContactFake) -> OAuthClient {
    let cfg = oauth_config(
        fake.config().client_id.clone(),
        fake.config().client_secret.clone().into(),
    )
    .with_token_url(&fake.token_url())
    .expect("url")
    .with_redirect_url("http://127.0.0.1:9/callback")
    .expect("url");
    OAuthClient::new(cfg)
        .expect("oauth")
        .with_retry(fast_retry())
}

#[tokio::test]
async fn connecting_uses_pkce_and_http_basic_client_auth() {
    let fake = ConstantContactFake::start(small(10)).await;
    let oauth = oauth_client(&fake);
    let req = oauth.authorize_url();
    assert_eq!(
        req.url.as_str().split('?').next(),
        Some("https://authz.constantcontact.com/oauth2/default/v1/authorize")
    );
    let q: HashMap<String, String> = req.url.query_pairs().into_owned().collect();
    for scope in [
        "contact_data",
        "campaign_data",
        "account_read",
        "offline_access",
    ] {
        assert!(q["scope"].split(' ').any(|s| s == scope), "{scope}");
    }
    let back = fake.consent(&req.url);
    let tokens = oauth
        .exchange_code(req.pending, &Callback::from_query(&back))
        .await
        .expect("exchange");
    assert!(tokens.refresh_token.is_some() && tokens.expires_at.is_some());
    assert_eq!(fake.stats().code_exchanges, 1);

    // A verifier that does not match the challenge is refused.
    let req = oauth.authorize_url();
    let back = fake.consent(&req.url);
    let mut pending = serde_json::to_value(&req.pending).expect("json");
    pending["pkce_verifier"] = Value::String("x".repeat(64));
    let forged: PendingAuthorization = serde_json::from_value(pending).expect("pending");
    let err = oauth
        .exchange_code(forged, &Callback::from_query(&back))
        .await
        .expect_err("PKCE must fail");
    assert!(err.needs_reauthorization(), "{err}");
}

/// A store that, like a process killed right after a durable write, saves
/// the tokens and then fails (`keep: true`), or loses the write and fails
/// (`keep: false`).
#[derive(Debug)]
struct CrashingStore {
    inner: Arc<MemoryTokenStore>,
    keep: bool,
}

#[async_trait]
impl TokenStore for CrashingStore {
    async fn load(&self, key: &str) -> Result<Option<TokenSet>> {
        self.inner.load(key).await
    }
    async fn lock(&self, key: &str) -> Result<headwater::auth::TokenLease> {
        self.inner.lock(key).await
    }
    async fn save(&self, key: &str, tokens: &TokenSet) -> Result<()> {
        if self.keep {
            self.inner.save(key, tokens).await?;
        }
        Err(Error::Config(
            "simulated crash after the token endpoint answered".into(),
        ))
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn keys(&self) -> Result<Vec<String>> {
        self.inner.keys().await
    }
}

async fn provider(
    fake: &ConstantContactFake,
    store: Arc<dyn TokenStore>,
    seed: Option<TokenSet>,
) -> TokenProvider {
    TokenProvider::new(oauth_client(fake), store, "constant_contact/acme", seed)
        .await
        .expect("provider")
}

fn oauth_source(fake: &ConstantContactFake, tokens: TokenProvider) -> ConstantContactSource {
    let cc = ConstantContact::builder()
        .oauth(tokens)
        .base_url(fake.base_url())
        .retry(fast_retry())
        .limits(Limits::none())
        .build()
        .expect("client");
    ConstantContactSource::new(cc)
}

#[tokio::test]
async fn a_rotated_refresh_token_saved_before_a_crash_keeps_the_account_connected() {
    let fake = ConstantContactFake::start(small(10)).await;
    let (_, first_refresh) = fake.mint_tokens();
    let durable = Arc::new(MemoryTokenStore::new());
    durable
        .save(
            "constant_contact/acme",
            &TokenSet::from_refresh_token(first_refresh.clone().into()),
        )
        .await
        .expect("seed");

    // Process 1: the refresh succeeds, the store writes the new pair, and
    // the process dies before the new access token is used.
    {
        let crashing = Arc::new(CrashingStore {
            inner: durable.clone(),
            keep: true,
        });
        let src = oauth_source(&fake, provider(&fake, crashing, None).await);
        let err = src.check().await.expect_err("the crash");
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
    assert_eq!(fake.stats().token_refreshes, 1);
    assert_eq!(
        fake.stats().requests,
        0,
        "the new access token was never used"
    );
    assert!(!fake.refresh_token_valid(&first_refresh), "rotated: spent");
    let saved = durable
        .load("constant_contact/acme")
        .await
        .expect("load")
        .expect("saved");
    let second_refresh = {
        use secrecy::ExposeSecret;
        saved
            .refresh_token
            .as_ref()
            .expect("refresh")
            .expose_secret()
            .to_owned()
    };
    assert_ne!(second_refresh, first_refresh);

    // Process 2: built from the store (the stale seed from configuration
    // loses to it); the saved access token works, and after it expires the
    // saved refresh token refreshes it.
    let tokens = provider(
        &fake,
        durable.clone(),
        Some(TokenSet::from_refresh_token(first_refresh.clone().into())),
    )
    .await;
    let src = oauth_source(&fake, tokens.clone());
    src.check()
        .await
        .expect("connected with the saved access token");
    fake.expire_access_tokens();
    let pages = read_all(&src, STREAM_CONTACT_LISTS)
        .await
        .expect("refreshed");
    assert_eq!(records(&pages).len(), 6);
    assert_eq!(tokens.refresh_count(), 1);
    let stats = fake.stats();
    assert_eq!((stats.token_refreshes, stats.invalid_grants), (2, 0));
}

#[tokio::test]
async fn a_rotated_refresh_token_lost_in_a_crash_asks_for_reauthorization() {
    let fake = ConstantContactFake::start(small(10)).await;
    let (_, refresh) = fake.mint_tokens();
    let durable = Arc::new(MemoryTokenStore::new());
    durable
        .save(
            "constant_contact/acme",
            &TokenSet::from_refresh_token(refresh.clone().into()),
        )
        .await
        .expect("seed");
    {
        // The write is lost: the store still holds the spent token.
        let losing = Arc::new(CrashingStore {
            inner: durable.clone(),
            keep: false,
        });
        let src = oauth_source(&fake, provider(&fake, losing, None).await);
        assert!(src.check().await.is_err());
    }
    assert!(!fake.refresh_token_valid(&refresh));
    let src = oauth_source(&fake, provider(&fake, durable, None).await);
    let err = src.check().await.expect_err("spent refresh token");
    match &err {
        Error::Auth {
            kind: AuthErrorKind::Reauthorize,
            message,
            ..
        } => assert!(message.contains("invalid_grant"), "{message}"),
        other => panic!("expected Reauthorize, got {other}"),
    }
    assert_eq!(fake.stats().invalid_grants, 1);
}

#[tokio::test]
async fn long_lived_refresh_tokens_are_kept() {
    let fake = ConstantContactFake::start(FakeConfig {
        rotate_refresh_tokens: false,
        ..small(10)
    })
    .await;
    let (_, refresh) = fake.mint_tokens();
    let store = Arc::new(MemoryTokenStore::new());
    let tokens = provider(
        &fake,
        store.clone(),
        Some(TokenSet::from_refresh_token(refresh.clone().into())),
    )
    .await;
    let src = oauth_source(&fake, tokens);
    src.check().await.expect("check");
    fake.expire_access_tokens();
    src.check()
        .await
        .expect("refreshed again with the same token");
    assert!(fake.refresh_token_valid(&refresh));
    assert_eq!(fake.stats().token_refreshes, 2);
}

#[tokio::test]
async fn throttled_answers_are_retried_and_a_spent_quota_is_not() {
    let fake = ConstantContactFake::start(small(10)).await;
    let cc = client(&fake);
    fake.fail_next(2, 429);
    cc.account().await.expect("third attempt succeeds");
    let stats = cc.stats();
    assert_eq!(
        (stats.requests, stats.retries, stats.rate_limited),
        (3, 2, 1 + 1)
    );

    // Server errors are retried the same way.
    fake.fail_next(1, 503);
    cc.account().await.expect("second attempt succeeds");
    assert_eq!(cc.stats().retries, 3);

    // Many requests at once without a client-side limit: the fake's 4/s
    // throttle answers 429, and every request still gets through.
    fake.set_rate_limit(Some(4));
    fake.reset_stats();
    let cc = ConstantContact::builder()
        .access_token(TOKEN.into())
        .base_url(fake.base_url())
        .retry(
            RetryConfig::default()
                .with_max_retries(20)
                .with_backoff(Duration::from_millis(100), Duration::from_millis(400)),
        )
        .limits(Limits::none())
        .build()
        .expect("client");
    let all = futures::future::join_all((0..10).map(|_| cc.account())).await;
    assert!(all.iter().all(|r| r.is_ok()));
    assert!(fake.stats().throttled > 0, "{:?}", fake.stats());

    // The daily quota: no retry, a daily RateLimited saying when to come back.
    fake.set_rate_limit(None);
    fake.set_daily_quota(fake.used_today());
    let cc = ConstantContact::builder()
        .access_token(TOKEN.into())
        .base_url(fake.base_url())
        .retry(fast_retry())
        .limits(Limits::none().with_daily(DailyLimit::utc(10_000)))
        .build()
        .expect("client");
    let err = cc.account().await.expect_err("quota");
    match &err {
        Error::RateLimited {
            daily: true,
            retry_after: Some(wait),
            ..
        } => assert!(*wait <= Duration::from_secs(86_400)),
        other => panic!("expected a daily RateLimited, got {other}"),
    }
    assert_eq!(cc.stats().requests, 1, "not retried");
    // The client now knows: the next call fails without a request.
    assert!(cc.account().await.is_err());
    assert_eq!(cc.stats().requests, 1);
    assert_eq!(cc.daily_usage().map(|d| d.remaining()), Some(0));
}

#[tokio::test]
async fn the_default_limits_never_draw_a_429_from_a_fake_enforcing_four_per_second() {
    let fake = ConstantContactFake::start(FakeConfig {
        rate_limit: Some(4),
        ..small(60)
    })
    .await;
    let cc = ConstantContact::builder()
        .access_token(TOKEN.into())
        .base_url(fake.base_url())
        .build()
        .expect("client with default limits");
    let start = Instant::now();
    let all = futures::future::join_all((0..9).map(|_| cc.account())).await;
    assert!(all.iter().all(|r| r.is_ok()));
    let stats = fake.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert!(stats.max_per_second <= 4, "{stats:?}");
    assert_eq!(cc.stats().rate_limited, 0);
    assert!(start.elapsed() >= Duration::from_secs(2), "spaced out");
    assert_eq!(cc.daily_usage().map(|d| d.used), Some(9));
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

/// Rows by key, asserting each key appears once.
fn rows(sink: &FilesSink, tenant: &str, stream: &str, key: &str) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for row in lines(&sink.data_path(tenant, stream)) {
        let id = s(&row, key).to_owned();
        assert!(
            out.insert(id.clone(), row).is_none(),
            "{stream}: {id} twice"
        );
    }
    out
}

#[tokio::test]
async fn a_spent_daily_quota_stops_at_a_checkpoint_and_the_next_day_resumes() {
    let fake = ConstantContactFake::start(FakeConfig {
        daily_quota: 20,
        deleted_contacts: 40,
        ..small(12_000)
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let quota_source = |fake: &ConstantContactFake| {
        let cc = ConstantContact::builder()
            .access_token(TOKEN.into())
            .base_url(fake.base_url())
            .retry(fast_retry())
            .limits(Limits::none().with_daily(DailyLimit::utc(10_000)))
            .build()
            .expect("client");
        Arc::new(ConstantContactSource::new(cc).with_settle_lag(Duration::ZERO))
    };
    let run = |src: Arc<ConstantContactSource>| {
        let sync = Sync::new(src, sink.clone())
            .tenant("acme")
            .streams([
                STREAM_CONTACT_LISTS,
                STREAM_CONTACTS,
                STREAM_EMAIL_CAMPAIGNS,
            ])
            .checkpoint_every(5);
        async move { sync.run().await }
    };
    let first = run(quota_source(&fake)).await;
    assert!(!first.is_success());
    assert!(first.streams[0].error.is_none(), "lists fit in the quota");
    let contacts = &first.streams[1];
    match contacts.error.as_deref() {
        Some(Error::RateLimited { daily: true, .. }) => {}
        other => panic!("expected a daily stop, got {other:?}"),
    }
    let resume_at = contacts.resume_at.expect("resume time");
    assert!(resume_at > Utc::now() && resume_at <= Utc::now() + chrono::Duration::days(1));
    assert_eq!(first.resume_at(), Some(resume_at));
    // 20 requests: lists 1, custom fields 1 (contacts' schema), 18 pages of
    // contacts; the 19th page is refused. The 18 pages read are committed
    // (three checkpoints of 5, then the rest when the stream failed).
    assert_eq!(fake.used_today(), 20);
    assert_eq!(contacts.records, 18 * 500);
    let cp = sink
        .load_state("acme", STREAM_CONTACTS)
        .await
        .expect("state")
        .expect("checkpoint");
    assert!(!cp.complete);
    assert_eq!(cp.records, 18 * 500);
    // Campaigns: refused by the client itself, no request sent.
    assert!(matches!(
        first.streams[2].error.as_deref(),
        Some(Error::RateLimited { daily: true, .. })
    ));
    assert_eq!(first.streams[2].requests.requests, 0);

    // The next day: a new run resumes at the checkpoint.
    fake.reset_day();
    fake.reset_stats();
    let second = run(quota_source(&fake)).await;
    assert!(second.is_success(), "{second:#?}");
    let contacts = &second.streams[1];
    assert!(contacts.resumed);
    assert_eq!(contacts.records, 12_040 - 18 * 500);
    // The count covers the whole listing, across the stop.
    assert_eq!(contacts.counts.len(), 1);
    assert_eq!(
        (contacts.counts[0].reported, contacts.counts[0].loaded),
        (12_040, 12_040)
    );
    // 7 pages left (25 in all) and the custom fields for the schema.
    assert_eq!(fake.stats().per_path["GET /v3/contacts"], 7);
    let got = rows(&sink, "acme", STREAM_CONTACTS, "contact_id");
    let want: HashSet<String> = fake
        .contacts(true)
        .iter()
        .map(|c| s(c, "contact_id").to_owned())
        .collect();
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), want);
    let deleted: HashSet<String> = fake.contact_ids(true).into_iter().collect();
    for (id, row) in &got {
        assert_eq!(row["_deleted"], deleted.contains(id), "{id}");
    }
}

#[tokio::test]
async fn a_full_sync_then_an_incremental_one_into_files_has_every_change_once() {
    let fake = ConstantContactFake::start(small(900)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let run = || {
        let sink = sink.clone();
        let src = Arc::new(source(&fake));
        async move { Sync::new(src, sink).tenant("acme").run().await }
    };
    let first = run().await;
    assert!(first.is_success(), "{first:#?}");
    assert_eq!(first.streams.len(), ALL_STREAMS.len());
    assert!(first.streams.iter().all(|s| s.mode == ReadMode::FirstSync));

    let now = Utc::now();
    fake.update_contact(5, now);
    fake.delete_contact(6, now);
    let added = fake.add_contacts(3, now);
    fake.update_campaign(0, now);
    fake.remove_campaign(3, now);
    fake.bump_summary(1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    fake.reset_stats();

    let second = run().await;
    assert!(second.is_success(), "{second:#?}");
    let report: HashMap<&str, _> = second
        .streams
        .iter()
        .map(|s| (s.stream.as_str(), s))
        .collect();
    for s in [
        STREAM_CONTACTS,
        STREAM_EMAIL_CAMPAIGNS,
        STREAM_CAMPAIGN_ACTIVITIES,
    ] {
        assert!(report[s].is_incremental(), "{s}");
    }
    assert_eq!(
        report[STREAM_CAMPAIGN_SUMMARIES].mode,
        ReadMode::FullListing,
        "re-read in full"
    );
    for r in first.streams.iter().chain(&second.streams) {
        assert_eq!(r.count_mismatches().count(), 0, "{r:#?}");
    }
    assert_eq!(
        report[STREAM_CONTACTS].counts.len(),
        1,
        "the window of changes"
    );
    // The window holds the update and the 3 new contacts; the delete came
    // from the sweep.
    assert_eq!(report[STREAM_CONTACTS].counts[0].reported, 1 + 3);
    assert_eq!(report[STREAM_CONTACTS].records, 2 + 3);
    assert_eq!(report[STREAM_EMAIL_CAMPAIGNS].records, 2);
    assert_eq!(
        report[STREAM_CAMPAIGN_ACTIVITIES].records as usize,
        fake.activity_ids(0).len() + fake.activity_ids(3).len()
    );

    // Every stream's file: each record once, equal to the fake's truth.
    let contacts = rows(&sink, "acme", STREAM_CONTACTS, "contact_id");
    let truth = fake.contacts(true);
    assert_eq!(contacts.len(), truth.len());
    for t in &truth {
        let row = &contacts[s(t, "contact_id")];
        assert_eq!(row["first_name"], t["first_name"]);
        assert_eq!(row["_deleted"], t.get("deleted_at").is_some());
    }
    for id in &added {
        assert_eq!(contacts[id]["_deleted"], false);
    }
    let campaigns = rows(&sink, "acme", STREAM_EMAIL_CAMPAIGNS, "campaign_id");
    assert_eq!(campaigns.len(), fake.campaigns().len());
    assert_eq!(campaigns[&fake.campaign_id(3)]["_deleted"], true);
    let activities = rows(
        &sink,
        "acme",
        STREAM_CAMPAIGN_ACTIVITIES,
        "campaign_activity_id",
    );
    for a in fake.activities() {
        assert_eq!(
            activities[s(&a, "campaign_activity_id")]["subject"],
            a["subject"]
        );
    }
    for id in fake.activity_ids(3) {
        assert_eq!(activities[&id]["_deleted"], true, "{id}");
    }
    let summaries = rows(&sink, "acme", STREAM_CAMPAIGN_SUMMARIES, "campaign_id");
    assert_eq!(summaries.len(), fake.summaries().len());
    for t in fake.summaries() {
        assert_eq!(
            summaries[s(&t, "campaign_id")]["opens"],
            t["unique_counts"]["opens"]
        );
    }
    assert_eq!(
        rows(&sink, "acme", STREAM_CONTACT_LISTS, "list_id").len(),
        fake.lists().len()
    );
    // An id-only listing of the live contacts agrees with the files.
    let src = source(&fake);
    let v = headwater::sync::verify(&src, sink.as_ref(), "acme", STREAM_CONTACTS)
        .await
        .expect("verify");
    assert!(v.is_exact(), "{v:?}");
    assert_eq!(v.source_count as usize, fake.contact_ids(false).len());
}

#[tokio::test]
async fn a_plan_counts_contacts_and_lists_and_matches_the_run() {
    let fake = ConstantContactFake::start(FakeConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let src = Arc::new(source(&fake));
    let sync = Sync::new(src.clone(), sink.clone())
        .tenant("acme")
        .streams([
            STREAM_CONTACT_LISTS,
            STREAM_CONTACTS,
            STREAM_EMAIL_CAMPAIGNS,
        ]);
    let plan = sync.plan().await.expect("plan");
    let (lists, contacts, campaigns) = (&plan.streams[0], &plan.streams[1], &plan.streams[2]);
    assert_eq!((lists.records, lists.requests), (Some(6), 2));
    // One count, three pages of 500 and the custom fields of the schema.
    assert_eq!((contacts.records, contacts.requests), (Some(1_212), 5));
    assert!(!contacts.incremental);
    assert_eq!((campaigns.records, campaigns.requests), (None, 1));
    assert!(!campaigns.notes.is_empty());

    let first = sync.run().await;
    assert!(first.is_success(), "{first:#?}");
    // The run makes the calls the plan counted, less its own count.
    assert_eq!(first.streams[0].requests.requests, lists.requests - 1);
    assert_eq!(first.streams[1].requests.requests, contacts.requests - 1);

    fake.update_contact(1, Utc::now());
    fake.update_contact(2, Utc::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let plan = sync.plan().await.expect("plan");
    let contacts = &plan.streams[1];
    assert!(contacts.incremental);
    // Counts of the window (2) and of the deleted sweep; a page of each; the schema.
    assert_eq!((contacts.records, contacts.requests), (Some(2), 5));
    let second = sync.run().await;
    assert_eq!(second.streams[1].records, 2);
    assert_eq!(second.streams[1].requests.requests, contacts.requests - 2);
}
