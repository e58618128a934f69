//! Client-side rate limits, built on `governor`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};

/// A provider's documented limit: at most `requests` in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window.
    pub per: Duration,
}

impl RateLimit {
    /// `requests` per `per`.
    pub const fn new(requests: u32, per: Duration) -> Self {
        RateLimit { requests, per }
    }

    /// `requests` per second.
    pub const fn per_second(requests: u32) -> Self {
        Self::new(requests, Duration::from_secs(1))
    }

    /// The `governor` quota that keeps a client under this limit when the
    /// provider counts requests in a *rolling* window (as `HubSpot` does).
    ///
    /// A token bucket with burst `b` and rate `r` lets `b - 1 + r·T` requests
    /// into a window of length `T`, so a bucket sized to the limit itself (burst
    /// `N`, `N/T`) would let nearly `2N` through and draw 429s. Here the burst
    /// is 1 and the rate is `N` less a 2% margin (at least one request) per
    /// window, which absorbs jitter between send and arrival times: at most
    /// `N` in any window, about 98% of the ceiling in a long run.
    pub fn quota(&self) -> Quota {
        let margin = (self.requests / 50).max(1);
        let effective = self.requests.saturating_sub(margin).max(1);
        let period = self.per / effective;
        Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN)
    }

    pub(crate) fn limiter(&self) -> Arc<DefaultDirectRateLimiter> {
        Arc::new(governor::RateLimiter::direct(self.quota()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_keeps_a_margin_under_the_window() {
        let q = RateLimit::new(190, Duration::from_secs(10)).quota();
        // 190 less 3 (2%) per 10 s.
        assert_eq!(q.replenish_interval(), Duration::from_secs(10) / 187);
        assert_eq!(q.burst_size().get(), 1);
        let q = RateLimit::per_second(4).quota();
        assert_eq!(q.replenish_interval(), Duration::from_secs(1) / 3);
    }
}
