//! The Mailchimp SDK and source against the testkit fake: every stream,
//! pagination, changes during a read, incremental runs and the re-read
//! window, auth (API keys, OAuth, metadata, revoked tokens), the connection
//! limit, retries, decode errors, typed merge-field columns, and full then
//! incremental syncs into the files sink.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use headwater::auth::{Callback, OAuthClient};
use headwater::http::{Limits, RetryConfig};
use headwater::mailchimp::{
    self, Mailchimp, MailchimpSource, STREAM_AUTOMATIONS, STREAM_AUTOMATION_EMAILS,
    STREAM_CAMPAIGNS, STREAM_LISTS, STREAM_LIST_MEMBERS, STREAM_REPORTS,
};
use headwater::schema::{FieldType, StreamSchema};
use headwater::sinks::files::FilesSink;
use headwater::source::{CountCheck, Record, Source, StreamState};
use headwater::sync::{ReadMode, Sync};
use headwater::testkit::mailchimp::{AudienceSeed, MailchimpFake, MailchimpFakeConfig};
use headwater::{AuthErrorKind, Error};
use serde_json::Value;

fn fast_retry() -> RetryConfig {
    RetryConfig::default().with_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn client(fake: &MailchimpFake) -> Mailchimp {
    Mailchimp::builder()
        .api_key(fake.api_key().into())
        .base_url(fake.api_base())
        .retry(fast_retry())
        .build()
        .expect("client")
}

fn source(fake: &MailchimpFake) -> MailchimpSource {
    MailchimpSource::new(client(fake)).with_settle_lag(Duration::ZERO)
}

fn config(audiences: Vec<AudienceSeed>) -> MailchimpFakeConfig {
    MailchimpFakeConfig {
        audiences,
        ..MailchimpFakeConfig::default()
    }
}

/// What one read of a stream returned.
struct Read {
    records: Vec<Record>,
    state: Option<StreamState>,
    counts: Vec<CountCheck>,
    pages: usize,
}

async fn read(
    source: &MailchimpSource,
    stream: &str,
    state: Option<StreamState>,
) -> Result<Read, Error> {
    let schema = source.schema(stream).await?;
    read_schema(source, &schema, state).await
}

/// Reads with a schema fetched beforehand (discovery costs requests of its
/// own: the audiences and their merge fields).
async fn read_schema(
    source: &MailchimpSource,
    schema: &StreamSchema,
    state: Option<StreamState>,
) -> Result<Read, Error> {
    let pages: Vec<_> = source.read(schema, state).try_collect().await?;
    Ok(Read {
        pages: pages.len(),
        state: pages.last().map(|p| p.checkpoint.clone()),
        counts: pages.iter().flat_map(|p| p.counts.clone()).collect(),
        records: pages.into_iter().flat_map(|p| p.records).collect(),
    })
}

fn ids_once(records: &[Record]) -> HashSet<String> {
    let mut seen = HashSet::new();
    for r in records {
        assert!(seen.insert(r.id.clone()), "record {} read twice", r.id);
    }
    seen
}

fn member_keys(fake: &MailchimpFake) -> HashSet<String> {
    fake.list_ids()
        .iter()
        .flat_map(|l| {
            fake.member_ids(l)
                .into_iter()
                .map(move |m| format!("{l}:{m}"))
        })
        .collect()
}

/// One second ago: a change that happened after the previous run ended
/// (whose upper bound is at or before the time it ended).
fn just_now() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(1)
}

/// Waits for the next whole second, so that a change stamped "now" is
/// before the next read's upper bound.
async fn next_second() {
    let ms = Utc::now().timestamp_subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1_005 - ms.min(1_000)))).await;
}

fn route(fake: &MailchimpFake, r: &str) -> u64 {
    fake.stats().per_route.get(r).copied().unwrap_or(0)
}

const MEMBERS_ROUTE: &str = "GET /3.0/lists/{list_id}/members";

#[tokio::test]
async fn every_stream_is_read_in_full_and_equals_the_fakes_truth() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let source = source(&fake);
    let catalog = source.discover().await.expect("discover");
    let names: Vec<&str> = catalog.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            STREAM_LISTS,
            STREAM_LIST_MEMBERS,
            STREAM_CAMPAIGNS,
            STREAM_REPORTS,
            STREAM_AUTOMATIONS,
            STREAM_AUTOMATION_EMAILS
        ]
    );
    let truth: HashMap<&str, HashSet<String>> = HashMap::from([
        (STREAM_LISTS, fake.list_ids().into_iter().collect()),
        (STREAM_LIST_MEMBERS, member_keys(&fake)),
        (STREAM_CAMPAIGNS, fake.campaign_ids().into_iter().collect()),
        (STREAM_REPORTS, fake.report_ids().into_iter().collect()),
        (
            STREAM_AUTOMATIONS,
            fake.automation_ids().into_iter().collect(),
        ),
        (
            STREAM_AUTOMATION_EMAILS,
            fake.automation_email_ids()
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
        ),
    ]);
    assert_eq!(truth[STREAM_LIST_MEMBERS].len(), 1_525);
    assert_eq!(truth[STREAM_CAMPAIGNS].len(), 24);
    assert!(
        truth[STREAM_REPORTS].len() >= 15,
        "{}",
        truth[STREAM_REPORTS].len()
    );
    assert_eq!(truth[STREAM_AUTOMATION_EMAILS].len(), 6);
    for schema in &catalog.streams {
        let got = read(&source, &schema.name, None).await.expect("read");
        let ids = ids_once(&got.records);
        assert_eq!(ids, truth[schema.name.as_str()], "{}", schema.name);
        // Where the API reports a total, it matches what was read.
        for c in &got.counts {
            assert!(c.matches(), "{}: {c:?}", schema.name);
        }
        // Every record carries its key fields.
        for r in &got.records {
            for k in &schema.primary_key {
                assert!(
                    r.data.get(k).is_some_and(|v| v.is_string()),
                    "{}: {} lacks {k}",
                    schema.name,
                    r.id
                );
            }
            assert!(r.data.get("_links").is_none());
            assert!(!r.deleted);
        }
        // The finished state says where the next run starts.
        let done = got.state.expect("a final state");
        assert_eq!(done.0["phase"], "done", "{}: {}", schema.name, done.0);
        let incremental = source.resumes_incrementally(schema, &done);
        assert_eq!(
            incremental,
            [STREAM_LIST_MEMBERS, STREAM_CAMPAIGNS, STREAM_REPORTS].contains(&schema.name.as_str()),
            "{}",
            schema.name
        );
    }
    // The id listing (for verification) of members takes ids only.
    let schema = source.schema(STREAM_LIST_MEMBERS).await.expect("schema");
    fake.reset_stats();
    let ids: Vec<String> = source
        .read_ids(&schema)
        .try_collect::<Vec<_>>()
        .await
        .expect("ids")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ids.len(), 1_525);
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), member_keys(&fake));
    assert_eq!(
        fake.stats().requests,
        1 + 2 + 1 + 1,
        "audiences, then 2 + 1 + 1 pages"
    );
    // Members of every audience: one count check each, all reported.
    let members = read(&source, STREAM_LIST_MEMBERS, None)
        .await
        .expect("read");
    assert_eq!(members.counts.len(), 3);
    let reported: u64 = members.counts.iter().map(|c| c.reported).sum();
    assert_eq!(reported, 1_525);
    // A member record: typed, keyed by audience and subscriber hash.
    let list = fake.list_ids()[0].clone();
    let id = fake.member_ids(&list)[3].clone();
    let r = members
        .records
        .iter()
        .find(|r| r.id == format!("{list}:{id}"))
        .expect("member");
    let truth = fake.member(&list, &id).expect("truth");
    assert_eq!(r.data["email_address"], truth["email_address"]);
    assert_eq!(r.data["status"], truth["status"]);
    assert_eq!(r.data["list_id"], Value::String(list.clone()));
    assert_eq!(r.data["merge_fields"], truth["merge_fields"]);
    assert_eq!(
        r.data["last_changed"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok()),
        truth["last_changed"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok()),
    );
}

#[tokio::test]
async fn members_are_read_1000_per_page_and_a_count_over_1000_is_refused() {
    let fake = MailchimpFake::start(config(vec![AudienceSeed::new(2_500)])).await;
    let source = source(&fake);
    let schema = source.schema(STREAM_LIST_MEMBERS).await.expect("schema");
    fake.reset_stats();
    let got = read_schema(&source, &schema, None).await.expect("read");
    assert_eq!(ids_once(&got.records), member_keys(&fake));
    // 1000 + 1000 + 500: three requests (plus one listing the audiences).
    assert_eq!(route(&fake, MEMBERS_ROUTE), 3);
    assert_eq!(route(&fake, "GET /3.0/lists"), 1);
    assert_eq!(got.pages, 3);
    // The API refuses a page over 1000 with a problem document.
    let list = fake.list_ids()[0].clone();
    let err = client(&fake)
        .members(&list)
        .param("count", "1001")
        .send()
        .await
        .expect_err("count over 1000");
    match &err {
        Error::Api {
            status, body, path, ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(path, &format!("/3.0/lists/{list}/members"));
            assert!(
                body.message.as_deref().is_some_and(|m| m.contains("1000")),
                "{body:?}"
            );
            assert_eq!(
                body.error_key.as_deref(),
                Some("https://mailchimp.com/developer/marketing/docs/errors/")
            );
        }
        other => panic!("expected a 400, got {other}"),
    }
    // The SDK never asks for more than the API serves.
    let page = client(&fake)
        .members(&list)
        .count(5_000)
        .send()
        .await
        .expect("page");
    assert_eq!(page.items.len(), 1000);
    assert_eq!(page.total_items, Some(2_500));
}

#[tokio::test]
async fn a_tie_larger_than_a_page_is_read_once_without_looping() {
    // A bulk import: 1,800 members changed in one second.
    let fake = MailchimpFake::start(config(vec![AudienceSeed::new(2_600).with_tie(1_800)])).await;
    let source = source(&fake);
    fake.reset_stats();
    let got = read(&source, STREAM_LIST_MEMBERS, None)
        .await
        .expect("read");
    assert_eq!(ids_once(&got.records), member_keys(&fake));
    let requests = route(&fake, MEMBERS_ROUTE);
    assert!((3..=6).contains(&requests), "{requests} requests");
    assert!(
        got.counts.iter().all(CountCheck::matches),
        "{:?}",
        got.counts
    );
}

#[tokio::test]
async fn members_added_and_changed_during_a_read_are_neither_skipped_nor_repeated() {
    let fake = MailchimpFake::start(config(vec![AudienceSeed::new(3_000).with_tie(1_200)])).await;
    let source = source(&fake);
    let list = fake.list_ids()[0].clone();
    let before: Vec<String> = fake.member_ids(&list);
    let schema = source.schema(STREAM_LIST_MEMBERS).await.expect("schema");
    let mut pages = source.read(&schema, None);
    let first = pages.next().await.expect("a page").expect("page");
    let read_first: HashSet<String> = first
        .records
        .iter()
        .map(|r| {
            r.id.split_once(':')
                .map(|(_, m)| m.to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(read_first.len(), 1000);
    // While the read runs: change members already read and not yet read
    // (inside the bulk-import tie and after it), add members, archive one,
    // delete one permanently.
    let now = Utc::now();
    let unread: Vec<String> = before
        .iter()
        .filter(|m| !read_first.contains(*m))
        .cloned()
        .collect();
    let read_ids: Vec<String> = before
        .iter()
        .filter(|m| read_first.contains(*m))
        .cloned()
        .collect();
    // 600 of the 1,000 just read, all in the tie: more than the read's
    // margin inside a tie, so it must step back rather than skip.
    let mut changed: Vec<String> = read_ids.iter().take(600).cloned().collect();
    changed.extend(unread.iter().step_by(25).take(60).cloned());
    fake.change_members(&list, &changed, now);
    let added = fake.add_members(&list, 30, now);
    let archived = unread[7].clone();
    fake.archive_member(&list, &archived, now);
    let deleted = unread[11].clone();
    assert!(!changed.contains(&deleted) && !changed.contains(&archived));
    fake.delete_member(&list, &deleted);
    let mut rest: Vec<Record> = first.records;
    let mut final_state = first.checkpoint;
    while let Some(page) = pages.next().await {
        let page = page.expect("page");
        final_state = page.checkpoint;
        rest.extend(page.records);
    }
    drop(pages);
    let got = ids_once(&rest);
    let key = |m: &String| format!("{list}:{m}");
    for m in &before {
        let unchanged = !changed.contains(m) && *m != archived && *m != deleted;
        if unchanged {
            assert!(got.contains(&key(m)), "unchanged member {m} skipped");
        }
    }
    for m in &added {
        assert!(
            !got.contains(&key(m)),
            "members added during the read wait for the next run"
        );
    }
    // The next run reads exactly what changed while the first one ran.
    next_second().await;
    let next = read(&source, STREAM_LIST_MEMBERS, Some(final_state))
        .await
        .expect("incremental");
    let want: HashSet<String> = changed
        .iter()
        .chain(added.iter())
        .chain(std::iter::once(&archived))
        .map(key)
        .collect();
    assert_eq!(ids_once(&next.records), want);
    let arch = next
        .records
        .iter()
        .find(|r| r.id == key(&archived))
        .expect("archived member");
    assert_eq!(arch.data["status"], "archived");
    assert!(!arch.deleted, "archived members are records");
    // A member deleted permanently is no longer listed anywhere.
    assert!(!next.records.iter().any(|r| r.id == key(&deleted)));
    let v = next
        .records
        .iter()
        .find(|r| r.id == key(&changed[0]))
        .expect("changed member");
    assert!(
        v.data["merge_FNAME"]
            .as_str()
            .is_some_and(|s| s.ends_with("(v1)")),
        "{}",
        v.data["merge_FNAME"]
    );
}

#[tokio::test]
async fn incremental_runs_read_only_changes_and_re_read_the_trailing_window() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let source = source(&fake);
    let lists = fake.list_ids();
    let members_schema = source.schema(STREAM_LIST_MEMBERS).await.expect("schema");
    let members = read_schema(&source, &members_schema, None)
        .await
        .expect("full");
    let campaigns = read(&source, STREAM_CAMPAIGNS, None).await.expect("full");
    let reports = read(&source, STREAM_REPORTS, None).await.expect("full");
    assert_eq!(members.records.len(), 1_525);

    // Nothing changed: one request per audience (plus the audience list),
    // nothing read.
    fake.reset_stats();
    let idle = read_schema(&source, &members_schema, members.state.clone())
        .await
        .expect("idle");
    assert!(idle.records.is_empty(), "{} records", idle.records.len());
    assert_eq!(fake.stats().requests, 1 + lists.len() as u64);
    assert_eq!(idle.pages, 1);

    // Changes since the full read.
    let at = just_now();
    let changed: Vec<String> = fake.member_ids(&lists[0]).into_iter().take(5).collect();
    fake.change_members(&lists[0], &changed, at);
    let added = fake.add_members(&lists[2], 3, at);
    let sent = fake.sent_campaigns();
    let window_start = Utc::now() - chrono::Duration::days(28);
    let recent: Vec<String> = sent
        .iter()
        .filter(|(_, t)| *t >= window_start)
        .map(|(id, _)| id.clone())
        .collect();
    let old: Vec<String> = sent
        .iter()
        .filter(|(_, t)| *t < window_start - chrono::Duration::days(1))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(recent.len() >= 3 && !old.is_empty(), "{recent:?} {old:?}");
    fake.bump_report(&recent[0], 500, 70);
    fake.bump_report(&old[0], 500, 70);
    let new_campaign = fake.add_campaigns(2, at);
    fake.send_campaign(&new_campaign[0], at);

    fake.reset_stats();
    let m = read_schema(&source, &members_schema, members.state.clone())
        .await
        .expect("members");
    let want: HashSet<String> = changed
        .iter()
        .map(|id| format!("{}:{id}", lists[0]))
        .chain(added.iter().map(|id| format!("{}:{id}", lists[2])))
        .collect();
    assert_eq!(ids_once(&m.records), want);
    assert_eq!(fake.stats().requests, 1 + lists.len() as u64);
    assert_eq!(fake.stats().items_served.get("members"), Some(&8));

    // Campaigns: the new ones, and those sent within the re-read window.
    let c = read(&source, STREAM_CAMPAIGNS, campaigns.state.clone())
        .await
        .expect("campaigns");
    let mut want: HashSet<String> = new_campaign.iter().cloned().collect();
    want.extend(recent.iter().cloned());
    assert_eq!(ids_once(&c.records), want);

    // Reports: the window's, with the new figures; the old one stays as read.
    let r = read(&source, STREAM_REPORTS, reports.state.clone())
        .await
        .expect("reports");
    let mut want: HashSet<String> = recent.iter().cloned().collect();
    want.insert(new_campaign[0].clone());
    assert_eq!(ids_once(&r.records), want);
    let bumped = r
        .records
        .iter()
        .find(|x| x.id == recent[0])
        .expect("bumped report");
    let truth = fake.report(&recent[0]).expect("truth");
    assert_eq!(bumped.data["opens_total"], truth["opens"]["opens_total"]);
    assert_eq!(bumped.data["clicks_total"], truth["clicks"]["clicks_total"]);
    let before = reports
        .records
        .iter()
        .find(|x| x.id == recent[0])
        .expect("first read");
    assert_ne!(
        before.data["opens_total"], bumped.data["opens_total"],
        "the figures moved"
    );
    assert!(!r.records.iter().any(|x| x.id == old[0]));

    // A shorter window re-reads less.
    let narrow = MailchimpSource::new(client(&fake))
        .with_settle_lag(Duration::ZERO)
        .with_reread_window(Duration::from_secs(3600));
    let r = read(&narrow, STREAM_REPORTS, reports.state.clone())
        .await
        .expect("reports");
    assert_eq!(
        ids_once(&r.records),
        HashSet::from([new_campaign[0].clone()])
    );
}

#[tokio::test]
async fn an_audience_added_later_is_read_in_full_by_the_incremental_run() {
    let fake = MailchimpFake::start(config(vec![AudienceSeed::new(120)])).await;
    let source = source(&fake);
    let full = read(&source, STREAM_LIST_MEMBERS, None)
        .await
        .expect("full");
    let new_list = fake.add_audience("Late audience", 40, just_now());
    let next = read(&source, STREAM_LIST_MEMBERS, full.state)
        .await
        .expect("incremental");
    let want: HashSet<String> = fake
        .member_ids(&new_list)
        .into_iter()
        .map(|m| format!("{new_list}:{m}"))
        .collect();
    assert_eq!(ids_once(&next.records), want);
}

#[tokio::test]
async fn check_reads_the_account_from_the_api_root() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let info = source(&fake).check().await.expect("check");
    assert_eq!(info.provider, "mailchimp");
    assert_eq!(info.account_id, fake.config().account_id);
    assert_eq!(
        info.name.as_deref(),
        Some(fake.config().account_name.as_str())
    );
    assert_eq!(info.user.as_deref(), Some(fake.config().email.as_str()));
    assert_eq!(
        info.details["login_id"],
        Value::String(fake.config().login_id.clone())
    );
    assert!(info.details.get("_links").is_none());
    let account = client(&fake).account().await.expect("account");
    assert_eq!(
        account.login_id.as_deref(),
        Some(fake.config().login_id.as_str())
    );
    assert_eq!(account.email.as_deref(), Some(fake.config().email.as_str()));
}

#[tokio::test]
async fn oauth_connect_then_the_metadata_endpoint_names_the_data_centre() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let cfg = fake.config();
    let oauth = OAuthClient::new(
        mailchimp::oauth_config(cfg.client_id.clone(), cfg.client_secret.clone().into())
            .with_token_url(&fake.token_url())
            .expect("url")
            .with_redirect_url("http://127.0.0.1:8765/callback")
            .expect("url"),
    )
    .expect("oauth")
    .with_retry(fast_retry());
    let req = oauth.authorize_url();
    assert!(
        req.url.as_str().starts_with(mailchimp::AUTHORIZE_URL),
        "{}",
        req.url
    );
    let q: HashMap<_, _> = req.url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], cfg.client_id);
    assert_eq!(q["redirect_uri"], "http://127.0.0.1:8765/callback");
    let code = fake.issue_code();
    let cb = Callback::from_query(&format!("code={code}&state={}", req.pending.state()));
    // A copy, as a replayed session entry would be.
    let replayed: headwater::auth::PendingAuthorization =
        serde_json::from_value(serde_json::to_value(&req.pending).expect("json")).expect("copy");
    let tokens = oauth
        .exchange_code(req.pending, &cb)
        .await
        .expect("exchange");
    assert!(
        tokens.refresh_token.is_none(),
        "Mailchimp issues no refresh token"
    );
    let token = tokens.access_token.expect("access token");
    // A code is single use.
    let err = oauth
        .exchange_code(replayed, &cb)
        .await
        .expect_err("reused");
    assert!(err.needs_reauthorization(), "{err}");

    // The legacy lookup of the token's data centre and API host.
    let meta = mailchimp::oauth_metadata_at(&fake.metadata_url(), &token, fast_retry())
        .await
        .expect("metadata");
    assert_eq!(meta.dc, "us6");
    assert_eq!(meta.api_endpoint, fake.uri());
    assert_eq!(fake.stats().metadata_requests, 1);
    let mc = Mailchimp::builder()
        .access_token(token)
        .metadata(&meta)
        .retry(fast_retry())
        .build()
        .expect("client");
    assert_eq!(mc.api_client().base_url().as_str(), fake.api_base());
    let account = mc.account().await.expect("account");
    assert_eq!(account.account_id, cfg.account_id);
    // An unknown token is "connect again" at the metadata endpoint too.
    let err = mailchimp::oauth_metadata_at(&fake.metadata_url(), &"nope".into(), fast_retry())
        .await
        .expect_err("unknown token");
    assert!(err.needs_reauthorization(), "{err}");
}

#[tokio::test]
async fn a_revoked_oauth_token_means_reconnect_and_a_bad_key_is_rejected() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let token = fake.access_token();
    let mc = Mailchimp::builder()
        .access_token(token.clone().into())
        .base_url(fake.api_base())
        .retry(fast_retry())
        .build()
        .expect("client");
    mc.account().await.expect("works before");
    fake.revoke(&token);
    let err = mc.account().await.expect_err("revoked");
    match &err {
        Error::Auth { kind, provider, .. } => {
            assert_eq!(*kind, AuthErrorKind::Reauthorize);
            assert_eq!(*provider, "mailchimp");
        }
        other => panic!("expected Auth, got {other}"),
    }
    assert!(err.needs_reauthorization());
    // A source surfaces the same error from check() and read().
    let src = MailchimpSource::new(mc);
    assert!(src
        .check()
        .await
        .expect_err("revoked")
        .needs_reauthorization());
    let err = read(&src, STREAM_LISTS, None).await.err().expect("revoked");
    assert!(err.needs_reauthorization(), "{err}");
    // An API key that is refused is `Rejected`: a key is not reconnected.
    let bad = Mailchimp::builder()
        .api_key("ffffffffffffffffffffffffffffffff-us6".into())
        .base_url(fake.api_base())
        .build()
        .expect("client");
    let err = bad.account().await.expect_err("unknown key");
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
async fn never_more_than_ten_requests_in_flight() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    fake.set_latency(Duration::from_millis(40));
    let mc = client(&fake);
    let start = Instant::now();
    let results = futures::future::join_all((0..60).map(|_| {
        let mc = mc.clone();
        async move { mc.account().await }
    }))
    .await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let stats = fake.stats();
    assert!(
        stats.max_in_flight <= 10,
        "{} in flight",
        stats.max_in_flight
    );
    assert!(
        stats.max_in_flight >= 8,
        "requests ran in parallel: {}",
        stats.max_in_flight
    );
    assert_eq!(stats.over_connection_limit, 0);
    assert_eq!(mc.stats().rate_limited, 0);
    // 60 requests of 40 ms, 10 at a time: about 6 rounds.
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );

    // Without the limit, the fake refuses the excess with 429s (which the
    // client then retries): the limit above is what kept them away.
    fake.reset_stats();
    let unlimited = Mailchimp::builder()
        .api_key(fake.api_key().into())
        .base_url(fake.api_base())
        .retry(fast_retry().with_max_retries(50))
        .limits(Limits::none())
        .build()
        .expect("client");
    let results = futures::future::join_all((0..60).map(|_| {
        let mc = unlimited.clone();
        async move { mc.account().await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert!(fake.stats().over_connection_limit > 0);
    assert!(unlimited.stats().rate_limited > 0 && unlimited.stats().retries > 0);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_then_reported_typed() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let mc = client(&fake);
    fake.fail_next(2, 503);
    mc.account().await.expect("third attempt");
    assert_eq!((mc.stats().requests, mc.stats().retries), (3, 2));

    fake.fail_next_without_body(1, 429);
    mc.account().await.expect("a bodiless 429 is retried too");

    fake.fail_next_with_retry_after(1, 1);
    let start = Instant::now();
    mc.account().await.expect("after Retry-After");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    let mc = Mailchimp::builder()
        .api_key(fake.api_key().into())
        .base_url(fake.api_base())
        .retry(fast_retry().with_max_retries(2))
        .build()
        .expect("client");
    fake.fail_next(10, 500);
    let err = mc.account().await.expect_err("retries run out");
    assert!(err.is_retryable());
    match &err {
        Error::Api { status, body, .. } => {
            assert_eq!(*status, 500);
            assert!(body
                .message
                .as_deref()
                .is_some_and(|m| m.contains("unexpected internal error")));
        }
        other => panic!("expected Api, got {other}"),
    }
    fake.clear_faults();
    fake.fail_next(10, 429);
    let err = mc.account().await.expect_err("429s run out");
    assert!(
        matches!(err, Error::RateLimited { daily: false, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_malformed_page_is_a_decode_error_naming_the_page_and_path() {
    let fake = MailchimpFake::start(config(vec![AudienceSeed::new(2_200)])).await;
    let source = source(&fake);
    let list = fake.list_ids()[0].clone();
    fake.malformed_page("members", 1);
    let err = read(&source, STREAM_LIST_MEMBERS, None)
        .await
        .err()
        .expect("must fail");
    match &err {
        Error::Decode {
            what,
            path,
            provider,
            ..
        } => {
            assert_eq!(*provider, "mailchimp");
            assert_eq!(path, "members[3].id");
            assert!(
                what.contains(&format!("lists/{list}/members page")),
                "{what}"
            );
        }
        other => panic!("expected Decode, got {other}"),
    }
    // The typed SDK listing reports the same.
    fake.malformed_page("campaigns", 0);
    let err = client(&fake)
        .campaigns()
        .stream()
        .try_collect::<Vec<_>>()
        .await
        .expect_err("bad");
    assert!(
        matches!(&err, Error::Decode { path, .. } if path == "campaigns[3].id"),
        "{err}"
    );
}

#[tokio::test]
async fn merge_fields_become_typed_columns() {
    // One audience: SCORE is a number.
    let fake = MailchimpFake::start(config(vec![AudienceSeed::new(80)])).await;
    let schema = source(&fake)
        .schema(STREAM_LIST_MEMBERS)
        .await
        .expect("schema");
    let types: HashMap<&str, FieldType> = schema
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.field_type))
        .collect();
    assert_eq!(types["merge_FNAME"], FieldType::String);
    assert_eq!(types["merge_SCORE"], FieldType::Number);
    assert_eq!(types["merge_JOINED"], FieldType::Date);
    assert_eq!(types["merge_ADDRESS"], FieldType::Json);
    assert_eq!(types["merge_PLAN"], FieldType::String);
    assert_eq!(types["merge_fields"], FieldType::Json);
    assert_eq!(schema.primary_key, ["list_id", "id"]);
    assert_eq!(schema.cursor_field.as_deref(), Some("last_changed"));

    // Two audiences: SCORE is a number in one and text in the other, so
    // its column is text; the other audience's WEBSITE joins.
    let fake =
        MailchimpFake::start(config(vec![AudienceSeed::new(300), AudienceSeed::new(200)])).await;
    let source = source(&fake);
    let schema = source.schema(STREAM_LIST_MEMBERS).await.expect("schema");
    let types: HashMap<&str, FieldType> = schema
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.field_type))
        .collect();
    assert_eq!(types["merge_SCORE"], FieldType::String);
    assert_eq!(types["merge_WEBSITE"], FieldType::String);
    assert_eq!(types["merge_JOINED"], FieldType::Date);
    let got = read(&source, STREAM_LIST_MEMBERS, None)
        .await
        .expect("read");
    let mut kinds: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in &got.records {
        for (k, v) in &r.data {
            let Some(t) = types.get(k.as_str()) else {
                panic!("{}: field {k} is not in the schema", r.id)
            };
            let fits = match (t, v) {
                (_, Value::Null) => true,
                (FieldType::String, v) => v.is_string(),
                (FieldType::Date, Value::String(s)) => s.len() == 10 && s.as_bytes()[4] == b'-',
                (FieldType::Timestamp, Value::String(s)) => s.parse::<DateTime<Utc>>().is_ok(),
                (FieldType::Number | FieldType::Integer, v) => v.is_number(),
                (FieldType::Boolean, v) => v.is_boolean(),
                (FieldType::Json, _) => true,
                _ => false,
            };
            assert!(fits, "{}: {k} = {v} does not fit {t:?}", r.id);
            if k.starts_with("merge_") && k != "merge_fields" {
                kinds.entry(k.as_str()).or_default().insert(match v {
                    Value::Null => "null",
                    Value::String(_) => "string",
                    Value::Object(_) => "object",
                    _ => "other",
                });
            }
        }
    }
    // Blank merge values ("") are nulls in typed columns; addresses objects.
    assert!(kinds["merge_ADDRESS"].contains("object") && kinds["merge_ADDRESS"].contains("null"));
    assert!(
        kinds["merge_SCORE"].contains("string"),
        "numbers in a text column are text"
    );
    assert!(kinds["merge_JOINED"].contains("string") && kinds["merge_JOINED"].contains("null"));
}

#[tokio::test]
async fn typed_sdk_listings_walk_every_collection() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let mc = client(&fake);
    let audiences: Vec<_> = mc
        .audiences()
        .stream()
        .try_collect()
        .await
        .expect("audiences");
    assert_eq!(audiences.len(), 3);
    assert!(audiences[0]
        .stats
        .as_ref()
        .and_then(|s| s.member_count)
        .is_some());
    let members: Vec<_> = mc
        .members(&audiences[0].id)
        .count(500)
        .stream()
        .try_collect()
        .await
        .expect("members");
    assert_eq!(members.len(), 1_200);
    assert!(members.iter().all(|m| m.last_changed.is_some()));
    let subscribed: Vec<_> = mc
        .members(&audiences[0].id)
        .status("subscribed")
        .stream()
        .try_collect()
        .await
        .expect("subscribed");
    assert!(
        subscribed.len() < members.len() && subscribed.iter().all(|m| m.status == "subscribed")
    );
    let fields: Vec<_> = mc
        .merge_fields(&audiences[0].id)
        .stream()
        .try_collect()
        .await
        .expect("merge fields");
    assert_eq!(fields.len(), 8);
    let campaigns: Vec<_> = mc
        .campaigns()
        .stream()
        .try_collect()
        .await
        .expect("campaigns");
    assert_eq!(campaigns.len(), 24);
    assert!(campaigns
        .iter()
        .any(|c| c.status == "save" && c.send_time.is_none()));
    let id = fake.report_ids()[0].clone();
    let report = mc.report(&id).await.expect("report");
    assert!(report.opens.as_ref().and_then(|o| o.unique_opens).is_some());
    let automations: Vec<_> = mc
        .automations()
        .stream()
        .try_collect()
        .await
        .expect("automations");
    assert_eq!(automations.len(), 3);
    let emails = mc
        .automation_emails(&automations[2].id)
        .await
        .expect("emails");
    assert_eq!(emails.len(), 3);
    let err = mc
        .automation_emails("nope")
        .await
        .expect_err("unknown workflow");
    assert_eq!(err.status(), Some(404));
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[tokio::test]
async fn a_full_sync_then_an_incremental_one_into_files_without_duplicates() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let src = Arc::new(source(&fake));
    let first = Sync::new(src.clone(), sink.clone())
        .tenant("acme")
        .run()
        .await;
    assert!(
        first.is_success(),
        "{:?}",
        first.streams.iter().find(|s| s.error.is_some())
    );
    assert!(first.streams.iter().all(|s| s.mode == ReadMode::FirstSync));
    let at = just_now();
    let lists = fake.list_ids();
    let changed: Vec<String> = fake
        .member_ids(&lists[1])
        .into_iter()
        .skip(10)
        .take(4)
        .collect();
    fake.change_members(&lists[1], &changed, at);
    let added = fake.add_members(&lists[0], 6, at);
    let second = Sync::new(src.clone(), sink.clone())
        .tenant("acme")
        .run()
        .await;
    assert!(second.is_success());
    let by_stream: HashMap<&str, _> = second
        .streams
        .iter()
        .map(|s| (s.stream.as_str(), s))
        .collect();
    assert!(by_stream[STREAM_LIST_MEMBERS].is_incremental());
    assert_eq!(by_stream[STREAM_LIST_MEMBERS].records, 10);
    assert!(
        by_stream[STREAM_CAMPAIGNS].is_incremental() && by_stream[STREAM_REPORTS].is_incremental()
    );
    // Audiences have no change filter: the engine lists them in full and
    // says so.
    assert_eq!(by_stream[STREAM_LISTS].mode, ReadMode::FullListing);
    // The members' requests: the schema (the audiences and their merge
    // fields), then the audiences and one request per audience.
    assert_eq!(
        by_stream[STREAM_LIST_MEMBERS].requests.requests,
        2 * (1 + lists.len() as u64)
    );

    for (stream, truth) in [
        (STREAM_LIST_MEMBERS, member_keys(&fake)),
        (STREAM_CAMPAIGNS, fake.campaign_ids().into_iter().collect()),
        (STREAM_REPORTS, fake.report_ids().into_iter().collect()),
        (STREAM_LISTS, fake.list_ids().into_iter().collect()),
    ] {
        let rows = lines(&sink.data_path("acme", stream));
        let keys: Vec<String> = rows
            .iter()
            .map(|r| match stream {
                STREAM_LIST_MEMBERS => format!(
                    "{}:{}",
                    r["list_id"].as_str().unwrap_or(""),
                    r["id"].as_str().unwrap_or("")
                ),
                _ => r["id"].as_str().unwrap_or("").to_owned(),
            })
            .collect();
        let set: HashSet<String> = keys.iter().cloned().collect();
        assert_eq!(set.len(), keys.len(), "{stream}: duplicated rows");
        assert_eq!(set, truth, "{stream}");
        assert!(rows.iter().all(|r| r["_tenant_id"] == "acme"));
    }
    let rows = lines(&sink.data_path("acme", STREAM_LIST_MEMBERS));
    let row = rows
        .iter()
        .find(|r| r["id"] == Value::String(changed[0].clone()))
        .expect("changed member");
    assert!(
        row["merge_FNAME"]
            .as_str()
            .is_some_and(|s| s.ends_with("(v1)")),
        "{row:?}"
    );
    assert!(rows
        .iter()
        .any(|r| r["id"] == Value::String(added[0].clone())));
}

#[tokio::test]
async fn a_read_that_fails_resumes_from_its_last_checkpoint_without_loss_or_repeats() {
    let fake = MailchimpFake::start(config(vec![
        AudienceSeed::new(2_300).with_tie(1_100),
        AudienceSeed::new(900),
    ]))
    .await;
    let mc = Mailchimp::builder()
        .api_key(fake.api_key().into())
        .base_url(fake.api_base())
        .retry(RetryConfig::none())
        .build()
        .expect("client");
    let source = MailchimpSource::new(mc).with_settle_lag(Duration::ZERO);
    let schema = source.schema(STREAM_LIST_MEMBERS).await.expect("schema");
    let mut got = Vec::new();
    let mut state = None;
    let mut failures = 0;
    // Fail every third request until the read is done, resuming each time
    // from the last page's checkpoint (what the engine commits).
    loop {
        let mut pages = source.read(&schema, state.clone());
        let mut finished = true;
        let mut n = 0;
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => {
                    got.extend(p.records);
                    state = Some(p.checkpoint);
                    n += 1;
                    if n == 2 {
                        fake.fail_next(1, 503);
                    }
                }
                Err(e) => {
                    assert_eq!(e.status(), Some(503), "{e}");
                    failures += 1;
                    finished = false;
                    break;
                }
            }
        }
        if finished {
            break;
        }
        assert!(failures < 20, "the read must end");
    }
    assert!(failures >= 1);
    assert_eq!(ids_once(&got), member_keys(&fake));
    let done = state.expect("state");
    assert!(source.resumes_incrementally(&schema, &done), "{}", done.0);
}

#[tokio::test]
async fn plans_count_what_a_sync_will_read() {
    let fake = MailchimpFake::start(MailchimpFakeConfig::default()).await;
    let source = source(&fake);
    let schema = source.schema(STREAM_LIST_MEMBERS).await.expect("schema");
    let plan = source.plan(&schema, None).await.expect("plan");
    assert!(!plan.incremental);
    assert_eq!(plan.records, Some(1_525));
    // The estimate's own calls (audiences + one per audience) and the read:
    // the audiences, then 2 + 1 + 1 pages.
    assert_eq!(plan.requests, (1 + 3) + (1 + 4));
    let full = read_schema(&source, &schema, None).await.expect("read");
    let list = fake.list_ids()[2].clone();
    fake.add_members(&list, 7, just_now());
    let plan = source
        .plan(&schema, full.state.as_ref())
        .await
        .expect("plan");
    assert!(plan.incremental);
    assert_eq!(plan.records, Some(7));
    let schema = source.schema(STREAM_REPORTS).await.expect("schema");
    let plan = source.plan(&schema, None).await.expect("plan");
    assert_eq!(plan.records, Some(fake.report_ids().len() as u64));
}

#[tokio::test]
async fn a_token_answer_without_token_type_as_mailchimp_documents_it() {
    // Mailchimp's older documentation shows the token answer as
    // `{access_token, expires_in: 0, scope: null}`, without `token_type`.
    let fake = MailchimpFake::start(MailchimpFakeConfig {
        token_type: None,
        ..MailchimpFakeConfig::default()
    })
    .await;
    let cfg = fake.config();
    let oauth = OAuthClient::new(
        mailchimp::oauth_config(cfg.client_id.clone(), cfg.client_secret.clone().into())
            .with_token_url(&fake.token_url())
            .expect("url"),
    )
    .expect("oauth");
    let req = oauth.authorize_url();
    let cb = Callback::from_query(&format!(
        "code={}&state={}",
        fake.issue_code(),
        req.pending.state()
    ));
    let tokens = oauth
        .exchange_code(req.pending, &cb)
        .await
        .expect("a token answer without token_type is still a token");
    assert!(tokens.access_token.is_some() && tokens.refresh_token.is_none());
    assert_eq!(tokens.expires_at, None, "`expires_in: 0` never expires");
}
