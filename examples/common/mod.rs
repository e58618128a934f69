//! What the HubSpot examples share: flags, the HubSpot source from the
//! environment (or the bundled fake), a progress bar and the summary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwater::auth::{
    EncryptedFileTokenStore, EncryptionKey, MemoryTokenStore, OAuthClient, OAuthConfig,
    TokenProvider, TokenSet, TokenStore,
};
use headwater::http::RateLimit;
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::sink::Sink;
use headwater::source::Source;
use headwater::sync::{Progress, ReadMode, StreamReport, Sync, SyncReport};
use headwater::testkit::hubspot::{FakeConfig, FakeRateLimit, HubSpotFake, ObjectSeed};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Errors of the examples.
pub type BoxError = Box<dyn std::error::Error>;

/// The flags every HubSpot example takes.
pub struct SourceArgs {
    pub streams: Option<Vec<String>>,
    pub tenant: Option<String>,
    pub checkpoint_every: usize,
    pub fake_contacts: usize,
    pub rate_limit: Option<Option<u32>>,
    pub full_refresh: bool,
    pub quiet: bool,
    /// Where refreshed OAuth tokens are kept, encrypted (see [`token_store`]).
    pub token_dir: String,
}

pub const SOURCE_USAGE: &str =
    "[--streams contacts,deals,...] [--tenant ID] [--checkpoint-every N] \
[--full-refresh] [--fake-contacts N] [--rate-limit N|off] [--quiet]";

/// Parses the shared flags; any other flag is handed to `other(flag, next_value)`.
pub fn parse_args(
    mut other: impl FnMut(&str, &mut dyn FnMut() -> Result<String, String>) -> Result<bool, String>,
) -> Result<SourceArgs, String> {
    let mut args = SourceArgs {
        streams: None,
        tenant: None,
        checkpoint_every: 10,
        fake_contacts: 2500,
        rate_limit: None,
        full_refresh: false,
        quiet: false,
        token_dir: ".headwater-tokens".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--streams" => {
                args.streams = Some(
                    value()?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "--tenant" => args.tenant = Some(value()?),
            "--checkpoint-every" => {
                args.checkpoint_every = value()?
                    .parse()
                    .map_err(|e| format!("--checkpoint-every: {e}"))?
            }
            "--fake-contacts" => {
                args.fake_contacts = value()?
                    .parse()
                    .map_err(|e| format!("--fake-contacts: {e}"))?
            }
            "--rate-limit" => {
                let v = value()?;
                args.rate_limit = Some(if v == "off" {
                    None
                } else {
                    Some(v.parse().map_err(|e| format!("--rate-limit: {e}"))?)
                });
            }
            "--full-refresh" => args.full_refresh = true,
            "--quiet" => args.quiet = true,
            "-h" | "--help" => return Err(String::new()),
            flag => {
                if !other(flag, &mut value)? {
                    return Err(format!("unknown argument `{flag}`"));
                }
            }
        }
    }
    Ok(args)
}

/// A variable from the environment, if set and not blank.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Logs to stderr, `RUST_LOG` to change the level.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The HubSpot source the environment asks for: `HUBSPOT_ACCESS_TOKEN` (a
/// private app), or `HUBSPOT_CLIENT_ID`, `HUBSPOT_CLIENT_SECRET` and
/// `HUBSPOT_REFRESH_TOKEN` (OAuth), at `HUBSPOT_BASE_URL`; with none of
/// them, the bundled fake (kept alive by the returned handle). Says which.
pub async fn hubspot_source(
    args: &SourceArgs,
) -> Result<(Arc<HubSpotSource>, Option<HubSpotFake>), BoxError> {
    let base_url = env("HUBSPOT_BASE_URL");
    let mut fake = None;
    let hubspot = if let Some(token) = env("HUBSPOT_ACCESS_TOKEN") {
        let base = base_url
            .clone()
            .unwrap_or_else(|| headwater::hubspot::DEFAULT_BASE_URL.into());
        eprintln!("source: HubSpot private app at {base}");
        HubSpot::builder()
            .private_app_token(token.into())
            .base_url(base)
            .build()?
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
        let tokens = TokenProvider::new(
            oauth,
            token_store(&args.token_dir)?,
            format!("hubspot/{id}"),
            Some(TokenSet::from_refresh_token(refresh.into())),
        )
        .await?;
        HubSpot::builder().oauth(tokens).base_url(base).build()?
    } else {
        let mut config = FakeConfig::default();
        config.objects.insert(
            "contacts".into(),
            ObjectSeed::new(args.fake_contacts, args.fake_contacts / 50),
        );
        config.rate_limit = Some(FakeRateLimit::new(190, Duration::from_secs(10)));
        let f = HubSpotFake::start(config).await;
        eprintln!(
            "source: no HubSpot credentials set (HUBSPOT_ACCESS_TOKEN, or HUBSPOT_CLIENT_ID/SECRET/REFRESH_TOKEN), \
             so this run uses the bundled HubSpot fake at {} ({} contacts, 190 requests per 10 s)",
            f.uri(),
            args.fake_contacts
        );
        let hs = HubSpot::builder()
            .private_app_token(f.config().private_app_tokens[0].clone().into())
            .base_url(f.uri())
            .build()?;
        fake = Some(f);
        hs
    };
    let hubspot = match args.rate_limit {
        None => hubspot,
        Some(limit) => {
            hubspot.with_rate_limit(limit.map(|n| RateLimit::new(n, Duration::from_secs(10))))
        }
    };
    Ok((Arc::new(HubSpotSource::new(hubspot)), fake))
}

/// The name of the generated key file inside a token directory.
pub const KEY_FILE: &str = "encryption.key";

/// The token store of the examples: encrypted files in `dir`, so a rotated
/// (single-use) refresh token survives the run whatever happens after it
/// was spent. The key is `HEADWATER_TOKEN_KEY` (base64 of 32 bytes) if set,
/// else one generated on first use and kept in `dir/encryption.key` with
/// mode 0600 (a key file others can read is refused). Says where tokens and
/// key are kept, never what they are.
pub fn token_store(dir: &str) -> Result<Arc<dyn TokenStore>, BoxError> {
    let key = match env("HEADWATER_TOKEN_KEY") {
        Some(k) => {
            eprintln!("tokens: kept encrypted in {dir}/ with the key from HEADWATER_TOKEN_KEY");
            EncryptionKey::from_base64(&k)?
        }
        None => {
            let path = std::path::Path::new(dir).join(KEY_FILE);
            let (key, created) = EncryptionKey::load_or_create(&path)?;
            eprintln!(
                "tokens: kept encrypted in {dir}/ with the key in {} ({}, mode 0600; \
                 set HEADWATER_TOKEN_KEY to use a key of your own)",
                path.display(),
                if created { "created now" } else { "existing" }
            );
            key
        }
    };
    Ok(Arc::new(EncryptedFileTokenStore::open(dir, key)?))
}

/// A store for the bundled fakes' throwaway tokens: memory, nothing written.
pub fn fake_token_store() -> Arc<dyn TokenStore> {
    Arc::new(MemoryTokenStore::new())
}

/// Checks the connection, then syncs into `sink` with a progress bar, prints
/// the summary (with `location` of each stream's data) and fails if a
/// stream failed.
pub async fn sync_and_report(
    args: &SourceArgs,
    source: Arc<HubSpotSource>,
    sink: Arc<dyn Sink>,
    location: impl Fn(&str, &str) -> String,
) -> Result<SyncReport, BoxError> {
    let account = source.check().await?;
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
    let mut sync = Sync::new(source, sink)
        .tenant(&tenant)
        .checkpoint_every(args.checkpoint_every)
        .full_refresh(args.full_refresh);
    if let Some(s) = &args.streams {
        sync = sync.streams(s.clone());
    }
    if !args.quiet {
        sync = with_progress_bars(sync);
    }
    let report = sync.run().await;
    if let Some(e) = &report.error {
        return Err(format!("sync failed: {e}").into());
    }
    print_summary(&report, |s| location(&tenant, &s.stream));
    if !report.is_success() {
        return Err(
            "some streams failed (their committed checkpoints are kept; run again to resume)"
                .into(),
        );
    }
    Ok(report)
}

/// A spinner per stream, drawn from the engine's progress events.
pub fn with_progress_bars(sync: Sync) -> Sync {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>18} {spinner} {pos:>9} records  {per_sec:>12}  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let open: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    sync.on_progress(move |p| {
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
                    bar.finish_with_message(format!("done, {}", r.mode));
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
    })
}

/// The summary table: records, pages, requests, retries, 429s, seconds.
pub fn print_summary(report: &SyncReport, location: impl Fn(&StreamReport) -> String) {
    println!();
    println!("tenant {}", report.tenant);
    println!(
        "{:<18} {:>9} {:>6} {:>9} {:>8} {:>5} {:>8}  result",
        "stream", "records", "pages", "requests", "retries", "429s", "seconds"
    );
    for s in &report.streams {
        let kind = match (s.resumed, s.mode) {
            (true, ReadMode::Incremental) => "ok (resumed, changes)",
            (true, _) => "ok (resumed)",
            (false, ReadMode::Incremental) => "ok (changes)",
            (false, ReadMode::FullListing) => "ok (full listing)",
            (false, _) => "ok (full)",
        };
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
                None => format!("{kind} -> {}", location(s)),
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
}

/// The BigQuery destination of the `*_to_bigquery` examples, from flags or
/// the environment: `BIGQUERY_PROJECT`, `BIGQUERY_DATASET`, and
/// `BIGQUERY_ENDPOINT` (an emulator, no auth) or
/// `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key file). Creates the
/// dataset if it does not exist.
#[cfg(feature = "bigquery")]
pub async fn bigquery_sink(
    project: Option<String>,
    dataset: Option<String>,
    endpoint: Option<String>,
) -> Result<headwater::sinks::bigquery::BigQuerySink, BoxError> {
    use headwater::sinks::bigquery::{BigQuerySink, ServiceAccountKey};
    let project = project
        .or_else(|| env("BIGQUERY_PROJECT"))
        .ok_or("set --project or BIGQUERY_PROJECT")?;
    let dataset = dataset
        .or_else(|| env("BIGQUERY_DATASET"))
        .ok_or("set --dataset or BIGQUERY_DATASET")?;
    let mut builder = BigQuerySink::builder(&project, &dataset);
    match (
        endpoint.or_else(|| env("BIGQUERY_ENDPOINT")),
        env("GOOGLE_APPLICATION_CREDENTIALS"),
    ) {
        (Some(endpoint), _) => {
            eprintln!("destination: BigQuery emulator at {endpoint}, dataset {project}.{dataset}");
            builder = builder.emulator(endpoint.parse()?);
        }
        (None, Some(key)) => {
            eprintln!(
                "destination: BigQuery dataset {project}.{dataset} (service-account key {key})"
            );
            builder = builder.service_account_key(ServiceAccountKey::from_file(key)?);
        }
        (None, None) => {
            return Err(
                "set BIGQUERY_ENDPOINT (an emulator) or GOOGLE_APPLICATION_CREDENTIALS".into(),
            )
        }
    }
    let sink = builder.build()?;
    sink.ensure_dataset().await?;
    Ok(sink)
}
