//! A small BigQuery v2 REST client: the calls the sink makes, named and
//! shaped as in the discovery document (`bigquery.v2.json`), with retries
//! on 429, 5xx, `rateLimitExceeded` and transport errors, one token refresh
//! on 401, and job and query errors (also those sent with a 200) mapped to
//! [`Error::Sink`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use super::values::{decode_row, ResultField};
use super::NAME;
use crate::auth::AccessTokenSource;
use crate::error::{ApiErrorBody, AuthErrorKind};
use crate::http::{parse_retry_after, send_request, Received, RetryConfig};
use crate::paginate::CursorGuard;
use crate::{Error, Result};

/// `ErrorProto` of the discovery document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorProto {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
}

impl std::fmt::Display for ErrorProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message.as_deref().unwrap_or("(no message)"))?;
        if let Some(r) = &self.reason {
            write!(f, " [{r}]")?;
        }
        if let Some(l) = &self.location {
            write!(f, " at {l}")?;
        }
        Ok(())
    }
}

/// `JobReference`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobReference {
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// `JobStatus`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobStatus {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub error_result: Option<ErrorProto>,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

/// The parts of `Job` the sink reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Job {
    #[serde(default)]
    pub job_reference: Option<JobReference>,
    #[serde(default)]
    pub status: Option<JobStatus>,
}

/// The parts of `QueryResponse` / `GetQueryResultsResponse` the sink reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryResponse {
    #[serde(default)]
    job_reference: Option<JobReference>,
    #[serde(default)]
    job_complete: Option<bool>,
    #[serde(default)]
    schema: Option<ResultSchema>,
    #[serde(default)]
    rows: Vec<Value>,
    #[serde(default)]
    page_token: Option<String>,
    #[serde(default)]
    errors: Vec<ErrorProto>,
    #[serde(default)]
    num_dml_affected_rows: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ResultSchema {
    #[serde(default)]
    fields: Vec<ResultField>,
}

/// A query's rows, decoded.
#[derive(Debug, Default)]
pub(crate) struct QueryOutput {
    pub rows: Vec<serde_json::Map<String, Value>>,
    #[allow(dead_code)]
    pub dml_affected_rows: Option<u64>,
}

/// A named `STRING` query parameter (`QueryParameter`).
pub(crate) fn string_param(name: &str, value: &str) -> Value {
    json!({
        "name": name,
        "parameterType": {"type": "STRING"},
        "parameterValue": {"value": value},
    })
}

/// An HTTP body with its content type.
pub(crate) struct Body {
    pub content_type: String,
    pub bytes: Bytes,
}

impl Body {
    pub(crate) fn json(value: &Value) -> Body {
        Body {
            content_type: "application/json".into(),
            bytes: Bytes::from(value.to_string()),
        }
    }
}

/// Reasons of job errors that running the job again may cure.
fn transient_reason(reason: Option<&str>, message: Option<&str>) -> bool {
    let reason_says = matches!(
        reason,
        Some(
            "backendError"
                | "internalError"
                | "rateLimitExceeded"
                | "jobBackendError"
                | "jobInternalError"
                | "jobRateLimitExceeded"
        )
    );
    // Concurrent DML on one table: "Could not serialize access to table …
    // due to concurrent update", "Transaction is aborted due to concurrent
    // update against table …".
    let message_says = message.is_some_and(|m| m.contains("concurrent update"));
    reason_says || message_says
}

/// Google's JSON error envelope `{"error":{code,message,status,errors[]}}`,
/// parsed into headwater's [`ApiErrorBody`].
fn google_error(body: &[u8]) -> (ApiErrorBody, Option<String>) {
    let mut parsed = ApiErrorBody::parse(body);
    let mut reason = None;
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(e) = v.get("error").filter(|e| e.is_object()) {
            let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            parsed.message = s(e, "message").or(parsed.message);
            parsed.category = s(e, "status").or(parsed.category);
            reason = e
                .get("errors")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(|x| s(x, "reason"));
            parsed.error_key = reason.clone().or(parsed.error_key);
        }
    }
    (parsed, reason)
}

/// The HTTP side: reqwest, optional bearer tokens, retries.
#[derive(Clone)]
pub(crate) struct Http {
    pub client: reqwest::Client,
    pub auth: Option<Arc<dyn AccessTokenSource>>,
    pub retry: RetryConfig,
    /// The most bytes of one response body (decompressed).
    pub max_body: u64,
}

/// A final answer: status and body (success or not).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body of a success, else [`Error::Sink`] naming `what` (with the
    /// status and Google's message, and [`Error::Api`] as the source).
    pub(crate) fn ok(self, what: &str, method: &Method, url: &Url) -> Result<Bytes> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        let (body, _) = google_error(&self.body);
        let api = Error::Api {
            provider: NAME,
            status: self.status.as_u16(),
            method: method.to_string(),
            path: url.path().to_owned(),
            body: Box::new(body.clone()),
        };
        Err(Error::Sink {
            sink: NAME,
            message: format!("{what}: answered {}: {body}", self.status.as_u16()),
            source: Some(Box::new(api)),
        })
    }
}

impl Http {
    /// Sends a request, retrying what is worth retrying; returns the final
    /// answer whatever its status, except 401 (after one refresh), 429 (after
    /// the retries) and transport failures, which are errors.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Body>,
    ) -> Result<Answer> {
        let mut retries = 0u32;
        let mut refreshed = false;
        loop {
            let token = match &self.auth {
                Some(a) => Some(a.access_token().await?),
                None => None,
            };
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(t) = &token {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose_secret()))
                    .map_err(|_| {
                        Error::Config("access token is not a valid header value".into())
                    })?;
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
            if let Some(b) = body {
                req = req
                    .header(CONTENT_TYPE, b.content_type.as_str())
                    .body(b.bytes.clone());
            }
            let (status, retry_after, bytes) = match send_request(req, self.max_body).await {
                Ok(Received {
                    status,
                    headers,
                    body,
                }) => {
                    let retry_after = headers
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    (status, retry_after, body)
                }
                Err(e) if e.is_retryable() && retries < self.retry.max_retries => {
                    let wait = self.retry.backoff(retries);
                    tracing::debug!(error = %e, ?wait, "bigquery: transport error, retrying");
                    retries += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(e.into_error(NAME, url.path())),
            };
            if status == StatusCode::UNAUTHORIZED {
                if let (Some(auth), Some(token), false) = (&self.auth, &token, refreshed) {
                    if auth.refresh_after_unauthorized(token).await? {
                        refreshed = true;
                        continue;
                    }
                }
                let (parsed, _) = google_error(&bytes);
                return Err(Error::Auth {
                    provider: NAME,
                    kind: match (&self.auth, refreshed) {
                        (None, _) => AuthErrorKind::Missing,
                        (Some(_), true) => AuthErrorKind::Rejected,
                        (Some(a), false) => a.unauthorized_kind(),
                    },
                    message: parsed.to_string(),
                });
            }
            let (parsed, reason) = if status.is_success() {
                (ApiErrorBody::default(), None)
            } else {
                google_error(&bytes)
            };
            let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
                || (status == StatusCode::FORBIDDEN
                    && reason.as_deref() == Some("rateLimitExceeded"));
            // A 400 for a transient job failure (concurrent DML) is run
            // again by `Api::query` with a new request id, not resent here.
            let retryable = rate_limited || matches!(status.as_u16(), 500 | 502 | 503 | 504);
            if retryable {
                let too_long = retry_after.is_some_and(|d| d > self.retry.max_retry_after);
                if retries < self.retry.max_retries && !too_long {
                    let wait = retry_after.unwrap_or_else(|| self.retry.backoff(retries));
                    tracing::debug!(
                        status = status.as_u16(),
                        ?reason,
                        ?wait,
                        "bigquery: retrying"
                    );
                    retries += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if rate_limited {
                    return Err(Error::RateLimited {
                        provider: NAME,
                        retry_after,
                        daily: false,
                        body: Box::new(parsed),
                    });
                }
            }
            return Ok(Answer {
                status,
                body: bytes,
            });
        }
    }
}

/// The BigQuery API of one project: the calls the sink makes.
#[derive(Clone)]
pub(crate) struct Api {
    pub http: Http,
    /// `{endpoint}/bigquery/v2/`.
    pub base: Url,
    /// `{endpoint}/upload/bigquery/v2/`.
    pub upload: Url,
    pub project: String,
    pub location: Option<String>,
    pub poll_max: Duration,
    pub job_timeout: Duration,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    Error::decode(NAME, || what.to_owned(), bytes)
}

impl Api {
    /// `base` + path segments (each percent-encoded).
    fn url(&self, base: &Url, segments: &[&str]) -> Url {
        let mut url = base.clone();
        if let Ok(mut s) = url.path_segments_mut() {
            s.pop_if_empty();
            s.extend(segments);
        }
        url
    }

    fn project_url(&self, segments: &[&str]) -> Url {
        let mut all = vec!["projects", self.project.as_str()];
        all.extend_from_slice(segments);
        self.url(&self.base, &all)
    }

    /// `datasets.get`, then `datasets.insert` if missing (409 is fine).
    pub(crate) async fn ensure_dataset(&self, dataset: &str) -> Result<()> {
        let url = self.project_url(&["datasets", dataset]);
        let got = self.http.send(Method::GET, &url, None).await?;
        if got.status.is_success() {
            return Ok(());
        }
        if got.status != StatusCode::NOT_FOUND {
            got.ok(&format!("datasets.get {dataset}"), &Method::GET, &url)?;
        }
        let url = self.project_url(&["datasets"]);
        let mut body = json!({
            "datasetReference": {"projectId": self.project, "datasetId": dataset},
        });
        if let Some(l) = &self.location {
            body["location"] = json!(l);
        }
        let ans = self
            .http
            .send(Method::POST, &url, Some(&Body::json(&body)))
            .await?;
        if ans.status == StatusCode::CONFLICT {
            return Ok(());
        }
        ans.ok(&format!("datasets.insert {dataset}"), &Method::POST, &url)?;
        tracing::info!(dataset, "bigquery: dataset created");
        Ok(())
    }

    /// `tables.get`: the table resource, or `None` when it does not exist.
    pub(crate) async fn get_table(&self, dataset: &str, table: &str) -> Result<Option<Value>> {
        let url = self.project_url(&["datasets", dataset, "tables", table]);
        let ans = self.http.send(Method::GET, &url, None).await?;
        if ans.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = ans.ok(&format!("tables.get {table}"), &Method::GET, &url)?;
        decode(&format!("tables.get {table}"), &body).map(Some)
    }

    /// `tables.insert`; false when the table already exists (409).
    pub(crate) async fn insert_table(&self, dataset: &str, table: &Value) -> Result<bool> {
        let url = self.project_url(&["datasets", dataset, "tables"]);
        let ans = self
            .http
            .send(Method::POST, &url, Some(&Body::json(table)))
            .await?;
        if ans.status == StatusCode::CONFLICT {
            return Ok(false);
        }
        ans.ok("tables.insert", &Method::POST, &url)?;
        Ok(true)
    }

    /// `tables.patch` with a (complete) new schema.
    pub(crate) async fn patch_table_schema(
        &self,
        dataset: &str,
        table: &str,
        fields: &[Value],
    ) -> Result<()> {
        let url = self.project_url(&["datasets", dataset, "tables", table]);
        let body = json!({"schema": {"fields": fields}});
        self.http
            .send(Method::PATCH, &url, Some(&Body::json(&body)))
            .await?
            .ok(&format!("tables.patch {table}"), &Method::PATCH, &url)?;
        Ok(())
    }

    /// `tables.delete`; a missing table is fine.
    pub(crate) async fn delete_table(&self, dataset: &str, table: &str) -> Result<()> {
        let url = self.project_url(&["datasets", dataset, "tables", table]);
        let ans = self.http.send(Method::DELETE, &url, None).await?;
        if ans.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        ans.ok(&format!("tables.delete {table}"), &Method::DELETE, &url)?;
        Ok(())
    }

    fn with_location(&self, url: &mut Url, location: Option<&str>) {
        if let Some(l) = location.or(self.location.as_deref()) {
            url.query_pairs_mut().append_pair("location", l);
        }
    }

    /// Loads newline-delimited JSON into `table` by a multipart upload
    /// (`jobs.insert` on the upload URL), then waits for the job. The job id
    /// headwater picks makes a retried upload a 409 on real BigQuery (then the
    /// existing job is awaited); servers that pick their own id (the
    /// emulator) are polled by the id they answer with.
    pub(crate) async fn load_ndjson(&self, dataset: &str, table: &str, data: Bytes) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            let job_id = format!("headwater_load_{}", uuid::Uuid::new_v4().simple());
            let mut job_ref = json!({"projectId": self.project, "jobId": job_id});
            if let Some(l) = &self.location {
                job_ref["location"] = json!(l);
            }
            let meta = json!({
                "jobReference": job_ref,
                "configuration": {"load": {
                    "destinationTable": {
                        "projectId": self.project, "datasetId": dataset, "tableId": table,
                    },
                    "sourceFormat": "NEWLINE_DELIMITED_JSON",
                    "writeDisposition": "WRITE_APPEND",
                    "createDisposition": "CREATE_NEVER",
                    "ignoreUnknownValues": false,
                    "maxBadRecords": 0,
                }},
            });
            let boundary = format!("headwater_{}", uuid::Uuid::new_v4().simple());
            let mut body = Vec::with_capacity(data.len() + 1024);
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n\
                     --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(&data);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let body = Body {
                content_type: format!("multipart/related; boundary={boundary}"),
                bytes: Bytes::from(body),
            };
            let mut url = self.url(&self.upload, &["projects", &self.project, "jobs"]);
            url.query_pairs_mut().append_pair("uploadType", "multipart");
            let ans = self.http.send(Method::POST, &url, Some(&body)).await?;
            let job_ref = if ans.status == StatusCode::CONFLICT {
                // An earlier attempt of this very request created the job.
                JobReference {
                    project_id: Some(self.project.clone()),
                    job_id,
                    location: self.location.clone(),
                }
            } else {
                let bytes = ans.ok(&format!("load into {table}"), &Method::POST, &url)?;
                let job: Job = decode("jobs.insert (load)", &bytes)?;
                job.job_reference.ok_or_else(|| Error::Sink {
                    sink: NAME,
                    message: format!("load into {table}: the answer names no job"),
                    source: None,
                })?
            };
            match self
                .wait_for_job(&job_ref, &format!("load into {table}"))
                .await
            {
                Err(JobFailure::Transient(e)) if attempt < self.http.retry.max_retries => {
                    tracing::debug!(error = %e, "bigquery: load job failed transiently, again");
                    tokio::time::sleep(self.http.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(JobFailure::Transient(e) | JobFailure::Fatal(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Polls `jobs.get` until the job is `DONE`; its `errorResult` fails it.
    async fn wait_for_job(&self, job: &JobReference, what: &str) -> Result<(), JobFailure> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let mut url = self.project_url(&["jobs", &job.job_id]);
            self.with_location(&mut url, job.location.as_deref());
            let bytes = self
                .http
                .send(Method::GET, &url, None)
                .await
                .and_then(|a| a.ok(&format!("jobs.get {}", job.job_id), &Method::GET, &url))
                .map_err(JobFailure::Fatal)?;
            let got: Job = decode("jobs.get", &bytes).map_err(JobFailure::Fatal)?;
            let status = got.status.unwrap_or_default();
            if status.state.as_deref() == Some("DONE") {
                return match status.error_result {
                    None => Ok(()),
                    Some(err) => Err(job_failure(what, &err, &status.errors)),
                };
            }
            if start.elapsed() > self.job_timeout {
                return Err(JobFailure::Fatal(Error::Sink {
                    sink: NAME,
                    message: format!(
                        "{what}: job {} not done after {:?}",
                        job.job_id, self.job_timeout
                    ),
                    source: None,
                }));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.poll_max);
        }
    }

    /// Runs GoogleSQL (one statement or a script) by `jobs.query`, waits for
    /// it (`jobs.getQueryResults`), reads every page of rows, and fails with
    /// [`Error::Sink`] on `errors` (which the emulator sends with a 200).
    /// Transient failures (backend errors, concurrent DML) run it again.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[Value],
        what: &str,
    ) -> Result<QueryOutput> {
        let mut attempt = 0u32;
        loop {
            match self.query_once(sql, params, what).await {
                Err(JobFailure::Transient(e)) if attempt < self.http.retry.max_retries => {
                    tracing::debug!(error = %e, "bigquery: query failed transiently, again");
                    tokio::time::sleep(self.http.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(JobFailure::Transient(e) | JobFailure::Fatal(e)) => return Err(e),
                Ok(out) => return Ok(out),
            }
        }
    }

    async fn query_once(
        &self,
        sql: &str,
        params: &[Value],
        what: &str,
    ) -> Result<QueryOutput, JobFailure> {
        let mut body = json!({
            "query": sql,
            "useLegacySql": false,
            "requestId": uuid::Uuid::new_v4().to_string(),
            "timeoutMs": 10_000,
            "maxResults": 10_000,
            "formatOptions": {"useInt64Timestamp": true},
        });
        if !params.is_empty() {
            body["parameterMode"] = json!("NAMED");
            body["queryParameters"] = Value::Array(params.to_vec());
        }
        if let Some(l) = &self.location {
            body["location"] = json!(l);
        }
        let url = self.project_url(&["queries"]);
        let ans = self
            .http
            .send(Method::POST, &url, Some(&Body::json(&body)))
            .await
            .map_err(JobFailure::Fatal)?;
        if !ans.status.is_success() {
            let (_, reason) = google_error(&ans.body);
            let err = ans
                .ok(what, &Method::POST, &url)
                .err()
                .unwrap_or(Error::Sink {
                    sink: NAME,
                    message: what.to_owned(),
                    source: None,
                });
            let msg = err.to_string();
            return Err(if transient_reason(reason.as_deref(), Some(&msg)) {
                JobFailure::Transient(err)
            } else {
                JobFailure::Fatal(err)
            });
        }
        let mut resp: QueryResponse = decode("jobs.query", &ans.body).map_err(JobFailure::Fatal)?;
        let start = Instant::now();
        let mut out = QueryOutput::default();
        let mut fields: Option<Vec<ResultField>> = None;
        // Page tokens followed so far: one the server repeats ends the read.
        let mut tokens = CursorGuard::new();
        loop {
            if !resp.errors.is_empty() {
                return Err(job_failure(what, &resp.errors[0], &resp.errors));
            }
            let complete = resp.job_complete.unwrap_or(true);
            if complete {
                if fields.is_none() {
                    fields = resp.schema.take().map(|s| s.fields);
                    out.dml_affected_rows = resp
                        .num_dml_affected_rows
                        .as_deref()
                        .and_then(|n| n.parse().ok());
                }
                if let Some(f) = &fields {
                    out.rows.extend(resp.rows.iter().map(|r| decode_row(f, r)));
                }
                match resp.page_token.as_deref() {
                    None | Some("") => return Ok(out),
                    Some(token) if !tokens.first_time(token) => {
                        return Err(JobFailure::Fatal(Error::CursorRepeated {
                            provider: NAME,
                            what: format!("{what}: query result pages"),
                            cursor: token.to_owned(),
                            pages: tokens.len() as u64,
                        }));
                    }
                    Some(_) => {}
                }
            } else if start.elapsed() > self.job_timeout {
                return Err(JobFailure::Fatal(Error::Sink {
                    sink: NAME,
                    message: format!("{what}: query not done after {:?}", self.job_timeout),
                    source: None,
                }));
            }
            let job = resp.job_reference.clone().ok_or_else(|| {
                JobFailure::Fatal(Error::Sink {
                    sink: NAME,
                    message: format!("{what}: the answer names no job"),
                    source: None,
                })
            })?;
            let mut url = self.project_url(&["queries", &job.job_id]);
            self.with_location(&mut url, job.location.as_deref());
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("timeoutMs", "10000")
                    .append_pair("maxResults", "10000")
                    .append_pair("formatOptions.useInt64Timestamp", "true");
                if complete {
                    if let Some(t) = &resp.page_token {
                        q.append_pair("pageToken", t);
                    }
                }
            }
            let ans = self
                .http
                .send(Method::GET, &url, None)
                .await
                .map_err(JobFailure::Fatal)?;
            if !ans.status.is_success() {
                // A query that failed after it started answers its error here.
                let (_, reason) = google_error(&ans.body);
                let err = ans
                    .ok(what, &Method::GET, &url)
                    .err()
                    .unwrap_or(Error::Sink {
                        sink: NAME,
                        message: what.to_owned(),
                        source: None,
                    });
                let msg = err.to_string();
                return Err(if transient_reason(reason.as_deref(), Some(&msg)) {
                    JobFailure::Transient(err)
                } else {
                    JobFailure::Fatal(err)
                });
            }
            resp = decode("jobs.getQueryResults", &ans.body).map_err(JobFailure::Fatal)?;
        }
    }
}

/// A job or query that failed; transient ones are run again.
enum JobFailure {
    Transient(Error),
    Fatal(Error),
}

fn job_failure(what: &str, err: &ErrorProto, all: &[ErrorProto]) -> JobFailure {
    let mut message = format!("{what}: {err}");
    let more: Vec<String> = all
        .iter()
        .filter(|e| e.message != err.message)
        .take(3)
        .map(ToString::to_string)
        .collect();
    if !more.is_empty() {
        message.push_str(&format!(" (also: {})", more.join("; ")));
    }
    let e = Error::Sink {
        sink: NAME,
        message,
        source: None,
    };
    if transient_reason(err.reason.as_deref(), err.message.as_deref()) {
        JobFailure::Transient(e)
    } else {
        JobFailure::Fatal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_errors_parse() {
        let body = br#"{"error":{"code":404,"message":"Not found: table x","errors":[{"domain":"global","reason":"notFound","message":"Not found: table x"}],"status":"NOT_FOUND"}}"#;
        let (e, reason) = google_error(body);
        assert_eq!(e.message.as_deref(), Some("Not found: table x"));
        assert_eq!(e.category.as_deref(), Some("NOT_FOUND"));
        assert_eq!(reason.as_deref(), Some("notFound"));
        let (e, reason) = google_error(b"<html>bad gateway</html>");
        assert!(e.message.is_none() && reason.is_none());
    }

    /// A server that hands out the same page token forever: the read ends
    /// with [`Error::CursorRepeated`] after the second page.
    #[cfg(feature = "testkit")]
    #[tokio::test]
    async fn a_query_page_token_that_never_ends_is_an_error_not_a_loop() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        let page = json!({
            "jobReference": {"projectId": "p", "jobId": "j1"},
            "jobComplete": true,
            "schema": {"fields": [{"name": "id", "type": "STRING"}]},
            "rows": [{"f": [{"v": "1"}]}],
            "pageToken": "SAME-TOKEN",
        });
        Mock::given(method("POST"))
            .and(path("/bigquery/v2/projects/p/queries"))
            .respond_with(ResponseTemplate::new(200).set_body_json(&page))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/bigquery/v2/projects/p/queries/j1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(&page))
            .mount(&server)
            .await;
        let base = Url::parse(&server.uri()).expect("url");
        let api = Api {
            http: Http {
                client: reqwest::Client::new(),
                auth: None,
                retry: RetryConfig::none(),
                max_body: crate::http::DEFAULT_MAX_RESPONSE_BYTES,
            },
            base: base.join("bigquery/v2/").expect("url"),
            upload: base.join("upload/bigquery/v2/").expect("url"),
            project: "p".into(),
            location: None,
            poll_max: Duration::from_millis(10),
            job_timeout: Duration::from_secs(10),
        };
        let got = tokio::time::timeout(Duration::from_secs(20), api.query("SELECT 1", &[], "q"))
            .await
            .expect("the read ends");
        match got {
            Err(Error::CursorRepeated { cursor, pages, .. }) => {
                assert_eq!(cursor, "SAME-TOKEN");
                assert_eq!(pages, 1);
            }
            other => panic!("expected CursorRepeated, got {other:?}"),
        }
        assert_eq!(server.received_requests().await.map(|r| r.len()), Some(2));
    }

    #[test]
    fn transient_job_errors() {
        assert!(transient_reason(Some("backendError"), None));
        assert!(transient_reason(
            Some("invalidQuery"),
            Some("Could not serialize access to table p.d.t due to concurrent update")
        ));
        assert!(!transient_reason(
            Some("invalidQuery"),
            Some("Syntax error")
        ));
    }
}
