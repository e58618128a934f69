//! Sync a HubSpot account into local JSON Lines files.
//!
//! ```text
//! cargo run --release --example hubspot_sync -- --out DIR [--streams contacts,deals,...]
//! ```
//!
//! Credentials, from the environment:
//! - `HUBSPOT_ACCESS_TOKEN`: a private-app token; or
//! - `HUBSPOT_CLIENT_ID`, `HUBSPOT_CLIENT_SECRET`, `HUBSPOT_REFRESH_TOKEN`: an
//!   OAuth app and a connected account's refresh token. Set
//!   `HEADWATER_TOKEN_KEY` (base64 of 32 bytes) to keep refreshed tokens in an
//!   encrypted store under `DIR/.tokens`.
//! - `HUBSPOT_BASE_URL`: the API's address (default `https://api.hubapi.com`).
//!
//! With no credentials it starts the bundled HubSpot fake (from
//! `headwater::testkit`) and says so. Run it twice: the second run re-syncs
//! each stream into a new snapshot (or resumes one that was interrupted),
//! never duplicating a record.
//!
//! Other flags: `--tenant ID` (default: the hub id), `--checkpoint-every N`
//! (pages, default 10), `--fake-contacts N` (records of the bundled fake,
//! default 2500), `--rate-limit N|off` (requests per 10 s instead of HubSpot's
//! documented default for the token kind; `off` for benchmarks against the
//! fake), `--quiet` (no progress bar).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwater::auth::{
    EncryptedFileTokenStore, EncryptionKey, MemoryTokenStore, OAuthClient, OAuthConfig,
    TokenProvider, TokenSet, TokenStore,
};
use headwater::http::RateLimit;
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::sinks::files::FilesSink;
use headwater::sync::{Progress, Sync};
use headwater::testkit::hubspot::{FakeConfig, FakeRateLimit, HubSpotFake, ObjectSeed};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

struct Args {
    out: String,
    streams: Option<Vec<String>>,
    tenant: Option<String>,
    checkpoint_every: usize,
    fake_contacts: usize,
    rate_limit: Option<Option<u32>>,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        out: String::new(),
        streams: None,
        tenant: None,
        checkpoint_every: 10,
        fake_contacts: 2500,
        rate_limit: None,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--out" => args.out = value("--out")?,
            "--streams" => {
                args.streams = Some(
                    value("--streams")?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "--tenant" => args.tenant = Some(value("--tenant")?),
            "--checkpoint-every" => {
                args.checkpoint_every = value("--checkpoint-every")?
                    .parse()
                    .map_err(|e| format!("--checkpoint-every: {e}"))?
            }
            "--fake-contacts" => {
                args.fake_contacts = value("--fake-contacts")?
                    .parse()
                    .map_err(|e| format!("--fake-contacts: {e}"))?
            }
            "--rate-limit" => {
                let v = value("--rate-limit")?;
                args.rate_limit = Some(if v == "off" {
                    None
                } else {
                    Some(v.parse().map_err(|e| format!("--rate-limit: {e}"))?)
                });
            }
            "--quiet" => args.quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.out.is_empty() {
        return Err("--out DIR is required".into());
    }
    Ok(args)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("usage: hubspot_sync --out DIR [--streams contacts,deals,...] [--tenant ID] [--checkpoint-every N] [--fake-contacts N] [--rate-limit N|off] [--quiet]");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let base_url = env("HUBSPOT_BASE_URL");
    let mut _fake = None;
    let hubspot = if let Some(token) = env("HUBSPOT_ACCESS_TOKEN") {
        eprintln!(
            "source: HubSpot private app at {}",
            base_url
                .as_deref()
                .unwrap_or(headwater::hubspot::DEFAULT_BASE_URL)
        );
        let mut b = HubSpot::builder().private_app_token(token.into());
        if let Some(u) = &base_url {
            b = b.base_url(u);
        }
        b.build()?
    } else if let (Some(id), Some(secret), Some(refresh)) = (
        env("HUBSPOT_CLIENT_ID"),
        env("HUBSPOT_CLIENT_SECRET"),
        env("HUBSPOT_REFRESH_TOKEN"),
    ) {
        let base = base_url
            .clone()
            .unwrap_or_else(|| headwater::hubspot::DEFAULT_BASE_URL.into());
        eprintln!("source: HubSpot OAuth app {id} at {base}");
        let oauth = OAuthClient::new(
            OAuthConfig::hubspot(id.clone(), secret.into())
                .with_token_url(&format!("{}/oauth/v1/token", base.trim_end_matches('/')))?,
        )?;
        let store: Arc<dyn TokenStore> = match env("HEADWATER_TOKEN_KEY") {
            Some(k) => Arc::new(EncryptedFileTokenStore::open(
                format!("{}/.tokens", args.out),
                EncryptionKey::from_base64(&k)?,
            )?),
            None => {
                eprintln!("note: HEADWATER_TOKEN_KEY is not set; refreshed tokens are kept in memory only");
                Arc::new(MemoryTokenStore::new())
            }
        };
        let tokens = TokenProvider::new(
            oauth,
            store,
            format!("hubspot/{id}"),
            Some(TokenSet::from_refresh_token(refresh.into())),
        )
        .await?;
        HubSpot::builder().oauth(tokens).base_url(base).build()?
    } else {
        let mut config = FakeConfig::default();
        config.objects.insert(
            "contacts".into(),
            ObjectSeed {
                count: args.fake_contacts,
                archived: args.fake_contacts / 50,
            },
        );
        config.rate_limit = Some(FakeRateLimit {
            max: 190,
            window: Duration::from_secs(10),
        });
        let fake = HubSpotFake::start(config).await;
        eprintln!(
            "source: no HubSpot credentials set (HUBSPOT_ACCESS_TOKEN, or HUBSPOT_CLIENT_ID/SECRET/REFRESH_TOKEN), \
             so this run uses the bundled HubSpot fake at {} ({} contacts, 190 requests per 10 s)",
            fake.uri(),
            args.fake_contacts
        );
        let hs = HubSpot::builder()
            .private_app_token(fake.config().private_app_tokens[0].clone().into())
            .base_url(fake.uri())
            .build()?;
        _fake = Some(fake);
        hs
    };

    let hubspot = match args.rate_limit {
        None => hubspot,
        Some(limit) => {
            hubspot.with_rate_limit(limit.map(|n| RateLimit::new(n, Duration::from_secs(10))))
        }
    };
    let source = HubSpotSource::new(hubspot);
    let account = headwater::source::Source::check(&source).await?;
    eprintln!(
        "account: hub {} {}{}",
        account.account_id,
        account.name.as_deref().unwrap_or(""),
        account
            .user
            .as_deref()
            .map(|u| format!(" (user {u})"))
            .unwrap_or_default()
    );
    let tenant = args
        .tenant
        .clone()
        .unwrap_or_else(|| format!("hub-{}", account.account_id));
    let sink = Arc::new(FilesSink::new(&args.out)?);
    let mut sync = Sync::new(Arc::new(source), sink.clone())
        .tenant(&tenant)
        .checkpoint_every(args.checkpoint_every);
    if let Some(s) = &args.streams {
        sync = sync.streams(s.clone());
    }
    if !args.quiet {
        let bars = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:>18} {spinner} {pos:>9} records  {per_sec:>12}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let open: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
        sync = sync.on_progress(move |p| {
            let mut open = open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match p {
                Progress::StreamStarted {
                    stream,
                    resumed,
                    committed,
                    ..
                } => {
                    let bar = bars.add(
                        ProgressBar::new_spinner()
                            .with_style(style.clone())
                            .with_prefix(stream.clone()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(120));
                    if *resumed {
                        bar.set_message(format!("resuming after {committed} committed records"));
                    }
                    open.insert(stream.clone(), bar);
                }
                Progress::PageWritten { stream, total, .. } => {
                    if let Some(bar) = open.get(stream) {
                        bar.set_position(*total);
                    }
                }
                Progress::StreamFinished(r) => {
                    if let Some(bar) = open.remove(&r.stream) {
                        bar.finish_with_message("done");
                    }
                }
                Progress::StreamFailed(r) => {
                    if let Some(bar) = open.remove(&r.stream) {
                        bar.abandon_with_message(format!(
                            "failed: {}",
                            r.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
                        ));
                    }
                }
                _ => {}
            }
        });
    }
    let report = sync.run().await;
    if let Some(e) = &report.error {
        return Err(format!("sync failed: {e}").into());
    }
    println!();
    println!("tenant {tenant} into {}", args.out);
    println!(
        "{:<18} {:>9} {:>6} {:>9} {:>8} {:>5} {:>8}  result",
        "stream", "records", "pages", "requests", "retries", "429s", "seconds"
    );
    for s in &report.streams {
        println!(
            "{:<18} {:>9} {:>6} {:>9} {:>8} {:>5} {:>8.2}  {}",
            s.stream,
            s.records,
            s.pages,
            s.requests.requests,
            s.requests.retries,
            s.requests.rate_limited,
            s.duration.as_secs_f64(),
            match &s.error {
                None if s.resumed => format!(
                    "ok (resumed) -> {}",
                    sink.data_path(&tenant, &s.stream).display()
                ),
                None => format!("ok -> {}", sink.data_path(&tenant, &s.stream).display()),
                Some(e) => format!("FAILED: {e}"),
            }
        );
    }
    println!(
        "total: {} records in {:.2} s ({:.0} records/s)",
        report.records(),
        report.duration.as_secs_f64(),
        report.records() as f64 / report.duration.as_secs_f64().max(1e-9)
    );
    if !report.is_success() {
        return Err(
            "some streams failed (their committed checkpoints are kept; run again to resume)"
                .into(),
        );
    }
    Ok(())
}
