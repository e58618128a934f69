//! Where each object of a layer lives: one place that builds every path.

use std::sync::Arc;

use ::object_store::path::{Path, PathPart};
use ::object_store::ObjectStore;
use chrono::NaiveDate;
use uuid::Uuid;

use crate::{Error, Result};

/// One layer (raw or clean): a store and the prefix under which it writes.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) prefix: Path,
}

/// File extension of the raw layer's data files.
pub(super) const RAW_EXT: &str = "jsonl.gz";
/// File extension of the clean layer's data files.
pub(super) const CLEAN_EXT: &str = "parquet";

impl Layer {
    pub(super) fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self> {
        let prefix = Path::parse(prefix)
            .map_err(|e| Error::Config(format!("invalid object store prefix `{prefix}`: {e}")))?;
        Ok(Layer { store, prefix })
    }

    /// `{prefix}/{tenant}/{stream}`.
    pub(super) fn stream_dir(&self, tenant: &str, stream: &str) -> Path {
        self.prefix.child(segment(tenant)).child(segment(stream))
    }

    /// `{prefix}/{tenant}/{stream}/dt=YYYY-MM-DD`.
    pub(super) fn partition_dir(&self, tenant: &str, stream: &str, date: NaiveDate) -> Path {
        self.stream_dir(tenant, stream)
            .child(format!("dt={}", date.format("%Y-%m-%d")).as_str())
    }

    /// `{prefix}/{tenant}/{stream}/dt=YYYY-MM-DD/{sync_id}-{part:05}.{ext}`.
    pub(super) fn part_path(
        &self,
        tenant: &str,
        stream: &str,
        date: NaiveDate,
        sync_id: Uuid,
        part: u32,
        ext: &str,
    ) -> Path {
        self.partition_dir(tenant, stream, date)
            .child(part_file_name(sync_id, part, ext).as_str())
    }

    /// `{prefix}/{tenant}/{stream}/_state.json`.
    pub(super) fn state_path(&self, tenant: &str, stream: &str) -> Path {
        self.stream_dir(tenant, stream).child("_state.json")
    }

    /// `{prefix}/{tenant}/{stream}/_manifests/{sync_id}.json`.
    pub(super) fn manifest_path(&self, tenant: &str, stream: &str, sync_id: Uuid) -> Path {
        self.stream_dir(tenant, stream)
            .child("_manifests")
            .child(format!("{sync_id}.json").as_str())
    }

    /// `{prefix}/{tenant}/{stream}/_snapshot.json`.
    pub(super) fn snapshot_path(&self, tenant: &str, stream: &str) -> Path {
        self.stream_dir(tenant, stream).child("_snapshot.json")
    }
}

/// `{sync_id}-{part:05}.{ext}`.
pub(super) fn part_file_name(sync_id: Uuid, part: u32, ext: &str) -> String {
    format!("{sync_id}-{part:05}.{ext}")
}

/// The part number of a data file of `sync_id` named `file_name`, if it is one.
pub(super) fn part_of(file_name: &str, sync_id: Uuid) -> Option<u32> {
    let rest = file_name.strip_prefix(&format!("{sync_id}-"))?;
    let digits = rest.split('.').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A tenant or stream name as one path segment: object_store's own escaping
/// (`/`, `%`, non-ASCII bytes, control characters and the characters S3 and
/// GCS advise against are percent-encoded, `.` and `..` are escaped), and
/// `%00` for the empty name.
fn segment(name: &str) -> PathPart<'static> {
    if name.is_empty() {
        // `%` is always escaped by `PathPart::from`, so no name maps here.
        return PathPart::parse("%00").unwrap_or_else(|_| PathPart::from("_"));
    }
    PathPart::from(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::object_store::memory::InMemory;

    fn layer(prefix: &str) -> Layer {
        Layer::new(Arc::new(InMemory::new()), prefix).expect("layer")
    }

    #[test]
    fn paths_follow_the_documented_layout() {
        let id = Uuid::nil();
        let date = NaiveDate::from_ymd_opt(2024, 3, 1).expect("date");
        let l = layer("raw");
        assert_eq!(
            l.part_path("acme", "contacts", date, id, 7, RAW_EXT)
                .as_ref(),
            "raw/acme/contacts/dt=2024-03-01/00000000-0000-0000-0000-000000000000-00007.jsonl.gz"
        );
        assert_eq!(
            l.state_path("acme", "contacts").as_ref(),
            "raw/acme/contacts/_state.json"
        );
        assert_eq!(
            l.manifest_path("acme", "contacts", id).as_ref(),
            "raw/acme/contacts/_manifests/00000000-0000-0000-0000-000000000000.json"
        );
        let nested = layer("exports/hubspot");
        assert_eq!(
            nested.snapshot_path("acme", "deals").as_ref(),
            "exports/hubspot/acme/deals/_snapshot.json"
        );
        let root = layer("");
        assert_eq!(root.state_path("a", "b").as_ref(), "a/b/_state.json");
    }

    #[test]
    fn hostile_names_stay_one_segment() {
        let l = layer("raw");
        assert_eq!(l.stream_dir("../etc", "a/b").as_ref(), "raw/..%2Fetc/a%2Fb");
        assert_eq!(l.stream_dir("..", ".").as_ref(), "raw/%2E%2E/%2E");
        assert_eq!(l.stream_dir("", "é").as_ref(), "raw/%00/%C3%A9");
        assert_eq!(l.stream_dir("100%", "x").as_ref(), "raw/100%25/x");
        assert!(Layer::new(Arc::new(InMemory::new()), "a//b").is_err());
    }

    #[test]
    fn part_numbers_parse_back() {
        let id = Uuid::new_v4();
        assert_eq!(part_of(&part_file_name(id, 42, RAW_EXT), id), Some(42));
        assert_eq!(part_of(&part_file_name(id, 3, CLEAN_EXT), id), Some(3));
        assert_eq!(
            part_of(&part_file_name(id, 3, CLEAN_EXT), Uuid::nil()),
            None
        );
        assert_eq!(part_of(&format!("{id}-.parquet"), id), None);
    }
}
