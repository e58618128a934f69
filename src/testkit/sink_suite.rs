//! A conformance suite for [`Sink`]s, run by each sink's tests against its
//! real server.
//!
//! The suite drives a sink exactly as the sync engine does — `load_state`,
//! `prepare` (resuming an unfinished run), `write` per page, `commit` every
//! few pages and at the end — and reads the results back through a
//! [`SinkInspector`] that the sink's tests provide. Every check uses its own
//! tenant and stream names (with a random suffix), so checks never see each
//! other's rows and can share one database, bucket or directory.
//!
//! ```no_run
//! # use headwater::testkit::sink_suite::{run_all, Capabilities, SinkInspector};
//! # async fn demo(sink: &dyn headwater::sink::Sink, inspector: &dyn SinkInspector) -> headwater::Result<()> {
//! run_all(sink, inspector, &Capabilities::default().typed_columns(true)).await?;
//! # Ok(()) }
//! ```
//!
//! Each check is also a public function, and [`run_all`] runs them all,
//! returning one error that names every check that failed and why. Failures
//! are returned as [`Error::Sink`] whose message reads
//! "conformance check `NAME` failed: …"; an error from the sink itself is kept as the
//! source.
//!
//! The suite reuses one sink instance throughout, also across a simulated
//! crash: a sink must recover in `prepare`, since a long-lived process re-runs
//! a failed stream on the same instance. A run that stops without its final
//! commit is abandoned first ([`Sink::abandon`], as the engine does when a
//! run fails), which releases its lease: a run still holding the lease of
//! its stream keeps every other run of that stream out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::schema::{Field, FieldType, StreamSchema};
use crate::sink::{Batch, Checkpoint, Prune, PruneOutcome, QuarantinedRecord, Sink, StreamContext};
use crate::source::{Record, Rejected, StreamState};
use crate::{Error, Result};

/// The metadata keys every row read back carries.
pub const META_KEYS: [&str; 4] = ["_tenant_id", "_sync_id", "_extracted_at", "_deleted"];

/// Reads back what a sink stored. Each sink's tests implement it with the
/// sink's own means (SQL, files, object listings).
#[async_trait]
pub trait SinkInspector: Send + Sync {
    /// The current rows of a tenant's stream: one per key (the latest
    /// version), as JSON objects holding the record's fields as the sink
    /// received them plus `_tenant_id`, `_sync_id` (a UUID string),
    /// `_extracted_at` (RFC 3339) and `_deleted` (a boolean). A stream the
    /// sink never saw has no rows.
    async fn rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>>;

    /// The field names the sink holds for the stream (its columns, by the
    /// fields' original names; metadata columns may be left out).
    async fn columns(&self, tenant: &str, stream: &str) -> Result<Vec<String>>;

    /// The current rows as the sink's typed columns hold them: field name to
    /// the column's value as JSON (`null` where the value was blank or did
    /// not fit). Only called when [`Capabilities::typed_columns`] is set; the
    /// default returns [`SinkInspector::rows`].
    async fn typed_rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
        self.rows(tenant, stream).await
    }
}

/// What a sink does by design, where correct sinks differ. Checks hold every
/// sink to the behaviour its flags declare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The sink keeps a typed column per field (a warehouse table): columns
    /// exist from the schema before any row arrives and are never dropped,
    /// and blank values (`""`) and values that do not fit the field's type
    /// are NULL there (the row still holds them as received). Read through
    /// [`SinkInspector::typed_rows`].
    pub typed_columns: bool,
    /// Readers see a run's rows only once it completes (the files sink
    /// publishes a snapshot); until then they see what the last completed
    /// run left. Without it, rows are visible at each commit (a warehouse
    /// table upserted per commit). Either way a complete full refresh leaves
    /// exactly its rows, and a complete incremental run its changes merged
    /// by key into what was there.
    pub publishes_on_complete: bool,
    /// The sink lists the keys of its live rows ([`Sink::live_ids`], for
    /// [`crate::sync::verify`]). Without it, the check `live_ids` only
    /// expects a clear error.
    pub lists_live_ids: bool,
}

impl Capabilities {
    /// Sets [`Capabilities::typed_columns`].
    pub fn typed_columns(mut self, yes: bool) -> Self {
        self.typed_columns = yes;
        self
    }

    /// Sets [`Capabilities::publishes_on_complete`].
    pub fn publishes_on_complete(mut self, yes: bool) -> Self {
        self.publishes_on_complete = yes;
        self
    }

    /// Sets [`Capabilities::lists_live_ids`].
    pub fn lists_live_ids(mut self, yes: bool) -> Self {
        self.lists_live_ids = yes;
        self
    }
}

/// The names of the checks, in the order [`run_all`] runs them.
pub const CHECKS: [&str; 15] = [
    "create_from_schema",
    "rewrite_changes_nothing",
    "updates_replace_rows",
    "new_field_adds_column",
    "hostile_names",
    "deleted_records",
    "live_ids",
    "state_round_trips",
    "tenants_are_isolated",
    "crash_then_resume",
    "bulk_100k_rows",
    "single_writer",
    "prune_withheld",
    "prune_share_limit",
    "quarantine_round_trips",
];

/// Runs every check, in the order of [`CHECKS`], and fails with one error
/// naming each check that failed.
pub async fn run_all(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    run(sink, inspect, caps, &CHECKS).await
}

/// Runs the named checks (see [`CHECKS`]) in order, and fails with one error
/// naming each check that failed. An unknown name is a failure too.
pub async fn run(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
    checks: &[&str],
) -> Result<()> {
    let mut failures = Vec::new();
    for name in checks {
        let result = match *name {
            "create_from_schema" => create_from_schema(sink, inspect, caps).await,
            "rewrite_changes_nothing" => rewrite_changes_nothing(sink, inspect, caps).await,
            "updates_replace_rows" => updates_replace_rows(sink, inspect, caps).await,
            "new_field_adds_column" => new_field_adds_column(sink, inspect, caps).await,
            "hostile_names" => hostile_names(sink, inspect, caps).await,
            "deleted_records" => deleted_records(sink, inspect, caps).await,
            "live_ids" => live_ids(sink, inspect, caps).await,
            "state_round_trips" => state_round_trips(sink, inspect, caps).await,
            "tenants_are_isolated" => tenants_are_isolated(sink, inspect, caps).await,
            "crash_then_resume" => crash_then_resume(sink, inspect, caps).await,
            "bulk_100k_rows" => bulk_100k_rows(sink, inspect, caps).await,
            "single_writer" => single_writer(sink, inspect, caps).await,
            "prune_withheld" => prune_withheld(sink, inspect, caps).await,
            "prune_share_limit" => prune_share_limit(sink, inspect, caps).await,
            "quarantine_round_trips" => quarantine_round_trips(sink, inspect, caps).await,
            other => Err(Error::Config(format!(
                "no conformance check is called `{other}` (see CHECKS)"
            ))),
        };
        if let Err(e) = result {
            failures.push(error_chain(&e));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(Error::Sink {
        sink: sink.name(),
        message: format!(
            "{} of {} conformance checks failed:\n- {}",
            failures.len(),
            checks.len(),
            failures.join("\n- ")
        ),
        source: None,
    })
}

fn error_chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

// ---------------------------------------------------------------------------
// Driving the sink like the engine.

struct Ctx<'a> {
    sink: &'a dyn Sink,
    inspect: &'a dyn SinkInspector,
    caps: &'a Capabilities,
    check: &'static str,
}

/// One sync run in progress.
struct Run {
    tenant: String,
    schema: StreamSchema,
    full_refresh: bool,
    sync_id: Uuid,
    started_at: DateTime<Utc>,
    records: u64,
    pages: u64,
    resumed: Option<Checkpoint>,
}

/// Now, at the microsecond precision every sink keeps.
fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A name no other check or run uses: `prefix` and 8 random hex digits.
pub fn unique(prefix: &str) -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..8])
}

impl<'a> Ctx<'a> {
    fn new(
        sink: &'a dyn Sink,
        inspect: &'a dyn SinkInspector,
        caps: &'a Capabilities,
        check: &'static str,
    ) -> Self {
        Ctx {
            sink,
            inspect,
            caps,
            check,
        }
    }

    fn fail(&self, message: impl std::fmt::Display) -> Error {
        Error::Sink {
            sink: self.sink.name(),
            message: format!("conformance check `{}` failed: {message}", self.check),
            source: None,
        }
    }

    /// Runs a sink or inspector call, naming it in the error.
    async fn call<T>(
        &self,
        what: impl std::fmt::Display,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        f.await.map_err(|e| Error::Sink {
            sink: self.sink.name(),
            message: format!(
                "conformance check `{}` failed: {what} returned an error: {}",
                self.check,
                error_chain(&e)
            ),
            source: Some(Box::new(e)),
        })
    }

    /// `load_state`, then `prepare`, as the engine does: an unfinished run is
    /// resumed as it was (full or incremental); otherwise a new run starts,
    /// a full refresh or an incremental one as `full_refresh` says.
    async fn start(&self, tenant: &str, schema: &StreamSchema, full_refresh: bool) -> Result<Run> {
        // Whatever ran before on this instance is over (a simulated crash):
        // abandoned, as the engine does.
        self.call(
            format!("abandon of `{}` for `{tenant}`", schema.name),
            self.sink.abandon(tenant, &schema.name),
        )
        .await?;
        let previous = self
            .call(
                format!("load_state({tenant:?}, {:?})", schema.name),
                self.sink.load_state(tenant, &schema.name),
            )
            .await?;
        let resume = previous.filter(|cp| !cp.complete);
        let (sync_id, started_at, records, full_refresh) = match &resume {
            Some(cp) => (cp.sync_id, cp.started_at, cp.records, cp.full_refresh),
            None => (Uuid::new_v4(), now(), 0, full_refresh),
        };
        let ctx = StreamContext::new(tenant, schema.clone(), sync_id, resume.clone())
            .with_full_refresh(full_refresh);
        self.call(
            format!("prepare of `{}` for `{tenant}`", schema.name),
            self.sink.prepare(&ctx),
        )
        .await?;
        Ok(Run {
            tenant: tenant.to_owned(),
            schema: schema.clone(),
            full_refresh,
            sync_id,
            started_at,
            records,
            pages: resume
                .as_ref()
                .and_then(|cp| cp.state.0.get("page"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            resumed: resume,
        })
    }

    async fn write(&self, run: &mut Run, records: Vec<Record>) -> Result<DateTime<Utc>> {
        let at = now();
        let n = records.len() as u64;
        let batch = Batch::new(
            run.tenant.clone(),
            run.schema.name.clone(),
            run.sync_id,
            at,
            records,
        );
        self.call(
            format!("write of page {} of `{}`", run.pages + 1, run.schema.name),
            self.sink.write(batch),
        )
        .await?;
        run.records += n;
        run.pages += 1;
        Ok(at)
    }

    async fn commit(&self, run: &Run, complete: bool) -> Result<Checkpoint> {
        self.commit_state(run, json!({ "page": run.pages }), complete)
            .await
    }

    async fn commit_state(&self, run: &Run, state: Value, complete: bool) -> Result<Checkpoint> {
        let cp = checkpoint(run, StreamState(state), complete);
        self.commit_checkpoint(run, cp).await
    }

    /// Commits `cp` of `run`; returns it.
    async fn commit_checkpoint(&self, run: &Run, cp: Checkpoint) -> Result<Checkpoint> {
        self.commit_outcome(run, &cp).await?;
        Ok(cp)
    }

    /// Commits `cp` of `run`; returns what the sink did about pruning.
    async fn commit_outcome(&self, run: &Run, cp: &Checkpoint) -> Result<PruneOutcome> {
        let complete = cp.complete;
        self.call(
            format!(
                "commit of `{}` after page {} (complete: {complete})",
                run.schema.name, run.pages
            ),
            self.sink.commit(cp),
        )
        .await
    }

    /// A whole full-refresh run of `pages`, committing every `every` pages
    /// and at the end; the model learns each write.
    async fn sync(
        &self,
        model: &mut Model,
        tenant: &str,
        schema: &StreamSchema,
        pages: Vec<Vec<Record>>,
        every: usize,
    ) -> Result<Checkpoint> {
        self.sync_mode(model, tenant, schema, pages, every, true)
            .await
    }

    /// [`Ctx::sync`] of an incremental run: its records are changes.
    async fn sync_changes(
        &self,
        model: &mut Model,
        tenant: &str,
        schema: &StreamSchema,
        pages: Vec<Vec<Record>>,
    ) -> Result<Checkpoint> {
        self.sync_mode(model, tenant, schema, pages, 10, false)
            .await
    }

    async fn sync_mode(
        &self,
        model: &mut Model,
        tenant: &str,
        schema: &StreamSchema,
        pages: Vec<Vec<Record>>,
        every: usize,
        full_refresh: bool,
    ) -> Result<Checkpoint> {
        let mut run = self.start(tenant, schema, full_refresh).await?;
        if run.resumed.is_some() {
            return Err(self.fail(format!(
                "stream {:?} of tenant {tenant:?} has an unfinished run left by an earlier step",
                schema.name
            )));
        }
        model.begin(full_refresh);
        let mut since = 0;
        for page in pages {
            let at = self.write(&mut run, page.clone()).await?;
            model.write(&page, run.sync_id, at);
            since += 1;
            if since >= every.max(1) {
                since = 0;
                self.commit(&run, false).await?;
            }
        }
        let cp = self.commit(&run, true).await?;
        model.complete();
        Ok(cp)
    }

    async fn rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
        self.call(
            format!("the inspector's rows({tenant:?}, {stream:?})"),
            self.inspect.rows(tenant, stream),
        )
        .await
    }

    async fn typed_rows(&self, tenant: &str, stream: &str) -> Result<Vec<Map<String, Value>>> {
        self.call(
            format!("the inspector's typed_rows({tenant:?}, {stream:?})"),
            self.inspect.typed_rows(tenant, stream),
        )
        .await
    }

    async fn columns(&self, tenant: &str, stream: &str) -> Result<HashSet<String>> {
        Ok(self
            .call(
                format!("the inspector's columns({tenant:?}, {stream:?})"),
                self.inspect.columns(tenant, stream),
            )
            .await?
            .into_iter()
            .collect())
    }

    /// Fails unless the rows of `tenant`'s `stream` are exactly `model`'s.
    async fn expect_rows(
        &self,
        tenant: &str,
        stream: &str,
        model: &Model,
        when: &str,
    ) -> Result<()> {
        let rows = self.rows(tenant, stream).await?;
        let problems = model.compare(tenant, &rows);
        if problems.is_empty() {
            return Ok(());
        }
        Err(self.fail(format!(
            "{when}: the rows of stream {stream:?} for tenant {tenant:?} differ from what was written ({} rows read, {} expected):\n    {}",
            rows.len(),
            model.visible().count(),
            problems.join("\n    ")
        )))
    }

    /// Fails unless the sink holds a column for each of `fields`.
    async fn expect_columns(
        &self,
        tenant: &str,
        stream: &str,
        fields: &[&str],
        when: &str,
    ) -> Result<()> {
        let cols = self.columns(tenant, stream).await?;
        let missing: Vec<&&str> = fields.iter().filter(|f| !cols.contains(**f)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut have: Vec<&String> = cols.iter().collect();
        have.sort();
        Err(self.fail(format!(
            "{when}: stream {stream:?} has no column for the fields {missing:?} (it has {have:?})"
        )))
    }

    /// With typed columns: fails unless each (id, field) typed value is
    /// `expected` (`None`: NULL; `Some(v)`: the value `v` as its type).
    async fn expect_typed(
        &self,
        tenant: &str,
        schema: &StreamSchema,
        expected: &[(&str, &str, Option<Value>)],
        when: &str,
    ) -> Result<()> {
        if !self.caps.typed_columns {
            return Ok(());
        }
        let rows = self.typed_rows(tenant, &schema.name).await?;
        let by_id: HashMap<String, &Map<String, Value>> = rows
            .iter()
            .filter_map(|r| r.get(ID).map(|id| (id_string(id), r)))
            .collect();
        let mut problems = Vec::new();
        for (id, field, want) in expected {
            let Some(row) = by_id.get(*id) else {
                problems.push(format!("no typed row with id {id:?}"));
                continue;
            };
            let ty = schema
                .field(field)
                .map(|f| f.field_type)
                .unwrap_or(FieldType::Json);
            let got = row.get(*field).unwrap_or(&Value::Null);
            let ok = match want {
                None => got.is_null(),
                Some(w) => typed_equal(ty, w, got),
            };
            if !ok {
                problems.push(format!(
                    "id {id:?}, field {field:?} ({ty:?}): expected {}, the typed column holds {got}",
                    want.as_ref().map_or("NULL".to_owned(), Value::to_string)
                ));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(self.fail(format!(
            "{when}: typed columns of stream {:?} for tenant {tenant:?}:\n    {}",
            schema.name,
            problems.join("\n    ")
        )))
    }

    async fn expect_state(
        &self,
        tenant: &str,
        stream: &str,
        want: Option<&Checkpoint>,
        when: &str,
    ) -> Result<()> {
        let got = self
            .call(
                format!("load_state({tenant:?}, {stream:?})"),
                self.sink.load_state(tenant, stream),
            )
            .await?;
        if got.as_ref() == want {
            return Ok(());
        }
        Err(self.fail(format!(
            "{when}: load_state({tenant:?}, {stream:?}) returned {got:?}, expected what commit stored: {want:?}"
        )))
    }
}

fn checkpoint(run: &Run, state: StreamState, complete: bool) -> Checkpoint {
    Checkpoint::new(
        run.tenant.clone(),
        run.schema.name.clone(),
        run.sync_id,
        state,
        complete,
        run.records,
        run.started_at,
        run.full_refresh,
    )
}

// ---------------------------------------------------------------------------
// The expected contents.

const ID: &str = "id";

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One row as it should be: its data and deleted flag, and every write that
/// put exactly this version (so a rewrite may carry either run's metadata).
#[derive(Debug, Clone)]
struct Expected {
    data: Map<String, Value>,
    deleted: bool,
    writes: Vec<(Uuid, DateTime<Utc>)>,
}

/// What one tenant's stream should hold.
#[derive(Debug, Default)]
struct Model {
    /// Rows of the last completed run.
    committed: HashMap<String, Expected>,
    /// What the running run will leave when it completes.
    pending: Option<HashMap<String, Expected>>,
}

impl Model {
    /// A run starts: a full refresh from nothing, an incremental run from
    /// what is there.
    fn begin(&mut self, full_refresh: bool) {
        self.pending = Some(if full_refresh {
            HashMap::new()
        } else {
            self.committed.clone()
        });
    }

    fn write(&mut self, records: &[Record], sync_id: Uuid, at: DateTime<Utc>) {
        let target = match &mut self.pending {
            Some(p) => p,
            None => &mut self.committed,
        };
        for r in records {
            let same = target
                .get(&r.id)
                .is_some_and(|e| e.data == r.data && e.deleted == r.deleted);
            match target.get_mut(&r.id) {
                Some(e) if same => e.writes.push((sync_id, at)),
                _ => {
                    target.insert(
                        r.id.clone(),
                        Expected {
                            data: r.data.clone(),
                            deleted: r.deleted,
                            writes: vec![(sync_id, at)],
                        },
                    );
                }
            }
        }
    }

    fn complete(&mut self) {
        if let Some(p) = self.pending.take() {
            self.committed = p;
        }
    }

    fn visible(&self) -> impl Iterator<Item = (&String, &Expected)> {
        self.committed.iter()
    }

    /// Differences between `rows` and the model, at most a dozen.
    fn compare(&self, tenant: &str, rows: &[Map<String, Value>]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for row in rows {
            let Some(id) = row.get(ID).map(id_string) else {
                problems.push(format!("a row without an `{ID}` field: {}", short(row)));
                continue;
            };
            if !seen.insert(id.clone()) {
                problems.push(format!("id {id:?} appears more than once"));
                continue;
            }
            let Some(want) = self.committed.get(&id) else {
                problems.push(format!("unexpected row {id:?}: {}", short(row)));
                continue;
            };
            if row.get("_tenant_id") != Some(&Value::String(tenant.to_owned())) {
                problems.push(format!(
                    "id {id:?}: _tenant_id is {:?}, expected {tenant:?}",
                    row.get("_tenant_id")
                ));
            }
            if row.get("_deleted") != Some(&Value::Bool(want.deleted)) {
                problems.push(format!(
                    "id {id:?}: _deleted is {:?}, expected {}",
                    row.get("_deleted"),
                    want.deleted
                ));
            }
            let sync = row
                .get("_sync_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            let at = row
                .get("_extracted_at")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            match (sync, at) {
                (Some(s), Some(a)) if want.writes.contains(&(s, a)) => {}
                _ => problems.push(format!(
                    "id {id:?}: _sync_id {:?} and _extracted_at {:?} are not those of a write of this version (one of {:?})",
                    row.get("_sync_id"),
                    row.get("_extracted_at"),
                    want.writes
                )),
            }
            let data: Map<String, Value> = row
                .iter()
                .filter(|(k, _)| !META_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if data != want.data {
                let keys: BTreeSet<&String> = data.keys().chain(want.data.keys()).collect();
                for k in keys {
                    if data.get(k) != want.data.get(k) {
                        problems.push(format!(
                            "id {id:?}, field {k:?}: expected {}, found {}",
                            want.data
                                .get(k)
                                .map_or("(absent)".to_owned(), Value::to_string),
                            data.get(k).map_or("(absent)".to_owned(), Value::to_string),
                        ));
                    }
                }
            }
            if problems.len() > 12 {
                break;
            }
        }
        let mut missing: Vec<&String> = self
            .committed
            .keys()
            .filter(|k| !seen.contains(*k))
            .collect();
        if !missing.is_empty() {
            missing.sort();
            let n = missing.len();
            missing.truncate(10);
            problems.push(format!("{n} rows missing, e.g. {missing:?}"));
        }
        problems.truncate(13);
        problems
    }
}

fn short(row: &Map<String, Value>) -> String {
    let s = Value::Object(row.clone()).to_string();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

/// True when a typed column's value (as JSON) is `want` as `ty`.
fn typed_equal(ty: FieldType, want: &Value, got: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let time = |v: &Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    match ty {
        FieldType::Integer | FieldType::Number => {
            matches!((num(want), num(got)), (Some(a), Some(b)) if a == b)
        }
        FieldType::Timestamp => matches!((time(want), time(got)), (Some(a), Some(b)) if a == b),
        FieldType::String => match (want, got) {
            (Value::String(a), Value::String(b)) => a == b,
            (a, Value::String(b)) => &a.to_string() == b,
            _ => false,
        },
        _ => want == got,
    }
}

// ---------------------------------------------------------------------------
// Test data.

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A stream with a field of every type, keyed by `id`, with a cursor.
fn typed_schema(name: &str) -> StreamSchema {
    StreamSchema::new(
        name,
        ID,
        vec![
            Field::new(ID, FieldType::String),
            Field::new("name", FieldType::String),
            Field::new("count", FieldType::Integer),
            Field::new("amount", FieldType::Number),
            Field::new("active", FieldType::Boolean),
            Field::new("day", FieldType::Date),
            Field::new("updated", FieldType::Timestamp),
            Field::new("tags", FieldType::Json),
        ],
    )
    .with_cursor_field("updated")
}

const TYPED_FIELDS: [&str; 8] = [
    ID, "name", "count", "amount", "active", "day", "updated", "tags",
];

/// Record `n`, version `v`, with a value for every field of [`typed_schema`],
/// typed as a source delivers them.
fn typed_record(n: u64, v: u64) -> Record {
    Record::new(
        n.to_string(),
        obj(json!({
            "id": n.to_string(),
            "name": format!("record {n} version {v}"),
            "count": n * 10 + v,
            "amount": n as f64 + 0.25 + v as f64,
            "active": (n + v) % 2 == 0,
            "day": format!("2024-03-{:02}", 1 + (n + v) % 28),
            "updated": format!("2024-03-01T10:{:02}:{:02}.123Z", v % 60, n % 60),
            "tags": ["crm", {"version": v, "nested": [n, null, true]}],
        })),
    )
}

fn typed_expectations(records: &[Record]) -> Vec<(String, String, Option<Value>)> {
    let mut out = Vec::new();
    for r in records {
        for f in TYPED_FIELDS {
            out.push((r.id.clone(), f.to_owned(), r.data.get(f).cloned()));
        }
    }
    out
}

fn as_refs(v: &[(String, String, Option<Value>)]) -> Vec<(&str, &str, Option<Value>)> {
    v.iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// The checks.

/// A stream is created from its schema: the rows written are read back
/// exactly, with their metadata, and the sink holds a column per field (with
/// typed columns: before any row arrives, and typed values read back as
/// written).
pub async fn create_from_schema(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "create_from_schema");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("create"));
    c.expect_state(&tenant, &schema.name, None, "before the first sync")
        .await?;
    let records: Vec<Record> = (1..=3).map(|n| typed_record(n, 1)).collect();
    let mut model = Model::default();
    c.sync(&mut model, &tenant, &schema, vec![records.clone()], 10)
        .await?;
    c.expect_rows(&tenant, &schema.name, &model, "after one sync")
        .await?;
    c.expect_columns(&tenant, &schema.name, &TYPED_FIELDS, "after one sync")
        .await?;
    c.expect_typed(
        &tenant,
        &schema,
        &as_refs(&typed_expectations(&records)),
        "after one sync",
    )
    .await?;

    // An empty sync: no rows, and (typed) the columns all the same.
    let empty = typed_schema(&unique("create_empty"));
    c.sync(&mut Model::default(), &tenant, &empty, vec![], 10)
        .await?;
    let rows = c.rows(&tenant, &empty.name).await?;
    if !rows.is_empty() {
        return Err(c.fail(format!("an empty sync left {} rows", rows.len())));
    }
    if caps.typed_columns {
        c.expect_columns(&tenant, &empty.name, &TYPED_FIELDS, "after an empty sync")
            .await?;
    }
    Ok(())
}

/// Writing the same batch again — twice within a run, twice before one
/// commit, then in a new full and a new incremental run — leaves the
/// contents as they were: one row per key, same data.
pub async fn rewrite_changes_nothing(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "rewrite_changes_nothing");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("rewrite"));
    let batch: Vec<Record> = (1..=20).map(|n| typed_record(n, 1)).collect();
    let mut model = Model::default();
    let twice = vec![batch.clone(), batch.clone()];
    c.sync(&mut model, &tenant, &schema, twice.clone(), 1)
        .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after writing a batch twice in one run",
    )
    .await?;
    c.sync(&mut model, &tenant, &schema, twice, 10).await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after writing it twice before one commit",
    )
    .await?;
    c.sync(&mut model, &tenant, &schema, vec![batch.clone()], 10)
        .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after writing it again in a new run",
    )
    .await?;
    c.sync_changes(&mut model, &tenant, &schema, vec![batch.clone()])
        .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after writing it again as changes",
    )
    .await?;
    c.expect_typed(
        &tenant,
        &schema,
        &as_refs(&typed_expectations(&batch)),
        "after the rewrites",
    )
    .await
}

/// A later version of a record replaces the earlier one — within a run and
/// in a later incremental run — including fields that became null or absent;
/// a complete full refresh leaves exactly its own rows.
pub async fn updates_replace_rows(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "updates_replace_rows");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("updates"));
    let v1: Vec<Record> = (1..=5).map(|n| typed_record(n, 1)).collect();
    let mut two = typed_record(2, 2);
    two.data.insert("amount".into(), Value::Null);
    let mut four = typed_record(4, 2);
    four.data.remove("name");
    let mut model = Model::default();
    c.sync(&mut model, &tenant, &schema, vec![v1, vec![two, four]], 10)
        .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after a run that updates rows of an earlier page",
    )
    .await?;
    c.expect_typed(
        &tenant,
        &schema,
        &[
            ("2", "amount", None),
            ("2", "count", Some(json!(22))),
            ("4", "name", None),
            ("4", "count", Some(json!(42))),
            ("1", "count", Some(json!(11))),
        ],
        "after updates within a run",
    )
    .await?;
    // An incremental run: one update and one new record, merged by key.
    c.sync_changes(
        &mut model,
        &tenant,
        &schema,
        vec![vec![typed_record(3, 3), typed_record(6, 1)]],
    )
    .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after an incremental run (changes merged by key)",
    )
    .await?;
    c.expect_typed(
        &tenant,
        &schema,
        &[
            ("3", "count", Some(json!(33))),
            ("6", "count", Some(json!(61))),
        ],
        "after an incremental run",
    )
    .await?;
    // A full refresh with fewer records: they replace everything.
    c.sync(
        &mut model,
        &tenant,
        &schema,
        vec![(1..=3).map(|n| typed_record(n, 4)).collect()],
        10,
    )
    .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after a full refresh with fewer records (exactly its rows remain)",
    )
    .await
}

/// A field added to the schema gets a column and its values are kept; a
/// field whose type changes does not fail the sync and its values are kept;
/// with typed columns nothing is ever dropped.
pub async fn new_field_adds_column(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "new_field_adds_column");
    let tenant = unique("tenant");
    let name = unique("evolve");
    let s1 = StreamSchema::new(
        name.clone(),
        ID,
        vec![
            Field::new(ID, FieldType::String),
            Field::new("name", FieldType::String),
            Field::new("count", FieldType::Integer),
        ],
    );
    let rec = |n: u64, extra: Value| {
        let mut data = obj(json!({"id": n.to_string(), "name": format!("n{n}"), "count": n}));
        data.extend(obj(extra));
        Record::new(n.to_string(), data)
    };
    let mut model = Model::default();
    let first: Vec<Record> = (1..=3).map(|n| rec(n, json!({}))).collect();
    c.sync(&mut model, &tenant, &s1, vec![first], 10).await?;
    let mut s2 = s1.clone();
    s2.fields.push(Field::new("added_text", FieldType::String));
    s2.fields
        .push(Field::new("Added Number", FieldType::Number));
    let second = vec![
        rec(1, json!({"added_text": "one", "Added Number": 1.5})),
        rec(4, json!({"added_text": "four", "Added Number": 4})),
        rec(5, json!({"added_text": null, "Added Number": null})),
    ];
    c.sync_changes(&mut model, &tenant, &s2, vec![second])
        .await?;
    let all = [ID, "name", "count", "added_text", "Added Number"];
    c.expect_columns(&tenant, &name, &all, "after adding two fields")
        .await?;
    c.expect_rows(&tenant, &name, &model, "after adding two fields")
        .await?;
    c.expect_typed(
        &tenant,
        &s2,
        &[
            ("1", "added_text", Some(json!("one"))),
            ("1", "Added Number", Some(json!(1.5))),
            ("4", "Added Number", Some(json!(4))),
            ("5", "added_text", None),
            ("2", "added_text", None),
            ("2", "count", Some(json!(2))),
        ],
        "after adding two fields",
    )
    .await?;

    // `count` becomes a string and `added_text` leaves the schema.
    let mut s3 = s2.clone();
    s3.fields.retain(|f| f.name != "added_text");
    for f in &mut s3.fields {
        if f.name == "count" {
            f.field_type = FieldType::String;
        }
    }
    let third = vec![
        rec(7, json!({"count": "seven", "Added Number": 7})),
        rec(8, json!({"count": "8"})),
    ];
    c.sync_changes(&mut model, &tenant, &s3, vec![third])
        .await?;
    c.expect_rows(&tenant, &name, &model, "after a field changed its type")
        .await?;
    if caps.typed_columns {
        c.expect_columns(
            &tenant,
            &name,
            &all,
            "after a field changed type and another left the schema (nothing is dropped)",
        )
        .await?;
        c.expect_typed(
            &tenant,
            &s3,
            &[
                ("7", "Added Number", Some(json!(7))),
                ("1", "added_text", Some(json!("one"))),
            ],
            "after a type change",
        )
        .await?;
    }
    Ok(())
}

/// Odd names everywhere: SQL keywords, quotes, semicolons, unicode, 200
/// characters (twice, differing only at the end), names differing only in
/// case, in the stream and tenant names too; blank and unfit values in typed
/// fields are NULL in typed columns and kept in the rows.
pub async fn hostile_names(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "hostile_names");
    let tenant = unique("t'; drop table x; -- Ünï");
    let stream = unique("order \"x\"; drop table deals; -- 名前");
    let long_a = format!("{}_a", "p".repeat(198));
    let long_b = format!("{}_b", "p".repeat(198));
    let long_u = "é".repeat(200);
    let text_names: Vec<String> = [
        "select",
        "order",
        "from",
        "table",
        "x\"; drop table deals; --",
        "semi;colon;",
        "it's",
        "naïve ünïcödé 名前 🚀",
        "Email",
        "email",
        "EMAIL",
        "with space",
        "dot.ted",
        "dash-ed",
        "$dollar",
        "1digit",
        "back\\slash",
        "%percent",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long_a, long_b, long_u])
    .collect();
    let mut fields = vec![Field::new(ID, FieldType::String)];
    fields.extend(
        text_names
            .iter()
            .map(|n| Field::new(n.clone(), FieldType::String)),
    );
    let typed = [
        ("amount", FieldType::Number),
        ("user", FieldType::Integer),
        ("when", FieldType::Timestamp),
        ("day", FieldType::Date),
        ("flag", FieldType::Boolean),
        ("group", FieldType::Json),
    ];
    fields.extend(typed.iter().map(|(n, t)| Field::new(*n, *t)));
    let schema = StreamSchema::new(stream.clone(), ID, fields);

    let record = |n: u64| {
        let mut data = Map::new();
        data.insert(ID.into(), json!(n.to_string()));
        for (i, name) in text_names.iter().enumerate() {
            data.insert(name.clone(), json!(format!("{n}:{i}:{name}")));
        }
        Record::new(n.to_string(), data)
    };
    let mut blank = record(1);
    for (n, _) in typed {
        blank.data.insert(n.into(), json!(""));
    }
    let mut unfit = record(2);
    unfit.data.extend(obj(json!({
        "amount": "n/a", "user": "12abc", "when": "yesterday", "day": "2024-02-30", "flag": "maybe",
    })));
    let mut fine = record(3);
    fine.data.extend(obj(json!({
        "amount": 12.5, "user": 42, "when": "2024-03-01T10:00:00Z", "day": "2024-03-01", "flag": true,
        "group": {"select": "x\"; --"},
    })));
    let records = vec![blank, unfit, fine];
    let mut model = Model::default();
    c.sync(&mut model, &tenant, &schema, vec![records.clone()], 10)
        .await?;
    c.expect_rows(
        &tenant,
        &stream,
        &model,
        "after a sync with odd names and values",
    )
    .await?;
    let all: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
    c.expect_columns(&tenant, &stream, &all, "after a sync with odd names")
        .await?;

    let mut typed_expect: Vec<(String, String, Option<Value>)> = Vec::new();
    for r in &records {
        for name in &text_names {
            typed_expect.push((r.id.clone(), name.clone(), r.data.get(name).cloned()));
        }
    }
    for (n, _) in typed {
        typed_expect.push(("1".into(), n.into(), None));
        typed_expect.push(("2".into(), n.into(), None));
        typed_expect.push(("3".into(), n.into(), records[2].data.get(n).cloned()));
    }
    c.expect_typed(
        &tenant,
        &schema,
        &as_refs(&typed_expect),
        "odd names and blank or unfit values",
    )
    .await
}

/// Records the provider reports deleted are kept, marked `_deleted = true`;
/// a record deleted later, or restored, changes its mark.
pub async fn deleted_records(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "deleted_records");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("deleted"));
    let live: Vec<Record> = (1..=4).map(|n| typed_record(n, 1)).collect();
    let archived = vec![
        typed_record(2, 1).deleted(true),
        typed_record(5, 1).deleted(true),
    ];
    let mut model = Model::default();
    c.sync(&mut model, &tenant, &schema, vec![live, archived], 1)
        .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after live records and archived ones",
    )
    .await?;
    // Changes: one restored, one newly deleted.
    let changes = vec![typed_record(2, 1), typed_record(3, 1).deleted(true)];
    c.sync_changes(&mut model, &tenant, &schema, vec![changes])
        .await?;
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after a record was restored and another deleted",
    )
    .await
}

/// [`Sink::live_ids`] lists the keys of a tenant's live rows: every key
/// once, deleted rows left out, other tenants' rows left out, a composite
/// key's values joined by `:` in key order. A sink that cannot list them
/// says so with an error rather than an empty list.
pub async fn live_ids(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "live_ids");
    let tenant = unique("tenant");
    let other = unique("tenant");
    let schema = typed_schema(&unique("live"));
    let live: Vec<Record> = (1..=6).map(|n| typed_record(n, 1)).collect();
    let gone = vec![
        typed_record(2, 2).deleted(true),
        typed_record(7, 1).deleted(true),
    ];
    let mut model = Model::default();
    c.sync(&mut model, &tenant, &schema, vec![live, gone], 2)
        .await?;
    let mut elsewhere = Model::default();
    c.sync(
        &mut elsewhere,
        &other,
        &schema,
        vec![vec![typed_record(40, 1)]],
        1,
    )
    .await?;
    let listed = sink.live_ids(&tenant, &schema).await;
    if !caps.lists_live_ids {
        return match listed {
            Err(_) => Ok(()),
            Ok(ids) => Err(c.fail(format!(
                "the sink does not declare lists_live_ids but listed {} ids",
                ids.len()
            ))),
        };
    }
    let listed = c.call("live_ids", async { listed }).await?;
    let want: BTreeSet<String> = ["1", "3", "4", "5", "6"].map(String::from).into();
    let got: BTreeSet<String> = listed.iter().cloned().collect();
    if got.len() != listed.len() {
        return Err(c.fail(format!("a key listed twice: {listed:?}")));
    }
    if got != want {
        return Err(c.fail(format!("live ids {got:?}, expected {want:?}")));
    }

    // A composite key, as Mailchimp's members (`list_id`, `id`).
    let mut pair = StreamSchema::new(
        unique("pairs"),
        "list_id",
        vec![
            Field::new("list_id", FieldType::String),
            Field::new("id", FieldType::String),
            Field::new("name", FieldType::String),
        ],
    );
    pair.primary_key = vec!["list_id".into(), "id".into()];
    let member = |list: &str, id: &str| {
        Record::new(
            format!("{list}:{id}"),
            obj(json!({"list_id": list, "id": id, "name": format!("{id} in {list}")})),
        )
    };
    let records = vec![
        member("a", "x"),
        member("a", "y"),
        member("b", "x"),
        member("b", "y").deleted(true),
    ];
    let mut model = Model::default();
    c.sync(&mut model, &tenant, &pair, vec![records], 1).await?;
    let got: BTreeSet<String> = c
        .call("live_ids (composite key)", sink.live_ids(&tenant, &pair))
        .await?
        .into_iter()
        .collect();
    let want: BTreeSet<String> = ["a:x", "a:y", "b:x"].map(String::from).into();
    if got != want {
        return Err(c.fail(format!(
            "composite keys listed as {got:?}, expected {want:?}"
        )));
    }
    Ok(())
}

/// `load_state` returns exactly what `commit` stored (state JSON, complete
/// and full-refresh flags, counts, times), per tenant and stream, and keeps
/// it while a new run prepares.
pub async fn state_round_trips(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "state_round_trips");
    let tenant = unique("tenant");
    let other = unique("tenant");
    let schema = typed_schema(&unique("state"));
    c.expect_state(&tenant, &schema.name, None, "before any commit")
        .await?;
    let mut run = c.start(&tenant, &schema, true).await?;
    c.write(&mut run, vec![typed_record(1, 1)]).await?;
    let state = json!({
        "phase": "archived",
        "after": "x\"; drop table deals; --",
        "big": 12_345_678_901_234_567u64,
        "negative": -42,
        "half": 0.5,
        "unicode": "名前 🚀 naïve",
        "list": [1, null, true, "two", {"empty": {}}],
        "empty": [],
    });
    let cp = c.commit_state(&run, state, false).await?;
    c.expect_state(
        &tenant,
        &schema.name,
        Some(&cp),
        "after an intermediate commit",
    )
    .await?;
    c.write(&mut run, vec![typed_record(2, 1)]).await?;
    let done = c
        .commit_state(
            &run,
            json!({"phase": "done", "cursor": "2024-03-01T10:00:00.123456Z"}),
            true,
        )
        .await?;
    c.expect_state(&tenant, &schema.name, Some(&done), "after the final commit")
        .await?;
    c.expect_state(&other, &schema.name, None, "for another tenant")
        .await?;
    c.expect_state(&tenant, &unique("state_other"), None, "for another stream")
        .await?;
    // A new (incremental) run prepares: the committed state stays until it
    // commits.
    let mut next = c.start(&tenant, &schema, false).await?;
    if next.resumed.is_some() {
        return Err(c.fail("a complete checkpoint was taken for an unfinished run"));
    }
    c.expect_state(
        &tenant,
        &schema.name,
        Some(&done),
        "after a new run prepared",
    )
    .await?;
    c.write(&mut next, vec![typed_record(3, 1)]).await?;
    let mid = c.commit_state(&next, Value::Null, false).await?;
    c.expect_state(
        &tenant,
        &schema.name,
        Some(&mid),
        "after an incremental run's first commit (null state)",
    )
    .await?;
    let end = c.commit(&next, true).await?;
    c.expect_state(
        &tenant,
        &schema.name,
        Some(&end),
        "after the incremental run completed",
    )
    .await
}

/// Two tenants writing the same stream and the same ids never see each
/// other's rows or state, whatever one of them does (a full refresh with
/// fewer rows, a crash).
pub async fn tenants_are_isolated(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "tenants_are_isolated");
    let a = unique("acme");
    let b = a.to_uppercase(); // differs only in case
    let schema = typed_schema(&unique("tenants"));
    let mut ma = Model::default();
    let mut mb = Model::default();
    let rows_a: Vec<Record> = (1..=5).map(|n| typed_record(n, 1)).collect();
    let rows_b: Vec<Record> = (3..=8).map(|n| typed_record(n, 2)).collect();
    c.sync(&mut ma, &a, &schema, vec![rows_a], 10).await?;
    let cp_b = c.sync(&mut mb, &b, &schema, vec![rows_b], 10).await?;
    c.expect_rows(&a, &schema.name, &ma, "tenant A after both wrote")
        .await?;
    c.expect_rows(&b, &schema.name, &mb, "tenant B after both wrote")
        .await?;
    // A refreshes with fewer rows, then crashes in a third run: B is untouched.
    let fewer = vec![typed_record(1, 3), typed_record(2, 3)];
    c.sync(&mut ma, &a, &schema, vec![fewer], 10).await?;
    c.expect_rows(
        &a,
        &schema.name,
        &ma,
        "tenant A after a full refresh with fewer rows",
    )
    .await?;
    let mut crashed = c.start(&a, &schema, true).await?;
    c.write(&mut crashed, (3..=8).map(|n| typed_record(n, 9)).collect())
        .await?;
    c.expect_rows(
        &b,
        &schema.name,
        &mb,
        "tenant B after tenant A refreshed and crashed",
    )
    .await?;
    c.expect_state(
        &b,
        &schema.name,
        Some(&cp_b),
        "tenant B's state after tenant A's runs",
    )
    .await?;
    // A's crashed run (nothing committed) is followed by a complete one.
    c.sync(&mut ma, &a, &schema, vec![vec![typed_record(1, 4)]], 10)
        .await?;
    c.expect_rows(
        &a,
        &schema.name,
        &ma,
        "tenant A after the run that followed its crash",
    )
    .await?;
    c.expect_rows(&b, &schema.name, &mb, "tenant B at the end")
        .await
}

/// Crashes with pages written and not committed (some holding records the
/// source no longer has, more than the resumed run rewrites), then a resume
/// from the checkpoint as the engine does: in a full refresh, before any
/// commit, and in an incremental run. The contents equal the source
/// exactly, and a resumed run keeps its id and mode.
pub async fn crash_then_resume(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    const PAGES: u64 = 25;
    const PER: u64 = 100;
    let c = Ctx::new(sink, inspect, caps, "crash_then_resume");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("resume"));
    let page = |p: u64, v: u64| -> Vec<Record> {
        (p * PER + 1..=(p + 1) * PER)
            .map(|n| typed_record(n, v))
            .collect()
    };
    // Records of interrupted pages that the source no longer has when the
    // run resumes, with large values.
    let ghosts = |p: u64| -> Vec<Record> {
        (0..PER)
            .map(|i| {
                let mut r = typed_record(1_000_000 + p * PER + i, 1);
                r.data.insert("name".into(), json!("ghost ".repeat(400)));
                r
            })
            .collect()
    };

    // 1. A full refresh: commits after pages 10 and 20, pages 21-23 written,
    // then pages of ghosts, and a crash.
    let mut model = Model::default();
    let mut run = c.start(&tenant, &schema, true).await?;
    model.begin(true);
    let mut last = None;
    for p in 0..23 {
        let at = c.write(&mut run, page(p, 1)).await?;
        model.write(&page(p, 1), run.sync_id, at);
        if (p + 1) % 10 == 0 {
            last = Some(c.commit(&run, false).await?);
        }
    }
    for p in 23..25 {
        c.write(&mut run, ghosts(p)).await?;
    }
    let committed = last.ok_or_else(|| c.fail("no checkpoint"))?;
    c.expect_state(&tenant, &schema.name, Some(&committed), "after the crash")
        .await?;
    if !caps.publishes_on_complete {
        // Readers see what was committed and nothing after it.
        let mut seen = Model::default();
        if let Some(pending) = &model.pending {
            for p in 0..20 {
                for r in page(p, 1) {
                    if let Some(e) = pending.get(&r.id) {
                        seen.committed.insert(r.id.clone(), e.clone());
                    }
                }
            }
        }
        c.expect_rows(
            &tenant,
            &schema.name,
            &seen,
            "after a crash (only committed rows are visible)",
        )
        .await?;
    }
    // The resume: from page 20, fresh versions, no ghosts.
    let mut resumed = c.start(&tenant, &schema, false).await?;
    match &resumed.resumed {
        Some(cp) if cp.sync_id == run.sync_id && resumed.pages == 20 && resumed.full_refresh => {}
        other => {
            return Err(c.fail(format!(
                "the engine-like resume did not start from the last checkpoint: {other:?}"
            )))
        }
    }
    let mut since = 0;
    for p in 20..PAGES {
        let records = page(p, 2);
        let at = c.write(&mut resumed, records.clone()).await?;
        model.write(&records, resumed.sync_id, at);
        since += 1;
        if since == 10 {
            since = 0;
            c.commit(&resumed, false).await?;
        }
    }
    let done = c.commit(&resumed, true).await?;
    model.complete();
    c.expect_rows(&tenant, &schema.name, &model, "after the resume completed")
        .await?;
    if done.records != PAGES * PER {
        return Err(c.fail(format!(
            "the resumed run counted {} records, expected {}",
            done.records,
            PAGES * PER
        )));
    }
    c.expect_state(
        &tenant,
        &schema.name,
        Some(&done),
        "after the resume completed",
    )
    .await?;

    // 2. An incremental run: a commit after its first page, ghosts, a crash,
    // then the resume, which stays incremental.
    let mut inc = c.start(&tenant, &schema, false).await?;
    model.begin(false);
    let changes = page(0, 3);
    let at = c.write(&mut inc, changes.clone()).await?;
    model.write(&changes, inc.sync_id, at);
    c.commit(&inc, false).await?;
    c.write(&mut inc, ghosts(7)).await?;
    c.write(&mut inc, ghosts(8)).await?;
    let mut again = c.start(&tenant, &schema, true).await?;
    if again.resumed.is_none() || again.full_refresh || again.sync_id != inc.sync_id {
        return Err(c.fail(
            "an unfinished incremental run was not resumed as incremental with its sync id",
        ));
    }
    let changes = page(1, 3);
    let at = c.write(&mut again, changes.clone()).await?;
    model.write(&changes, again.sync_id, at);
    c.commit(&again, true).await?;
    model.complete();
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after an incremental run resumed and completed (changes merged, earlier rows kept)",
    )
    .await?;

    // 3. A crash before the first commit: the next run starts over.
    let schema2 = typed_schema(&unique("resume_first"));
    let mut model2 = Model::default();
    let mut crashed = c.start(&tenant, &schema2, true).await?;
    for p in 0..4 {
        c.write(&mut crashed, ghosts(p)).await?;
    }
    c.expect_state(
        &tenant,
        &schema2.name,
        None,
        "after a crash before any commit",
    )
    .await?;
    let pages: Vec<Vec<Record>> = (0..3).map(|p| page(p, 1)).collect();
    c.sync(&mut model2, &tenant, &schema2, pages, 10).await?;
    c.expect_rows(
        &tenant,
        &schema2.name,
        &model2,
        "after a crash before any commit, then a new run",
    )
    .await
}

/// 100,000 rows in one run, in pages of 100 with a commit every 10 pages,
/// all read back exactly.
pub async fn bulk_100k_rows(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "bulk_100k_rows");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("bulk"));
    let pages: Vec<Vec<Record>> = (0..1_000u64)
        .map(|p| {
            (p * 100..(p + 1) * 100)
                .map(|n| typed_record(n, 1))
                .collect()
        })
        .collect();
    let mut model = Model::default();
    let cp = c.sync(&mut model, &tenant, &schema, pages, 10).await?;
    if cp.records != 100_000 {
        return Err(c.fail(format!("the run counted {} records", cp.records)));
    }
    c.expect_rows(&tenant, &schema.name, &model, "after 100,000 rows")
        .await?;
    c.expect_state(&tenant, &schema.name, Some(&cp), "after 100,000 rows")
        .await
}

/// One writer per tenant and stream: while a run holds the stream (after
/// its `prepare`, until its final commit), a second run of it is refused
/// with [`Error::Busy`] (from `prepare`) and changes nothing; another
/// stream and another tenant are not held up; once the first completes, the
/// second runs, and every row is there. An abandoned run releases the
/// stream at once.
pub async fn single_writer(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "single_writer");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("lease"));
    let mut model = Model::default();
    c.sync(
        &mut model,
        &tenant,
        &schema,
        vec![(1..=20).map(|n| typed_record(n, 1)).collect()],
        10,
    )
    .await?;
    // Run A: a full refresh, holding the stream.
    let mut a = c.start(&tenant, &schema, true).await?;
    model.begin(true);
    let page = (1..=10).map(|n| typed_record(n, 2)).collect::<Vec<_>>();
    let at = c.write(&mut a, page.clone()).await?;
    model.write(&page, a.sync_id, at);
    c.commit(&a, false).await?;
    // Run B of the same stream (another process, a console click): refused.
    let b_ctx = StreamContext::new(tenant.as_str(), schema.clone(), Uuid::new_v4(), None)
        .with_full_refresh(true);
    match sink.prepare(&b_ctx).await {
        Err(e) if e.is_busy() => {}
        Err(e) => {
            return Err(c.fail(format!(
                "a second run's prepare failed with another error than Busy: {}",
                error_chain(&e)
            )))
        }
        Ok(()) => {
            return Err(
                c.fail("a second run of a stream was prepared while the first still held it")
            )
        }
    }
    // Other streams and tenants are free meanwhile.
    let mut other_model = Model::default();
    let other = unique("tenant");
    c.sync(
        &mut other_model,
        &other,
        &schema,
        vec![vec![typed_record(1, 7)]],
        10,
    )
    .await?;
    // A goes on and completes: its rows and nothing of B's.
    let page = (11..=20).map(|n| typed_record(n, 2)).collect::<Vec<_>>();
    let at = c.write(&mut a, page.clone()).await?;
    model.write(&page, a.sync_id, at);
    c.commit(&a, true).await?;
    model.complete();
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after the first run completed (the refused run wrote nothing)",
    )
    .await?;
    // Now B may run, as a full refresh of the same records.
    let pages = vec![(1..=20).map(|n| typed_record(n, 3)).collect()];
    c.sync(&mut model, &tenant, &schema, pages, 10).await?;
    c.expect_rows(&tenant, &schema.name, &model, "after the second run")
        .await?;
    // A run that is abandoned releases the stream at once.
    let ctx = StreamContext::new(tenant.as_str(), schema.clone(), Uuid::new_v4(), None)
        .with_full_refresh(true);
    c.call("prepare of an abandoned run", sink.prepare(&ctx))
        .await?;
    c.call("abandon", sink.abandon(&tenant, &schema.name))
        .await?;
    c.call("prepare after an abandoned run", sink.prepare(&ctx))
        .await?;
    c.call("abandon", sink.abandon(&tenant, &schema.name))
        .await?;
    c.expect_rows(&tenant, &schema.name, &model, "at the end")
        .await?;
    c.expect_rows(&other, &schema.name, &other_model, "for the other tenant")
        .await
}

/// A full refresh told not to prune ([`Prune::Withheld`]: a completeness
/// check did not match) merges what it read, deletes nothing and reports
/// [`PruneOutcome::Withheld`]; the next refresh allowed to prune deletes.
pub async fn prune_withheld(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "prune_withheld");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("withheld"));
    let mut model = Model::default();
    c.sync(
        &mut model,
        &tenant,
        &schema,
        vec![(1..=30).map(|n| typed_record(n, 1)).collect()],
        10,
    )
    .await?;
    // A full refresh that read 3 of the 30 (a listing cut short).
    let mut run = c.start(&tenant, &schema, true).await?;
    model.begin(false); // expected: merged, nothing deleted
    let page: Vec<Record> = (1..=3).map(|n| typed_record(n, 2)).collect();
    let at = c.write(&mut run, page.clone()).await?;
    model.write(&page, run.sync_id, at);
    let reason = "completeness checks did not match (contacts: 30 reported, 3 read)";
    let cp = checkpoint(&run, StreamState(json!({"page": 1})), true)
        .with_prune(Prune::Withheld(reason.into()));
    let outcome = c.commit_outcome(&run, &cp).await?;
    model.complete();
    match &outcome {
        PruneOutcome::Withheld { reason: r, .. } if r == reason => {}
        other => {
            return Err(c.fail(format!(
                "a full refresh that may not prune reported {other:?}"
            )))
        }
    }
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after a full refresh that may not prune (every row kept, the read ones updated)",
    )
    .await?;
    // The same run may prune at last (every row read): the stale rows go.
    let mut next = c.start(&tenant, &schema, true).await?;
    model.begin(true);
    let page: Vec<Record> = (1..=25).map(|n| typed_record(n, 3)).collect();
    let at = c.write(&mut next, page.clone()).await?;
    model.write(&page, next.sync_id, at);
    let cp = checkpoint(&next, StreamState(json!({"page": 1})), true).with_prune(Prune::UpTo(0.5));
    let outcome = c.commit_outcome(&next, &cp).await?;
    model.complete();
    if !matches!(
        outcome,
        PruneOutcome::Pruned {
            rows: None | Some(5)
        }
    ) {
        return Err(c.fail(format!(
            "a full refresh deleting 5 of 30 rows with a share of 0.5 reported {outcome:?}"
        )));
    }
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after a full refresh allowed to prune",
    )
    .await
}

/// [`Prune::UpTo`]: a full refresh that would delete more than the share of
/// the tenant's rows deletes nothing (and says so); within the share it
/// deletes.
pub async fn prune_share_limit(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "prune_share_limit");
    let tenant = unique("tenant");
    let schema = typed_schema(&unique("share"));
    let mut model = Model::default();
    c.sync(
        &mut model,
        &tenant,
        &schema,
        vec![(1..=10).map(|n| typed_record(n, 1)).collect()],
        10,
    )
    .await?;
    // 4 of 10 read: deleting 6 of 10 is more than half.
    let mut run = c.start(&tenant, &schema, true).await?;
    model.begin(false);
    let page: Vec<Record> = (1..=4).map(|n| typed_record(n, 2)).collect();
    let at = c.write(&mut run, page.clone()).await?;
    model.write(&page, run.sync_id, at);
    let cp = checkpoint(&run, StreamState(json!({"page": 1})), true).with_prune(Prune::UpTo(0.5));
    let outcome = c.commit_outcome(&run, &cp).await?;
    model.complete();
    if !outcome.is_withheld() {
        return Err(c.fail(format!(
            "a full refresh deleting 6 of 10 rows with a share of 0.5 reported {outcome:?}"
        )));
    }
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after a full refresh over the share (nothing deleted)",
    )
    .await?;
    // 8 of 10 read: deleting 2 of 10 is within the share.
    let mut run = c.start(&tenant, &schema, true).await?;
    model.begin(true);
    let page: Vec<Record> = (1..=8).map(|n| typed_record(n, 3)).collect();
    let at = c.write(&mut run, page.clone()).await?;
    model.write(&page, run.sync_id, at);
    let cp = checkpoint(&run, StreamState(json!({"page": 1})), true).with_prune(Prune::UpTo(0.5));
    let outcome = c.commit_outcome(&run, &cp).await?;
    model.complete();
    if !matches!(
        outcome,
        PruneOutcome::Pruned {
            rows: None | Some(2)
        }
    ) {
        return Err(c.fail(format!(
            "a full refresh deleting 2 of 10 rows with a share of 0.5 reported {outcome:?}"
        )));
    }
    c.expect_rows(
        &tenant,
        &schema.name,
        &model,
        "after a full refresh within the share",
    )
    .await
}

/// Records the sync could not decode are stored by [`Sink::quarantine`] and
/// returned by [`Sink::quarantined`] exactly: bytes that are not UTF-8, NUL,
/// an unpaired surrogate escape and quotes come back byte for byte, with the
/// path, error, position, sync id and time; per tenant and stream, oldest
/// first, and across two calls.
pub async fn quarantine_round_trips(
    sink: &dyn Sink,
    inspect: &dyn SinkInspector,
    caps: &Capabilities,
) -> Result<()> {
    let c = Ctx::new(sink, inspect, caps, "quarantine_round_trips");
    let tenant = unique("tenant");
    let other = unique("tenant");
    let stream = unique("quarantine");
    let sync_id = Uuid::new_v4();
    let at = |secs: i64| {
        DateTime::from_timestamp_micros(now().timestamp_micros() + secs * 1_000_000)
            .unwrap_or_else(now)
    };
    let record = |tenant: &str, raw: &[u8], path: &str, state: Value, secs: i64| {
        let mut r = QuarantinedRecord::new(
            tenant,
            stream.as_str(),
            sync_id,
            StreamState::new(state),
            Rejected::new(raw, path, format!("bad at {path}: \"quoted\"")),
        );
        r.quarantined_at = at(secs);
        r
    };
    let first = vec![
        record(
            &tenant,
            b"{\"id\":\"1\",\"name\":\"caf\xff\xfe\"}",
            "results[0].name",
            json!({"after": "100", "x": "x\"; drop table t; --"}),
            0,
        ),
        record(
            &tenant,
            br#"{"id":"2","name":"\ud800 alone"}"#,
            "results[1].name",
            json!({"after": "100"}),
            1,
        ),
    ];
    let second = vec![
        record(
            &tenant,
            b"{\"id\":\"3\",\"n\":\"\0\"}",
            "results[7]",
            Value::Null,
            2,
        ),
        record(&other, b"{}", "results[0]", json!(1), 3),
    ];
    c.call("store quarantined records", sink.quarantine(&first))
        .await?;
    c.call("store more quarantined records", sink.quarantine(&second))
        .await?;
    let got = c
        .call(
            "read the quarantine back",
            sink.quarantined(&tenant, &stream),
        )
        .await?;
    let want: Vec<&QuarantinedRecord> = first.iter().chain(&second[..1]).collect();
    if got.len() != want.len() {
        return Err(c.fail(format!(
            "{} quarantined records stored for the tenant, {} returned: {got:#?}",
            want.len(),
            got.len()
        )));
    }
    for (g, w) in got.iter().zip(want) {
        if g != w {
            return Err(c.fail(format!(
                "a quarantined record did not round-trip:\nstored   {w:?}\nreturned {g:?}"
            )));
        }
    }
    let others = c
        .call(
            "read another tenant's quarantine",
            sink.quarantined(&other, &stream),
        )
        .await?;
    if others.len() != 1 || others[0] != second[1] {
        return Err(c.fail(format!("another tenant's quarantine: {others:#?}")));
    }
    let none = c
        .call(
            "read an empty quarantine",
            sink.quarantined(&tenant, &unique("quarantine_none")),
        )
        .await?;
    if !none.is_empty() {
        return Err(c.fail(format!("a stream never quarantined: {none:#?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_compare_by_meaning() {
        assert!(typed_equal(FieldType::Number, &json!(1.5), &json!(1.50)));
        assert!(typed_equal(FieldType::Number, &json!("2"), &json!(2)));
        assert!(!typed_equal(FieldType::Number, &json!("n/a"), &json!(null)));
        assert!(typed_equal(
            FieldType::Timestamp,
            &json!("2024-03-01T10:00:00.123Z"),
            &json!("2024-03-01T11:00:00.123+01:00")
        ));
        assert!(typed_equal(FieldType::String, &json!(12), &json!("12")));
        assert!(!typed_equal(FieldType::String, &json!("a"), &json!("A")));
    }

    #[test]
    fn the_model_accepts_metadata_of_any_identical_write() {
        let mut m = Model::default();
        let r = typed_record(1, 1);
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let (t1, t2) = (now(), now() + chrono::Duration::seconds(1));
        m.write(std::slice::from_ref(&r), s1, t1);
        m.write(std::slice::from_ref(&r), s2, t2);
        let row = |s: Uuid, t: DateTime<Utc>| {
            let mut row = r.data.clone();
            row.insert("_tenant_id".into(), json!("t"));
            row.insert("_sync_id".into(), json!(s.to_string()));
            row.insert("_extracted_at".into(), json!(t.to_rfc3339()));
            row.insert("_deleted".into(), json!(false));
            row
        };
        assert!(m.compare("t", &[row(s1, t1)]).is_empty());
        assert!(m.compare("t", &[row(s2, t2)]).is_empty());
        assert!(!m.compare("t", &[row(s1, t2)]).is_empty());
        assert!(!m.compare("u", &[row(s1, t1)]).is_empty());
        // A different version resets the acceptable writes.
        m.write(&[typed_record(1, 2)], s2, t2);
        assert!(!m.compare("t", &[row(s1, t1)]).is_empty());
    }
}
