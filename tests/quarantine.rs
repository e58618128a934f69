//! One bad record does not stop a stream: each source decodes a page record
//! by record, the engine quarantines what cannot be decoded (raw bytes,
//! error with its JSON path, position) in the sink, the good records land,
//! the report counts the bad one, and a strict sync fails as before.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use headwater::http::{Limits, RetryConfig};
use headwater::hubspot::{HubSpot, HubSpotSource};
use headwater::sink::{QuarantinedRecord, Sink};
use headwater::sinks::files::FilesSink;
use headwater::sync::{ReadMode, StreamReport, Sync};
use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};
use headwater::testkit::BadRecord;
use headwater::Error;

const KINDS: [BadRecord; 3] = [
    BadRecord::InvalidUtf8,
    BadRecord::LoneSurrogate,
    BadRecord::DeepNesting,
];

fn retry() -> RetryConfig {
    RetryConfig::default().with_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn ids(path: &Path, key: &str) -> HashSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = HashSet::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("line");
        let id = v[key].as_str().expect("id").to_owned();
        assert!(out.insert(id), "duplicated record");
    }
    out
}

/// What every source's test checks of a run with one bad record.
fn check_quarantined(
    kind: BadRecord,
    report: &StreamReport,
    q: &[QuarantinedRecord],
    landed: &HashSet<String>,
    truth: &HashSet<String>,
) {
    assert!(report.error.is_none(), "{kind:?}: {report:#?}");
    assert_eq!(report.quarantined, 1, "{kind:?}");
    assert_eq!(
        report.count_mismatches().count(),
        0,
        "{kind:?}: a quarantined record was read, not lost: {:?}",
        report.counts
    );
    assert_eq!(q.len(), 1, "{kind:?}: {q:#?}");
    let q = &q[0];
    // The good records landed; the bad one is the one missing.
    let missing: Vec<&String> = truth.difference(landed).collect();
    assert_eq!(missing.len(), 1, "{kind:?}: {missing:?}");
    assert!(landed.is_subset(truth));
    let raw_text = String::from_utf8_lossy(&q.raw);
    assert!(
        raw_text.contains(missing[0].as_str()),
        "{kind:?}: the raw bytes are the bad record's: {raw_text}"
    );
    assert!(raw_text.contains("hw_bad"), "{kind:?}");
    assert!(raw_text.trim_start().starts_with('{') && raw_text.trim_end().ends_with('}'));
    match kind {
        BadRecord::InvalidUtf8 => {
            assert!(
                q.raw.windows(2).any(|w| w == [0xff, 0xfe]),
                "{kind:?}: the exact bytes are kept"
            );
            assert!(q.raw_base64().is_some());
            assert!(q.error.contains("UTF-8"), "{}", q.error);
        }
        BadRecord::LoneSurrogate => {
            assert!(raw_text.contains("\\ud800"));
            // serde_json: "unexpected end of hex escape" (no low half).
            assert!(
                q.error.contains("surrogate") || q.error.contains("hex escape"),
                "{}",
                q.error
            );
            assert!(q.path.contains("hw_bad"), "{}", q.path);
        }
        BadRecord::DeepNesting => {
            assert!(q.error.contains("recursion"), "{}", q.error);
        }
        _ => {}
    }
    assert!(!q.path.is_empty());
    assert!(q.position.0 != serde_json::Value::Null);
    assert!(report.sync_id == Some(q.sync_id));
}

// --- HubSpot ---------------------------------------------------------------

async fn hubspot_fake(contacts: usize) -> HubSpotFake {
    let mut c = FakeConfig::default();
    c.objects.insert(
        "contacts".into(),
        ObjectSeed {
            count: contacts,
            archived: 0,
        },
    );
    HubSpotFake::start(c).await
}

fn hubspot(fake: &HubSpotFake) -> Arc<HubSpotSource> {
    let hs = HubSpot::builder()
        .private_app_token("pat-fake-token".into())
        .base_url(fake.uri())
        .retry(retry())
        .limits(Limits::default())
        .build()
        .expect("client");
    Arc::new(HubSpotSource::new(hs))
}

#[tokio::test]
async fn hubspot_a_bad_record_is_quarantined_and_the_stream_goes_on() {
    for kind in KINDS {
        let fake = hubspot_fake(250).await;
        fake.bad_record("contacts", 1, kind);
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
        let run = || {
            Sync::new(hubspot(&fake), sink.clone())
                .tenant("acme")
                .streams(["contacts"])
        };
        let first = run().run().await;
        let s = &first.streams[0];
        assert_eq!(s.records, 249, "{kind:?}");
        let truth: HashSet<String> = fake.ids("contacts", false).into_iter().collect();
        let landed = ids(&sink.data_path("acme", "contacts"), "id");
        let q = sink
            .quarantined("acme", "contacts")
            .await
            .expect("quarantine");
        check_quarantined(kind, s, &q, &landed, &truth);
        assert!(q[0].path.starts_with("results[3]"), "{}", q[0].path);
        assert!(sink
            .quarantine_path("acme", "contacts")
            .ends_with("acme/contacts.quarantine.jsonl"));

        // The stream moved past it: the next run reads only changes.
        let second = run().run().await;
        assert!(second.is_success(), "{second:#?}");
        assert_eq!(second.streams[0].mode, ReadMode::Incremental);
        assert_eq!(second.streams[0].quarantined, 0);
        assert_eq!(
            sink.quarantined("acme", "contacts").await.expect("q").len(),
            1
        );

        // Strict mode fails on it as before, and commits nothing past it.
        let dir = tempfile::tempdir().expect("tempdir");
        let strict_sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
        let strict = Sync::new(hubspot(&fake), strict_sink.clone())
            .tenant("acme")
            .streams(["contacts"])
            .strict(true)
            .run()
            .await;
        match strict.streams[0].error.as_deref() {
            Some(Error::Decode { path, .. }) => {
                assert!(path.starts_with("results[3]"), "{kind:?}: {path}")
            }
            other => panic!("{kind:?}: expected Decode, got {other:?}"),
        }
        assert_eq!(strict.streams[0].quarantined, 0);
        let cp = strict_sink
            .load_state("acme", "contacts")
            .await
            .expect("state");
        assert!(cp.is_none_or(|cp| !cp.complete));
        assert!(strict_sink
            .quarantined("acme", "contacts")
            .await
            .expect("q")
            .is_empty());
    }
}

// --- Constant Contact ------------------------------------------------------

mod cc {
    use super::*;
    use headwater::constant_contact::{ConstantContact, ConstantContactSource, STREAM_CONTACTS};
    use headwater::testkit::constant_contact::{ConstantContactFake, FakeConfig};

    fn source(fake: &ConstantContactFake) -> Arc<ConstantContactSource> {
        let cc = ConstantContact::builder()
            .access_token("cc-fake-token".into())
            .base_url(fake.base_url())
            .retry(retry())
            .accepted_retry(retry())
            .limits(Limits::none())
            .build()
            .expect("client");
        Arc::new(ConstantContactSource::new(cc).with_settle_lag(Duration::ZERO))
    }

    #[tokio::test]
    async fn constant_contact_a_bad_record_is_quarantined_and_the_stream_goes_on() {
        for kind in KINDS {
            let fake = ConstantContactFake::start(FakeConfig {
                contacts: 1_200,
                ..FakeConfig::default()
            })
            .await;
            fake.bad_record("contacts", 1, kind);
            let dir = tempfile::tempdir().expect("tempdir");
            let sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
            let run = || {
                Sync::new(source(&fake), sink.clone())
                    .tenant("acme")
                    .streams([STREAM_CONTACTS])
            };
            let first = run().run().await;
            let s = &first.streams[0];
            let mut truth: HashSet<String> = fake.contact_ids(false).into_iter().collect();
            truth.extend(fake.contact_ids(true));
            assert_eq!(s.records as usize, truth.len() - 1, "{kind:?}");
            let landed = ids(&sink.data_path("acme", STREAM_CONTACTS), "contact_id");
            let q = sink
                .quarantined("acme", STREAM_CONTACTS)
                .await
                .expect("quarantine");
            check_quarantined(kind, s, &q, &landed, &truth);
            assert!(q[0].path.starts_with("contacts[3]"), "{}", q[0].path);

            let second = run().run().await;
            assert!(second.is_success(), "{second:#?}");
            assert_eq!(second.streams[0].mode, ReadMode::Incremental);
            assert_eq!(second.streams[0].quarantined, 0);

            let dir = tempfile::tempdir().expect("tempdir");
            let strict_sink = Arc::new(FilesSink::new(dir.path()).expect("sink"));
            let strict = Sync::new(source(&fake), strict_sink.clone())
                .tenant("acme")
                .streams([STREAM_CONTACTS])
                .strict(true)
                .run()
                .await;
            match strict.streams[0].error.as_deref() {
                Some(Error::Decode { path, .. }) => {
                    assert!(path.starts_with("contacts[3]"), "{kind:?}: {path}")
                }
                other => panic!("{kind:?}: expected Decode, got {other:?}"),
            }
            assert!(strict_sink
                .quarantined("acme", STREAM_CONTACTS)
                .await
                .expect("q")
                .is_empty());
        }
    }
}
