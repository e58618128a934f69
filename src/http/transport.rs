//! The one way headwater sends a request and reads its answer: every client
//! (the [`super::ApiClient`], the OAuth token endpoint, Mailchimp's metadata
//! call, BigQuery's client and service-account token exchange) goes through
//! [`send`] or [`read_body`].
//!
//! - The body is read as a stream of chunks, counted after decompression
//!   (gzip is on), and refused past the client's cap
//!   ([`DEFAULT_MAX_RESPONSE_BYTES`] unless configured): a gzip bomb or an
//!   endless body ends in [`Error::ResponseTooLarge`], not in all the memory.
//! - An error answer's body is read up to [`MAX_ERROR_BODY_BYTES`] and the
//!   rest is left unread: it is only parsed for a message.
//! - A transport error's text never holds a URL: `reqwest`'s URL is dropped
//!   ([`reqwest::Error::without_url`]) and any URL left in the error chain
//!   is replaced with `[url]`. A URL can carry a token (`HubSpot`'s
//!   token-info call puts the access token in the path).

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::Error;

/// The default cap on one response body, after decompression: 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Most bytes of an error answer's body that are read (64 KiB); the rest is
/// dropped with the connection. Errors show at most 4 KiB of it anyway.
pub const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

/// An answer, read whole (within the cap).
#[derive(Debug)]
pub(crate) struct Received {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why no answer was read.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Connect, timeout, reset, a bad body encoding: worth retrying.
    Transport {
        /// The error chain, without any URL.
        message: String,
        timeout: bool,
    },
    /// The body is larger than the cap: not worth retrying.
    TooLarge { limit: u64 },
}

impl Failure {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        Failure::Transport {
            timeout: e.is_timeout(),
            message: transport_message(e),
        }
    }

    /// True for failures another attempt may not have.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Failure::Transport { .. })
    }

    /// The [`Error`] of a request to `path` (as it may be shown) of `provider`.
    pub(crate) fn into_error(self, provider: &'static str, path: impl Into<String>) -> Error {
        match self {
            Failure::Transport { message, timeout } => Error::Transport {
                provider,
                path: path.into(),
                message,
                timeout,
            },
            Failure::TooLarge { limit } => Error::ResponseTooLarge {
                provider,
                path: path.into(),
                limit,
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transport { message, .. } => f.write_str(message),
            Failure::TooLarge { limit } => {
                write!(f, "the response body is larger than {limit} bytes")
            }
        }
    }
}

/// Sends `request` and reads the answer's body within `max_body` bytes.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    max_body: u64,
) -> Result<Received, Failure> {
    let resp = request.send().await.map_err(Failure::from_reqwest)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_body(resp, max_body).await?;
    Ok(Received {
        status,
        headers,
        body,
    })
}

/// Reads a response's body: a success's body up to `max_body` bytes
/// (decompressed) or [`Failure::TooLarge`]; any other status's body cut at
/// [`MAX_ERROR_BODY_BYTES`] (or `max_body`, if smaller).
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    max_body: u64,
) -> Result<Bytes, Failure> {
    let success = resp.status().is_success();
    let cap = if success {
        max_body
    } else {
        max_body.min(MAX_ERROR_BODY_BYTES)
    };
    if success && resp.content_length().is_some_and(|n| n > cap) {
        return Err(Failure::TooLarge { limit: max_body });
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(Failure::from_reqwest)? {
        let room = usize::try_from(cap.saturating_sub(buf.len() as u64)).unwrap_or(usize::MAX);
        if chunk.len() > room {
            if success {
                return Err(Failure::TooLarge { limit: max_body });
            }
            buf.extend_from_slice(&chunk[..room]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A `reqwest` error and its sources on one line, without any URL.
pub(crate) fn transport_message(e: reqwest::Error) -> String {
    super::error_chain(&e.without_url())
}

/// `text` with every `scheme://…` replaced by `[url]` (up to the next
/// space, quote or closing bracket).
pub(crate) fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_len = rest[..at]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .map(char::len_utf8)
            .sum::<usize>();
        let start = at - scheme_len;
        let tail = &rest[at + 3..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | ']' | '>' | '"' | '\''))
            .unwrap_or(tail.len());
        out.push_str(&rest[..start]);
        out.push_str("[url]");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_scrubbed_from_text() {
        assert_eq!(
            scrub_urls(
                "error sending request for url (http://127.0.0.1:1/oauth/v1/access-tokens/SECRET-1): boom"
            ),
            "error sending request for url ([url]): boom"
        );
        assert_eq!(
            scrub_urls("a https://h/x?t=SECRET b git+ssh://u@h/p"),
            "a [url] b [url]"
        );
        assert_eq!(scrub_urls("no url here"), "no url here");
        assert_eq!(scrub_urls("://odd"), "[url]");
    }
}
