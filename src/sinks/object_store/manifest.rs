//! The JSON documents the sink keeps beside the data: the manifest of each
//! sync and the committed state of each stream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema::{Field, StreamSchema};
use crate::sink::Checkpoint;

/// The version of the manifest and state documents this sink writes.
pub const FORMAT_VERSION: u32 = 1;

/// The files of one sync of one tenant's stream, written after every commit
/// to `{prefix}/{tenant}/{stream}/_manifests/{sync_id}.json` (in the raw
/// layer, and a copy in the clean layer).
///
/// While the sync runs, `complete` is false and the lists hold the parts
/// committed so far. When it finishes, `complete` is true and the lists are
/// all the files the sync wrote: the whole stream for a full refresh, the
/// changes for an incremental sync. Readers take the files of the stream's
/// [`Snapshot`] rather than list directories: a directory may also hold
/// older syncs and, after a crash, a part that was never committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// The tenant.
    pub tenant: String,
    /// The stream.
    pub stream: String,
    /// The sync run.
    pub sync_id: Uuid,
    /// When the sync started (its files are under `dt=` of this date, UTC).
    pub started_at: DateTime<Utc>,
    /// When this manifest was written.
    pub updated_at: DateTime<Utc>,
    /// True when the sync finished: the lists are all its files.
    pub complete: bool,
    /// True for a full refresh (its files are the whole stream), false for
    /// an incremental sync (its files are the changes since the previous
    /// sync, to be merged by key).
    #[serde(default = "yes")]
    pub full_refresh: bool,
    /// Records in the listed parts (each record once).
    pub records: u64,
    /// The raw layer's files (gzip JSON Lines), in part order.
    pub raw: Vec<ManifestFile>,
    /// The clean layer's files (Parquet), in part order; empty when the
    /// clean layer is off.
    pub clean: Vec<ManifestFile>,
    /// The raw layer's store (informative: its `Display`, e.g. `AmazonS3(bucket)`).
    pub raw_store: String,
    /// The clean layer's store (informative), if there is a clean layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_store: Option<String>,
    /// The stream's schema the clean layer's columns were built from.
    pub schema: StreamSchema,
}

/// One data file named by a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManifestFile {
    /// The object's path in its layer's store.
    pub path: String,
    /// The part number (0, 1, …): one part per commit that had records.
    pub part: u32,
    /// Records in the file.
    pub records: u64,
    /// The object's size in bytes.
    pub bytes: u64,
    /// Values that did not fit their column's type and were written as null
    /// (clean layer only; the raw layer keeps them as they came).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nulled_values: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

/// The current contents of a tenant's stream, written to
/// `{prefix}/{tenant}/{stream}/_snapshot.json` (both layers) each time a
/// sync completes.
///
/// `syncs` lists the latest complete full refresh and, after it, each
/// complete incremental sync that wrote changes, oldest first. The stream's
/// records are the records of their files read in that order (sync, then
/// part, then line or row) where, for each key, the last one wins; a record
/// whose last version has `_deleted: true` was archived at the source.
/// After a full refresh the list has one sync. In SQL, order by
/// `_extracted_at` (later syncs have later times), then file name and row
/// number, and keep the last row per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// The tenant.
    pub tenant: String,
    /// The stream.
    pub stream: String,
    /// The latest complete sync (listed in `syncs` unless it was an
    /// incremental sync without changes).
    pub latest_sync_id: Uuid,
    /// When this snapshot was written.
    pub updated_at: DateTime<Utc>,
    /// The syncs whose files make the stream, oldest first.
    pub syncs: Vec<Manifest>,
}

impl Snapshot {
    /// The raw layer's files, in reading order.
    pub fn raw_files(&self) -> impl Iterator<Item = &ManifestFile> {
        self.syncs.iter().flat_map(|m| &m.raw)
    }

    /// The clean layer's files, in reading order.
    pub fn clean_files(&self) -> impl Iterator<Item = &ManifestFile> {
        self.syncs.iter().flat_map(|m| &m.clean)
    }
}

/// `{prefix}/{tenant}/{stream}/_state.json`: the committed checkpoint, the
/// number of parts it covers, and the clean layer's columns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StateFile {
    pub(super) format: u32,
    pub(super) checkpoint: Checkpoint,
    /// Parts of `checkpoint.sync_id` committed: a resumed sync writes its
    /// next part under this number.
    pub(super) parts: u32,
    /// The clean layer's columns so far: every field the stream ever had,
    /// each with the type it was first written with.
    #[serde(default)]
    pub(super) columns: Vec<Field>,
}
