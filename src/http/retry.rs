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
    ///
    /// Whatever the configuration (a negative, infinite or NaN multiplier,
    /// a huge retry number), the result lies between zero and `max_backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry).unwrap_or(i32::MAX);
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jittered = capped * (0.5 + 0.5 * rand::random::<f64>());
        Duration::try_from_secs_f64(jittered)
            .unwrap_or(Duration::ZERO)
            .min(self.max_backoff)
    }
}

/// The longest delay a `Retry-After` header can ask for: a larger number
/// (or a date further ahead) counts as this much, so arithmetic on it can
/// never overflow. Far beyond any [`RetryConfig::max_retry_after`], it fails
/// the request with [`crate::Error::RateLimited`] all the same.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Parses a `Retry-After` header: delay-seconds or an HTTP date, at most
/// [`MAX_RETRY_AFTER`] (negative, infinite and unparsable values: `None`).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        // A number too long for an `f64` ("99…9", "1e400") asks for the clamp;
        // "inf", "NaN" and negative numbers ask for nothing.
        if secs.is_infinite() && v.starts_with(|c: char| c.is_ascii_digit()) {
            return Some(MAX_RETRY_AFTER);
        }
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        // Too large for a `Duration` (`1e20`): as long as the clamp allows.
        let d = Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER);
        return Some(d.min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
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

    /// Numbers from the network never panic: huge delays are clamped to
    /// [`MAX_RETRY_AFTER`] (and then fail the request as too long).
    #[test]
    fn absurd_retry_after_values_are_clamped_not_panics() {
        for v in [
            "1e20",
            "1e308",
            "18446744073709551616",
            "9999999999999999999999",
        ] {
            assert_eq!(parse_retry_after(v), Some(MAX_RETRY_AFTER), "{v}");
        }
        assert_eq!(parse_retry_after("inf"), None);
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after("-0"), Some(Duration::ZERO));
        let far =
            httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799));
        assert_eq!(parse_retry_after(&far), Some(MAX_RETRY_AFTER));
    }

    /// A configuration that makes the backoff negative, infinite or NaN
    /// gives a bounded backoff, not a panic.
    #[test]
    fn odd_backoff_configurations_do_not_panic() {
        let mut cfg = RetryConfig::default();
        for m in [-3.0, f64::NAN, f64::INFINITY, 1e300] {
            cfg.multiplier = m;
            for retry in [0, 1, 7, u32::MAX] {
                assert!(cfg.backoff(retry) <= cfg.max_backoff, "{m} {retry}");
            }
        }
    }
}
