//! The embedded default sink: JSON Lines files per tenant and stream.
//!
//! Layout under the root directory:
//! ```text
//! {root}/{tenant}/{stream}.jsonl          the last complete sync of the stream
//! {root}/{tenant}/{stream}.jsonl.partial  the sync in progress
//! {root}/{tenant}/{stream}.state.json     the committed checkpoint and the
//!                                          length of .partial it covers
//! {root}/{tenant}/{stream}.quarantine.jsonl  records that could not be
//!                                          decoded (see [`QuarantinedRecord`])
//! ```
//! Each line is one record: `_tenant_id`, `_sync_id`, `_extracted_at`,
//! `_deleted`, then the record's fields. Query with `jq`, DuckDB
//! (`read_json_auto('data/acme/contacts.jsonl')`) or anything that reads
//! JSON Lines.
//!
//! How it stays exact across crashes: records are appended to `.partial`;
//! a commit flushes and `fsync`s it, then atomically replaces the state file
//! with the checkpoint and the file length. A resumed sync truncates
//! `.partial` to that length (dropping records written after the last
//! commit, which the source reads again from the checkpoint). When the
//! stream completes, the state is committed as complete and `.partial` is
//! renamed over `.jsonl`; an interrupted rename is finished by the next
//! `prepare`. A finished snapshot is only ever replaced by a newer complete
//! one, so readers never see a half-written stream.
//!
//! An incremental sync writes its changes to `.partial` the same way; when
//! it completes, the snapshot is rewritten without the records the changes
//! replace, followed by the changes. That rewrite costs a pass over the
//! snapshot per incremental run: fine for the embedded default, and the
//! warehouse sinks upsert instead.
//!
//! A full refresh deletes the records it did not read (the new snapshot is
//! its lines alone) only as far as [`Checkpoint::prune`] allows; otherwise
//! it is published like an incremental run, merged into the snapshot.
//!
//! One writer per tenant and stream: `prepare` takes an OS advisory lock
//! (`flock`) on `{root}/{tenant}/{stream}.lock`, held by the run until its
//! final commit or [`Sink::abandon`], and released by the OS when the
//! process dies; a second run meanwhile (in this process or another) fails
//! with [`Error::Busy`]. The lock file holds the holder's process id and
//! run id, for that error.
//!
//! One line per record, always: a run can deliver a record twice (HubSpot
//! lists a record archived during the sync among the live ones and then
//! among the archived). The sink notices it (it keeps an 8-byte hash of each
//! id the run wrote and sorts them when the run completes) and then, like
//! after a resume, publishes each record's last line only; a run without
//! repeats is published by a rename.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

use crate::fsutil::{sync_dir, write_atomically};
use crate::schema::StreamSchema;
use crate::sink::{Batch, Checkpoint, Prune, PruneOutcome, QuarantinedRecord, Sink, StreamContext};
use crate::{Error, Result};

const NAME: &str = "files";

/// JSON Lines files under a directory. See the module docs.
#[derive(Debug)]
pub struct FilesSink {
    root: PathBuf,
    open: Mutex<HashMap<(String, String), OpenStream>>,
}

#[derive(Debug)]
struct OpenStream {
    writer: BufWriter<File>,
    len: u64,
    paths: Paths,
    full_refresh: bool,
    key: Vec<String>,
    /// A hash of each record id this run wrote on this instance (8 bytes a
    /// record), sorted when the run completes to see whether a record came
    /// twice.
    ids: Vec<u64>,
    hasher: std::hash::RandomState,
    /// The run was resumed: what it wrote before is not in `ids`, so it may
    /// hold a record twice.
    resumed: bool,
    /// The locked lock file: the run's lease, released when dropped.
    _lease: File,
}

#[derive(Debug, Clone)]
struct Paths {
    dir: PathBuf,
    data: PathBuf,
    partial: PathBuf,
    state: PathBuf,
    lock: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    checkpoint: Checkpoint,
    partial_len: u64,
    /// The stream's key fields (for [`Sink::live_ids`]).
    #[serde(default)]
    key: Vec<String>,
}

/// A file-system-safe name: ASCII letters, digits, `-`, `_` and `.` kept,
/// everything else percent-encoded; never `.` or `..`.
pub fn safe_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::sink(NAME, what, e)
}

impl FilesSink {
    /// A sink writing under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(io_err(format!("cannot create {}", root.display())))?;
        Ok(FilesSink {
            root,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding the last complete sync of a tenant's stream.
    pub fn data_path(&self, tenant: &str, stream: &str) -> PathBuf {
        self.paths(tenant, stream).data
    }

    fn paths(&self, tenant: &str, stream: &str) -> Paths {
        let dir = self.root.join(safe_name(tenant));
        let s = safe_name(stream);
        Paths {
            data: dir.join(format!("{s}.jsonl")),
            partial: dir.join(format!("{s}.jsonl.partial")),
            state: dir.join(format!("{s}.state.json")),
            lock: dir.join(format!("{s}.lock")),
            dir,
        }
    }

    /// The quarantine of a tenant's stream: one [`QuarantinedRecord`] per
    /// line, appended and synced before the page's checkpoint is committed.
    pub fn quarantine_path(&self, tenant: &str, stream: &str) -> PathBuf {
        self.root
            .join(safe_name(tenant))
            .join(format!("{}.quarantine.jsonl", safe_name(stream)))
    }

    fn read_state(paths: &Paths) -> Result<Option<StateFile>> {
        match std::fs::read(&paths.state) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::state(
                    format!("unreadable state file {}", paths.state.display()),
                    e,
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::state(
                format!("cannot read {}", paths.state.display()),
                e,
            )),
        }
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), OpenStream>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes the run's lease: an exclusive `flock` on the stream's lock file,
/// which then names its holder. Fails with [`Error::Busy`] while another
/// open file description (another run, here or in another process) holds it.
fn take_lease(paths: &Paths, ctx: &StreamContext) -> Result<File> {
    use std::io::Read;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&paths.lock)
        .map_err(io_err(format!("cannot open {}", paths.lock.display())))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::Busy {
                sink: NAME,
                tenant: ctx.tenant.clone(),
                stream: ctx.schema.name.clone(),
                holder: if holder.is_empty() {
                    "another run holds its lock file".to_owned()
                } else {
                    holder.chars().take(200).collect()
                },
            });
        }
        Err(fs4::TryLockError::Error(e)) => {
            return Err(Error::sink(
                NAME,
                format!("cannot lock {}", paths.lock.display()),
                e,
            ))
        }
    }
    let holder = format!("process {} run {}", std::process::id(), ctx.sync_id);
    file.set_len(0)
        .map_err(io_err("cannot write the lock file"))?;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(io_err("cannot write the lock file"))?;
    file.write_all(holder.as_bytes())
        .map_err(io_err("cannot write the lock file"))?;
    Ok(file)
}

/// Finishes a completed stream. A full refresh without repeated records:
/// `.partial` becomes `.jsonl`. Otherwise the new `.jsonl` is, for an
/// incremental run, the old one less the records whose key the changes
/// hold, then the run's lines, each key's last line only; written to a
/// temporary file and renamed over the old one, so a crash leaves the old
/// snapshot and `.partial`, and the next `prepare` does it again (the same
/// result, however often it runs). A full refresh whose deletions `prune`
/// withholds is merged like an incremental run.
fn publish(
    paths: &Paths,
    full_refresh: bool,
    repeats: bool,
    key: &[String],
    prune: &Prune,
) -> Result<PruneOutcome> {
    let unlimited = match prune {
        Prune::All => true,
        Prune::UpTo(share) => *share >= 1.0,
        _ => false,
    };
    let has_old = paths.data.exists();
    if full_refresh && !repeats && (unlimited || !has_old) {
        std::fs::rename(&paths.partial, &paths.data)
            .map_err(io_err(format!("cannot publish {}", paths.data.display())))?;
        sync_dir(&paths.dir).map_err(io_err("cannot sync directory"))?;
        return Ok(PruneOutcome::Pruned {
            rows: (!has_old).then_some(0),
        });
    }
    use std::io::{BufRead, BufReader};
    let key_of = |line: &str| -> Result<String> {
        let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| Error::state(format!("unreadable line in {}", paths.dir.display()), e))?;
        Ok(key
            .iter()
            .map(|k| row.get(k).map(|v| v.to_string()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\u{1f}"))
    };
    // Each key of the run, with the number of its last line; the run's
    // lines are parsed once, here.
    let changes = File::open(&paths.partial).map_err(io_err("cannot open changes"))?;
    let mut changed = HashMap::new();
    let mut lines = 0usize;
    for line in BufReader::new(&changes).lines() {
        changed.insert(
            key_of(&line.map_err(io_err("cannot read changes"))?)?,
            lines,
        );
        lines += 1;
    }
    // A full refresh counts the snapshot's records it did not read (the
    // rows it would delete) before it may leave them out.
    let mut outcome = PruneOutcome::NotApplicable;
    let mut merge_old = !full_refresh;
    if full_refresh {
        let mut stale = 0u64;
        if !unlimited {
            match File::open(&paths.data) {
                Ok(old) => {
                    for line in BufReader::new(old).lines() {
                        let line = line.map_err(io_err("cannot read snapshot"))?;
                        if !changed.contains_key(&key_of(&line)?) {
                            stale += 1;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::sink(NAME, "cannot open snapshot", e)),
            }
        }
        match prune.check(stale, stale + changed.len() as u64) {
            Ok(()) => {
                outcome = PruneOutcome::Pruned {
                    rows: (!unlimited).then_some(stale),
                };
                if !repeats {
                    std::fs::rename(&paths.partial, &paths.data)
                        .map_err(io_err(format!("cannot publish {}", paths.data.display())))?;
                    sync_dir(&paths.dir).map_err(io_err("cannot sync directory"))?;
                    return Ok(outcome);
                }
            }
            Err(withheld) => {
                outcome = withheld;
                merge_old = true;
            }
        }
    }
    // Without repeats every line is its key's last: copy them as they are.
    let last_lines: Option<Vec<bool>> = repeats.then(|| {
        let mut keep = vec![false; lines];
        for &n in changed.values() {
            keep[n] = true;
        }
        keep
    });
    let mut out =
        tempfile::NamedTempFile::new_in(&paths.dir).map_err(io_err("cannot create merge file"))?;
    {
        let mut w = BufWriter::with_capacity(256 * 1024, out.as_file_mut());
        match File::open(&paths.data) {
            Ok(_) if !merge_old => {}
            Ok(old) => {
                for line in BufReader::new(old).lines() {
                    let line = line.map_err(io_err("cannot read snapshot"))?;
                    if !changed.contains_key(&key_of(&line)?) {
                        w.write_all(line.as_bytes())
                            .map_err(io_err("cannot write merge file"))?;
                        w.write_all(b"\n")
                            .map_err(io_err("cannot write merge file"))?;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::sink(NAME, "cannot open snapshot", e)),
        }
        let mut changes = File::open(&paths.partial).map_err(io_err("cannot open changes"))?;
        match &last_lines {
            None => {
                std::io::copy(&mut changes, &mut w).map_err(io_err("cannot write merge file"))?;
            }
            Some(keep) => {
                for (line, &keep) in BufReader::new(changes).lines().zip(keep) {
                    let line = line.map_err(io_err("cannot read changes"))?;
                    if keep {
                        w.write_all(line.as_bytes())
                            .map_err(io_err("cannot write merge file"))?;
                        w.write_all(b"\n")
                            .map_err(io_err("cannot write merge file"))?;
                    }
                }
            }
        }
        w.flush().map_err(io_err("cannot write merge file"))?;
    }
    out.as_file()
        .sync_all()
        .map_err(io_err("cannot sync merge file"))?;
    out.persist(&paths.data)
        .map_err(|e| Error::sink(NAME, "cannot replace snapshot", e.error))?;
    std::fs::remove_file(&paths.partial).map_err(io_err("cannot remove changes file"))?;
    sync_dir(&paths.dir).map_err(io_err("cannot sync directory"))?;
    Ok(outcome)
}

/// True when `.partial` is the completed run's of `state`, left unpublished
/// by a crash between its final commit and the publish: it has the
/// committed length and (unless empty) that run's lines. A `.partial` of a
/// later run that stopped before its first commit is not: it is dropped,
/// never published over the snapshot.
fn unpublished(paths: &Paths, state: &StateFile) -> Result<bool> {
    use std::io::{BufRead, BufReader};
    let file = match File::open(&paths.partial) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::sink(NAME, "cannot open partial file", e)),
    };
    let len = file
        .metadata()
        .map_err(io_err("cannot stat partial file"))?
        .len();
    if len != state.partial_len {
        return Ok(false);
    }
    if len == 0 {
        return Ok(true);
    }
    let mut first = String::new();
    BufReader::new(file)
        .read_line(&mut first)
        .map_err(io_err("cannot read partial file"))?;
    let sync_id = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&first)
        .ok()
        .and_then(|row| {
            row.get("_sync_id")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        });
    Ok(sync_id.as_deref() == Some(state.checkpoint.sync_id.to_string().as_str()))
}

fn write_state(paths: &Paths, state: &StateFile) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(state).map_err(|e| Error::state("cannot encode state", e))?;
    write_atomically(&paths.dir, &paths.state, &bytes)
        .map_err(io_err(format!("cannot write {}", paths.state.display())))
}

const META_KEYS: [&str; 4] = ["_tenant_id", "_sync_id", "_extracted_at", "_deleted"];

#[async_trait]
impl Sink for FilesSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&self, ctx: &StreamContext) -> Result<()> {
        let paths = self.paths(&ctx.tenant, &ctx.schema.name);
        std::fs::create_dir_all(&paths.dir)
            .map_err(io_err(format!("cannot create {}", paths.dir.display())))?;
        let lease = take_lease(&paths, ctx)?;
        // A writer left open by a failed run of this stream on this instance
        // holds uncommitted records in its buffer: discard them unwritten
        // (dropping the writer would flush them after the truncation below).
        if let Some(old) = self
            .open_map()
            .remove(&(ctx.tenant.clone(), ctx.schema.name.clone()))
        {
            let _ = old.writer.into_parts();
        }
        let state = Self::read_state(&paths)?;
        if let Some(s) = &state {
            if s.checkpoint.complete && unpublished(&paths, s)? {
                // The last run committed completion but stopped before
                // publishing; whether it repeated a record is not known.
                publish(
                    &paths,
                    s.checkpoint.full_refresh,
                    true,
                    &ctx.schema.primary_key,
                    &s.checkpoint.prune,
                )?;
            }
        }
        let resumable = match (&ctx.resume, &state) {
            (Some(cp), Some(s)) => !s.checkpoint.complete && s.checkpoint.sync_id == cp.sync_id,
            _ => false,
        };
        let (file, len) = if resumable {
            let committed = state.as_ref().map(|s| s.partial_len).unwrap_or(0);
            let file = OpenOptions::new()
                .write(true)
                .open(&paths.partial)
                .map_err(io_err(format!("cannot open {}", paths.partial.display())))?;
            let actual = file
                .metadata()
                .map_err(io_err("cannot stat partial file"))?
                .len();
            if actual < committed {
                return Err(Error::State {
                    message: format!(
                        "{} holds {actual} bytes but {committed} were committed: data was lost outside headwater",
                        paths.partial.display()
                    ),
                    source: None,
                });
            }
            // Drop what was written after the last commit: it is read again.
            file.set_len(committed)
                .map_err(io_err("cannot truncate partial file"))?;
            (file, committed)
        } else {
            let file = File::create(&paths.partial)
                .map_err(io_err(format!("cannot create {}", paths.partial.display())))?;
            (file, 0)
        };
        let mut file = file;
        file.seek(std::io::SeekFrom::End(0))
            .map_err(io_err("cannot seek partial file"))?;
        self.open_map().insert(
            (ctx.tenant.clone(), ctx.schema.name.clone()),
            OpenStream {
                writer: BufWriter::with_capacity(256 * 1024, file),
                len,
                paths,
                full_refresh: ctx.full_refresh,
                key: ctx.schema.primary_key.clone(),
                ids: Vec::new(),
                hasher: std::hash::RandomState::new(),
                resumed: len > 0,
                _lease: lease,
            },
        );
        Ok(())
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        let mut map = self.open_map();
        let open = map
            .get_mut(&(batch.tenant.clone(), batch.stream.clone()))
            .ok_or_else(|| Error::Sink {
                sink: NAME,
                message: format!("write to `{}` before prepare", batch.stream),
                source: None,
            })?;
        // The metadata is the same for the whole batch: encode it once.
        let mut prefix = Vec::with_capacity(160);
        prefix.extend_from_slice(b"{\"_tenant_id\":");
        serde_json::to_writer(&mut prefix, &batch.tenant)
            .map_err(|e| Error::sink(NAME, "encode", e))?;
        prefix.extend_from_slice(
            format!(
                ",\"_sync_id\":\"{}\",\"_extracted_at\":\"{}\",\"_deleted\":",
                batch.sync_id,
                batch
                    .extracted_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            )
            .as_bytes(),
        );
        let mut line = Vec::with_capacity(4096);
        for record in &batch.records {
            open.ids.push(open.hasher.hash_one(&record.id));
            line.clear();
            line.extend_from_slice(&prefix);
            line.extend_from_slice(if record.deleted { b"true" } else { b"false" });
            for (k, v) in &record.data {
                if k.starts_with('_') && META_KEYS.contains(&k.as_str()) {
                    continue;
                }
                line.push(b',');
                serde_json::to_writer(&mut line, k).map_err(|e| Error::sink(NAME, "encode", e))?;
                line.push(b':');
                serde_json::to_writer(&mut line, v).map_err(|e| Error::sink(NAME, "encode", e))?;
            }
            line.extend_from_slice(b"}\n");
            open.writer.write_all(&line).map_err(io_err(format!(
                "cannot write {}",
                open.paths.partial.display()
            )))?;
            open.len += line.len() as u64;
        }
        Ok(())
    }

    async fn commit(&self, checkpoint: &Checkpoint) -> Result<PruneOutcome> {
        let key = (checkpoint.tenant.clone(), checkpoint.stream.clone());
        let mut map = self.open_map();
        let open = map.get_mut(&key).ok_or_else(|| Error::Sink {
            sink: NAME,
            message: format!("commit of `{}` before prepare", checkpoint.stream),
            source: None,
        })?;
        open.writer
            .flush()
            .map_err(io_err("cannot flush partial file"))?;
        open.writer
            .get_ref()
            .sync_data()
            .map_err(io_err("cannot sync partial file"))?;
        write_state(
            &open.paths,
            &StateFile {
                checkpoint: checkpoint.clone(),
                partial_len: open.len,
                key: open.key.clone(),
            },
        )?;
        if checkpoint.complete {
            if let Some(open) = map.remove(&key) {
                drop(open.writer);
                let mut ids = open.ids;
                ids.sort_unstable();
                let repeats = open.resumed || ids.windows(2).any(|w| w[0] == w[1]);
                drop(ids);
                // The lease (in `open`) is released once published.
                return publish(
                    &open.paths,
                    open.full_refresh,
                    repeats,
                    &open.key,
                    &checkpoint.prune,
                );
            }
        }
        Ok(PruneOutcome::NotApplicable)
    }

    async fn load_state(&self, tenant: &str, stream: &str) -> Result<Option<Checkpoint>> {
        Ok(Self::read_state(&self.paths(tenant, stream))?.map(|s| s.checkpoint))
    }

    async fn abandon(&self, tenant: &str, stream: &str) -> Result<()> {
        // Discard the buffered, uncommitted records unwritten; the next
        // `prepare` truncates `.partial` to the committed length.
        if let Some(old) = self
            .open_map()
            .remove(&(tenant.to_owned(), stream.to_owned()))
        {
            let _ = old.writer.into_parts();
        }
        Ok(())
    }

    /// Appends the records to `{tenant}/{stream}.quarantine.jsonl` and
    /// syncs it.
    async fn quarantine(&self, records: &[QuarantinedRecord]) -> Result<()> {
        let mut by_file: Vec<(PathBuf, String)> = Vec::new();
        for r in records {
            let path = self.quarantine_path(&r.tenant, &r.stream);
            let mut line = r.to_json().to_string();
            line.push('\n');
            match by_file.iter_mut().find(|(p, _)| *p == path) {
                Some((_, text)) => text.push_str(&line),
                None => by_file.push((path, line)),
            }
        }
        for (path, text) in by_file {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(io_err(format!("cannot create {}", dir.display())))?;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(format!("cannot open {}", path.display())))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(io_err(format!("cannot write {}", path.display())))?;
        }
        Ok(())
    }

    /// The lines of `{tenant}/{stream}.quarantine.jsonl`, oldest first.
    async fn quarantined(&self, tenant: &str, stream: &str) -> Result<Vec<QuarantinedRecord>> {
        let path = self.quarantine_path(tenant, stream);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).map_err(|e| {
                    Error::state(format!("unreadable line in {}", path.display()), e)
                })?;
                QuarantinedRecord::from_json(&v)
            })
            .collect()
    }

    /// The keys of the live records of the last complete snapshot
    /// (`{stream}.jsonl`); a composite key's fields are joined by `:`.
    async fn live_ids(&self, tenant: &str, stream: &StreamSchema) -> Result<Vec<String>> {
        use std::io::{BufRead, BufReader};
        let stream = stream.name.as_str();
        let paths = self.paths(tenant, stream);
        let key = Self::read_state(&paths)?
            .map(|s| s.key)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Error::Config(format!(
                    "files sink: no completed sync of `{stream}` for tenant `{tenant}` with a known key"
                ))
            })?;
        let file = match File::open(&paths.data) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::sink(NAME, "cannot open snapshot", e)),
        };
        let mut ids = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io_err("cannot read snapshot"))?;
            let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
                .map_err(|e| {
                    Error::state(format!("unreadable line in {}", paths.data.display()), e)
                })?;
            if row.get("_deleted") == Some(&serde_json::Value::Bool(true)) {
                continue;
            }
            ids.push(crate::sink::row_key(&row, &key));
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe() {
        assert_eq!(safe_name("acme-1_x.y"), "acme-1_x.y");
        assert_eq!(safe_name("../etc"), "%2E.%2Fetc");
        assert_eq!(safe_name(".."), "%2E.");
        assert_eq!(safe_name("a b/c"), "a%20b%2Fc");
        assert_eq!(safe_name(""), "%00");
        assert_eq!(safe_name("é"), "%C3%A9");
    }
}
