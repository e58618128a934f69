//! HubSpot association streams against the testkit fake: exact association
//! sets through v4 batch reads (1,000 ids a batch, per-result paging),
//! partial errors, and re-reads on the caller's schedule with a real sync
//! into the files sink.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use headwater::http::{Limits, RetryConfig};
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::sinks::files::FilesSink;
use headwater::source::{Page, Source};
use headwater::sync::{ReadMode, Sync};
use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};
use headwater::Error;
use serde_json::Value;

fn config(contacts: usize, companies: usize) -> FakeConfig {
    let mut c = FakeConfig::default();
    c.objects
        .insert("contacts".into(), ObjectSeed::new(contacts, 2));
    c.objects
        .insert("companies".into(), ObjectSeed::new(companies, 1));
    c
}

fn client(fake: &HubSpotFake) -> HubSpot {
    HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(fake.uri())
        .retry(
            RetryConfig::default()
                .with_backoff(Duration::from_millis(5), Duration::from_millis(20)),
        )
        .limits(Limits::default())
        .build()
        .expect("client")
}

async fn read(source: &HubSpotSource, stream: &str) -> Result<Vec<Page>, Error> {
    let schema = source.schema(stream).await?;
    source.read(&schema, None).try_collect().await
}

fn pairs(pages: &[Page]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for r in pages.iter().flat_map(|p| &p.records) {
        let (from, to) = (
            r.data["from_id"].as_str().expect("from_id").to_owned(),
            r.data["to_id"].as_str().expect("to_id").to_owned(),
        );
        assert_eq!(r.id, format!("{from}-{to}"));
        assert!(!r.deleted);
        assert!(out.insert((from, to)), "{} twice", r.id);
    }
    out
}

#[tokio::test]
async fn association_streams_hold_exactly_the_associations_hubspot_has() {
    // 1,200 contacts: two batches (1,000 + 200); contact 1000 is associated
    // with all 620 companies, more than one result page (500).
    let fake = HubSpotFake::start(config(1_200, 620)).await;
    let source = HubSpotSource::new(client(&fake));
    fake.reset_stats();
    let pages = read(&source, "contacts_to_companies").await.expect("read");
    let got = pairs(&pages);
    let want: BTreeSet<(String, String)> = fake
        .associations("contacts", "companies")
        .into_iter()
        .collect();
    assert_eq!(got, want);
    assert!(want.len() > 1_500, "{}", want.len());
    let hub = got.iter().filter(|(f, _)| f == "1000").count();
    assert_eq!(hub, 620, "paged results are followed");
    // One page per batch of 1,000 from-records; the hub's second result
    // page in a batch read of its own.
    assert_eq!(pages.len(), 2);
    let stats = fake.stats();
    assert_eq!(stats.association_batch_sizes, vec![1_000, 1, 200]);
    assert_eq!(
        stats.per_path.get("GET /crm/v3/objects/contacts"),
        Some(&12)
    );
    assert_eq!(stats.requests, 12 + 3);
    // Types and labels as HubSpot sends them.
    let mut labels = BTreeSet::new();
    for r in pages.iter().flat_map(|p| &p.records) {
        let types = r.data["types"].as_array().expect("types");
        assert!(
            types
                .iter()
                .any(|t| t["typeId"] == 279 && t["category"] == "HUBSPOT_DEFINED"),
            "the unlabeled contact-to-company type: {types:?}"
        );
        let want: Vec<Value> = types
            .iter()
            .filter(|t| t["label"].is_string())
            .map(|t| t["label"].clone())
            .collect();
        assert_eq!(r.data["labels"], Value::Array(want.clone()));
        labels.extend(want.iter().filter_map(|l| l.as_str().map(str::to_owned)));
    }
    assert!(labels.contains("Primary"), "{labels:?}");

    // Every default stream, each the fake's set, in the other directions too.
    for (from, to) in headwater::hubspot::DEFAULT_ASSOCIATIONS {
        let stream = headwater::hubspot::association_stream_name(from, to);
        let got = pairs(&read(&source, &stream).await.expect("read"));
        let want: BTreeSet<_> = fake.associations(from, to).into_iter().collect();
        assert_eq!(got, want, "{stream}");
        let back: BTreeSet<_> = fake
            .associations(to, from)
            .into_iter()
            .map(|(t, f)| (f, t))
            .collect();
        assert_eq!(want, back, "{stream} holds both ways");
    }
    // Through the SDK: one call for a record with associations.
    let found = source
        .client()
        .associations("deals", "contacts")
        .read(&["1000".to_owned(), "1001".to_owned()])
        .await
        .expect("sdk");
    let want: Vec<_> = fake
        .associations("deals", "contacts")
        .into_iter()
        .filter(|(f, _)| f == "1000" || f == "1001")
        .collect();
    assert_eq!(
        found
            .iter()
            .map(|a| (a.from_id.clone(), a.to_id.clone()))
            .collect::<Vec<_>>(),
        want
    );
}

#[tokio::test]
async fn a_partial_batch_error_fails_the_read_with_a_typed_error() {
    let fake = HubSpotFake::start(config(300, 40)).await;
    let source = HubSpotSource::new(client(&fake));
    // Records without associations answer 207 with NO_ASSOCIATIONS_FOUND:
    // that is no error.
    let some_have_none = (0..300).any(|i| {
        let id = (1000 + i).to_string();
        !fake
            .associations("contacts", "deals")
            .iter()
            .any(|(f, _)| *f == id)
    });
    assert!(some_have_none);
    read(&source, "contacts_to_deals")
        .await
        .expect("NO_ASSOCIATIONS_FOUND is not an error");
    // Any other error of an input fails the read, typed.
    fake.fail_association_reads(1);
    let err = read(&source, "contacts_to_deals")
        .await
        .expect_err("partial failure");
    match &err {
        Error::Api {
            status, body, path, ..
        } => {
            assert_eq!(*status, 207);
            assert_eq!(body.category.as_deref(), Some("INTERNAL_ERROR"));
            assert_eq!(path, "/crm/v4/associations/contacts/deals/batch/read");
        }
        other => panic!("expected Api, got {other}"),
    }
    // More than 1,000 ids are refused before any call.
    let ids: Vec<String> = (0..1_001).map(|i| i.to_string()).collect();
    let err = source
        .client()
        .associations("contacts", "deals")
        .read(&ids)
        .await
        .expect_err("too many");
    assert!(matches!(err, Error::Config(_)), "{err}");
}

fn rows(path: &std::path::Path) -> HashMap<String, Value> {
    let text = std::fs::read_to_string(path).expect("data");
    let mut out = HashMap::new();
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).expect("json");
        let id = row["id"].as_str().expect("id").to_owned();
        assert!(out.insert(id.clone(), row).is_none(), "{id} twice");
    }
    out
}

fn live(rows: &HashMap<String, Value>) -> BTreeSet<String> {
    rows.iter()
        .filter(|(_, r)| r["_deleted"] == false)
        .map(|(k, _)| k.clone())
        .collect()
}

fn truth(fake: &HubSpotFake) -> BTreeSet<String> {
    fake.associations("contacts", "companies")
        .into_iter()
        .map(|(f, t)| format!("{f}-{t}"))
        .collect()
}

#[tokio::test]
async fn associations_are_read_again_when_due_and_a_dissociation_disappears() {
    let fake = HubSpotFake::start(config(400, 60)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
    let refresh = Duration::from_millis(600);
    let source = Arc::new(HubSpotSource::new(client(&fake)).with_association_refresh(refresh));
    let sync = Sync::new(source, sink.clone())
        .tenant("acme")
        .streams(["contacts_to_companies"]);
    let path = sink.data_path("acme", "contacts_to_companies");

    let first = sync.run().await;
    assert!(first.is_success(), "{first:#?}");
    assert_eq!(first.streams[0].mode, ReadMode::FirstSync);
    assert_eq!(live(&rows(&path)), truth(&fake));

    // A contact leaves a company and joins another. Neither record's
    // modified date changes.
    let (from, to) = fake
        .associations("contacts", "companies")
        .into_iter()
        .find(|(f, _)| f != "1000")
        .expect("an association");
    let (fi, ti) = (
        from.parse::<usize>().expect("id") - 1000,
        to.parse::<usize>().expect("id") - 1000,
    );
    assert!(fake.dissociate("contacts", fi, "companies", ti));
    let joined = (0..60)
        .find(|&c| fake.associate("contacts", fi, "companies", c))
        .expect("a company to join");
    let gone = format!("{from}-{to}");
    let new = format!("{from}-{}", 1000 + joined);

    // Not due yet: nothing is read, the sink is unchanged.
    let second = sync.run().await;
    assert!(second.is_success(), "{second:#?}");
    let s = &second.streams[0];
    assert!(s.is_incremental());
    assert_eq!((s.records, s.requests.requests), (0, 0));
    let before = rows(&path);
    assert!(live(&before).contains(&gone));
    assert!(!before.contains_key(&new));

    // Due: a full refresh; the vanished association is gone from the live
    // rows, the new one is there.
    tokio::time::sleep(refresh).await;
    let third = sync.run().await;
    assert!(third.is_success(), "{third:#?}");
    assert_eq!(
        third.streams[0].mode,
        ReadMode::FullListing,
        "a due refresh is full"
    );
    let after = rows(&path);
    let live_after = live(&after);
    assert!(!live_after.contains(&gone), "dissociation applied");
    assert!(live_after.contains(&new));
    assert_eq!(live_after, truth(&fake));
}
