//! The one error type of headwater, named by meaning.

use std::time::Duration;

/// A result with headwater's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error body a provider sent with a failed response, kept as a typed value.
///
/// HubSpot's `Error` schema (`message`, `correlationId`, `category`, …) and the
/// rate-limit body (`policyName`) map onto the named fields; other providers
/// fill what they have and keep the whole body in [`ApiErrorBody::raw`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiErrorBody {
    /// Human-readable message.
    pub message: Option<String>,
    /// Error category (`HubSpot`: `category`, e.g. `VALIDATION_ERROR`, `RATE_LIMITS`).
    pub category: Option<String>,
    /// Provider's request id for support (`HubSpot`: `correlationId`).
    pub correlation_id: Option<String>,
    /// Rate-limit policy named by a 429 (`HubSpot`: `TEN_SECONDLY_ROLLING`, `DAILY`).
    pub policy_name: Option<String>,
    /// Machine-readable key (Constant Contact: `error_key`, Mailchimp: `type`).
    pub error_key: Option<String>,
    /// The body as received (truncated to 4 KiB), for anything not named above.
    pub raw: String,
}

impl ApiErrorBody {
    /// Parses a provider error body. Never fails: an unreadable body is kept raw.
    pub fn parse(body: &[u8]) -> Self {
        let raw = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
        let mut out = ApiErrorBody {
            raw,
            ..Default::default()
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return out;
        };
        // Constant Contact answers an array of {error_key, error_message}.
        let obj = match &value {
            serde_json::Value::Array(items) => items.first().and_then(|v| v.as_object()),
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        };
        let Some(obj) = obj else { return out };
        let s = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        out.message = s("message")
            .or_else(|| s("error_message"))
            .or_else(|| s("detail"))
            .or_else(|| s("error_description"));
        out.category = s("category")
            .or_else(|| s("errorType"))
            .or_else(|| s("status"));
        out.correlation_id = s("correlationId");
        out.policy_name = s("policyName");
        out.error_key = s("error_key").or_else(|| s("error")).or_else(|| s("type"));
        out
    }
}

impl std::fmt::Display for ApiErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m)?,
            None if self.raw.is_empty() => f.write_str("(empty body)")?,
            None => write!(f, "{}", self.raw.chars().take(200).collect::<String>())?,
        }
        if let Some(c) = &self.category {
            write!(f, " [category {c}]")?;
        }
        if let Some(c) = &self.correlation_id {
            write!(f, " [correlation id {c}]")?;
        }
        Ok(())
    }
}

/// Why authentication failed, and what the user must do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// The grant is gone (revoked, `invalid_grant`, a spent rotating refresh
    /// token, a Mailchimp token that stopped working): the account must be
    /// connected again.
    Reauthorize,
    /// The provider refused the request's token even after a refresh.
    Rejected,
    /// The OAuth callback did not match the flow that was started (`state`).
    StateMismatch,
    /// The provider's authorize step answered with an error.
    Denied,
    /// No usable credentials were configured.
    Missing,
}

/// Every error headwater returns.
///
/// Match on the variant for meaning; use the predicates ([`Error::is_retryable`],
/// [`Error::needs_reauthorization`]) for decisions. No third-party type appears
/// in a public variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Authentication or authorization failed.
    #[error("{provider}: authentication failed ({kind:?}): {message}")]
    Auth {
        /// Provider name (`hubspot`, …).
        provider: &'static str,
        /// What kind of failure.
        kind: AuthErrorKind,
        /// What the provider or headwater said.
        message: String,
    },
    /// The provider's rate limit was hit and retries did not get through.
    #[error("{provider}: rate limited ({}){}", body, retry_after.map(|d| format!(", retry after {:.1}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        /// Provider name.
        provider: &'static str,
        /// When the provider said to come back, if it said.
        retry_after: Option<Duration>,
        /// True when a daily (not a short-window) quota is exhausted.
        daily: bool,
        /// The 429 body.
        body: Box<ApiErrorBody>,
    },
    /// The provider answered with an error status.
    #[error("{provider}: {method} {path} answered {status}: {body}")]
    Api {
        /// Provider name.
        provider: &'static str,
        /// HTTP status code.
        status: u16,
        /// HTTP method.
        method: String,
        /// Request path (no query string, which may hold secrets).
        path: String,
        /// Parsed error body.
        body: Box<ApiErrorBody>,
    },
    /// A response did not decode; `path` is the JSON path that failed.
    #[error("{provider}: cannot decode {what}: at `{path}`: {message}")]
    Decode {
        /// Provider name.
        provider: &'static str,
        /// What was being decoded (stream and page, endpoint).
        what: String,
        /// JSON path of the failure (`results[3].properties`).
        path: String,
        /// The decoder's message.
        message: String,
    },
    /// A paginated listing returned a cursor it had already returned.
    #[error("{provider}: pagination of {what} repeated the cursor {cursor:?} after {pages} pages")]
    CursorRepeated {
        /// Provider name.
        provider: &'static str,
        /// The listing.
        what: String,
        /// The repeated cursor.
        cursor: String,
        /// Pages read before the repeat.
        pages: u64,
    },
    /// Network failure: connect, timeout, reset (after retries).
    #[error("{provider}: transport error on {path}: {message}")]
    Transport {
        /// Provider name.
        provider: &'static str,
        /// Request path.
        path: String,
        /// What failed.
        message: String,
        /// True for timeouts.
        timeout: bool,
    },
    /// A response body was larger than the client's cap (counted after
    /// decompression): an endless body or a gzip bomb. Not retried.
    #[error("{provider}: the response to {path} is larger than {limit} bytes (the client's cap)")]
    ResponseTooLarge {
        /// Provider name.
        provider: &'static str,
        /// Request path.
        path: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// A sink failed to prepare, write or commit.
    #[error("sink {sink}: {message}")]
    Sink {
        /// Sink name.
        sink: &'static str,
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Stored state (sync checkpoints, token stores) is unreadable or inconsistent.
    #[error("state: {message}")]
    State {
        /// What is wrong.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Configuration or input is invalid (bad base URL, unknown stream, bad key).
    #[error("configuration: {0}")]
    Config(String),
    /// Another run holds the single-writer lease of this tenant's stream in
    /// the sink (it is syncing the stream now); try again when it is done.
    #[error(
        "sink {sink}: stream `{stream}` of tenant `{tenant}` is already being synced ({holder})"
    )]
    Busy {
        /// Sink name.
        sink: &'static str,
        /// The tenant.
        tenant: String,
        /// The stream.
        stream: String,
        /// Who holds the lease, as far as the sink can tell (a run id, a
        /// process, a session), and until when for expiring leases.
        holder: String,
    },
}

impl Error {
    /// True when trying the same thing later may succeed (429, 5xx, network).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { daily, .. } => !daily,
            Error::Api { status, .. } => *status >= 500,
            Error::Transport { .. } => true,
            _ => false,
        }
    }

    /// True when the account must be connected again (revoked grant).
    pub fn needs_reauthorization(&self) -> bool {
        matches!(
            self,
            Error::Auth {
                kind: AuthErrorKind::Reauthorize,
                ..
            }
        )
    }

    /// True when another run is syncing the same tenant's stream into the
    /// same sink ([`Error::Busy`]).
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Busy { .. })
    }

    /// The HTTP status this error came from, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    pub(crate) fn sink(
        sink: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Sink {
            sink,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn state(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::State {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Decodes `bytes` as `T`, naming the JSON path on failure.
    ///
    /// The plain decoder runs first; only a body that fails is decoded again
    /// with path tracking, which costs a few percent on every page otherwise.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        provider: &'static str,
        what: impl FnOnce() -> String,
        bytes: &[u8],
    ) -> Result<T> {
        if let Ok(v) = serde_json::from_slice(bytes) {
            return Ok(v);
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| Error::Decode {
            provider,
            what: what(),
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }
}
