//! Retry policy: exponential backoff with full jitter, and `Retry-After`.

use std::time::{Duration, SystemTime};

/// How failed requests are retried (429, 5xx, timeouts, connection errors).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// Backoff before the first retry.
    pub initial_backoff: Duration,
    /// Largest backoff between two attempts.
    pub max_backoff: Duration,
    /// Growth factor of the backoff per attempt.
    pub multiplier: f64,
    /// Longest `Retry-After` honoured; a longer one fails the request with
    /// [`crate::Error::RateLimited`] carrying the delay, so the caller can stop
    /// at a checkpoint instead of sleeping for hours.
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryConfig {
    /// No retries at all.
    pub fn none() -> Self {
        RetryConfig {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Sets the number of retries.
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the first and the largest backoff.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// The backoff before retry number `retry` (0-based): a random duration
    /// between half and all of `initial * multiplier^retry`, capped at
    /// `max_backoff` ("equal jitter", so concurrent clients spread out but
    /// never retry at once).
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(retry as i32);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jittered = capped * (0.5 + 0.5 * rand::random::<f64>());
        Duration::from_secs_f64(jittered)
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        // A delay past `Duration::MAX` saturates (and then fails the request
        // as too long); `from_secs_f64` would panic on it.
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let cfg =
            RetryConfig::default().with_backoff(Duration::from_millis(100), Duration::from_secs(1));
        for retry in 0..10 {
            let d = cfg.backoff(retry);
            let full = (0.1 * 2f64.powi(retry as i32)).min(1.0);
            assert!(d.as_secs_f64() >= full * 0.5 - 1e-9, "{retry}: {d:?}");
            assert!(d.as_secs_f64() <= full + 1e-9, "{retry}: {d:?}");
        }
    }

    #[test]
    fn retry_after_in_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).expect("date");
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30));
    }
}
