//! Running syncs on a schedule: cron expressions in a time zone, missed runs
//! caught up once, never two runs at the same time.
//!
//! ```no_run
//! # async fn run() -> headwater::Result<()> {
//! use headwater::schedule::{Schedule, Scheduler};
//!
//! // The HubSpot-to-S3 flow: daily at 07:00 UTC.
//! let daily = Schedule::parse("daily at 07:00 UTC")?;
//! // The multi-portal dashboard: 02:00 in New York, whatever the season.
//! let nightly = Schedule::parse("02:00 America/New_York")?;
//! // Any cron expression (5 or 6 fields) with a time zone.
//! let weekdays = Schedule::cron("30 6 * * MON-FRI", "Europe/Berlin")?;
//!
//! let scheduler = Scheduler::new(daily, "state/schedule.json");
//! scheduler
//!     .run(|slot| async move { println!("sync for {slot}") }, std::future::pending())
//!     .await?;
//! # let _ = (nightly, weekdays);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// When a job runs: a cron expression evaluated in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    text: String,
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Schedule {
    /// A cron expression (`min hour day month weekday`, optionally with a
    /// leading seconds field) in the IANA time zone `tz` (`UTC`,
    /// `America/New_York`). Wall-clock times are kept across daylight-saving
    /// changes: "02:00 America/New_York" is 02:00 local in winter and summer.
    pub fn cron(expr: &str, tz: &str) -> Result<Self> {
        let cron = Cron::from_str(expr)
            .map_err(|e| Error::Config(format!("bad cron expression `{expr}`: {e}")))?;
        let tz: Tz = tz
            .parse()
            .map_err(|e| Error::Config(format!("unknown time zone `{tz}`: {e}")))?;
        Ok(Schedule {
            cron,
            tz,
            text: format!("{expr} ({tz})"),
        })
    }

    /// Every day at `HH:MM` in `tz`.
    pub fn daily_at(time: &str, tz: &str) -> Result<Self> {
        let (h, m) = time
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60)
            .ok_or_else(|| Error::Config(format!("bad time of day `{time}` (want HH:MM)")))?;
        let mut s = Self::cron(&format!("{m} {h} * * *"), tz)?;
        s.text = format!("daily at {h:02}:{m:02} {}", s.tz);
        Ok(s)
    }

    /// Reads `daily at HH:MM TZ`, `HH:MM TZ`, or `cron EXPR... TZ`.
    pub fn parse(spec: &str) -> Result<Self> {
        let words: Vec<&str> = spec.split_whitespace().collect();
        match words.as_slice() {
            ["daily", "at", time, tz] | [time, tz] if time.contains(':') => Self::daily_at(time, tz),
            ["cron", rest @ .., tz] if rest.len() >= 5 => Self::cron(&rest.join(" "), tz),
            _ => Err(Error::Config(format!(
                "bad schedule `{spec}`: use `daily at 07:00 UTC`, `02:00 America/New_York` or `cron 0 7 * * * UTC`"
            ))),
        }
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| Error::Config(format!("schedule {self} has no next run: {e}")))
    }

    /// The latest scheduled time in `(last_run, now]`, if any: the run that
    /// is due. Several missed times give one run, not one per missed time.
    pub fn due(
        &self,
        last_run: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let next = self.next_after(last_run)?;
        if next > now {
            return Ok(None);
        }
        let local = now.with_timezone(&self.tz);
        let latest = self
            .cron
            .find_previous_occurrence(&local, true)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(next);
        Ok(Some(latest.max(next)))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ScheduleState {
    schedule: String,
    last_run: DateTime<Utc>,
}

/// Runs a job on a [`Schedule`], remembering the last run in a small file
/// (written atomically), so that:
/// - runs missed while the process was down are caught up by one run, not
///   one per missed time;
/// - a run still going when the next is due is not overlapped: the next
///   starts after it ends (and missed slots coalesce again);
/// - a run interrupted by a crash is run again at restart (the sync itself
///   resumes from its checkpoints).
///
/// On first start (no state file) it waits for the next scheduled time.
#[derive(Debug, Clone)]
pub struct Scheduler {
    schedule: Schedule,
    state: PathBuf,
}

impl Scheduler {
    /// A scheduler keeping its state in `state_file`.
    pub fn new(schedule: Schedule, state_file: impl Into<PathBuf>) -> Self {
        Scheduler {
            schedule,
            state: state_file.into(),
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The last completed run's scheduled time, if any.
    pub fn last_run(&self) -> Result<Option<DateTime<Utc>>> {
        match std::fs::read(&self.state) {
            Ok(bytes) => serde_json::from_slice::<ScheduleState>(&bytes)
                .map(|s| Some(s.last_run))
                .map_err(|e| {
                    Error::state(
                        format!("unreadable schedule state {}", self.state.display()),
                        e,
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::state(
                format!("cannot read {}", self.state.display()),
                e,
            )),
        }
    }

    fn record(&self, slot: DateTime<Utc>) -> Result<()> {
        let dir = match self.state.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::state("cannot create the schedule state directory", e))?;
        let bytes = serde_json::to_vec_pretty(&ScheduleState {
            schedule: self.schedule.to_string(),
            last_run: slot,
        })
        .map_err(|e| Error::state("cannot encode schedule state", e))?;
        crate::fsutil::write_atomically(&dir, &self.state, &bytes)
            .map_err(|e| Error::state(format!("cannot write {}", self.state.display()), e))
    }

    /// Runs `job(scheduled_time)` at every due time until `shutdown`
    /// completes (checked between runs; a run in progress is finished).
    pub async fn run<F, Fut>(&self, mut job: F, shutdown: impl Future<Output = ()>) -> Result<()>
    where
        F: FnMut(DateTime<Utc>) -> Fut,
        Fut: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut last = match self.last_run()? {
            Some(t) => t,
            None => {
                let now = Utc::now();
                self.record(now)?;
                now
            }
        };
        loop {
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                return Ok(());
            }
            let now = Utc::now();
            if let Some(slot) = self.schedule.due(last, now)? {
                tracing::info!(schedule = %self.schedule, %slot, "scheduled run");
                job(slot).await;
                self.record(slot)?;
                last = slot;
                continue;
            }
            let next = self.schedule.next_after(last.max(now))?;
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn parses_the_flows_schedules() {
        let s = Schedule::parse("daily at 07:00 UTC").expect("parse");
        assert_eq!(
            s.next_after(utc(2026, 1, 1, 6, 0)).expect("next"),
            utc(2026, 1, 1, 7, 0)
        );
        assert_eq!(
            s.next_after(utc(2026, 1, 1, 7, 0)).expect("next"),
            utc(2026, 1, 2, 7, 0)
        );
        let ny = Schedule::parse("02:00 America/New_York").expect("parse");
        // 02:00 EST is 07:00 UTC in winter, 02:00 EDT is 06:00 UTC in summer.
        assert_eq!(
            ny.next_after(utc(2026, 1, 10, 0, 0)).expect("next"),
            utc(2026, 1, 10, 7, 0)
        );
        assert_eq!(
            ny.next_after(utc(2026, 7, 10, 0, 0)).expect("next"),
            utc(2026, 7, 10, 6, 0)
        );
        let c = Schedule::parse("cron 30 6 * * MON-FRI Europe/Berlin").expect("parse");
        // 2026-11-21 is a Saturday: next is Monday 06:30 CET = 05:30 UTC.
        assert_eq!(
            c.next_after(utc(2026, 11, 21, 12, 0)).expect("next"),
            utc(2026, 11, 23, 5, 30)
        );
        for bad in [
            "daily at 25:00 UTC",
            "07:00 Mars/Olympus",
            "whenever",
            "cron * * UTC",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missed_runs_are_caught_up_once() {
        let s = Schedule::parse("daily at 07:00 UTC").expect("parse");
        let last = utc(2026, 1, 1, 7, 0);
        assert_eq!(s.due(last, utc(2026, 1, 2, 6, 59)).expect("due"), None);
        assert_eq!(
            s.due(last, utc(2026, 1, 2, 7, 0)).expect("due"),
            Some(utc(2026, 1, 2, 7, 0))
        );
        // Down for three days: one run, for the latest missed time.
        assert_eq!(
            s.due(last, utc(2026, 1, 5, 9, 0)).expect("due"),
            Some(utc(2026, 1, 5, 7, 0))
        );
        // After that run nothing more is due until the next time.
        assert_eq!(
            s.due(utc(2026, 1, 5, 7, 0), utc(2026, 1, 5, 9, 0))
                .expect("due"),
            None
        );
    }

    #[tokio::test]
    async fn runs_never_overlap_and_the_last_run_is_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s/state.json");
        // Every second; the job takes 1.5 s, longer than the interval.
        let sched = Scheduler::new(Schedule::cron("* * * * * *", "UTC").expect("cron"), &path);
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let slots = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, sl) = (running.clone(), slots.clone());
        sched
            .run(
                move |slot| {
                    let (r, sl) = (r.clone(), sl.clone());
                    async move {
                        assert_eq!(
                            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                            0,
                            "overlapping runs"
                        );
                        sl.lock().expect("lock").push(slot);
                        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                        r.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                },
                tokio::time::sleep(std::time::Duration::from_millis(4200)),
            )
            .await
            .expect("run");
        let slots = slots.lock().expect("lock").clone();
        assert!((2..=3).contains(&slots.len()), "{slots:?}");
        assert!(slots.windows(2).all(|w| w[1] > w[0]));
        let last = sched.last_run().expect("state").expect("some");
        assert_eq!(last, *slots.last().expect("one"));
    }
}
