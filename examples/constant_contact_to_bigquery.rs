//! Sync a Constant Contact account into BigQuery: the initial bulk
//! download, then an incremental run that fetches only what changed.
//!
//! ```text
//! cargo run --release --all-features --example constant_contact_to_bigquery -- \
//!     [--project P] [--dataset D] [--endpoint URL] [--streams contacts,email_campaigns,...] \
//!     [--tenant ID] [--checkpoint-every N] [--fake-contacts N] [--rate-limit N|off] [--quiet]
//! ```
//!
//! Destination, as in `hubspot_to_bigquery`: `BIGQUERY_PROJECT`,
//! `BIGQUERY_DATASET`, and `BIGQUERY_ENDPOINT` (an emulator, no auth) or
//! `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key file).
//!
//! Source: `CONSTANT_CONTACT_CLIENT_ID`, `CONSTANT_CONTACT_CLIENT_SECRET`
//! and `CONSTANT_CONTACT_REFRESH_TOKEN` (an app and an account's refresh
//! token, from the OAuth connect flow with `offline_access`), optionally
//! `CONSTANT_CONTACT_BASE_URL` (default `https://api.cc.email/v3`) and
//! `CONSTANT_CONTACT_TOKEN_URL` (default Constant Contact's token endpoint).
//! Refresh tokens may rotate (each refresh spends the old one): the new one
//! is written to a token store before it is used: encrypted files under
//! `.headwater-tokens`, with the key `HEADWATER_TOKEN_KEY` (base64 of 32
//! bytes) or, without it, one generated on first use and kept in
//! `.headwater-tokens/encryption.key` (mode 0600). The next run starts from
//! the stored refresh token. (The bundled fake's tokens stay in memory.)
//!
//! With no Constant Contact credentials it starts the bundled fake (4
//! requests per second, rotating refresh tokens, `--fake-contacts`
//! contacts), says so, changes some records between the two runs, and at
//! the end checks the BigQuery tables against the fake's records.
//!
//! `--rate-limit N` sets the client's limit to N requests per second
//! (`off`: none); the default is Constant Contact's 4 per second and
//! 10,000 per day.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use headwater::auth::{OAuthClient, TokenProvider, TokenSet, TokenStore};
use headwater::constant_contact::{
    default_limits, oauth_config, ConstantContact, ConstantContactSource, DAILY_QUOTA,
    DEFAULT_BASE_URL, STREAM_CAMPAIGN_SUMMARIES, STREAM_CONTACTS, STREAM_EMAIL_CAMPAIGNS,
};
use headwater::http::{DailyLimit, Limits, RateLimit};
use headwater::sinks::bigquery::BigQuerySink;
use headwater::source::Source;
use headwater::sync::{Sync, SyncReport};
use headwater::testkit::constant_contact::{ConstantContactFake, FakeConfig};

#[derive(Default)]
struct Dest {
    project: Option<String>,
    dataset: Option<String>,
    endpoint: Option<String>,
}

#[tokio::main]
async fn main() {
    common::init_tracing();
    let mut dest = Dest::default();
    let args = common::parse_args(|flag, value| {
        match flag {
            "--project" => dest.project = Some(value()?),
            "--dataset" => dest.dataset = Some(value()?),
            "--endpoint" => dest.endpoint = Some(value()?),
            _ => return Ok(false),
        }
        Ok(true)
    });
    let args = match args {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!(
                "usage: constant_contact_to_bigquery [--project P] [--dataset D] [--endpoint URL] {}",
                common::SOURCE_USAGE.replace("contacts,deals", "contacts,email_campaigns")
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args, dest).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The client's limits from `--rate-limit` (per second here).
fn limits(args: &common::SourceArgs) -> Limits {
    match args.rate_limit {
        None => default_limits(),
        Some(None) => Limits::none().with_daily(DailyLimit::utc(DAILY_QUOTA)),
        Some(Some(n)) => {
            Limits::standard(RateLimit::per_second(n)).with_daily(DailyLimit::utc(DAILY_QUOTA))
        }
    }
}

/// Where refreshed tokens go: the encrypted file store of the examples for
/// a real account (a rotated refresh token must survive the run), memory
/// for the bundled fake's throwaway tokens.
fn token_store(
    args: &common::SourceArgs,
    fake: bool,
) -> Result<Arc<dyn TokenStore>, common::BoxError> {
    if fake {
        return Ok(common::fake_token_store());
    }
    common::token_store(&args.token_dir)
}

/// The source from the environment, or the bundled fake (kept alive by the
/// returned handle). Says which.
async fn cc_source(
    args: &common::SourceArgs,
) -> Result<(Arc<ConstantContactSource>, Option<ConstantContactFake>), common::BoxError> {
    let creds = (
        common::env("CONSTANT_CONTACT_CLIENT_ID"),
        common::env("CONSTANT_CONTACT_CLIENT_SECRET"),
        common::env("CONSTANT_CONTACT_REFRESH_TOKEN"),
    );
    let (id, secret, refresh, base, token_url, key, fake) = match creds {
        (Some(id), Some(secret), Some(refresh)) => {
            let base =
                common::env("CONSTANT_CONTACT_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.into());
            let token_url = common::env("CONSTANT_CONTACT_TOKEN_URL");
            eprintln!("source: Constant Contact app {id} at {base}");
            let key = format!("constant_contact/{id}");
            (id, secret, refresh, base, token_url, key, None)
        }
        (None, None, None) => {
            let fake = ConstantContactFake::start(FakeConfig {
                contacts: args.fake_contacts,
                deleted_contacts: args.fake_contacts / 100,
                rate_limit: Some(4),
                ..FakeConfig::default()
            })
            .await;
            eprintln!(
                "source: NO CONSTANT CONTACT CREDENTIALS SET (CONSTANT_CONTACT_CLIENT_ID, \
                 CONSTANT_CONTACT_CLIENT_SECRET, CONSTANT_CONTACT_REFRESH_TOKEN), so this run \
                 uses the BUNDLED CONSTANT CONTACT FAKE at {} ({} contacts, 4 requests per second, \
                 rotating refresh tokens)",
                fake.base_url(),
                args.fake_contacts
            );
            let cfg = fake.config().clone();
            let (_, refresh) = fake.mint_tokens();
            let key = format!("constant_contact/fake-{}", fake.uri());
            (
                cfg.client_id,
                cfg.client_secret,
                refresh,
                fake.base_url(),
                Some(fake.token_url()),
                key,
                Some(fake),
            )
        }
        _ => {
            return Err(
                "set all of CONSTANT_CONTACT_CLIENT_ID, CONSTANT_CONTACT_CLIENT_SECRET \
                        and CONSTANT_CONTACT_REFRESH_TOKEN, or none of them (the bundled fake)"
                    .into(),
            )
        }
    };
    let mut config = oauth_config(id, secret.into());
    if let Some(url) = &token_url {
        config = config.with_token_url(url)?;
    }
    let tokens = TokenProvider::new(
        OAuthClient::new(config)?,
        token_store(args, fake.is_some())?,
        key,
        Some(TokenSet::from_refresh_token(refresh.into())),
    )
    .await?;
    let cc = ConstantContact::builder()
        .oauth(tokens)
        .base_url(base)
        .limits(limits(args))
        .build()?;
    let mut source = ConstantContactSource::new(cc);
    if fake.is_some() {
        // The fake's changes are stamped "now": read them at once.
        source = source.with_settle_lag(Duration::ZERO);
    }
    Ok((Arc::new(source), fake))
}

async fn sync_once(
    args: &common::SourceArgs,
    source: Arc<ConstantContactSource>,
    sink: &BigQuerySink,
    tenant: &str,
    title: &str,
) -> SyncReport {
    eprintln!("\n== {title}");
    let mut sync = Sync::new(source, Arc::new(sink.clone()))
        .tenant(tenant)
        .checkpoint_every(args.checkpoint_every)
        .full_refresh(args.full_refresh);
    if let Some(s) = &args.streams {
        sync = sync.streams(s.clone());
    }
    if !args.quiet {
        sync = common::with_progress_bars(sync);
    }
    let report = sync.run().await;
    println!("\n{title}");
    common::print_summary(&report, |s| sink.table_ref(&s.stream));
    report
}

fn check(report: &SyncReport) -> Result<(), common::BoxError> {
    if let Some(e) = &report.error {
        return Err(format!("sync failed: {e}").into());
    }
    if let Some(at) = report.resume_at() {
        return Err(format!(
            "the daily request quota is spent; the sync stopped at its checkpoint and can resume \
             after {at}"
        )
        .into());
    }
    if report.needs_reauthorization() {
        return Err("the account must be connected again (its refresh token was refused)".into());
    }
    if !report.is_success() {
        return Err(
            "some streams failed (their committed checkpoints are kept; run again to resume)"
                .into(),
        );
    }
    Ok(())
}

/// Changes at the fake between the runs: updates, deletes, new contacts, a
/// changed and a removed campaign, new opens and clicks.
fn change_fake(fake: &ConstantContactFake) {
    let now = Utc::now();
    let n = fake.contact_ids(false).len();
    for i in [1, n / 3, n / 2] {
        fake.update_contact(i, now);
    }
    fake.delete_contact(n / 4, now);
    fake.add_contacts(5, now);
    fake.update_campaign(0, now);
    fake.remove_campaign(1, now);
    fake.bump_summary(3);
    eprintln!(
        "\nfake: changed 3 contacts, deleted 1, added 5, changed a campaign, removed one, \
         and a summary got new opens"
    );
}

/// A record the fake holds: its key, and whether it is deleted.
type Expected = (String, bool);

/// The BigQuery tables hold exactly the fake's records.
async fn verify(
    fake: &ConstantContactFake,
    sink: &BigQuerySink,
    tenant: &str,
    streams: &[String],
) -> Result<(), common::BoxError> {
    let checks: [(&str, &str, Vec<Expected>); 3] = [
        (
            STREAM_CONTACTS,
            "contact_id",
            fake.contacts(true)
                .iter()
                .map(|c| {
                    (
                        c["contact_id"].as_str().unwrap_or_default().to_owned(),
                        c.get("deleted_at").is_some(),
                    )
                })
                .collect(),
        ),
        (
            STREAM_EMAIL_CAMPAIGNS,
            "campaign_id",
            fake.campaigns()
                .iter()
                .map(|c| {
                    (
                        c["campaign_id"].as_str().unwrap_or_default().to_owned(),
                        c["current_status"] == "Removed",
                    )
                })
                .collect(),
        ),
        (
            STREAM_CAMPAIGN_SUMMARIES,
            "campaign_id",
            fake.summaries()
                .iter()
                .map(|c| {
                    (
                        c["campaign_id"].as_str().unwrap_or_default().to_owned(),
                        false,
                    )
                })
                .collect(),
        ),
    ];
    for (stream, key, want) in checks {
        if !streams.iter().any(|s| s == stream) {
            continue;
        }
        let rows = sink.read_rows(tenant, stream).await?;
        let mut seen = HashSet::new();
        for row in &rows {
            let id = row
                .get(key)
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("{stream}: a row without {key}"))?;
            if !seen.insert(id.to_owned()) {
                return Err(format!("{stream}: {id} is in BigQuery twice").into());
            }
            let deleted = row.get("_deleted").and_then(|v| v.as_bool()) == Some(true);
            if !want.iter().any(|(w, d)| w == id && *d == deleted) {
                return Err(
                    format!("{stream}: {id} (deleted: {deleted}) is not the fake's").into(),
                );
            }
        }
        if seen.len() != want.len() {
            return Err(format!(
                "{stream}: BigQuery has {} rows, the fake {}",
                seen.len(),
                want.len()
            )
            .into());
        }
        println!(
            "verified: {stream}: {} rows in BigQuery, each once, equal to the fake's ({} deleted)",
            rows.len(),
            want.iter().filter(|(_, d)| *d).count()
        );
    }
    Ok(())
}

async fn run(args: common::SourceArgs, dest: Dest) -> Result<(), common::BoxError> {
    let sink = common::bigquery_sink(dest.project, dest.dataset, dest.endpoint).await?;
    let (source, fake) = cc_source(&args).await?;
    let account = source.check().await?;
    eprintln!(
        "account: {} {}{}",
        account.account_id,
        account.name.as_deref().unwrap_or(""),
        account
            .user
            .as_deref()
            .map(|u| format!(" ({u})"))
            .unwrap_or_default()
    );
    let tenant = args
        .tenant
        .clone()
        .unwrap_or_else(|| format!("cc-{}", account.account_id));

    let first = sync_once(&args, source.clone(), &sink, &tenant, "initial download").await;
    check(&first)?;
    if let Some(fake) = &fake {
        change_fake(fake);
    }
    let second = sync_once(
        &args,
        source.clone(),
        &sink,
        &tenant,
        "incremental run (changes only)",
    )
    .await;
    check(&second)?;
    if let Some(usage) = source.daily_usage() {
        println!(
            "daily quota: {} of {} requests used today (resets {})",
            usage.used, usage.limit, usage.resets_at
        );
    }
    if let Some(fake) = &fake {
        let streams: Vec<String> = match &args.streams {
            Some(s) => s.clone(),
            None => source
                .discover()
                .await?
                .streams
                .into_iter()
                .map(|s| s.name)
                .collect(),
        };
        verify(fake, &sink, &tenant, &streams).await?;
        let stats = fake.stats();
        println!(
            "fake: {} API requests, {} throttled, {} token refreshes (refresh token rotated and saved each time)",
            stats.requests, stats.throttled, stats.token_refreshes
        );
    }
    Ok(())
}
