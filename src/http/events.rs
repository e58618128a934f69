//! What the client tells whoever is watching: every request, retry, 429 and
//! rate-limiter wait, as it happens.
//!
//! The sync engine watches each stream's reads through a task-local
//! observer, so events (and the per-stream request counts in its reports)
//! belong to the stream whose read made the request, even when several
//! streams share one client at once. Requests made from a task the source
//! spawned itself are not seen by the engine's observer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One thing the API client did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpEvent {
    /// A request was sent (every attempt counts).
    Request,
    /// A failed attempt will be retried after `wait`.
    Retry {
        /// 1 for the first retry of the request.
        attempt: u32,
        /// The HTTP status that failed (`None`: a transport error or timeout).
        status: Option<u16>,
        /// The backoff or `Retry-After` before the next attempt.
        wait: Duration,
    },
    /// The provider answered 429.
    RateLimited,
    /// The request waited on the client-side rate limiter for `waited`.
    LimiterWait {
        /// Time spent waiting.
        waited: Duration,
    },
}

/// Something watching a client's events.
pub type Observer = Arc<dyn Fn(&HttpEvent) + Send + Sync>;

tokio::task_local! {
    static OBSERVER: Observer;
}

/// Runs `fut` with `observer` seeing the events of every request it makes.
pub async fn observe<F: Future>(observer: Observer, fut: F) -> F::Output {
    OBSERVER.scope(observer, fut).await
}

pub(crate) fn emit(event: HttpEvent) {
    let _ = OBSERVER.try_with(|o| o(&event));
}
