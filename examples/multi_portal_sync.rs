//! Sync every connected HubSpot portal into Postgres, on a schedule: the
//! multi-portal dashboard's nightly job.
//!
//! ```text
//! cargo run --release --all-features --example multi_portal_sync -- \
//!     [--once] [--plan] [--schedule "02:00 America/New_York"] \
//!     [--database-url URL] [--schema NAME] [--concurrency N] \
//!     [--streams contacts,companies,...] [--token-dir DIR] \
//!     [--fake-portals N] [--fake-contacts N] [--fake-revoke-one]
//! ```
//!
//! The portals are the connections in the token store (`--token-dir`,
//! encrypted with `HEADWATER_TOKEN_KEY`, or with the key generated on first
//! use in `<token-dir>/encryption.key`, mode 0600), one key `hubspot/<name>` per
//! portal, as an OAuth connect flow saves them; the OAuth app is
//! `HUBSPOT_CLIENT_ID`/`HUBSPOT_CLIENT_SECRET` at `HUBSPOT_BASE_URL`. With
//! no app configured, the bundled fake serves `--fake-portals` portals on one
//! address (as HubSpot's one API host serves every account), each connected
//! through the fake's OAuth, and the store is kept in memory.
//!
//! Each portal is its own tenant with its own token provider and rate
//! limiters, so a busy portal never spends another's quota; at most
//! `--concurrency` portals sync at once. A portal whose grant was revoked is
//! marked in the token store as needing re-authorization, reported, and
//! skipped by later runs until it is connected again; the others go on.
//! `--fake-revoke-one` revokes the last fake portal's grant to show that.
//!
//! Runs at `--schedule` (default `02:00 America/New_York`): runs missed while
//! the process was down are caught up once, a run still going when the next
//! is due is not overlapped (state in `<token-dir>/schedule.json`).
//! `--once` runs one sync now and exits; `--plan` prints what a sync would
//! cost (API calls, time at the rate limits, daily quota) and exits.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use headwater::auth::{OAuthClient, OAuthConfig, TokenProvider, TokenSet, TokenStore};
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::schedule::{Schedule, Scheduler};
use headwater::sinks::postgres::PostgresSink;
use headwater::sync::{run_tenants, Sync, SyncReport};
use headwater::testkit::hubspot::{FakeConfig, FakeRateLimit, HubSpotFake, ObjectSeed};

struct Args {
    once: bool,
    plan: bool,
    schedule: String,
    database_url: Option<String>,
    schema: String,
    concurrency: usize,
    streams: Vec<String>,
    token_dir: String,
    fake_portals: usize,
    fake_contacts: usize,
    fake_revoke_one: bool,
}

const USAGE: &str = "usage: multi_portal_sync [--once] [--plan] [--schedule SPEC] \
[--database-url URL] [--schema NAME] [--concurrency N] [--streams a,b] [--token-dir DIR] \
[--fake-portals N] [--fake-contacts N] [--fake-revoke-one]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        once: false,
        plan: false,
        schedule: "02:00 America/New_York".into(),
        database_url: None,
        schema: "headwater".into(),
        concurrency: 4,
        streams: ["contacts", "companies", "deals", "tickets", "owners"]
            .map(String::from)
            .to_vec(),
        token_dir: ".headwater-tokens".into(),
        fake_portals: 3,
        fake_contacts: 1_500,
        fake_revoke_one: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--once" => args.once = true,
            "--plan" => args.plan = true,
            "--fake-revoke-one" => args.fake_revoke_one = true,
            "--schedule" => args.schedule = value()?,
            "--database-url" => args.database_url = Some(value()?),
            "--schema" => args.schema = value()?,
            "--token-dir" => args.token_dir = value()?,
            "--streams" => {
                args.streams = value()?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--concurrency" => {
                args.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--fake-portals" => {
                args.fake_portals = value()?
                    .parse()
                    .map_err(|e| format!("--fake-portals: {e}"))?
            }
            "--fake-contacts" => {
                args.fake_contacts = value()?
                    .parse()
                    .map_err(|e| format!("--fake-contacts: {e}"))?
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    common::init_tracing();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Where the portals are: the OAuth app, its API address, the token store.
struct Portals {
    oauth: OAuthClient,
    base_url: String,
    store: Arc<dyn TokenStore>,
    /// Keeps the bundled fake alive.
    _fake: Option<HubSpotFake>,
}

async fn portals(args: &Args) -> Result<Portals, common::BoxError> {
    if let (Some(id), Some(secret)) = (
        common::env("HUBSPOT_CLIENT_ID"),
        common::env("HUBSPOT_CLIENT_SECRET"),
    ) {
        let base = common::env("HUBSPOT_BASE_URL")
            .unwrap_or_else(|| headwater::hubspot::DEFAULT_BASE_URL.into());
        let store = common::token_store(&args.token_dir)?;
        eprintln!(
            "source: HubSpot OAuth app {id} at {base}, portals from the token store {}",
            args.token_dir
        );
        let oauth = OAuthClient::new(
            OAuthConfig::hubspot(id, secret.into())
                .with_token_url(&format!("{}/oauth/v1/token", base.trim_end_matches('/')))?,
        )?;
        return Ok(Portals {
            oauth,
            base_url: base,
            store,
            _fake: None,
        });
    }
    // The bundled fake: several portals on one address, each connected
    // through its OAuth (tokens minted by the fake, kept in memory).
    let configs = (0..args.fake_portals.max(1))
        .map(|i| {
            let mut c = FakeConfig::for_portal(i);
            c.objects.insert(
                "contacts".into(),
                ObjectSeed::new(args.fake_contacts, args.fake_contacts / 50),
            );
            c.rate_limit = Some(FakeRateLimit::oauth_app());
            c
        })
        .collect();
    let fake = HubSpotFake::start_portals(configs).await;
    eprintln!(
        "source: no HubSpot app configured (HUBSPOT_CLIENT_ID/HUBSPOT_CLIENT_SECRET), so this run \
         uses the bundled HubSpot fake at {} serving {} portals ({} contacts each, 100 requests \
         per 10 s per portal, as HubSpot limits OAuth apps)",
        fake.uri(),
        fake.portals(),
        args.fake_contacts
    );
    let store = common::fake_token_store();
    for i in 0..fake.portals() {
        let portal = fake.portal(i);
        let (access, refresh) = portal.mint_tokens();
        let key = format!("hubspot/portal-{}", portal.hub_id());
        let revoke = args.fake_revoke_one && i + 1 == fake.portals();
        let tokens = if revoke {
            // Uninstalled: its refresh token is refused, and it holds no
            // access token, so the first request has to refresh.
            portal.revoke_refresh_token(&refresh);
            eprintln!("note: the grant of {key} is revoked (--fake-revoke-one)");
            TokenSet::from_refresh_token(refresh.into())
        } else {
            TokenSet::new(
                access.into(),
                Some(refresh.into()),
                Some(Duration::from_secs(1800)),
            )
        };
        store.save(&key, &tokens).await?;
    }
    let config = fake.config();
    let oauth = OAuthClient::new(
        OAuthConfig::hubspot(
            config.client_id.clone(),
            config.client_secret.clone().into(),
        )
        .with_token_url(&format!("{}/oauth/v1/token", fake.uri()))?,
    )?;
    Ok(Portals {
        oauth,
        base_url: fake.uri(),
        store,
        _fake: Some(fake),
    })
}

/// One sync per connected portal (the ones not waiting for a reconnect).
async fn syncs(
    portals: &Portals,
    sink: &Arc<PostgresSink>,
    streams: &[String],
) -> Result<Vec<Sync>, common::BoxError> {
    let mut out = Vec::new();
    for key in portals.store.keys().await? {
        let Some(name) = key.strip_prefix("hubspot/") else {
            continue;
        };
        let Some(tokens) = portals.store.load(&key).await? else {
            continue;
        };
        if let Some(r) = &tokens.reauthorization {
            eprintln!(
                "{name}: skipped, needs to be connected again (since {}): {}",
                r.since.format("%Y-%m-%d %H:%M UTC"),
                r.reason
            );
            continue;
        }
        let provider =
            TokenProvider::new(portals.oauth.clone(), portals.store.clone(), &key, None).await?;
        let hubspot = HubSpot::builder()
            .oauth(provider)
            .base_url(&portals.base_url)
            .build()?;
        out.push(
            Sync::new(Arc::new(HubSpotSource::new(hubspot)), sink.clone())
                .tenant(name)
                .streams(streams.to_vec())
                .checkpoint_every(10),
        );
    }
    Ok(out)
}

fn print_reports(reports: &[SyncReport]) -> bool {
    println!(
        "{:<24} {:>9} {:>9} {:>6} {:>9}  status",
        "portal", "records", "requests", "429s", "seconds"
    );
    let mut healthy = true;
    for r in reports {
        let requests: u64 = r.streams.iter().map(|s| s.requests.requests).sum();
        let limited: u64 = r.streams.iter().map(|s| s.requests.rate_limited).sum();
        let status = if r.is_success() {
            "ok".to_owned()
        } else if r.needs_reauthorization() {
            "needs re-authorization (marked in the token store)".to_owned()
        } else {
            healthy = false;
            let failed: Vec<String> = r
                .streams
                .iter()
                .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.stream)))
                .chain(r.error.iter().map(|e| e.to_string()))
                .collect();
            format!("FAILED {}", failed.join("; "))
        };
        println!(
            "{:<24} {:>9} {:>9} {:>6} {:>9.1}  {}",
            r.tenant,
            r.records(),
            requests,
            limited,
            r.duration.as_secs_f64(),
            status
        );
        if let Some(at) = r.resume_at() {
            println!("{:<24} daily quota spent: resumes after {at}", "");
        }
    }
    healthy
}

async fn run(args: Args) -> Result<bool, common::BoxError> {
    let url = args
        .database_url
        .clone()
        .or_else(|| common::env("DATABASE_URL"))
        .ok_or("set --database-url or DATABASE_URL")?;
    let portals = portals(&args).await?;
    let sink = Arc::new(
        PostgresSink::builder()
            .url(&url)
            .schema(&args.schema)
            .build()
            .await?,
    );
    eprintln!("destination: Postgres, schema {}", args.schema);

    if args.plan {
        for sync in syncs(&portals, &sink, &args.streams).await? {
            let plan = sync.plan().await?;
            println!(
                "{}: {} API calls, at least {:.0} s at the rate limits{}",
                plan.tenant,
                plan.requests,
                plan.min_duration.as_secs_f64(),
                if plan.fits_daily_quota() {
                    ""
                } else {
                    " (more than the daily quota left: the sync will stop at a checkpoint)"
                }
            );
            for s in &plan.streams {
                println!(
                    "  {:<16} {:>8} records {:>6} calls  {}",
                    s.stream,
                    s.records
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into()),
                    s.requests,
                    s.notes.join("; ")
                );
            }
        }
        return Ok(true);
    }

    let job = || async {
        let syncs = match syncs(&portals, &sink, &args.streams).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot list the connected portals: {e}");
                return false;
            }
        };
        eprintln!(
            "syncing {} portals, {} at a time",
            syncs.len(),
            args.concurrency
        );
        let reports = run_tenants(syncs, args.concurrency).await;
        print_reports(&reports)
    };
    if args.once {
        return Ok(job().await);
    }
    let schedule = Schedule::parse(&args.schedule)?;
    std::fs::create_dir_all(&args.token_dir)?;
    let scheduler = Scheduler::new(schedule, format!("{}/schedule.json", args.token_dir));
    eprintln!(
        "scheduled: {} (next run {}); Ctrl-C stops between runs",
        scheduler.schedule(),
        scheduler.schedule().next_after(chrono::Utc::now())?
    );
    scheduler
        .run(
            |slot| async move {
                eprintln!("run for {slot}");
                job().await;
            },
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(true)
}
