//! Configuring a [`BigQuerySink`]: project, dataset, location, endpoint,
//! credentials, retries and load sizes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::OnceCell;
use url::Url;

use super::client::{Api, Http};
use super::{names, BigQuerySink, Inner, ServiceAccountKey, ServiceAccountTokenSource, NAME};
use crate::auth::{AccessTokenSource, StaticToken};
use crate::error::AuthErrorKind;
use crate::http::{default_http_client, RetryConfig};
use crate::{Error, Result};

/// Google's API endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";

/// The column type of `Number` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NumberType {
    /// NUMERIC: exact decimals, 29 integer and 9 fractional digits (more
    /// fractional digits are rounded; larger numbers are NULL, kept in
    /// `_record`).
    #[default]
    Numeric,
    /// FLOAT64: any magnitude, about 15 significant digits.
    Float64,
}

enum AuthConfig {
    Unset,
    None,
    Token(SecretString),
    ServiceAccount(Box<ServiceAccountKey>),
    Source(Arc<dyn AccessTokenSource>),
}

/// Configures a [`BigQuerySink`].
pub struct BigQuerySinkBuilder {
    project: String,
    dataset: String,
    location: Option<String>,
    endpoint: Option<Url>,
    auth: AuthConfig,
    retry: RetryConfig,
    http: Option<reqwest::Client>,
    max_upload_bytes: usize,
    max_response_bytes: u64,
    number_type: NumberType,
    staging_expiration: Duration,
    job_timeout: Duration,
}

impl std::fmt::Debug for BigQuerySinkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            AuthConfig::Unset => "unset".to_owned(),
            AuthConfig::None => "none".to_owned(),
            AuthConfig::Token(_) => "token [REDACTED]".to_owned(),
            AuthConfig::ServiceAccount(k) => format!("{k:?}"),
            AuthConfig::Source(s) => format!("{s:?}"),
        };
        f.debug_struct("BigQuerySinkBuilder")
            .field("project", &self.project)
            .field("dataset", &self.dataset)
            .field("location", &self.location)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("auth", &auth)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("number_type", &self.number_type)
            .finish_non_exhaustive()
    }
}

impl BigQuerySinkBuilder {
    /// A sink writing to `dataset` of `project`. Credentials are required:
    /// [`Self::access_token`], [`Self::service_account_key`],
    /// [`Self::token_source`], or [`Self::emulator`] for none.
    pub fn new(project: impl Into<String>, dataset: impl Into<String>) -> Self {
        BigQuerySinkBuilder {
            project: project.into(),
            dataset: dataset.into(),
            location: None,
            endpoint: None,
            auth: AuthConfig::Unset,
            retry: RetryConfig::default(),
            http: None,
            max_upload_bytes: 64 * 1024 * 1024,
            max_response_bytes: crate::http::DEFAULT_MAX_RESPONSE_BYTES,
            number_type: NumberType::default(),
            staging_expiration: Duration::from_secs(24 * 3600),
            job_timeout: Duration::from_secs(30 * 60),
        }
    }

    /// From the environment: `BIGQUERY_DATASET`; `BIGQUERY_PROJECT` (or the
    /// key file's `project_id`); `BIGQUERY_LOCATION` (optional); and either
    /// `BIGQUERY_ENDPOINT` — an emulator, used **without** credentials — or
    /// `GOOGLE_APPLICATION_CREDENTIALS`, the path of a service-account key.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let dataset = var("BIGQUERY_DATASET")
            .ok_or_else(|| Error::Config("BIGQUERY_DATASET is not set".into()))?;
        let key = match (
            var("BIGQUERY_ENDPOINT"),
            var("GOOGLE_APPLICATION_CREDENTIALS"),
        ) {
            (Some(_), _) => None,
            (None, Some(path)) => Some(ServiceAccountKey::from_file(path)?),
            (None, None) => {
                return Err(Error::Auth {
                    provider: NAME,
                    kind: AuthErrorKind::Missing,
                    message: "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, \
                              or BIGQUERY_ENDPOINT to an emulator"
                        .into(),
                })
            }
        };
        let project = var("BIGQUERY_PROJECT")
            .or_else(|| key.as_ref().and_then(|k| k.project_id().map(str::to_owned)))
            .ok_or_else(|| Error::Config("BIGQUERY_PROJECT is not set".into()))?;
        let mut b = BigQuerySinkBuilder::new(project, dataset);
        if let Some(l) = var("BIGQUERY_LOCATION") {
            b = b.location(l);
        }
        match (var("BIGQUERY_ENDPOINT"), key) {
            (Some(endpoint), _) => {
                let url = Url::parse(&endpoint).map_err(|e| {
                    Error::Config(format!("bad BIGQUERY_ENDPOINT `{endpoint}`: {e}"))
                })?;
                b = b.emulator(url);
            }
            (None, Some(key)) => b = b.service_account_key(key),
            (None, None) => {}
        }
        Ok(b)
    }

    /// The location of the dataset and jobs (`US`, `EU`, `europe-west1`…;
    /// default: BigQuery's default, US).
    pub fn location(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    /// The API's root URL (default `https://bigquery.googleapis.com`);
    /// `/bigquery/v2/` and `/upload/bigquery/v2/` are appended.
    pub fn endpoint(mut self, endpoint: Url) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// An emulator at `endpoint`, without credentials.
    pub fn emulator(mut self, endpoint: Url) -> Self {
        self.endpoint = Some(endpoint);
        self.auth = AuthConfig::None;
        self
    }

    /// Sends this bearer token (refreshing it is up to you).
    pub fn access_token(mut self, token: SecretString) -> Self {
        self.auth = AuthConfig::Token(token);
        self
    }

    /// Authenticates as this service account (JWT bearer exchange).
    pub fn service_account_key(mut self, key: ServiceAccountKey) -> Self {
        self.auth = AuthConfig::ServiceAccount(Box::new(key));
        self
    }

    /// Takes bearer tokens from `source` (e.g. a configured
    /// [`ServiceAccountTokenSource`], or your own).
    pub fn token_source(mut self, source: Arc<dyn AccessTokenSource>) -> Self {
        self.auth = AuthConfig::Source(source);
        self
    }

    /// How requests and jobs are retried (429, 5xx, `rateLimitExceeded`,
    /// backend errors, concurrent DML).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Uses this HTTP client (default: headwater's, with a 5-minute timeout).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The most bytes of rows sent by one load job (default 64 MiB); a
    /// commit with more runs several jobs into its staging table.
    pub fn max_upload_bytes(mut self, bytes: usize) -> Self {
        self.max_upload_bytes = bytes.max(1);
        self
    }

    /// The most bytes one response body may have after decompression
    /// (default [`crate::http::DEFAULT_MAX_RESPONSE_BYTES`], 64 MiB); a
    /// larger one fails the call with [`Error::ResponseTooLarge`]. Also
    /// applies to the service-account token exchange.
    pub fn max_response_bytes(mut self, bytes: u64) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The column type of `Number` fields (default NUMERIC).
    pub fn number_type(mut self, number_type: NumberType) -> Self {
        self.number_type = number_type;
        self
    }

    /// How long a staging table left by a crash lives (default one day).
    pub fn staging_expiration(mut self, ttl: Duration) -> Self {
        self.staging_expiration = ttl;
        self
    }

    /// The longest wait for one job (default 30 minutes).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Builds the sink. Nothing is sent until the first call.
    pub fn build(self) -> Result<BigQuerySink> {
        if !names::valid_project(&self.project) {
            return Err(Error::Config(format!(
                "bad BigQuery project id `{}`",
                self.project
            )));
        }
        if !names::valid_dataset(&self.dataset) {
            return Err(Error::Config(format!(
                "bad BigQuery dataset id `{}`: letters, digits and underscores only",
                self.dataset
            )));
        }
        let endpoint = match self.endpoint {
            Some(u) => u,
            None => Url::parse(DEFAULT_ENDPOINT)
                .map_err(|e| Error::Config(format!("bad default endpoint: {e}")))?,
        };
        if endpoint.cannot_be_a_base() {
            return Err(Error::Config(format!("bad BigQuery endpoint `{endpoint}`")));
        }
        let client = match self.http {
            Some(c) => c,
            None => default_http_client(Duration::from_secs(300))?,
        };
        let auth: Option<Arc<dyn AccessTokenSource>> = match self.auth {
            AuthConfig::Unset => {
                return Err(Error::Auth {
                    provider: NAME,
                    kind: AuthErrorKind::Missing,
                    message: "no credentials: give an access token, a service-account key or a \
                              token source, or use emulator() for none"
                        .into(),
                })
            }
            AuthConfig::None => None,
            AuthConfig::Token(t) => Some(Arc::new(StaticToken::new(t))),
            AuthConfig::ServiceAccount(key) => Some(Arc::new(
                ServiceAccountTokenSource::new(*key)?
                    .http_client(client.clone())
                    .retry(self.retry.clone())
                    .max_response_bytes(self.max_response_bytes),
            )),
            AuthConfig::Source(s) => Some(s),
        };
        let join = |path: &str| -> Result<Url> {
            let mut u = endpoint.clone();
            let base = endpoint.path().trim_end_matches('/');
            u.set_path(&format!("{base}/{path}"));
            Ok(u)
        };
        let api = Api {
            http: Http {
                client,
                auth,
                retry: self.retry,
                max_body: self.max_response_bytes,
            },
            base: join("bigquery/v2/")?,
            upload: join("upload/bigquery/v2/")?,
            project: self.project,
            location: self.location,
            poll_max: Duration::from_secs(2),
            job_timeout: self.job_timeout,
        };
        Ok(BigQuerySink {
            inner: Arc::new(Inner {
                api,
                dataset: self.dataset,
                number_type: self.number_type,
                max_upload_bytes: self.max_upload_bytes,
                staging_expiration: self.staging_expiration,
                dataset_ready: OnceCell::new(),
                state_ready: OnceCell::new(),
                ddl: tokio::sync::Mutex::new(()),
                open: Mutex::new(HashMap::new()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_env_reads_the_documented_variables() {
        // The only test touching these variables.
        let vars = [
            "BIGQUERY_PROJECT",
            "BIGQUERY_DATASET",
            "BIGQUERY_ENDPOINT",
            "BIGQUERY_LOCATION",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ];
        let saved: Vec<_> = vars.iter().map(|v| (v, std::env::var_os(v))).collect();
        for v in vars {
            std::env::remove_var(v);
        }
        assert!(matches!(BigQuerySink::from_env(), Err(Error::Config(_))));
        std::env::set_var("BIGQUERY_DATASET", "d");
        std::env::set_var("BIGQUERY_PROJECT", "p");
        let e = BigQuerySink::from_env().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Auth {
                    kind: AuthErrorKind::Missing,
                    ..
                }
            ),
            "{e}"
        );
        std::env::set_var("BIGQUERY_ENDPOINT", "http://127.0.0.1:9050");
        std::env::set_var("BIGQUERY_LOCATION", "EU");
        let sink = BigQuerySink::from_env().unwrap();
        assert!(sink.inner.api.http.auth.is_none());
        assert_eq!(
            sink.inner.api.base.as_str(),
            "http://127.0.0.1:9050/bigquery/v2/"
        );
        assert_eq!(sink.inner.api.location.as_deref(), Some("EU"));
        std::env::remove_var("BIGQUERY_ENDPOINT");
        std::env::remove_var("BIGQUERY_PROJECT");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.json");
        std::fs::write(
            &key,
            br#"{"type":"service_account","project_id":"from-key","client_email":"a@b",
                "private_key":"-----BEGIN PRIVATE KEY-----\nsekrit\n-----END PRIVATE KEY-----\n"}"#,
        )
        .unwrap();
        std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &key);
        let b = BigQuerySinkBuilder::from_env().unwrap();
        assert_eq!(b.project, "from-key");
        assert!(matches!(b.auth, AuthConfig::ServiceAccount(_)));
        // Not a real RSA key: refused when the sink is built, never shown.
        let e = b.build().unwrap_err().to_string();
        assert!(!e.contains("sekrit"), "{e}");
        for (v, old) in saved {
            match old {
                Some(x) => std::env::set_var(v, x),
                None => std::env::remove_var(v),
            }
        }
    }

    #[test]
    fn builder_checks_ids_and_credentials() {
        let e = BigQuerySink::builder("p", "bad-dataset")
            .emulator(Url::parse("http://127.0.0.1:9050").unwrap())
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let e = BigQuerySink::builder("p", "d").build().unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e}");
        let sink = BigQuerySink::builder("p", "d")
            .access_token("sekrit-token".into())
            .build()
            .unwrap();
        let dbg = format!("{sink:?}");
        assert!(!dbg.contains("sekrit"), "{dbg}");
        assert_eq!(
            sink.inner.api.base.as_str(),
            "https://bigquery.googleapis.com/bigquery/v2/"
        );
        assert_eq!(
            sink.inner.api.upload.as_str(),
            "https://bigquery.googleapis.com/upload/bigquery/v2/"
        );
        assert_eq!(sink.table_ref("deals"), "`p.d.deals`");
    }
}
