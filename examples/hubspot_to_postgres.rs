//! Sync a HubSpot account into Postgres: a typed table per stream, bulk
//! COPY into staging then an upsert, the stream's state in the same
//! transaction.
//!
//! ```text
//! cargo run --release --features postgres --example hubspot_to_postgres -- \
//!     [--database-url URL] [--schema NAME] [--streams contacts,deals,...]
//! ```
//!
//! Destination: `--database-url` or `DATABASE_URL`
//! (e.g. `postgres://postgres:postgres@127.0.0.1:5432/test`), tables in the
//! schema `headwater` unless `--schema` says otherwise. The source as in
//! `hubspot_sync`: `HUBSPOT_ACCESS_TOKEN`, or
//! `HUBSPOT_CLIENT_ID`/`HUBSPOT_CLIENT_SECRET`/`HUBSPOT_REFRESH_TOKEN`, and
//! `HUBSPOT_BASE_URL`; with none set, the bundled fake.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;

use headwater::sinks::postgres::PostgresSink;

#[tokio::main]
async fn main() {
    common::init_tracing();
    let (mut url, mut schema) = (None, None);
    let args = common::parse_args(|flag, value| {
        match flag {
            "--database-url" => url = Some(value()?),
            "--schema" => schema = Some(value()?),
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
                "usage: hubspot_to_postgres [--database-url URL] [--schema NAME] {}",
                common::SOURCE_USAGE
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args, url, schema).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(
    args: common::SourceArgs,
    url: Option<String>,
    schema: Option<String>,
) -> Result<(), common::BoxError> {
    let url = url
        .or_else(|| common::env("DATABASE_URL"))
        .ok_or("set --database-url or DATABASE_URL")?;
    let mut builder = PostgresSink::builder().url(&url);
    if let Some(s) = schema {
        builder = builder.schema(s);
    }
    let sink = builder.build().await?;
    eprintln!("destination: Postgres, schema `{}`", sink.schema());
    let (source, _fake) = common::hubspot_source(&args).await?;
    let sink = Arc::new(sink);
    let report = common::sync_and_report(&args, source, sink.clone(), |_tenant, stream| {
        stream.to_owned()
    })
    .await?;
    // The real table names (long or reserved stream names are shortened).
    for s in &report.streams {
        if let Some(table) = sink.table_name(&s.stream).await? {
            println!("{} -> {}.{}", s.stream, sink.schema(), table);
        }
    }
    Ok(())
}
