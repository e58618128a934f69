//! Reading one time window of a collection sorted by a time field
//! (`last_changed`, `create_time`, `send_time`) without skipping or
//! repeating a record while the data changes under the read.
//!
//! Deep offsets are fragile: a member changed during the read moves to the
//! end of a `last_changed` order and every later offset shifts by one, so an
//! offset walk skips a record. Instead each request *re-windows* on the
//! time filter: `since = at - 1 s`, where `at` is the latest time read, and
//! drops the ids already read at those times (the one-second overlap keeps
//! the read exact whether the API's `since_*` filters include their bound or
//! not). The upper bound `hi` is fixed when the read begins, so records
//! added or changed during the read fall outside it and are read by the next
//! run, whose window starts there.
//!
//! Offsets are used only inside a tie, when more records share one second
//! than half a page (a bulk import): the records read at those times form a
//! prefix of the order, so the next page starts [`MARGIN`] records before
//! the end of that prefix. A page whose first record was not read yet shows
//! the prefix shrank (records read earlier left the window): the read steps
//! back instead of skipping, and learns by how much the prefix shrank
//! (`skew`). Whatever happens, a full page yields at least
//! `page_size - MARGIN` new records, so the read always ends.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// How far before the estimated end of the read prefix a page starts.
pub(crate) const MARGIN: u64 = 500;
/// Requests in a row that read nothing new before the read gives up.
const MAX_IDLE: u32 = 64;

/// Where a read of one time window stands; serialized into stream states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Window {
    /// The lower bound (unix seconds, `since_*`); `None`: from the start.
    #[serde(default)]
    pub lo: Option<i64>,
    /// The upper bound (unix seconds, `before_*`), fixed when the read began.
    pub hi: i64,
    /// The latest time read so far.
    #[serde(default)]
    pub at: Option<i64>,
    /// Ids read at times from `at - 1 s` on, with their times.
    #[serde(default)]
    pub seen: Vec<(String, i64)>,
    /// Read ids (at the query's times) the API no longer returns.
    #[serde(default)]
    pub skew: u64,
    /// Records read from this window.
    #[serde(default)]
    pub loaded: u64,
    /// `total_items` of the window's first request.
    #[serde(default)]
    pub reported: Option<u64>,
    /// Requests in a row that read nothing new.
    #[serde(default)]
    pub idle: u32,
}

/// What one answer brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advance {
    /// Indexes of the items not read before, in order.
    pub new: Vec<usize>,
    /// True when the window is read to its end.
    pub done: bool,
}

impl Window {
    /// A window `[lo, hi)`.
    pub fn new(lo: Option<i64>, hi: i64) -> Self {
        Window {
            lo,
            hi,
            at: None,
            seen: Vec::new(),
            skew: 0,
            loaded: 0,
            reported: None,
            idle: 0,
        }
    }

    /// The next request's lower bound: one second before the latest time
    /// read, never before `lo`.
    pub fn since(&self) -> Option<i64> {
        match (self.lo, self.at) {
            (Some(lo), Some(at)) => Some(lo.max(at - 1)),
            (None, Some(at)) => Some(at - 1),
            (lo, None) => lo,
        }
    }

    fn seen_in_query(&self) -> u64 {
        let since = self.since();
        self.seen
            .iter()
            .filter(|(_, t)| since.is_none_or(|s| *t >= s))
            .count() as u64
    }

    /// The next request's offset: 0 unless a tie holds more than
    /// [`MARGIN`] read records.
    pub fn offset(&self) -> u64 {
        self.seen_in_query()
            .saturating_sub(self.skew)
            .saturating_sub(MARGIN)
    }

    /// Takes the answer to the request made at `offset` (with
    /// [`Window::since`] as its lower bound): the id and time (unix seconds)
    /// of each item in order, and the total the API reported.
    ///
    /// Returns `Err` with a description when requests keep reading nothing
    /// new (an API that ignores the filters or the order).
    pub fn advance(
        &mut self,
        offset: u64,
        items: &[(&str, Option<i64>)],
        total: Option<u64>,
        page_size: u64,
    ) -> Result<Advance, String> {
        if self.at.is_none() && self.seen.is_empty() && offset == 0 && self.reported.is_none() {
            self.reported = total;
        }
        let before = self.seen_in_query();
        let seen: HashSet<&str> = self.seen.iter().map(|(id, _)| id.as_str()).collect();
        let first_read = items.first().is_some_and(|(id, _)| seen.contains(id));
        if offset > 0 && !first_read {
            // The read prefix ends at or before `offset`: step back.
            self.skew = before.saturating_sub(offset);
            return self.idle();
        }
        let k = items.iter().take_while(|(id, _)| seen.contains(id)).count() as u64;
        // The prefix ends inside this page (or at least at its end).
        self.skew = before.saturating_sub(offset + k);
        let new: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| !seen.contains(id))
            .map(|(i, _)| i)
            .collect();
        drop(seen);
        let old_since = self.since();
        for &i in &new {
            let (id, t) = items[i];
            let t = t.or(self.at).or(self.lo).unwrap_or(i64::MIN);
            self.at = Some(self.at.map_or(t, |a| a.max(t)));
            self.seen.push((id.to_owned(), t));
        }
        self.loaded += new.len() as u64;
        let since = self.since();
        if since != old_since {
            self.seen.retain(|(_, t)| since.is_none_or(|s| *t >= s));
            self.skew = 0;
        }
        let n = items.len() as u64;
        let done = n < page_size || total.is_some_and(|t| offset + n >= t);
        if new.is_empty() && !done {
            return self.idle();
        }
        self.idle = 0;
        Ok(Advance { new, done })
    }

    fn idle(&mut self) -> Result<Advance, String> {
        self.idle += 1;
        if self.idle > MAX_IDLE {
            return Err(format!(
                "{MAX_IDLE} requests in a row read nothing new (since {:?}, offset {})",
                self.since(),
                self.offset()
            ));
        }
        Ok(Advance {
            new: Vec::new(),
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collection sorted by (time, insertion), filtered like the API:
    /// `since` inclusive or exclusive, `before` exclusive.
    struct Api {
        rows: Vec<(String, i64)>,
        inclusive: bool,
        requests: usize,
    }

    impl Api {
        fn new(times: &[i64], inclusive: bool) -> Self {
            Api {
                rows: times
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("m{i}"), *t))
                    .collect(),
                inclusive,
                requests: 0,
            }
        }

        fn page(
            &mut self,
            since: Option<i64>,
            hi: i64,
            offset: u64,
            count: u64,
        ) -> (Vec<(String, i64)>, u64) {
            self.requests += 1;
            let mut rows: Vec<(usize, &(String, i64))> = self
                .rows
                .iter()
                .enumerate()
                .filter(|(_, (_, t))| {
                    *t < hi && since.is_none_or(|s| if self.inclusive { *t >= s } else { *t > s })
                })
                .collect();
            rows.sort_by_key(|(i, (_, t))| (*t, *i));
            let total = rows.len() as u64;
            let page = rows
                .into_iter()
                .skip(offset as usize)
                .take(count as usize)
                .map(|(_, r)| r.clone())
                .collect();
            (page, total)
        }

        /// Moves a row to `t` (a change): it goes to the end of the order.
        fn touch(&mut self, id: &str, t: i64) {
            let i = self.rows.iter().position(|(r, _)| r == id).expect("row");
            let (id, _) = self.rows.remove(i);
            self.rows.push((id, t));
        }
    }

    /// Reads the window with pages of `count`, calling `between(page_no,
    /// api)` after each page; returns the ids read in order.
    fn read(
        api: &mut Api,
        lo: Option<i64>,
        hi: i64,
        count: u64,
        mut between: impl FnMut(usize, &mut Api),
    ) -> Vec<String> {
        let mut w = Window::new(lo, hi);
        let mut out = Vec::new();
        let mut pages = 0;
        loop {
            let offset = w.offset();
            let (rows, total) = api.page(w.since(), hi, offset, count);
            let items: Vec<(&str, Option<i64>)> =
                rows.iter().map(|(id, t)| (id.as_str(), Some(*t))).collect();
            let step = w
                .advance(offset, &items, Some(total), count)
                .expect("advance");
            out.extend(step.new.iter().map(|&i| rows[i].0.clone()));
            // The state survives a checkpoint.
            w = serde_json::from_value(serde_json::to_value(&w).expect("ser")).expect("de");
            if step.done {
                return out;
            }
            between(pages, api);
            pages += 1;
            assert!(pages < 10_000, "the read must end");
        }
    }

    fn assert_once(ids: &[String], want: impl IntoIterator<Item = String>) {
        let set: HashSet<&String> = ids.iter().collect();
        assert_eq!(set.len(), ids.len(), "a record was read twice: {ids:?}");
        let want: HashSet<String> = want.into_iter().collect();
        let got: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(got, want);
    }

    #[test]
    fn distinct_times_read_once_in_one_request_per_page() {
        for inclusive in [true, false] {
            let times: Vec<i64> = (0..2_500).map(|i| 1_000 + i * 7).collect();
            let mut api = Api::new(&times, inclusive);
            let ids = read(&mut api, None, i64::MAX, 1000, |_, _| {});
            assert_once(&ids, (0..2_500).map(|i| format!("m{i}")));
            // 3 pages (1000 + 1000 + 500, the overlap re-reads one record).
            assert_eq!(api.requests, 3, "inclusive={inclusive}");
        }
    }

    #[test]
    fn ties_larger_than_a_page_are_read_by_offsets_without_loops() {
        for inclusive in [true, false] {
            // 3,000 records on one second, then 10 more.
            let mut times = vec![5_000; 3_000];
            times.extend((0..10).map(|i| 6_000 + i));
            let mut api = Api::new(&times, inclusive);
            let ids = read(&mut api, Some(4_000), 10_000, 1000, |_, _| {});
            assert_once(&ids, (0..3_010).map(|i| format!("m{i}")));
            assert!(api.requests <= 12, "{} requests", api.requests);
        }
    }

    #[test]
    fn records_changed_during_the_read_are_neither_skipped_nor_repeated() {
        for inclusive in [true, false] {
            // A tie of 2,400 (a bulk import) and 1,500 distinct times.
            let mut times = vec![5_000; 2_400];
            times.extend((0..1_500).map(|i| 6_000 + i));
            let mut api = Api::new(&times, inclusive);
            let hi = 20_000;
            let mut changed = Vec::new();
            let ids = read(&mut api, None, hi, 1000, |page, api| {
                // After each page, change records already read and not yet
                // read, inside and outside the tie: they move past `hi`.
                for id in [page * 7, 1_000 + page * 13, 2_390 - page, 3_000 + page * 5] {
                    let id = format!("m{id}");
                    if !changed.contains(&id) {
                        api.touch(&id, hi + 1);
                        changed.push(id);
                    }
                }
            });
            // Every record not changed during the read is read once; changed
            // ones are read at most once (the next run reads them anyway).
            let set: HashSet<&String> = ids.iter().collect();
            assert_eq!(set.len(), ids.len(), "read twice (inclusive={inclusive})");
            for i in 0..3_900 {
                let id = format!("m{i}");
                if !changed.contains(&id) {
                    assert!(set.contains(&id), "{id} skipped (inclusive={inclusive})");
                }
            }
            // The next run's window starts at `hi` and gets the changes.
            let next = read(&mut api, Some(hi - 1), hi + 10, 1000, |_, _| {});
            assert_once(&next, changed.clone());
        }
    }

    #[test]
    fn a_bulk_change_of_records_already_read_steps_back_instead_of_skipping() {
        for inclusive in [true, false] {
            let mut times = vec![5_000; 2_600];
            times.extend((0..300).map(|i| 6_000 + i));
            let mut api = Api::new(&times, inclusive);
            let hi = 20_000;
            let mut changed = Vec::new();
            let ids = read(&mut api, None, hi, 1000, |page, api| {
                if page == 0 {
                    // 700 of the 1,000 records just read leave the tie: the
                    // read prefix shrinks by more than the margin.
                    for i in 0..700 {
                        let id = format!("m{i}");
                        api.touch(&id, hi + 1);
                        changed.push(id);
                    }
                }
            });
            let set: HashSet<&String> = ids.iter().collect();
            assert_eq!(set.len(), ids.len(), "read twice (inclusive={inclusive})");
            for i in 700..2_900 {
                let id = format!("m{i}");
                assert!(set.contains(&id), "{id} skipped (inclusive={inclusive})");
            }
        }
    }

    #[test]
    fn a_stuck_api_is_an_error_not_a_loop() {
        let mut w = Window::new(None, 100);
        let items: Vec<(String, i64)> = (0..10).map(|i| (format!("m{i}"), 50)).collect();
        let view: Vec<(&str, Option<i64>)> = items
            .iter()
            .map(|(id, t)| (id.as_str(), Some(*t)))
            .collect();
        let first = w.advance(0, &view, Some(1_000), 10).expect("first");
        assert_eq!(first.new.len(), 10);
        // The same full page over and over.
        let mut failed = false;
        for _ in 0..100 {
            if w.advance(w.offset(), &view, Some(1_000), 10).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
