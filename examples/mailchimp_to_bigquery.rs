//! Sync a Mailchimp account into BigQuery: the initial bulk download, then
//! an incremental run that fetches only what changed.
//!
//! ```text
//! cargo run --release --features bigquery,testkit --example mailchimp_to_bigquery -- \
//!     [--project P] [--dataset D] [--endpoint URL] [--streams lists,list_members,...]
//!     [--tenant ID] [--checkpoint-every N] [--reread-days N] [--fake-members N]
//!     [--verify] [--quiet]
//! ```
//!
//! Destination, as the HubSpot examples take it: `BIGQUERY_PROJECT`,
//! `BIGQUERY_DATASET`, and `BIGQUERY_ENDPOINT` (an emulator, no auth) or
//! `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key file).
//!
//! Source: `MAILCHIMP_ACCESS_TOKEN` (an OAuth token; Mailchimp's tokens
//! never expire) or `MAILCHIMP_API_KEY` (`<key>-<dc>`, sent to its data
//! centre), at `MAILCHIMP_BASE_URL` if set. With neither, the bundled
//! Mailchimp fake: between the two runs the example then changes members,
//! adds some, moves a report's figures and sends a new campaign, so the
//! second run has changes to fetch; `--verify` then checks every table
//! against the fake (each record once, every key present).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use headwater::mailchimp::{Mailchimp, MailchimpSource, STREAM_LIST_MEMBERS};
use headwater::sinks::bigquery::BigQuerySink;
use headwater::source::Source;
use headwater::sync::{Sync, SyncReport};
use headwater::testkit::mailchimp::{AudienceSeed, MailchimpFake, MailchimpFakeConfig};

struct Args {
    project: Option<String>,
    dataset: Option<String>,
    endpoint: Option<String>,
    streams: Option<Vec<String>>,
    tenant: Option<String>,
    checkpoint_every: usize,
    reread_days: u64,
    fake_members: usize,
    verify: bool,
    quiet: bool,
}

const USAGE: &str = "usage: mailchimp_to_bigquery [--project P] [--dataset D] [--endpoint URL] \
[--streams lists,list_members,campaigns,reports,automations,automation_emails] [--tenant ID] \
[--checkpoint-every N] [--reread-days N] [--fake-members N] [--verify] [--quiet]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        project: None,
        dataset: None,
        endpoint: None,
        streams: None,
        tenant: None,
        checkpoint_every: 10,
        reread_days: 28,
        fake_members: 5_000,
        verify: false,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--project" => a.project = Some(value()?),
            "--dataset" => a.dataset = Some(value()?),
            "--endpoint" => a.endpoint = Some(value()?),
            "--streams" => {
                a.streams = Some(
                    value()?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "--tenant" => a.tenant = Some(value()?),
            "--checkpoint-every" => {
                a.checkpoint_every = value()?
                    .parse()
                    .map_err(|e| format!("--checkpoint-every: {e}"))?
            }
            "--reread-days" => {
                a.reread_days = value()?
                    .parse()
                    .map_err(|e| format!("--reread-days: {e}"))?
            }
            "--fake-members" => {
                a.fake_members = value()?
                    .parse()
                    .map_err(|e| format!("--fake-members: {e}"))?
            }
            "--verify" => a.verify = true,
            "--quiet" => a.quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
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
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The source the environment asks for, or the bundled fake (kept alive by
/// the returned handle).
async fn mailchimp(args: &Args) -> Result<(Mailchimp, Option<MailchimpFake>), common::BoxError> {
    let base = common::env("MAILCHIMP_BASE_URL");
    if let Some(token) = common::env("MAILCHIMP_ACCESS_TOKEN") {
        let mut b = Mailchimp::builder().access_token(token.into());
        if let Some(base) = &base {
            b = b.base_url(base.clone());
        }
        let mc = b.build()?;
        eprintln!(
            "source: Mailchimp OAuth token at {}",
            mc.api_client().base_url()
        );
        return Ok((mc, None));
    }
    if let Some(key) = common::env("MAILCHIMP_API_KEY") {
        let mut b = Mailchimp::builder().api_key(key.into());
        if let Some(base) = &base {
            b = b.base_url(base.clone());
        }
        let mc = b.build()?;
        eprintln!(
            "source: Mailchimp API key at {}",
            mc.api_client().base_url()
        );
        return Ok((mc, None));
    }
    let members = args.fake_members.max(3);
    let fake = MailchimpFake::start(MailchimpFakeConfig {
        audiences: vec![
            AudienceSeed::new(members * 7 / 10).with_tie(members / 5),
            AudienceSeed::new(members / 4),
            AudienceSeed::new(members - members * 7 / 10 - members / 4),
        ],
        latency: Duration::from_millis(2),
        ..MailchimpFakeConfig::default()
    })
    .await;
    eprintln!(
        "source: NO MAILCHIMP CREDENTIALS SET (MAILCHIMP_ACCESS_TOKEN or MAILCHIMP_API_KEY), \
         so this run uses the bundled Mailchimp FAKE at {} ({members} members in 3 audiences, \
         at most 10 requests in flight)",
        fake.api_base()
    );
    let mc = Mailchimp::builder()
        .api_key(fake.api_key().into())
        .base_url(fake.api_base())
        .build()?;
    Ok((mc, Some(fake)))
}

async fn sync(
    args: &Args,
    label: &str,
    source: Arc<MailchimpSource>,
    sink: &BigQuerySink,
    tenant: &str,
) -> Result<SyncReport, common::BoxError> {
    eprintln!("\n{label}");
    let mut s = Sync::new(source, Arc::new(sink.clone()))
        .tenant(tenant)
        .checkpoint_every(args.checkpoint_every);
    if let Some(streams) = &args.streams {
        s = s.streams(streams.clone());
    }
    if !args.quiet {
        s = common::with_progress_bars(s);
    }
    let report = s.run().await;
    if let Some(e) = &report.error {
        return Err(format!("sync failed: {e}").into());
    }
    common::print_summary(&report, |r| sink.table_ref(&r.stream));
    let requests: u64 = report.streams.iter().map(|s| s.requests.requests).sum();
    println!(
        "{label}: {} records, {requests} requests, streams read incrementally: [{}]",
        report.records(),
        report
            .streams
            .iter()
            .filter(|s| s.is_incremental())
            .map(|s| s.stream.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !report.is_success() {
        return Err(
            "some streams failed (their committed checkpoints are kept; run again to resume)"
                .into(),
        );
    }
    Ok(report)
}

/// Changes on the fake between the runs: what an incremental run must find.
fn change_the_fake(fake: &MailchimpFake) -> usize {
    // Stamped one second ago: after the first run's upper bound.
    let at = chrono::Utc::now() - chrono::Duration::seconds(1);
    let lists = fake.list_ids();
    let changed: Vec<String> = fake.member_ids(&lists[0]).into_iter().take(25).collect();
    fake.change_members(&lists[0], &changed, at);
    let added = fake.add_members(&lists[1], 15, at);
    let new = fake.add_campaigns(1, at);
    fake.send_campaign(&new[0], at);
    if let Some((recent, _)) = fake.sent_campaigns().into_iter().rev().nth(1) {
        fake.bump_report(&recent, 120, 30);
    }
    eprintln!(
        "\nchanged the fake: {} members changed, {} added, 1 campaign sent, 1 report's figures moved",
        changed.len(),
        added.len()
    );
    changed.len() + added.len()
}

/// Every table against the fake: each key once, and the keys the fake holds.
async fn verify(
    fake: &MailchimpFake,
    sink: &BigQuerySink,
    tenant: &str,
    streams: &[String],
) -> Result<(), common::BoxError> {
    for stream in streams {
        let truth: HashSet<String> = match stream.as_str() {
            "lists" => fake.list_ids().into_iter().collect(),
            STREAM_LIST_MEMBERS => fake
                .list_ids()
                .iter()
                .flat_map(|l| {
                    fake.member_ids(l)
                        .into_iter()
                        .map(move |m| format!("{l}:{m}"))
                })
                .collect(),
            "campaigns" => fake.campaign_ids().into_iter().collect(),
            "reports" => fake.report_ids().into_iter().collect(),
            "automations" => fake.automation_ids().into_iter().collect(),
            "automation_emails" => fake
                .automation_email_ids()
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
            _ => continue,
        };
        let rows = sink.read_rows(tenant, stream).await?;
        let keys: Vec<String> = rows
            .iter()
            .map(|r| {
                let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                if stream == STREAM_LIST_MEMBERS {
                    format!("{}:{}", s("list_id"), s("id"))
                } else {
                    s("id")
                }
            })
            .collect();
        let unique: HashSet<String> = keys.iter().cloned().collect();
        if unique.len() != keys.len() {
            return Err(format!(
                "verify: {stream}: {} rows for {} keys",
                keys.len(),
                unique.len()
            )
            .into());
        }
        if unique != truth {
            return Err(format!(
                "verify: {stream}: {} keys loaded, the fake holds {} ({} missing, {} extra)",
                unique.len(),
                truth.len(),
                truth.difference(&unique).count(),
                unique.difference(&truth).count()
            )
            .into());
        }
        println!("verified {stream}: {} rows, each key once", keys.len());
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), common::BoxError> {
    let sink = common::bigquery_sink(
        args.project.clone(),
        args.dataset.clone(),
        args.endpoint.clone(),
    )
    .await?;
    let (mc, fake) = mailchimp(&args).await?;
    let mut source =
        MailchimpSource::new(mc).with_reread_window(Duration::from_secs(args.reread_days * 86_400));
    if fake.is_some() {
        // The fake's changes are stamped "just now": read them at once.
        source = source.with_settle_lag(Duration::ZERO);
    }
    let source = Arc::new(source);
    let account = source.check().await?;
    eprintln!(
        "account: {} {} ({})",
        account.account_id,
        account.name.as_deref().unwrap_or(""),
        account.user.as_deref().unwrap_or("")
    );
    let tenant = args
        .tenant
        .clone()
        .unwrap_or_else(|| format!("mc-{}", account.account_id));
    let first = sync(
        &args,
        "run 1: initial download (or the resume of an interrupted one)",
        source.clone(),
        &sink,
        &tenant,
    )
    .await?;
    let changes = fake.as_ref().map(change_the_fake);
    let second = sync(
        &args,
        "run 2: incremental (only what changed)",
        source.clone(),
        &sink,
        &tenant,
    )
    .await?;
    let requests = |r: &SyncReport| r.streams.iter().map(|s| s.requests.requests).sum::<u64>();
    println!(
        "\nrun 1: {} records in {} requests; run 2: {} records in {} requests{}",
        first.records(),
        requests(&first),
        second.records(),
        requests(&second),
        changes
            .map(|n| format!(" ({n} member changes made on the fake)"))
            .unwrap_or_default()
    );
    if args.verify {
        match &fake {
            Some(fake) => {
                let streams: Vec<String> =
                    second.streams.iter().map(|s| s.stream.clone()).collect();
                verify(fake, &sink, &tenant, &streams).await?;
            }
            None => eprintln!("--verify checks the bundled fake only; skipped"),
        }
    }
    Ok(())
}
