//! Sync a HubSpot account into BigQuery: a table per stream, loaded by load
//! jobs into a staging table and MERGEd on the key, state in the same
//! transaction.
//!
//! ```text
//! cargo run --release --features bigquery --example hubspot_to_bigquery -- \
//!     [--project P] [--dataset D] [--endpoint URL] [--streams contacts,deals,...]
//! ```
//!
//! Destination, from flags or the environment: `BIGQUERY_PROJECT`,
//! `BIGQUERY_DATASET`, and `BIGQUERY_ENDPOINT` (an emulator, no auth) or
//! `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key file).
//! The source as in `hubspot_sync`: `HUBSPOT_ACCESS_TOKEN`, or
//! `HUBSPOT_CLIENT_ID`/`HUBSPOT_CLIENT_SECRET`/`HUBSPOT_REFRESH_TOKEN`, and
//! `HUBSPOT_BASE_URL`; with none set, the bundled fake.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;

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
                "usage: hubspot_to_bigquery [--project P] [--dataset D] [--endpoint URL] {}",
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
    let sink = common::bigquery_sink(dest.project, dest.dataset, dest.endpoint).await?;
    let (source, _fake) = common::hubspot_source(&args).await?;
    let tables = sink.clone();
    common::sync_and_report(&args, source, Arc::new(sink), move |_tenant, stream| {
        tables.table_ref(stream)
    })
    .await?;
    Ok(())
}
