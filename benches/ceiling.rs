//! How close syncs come to HubSpot's rate-limit ceiling.
//!
//! Against the HubSpot fake with 100 ms of latency on every response and
//! HubSpot's rolling 10-second window enforced (190 requests per 10 s per
//! portal, answered 429 beyond it):
//!
//! 1. one portal, four streams at once (contacts, companies, deals,
//!    tickets): requests per 10 s used against the 190 allowed, averaged over
//!    the whole sync and in its busiest window;
//! 2. many portals at once (default 50), each with its own limiters and its
//!    own window at the fake: total requests per second against the portals'
//!    summed ceiling.
//!
//! Every run must see zero 429s. Records go to a sink that only counts them,
//! so the figures are the source side's (client, limiter, fake).
//!
//! ```text
//! cargo bench --all-features --bench ceiling            # 1 portal, then 50
//! HW_CEILING_PORTALS=20 HW_CEILING_PAGES=60 cargo bench --all-features --bench ceiling
//! ```
//! `HW_CEILING_PAGES` is the pages of 100 records per stream (default 150,
//! about 33 s of reading at the ceiling: the first second, when every
//! stream reads its schema and counts, weighs less in a longer run). The
//! one-portal run prints a timeline (each stream's first page and end);
//! the many-portal runs, the fastest, median and slowest portal. Each
//! portal gets a fake server of its own (the
//! fake answers on one thread per server); `HW_CEILING_ONE_SERVER=1` puts
//! all portals on one server, which then caps the run at what one thread
//! can generate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use headwater::hubspot::{HubSpot, HubSpotSource, PRIVATE_APP_LIMIT};
use headwater::sink::{Batch, Checkpoint, PruneOutcome, Sink, StreamContext};
use headwater::sync::{run_tenants, Progress, Sync, SyncReport};
use headwater::testkit::hubspot::{FakeConfig, FakeRateLimit, HubSpotFake, ObjectSeed};

const STREAMS: [&str; 4] = ["contacts", "companies", "deals", "tickets"];
const LATENCY: Duration = Duration::from_millis(100);

/// Counts records and keeps the last checkpoint per stream in memory.
#[derive(Debug, Default)]
struct CountingSink {
    records: AtomicU64,
    state: std::sync::Mutex<std::collections::HashMap<(String, String), Checkpoint>>,
}

#[async_trait]
impl Sink for CountingSink {
    fn name(&self) -> &'static str {
        "counting"
    }
    async fn prepare(&self, _ctx: &StreamContext) -> headwater::Result<()> {
        Ok(())
    }
    async fn write(&self, batch: Batch) -> headwater::Result<()> {
        self.records
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    async fn commit(&self, cp: &Checkpoint) -> headwater::Result<PruneOutcome> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.insert((cp.tenant.clone(), cp.stream.clone()), cp.clone());
        Ok(PruneOutcome::NotApplicable)
    }
    async fn load_state(
        &self,
        tenant: &str,
        stream: &str,
    ) -> headwater::Result<Option<Checkpoint>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.get(&(tenant.to_owned(), stream.to_owned())).cloned())
    }
}

fn portal_config(i: usize, pages: usize) -> FakeConfig {
    let mut c = FakeConfig::for_portal(i);
    c.custom_properties = 0;
    for s in STREAMS {
        c.objects.insert(s.into(), ObjectSeed::new(pages * 100, 0));
    }
    c.rate_limit = Some(FakeRateLimit::private_app());
    c.latency = LATENCY;
    c
}

/// Properties read per stream: all of them, or a few (smaller pages, so the
/// fake and the client spend less CPU per request).
#[derive(Clone, Copy, PartialEq)]
enum Props {
    All,
    Few,
}

fn sync_of(fake: &HubSpotFake, sink: &Arc<CountingSink>, props: Props) -> Sync {
    let token = fake.private_app_token().expect("a private-app token");
    let hubspot = HubSpot::builder()
        .private_app_token(token.into())
        .base_url(fake.uri())
        .build()
        .expect("client");
    let mut source = HubSpotSource::new(hubspot);
    if props == Props::Few {
        for s in STREAMS {
            source =
                source.with_properties(s, ["hs_object_id", "hs_lastmodifieddate", "createdate"]);
        }
    }
    Sync::new(Arc::new(source), sink.clone())
        .tenant(format!("portal-{}", fake.hub_id()))
        .streams(STREAMS)
        .stream_concurrency(STREAMS.len())
        .full_refresh(true)
}

/// CPU time of this process so far (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct Outcome {
    requests: u64,
    rate_limited: u64,
    records: u64,
    elapsed: Duration,
}

fn outcome(reports: &[SyncReport], elapsed: Duration) -> Outcome {
    for r in reports {
        assert!(r.is_success(), "{r:#?}");
    }
    let streams = reports.iter().flat_map(|r| &r.streams);
    let (mut requests, mut limited, mut records) = (0, 0, 0);
    for s in streams {
        requests += s.requests.requests;
        limited += s.requests.rate_limited;
        records += s.records;
    }
    Outcome {
        requests,
        rate_limited: limited,
        records,
        elapsed,
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ceiling_per_s = f64::from(PRIVATE_APP_LIMIT.requests) / PRIVATE_APP_LIMIT.per.as_secs_f64();
    let quick = std::env::args().any(|a| a == "--test");

    // 1. One portal, four streams at once.
    let pages = env_usize("HW_CEILING_PAGES").unwrap_or(if quick { 5 } else { 150 });
    let one = rt.block_on(async {
        let fake = HubSpotFake::start(portal_config(0, pages)).await;
        let sink = Arc::new(CountingSink::default());
        let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Instant::now();
        let log = timeline.clone();
        let sync = sync_of(&fake, &sink, Props::All).on_progress(move |p| {
            let at = start.elapsed();
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            match p {
                Progress::PageWritten { stream, total, .. } if *total <= 100 => {
                    log.push((at, format!("{stream} first page")));
                }
                Progress::StreamFinished(r) => log.push((at, format!("{} done", r.stream))),
                _ => {}
            }
        });
        let reports = run_tenants([sync], 1).await;
        let o = outcome(&reports, start.elapsed());
        let timeline = timeline.lock().map(|t| t.clone()).unwrap_or_default();
        (o, fake.stats(), timeline)
    });
    let (o, stats, timeline) = one;
    let ideal = o.requests as f64 * PRIVATE_APP_LIMIT.quota().replenish_interval().as_secs_f64();
    println!(
        "one portal timeline (s): {}; {} requests at the limiter's own pace take {ideal:.1} s",
        timeline
            .iter()
            .map(|(t, what)| format!("{what} {:.2}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        o.requests
    );
    let rate = o.requests as f64 / o.elapsed.as_secs_f64();
    println!(
        "one portal: {} requests, {} records in {:.1} s = {:.2} requests/s of {:.1} allowed: \
         {:.1}% of the ceiling over the whole sync; busiest 10 s window {} of 190 ({:.1}%); \
         429s: {} seen by the client, {} sent by the fake",
        o.requests,
        o.records,
        o.elapsed.as_secs_f64(),
        rate,
        ceiling_per_s,
        100.0 * rate / ceiling_per_s,
        stats.max_in_window,
        100.0 * f64::from(stats.max_in_window) / 190.0,
        o.rate_limited,
        stats.rate_limited
    );
    assert_eq!(stats.rate_limited, 0, "429s against one portal");

    // 2. Many portals at once, with every property and with a few.
    let portals = env_usize("HW_CEILING_PORTALS").unwrap_or(if quick { 3 } else { 50 });
    let pages = env_usize("HW_CEILING_PAGES").unwrap_or(if quick { 3 } else { 150 });
    let mut limited = 0;
    for props in [Props::Few, Props::All] {
        let cpu_before = cpu_time();
        let (o, lim, busiest, spread) = rt.block_on(many(portals, pages, props));
        let cpu = cpu_time().saturating_sub(cpu_before);
        limited += lim;
        let rate = o.requests as f64 / o.elapsed.as_secs_f64();
        let ceiling = ceiling_per_s * portals as f64;
        println!(
            "{portals} portals at once, {}: {} requests, {} records in {:.1} s = {:.1} \
             requests/s of {:.1} allowed ({portals} x {:.1}): {:.1}% of the summed ceiling; \
             busiest portal window {} of 190; CPU {:.1} s = {:.0} CPU-µs per request (client and \
             fake, {:.0}% of the machine's cores); 429s: {} seen by the clients, {} sent by the fake",
            match props {
                Props::Few => "3 properties per record",
                Props::All => "every property",
            },
            o.requests,
            o.records,
            o.elapsed.as_secs_f64(),
            rate,
            ceiling,
            ceiling_per_s,
            100.0 * rate / ceiling,
            busiest,
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / o.requests as f64,
            100.0 * cpu.as_secs_f64()
                / (o.elapsed.as_secs_f64()
                    * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)),
            o.rate_limited,
            lim
        );
        println!("  {spread}");
    }
    assert_eq!(limited, 0, "429s across portals");
}

async fn many(portals: usize, pages: usize, props: Props) -> (Outcome, u64, u32, String) {
    // The fake answers on one thread per server; one server for 50 portals
    // would be the bottleneck (it generates 100 records per page), so by
    // default each portal gets its own.
    let fakes: Vec<HubSpotFake> = if std::env::var_os("HW_CEILING_ONE_SERVER").is_some() {
        let fake =
            HubSpotFake::start_portals((0..portals).map(|i| portal_config(i, pages)).collect())
                .await;
        (0..portals).map(|i| fake.portal(i)).collect()
    } else {
        let mut fakes = Vec::with_capacity(portals);
        for i in 0..portals {
            fakes.push(HubSpotFake::start(portal_config(i, pages)).await);
        }
        fakes
    };
    let sink = Arc::new(CountingSink::default());
    let syncs: Vec<Sync> = fakes.iter().map(|f| sync_of(f, &sink, props)).collect();
    let start = Instant::now();
    let reports = run_tenants(syncs, portals).await;
    let o = outcome(&reports, start.elapsed());
    let mut took: Vec<f64> = reports.iter().map(|r| r.duration.as_secs_f64()).collect();
    took.sort_by(f64::total_cmp);
    let spread = match (took.first(), took.last()) {
        (Some(first), Some(last)) => format!(
            "portals' own durations: fastest {first:.1} s, median {:.1} s, slowest {last:.1} s",
            took[took.len() / 2]
        ),
        _ => String::new(),
    };
    let stats: Vec<_> = fakes.iter().map(HubSpotFake::stats).collect();
    let limited: u64 = stats.iter().map(|s| s.rate_limited).sum();
    let busiest = stats.iter().map(|s| s.max_in_window).max().unwrap_or(0);
    (o, limited, busiest, spread)
}
