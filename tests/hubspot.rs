//! The HubSpot client and source against the testkit fake: pagination,
//! retries, rate limits, tokens, request plans, decode errors.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use headwater::auth::{
    AccessTokenSource, Callback, MemoryTokenStore, OAuthClient, OAuthConfig, TokenProvider,
    TokenSet, TokenStore,
};
use headwater::http::{DailyLimit, Limits, RetryConfig};
use headwater::hubspot::{HubSpot, HubSpotSource, PRIVATE_APP_LIMIT};
use headwater::schema::FieldType;
use headwater::source::{Page, Source};
use headwater::testkit::hubspot::{FakeConfig, FakeRateLimit, HubSpotFake, ObjectSeed};
use headwater::{AuthErrorKind, Error};
use secrecy::ExposeSecret;

const PAT: &str = "pat-fake-token";

fn config(contacts: usize) -> FakeConfig {
    let mut c = FakeConfig::default();
    c.objects.insert(
        "contacts".into(),
        ObjectSeed {
            count: contacts,
            archived: 3,
        },
    );
    c
}

fn fast_retry() -> RetryConfig {
    RetryConfig::default().with_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn client(fake: &HubSpotFake) -> HubSpot {
    HubSpot::builder()
        .private_app_token(PAT.into())
        .base_url(fake.uri())
        .retry(fast_retry())
        .limits(Limits::default())
        .build()
        .expect("client")
}

async fn read_all(source: &HubSpotSource, stream: &str) -> Result<Vec<Page>, Error> {
    let schema = source.schema(stream).await?;
    source.read(&schema, None).try_collect().await
}

#[tokio::test]
async fn pagination_reads_every_record_once_over_many_pages() {
    let fake = HubSpotFake::start(config(1_050)).await;
    let source = HubSpotSource::new(client(&fake));
    let pages = read_all(&source, "contacts").await.expect("read");
    // 11 pages of live contacts (100 each, last 50) and 1 of archived ones.
    assert_eq!(pages.len(), 12);
    let ids: Vec<String> = pages
        .iter()
        .flat_map(|p| p.records.iter().map(|r| r.id.clone()))
        .collect();
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no record twice");
    let mut want: HashSet<String> = fake.ids("contacts", false).into_iter().collect();
    assert_eq!(want.len(), 1_050);
    let archived: HashSet<String> = fake.ids("contacts", true).into_iter().collect();
    want.extend(archived.iter().cloned());
    assert_eq!(unique, want);
    // Archived records come marked deleted.
    for r in pages.iter().flat_map(|p| &p.records) {
        assert_eq!(r.deleted, archived.contains(&r.id), "{}", r.id);
    }
    // The typed SDK path walks the same listing.
    let typed: Vec<_> = client(&fake)
        .contacts()
        .list()
        .stream()
        .try_collect()
        .await
        .expect("typed");
    assert_eq!(typed.len(), 1_050);
    assert!(typed.iter().any(|c| c.email.is_some()));
}

#[tokio::test]
async fn records_are_typed_by_the_properties_schema() {
    let fake = HubSpotFake::start(config(120)).await;
    let source = HubSpotSource::new(client(&fake));
    let schema = source.schema("contacts").await.expect("schema");
    let types: std::collections::HashMap<_, _> = schema
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.field_type))
        .collect();
    assert_eq!(types["email"], FieldType::String);
    assert_eq!(types["createdate"], FieldType::Timestamp);
    assert_eq!(types["updatedAt"], FieldType::Timestamp);
    let mut seen = HashSet::new();
    for p in source.client().properties("contacts").await.expect("props") {
        seen.insert(p.property_type.clone());
        let want = headwater::hubspot::property_field_type(&p.property_type, &p.field_type);
        assert_eq!(types[p.name.as_str()], want, "{}", p.name);
    }
    for t in [
        "string",
        "number",
        "date",
        "datetime",
        "enumeration",
        "bool",
    ] {
        assert!(seen.contains(t), "the fake serves a `{t}` property");
    }
    let pages = read_all(&source, "contacts").await.expect("read");
    for r in pages.iter().flat_map(|p| &p.records) {
        for (k, v) in &r.data {
            let ok = match (types.get(k.as_str()), v) {
                (_, serde_json::Value::Null) => true,
                (Some(FieldType::Number), v) => v.is_number(),
                (Some(FieldType::Boolean), v) => v.is_boolean(),
                (Some(FieldType::String | FieldType::Date | FieldType::Timestamp), v) => {
                    v.is_string()
                }
                (Some(_), _) => true,
                (None, _) => false,
            };
            assert!(ok, "{}: field {k} = {v} does not fit its schema type", r.id);
            if let serde_json::Value::String(s) = v {
                assert!(
                    !(s.is_empty() && types.get(k.as_str()) != Some(&FieldType::String)),
                    "blank {k} must be null"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_repeating_cursor_stops_with_a_clear_error() {
    let fake = HubSpotFake::start(config(1_000)).await;
    fake.repeat_cursor("contacts", 3);
    let source = HubSpotSource::new(client(&fake));
    let err = read_all(&source, "contacts").await.expect_err("must stop");
    match err {
        Error::CursorRepeated { what, pages, .. } => {
            assert!(what.contains("contacts"), "{what}");
            assert!(pages >= 3, "{pages}");
        }
        other => panic!("expected CursorRepeated, got {other}"),
    }
}

#[tokio::test]
async fn a_malformed_page_names_the_stream_page_and_path() {
    let fake = HubSpotFake::start(config(500)).await;
    fake.malformed_page("contacts", 2);
    // The typed SDK stays strict: the listing fails naming page and path.
    let err = client(&fake)
        .contacts()
        .list()
        .pages()
        .try_collect::<Vec<_>>()
        .await
        .expect_err("must fail");
    match &err {
        Error::Decode { what, path, .. } => {
            assert!(what.contains("contacts"), "{what}");
            assert_eq!(path, "results[3].properties");
        }
        other => panic!("expected Decode, got {other}"),
    }
    // The source reports the record on its page, for the quarantine.
    let source = HubSpotSource::new(client(&fake));
    let pages = read_all(&source, "contacts").await.expect("read");
    let rejected: Vec<_> = pages.iter().flat_map(|p| &p.rejected).collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].path, "results[3].properties");
    assert!(String::from_utf8_lossy(&rejected[0].raw).contains("[object Object]"));
    let read: usize = pages.iter().map(|p| p.records.len()).sum();
    fake.clear_faults();
    let clean = read_all(&source, "contacts").await.expect("read");
    let all: usize = clean.iter().map(|p| p.records.len()).sum();
    assert_eq!(read + 1, all, "every other record was read");
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let fake = HubSpotFake::start(config(10)).await;
    let hs = client(&fake);
    fake.fail_next_with_retry_after(1, 1);
    let start = Instant::now();
    let owners: Vec<_> = hs
        .owners(false)
        .try_collect()
        .await
        .expect("second attempt succeeds");
    assert!(!owners.is_empty());
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        start.elapsed()
    );
    let stats = hs.stats();
    assert_eq!(
        (stats.requests, stats.retries, stats.rate_limited),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_typed() {
    let fake = HubSpotFake::start(config(10)).await;
    let hs = HubSpot::builder()
        .private_app_token(PAT.into())
        .base_url(fake.uri())
        .retry(fast_retry().with_max_retries(2))
        .build()
        .expect("client");
    fake.fail_next(2, 502);
    let ok: Vec<_> = hs
        .owners(false)
        .try_collect()
        .await
        .expect("third attempt succeeds");
    assert!(!ok.is_empty());
    fake.fail_next(10, 503);
    let err = hs
        .owners(false)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("retries run out");
    assert_eq!(err.status(), Some(503));
    assert!(err.is_retryable());
    match &err {
        Error::Api { body, path, .. } => {
            assert_eq!(path, "/crm/v3/owners");
            assert!(
                body.correlation_id.is_some(),
                "HubSpot's error body is parsed: {body:?}"
            );
        }
        other => panic!("expected Api, got {other}"),
    }
    // 3 + 3 attempts.
    assert_eq!(hs.stats().requests, 6);
}

async fn oauth_provider(
    fake: &HubSpotFake,
    store: Arc<dyn TokenStore>,
    tokens: TokenSet,
) -> TokenProvider {
    let oauth = OAuthClient::new(
        OAuthConfig::hubspot(
            fake.config().client_id.clone(),
            fake.config().client_secret.clone().into(),
        )
        .with_token_url(&format!("{}/oauth/v1/token", fake.uri()))
        .expect("url"),
    )
    .expect("oauth")
    .with_retry(fast_retry());
    TokenProvider::new(oauth, store, "hubspot/test", Some(tokens))
        .await
        .expect("provider")
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries() {
    let fake = HubSpotFake::start(config(10)).await;
    let (access, refresh) = fake.mint_tokens();
    let tokens = TokenSet::new(
        access.into(),
        Some(refresh.into()),
        Some(Duration::from_secs(1800)),
    );
    let provider = oauth_provider(&fake, Arc::new(MemoryTokenStore::new()), tokens).await;
    let hs = HubSpot::builder()
        .oauth(provider.clone())
        .base_url(fake.uri())
        .retry(fast_retry())
        .build()
        .expect("client");
    fake.expire_access_tokens();
    let owners: Vec<_> = hs
        .owners(false)
        .try_collect()
        .await
        .expect("refreshed and retried");
    assert!(!owners.is_empty());
    assert_eq!(provider.refresh_count(), 1);
    assert_eq!(fake.stats().token_refreshes, 1);
    // A token that is refused even after a refresh is an auth error, not a loop.
    let hs = HubSpot::builder()
        .private_app_token("pat-not-known".into())
        .base_url(fake.uri())
        .build()
        .expect("client");
    let err = hs
        .owners(false)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            Error::Auth {
                kind: AuthErrorKind::Rejected,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn fifty_concurrent_requests_on_an_expired_token_make_one_refresh() {
    let fake = HubSpotFake::start(config(10)).await;
    let (_, refresh) = fake.mint_tokens();
    // Only a refresh token: the access token is "expired".
    let provider = oauth_provider(
        &fake,
        Arc::new(MemoryTokenStore::new()),
        TokenSet::from_refresh_token(refresh.into()),
    )
    .await;
    let hs = HubSpot::builder()
        .oauth(provider.clone())
        .base_url(fake.uri())
        .limits(Limits::default())
        .build()
        .expect("client");
    let results = futures::future::join_all((0..50).map(|_| {
        let hs = hs.clone();
        async move { hs.owners(false).try_collect::<Vec<_>>().await }
    }))
    .await;
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(fake.stats().token_refreshes, 1);
    assert_eq!(provider.refresh_count(), 1);
}

#[tokio::test]
async fn a_rotated_refresh_token_is_persisted_before_use() {
    let mut cfg = config(10);
    cfg.rotate_refresh_tokens = true;
    let fake = HubSpotFake::start(cfg).await;
    let (_, refresh) = fake.mint_tokens();
    let store = Arc::new(MemoryTokenStore::new());
    let provider = oauth_provider(
        &fake,
        store.clone(),
        TokenSet::from_refresh_token(refresh.clone().into()),
    )
    .await;
    let access = provider.access_token().await.expect("refresh");
    let stored = store
        .load("hubspot/test")
        .await
        .expect("load")
        .expect("stored");
    let new_refresh = stored
        .refresh_token
        .as_ref()
        .expect("refresh token")
        .expose_secret()
        .to_owned();
    assert_ne!(new_refresh, refresh, "the fake rotated the refresh token");
    assert_eq!(
        stored
            .access_token
            .as_ref()
            .map(|a| a.expose_secret().to_owned()),
        Some(access.expose_secret().to_owned())
    );
    // A new process seeded with the spent token uses the stored one instead.
    let again = oauth_provider(
        &fake,
        store.clone(),
        TokenSet::from_refresh_token(refresh.clone().into()),
    )
    .await;
    assert_eq!(
        again
            .tokens()
            .refresh_token
            .map(|r| r.expose_secret().to_owned()),
        Some(new_refresh)
    );
    // The spent token itself is refused as "connect again".
    let spent = oauth_provider(
        &fake,
        Arc::new(MemoryTokenStore::new()),
        TokenSet::from_refresh_token(refresh.into()),
    )
    .await;
    let err = spent.access_token().await.expect_err("spent");
    assert!(err.needs_reauthorization(), "{err}");
}

#[tokio::test]
async fn oauth_connect_checks_state_exchanges_the_code_and_identifies_the_account() {
    let fake = HubSpotFake::start(config(10)).await;
    let oauth = OAuthClient::new(
        OAuthConfig::hubspot(
            fake.config().client_id.clone(),
            fake.config().client_secret.clone().into(),
        )
        .with_token_url(&format!("{}/oauth/v1/token", fake.uri()))
        .expect("url")
        .with_redirect_url("http://127.0.0.1:8765/callback")
        .expect("url"),
    )
    .expect("oauth");
    let req = oauth.authorize_url();
    let code = fake.authorize(&["oauth", "crm.objects.contacts.read"]);
    let forged = Callback::from_query(&format!("code={code}&state=forged"));
    assert!(oauth
        .exchange_code(oauth.authorize_url().pending, &forged)
        .await
        .is_err());
    let cb = Callback::from_query(&format!("code={code}&state={}", req.pending.state()));
    // A copy, as a replayed session entry would be.
    let replayed: headwater::auth::PendingAuthorization =
        serde_json::from_value(serde_json::to_value(&req.pending).expect("json")).expect("copy");
    let tokens = oauth
        .exchange_code(req.pending, &cb)
        .await
        .expect("exchange");
    assert!(tokens.refresh_token.is_some() && tokens.expires_at.is_some());
    // A code is single use.
    let err = oauth
        .exchange_code(replayed, &cb)
        .await
        .expect_err("reused code");
    assert!(err.needs_reauthorization(), "{err}");
    let provider = TokenProvider::new(
        oauth,
        Arc::new(MemoryTokenStore::new()),
        "hubspot/new",
        Some(tokens),
    )
    .await
    .expect("provider");
    let source = HubSpotSource::new(
        HubSpot::builder()
            .oauth(provider)
            .base_url(fake.uri())
            .build()
            .expect("client"),
    );
    let info = source.check().await.expect("check");
    assert_eq!(info.account_id, fake.config().hub_id.to_string());
    assert_eq!(
        info.name.as_deref(),
        Some(fake.config().hub_domain.as_str())
    );
    assert_eq!(info.user.as_deref(), Some(fake.config().user.as_str()));
    assert!(info.scopes.iter().any(|s| s == "crm.objects.contacts.read"));
    assert!(
        !info.details.contains_key("token"),
        "the token is not echoed into account details"
    );
    // A private app is identified through the account details.
    let info = HubSpotSource::new(client(&fake))
        .check()
        .await
        .expect("check");
    assert_eq!(info.account_id, fake.config().hub_id.to_string());
}

#[tokio::test]
async fn hundreds_of_custom_properties_never_make_a_414() {
    let mut cfg = config(250);
    cfg.custom_properties = 700;
    let fake = HubSpotFake::start(cfg).await;
    let source = HubSpotSource::new(client(&fake));
    let schema = source.schema("contacts").await.expect("schema");
    assert!(schema.fields.len() > 700);
    fake.reset_stats();
    let pages: Vec<Page> = source
        .read(&schema, None)
        .try_collect()
        .await
        .expect("no 414");
    let records: Vec<_> = pages.iter().flat_map(|p| &p.records).collect();
    assert_eq!(records.iter().filter(|r| !r.deleted).count(), 250);
    // Every property arrives, through list-ids + batch read: 2 calls per
    // page, plus the search for the live total (the completeness check).
    assert!(records[0].data.len() > 700, "{}", records[0].data.len());
    assert_eq!(fake.stats().requests, 2 * pages.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_at_hubspots_quota_draws_no_429_from_the_rolling_window() {
    let mut cfg = config(10);
    cfg.rate_limit = Some(FakeRateLimit {
        max: 190,
        window: Duration::from_secs(10),
    });
    let fake = HubSpotFake::start(cfg).await;
    let hs = HubSpot::builder()
        .private_app_token(PAT.into())
        .base_url(fake.uri())
        .retry(RetryConfig::none())
        .limits(Limits::standard(PRIVATE_APP_LIMIT))
        .build()
        .expect("client");
    // 300 requests from 10 concurrent tasks.
    let results = futures::stream::iter(0..300)
        .map(|_| {
            let hs = hs.clone();
            async move { hs.pipelines("deals").await }
        })
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await;
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} failed, first: {}",
        failures.len(),
        failures[0]
    );
    let stats = fake.stats();
    assert_eq!(stats.rate_limited, 0);
    assert_eq!(hs.stats().rate_limited, 0);
    assert!(stats.max_in_window <= 190, "{}", stats.max_in_window);
    // And the limiter does not leave the quota idle: the busiest window is
    // close to the ceiling.
    assert!(
        stats.max_in_window >= 170,
        "busiest window only {}",
        stats.max_in_window
    );
}

#[tokio::test]
async fn other_streams_owners_pipelines_and_any_object_type() {
    let mut cfg = config(10);
    cfg.objects.insert(
        "calls".into(),
        ObjectSeed {
            count: 130,
            archived: 0,
        },
    );
    let fake = HubSpotFake::start(cfg).await;
    let source = HubSpotSource::new(client(&fake)).with_archived(false);
    let owners = read_all(&source, "owners").await.expect("owners");
    assert_eq!(
        owners.iter().map(|p| p.records.len()).sum::<usize>(),
        fake.config().owners
    );
    for stream in ["deal_pipelines", "ticket_pipelines"] {
        let pages = read_all(&source, stream).await.expect(stream);
        assert!(!pages[0].records.is_empty());
        assert!(pages[0].records[0].data["stages"].is_array());
    }
    let calls = read_all(&source, "calls").await.expect("calls");
    assert_eq!(calls.iter().map(|p| p.records.len()).sum::<usize>(), 130);
    assert!(matches!(
        source.schema("no such; stream").await,
        Err(Error::Config(_))
    ));
    let catalog = source.discover().await.expect("discover");
    let names: Vec<_> = catalog.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "contacts",
            "companies",
            "deals",
            "tickets",
            "owners",
            "deal_pipelines",
            "ticket_pipelines",
            "contacts_to_companies",
            "contacts_to_deals",
            "companies_to_deals",
            "deals_to_tickets",
            "contacts_to_tickets",
            "companies_to_tickets",
        ]
    );
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output() {
    let fake = HubSpotFake::start(config(10)).await;
    let (access, refresh) = fake.mint_tokens();
    let tokens = TokenSet::new(
        access.clone().into(),
        Some(refresh.clone().into()),
        Some(Duration::from_secs(60)),
    );
    let provider = oauth_provider(&fake, Arc::new(MemoryTokenStore::new()), tokens.clone()).await;
    let hs_oauth = HubSpot::builder()
        .oauth(provider.clone())
        .base_url(fake.uri())
        .build()
        .expect("client");
    let hs_pat = client(&fake);
    let cfg = OAuthConfig::hubspot("client", fake.config().client_secret.clone().into());
    let text = format!(
        "{tokens:?} {provider:?} {hs_oauth:?} {hs_pat:?} {cfg:?} {:?} {:?}",
        HubSpotSource::new(hs_pat.clone()),
        OAuthClient::new(cfg.clone())
            .expect("oauth")
            .authorize_url()
    );
    for secret in [
        access.as_str(),
        refresh.as_str(),
        PAT,
        fake.config().client_secret.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "a secret leaked into Debug output: {text}"
        );
    }
}

#[tokio::test]
async fn search_filters_sorts_and_pages_through_the_search_limiter() {
    use headwater::hubspot::{Filter, Operator};
    let fake = HubSpotFake::start(config(450)).await;
    let hs = client(&fake);
    let ids = fake.ids("contacts", false);
    let cutoff = &ids[100];
    let pages: Vec<_> = hs
        .contacts()
        .search()
        .filter_group(vec![Filter::new(
            "hs_object_id",
            Operator::Gte,
            cutoff.clone(),
        )])
        .sort("hs_object_id", true)
        .properties(["email", "hs_object_id"])
        .limit(200)
        .pages()
        .try_collect()
        .await
        .expect("search");
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].total, 350);
    let got: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|c| c.id.clone()))
        .collect();
    assert_eq!(got, ids[100..].to_vec(), "ascending by id, from the cutoff");
    assert_eq!(
        fake.stats()
            .per_path
            .get("POST /crm/v3/objects/contacts/search"),
        Some(&2)
    );
}

// ---------------------------------------------------------------------------
// Several portals on one fake
// ---------------------------------------------------------------------------

fn portal_config(n: usize, contacts: usize) -> FakeConfig {
    let mut c = FakeConfig::for_portal(n);
    c.objects
        .insert("contacts".into(), ObjectSeed::new(contacts, 2));
    c
}

fn portal_client(portal: &HubSpotFake) -> HubSpot {
    HubSpot::builder()
        .private_app_token(portal.private_app_token().expect("token").into())
        .base_url(portal.uri())
        .retry(fast_retry())
        .limits(Limits::default())
        .build()
        .expect("client")
}

#[tokio::test]
async fn portals_read_concurrently_get_their_own_data() {
    let fake = HubSpotFake::start_portals(vec![portal_config(0, 230), portal_config(1, 140)]).await;
    let (p0, p1) = (fake.portal(0), fake.portal(1));
    assert_eq!(fake.portals(), 2);
    assert_eq!(p0.uri(), p1.uri(), "one address serves every portal");
    assert_ne!(p0.hub_id(), p1.hub_id());
    let (s0, s1) = (
        HubSpotSource::new(portal_client(&p0)),
        HubSpotSource::new(portal_client(&p1)),
    );
    let (r0, r1) = futures::join!(read_all(&s0, "contacts"), read_all(&s1, "contacts"));
    let (r0, r1) = (r0.expect("portal 0"), r1.expect("portal 1"));
    for (pages, portal) in [(&r0, &p0), (&r1, &p1)] {
        let live: Vec<String> = pages
            .iter()
            .flat_map(|p| &p.records)
            .filter(|r| !r.deleted)
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(live, portal.ids("contacts", false));
        // Every value is the portal's own record.
        for r in pages.iter().flat_map(|p| &p.records).filter(|r| !r.deleted) {
            let truth = portal.record_by_id("contacts", &r.id).expect("truth");
            assert_eq!(r.data["email"], truth["properties"]["email"], "{}", r.id);
        }
    }
    assert_eq!(p0.ids("contacts", false).len(), 230);
    assert_eq!(p1.ids("contacts", false).len(), 140);
    // Seeds differ: the same id holds another contact in the other portal.
    assert_ne!(
        p0.record_by_id("contacts", "1000").expect("p0")["properties"]["email"],
        p1.record_by_id("contacts", "1000").expect("p1")["properties"]["email"]
    );
    // Each portal counted its own requests only.
    let (n0, n1) = (p0.stats().requests, p1.stats().requests);
    assert_eq!(n0, s0.request_stats().requests);
    assert_eq!(n1, s1.request_stats().requests);
    // Identity: the account details and OAuth token info name each portal.
    for portal in [&p0, &p1] {
        let info = HubSpotSource::new(portal_client(portal))
            .check()
            .await
            .expect("check");
        assert_eq!(info.account_id, portal.hub_id().to_string());
        let (access, refresh) = portal.mint_tokens();
        let provider = oauth_provider(
            portal,
            Arc::new(MemoryTokenStore::new()),
            TokenSet::new(
                access.into(),
                Some(refresh.into()),
                Some(Duration::from_secs(1800)),
            ),
        )
        .await;
        let hs = HubSpot::builder()
            .oauth(provider)
            .base_url(portal.uri())
            .retry(fast_retry())
            .build()
            .expect("client");
        let info = HubSpotSource::new(hs).check().await.expect("oauth check");
        assert_eq!(info.account_id, portal.hub_id().to_string());
        assert_eq!(
            info.name.as_deref(),
            Some(portal.config().hub_domain.as_str())
        );
    }
    // A mutation of one portal leaves the other alone.
    p1.archive("contacts", 0, 1_700_000_000_000);
    assert_eq!(p0.ids("contacts", false).len(), 230);
    assert_eq!(p1.ids("contacts", false).len(), 139);
}

#[tokio::test]
async fn one_portals_rate_limit_does_not_throttle_another() {
    let mut configs = vec![portal_config(0, 10), portal_config(1, 10)];
    for c in &mut configs {
        c.rate_limit = Some(FakeRateLimit::new(5, Duration::from_secs(30)));
    }
    let fake = HubSpotFake::start_portals(configs).await;
    let no_retry = |portal: &HubSpotFake| {
        HubSpot::builder()
            .private_app_token(portal.private_app_token().expect("token").into())
            .base_url(portal.uri())
            .retry(RetryConfig::none())
            .limits(Limits::default())
            .build()
            .expect("client")
    };
    let (h0, h1) = (no_retry(&fake.portal(0)), no_retry(&fake.portal(1)));
    for _ in 0..5 {
        h0.pipelines("deals")
            .await
            .expect("within portal 0's window");
    }
    let err = h0.pipelines("deals").await.expect_err("portal 0 is spent");
    assert!(
        matches!(err, Error::RateLimited { daily: false, .. }),
        "{err}"
    );
    // Portal 1 has its whole window.
    for _ in 0..5 {
        h1.pipelines("deals")
            .await
            .expect("portal 1 is not throttled");
    }
    assert_eq!(fake.portal(0).stats().rate_limited, 1);
    assert_eq!(fake.portal(1).stats().rate_limited, 0);
    assert_eq!(fake.portal(1).stats().max_in_window, 5);
}

#[tokio::test]
async fn a_revoked_refresh_token_fails_only_its_own_portal() {
    let fake = HubSpotFake::start_portals(vec![portal_config(0, 10), portal_config(1, 10)]).await;
    let mut clients = Vec::new();
    for i in 0..2 {
        let portal = fake.portal(i);
        let (_, refresh) = portal.mint_tokens();
        if i == 0 {
            assert!(portal.revoke_refresh_token(&refresh));
            assert!(
                !fake.portal(1).revoke_refresh_token(&refresh),
                "not portal 1's"
            );
        }
        // Only the refresh token: the first call refreshes.
        let provider = oauth_provider(
            &portal,
            Arc::new(MemoryTokenStore::new()),
            TokenSet::from_refresh_token(refresh.into()),
        )
        .await;
        clients.push(
            HubSpot::builder()
                .oauth(provider)
                .base_url(portal.uri())
                .retry(fast_retry())
                .build()
                .expect("client"),
        );
    }
    let err = clients[0]
        .pipelines("deals")
        .await
        .expect_err("revoked grant");
    assert!(
        matches!(
            err,
            Error::Auth {
                kind: AuthErrorKind::Reauthorize,
                ..
            }
        ),
        "{err}"
    );
    clients[1]
        .pipelines("deals")
        .await
        .expect("the other portal keeps working");
    assert_eq!(fake.portal(0).stats().token_refreshes, 0);
    assert_eq!(fake.portal(1).stats().token_refreshes, 1);
}

// ---------------------------------------------------------------------------
// Completeness: what HubSpot reports against what was read
// ---------------------------------------------------------------------------

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn checks(pages: &[Page]) -> Vec<headwater::source::CountCheck> {
    pages.iter().flat_map(|p| p.counts.clone()).collect()
}

#[tokio::test]
async fn completeness_counts_match_on_a_quiet_fake() {
    let fake = HubSpotFake::start(config(450)).await;
    let source = HubSpotSource::new(client(&fake)).with_settle_lag(Duration::ZERO);
    let schema = source.schema("contacts").await.expect("schema");
    // A full read: one check, on the page that ends the live listing (the
    // fifth; the archived listing follows and is not counted by search).
    let pages: Vec<Page> = source
        .read(&schema, None)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(pages.len(), 6);
    assert_eq!(pages[4].counts.len(), 1);
    let c = &checks(&pages)[..];
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!((c[0].reported, c[0].loaded), (450, 450));
    assert!(c[0].matches());
    assert_eq!(c[0].scope, "contacts: all live records");

    // A resumed listing keeps counting from its checkpoint.
    let resumed: Vec<Page> = source
        .read(&schema, Some(pages[1].checkpoint.clone()))
        .try_collect()
        .await
        .expect("resume");
    let c = checks(&resumed);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].reported, c[0].loaded), (450, 450));

    // An incremental window: its count is the search total of its first query.
    let done = pages.last().expect("pages").checkpoint.clone();
    fake.touch_many("contacts", 20..430, now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pages: Vec<Page> = source
        .read(&schema, Some(done))
        .try_collect()
        .await
        .expect("incremental");
    let c = checks(&pages);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!((c[0].reported, c[0].loaded), (410, 410));
    assert!(
        c[0].scope.starts_with("contacts: lastmodifieddate in [20"),
        "{}",
        c[0].scope
    );
}

#[tokio::test]
async fn a_record_added_mid_window_shows_as_a_difference() {
    let fake = HubSpotFake::start(config(450)).await;
    let source = HubSpotSource::new(client(&fake)).with_settle_lag(Duration::ZERO);
    let schema = source.schema("contacts").await.expect("schema");

    // During the full listing: a record created after its first page.
    let mut stream = source.read(&schema, None);
    let first = stream.next().await.expect("page").expect("ok");
    assert!(first.counts.is_empty());
    fake.add("contacts", 1, now_ms());
    let rest: Vec<Page> = stream.try_collect().await.expect("rest");
    drop(first);
    let c = checks(&rest);
    assert_eq!((c[0].reported, c[0].loaded), (450, 451));
    assert!(!c[0].matches());
    let done = rest.last().expect("pages").checkpoint.clone();

    // During an incremental window: a record that enters the window between
    // two of its pages (the search index caught up with it late).
    let t = now_ms();
    fake.touch_many("contacts", 100..400, t);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut stream = source.read(&schema, Some(done));
    let first = stream.next().await.expect("page").expect("ok");
    assert!(first.counts.is_empty());
    fake.add("contacts", 1, t);
    let rest: Vec<Page> = stream.try_collect().await.expect("rest");
    let c = checks(&rest);
    assert_eq!(c.len(), 1, "{c:?}");
    // 300 touched, plus the record added during the full listing (after its
    // cursor: this is the run that picks it up), plus the late one.
    assert_eq!((c[0].reported, c[0].loaded), (301, 302));
    assert!(!c[0].matches());
}

// ---------------------------------------------------------------------------
// Plans, daily quotas, id listings
// ---------------------------------------------------------------------------

fn files_sink() -> (tempfile::TempDir, Arc<headwater::sinks::files::FilesSink>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(headwater::sinks::files::FilesSink::new(dir.path()).expect("sink"));
    (dir, sink)
}

#[tokio::test]
async fn the_plan_counts_the_calls_a_run_then_makes() {
    use headwater::sync::Sync;
    let fake = HubSpotFake::start(config(1_050)).await;
    let (_dir, sink) = files_sink();
    let source = Arc::new(HubSpotSource::new(client(&fake)).with_settle_lag(Duration::ZERO));
    let streams = [
        "contacts",
        "companies",
        "owners",
        "deal_pipelines",
        "contacts_to_companies",
    ];
    // Calls each estimate makes itself: one search for the object streams
    // and the association stream (the from-type's total).
    let own = [1, 1, 0, 0, 1];
    let sync = Sync::new(source.clone(), sink.clone())
        .tenant("acme")
        .streams(streams);
    let plan = sync.plan().await.expect("plan");
    assert_eq!(plan.streams[0].records, Some(1_050));
    assert_eq!(plan.streams[1].records, Some(60));
    assert!(plan.streams.iter().all(|p| !p.incremental));
    assert!(plan.streams[0]
        .notes
        .iter()
        .any(|n| n.contains("archived records")));
    let report = sync.run().await;
    assert!(report.is_success(), "{report:#?}");
    for ((p, s), own) in plan.streams.iter().zip(&report.streams).zip(own) {
        assert_eq!(p.stream, s.stream);
        assert_eq!(
            p.requests - own,
            s.requests.requests,
            "{}: planned {p:#?}",
            p.stream
        );
    }
    // contacts: the properties, the search total, 11 pages, 1 archived page.
    assert_eq!(report.streams[0].requests.requests, 14);
    // The completeness check reaches the report.
    let counts = &report.streams[0].counts;
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!((counts[0].reported, counts[0].loaded), (1_050, 1_050));
    assert_eq!(report.streams[0].count_mismatches().count(), 0);
    // contacts_to_companies: 11 id pages, 2 batch reads.
    assert_eq!(report.streams[4].requests.requests, 13);

    // The next run: incremental changes, associations not due.
    fake.touch_many("contacts", 100..550, now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let plan = sync.plan().await.expect("plan");
    let contacts = &plan.streams[0];
    assert!(contacts.incremental);
    assert_eq!(contacts.records, Some(450));
    assert!(plan.streams[4].incremental);
    assert_eq!(plan.streams[4].requests, 0, "associations are not due");
    let report = sync.run().await;
    assert!(report.is_success(), "{report:#?}");
    for ((p, s), own) in plan.streams.iter().zip(&report.streams).zip(own) {
        let own = if p.requests == 0 { 0 } else { own };
        assert_eq!(p.requests - own, s.requests.requests, "{}", p.stream);
    }
    // contacts: the properties, 3 search pages (200, 200, 50), 1 archived page.
    assert_eq!(report.streams[0].requests.requests, 5);
    assert_eq!(report.streams[0].records, 450 + 3);
    assert_eq!(
        plan.requests,
        plan.streams.iter().map(|p| p.requests).sum::<u64>()
    );
}

#[tokio::test]
async fn the_plan_takes_its_duration_from_the_clients_limits() {
    use headwater::http::RateLimit;
    let fake = HubSpotFake::start(config(1_050)).await;
    let hs = HubSpot::builder()
        .private_app_token(PAT.into())
        .base_url(fake.uri())
        .retry(fast_retry())
        .limits(Limits::standard(PRIVATE_APP_LIMIT).with_search(RateLimit::per_second(4)))
        .build()
        .expect("client");
    let source = HubSpotSource::new(hs);
    let schema = source.schema("contacts").await.expect("schema");
    let plan = source.plan(&schema, None).await.expect("plan");
    assert_eq!(plan.requests, 15);
    // The read's 14 calls at the client's pace: one per replenish interval
    // of its limiter (a little over 10 s / 190).
    let want = PRIVATE_APP_LIMIT.quota().replenish_interval() * 13;
    assert_eq!(plan.min_duration, want, "{plan:#?}");
    assert!(
        plan.min_duration > Duration::from_secs(10) / 190 * 13
            && plan.min_duration < Duration::from_secs(10) / 180 * 13,
        "{:?}",
        plan.min_duration
    );
    // A property list too long for a URL doubles the list calls.
    let mut cfg = config(250);
    cfg.custom_properties = 700;
    let fake = HubSpotFake::start(cfg).await;
    let source = HubSpotSource::new(client(&fake));
    let schema = source.schema("contacts").await.expect("schema");
    let plan = source.plan(&schema, None).await.expect("plan");
    // Own search + properties + search total + 3 pages × 2 + the archived
    // page × 2.
    assert_eq!(plan.requests, 1 + 1 + 1 + 6 + 2, "{plan:#?}");
    fake.reset_stats();
    let _: Vec<Page> = source
        .read(&schema, None)
        .try_collect()
        .await
        .expect("read");
    // The read itself (the properties call was made above).
    assert_eq!(fake.stats().requests, plan.requests - 2);
}

#[tokio::test]
async fn a_small_daily_limit_stops_the_client_before_hubspot_refuses() {
    let mut cfg = config(1_050);
    cfg.daily_limit = 8;
    let fake = HubSpotFake::start(cfg).await;
    let hs = HubSpot::builder()
        .private_app_token(PAT.into())
        .base_url(fake.uri())
        .retry(fast_retry())
        .limits(Limits::default())
        .daily_limit(DailyLimit::utc(8))
        .build()
        .expect("client");
    let source = HubSpotSource::new(hs);
    let schema = source.schema("contacts").await.expect("schema");
    let err = source
        .read(&schema, None)
        .try_collect::<Vec<Page>>()
        .await
        .expect_err("the quota runs out");
    match &err {
        Error::RateLimited {
            daily: true,
            retry_after: Some(wait),
            ..
        } => assert!(*wait <= Duration::from_secs(86_400), "{wait:?}"),
        other => panic!("expected a daily stop, got {other}"),
    }
    assert_eq!(fake.stats().rate_limited, 0, "the client stopped itself");
    assert_eq!(fake.stats().requests, 8);
    let usage = source.daily_usage().expect("usage");
    assert_eq!((usage.limit, usage.used, usage.remaining()), (8, 8, 0));
    // A client that does not count: HubSpot's DAILY 429 stops it the same
    // way, without retrying.
    let err = client(&fake)
        .pipelines("deals")
        .await
        .expect_err("hubspot refuses");
    assert!(
        matches!(err, Error::RateLimited { daily: true, .. }),
        "{err}"
    );
    assert_eq!(fake.stats().rate_limited, 1);
    assert!(client(&fake).stats().requests <= 1);
}

#[tokio::test]
async fn read_ids_lists_the_live_ids_one_call_per_hundred() {
    let fake = HubSpotFake::start(config(1_050)).await;
    fake.archive("contacts", 7, now_ms());
    fake.merge("contacts", 8, 9, now_ms());
    let source = HubSpotSource::new(client(&fake));
    let schema = source.schema("contacts").await.expect("schema");
    fake.reset_stats();
    let ids: Vec<String> = source.read_ids(&schema).try_concat().await.expect("ids");
    assert_eq!(ids, fake.ids("contacts", false));
    assert_eq!(ids.len(), 1_048);
    let stats = fake.stats();
    assert_eq!(stats.requests, 11);
    assert_eq!(
        stats.per_path.get("GET /crm/v3/objects/contacts"),
        Some(&11)
    );
    // Other streams list their records' ids.
    let owners = source.schema("owners").await.expect("owners");
    let ids: Vec<String> = source.read_ids(&owners).try_concat().await.expect("ids");
    assert_eq!(ids.len(), fake.config().owners);
}
