//! Sync a HubSpot account into S3 (or any object store): the raw layer as
//! gzip JSON Lines, the cleaned layer as typed Parquet, with a manifest of
//! each sync's files and the state written after the data.
//!
//! ```text
//! cargo run --release --features object-store --example hubspot_to_s3 -- \
//!     [--bucket RAW] [--clean-bucket CLEAN] [--endpoint URL] [--local DIR] [--streams ...]
//! ```
//!
//! Destination, from flags or the environment: `S3_ENDPOINT` (empty for
//! AWS), `S3_BUCKET` (raw layer, e.g. `hubspot-users-datauncleaned`),
//! `S3_CLEAN_BUCKET` (cleaned layer, e.g.
//! `hubspot-users-datacleaned-transformed`), `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`. `--local DIR` writes both layers to
//! a directory instead. The source as in `hubspot_sync`.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;

use headwater::sinks::object_store::{ObjectStoreSink, S3Config};

#[derive(Default)]
struct Dest {
    bucket: Option<String>,
    clean_bucket: Option<String>,
    endpoint: Option<String>,
    local: Option<String>,
}

#[tokio::main]
async fn main() {
    common::init_tracing();
    let mut dest = Dest::default();
    let args = common::parse_args(|flag, value| {
        match flag {
            "--bucket" => dest.bucket = Some(value()?),
            "--clean-bucket" => dest.clean_bucket = Some(value()?),
            "--endpoint" => dest.endpoint = Some(value()?),
            "--local" => dest.local = Some(value()?),
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
                "usage: hubspot_to_s3 [--bucket RAW] [--clean-bucket CLEAN] [--endpoint URL] [--local DIR] {}",
                common::SOURCE_USAGE
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args, dest).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: common::SourceArgs, dest: Dest) -> Result<(), common::BoxError> {
    let (sink, where_) = match dest.local {
        Some(dir) => (
            ObjectStoreSink::local(&dir)?.build()?,
            format!("{dir} (local disk)"),
        ),
        None => {
            let mut cfg = match dest.bucket {
                Some(b) => {
                    let mut c = S3Config::from_env().unwrap_or_else(|_| S3Config::new(b.clone()));
                    c.bucket = b;
                    c
                }
                None => S3Config::from_env()?,
            };
            if let Some(c) = dest.clean_bucket {
                cfg = cfg.clean_bucket(c);
            }
            if let Some(e) = dest.endpoint {
                cfg = cfg.endpoint(e);
            }
            let where_ = format!(
                "s3://{} (raw), s3://{} (clean){}",
                cfg.bucket,
                cfg.clean_bucket.as_deref().unwrap_or(&cfg.bucket),
                cfg.endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            );
            (cfg.sink_builder()?.build()?, where_)
        }
    };
    eprintln!("destination: {where_}");
    let (source, _fake) = common::hubspot_source(&args).await?;
    common::sync_and_report(&args, source, Arc::new(sink), |tenant, stream| {
        format!("raw/{tenant}/{stream}/_snapshot.json")
    })
    .await?;
    Ok(())
}
