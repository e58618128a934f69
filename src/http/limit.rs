//! Client-side rate limits, built on `governor`.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, Utc};
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
    /// is 1 and the rate is `N` less a margin of 2% (at least half a request)
    /// per window, which absorbs jitter between send and arrival times: with
    /// requests spaced `T / (N - m)` apart, any window holds at most
    /// `floor(N - m) + 1 <= N` of them. 190 per 10 s runs at 186.2 (98%),
    /// Constant Contact's 4 per second at 3.5 (87.5%; a margin of a whole
    /// request would leave 3).
    pub fn quota(&self) -> Quota {
        let n = f64::from(self.requests.max(1));
        let margin = (n * 0.02).max(0.5);
        let period = self.per.div_f64(n - margin);
        Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN)
    }

    pub(crate) fn limiter(&self) -> Arc<FairLimiter> {
        Arc::new(FairLimiter {
            limiter: governor::RateLimiter::direct(self.quota()),
            queue: tokio::sync::Mutex::new(()),
        })
    }
}

/// A `governor` limiter whose waiters are served in the order they came.
///
/// `governor` promises no fairness: a task that asks just as a cell frees up
/// takes it ahead of tasks already asleep on `until_ready`, and under steady
/// contention one stream of a sync (or one tenant sharing a client) can
/// starve for seconds; the rate-limit ceiling bench saw a stream's first
/// page come 8 s late, and the streams then finish one after another, the
/// last alone and paced by latency instead of the limit. Waiters here queue
/// on tokio's mutex, which is FIFO, and only the head of the queue waits on
/// `governor`.
#[derive(Debug)]
pub(crate) struct FairLimiter {
    limiter: DefaultDirectRateLimiter,
    queue: tokio::sync::Mutex<()>,
}

impl FairLimiter {
    /// Waits for this caller's turn, then for a cell of the quota.
    pub(crate) async fn until_ready(&self) {
        let _turn = self.queue.lock().await;
        self.limiter.until_ready().await;
    }
}

/// A provider's daily request quota: at most `requests` per calendar day,
/// the day starting at midnight in `reset_offset` (Constant Contact: 10,000
/// a day from 00:00 UTC; `HubSpot` private apps: 250,000 to 1,000,000 a day
/// from midnight in the account's time zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DailyLimit {
    /// Requests allowed per day.
    pub requests: u64,
    /// The offset from UTC of the midnight the day starts at.
    pub reset_offset: FixedOffset,
}

impl DailyLimit {
    /// `requests` per day, the day starting at 00:00 UTC.
    pub fn utc(requests: u64) -> Self {
        DailyLimit {
            requests,
            reset_offset: Utc.fix(),
        }
    }

    /// The day starts at midnight at `offset` from UTC instead.
    pub fn with_reset_offset(mut self, offset: FixedOffset) -> Self {
        self.reset_offset = offset;
        self
    }

    /// The calendar day `at` falls on, as the provider counts days.
    fn day(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.reset_offset).date_naive()
    }

    /// When the day `at` falls on ends and the quota is full again.
    pub fn next_reset(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let next = self.day(at).succ_opt().unwrap_or(NaiveDate::MAX);
        next.and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_local_timezone(self.reset_offset).single())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(at + chrono::Duration::days(1))
    }
}

/// How much of a daily quota is used, as one client counted it (and as the
/// provider reported it, where it sends a remaining count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DailyUsage {
    /// The quota.
    pub limit: u64,
    /// Requests counted today.
    pub used: u64,
    /// True when the provider said the quota is spent (a daily 429).
    pub exhausted: bool,
    /// When the quota is full again.
    pub resets_at: DateTime<Utc>,
}

impl DailyUsage {
    /// Requests left today.
    pub fn remaining(&self) -> u64 {
        if self.exhausted {
            0
        } else {
            self.limit.saturating_sub(self.used)
        }
    }
}

/// Counts one client's requests against a [`DailyLimit`].
#[derive(Debug)]
pub(crate) struct DailyCounter {
    limit: DailyLimit,
    state: Mutex<DayState>,
}

#[derive(Debug, Clone, Copy)]
struct DayState {
    day: NaiveDate,
    used: u64,
    exhausted: bool,
}

impl DailyCounter {
    pub(crate) fn new(limit: DailyLimit) -> Self {
        DailyCounter {
            limit,
            state: Mutex::new(DayState {
                day: limit.day(Utc::now()),
                used: 0,
                exhausted: false,
            }),
        }
    }

    fn with_today<R>(&self, now: DateTime<Utc>, f: impl FnOnce(&mut DayState) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let today = self.limit.day(now);
        if st.day != today {
            *st = DayState {
                day: today,
                used: 0,
                exhausted: false,
            };
        }
        f(&mut st)
    }

    /// Takes one request from today's quota, or says when it is full again.
    pub(crate) fn take(&self, now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
        let limit = self.limit.requests;
        self.with_today(now, |st| {
            if st.exhausted || st.used >= limit {
                Err(self.limit.next_reset(now))
            } else {
                st.used += 1;
                Ok(())
            }
        })
    }

    /// The provider said the quota is spent.
    pub(crate) fn exhaust(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.with_today(now, |st| st.exhausted = true);
        self.limit.next_reset(now)
    }

    /// The provider reported how many requests are left today.
    pub(crate) fn set_remaining(&self, now: DateTime<Utc>, remaining: u64) {
        let limit = self.limit.requests;
        self.with_today(now, |st| {
            st.used = st.used.max(limit.saturating_sub(remaining));
        });
    }

    pub(crate) fn usage(&self, now: DateTime<Utc>) -> DailyUsage {
        let st = self.with_today(now, |st| *st);
        DailyUsage {
            limit: self.limit.requests,
            used: st.used,
            exhausted: st.exhausted,
            resets_at: self.limit.next_reset(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiters are served in the order they came, also against a task that
    /// asks again the moment it is served (which `governor` alone lets jump
    /// the queue).
    // One thread: each spawned waiter runs up to its wait while this task
    // sleeps, so the order they come in is the order they were spawned.
    #[tokio::test(flavor = "current_thread")]
    async fn the_limiter_serves_waiters_in_arrival_order() {
        let limiter = RateLimit::per_second(40).limiter();
        let order = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A greedy task: asks again as soon as it is served.
        let greedy = {
            let (limiter, order, stop) = (limiter.clone(), order.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    limiter.until_ready().await;
                    order
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(usize::MAX);
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut waiters = Vec::new();
        for i in 0..8 {
            let (limiter, order) = (limiter.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                limiter.until_ready().await;
                order.lock().unwrap_or_else(|p| p.into_inner()).push(i);
            }));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        for w in waiters {
            w.await.expect("waiter");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        greedy.await.expect("greedy");
        let order = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let served: Vec<usize> = order.iter().copied().filter(|&i| i != usize::MAX).collect();
        assert_eq!(served, (0..8).collect::<Vec<_>>(), "{order:?}");
        // Between two waiters the greedy task is served at most once: it
        // queues behind those already waiting.
        let first = order.iter().position(|&i| i == 0).unwrap_or(0);
        let last = order.iter().position(|&i| i == 7).unwrap_or(0);
        let greedy_between = order[first..last]
            .iter()
            .filter(|&&i| i == usize::MAX)
            .count();
        assert!(greedy_between <= 7, "{order:?}");
    }

    #[test]
    fn daily_counter_stops_at_the_quota_and_resets_at_midnight() {
        let limit = DailyLimit::utc(3);
        let c = DailyCounter::new(limit);
        let t = "2026-11-22T23:59:00Z".parse::<DateTime<Utc>>().unwrap();
        for _ in 0..3 {
            assert!(c.take(t).is_ok());
        }
        let reset = "2026-11-23T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(c.take(t), Err(reset));
        assert_eq!(c.usage(t).remaining(), 0);
        // A new day: the quota is full again.
        assert!(c.take(reset).is_ok());
        assert_eq!(c.usage(reset).used, 1);
        // The provider's word wins: a daily 429 spends the rest of the day.
        assert_eq!(
            c.exhaust(reset),
            "2026-11-24T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(c.take(reset).is_err());
    }

    #[test]
    fn days_start_at_the_configured_offset() {
        // Midnight in UTC-5.
        let limit = DailyLimit::utc(10).with_reset_offset(FixedOffset::west_opt(5 * 3600).unwrap());
        let t = "2026-11-22T04:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            limit.next_reset(t),
            "2026-11-22T05:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let c = DailyCounter::new(limit);
        c.set_remaining(t, 4);
        assert_eq!(c.usage(t).used, 6);
    }

    #[test]
    fn quota_keeps_a_margin_under_the_window() {
        let q = RateLimit::new(190, Duration::from_secs(10)).quota();
        // 190 less 3.8 (2%) per 10 s: at most 187 in any 10 s.
        assert_eq!(
            q.replenish_interval(),
            Duration::from_secs(10).div_f64(186.2)
        );
        assert_eq!(q.burst_size().get(), 1);
        // 4 per second less half a request: at most 4 in any second.
        let q = RateLimit::per_second(4).quota();
        assert_eq!(q.replenish_interval(), Duration::from_secs(1).div_f64(3.5));
        for (n, per) in [
            (1u32, 1u64),
            (4, 1),
            (10, 1),
            (100, 10),
            (190, 10),
            (250, 10),
        ] {
            let interval = RateLimit::new(n, Duration::from_secs(per))
                .quota()
                .replenish_interval();
            let in_window = (Duration::from_secs(per).as_nanos() - 1) / interval.as_nanos() + 1;
            assert!(in_window <= u128::from(n), "{n}/{per}s lets {in_window} in");
        }
    }
}
