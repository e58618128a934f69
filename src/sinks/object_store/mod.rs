//! A data-lake sink on any [`object_store`] backend: S3 (and
//! S3-compatible servers), Google Cloud Storage, Azure, or local disk.
//!
//! Each committed part of a stream is written twice: gzip JSON Lines in the
//! raw layer (every field as the source sent it) and Parquet with typed
//! columns in the clean layer (a second bucket or prefix).
//!
//! ```text
//! {prefix}/{tenant}/{stream}/dt=YYYY-MM-DD/{sync_id}-{part:05}.jsonl.gz       raw data
//! {prefix}/{tenant}/{stream}/_state.json                                    committed checkpoint
//! {prefix}/{tenant}/{stream}/_manifests/{sync_id}.json                       the files of each sync
//! {prefix}/{tenant}/{stream}/_snapshot.json                                 the files of the current contents
//! {clean_prefix}/{tenant}/{stream}/dt=YYYY-MM-DD/{sync_id}-{part:05}.parquet  clean data
//! {clean_prefix}/{tenant}/{stream}/_manifests/{sync_id}.json                 copy of the manifest
//! {clean_prefix}/{tenant}/{stream}/_snapshot.json                           copy of the snapshot
//! ```
//! `dt` is the UTC date the sync started (all parts of a sync share it).
//! Tenant and stream names are one path segment each: `/`, `%`, control
//! characters, non-ASCII bytes and the characters S3 and GCS advise against
//! are percent-encoded (`a/b` is `a%2Fb`, `é` is `%C3%A9`), `.` and `..` are
//! escaped. Metadata files start with `_`, which Spark, Hive and DuckDB's
//! partition discovery skip.
//!
//! ## Formats
//! - **Raw**: one JSON object per line: `_tenant_id`, `_sync_id`,
//!   `_extracted_at`, `_deleted`, then the record's fields — the line format
//!   of the files sink.
//! - **Clean**: Parquet (Snappy): the four metadata columns (`_tenant_id`,
//!   `_sync_id` as UTF-8, `_extracted_at` as timestamp, `_deleted`), then
//!   one column per schema field, named exactly as the field (quotes,
//!   semicolons, dots, unicode and long names included):
//!   `String` → UTF-8, `Integer` → Int64, `Number` → Float64 (HubSpot
//!   declares no precision or scale, so a fixed decimal would have to
//!   guess; a double is exact to 15 significant digits), `Boolean`,
//!   `Date` → Date32, `Timestamp` → Timestamp(µs, UTC), `Json` → UTF-8
//!   holding JSON text. Each column's metadata names its headwater type
//!   (`headwater.type`). A value that does not fit its type (`"n/a"` in a
//!   number) is written as null, counted in the manifest
//!   ([`ManifestFile::nulled_values`]) and in [`ObjectStoreSink::stats`],
//!   and reported with `tracing::warn!`; the raw layer keeps it as it came.
//!   Blank strings are null in typed columns. Record fields not in the
//!   schema are only in the raw layer.
//! - **Schema evolution**: a stream's Parquet columns only grow. A new field
//!   adds a column; a field that leaves the schema keeps its column (null
//!   from then on); a field that changes type keeps its column's first type
//!   (values that no longer fit are null there and kept in the raw layer).
//!   So all Parquet files of a stream can be read together (DuckDB:
//!   `union_by_name = true` for files written before a column was added).
//!
//! ## Commits and resume
//! `write` encodes records into an in-memory part (a gzip stream and Arrow
//! column builders); `commit` uploads the part (by multipart upload above
//! [`ObjectStoreSinkBuilder::multipart_threshold`]), then writes the sync's
//! manifest, then `_state.json`: data first, state last. Part numbers count
//! the parts committed before, as recorded in `_state.json`, so a resumed
//! sync writes its next part under the name an interrupted commit may have
//! used, overwriting it; `prepare` also deletes any part of the interrupted
//! sync beyond the committed ones. A commit without new records writes no
//! data file, except that a full refresh always has at least one file per
//! layer (empty when the stream is).
//!
//! ## Reading: snapshots
//! When a sync completes, its manifest says `complete: true` and the
//! stream's [`Snapshot`] (`_snapshot.json`) is rewritten: a full refresh
//! replaces it with itself; an incremental sync (the engine reads only
//! changes after a full sync where the source can) is appended to it.
//! **Readers take the files the snapshot lists**, in order, and keep the
//! last version of each key, never listing directories: a partition can
//! hold several syncs of a day and files of an abandoned sync. With DuckDB:
//! ```sql
//! select * exclude (rn) from (
//!   select *, row_number() over (
//!     partition by id order by _extracted_at desc, filename desc, file_row_number desc) rn
//!   from read_parquet([/* the snapshot's clean files */],
//!                     filename = true, file_row_number = true, union_by_name = true))
//! where rn = 1 and not _deleted;
//! ```
//! or in Rust: [`ObjectStoreSink::snapshot`], then [`ObjectStoreSink::read_raw`]
//! for each of [`Snapshot::raw_files`].
//!
//! Nothing is ever deleted but the uncommitted parts of an interrupted sync:
//! older syncs' files stay after a full refresh replaces them. Delete them
//! with a retention policy of your own, for instance files named by no
//! manifest of the last *n* snapshots, or a bucket lifecycle rule on `dt=`
//! partitions older than the retention window that spares the files of the
//! current snapshot. A long chain of incremental syncs means many small
//! files: run a full refresh (`Sync::full_refresh(true)`) now and then.
//!
//! A full refresh replaces the snapshot only as far as
//! [`Checkpoint::prune`] allows: with a share limit it first counts the
//! keys of the current snapshot that the refresh did not write (reading both
//! back), and when its completeness checks did not match or those are more
//! than the allowed share, the refresh is appended to the snapshot like an
//! incremental sync (nothing is dropped). The snapshot's read-modify-write
//! is a conditional put on the etag read (`PutMode::Update`, or
//! `PutMode::Create` for the first), retried on a conflict; stores without
//! conditional updates (local disk) overwrite.
//!
//! ## One writer per stream
//! `prepare` takes a lease, `{prefix}/{tenant}/{stream}/_lease.json` in the
//! raw layer, by conditional put: created if absent, taken over if expired,
//! renewed at each commit, deleted at the final commit or
//! [`Sink::abandon`]. While another run holds it, `prepare` fails with
//! [`Error::Busy`]. A run killed with its process leaves its lease to
//! expire [`ObjectStoreSinkBuilder::lease_ttl`] after its last commit
//! (default 15 minutes); a run that does not commit for that long may lose
//! its lease to another, and then fails at its next commit.
//!
//! ## Limits
//! - Each commit with records writes one file per layer, held in memory
//!   until then: the engine's `checkpoint_every` sets the files' size (the
//!   default, 10 pages of 100 records, makes small files; raise it for
//!   fewer, larger ones at the cost of more re-reading after a crash). The
//!   manifest gains an entry per part and is rewritten at each commit.
//! - Tenants whose names differ only in case are kept apart on S3 and on
//!   case-sensitive file systems only.
//! - On the local-disk backend objects are written to a temporary file and
//!   renamed (readers never see a torn file), but not `fsync`ed: a power
//!   loss, unlike a process crash, may lose recent commits.
//!
//! ```no_run
//! # async fn run(source: std::sync::Arc<dyn headwater::source::Source>) -> headwater::Result<()> {
//! use std::sync::Arc;
//! use headwater::sinks::object_store::ObjectStoreSink;
//! use headwater::sync::Sync;
//!
//! // S3_BUCKET, S3_CLEAN_BUCKET, S3_ENDPOINT, AWS_ACCESS_KEY_ID, …
//! let sink = ObjectStoreSink::s3_from_env()?.build()?;
//! // or the same layout on local disk:
//! let local = ObjectStoreSink::local("lake")?.build()?;
//! # let _ = local;
//! let report = Sync::new(source, Arc::new(sink)).tenant("acme").run().await;
//! # let _ = report;
//! # Ok(()) }
//! ```

mod clean;
mod layout;
mod lease;
mod manifest;
mod raw;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ::object_store::aws::AmazonS3Builder;
use ::object_store::local::LocalFileSystem;
use ::object_store::path::Path;
use ::object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::schema::{Field, StreamSchema};
use crate::sink::{Batch, Checkpoint, Prune, PruneOutcome, QuarantinedRecord, Sink, StreamContext};
use crate::{Error, Result};

use self::clean::{merge_columns, CleanPart, ColumnPlan};
use self::layout::{part_of, Layer, CLEAN_EXT, RAW_EXT};
use self::lease::Lease;
use self::manifest::StateFile;
pub use self::manifest::{Manifest, ManifestFile, Snapshot, FORMAT_VERSION};
use self::raw::RawPart;

/// The `object_store` crate this sink is built on, for building stores
/// (`object_store::gcp::GoogleCloudStorageBuilder`, …) of the same version.
pub use ::object_store;

pub(crate) const NAME: &str = "object_store";

/// Parts larger than this are uploaded by multipart upload (default 8 MiB).
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;
/// Size of each piece of a multipart upload (default 8 MiB; S3 requires at
/// least 5 MiB for every piece but the last).
pub const DEFAULT_MULTIPART_PART_SIZE: usize = 8 * 1024 * 1024;

/// Writes each tenant's streams as gzip JSON Lines and Parquet to an object
/// store, with a manifest per sync. See the [module docs](self).
pub struct ObjectStoreSink {
    raw: Layer,
    clean: Option<Layer>,
    options: Options,
    open: std::sync::Mutex<OpenStreams>,
    counters: Counters,
}

/// The streams between `prepare` and their last commit, by tenant and stream.
type OpenStreams = HashMap<(String, String), Arc<tokio::sync::Mutex<OpenStream>>>;

impl std::fmt::Debug for ObjectStoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreSink")
            .field(
                "raw",
                &format_args!("{} {}", self.raw.store, self.raw.prefix),
            )
            .field(
                "clean",
                &self
                    .clean
                    .as_ref()
                    .map(|c| format!("{} {}", c.store, c.prefix)),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Options {
    multipart_threshold: usize,
    multipart_part_size: usize,
    upload_concurrency: usize,
    gzip_level: u32,
    lease_ttl: std::time::Duration,
}

/// How long a run's lease lasts after its last commit (see
/// [`ObjectStoreSinkBuilder::lease_ttl`]).
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Debug, Default)]
struct Counters {
    parts: AtomicU64,
    records: AtomicU64,
    raw_bytes: AtomicU64,
    clean_bytes: AtomicU64,
    multipart_uploads: AtomicU64,
    nulled_values: AtomicU64,
}

/// What an [`ObjectStoreSink`] has written since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectStoreSinkStats {
    /// Parts committed (each is one raw file and, with the clean layer, one
    /// Parquet file).
    pub parts: u64,
    /// Records in those parts.
    pub records: u64,
    /// Bytes of raw (gzip) files.
    pub raw_bytes: u64,
    /// Bytes of Parquet files.
    pub clean_bytes: u64,
    /// Files uploaded by multipart upload.
    pub multipart_uploads: u64,
    /// Values written as null to the clean layer because they did not fit
    /// their column's type.
    pub nulled_values: u64,
}

/// The part of a tenant's stream being built between two commits.
#[derive(Debug)]
struct OpenStream {
    sync_id: Uuid,
    full_refresh: bool,
    schema: StreamSchema,
    /// The clean layer's columns (kept in the state).
    columns: Vec<Field>,
    /// The sync's start (from the resumed checkpoint, else the first commit).
    started_at: Option<DateTime<Utc>>,
    /// Parts committed by this sync.
    parts: u32,
    raw_files: Vec<ManifestFile>,
    clean_files: Vec<ManifestFile>,
    raw: RawPart,
    clean: Option<CleanPart>,
    plan: Arc<ColumnPlan>,
    /// The run's lease, renewed at each commit, released at the last.
    lease: Option<Lease>,
}

fn store_err(what: String) -> impl FnOnce(::object_store::Error) -> Error {
    move |e| Error::sink(NAME, what, e)
}

/// Builds an [`ObjectStoreSink`]: a store and prefix for the raw layer, and
/// optionally another store or prefix for the clean layer.
///
/// ```
/// # fn demo() -> headwater::Result<()> {
/// use std::sync::Arc;
/// use headwater::sinks::object_store::{object_store::memory::InMemory, ObjectStoreSink};
///
/// let sink = ObjectStoreSink::builder()
///     .store(Arc::new(InMemory::new()))
///     .prefix("hubspot/raw")
///     .clean_prefix("hubspot/clean")
///     .build()?;
/// # let _ = sink; Ok(()) }
/// # demo().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectStoreSinkBuilder {
    store: Option<Arc<dyn ObjectStore>>,
    prefix: String,
    clean_store: Option<Arc<dyn ObjectStore>>,
    clean_prefix: String,
    clean: bool,
    options: Options,
}

impl Default for ObjectStoreSinkBuilder {
    fn default() -> Self {
        ObjectStoreSinkBuilder {
            store: None,
            prefix: "raw".into(),
            clean_store: None,
            clean_prefix: "clean".into(),
            clean: true,
            options: Options {
                multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
                multipart_part_size: DEFAULT_MULTIPART_PART_SIZE,
                upload_concurrency: 4,
                gzip_level: 6,
                lease_ttl: DEFAULT_LEASE_TTL,
            },
        }
    }
}

impl ObjectStoreSinkBuilder {
    /// A builder with the defaults: prefixes `raw` and `clean` in one store
    /// (to be set with [`Self::store`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The store of the raw layer, and of the clean layer unless
    /// [`Self::clean_store`] names another (required).
    pub fn store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The raw layer's prefix (default `raw`; `""` for the store's root).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A separate store (another bucket) for the clean layer.
    pub fn clean_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.clean_store = Some(store);
        self
    }

    /// The clean layer's prefix (default `clean`; `""` for the store's root).
    pub fn clean_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.clean_prefix = prefix.into();
        self
    }

    /// Whether to write the clean (Parquet) layer (default true).
    pub fn clean_layer(mut self, enabled: bool) -> Self {
        self.clean = enabled;
        self
    }

    /// Files larger than this many bytes are uploaded by multipart upload
    /// (default [`DEFAULT_MULTIPART_THRESHOLD`]).
    pub fn multipart_threshold(mut self, bytes: usize) -> Self {
        self.options.multipart_threshold = bytes;
        self
    }

    /// The size of each piece of a multipart upload (default
    /// [`DEFAULT_MULTIPART_PART_SIZE`]; S3 needs at least 5 MiB).
    pub fn multipart_part_size(mut self, bytes: usize) -> Self {
        self.options.multipart_part_size = bytes.max(1);
        self
    }

    /// Pieces of one multipart upload sent at the same time (default 4).
    pub fn upload_concurrency(mut self, n: usize) -> Self {
        self.options.upload_concurrency = n.max(1);
        self
    }

    /// How long a run's lease of a stream lasts after its last commit
    /// (default [`DEFAULT_LEASE_TTL`]): a run killed with its process blocks
    /// the stream that long; a run that commits less often than that may
    /// lose its lease to another run. At least one second.
    pub fn lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.options.lease_ttl = ttl.max(std::time::Duration::from_secs(1));
        self
    }

    /// The gzip level of raw files, 0 (none) to 9 (smallest); default 6.
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.options.gzip_level = level;
        self
    }

    /// The sink. Fails when no store was given, a prefix is not a valid
    /// object path (an empty segment, `.` or `..`), or the gzip level is
    /// above 9.
    pub fn build(self) -> Result<ObjectStoreSink> {
        let store = self
            .store
            .ok_or_else(|| Error::Config("object store sink: no store given".into()))?;
        if self.options.gzip_level > 9 {
            return Err(Error::Config(format!(
                "object store sink: gzip level {} is above 9",
                self.options.gzip_level
            )));
        }
        let raw = Layer::new(store.clone(), &self.prefix)?;
        let clean = if self.clean {
            Some(Layer::new(
                self.clean_store.unwrap_or(store),
                &self.clean_prefix,
            )?)
        } else {
            None
        };
        Ok(ObjectStoreSink {
            raw,
            clean,
            options: self.options,
            open: std::sync::Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }
}

/// Where an S3 (or S3-compatible) sink writes, usually read from the
/// environment with [`S3Config::from_env`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct S3Config {
    /// The endpoint of an S3-compatible server (MinIO, moto, …); `None` for
    /// AWS. With an endpoint, requests use path-style addressing and plain
    /// HTTP is allowed.
    pub endpoint: Option<String>,
    /// The raw layer's bucket.
    pub bucket: String,
    /// The clean layer's bucket; `None` for the raw layer's.
    pub clean_bucket: Option<String>,
    /// The access key id; `None` for the AWS credential chain (session
    /// token, web identity, ECS, instance metadata).
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<SecretString>,
    /// The region (`us-east-1` when unset).
    pub region: Option<String>,
}

impl S3Config {
    /// A config for `bucket` on AWS with the default credential chain.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            endpoint: None,
            bucket: bucket.into(),
            clean_bucket: None,
            access_key_id: None,
            secret_access_key: None,
            region: None,
        }
    }

    /// Reads `S3_ENDPOINT` (empty for AWS), `S3_BUCKET` (required),
    /// `S3_CLEAN_BUCKET` (empty for the same bucket), `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`. Other `AWS_*` variables
    /// (`AWS_SESSION_TOKEN`, …) are read by `object_store` when the store is
    /// built.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bucket = var("S3_BUCKET").ok_or_else(|| {
            Error::Config("S3_BUCKET is not set: name the raw layer's bucket".into())
        })?;
        Ok(S3Config {
            endpoint: var("S3_ENDPOINT"),
            bucket,
            clean_bucket: var("S3_CLEAN_BUCKET"),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY").map(SecretString::from),
            region: var("AWS_REGION"),
        })
    }

    /// Sets the endpoint of an S3-compatible server.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the clean layer's bucket.
    pub fn clean_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.clean_bucket = Some(bucket.into());
        self
    }

    /// Sets static credentials.
    pub fn credentials(mut self, access_key_id: impl Into<String>, secret: SecretString) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret);
        self
    }

    /// Sets the region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The S3 store of one bucket.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &self.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &self.region {
            b = b.with_region(region);
        }
        if let Some(id) = &self.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(secret) = &self.secret_access_key {
            b = b.with_secret_access_key(secret.expose_secret());
        }
        let store = b
            .build()
            .map_err(store_err(format!("cannot configure S3 bucket `{bucket}`")))?;
        Ok(Arc::new(store))
    }

    /// A sink builder on these buckets: prefixes `raw` and `clean` in
    /// [`S3Config::bucket`], or `raw` in it and `clean` in
    /// [`S3Config::clean_bucket`] when set.
    pub fn sink_builder(&self) -> Result<ObjectStoreSinkBuilder> {
        let mut b = ObjectStoreSinkBuilder::new().store(self.store(&self.bucket)?);
        if let Some(clean) = &self.clean_bucket {
            b = b.clean_store(self.store(clean)?);
        }
        Ok(b)
    }
}

impl ObjectStoreSink {
    /// A builder (see [`ObjectStoreSinkBuilder`]).
    pub fn builder() -> ObjectStoreSinkBuilder {
        ObjectStoreSinkBuilder::new()
    }

    /// A builder for S3 configured from the environment
    /// ([`S3Config::from_env`]).
    pub fn s3_from_env() -> Result<ObjectStoreSinkBuilder> {
        S3Config::from_env()?.sink_builder()
    }

    /// A builder for the same layout on local disk under `dir` (created if
    /// missing), through `object_store`'s `LocalFileSystem`.
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<ObjectStoreSinkBuilder> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::sink(NAME, format!("cannot create {}", dir.display()), e))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(store_err(format!("cannot use {}", dir.display())))?;
        Ok(Self::builder().store(Arc::new(fs)))
    }

    /// The raw layer's store.
    pub fn raw_store(&self) -> &Arc<dyn ObjectStore> {
        &self.raw.store
    }

    /// The clean layer's store, if the clean layer is on.
    pub fn clean_store(&self) -> Option<&Arc<dyn ObjectStore>> {
        self.clean.as_ref().map(|c| &c.store)
    }

    /// What this sink has written so far.
    pub fn stats(&self) -> ObjectStoreSinkStats {
        let c = &self.counters;
        ObjectStoreSinkStats {
            parts: c.parts.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            raw_bytes: c.raw_bytes.load(Ordering::Relaxed),
            clean_bytes: c.clean_bytes.load(Ordering::Relaxed),
            multipart_uploads: c.multipart_uploads.load(Ordering::Relaxed),
            nulled_values: c.nulled_values.load(Ordering::Relaxed),
        }
    }

    /// The manifest of one sync of a tenant's stream (complete or not).
    pub async fn manifest(
        &self,
        tenant: &str,
        stream: &str,
        sync_id: Uuid,
    ) -> Result<Option<Manifest>> {
        get_json(&self.raw, &self.raw.manifest_path(tenant, stream, sync_id)).await
    }

    /// The current contents of a tenant's stream: the files of its latest
    /// complete full refresh and of the incremental syncs after it (see
    /// [`Snapshot`]). `None` before the first sync completes.
    pub async fn snapshot(&self, tenant: &str, stream: &str) -> Result<Option<Snapshot>> {
        get_json(&self.raw, &self.raw.snapshot_path(tenant, stream)).await
    }

    /// The records of a raw file named by a manifest, one JSON object per
    /// line.
    pub async fn read_raw(&self, file: &ManifestFile) -> Result<Vec<serde_json::Value>> {
        use std::io::BufRead;
        let path = Path::parse(&file.path)
            .map_err(|e| Error::Config(format!("`{}` is not an object path: {e}", file.path)))?;
        let bytes = get_bytes(&self.raw, &path)
            .await?
            .ok_or_else(|| Error::State {
                message: format!("{path} is named by a manifest but does not exist"),
                source: None,
            })?;
        let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut out = Vec::new();
        for line in reader.lines() {
            let line = line.map_err(|e| Error::sink(NAME, format!("cannot gunzip {path}"), e))?;
            if line.is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str(&line)
                    .map_err(|e| Error::sink(NAME, format!("bad line in {path}"), e))?,
            );
        }
        Ok(out)
    }

    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.raw).chain(self.clean.as_ref())
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, OpenStreams> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get_open(
        &self,
        tenant: &str,
        stream: &str,
        what: &str,
    ) -> Result<Arc<tokio::sync::Mutex<OpenStream>>> {
        self.open_map()
            .get(&(tenant.to_owned(), stream.to_owned()))
            .cloned()
            .ok_or_else(|| Error::Sink {
                sink: NAME,
                message: format!(
                    "{what} of `{tenant}`/`{stream}` before prepare (or after a failed commit: prepare again to resume)"
                ),
                source: None,
            })
    }

    async fn read_state(&self, tenant: &str, stream: &str) -> Result<Option<StateFile>> {
        let path = self.raw.state_path(tenant, stream);
        let state: Option<StateFile> = get_json(&self.raw, &path).await?;
        if let Some(s) = &state {
            if s.format > FORMAT_VERSION {
                return Err(Error::State {
                    message: format!(
                        "{path} has format {} (this headwater writes {FORMAT_VERSION}): written by a newer version",
                        s.format
                    ),
                    source: None,
                });
            }
        }
        Ok(state)
    }

    /// Writes the manifest to every layer, at the same time.
    async fn put_manifest(&self, m: &Manifest) -> Result<()> {
        let clean = async {
            match &self.clean {
                Some(clean) => {
                    let path = clean.manifest_path(&m.tenant, &m.stream, m.sync_id);
                    put_json(clean, &path, m).await
                }
                None => Ok(()),
            }
        };
        let raw_path = self.raw.manifest_path(&m.tenant, &m.stream, m.sync_id);
        let raw = put_json(&self.raw, &raw_path, m);
        futures::try_join!(clean, raw).map(|_| ())
    }

    /// Adds a complete sync to the stream's snapshot: a full refresh
    /// replaces it (as far as `prune` allows; otherwise it is appended), an
    /// incremental sync with files is appended. Written to every layer, the
    /// raw layer last, conditionally on the raw snapshot read (retried when
    /// another writer changed it meanwhile). Running it again for the same
    /// sync gives the same snapshot.
    async fn publish(&self, m: &Manifest, prune: &Prune) -> Result<PruneOutcome> {
        let path = self.raw.snapshot_path(&m.tenant, &m.stream);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (previous, version) = self.snapshot_versioned(&m.tenant, &m.stream).await?;
            let (snapshot, outcome) = self.next_snapshot(m, previous, prune).await?;
            if let Some(clean) = &self.clean {
                put_json(clean, &clean.snapshot_path(&m.tenant, &m.stream), &snapshot).await?;
            }
            let bytes = serde_json::to_vec_pretty(&snapshot)
                .map_err(|e| Error::sink(NAME, format!("cannot encode {path}"), e))?;
            let mode = match version {
                Some(v) => PutMode::Update(v),
                None => PutMode::Create,
            };
            let put = self
                .raw
                .store
                .put_opts(
                    &path,
                    PutPayload::from(bytes.clone()),
                    PutOptions::from(mode),
                )
                .await;
            match put {
                Ok(_) => return Ok(outcome),
                Err(::object_store::Error::NotImplemented) => {
                    // No conditional updates on this store (local disk):
                    // the lease is the only guard.
                    self.raw
                        .store
                        .put(&path, PutPayload::from(bytes))
                        .await
                        .map_err(store_err(format!("cannot put {path}")))?;
                    return Ok(outcome);
                }
                Err(
                    e @ (::object_store::Error::Precondition { .. }
                    | ::object_store::Error::AlreadyExists { .. }),
                ) => {
                    if attempts >= 3 {
                        return Err(store_err(format!(
                            "{path} kept changing while this sync published it"
                        ))(e));
                    }
                    tracing::warn!(%path, "the snapshot changed while it was rewritten: reading it again");
                }
                Err(e) => return Err(store_err(format!("cannot put {path}"))(e)),
            }
        }
    }

    /// The snapshot that follows `previous` once `m` is published, and what
    /// a full refresh did about the records it did not write.
    async fn next_snapshot(
        &self,
        m: &Manifest,
        previous: Option<Snapshot>,
        prune: &Prune,
    ) -> Result<(Snapshot, PruneOutcome)> {
        let mut outcome = PruneOutcome::NotApplicable;
        let mut syncs = match previous {
            Some(p) if !m.full_refresh => p.syncs,
            None if !m.full_refresh => {
                tracing::warn!(
                    tenant = %m.tenant,
                    stream = %m.stream,
                    sync_id = %m.sync_id,
                    "an incremental sync completed with no snapshot to add its changes to: the snapshot holds only these changes"
                );
                Vec::new()
            }
            None => {
                outcome = PruneOutcome::Pruned { rows: Some(0) };
                Vec::new()
            }
            Some(p) => {
                let unlimited = match prune {
                    Prune::All => true,
                    Prune::UpTo(share) => *share >= 1.0,
                    _ => false,
                };
                if unlimited {
                    outcome = PruneOutcome::Pruned { rows: None };
                    Vec::new()
                } else {
                    let key = &m.schema.primary_key;
                    let mut old = std::collections::HashSet::new();
                    for file in p.raw_files() {
                        for row in self.read_raw(file).await? {
                            if let serde_json::Value::Object(row) = row {
                                old.insert(crate::sink::row_key(&row, key));
                            }
                        }
                    }
                    let mut run = std::collections::HashSet::new();
                    for file in &m.raw {
                        for row in self.read_raw(file).await? {
                            if let serde_json::Value::Object(row) = row {
                                run.insert(crate::sink::row_key(&row, key));
                            }
                        }
                    }
                    let stale = old.difference(&run).count() as u64;
                    match prune.check(stale, stale + run.len() as u64) {
                        Ok(()) => {
                            outcome = PruneOutcome::Pruned { rows: Some(stale) };
                            Vec::new()
                        }
                        Err(withheld) => {
                            outcome = withheld;
                            p.syncs
                        }
                    }
                }
            }
        };
        syncs.retain(|s| s.sync_id != m.sync_id);
        if m.full_refresh || !m.raw.is_empty() {
            syncs.push(m.clone());
        }
        let snapshot = Snapshot {
            format: FORMAT_VERSION,
            tenant: m.tenant.clone(),
            stream: m.stream.clone(),
            latest_sync_id: m.sync_id,
            updated_at: Utc::now(),
            syncs,
        };
        Ok((snapshot, outcome))
    }

    /// The raw layer's snapshot and its version (for a conditional put).
    async fn snapshot_versioned(
        &self,
        tenant: &str,
        stream: &str,
    ) -> Result<(Option<Snapshot>, Option<UpdateVersion>)> {
        let path = self.raw.snapshot_path(tenant, stream);
        let got = match self.raw.store.get(&path).await {
            Ok(got) => got,
            Err(::object_store::Error::NotFound { .. }) => return Ok((None, None)),
            Err(e) => return Err(store_err(format!("cannot read {path}"))(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(store_err(format!("cannot read {path}")))?;
        let snapshot = serde_json::from_slice(&bytes)
            .map_err(|e| Error::state(format!("unreadable {path}"), e))?;
        Ok((Some(snapshot), Some(version)))
    }

    /// Finishes a completion that stopped after the state was committed but
    /// before the snapshot was written.
    async fn publish_if_stale(
        &self,
        tenant: &str,
        stream: &str,
        sync_id: Uuid,
        prune: &Prune,
    ) -> Result<()> {
        let snapshot = self.snapshot(tenant, stream).await?;
        if snapshot
            .as_ref()
            .is_some_and(|s| s.latest_sync_id == sync_id)
        {
            return Ok(());
        }
        match self.manifest(tenant, stream, sync_id).await? {
            Some(m) if m.complete => self.publish(&m, prune).await.map(|_| ()),
            _ => {
                tracing::warn!(
                    tenant,
                    stream,
                    %sync_id,
                    "the state says complete but the sync's manifest is missing or incomplete: the snapshot was not updated"
                );
                Ok(())
            }
        }
    }

    /// Deletes the data files of `sync_id` numbered `from` and above: the
    /// uncommitted tail of an interrupted sync.
    async fn delete_tail(
        &self,
        tenant: &str,
        stream: &str,
        date: NaiveDate,
        sync_id: Uuid,
        from: u32,
    ) -> Result<()> {
        for layer in self.layers() {
            let dir = layer.partition_dir(tenant, stream, date);
            let doomed: Vec<Path> = layer
                .store
                .list(Some(&dir))
                .map_err(|e| Error::sink(NAME, format!("cannot list {dir}"), e))
                .try_filter_map(|meta| async move {
                    let hit = meta
                        .location
                        .filename()
                        .and_then(|n| part_of(n, sync_id))
                        .is_some_and(|p| p >= from);
                    Ok(hit.then_some(meta.location))
                })
                .try_collect()
                .await?;
            for path in doomed {
                tracing::debug!(%path, "deleting an uncommitted part");
                match layer.store.delete(&path).await {
                    Ok(()) | Err(::object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(format!("cannot delete {path}"))(e)),
                }
            }
        }
        Ok(())
    }

    /// Uploads one file; by multipart upload above the threshold. Returns
    /// its size.
    async fn upload(&self, layer: &Layer, path: &Path, bytes: Bytes) -> Result<u64> {
        let len = bytes.len();
        if len <= self.options.multipart_threshold {
            layer
                .store
                .put(path, PutPayload::from(bytes))
                .await
                .map_err(store_err(format!("cannot put {path}")))?;
            return Ok(len as u64);
        }
        let mut upload = layer
            .store
            .put_multipart(path)
            .await
            .map_err(store_err(format!(
                "cannot start a multipart upload of {path}"
            )))?;
        let size = self.options.multipart_part_size;
        let pieces: Vec<_> = (0..len)
            .step_by(size)
            .map(|start| {
                upload.put_part(PutPayload::from(
                    bytes.slice(start..(start + size).min(len)),
                ))
            })
            .collect();
        let sent = futures::stream::iter(pieces)
            .buffer_unordered(self.options.upload_concurrency)
            .try_collect::<Vec<()>>()
            .await;
        let done = match sent {
            Ok(_) => upload.complete().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(%path, error = %abort, "cannot abort a failed multipart upload");
            }
            return Err(store_err(format!("multipart upload of {path} failed"))(e));
        }
        self.counters
            .multipart_uploads
            .fetch_add(1, Ordering::Relaxed);
        Ok(len as u64)
    }

    async fn commit_open(
        &self,
        s: &mut OpenStream,
        checkpoint: &Checkpoint,
    ) -> Result<PruneOutcome> {
        if checkpoint.sync_id != s.sync_id {
            return Err(Error::Sink {
                sink: NAME,
                message: format!(
                    "checkpoint of sync {} committed to `{}`/`{}`, prepared for sync {}",
                    checkpoint.sync_id, checkpoint.tenant, checkpoint.stream, s.sync_id
                ),
                source: None,
            });
        }
        let tenant = checkpoint.tenant.as_str();
        let stream = checkpoint.stream.as_str();
        // Still this run's stream? (Fails when another run took over an
        // expired lease.)
        if let Some(lease) = &mut s.lease {
            lease
                .renew(self.raw.store.as_ref(), self.options.lease_ttl)
                .await?;
        }
        let started_at = *s.started_at.get_or_insert(checkpoint.started_at);
        let date = started_at.date_naive();
        // A complete full refresh has at least one file per layer (empty if
        // the stream is), so its snapshot always names the columns.
        let empty_snapshot = checkpoint.complete && s.full_refresh && s.parts == 0;
        if s.raw.records() > 0 || empty_snapshot {
            let part = s.parts;
            let raw = std::mem::replace(&mut s.raw, RawPart::new(self.options.gzip_level));
            let clean = s.clean.take();
            if self.clean.is_some() {
                s.clean = Some(CleanPart::new(s.plan.clone()));
            }
            let records = raw.records();
            // Compression and Parquet encoding are CPU work: off the async threads.
            let (raw_bytes, clean_file) = tokio::task::spawn_blocking(move || {
                Ok::<_, Error>((raw.finish()?, clean.map(CleanPart::finish).transpose()?))
            })
            .await
            .map_err(|e| Error::sink(NAME, "encoding a part panicked or was cancelled", e))??;
            let raw_path = self
                .raw
                .part_path(tenant, stream, date, s.sync_id, part, RAW_EXT);
            let raw_upload = self.upload(&self.raw, &raw_path, Bytes::from(raw_bytes));
            let clean_upload = async {
                match (&self.clean, clean_file) {
                    (Some(layer), Some(file)) => {
                        let path =
                            layer.part_path(tenant, stream, date, s.sync_id, part, CLEAN_EXT);
                        let nulled = file.nulled_total();
                        if nulled > 0 {
                            tracing::warn!(
                                tenant,
                                stream,
                                part,
                                nulled,
                                fields = ?file.nulled,
                                "values that do not fit their column's type were written as null to the clean layer (the raw layer keeps them)"
                            );
                        }
                        let rows = file.rows;
                        let size = self.upload(layer, &path, Bytes::from(file.bytes)).await?;
                        Ok::<_, Error>(Some((path, rows, size, nulled)))
                    }
                    _ => Ok(None),
                }
            };
            let (raw_size, clean) = futures::try_join!(raw_upload, clean_upload)?;
            s.raw_files.push(ManifestFile {
                path: raw_path.to_string(),
                part,
                records,
                bytes: raw_size,
                nulled_values: 0,
            });
            let c = &self.counters;
            if let Some((path, rows, size, nulled)) = clean {
                s.clean_files.push(ManifestFile {
                    path: path.to_string(),
                    part,
                    records: rows,
                    bytes: size,
                    nulled_values: nulled,
                });
                c.clean_bytes.fetch_add(size, Ordering::Relaxed);
                c.nulled_values.fetch_add(nulled, Ordering::Relaxed);
            }
            c.parts.fetch_add(1, Ordering::Relaxed);
            c.records.fetch_add(records, Ordering::Relaxed);
            c.raw_bytes.fetch_add(raw_size, Ordering::Relaxed);
            s.parts += 1;
            tracing::debug!(tenant, stream, part, records, raw_size, "part written");
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            tenant: tenant.to_owned(),
            stream: stream.to_owned(),
            sync_id: s.sync_id,
            started_at,
            updated_at: Utc::now(),
            complete: checkpoint.complete,
            full_refresh: s.full_refresh,
            records: s.raw_files.iter().map(|f| f.records).sum(),
            raw: s.raw_files.clone(),
            clean: s.clean_files.clone(),
            raw_store: self.raw.store.to_string(),
            clean_store: self.clean.as_ref().map(|c| c.store.to_string()),
            schema: s.schema.clone(),
        };
        self.put_manifest(&manifest).await?;
        put_json(
            &self.raw,
            &self.raw.state_path(tenant, stream),
            &StateFile {
                format: FORMAT_VERSION,
                checkpoint: checkpoint.clone(),
                parts: s.parts,
                columns: s.columns.clone(),
            },
        )
        .await?;
        if checkpoint.complete {
            return self.publish(&manifest, &checkpoint.prune).await;
        }
        Ok(PruneOutcome::NotApplicable)
    }

    /// Takes the open stream of a tenant out (if it is `only`, when given)
    /// and releases its lease.
    async fn close_open(
        &self,
        tenant: &str,
        stream: &str,
        only: Option<&Arc<tokio::sync::Mutex<OpenStream>>>,
    ) {
        let open = {
            let mut map = self.open_map();
            let key = (tenant.to_owned(), stream.to_owned());
            match map.get(&key) {
                Some(o) if only.is_none_or(|only| Arc::ptr_eq(o, only)) => map.remove(&key),
                _ => None,
            }
        };
        if let Some(open) = open {
            let lease = open.lock().await.lease.take();
            if let Some(lease) = lease {
                lease.release(self.raw.store.as_ref()).await;
            }
        }
    }
}

/// `{prefix}/{tenant}/{stream}/_quarantine`: one JSON Lines object per
/// [`Sink::quarantine`] call (`{time}-{uuid}.jsonl`), each line a
/// [`QuarantinedRecord`]. Nothing else lists this folder.
fn quarantine_dir(layer: &Layer, tenant: &str, stream: &str) -> Path {
    layer.stream_dir(tenant, stream).child("_quarantine")
}

impl ObjectStoreSink {
    async fn put_quarantined(&self, records: &[QuarantinedRecord]) -> Result<()> {
        let mut groups: Vec<((&str, &str), String)> = Vec::new();
        for r in records {
            let mut line = r.to_json().to_string();
            line.push('\n');
            let key = (r.tenant.as_str(), r.stream.as_str());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, text)) => text.push_str(&line),
                None => groups.push((key, line)),
            }
        }
        for ((tenant, stream), text) in groups {
            // Time first, so a listing in name order is oldest first.
            let name = format!(
                "{}-{}.jsonl",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%6fZ"),
                Uuid::new_v4()
            );
            let path = quarantine_dir(&self.raw, tenant, stream).child(name.as_str());
            self.raw
                .store
                .put(&path, PutPayload::from(text.into_bytes()))
                .await
                .map_err(store_err(format!("cannot put {path}")))?;
        }
        Ok(())
    }

    async fn list_quarantined(&self, tenant: &str, stream: &str) -> Result<Vec<QuarantinedRecord>> {
        let dir = quarantine_dir(&self.raw, tenant, stream);
        let mut paths: Vec<Path> = self
            .raw
            .store
            .list(Some(&dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| Error::sink(NAME, format!("cannot list {dir}"), e))?;
        paths.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let mut out = Vec::new();
        for path in paths {
            let Some(bytes) = get_bytes(&self.raw, &path).await? else {
                continue;
            };
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| Error::state(format!("unreadable line in {path}"), e))?;
                out.push(QuarantinedRecord::from_json(&v)?);
            }
        }
        Ok(out)
    }
}

async fn get_bytes(layer: &Layer, path: &Path) -> Result<Option<Bytes>> {
    let got = match layer.store.get(path).await {
        Ok(got) => got,
        Err(::object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(format!("cannot read {path}"))(e)),
    };
    got.bytes()
        .await
        .map(Some)
        .map_err(store_err(format!("cannot read {path}")))
}

async fn get_json<T: DeserializeOwned>(layer: &Layer, path: &Path) -> Result<Option<T>> {
    let Some(bytes) = get_bytes(layer, path).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::state(format!("unreadable {path}"), e))
}

async fn put_json<T: Serialize>(layer: &Layer, path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::sink(NAME, format!("cannot encode {path}"), e))?;
    layer
        .store
        .put(path, PutPayload::from(bytes))
        .await
        .map_err(store_err(format!("cannot put {path}")))?;
    Ok(())
}

#[async_trait]
impl Sink for ObjectStoreSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, ctx: &StreamContext) -> Result<()> {
        let lease = Lease::take(
            &self.raw,
            &ctx.tenant,
            &ctx.schema.name,
            ctx.sync_id,
            self.options.lease_ttl,
        )
        .await?;
        match self.prepare_leased(ctx).await {
            Ok(mut open) => {
                open.lease = Some(lease);
                self.open_map().insert(
                    (ctx.tenant.clone(), ctx.schema.name.clone()),
                    Arc::new(tokio::sync::Mutex::new(open)),
                );
                Ok(())
            }
            Err(e) => {
                lease.release(self.raw.store.as_ref()).await;
                Err(e)
            }
        }
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        self.write_batch(batch).await
    }

    async fn commit(&self, checkpoint: &Checkpoint) -> Result<PruneOutcome> {
        let open = self.get_open(&checkpoint.tenant, &checkpoint.stream, "commit")?;
        let result = {
            let mut s = open.lock().await;
            self.commit_open(&mut s, checkpoint).await
        };
        if result.is_err() || checkpoint.complete {
            // A failed commit may have consumed the part: the stream must be
            // prepared again (and resumes from the last committed
            // checkpoint). The run is over either way: its lease goes.
            self.close_open(&checkpoint.tenant, &checkpoint.stream, Some(&open))
                .await;
        }
        result
    }

    async fn abandon(&self, tenant: &str, stream: &str) -> Result<()> {
        self.close_open(tenant, stream, None).await;
        Ok(())
    }

    /// Puts the records, as JSON Lines, in a new object under
    /// `{prefix}/{tenant}/{stream}/_quarantine/` of the raw layer.
    async fn quarantine(&self, records: &[QuarantinedRecord]) -> Result<()> {
        self.put_quarantined(records).await
    }

    async fn quarantined(&self, tenant: &str, stream: &str) -> Result<Vec<QuarantinedRecord>> {
        self.list_quarantined(tenant, stream).await
    }

    async fn load_state(&self, tenant: &str, stream: &str) -> Result<Option<Checkpoint>> {
        Ok(self.read_state(tenant, stream).await?.map(|s| s.checkpoint))
    }

    /// The keys of the live records of the stream's [`Snapshot`]: its raw
    /// files read in order, the last version of each key kept. Reads the
    /// whole snapshot (the keys stay in memory); empty before the first sync
    /// completes.
    async fn live_ids(&self, tenant: &str, stream: &StreamSchema) -> Result<Vec<String>> {
        let Some(snapshot) = self.snapshot(tenant, &stream.name).await? else {
            return Ok(Vec::new());
        };
        let mut last: HashMap<String, bool> = HashMap::new();
        for file in snapshot.raw_files() {
            for row in self.read_raw(file).await? {
                let serde_json::Value::Object(row) = row else {
                    return Err(Error::State {
                        message: format!("{}: a line is not a JSON object", file.path),
                        source: None,
                    });
                };
                let deleted = row.get("_deleted") == Some(&serde_json::Value::Bool(true));
                last.insert(crate::sink::row_key(&row, &stream.primary_key), deleted);
            }
        }
        Ok(last
            .into_iter()
            .filter_map(|(k, deleted)| (!deleted).then_some(k))
            .collect())
    }
}

impl ObjectStoreSink {
    /// [`Sink::prepare`] once the run holds its lease: the open stream.
    async fn prepare_leased(&self, ctx: &StreamContext) -> Result<OpenStream> {
        let tenant = ctx.tenant.as_str();
        let stream = ctx.schema.name.as_str();
        let state = self.read_state(tenant, stream).await?;
        let columns = merge_columns(
            state.as_ref().map_or(&[][..], |s| &s.columns[..]),
            &ctx.schema,
        );
        let plan = Arc::new(ColumnPlan::new(stream, &columns));
        let mut open = OpenStream {
            sync_id: ctx.sync_id,
            full_refresh: ctx.full_refresh,
            schema: ctx.schema.clone(),
            columns,
            started_at: None,
            parts: 0,
            raw_files: Vec::new(),
            clean_files: Vec::new(),
            raw: RawPart::new(self.options.gzip_level),
            clean: self.clean.as_ref().map(|_| CleanPart::new(plan.clone())),
            plan,
            lease: None,
        };
        if let Some(state) = state {
            let cp = &state.checkpoint;
            if cp.complete {
                if cp.sync_id == ctx.sync_id {
                    return Err(Error::Config(format!(
                        "sync {} of `{tenant}`/`{stream}` is already complete: a new sync needs a new id",
                        ctx.sync_id
                    )));
                }
                self.publish_if_stale(tenant, stream, cp.sync_id, &cp.prune)
                    .await?;
            } else if cp.sync_id == ctx.sync_id {
                // This sync was interrupted. Resuming, it continues after its
                // committed parts; restarted without a checkpoint, from part 0.
                let resuming = ctx.resume.as_ref().is_some_and(|r| r.sync_id == cp.sync_id);
                let committed = if resuming { state.parts } else { 0 };
                open.parts = committed;
                open.started_at = Some(cp.started_at);
                if let Some(mut m) = self.manifest(tenant, stream, cp.sync_id).await? {
                    let listed = m.raw.len();
                    m.raw.retain(|f| f.part < committed);
                    m.clean.retain(|f| f.part < committed);
                    if m.raw.len() != committed as usize {
                        return Err(Error::State {
                            message: format!(
                                "the manifest of sync {} of `{tenant}`/`{stream}` lists {} of the {committed} committed parts: data was lost outside headwater",
                                cp.sync_id,
                                m.raw.len()
                            ),
                            source: None,
                        });
                    }
                    if listed != m.raw.len() {
                        // Written before a commit that did not finish.
                        m.records = m.raw.iter().map(|f| f.records).sum();
                        m.updated_at = Utc::now();
                        self.put_manifest(&m).await?;
                    }
                    open.raw_files = m.raw;
                    open.clean_files = m.clean;
                } else if committed > 0 {
                    return Err(Error::State {
                        message: format!(
                            "the manifest of sync {} of `{tenant}`/`{stream}` is missing but {committed} parts were committed: data was lost outside headwater",
                            cp.sync_id
                        ),
                        source: None,
                    });
                }
                self.delete_tail(
                    tenant,
                    stream,
                    cp.started_at.date_naive(),
                    cp.sync_id,
                    committed,
                )
                .await?;
            }
        }
        Ok(open)
    }

    async fn write_batch(&self, batch: Batch) -> Result<()> {
        let open = self.get_open(&batch.tenant, &batch.stream, "write")?;
        let mut s = open.lock().await;
        if batch.sync_id != s.sync_id {
            return Err(Error::Sink {
                sink: NAME,
                message: format!(
                    "batch of sync {} written to `{}`/`{}`, prepared for sync {}",
                    batch.sync_id, batch.tenant, batch.stream, s.sync_id
                ),
                source: None,
            });
        }
        s.raw.push(&batch)?;
        if let Some(clean) = &mut s.clean {
            clean.push(&batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_config_reads_its_variables() {
        let vars: HashMap<&str, &str> = HashMap::from([
            ("S3_ENDPOINT", ""),
            ("S3_BUCKET", "hubspot-users-datauncleaned"),
            ("S3_CLEAN_BUCKET", " hubspot-users-datacleaned-transformed "),
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "shh"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let c = S3Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).expect("config");
        assert_eq!(c.endpoint, None);
        assert_eq!(c.bucket, "hubspot-users-datauncleaned");
        assert_eq!(
            c.clean_bucket.as_deref(),
            Some("hubspot-users-datacleaned-transformed")
        );
        assert_eq!(c.access_key_id.as_deref(), Some("AKIA"));
        assert_eq!(
            c.secret_access_key.as_ref().map(|s| s.expose_secret()),
            Some("shh")
        );
        assert!(!format!("{c:?}").contains("shh"), "secret printed");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert!(S3Config::from_lookup(|_| None).is_err());
    }

    #[test]
    fn the_builder_checks_its_settings() {
        assert!(ObjectStoreSink::builder().build().is_err());
        let mem: Arc<dyn ObjectStore> = Arc::new(::object_store::memory::InMemory::new());
        assert!(ObjectStoreSink::builder()
            .store(mem.clone())
            .gzip_level(10)
            .build()
            .is_err());
        assert!(ObjectStoreSink::builder()
            .store(mem.clone())
            .prefix("a/../b")
            .build()
            .is_err());
        let sink = ObjectStoreSink::builder()
            .store(mem)
            .clean_layer(false)
            .build()
            .expect("sink");
        assert!(sink.clean_store().is_none());
    }
}
