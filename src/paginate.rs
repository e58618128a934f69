//! One generic cursor pagination over `futures::Stream`, used by every
//! provider: `HubSpot`'s `after`, Constant Contact's `_links.next.href`,
//! Mailchimp's offset/count ([`paginate_offset`]).

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hash};

use futures::Stream;

use crate::{Error, Result};

/// One page from a paginated listing: its items and the cursor of the next
/// page (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Paged<T, C> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The cursor for the next page, if there is one.
    pub next: Option<C>,
}

impl<T, C> Paged<T, C> {
    /// A page.
    pub fn new(items: Vec<T>, next: Option<C>) -> Self {
        Paged { items, next }
    }
}

/// The repeat detection of one walk over upstream cursors: remembers every
/// cursor it was shown (as a 64-bit hash) and says when one comes again.
/// [`paginate`] uses it, and so does every other loop that follows cursors
/// a server hands out (`HubSpot`'s association result pages, BigQuery's
/// query result pages), so none of them can loop forever on a server that
/// repeats itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct CursorGuard {
    hasher: std::collections::hash_map::RandomState,
    seen: HashSet<u64>,
}

impl CursorGuard {
    pub(crate) fn new() -> Self {
        CursorGuard::default()
    }

    /// True the first time `cursor` is shown, false on any later time.
    pub(crate) fn first_time<C: Hash + ?Sized>(&mut self, cursor: &C) -> bool {
        self.seen.insert(self.hasher.hash_one(cursor))
    }

    /// How many distinct cursors were shown.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

/// Turns "fetch the page at this cursor" into a stream of pages.
///
/// - Nothing is fetched until the stream is polled.
/// - `start` is the cursor of the first page (`None`: the beginning), so a
///   listing resumes from a checkpoint.
/// - The stream ends after the first error.
/// - A cursor the listing already returned ends the stream with
///   [`Error::CursorRepeated`] instead of looping forever; the page that
///   carried it is not yielded (its position cannot be checkpointed).
pub fn paginate<T, C, F, Fut>(
    provider: &'static str,
    what: impl Into<String>,
    start: Option<C>,
    mut fetch: F,
) -> impl Stream<Item = Result<Paged<T, C>>>
where
    C: Clone + Hash + std::fmt::Debug,
    F: FnMut(Option<C>) -> Fut,
    Fut: Future<Output = Result<Paged<T, C>>>,
{
    struct St<C> {
        cursor: Option<C>,
        seen: CursorGuard,
        pages: u64,
        done: bool,
        what: String,
    }
    let mut seen = CursorGuard::new();
    if let Some(c) = &start {
        seen.first_time(c);
    }
    let st = St {
        cursor: start,
        seen,
        pages: 0,
        done: false,
        what: what.into(),
    };
    futures::stream::unfold(st, move |mut st| {
        let fut = (!st.done).then(|| fetch(st.cursor.clone()));
        async move {
            let page = match fut?.await {
                Ok(page) => page,
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            };
            st.pages += 1;
            match &page.next {
                None => st.done = true,
                Some(next) => {
                    if !st.seen.first_time(next) {
                        st.done = true;
                        let err = Error::CursorRepeated {
                            provider,
                            what: std::mem::take(&mut st.what),
                            cursor: format!("{next:?}"),
                            pages: st.pages - 1,
                        };
                        return Some((Err(err), st));
                    }
                    st.cursor = Some(next.clone());
                }
            }
            Some((Ok(page), st))
        }
    })
}

/// One page of an offset listing (`count` + `offset`, as Mailchimp pages):
/// its items and the total the provider reports for the whole listing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OffsetPage<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The number of items the provider says the listing holds
    /// (Mailchimp: `total_items`), if it says.
    pub total: Option<u64>,
}

impl<T> OffsetPage<T> {
    /// A page.
    pub fn new(items: Vec<T>, total: Option<u64>) -> Self {
        OffsetPage { items, total }
    }
}

/// Offset pagination as a stream of pages: `fetch(offset)` gets the page
/// starting at `offset` with at most `page_size` items; the cursor of each
/// page is the offset of the next one.
///
/// The walk ends after a page shorter than `page_size` (an empty page
/// included) or one that reaches the reported total, so a listing of exactly
/// `n * page_size` items costs no extra empty request when the provider
/// reports its total. Built on [`paginate`]: nothing is fetched until
/// polled, the stream ends after the first error, and `start` resumes from a
/// checkpointed offset.
///
/// Offsets shift when items are added or removed before the current offset
/// while the walk runs; callers that need a stable walk fix the listing
/// (a sort and an upper time bound taken before the first page).
pub fn paginate_offset<T, F, Fut>(
    provider: &'static str,
    what: impl Into<String>,
    start: u64,
    page_size: u32,
    mut fetch: F,
) -> impl Stream<Item = Result<Paged<T, u64>>>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<OffsetPage<T>>>,
{
    let page_size = u64::from(page_size.max(1));
    paginate(provider, what, Some(start), move |offset: Option<u64>| {
        let offset = offset.unwrap_or(0);
        let fut = fetch(offset);
        async move {
            let page = fut.await?;
            let n = page.items.len() as u64;
            let end = offset + n;
            let last = n < page_size || page.total.is_some_and(|t| end >= t);
            Ok(Paged::new(page.items, (!last).then_some(end)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn walks_until_no_next_and_resumes_from_start() {
        let pages: Vec<_> = paginate("test", "numbers", Some(2u32), |c| async move {
            let c = c.unwrap_or(0);
            Ok(Paged::new(vec![c], (c < 4).then_some(c + 1)))
        })
        .collect()
        .await;
        let items: Vec<u32> = pages
            .into_iter()
            .flat_map(|p| p.expect("page").items)
            .collect();
        assert_eq!(items, vec![2, 3, 4]);
    }

    #[tokio::test]
    async fn a_repeated_cursor_is_an_error_not_a_loop() {
        let results: Vec<_> = paginate("test", "loop", None, |c: Option<u32>| async move {
            // 0 -> 1 -> 2 -> 1 ...
            let next = match c.unwrap_or(0) {
                0 => 1,
                1 => 2,
                _ => 1,
            };
            Ok(Paged::new(vec![c.unwrap_or(0)], Some(next)))
        })
        .collect()
        .await;
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[1].is_ok());
        match &results[2] {
            Err(Error::CursorRepeated { pages, cursor, .. }) => {
                assert_eq!(*pages, 2);
                assert_eq!(cursor, "1");
            }
            other => panic!("expected CursorRepeated, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn offset_pages_stop_at_a_short_page_or_the_total() {
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        // 25 items in pages of 10, total reported: 3 calls (0, 10, 20).
        let pages: Vec<_> = paginate_offset("test", "items", 0, 10, move |offset| {
            seen.lock().expect("lock").push(offset);
            async move {
                let items: Vec<u64> = (offset..25.min(offset + 10)).collect();
                Ok(OffsetPage::new(items, Some(25)))
            }
        })
        .collect()
        .await;
        let items: Vec<u64> = pages
            .into_iter()
            .flat_map(|p| p.expect("page").items)
            .collect();
        assert_eq!(items, (0..25).collect::<Vec<_>>());
        assert_eq!(*calls.lock().expect("lock"), vec![0, 10, 20]);

        // Exactly 20 with the total known: no empty third request; resume at 10.
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let pages: Vec<_> = paginate_offset("test", "items", 10, 10, move |offset| {
            seen.lock().expect("lock").push(offset);
            async move { Ok(OffsetPage::new((offset..offset + 10).collect(), Some(20))) }
        })
        .collect()
        .await;
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].as_ref().expect("page").next, None);
        assert_eq!(*calls.lock().expect("lock"), vec![10]);

        // Without a total, a full page asks for the next one; an empty one ends it.
        let pages: Vec<_> = paginate_offset("test", "items", 0, 5, |offset| async move {
            let items: Vec<u64> = if offset < 10 {
                (offset..offset + 5).collect()
            } else {
                Vec::new()
            };
            Ok(OffsetPage::new(items, None))
        })
        .collect()
        .await;
        assert_eq!(pages.len(), 3);
        assert!(pages[2].as_ref().expect("page").items.is_empty());
    }

    #[tokio::test]
    async fn stops_after_the_first_error() {
        let mut calls = 0;
        let results: Vec<_> = paginate("test", "failing", None, |_c: Option<u32>| {
            calls += 1;
            let n = calls;
            async move {
                if n == 2 {
                    Err(Error::Config("boom".into()))
                } else {
                    Ok(Paged::new(vec![n], Some(n)))
                }
            }
        })
        .collect()
        .await;
        assert_eq!(results.len(), 2);
        assert!(results[1].is_err());
    }
}
