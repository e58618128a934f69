//! Runs the bundled HubSpot fake as a standalone server, so a sync can be
//! measured in a process of its own (see `scripts/bench-e2e.sh`).
//!
//! ```text
//! cargo run --release --example hubspot_fake -- [--contacts N] [--custom-properties N]
//!     [--latency-ms N] [--rate-limit N]
//! ```
//! Prints `HUBSPOT_BASE_URL=…` and `HUBSPOT_ACCESS_TOKEN=…` on the first
//! line, then serves until killed. No rate limit unless `--rate-limit N`
//! (requests per 10 s) is given.

use std::time::Duration;

use headwater::testkit::hubspot::{FakeConfig, FakeRateLimit, HubSpotFake, ObjectSeed};

fn main() {
    let mut config = FakeConfig::default();
    let mut contacts = 100_000usize;
    config.custom_properties = 6; // 19 default contact properties + 6 = 25
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: u64 = match it.next().map(|v| v.parse()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("usage: hubspot_fake [--contacts N] [--custom-properties N] [--latency-ms N] [--rate-limit N]");
                std::process::exit(2);
            }
        };
        match flag.as_str() {
            "--contacts" => contacts = value as usize,
            "--custom-properties" => config.custom_properties = value as usize,
            "--latency-ms" => config.latency = Duration::from_millis(value),
            "--rate-limit" => {
                config.rate_limit = Some(FakeRateLimit::new(value as u32, Duration::from_secs(10)))
            }
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    config
        .objects
        .insert("contacts".into(), ObjectSeed::new(contacts, 0));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        let fake = HubSpotFake::start(config).await;
        println!(
            "HUBSPOT_BASE_URL={} HUBSPOT_ACCESS_TOKEN={}",
            fake.uri(),
            fake.config().private_app_tokens[0]
        );
        std::future::pending::<()>().await;
    });
}
