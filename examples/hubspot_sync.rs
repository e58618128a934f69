//! Sync a HubSpot account into local JSON Lines files.
//!
//! ```text
//! cargo run --release --example hubspot_sync -- --out DIR [--streams contacts,deals,...]
//! ```
//!
//! Credentials, from the environment:
//! - `HUBSPOT_ACCESS_TOKEN`: a private-app token; or
//! - `HUBSPOT_CLIENT_ID`, `HUBSPOT_CLIENT_SECRET`, `HUBSPOT_REFRESH_TOKEN`: an
//!   OAuth app and a connected account's refresh token. Refreshed tokens are
//!   kept in an encrypted store under `DIR/.tokens`, with the key
//!   `HEADWATER_TOKEN_KEY` (base64 of 32 bytes) or one generated on first
//!   use in `DIR/.tokens/encryption.key` (mode 0600).
//! - `HUBSPOT_BASE_URL`: the API's address (default `https://api.hubapi.com`).
//!
//! With no credentials it starts the bundled HubSpot fake (from
//! `headwater::testkit`) and says so. Run it twice: the second run reads
//! only what changed (or resumes a stream that was interrupted), never
//! duplicating a record.
//!
//! Other flags: `--tenant ID` (default: the hub id), `--checkpoint-every N`
//! (pages, default 10), `--full-refresh` (read everything again),
//! `--fake-contacts N` (records of the bundled fake, default 2500),
//! `--rate-limit N|off` (requests per 10 s instead of HubSpot's documented
//! default for the token kind; `off` for benchmarks against the fake),
//! `--quiet` (no progress bar).

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;

use headwater::sinks::files::FilesSink;

#[tokio::main]
async fn main() {
    common::init_tracing();
    let mut out = String::new();
    let args = common::parse_args(|flag, value| match flag {
        "--out" => {
            out = value()?;
            Ok(true)
        }
        _ => Ok(false),
    });
    let args = match args {
        Ok(a) if !out.is_empty() => a,
        other => {
            if let Err(e) = other {
                if !e.is_empty() {
                    eprintln!("error: {e}");
                }
            } else {
                eprintln!("error: --out DIR is required");
            }
            eprintln!("usage: hubspot_sync --out DIR {}", common::SOURCE_USAGE);
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args, out).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(mut args: common::SourceArgs, out: String) -> Result<(), common::BoxError> {
    args.token_dir = format!("{out}/.tokens");
    let (source, _fake) = common::hubspot_source(&args).await?;
    let sink = Arc::new(FilesSink::new(&out)?);
    let files = sink.clone();
    common::sync_and_report(&args, source, sink, move |tenant, stream| {
        files.data_path(tenant, stream).display().to_string()
    })
    .await?;
    Ok(())
}
