//! Decoding a page record by record, so one bad record does not fail the
//! page (and with it the stream, at the same checkpoint on every run).
//!
//! [`decode_page`] first decodes the page as it always did, in one pass: a
//! page without a bad record costs what it cost before. Only a page that
//! fails is decoded again, in two steps: the envelope (cursor, totals) with
//! each record kept as a borrowed [`RawValue`], then each record on its own.
//! A record that fails becomes a [`Rejected`] with its exact bytes and the
//! JSON path of the failure; the envelope and the other records survive.
//!
//! What each kind of bad record does to the envelope step:
//! - an unpaired surrogate (`"\ud800"`): `RawValue` skips escapes without
//!   checking the code point, so only the record's own decode fails;
//! - nesting past `serde_json`'s recursion limit (128): skipping a value is
//!   iterative and has no limit, so only the record's own decode fails;
//! - invalid UTF-8: `RawValue` refuses it, so each invalid byte (always
//!   `>= 0x80`, never JSON syntax) is replaced by `?` in a copy of the body
//!   of the same length; a record's offsets in the copy are its offsets in
//!   the body, so its original bytes are kept. A replaced byte outside every
//!   record (in a cursor) fails the page: the envelope cannot be trusted.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::source::Rejected;
use crate::{Error, Result};

/// A page body on its way to being decoded record by record.
pub(crate) struct RawPage<'a> {
    /// The bytes the envelope is parsed from: the body, or a copy of it with
    /// each invalid UTF-8 byte replaced by `?`.
    text: &'a [u8],
    /// The body as received.
    body: &'a [u8],
    /// Offsets of the replaced bytes, ascending.
    invalid: &'a [usize],
    /// The byte ranges of the records seen (kept only when bytes were
    /// replaced, to find replacements outside every record).
    covered: RefCell<Vec<Range<usize>>>,
    rejected: RefCell<Vec<Rejected>>,
}

impl<'a> RawPage<'a> {
    /// The bytes to parse the envelope from (with each record as a borrowed
    /// [`RawValue`]).
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.text
    }

    /// Decodes one record of the page. A record that does not decode is
    /// kept as [`Rejected`] (its bytes as received, the path `at` names plus
    /// the path inside it) and `None` is returned.
    pub(crate) fn record<T: DeserializeOwned>(
        &self,
        raw: &RawValue,
        at: impl FnOnce() -> String,
    ) -> Option<T> {
        let text = raw.get();
        let range = self.range_of(text);
        if !self.invalid.is_empty() {
            self.covered.borrow_mut().push(range.clone());
            let first = self.invalid.partition_point(|&i| i < range.start);
            if let Some(&bad) = self.invalid.get(first).filter(|&&i| i < range.end) {
                let byte = self.body.get(bad).copied().unwrap_or_default();
                self.reject(
                    &range,
                    at(),
                    format!(
                        "invalid UTF-8: byte 0x{byte:02x} at offset {} of the record",
                        bad - range.start
                    ),
                );
                return None;
            }
        }
        if let Ok(v) = serde_json::from_str(text) {
            return Some(v);
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let (inner, message) = match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => return Some(v),
            Err(e) => (e.path().to_string(), e.inner().to_string()),
        };
        let at = at();
        let path = match inner.as_str() {
            "" | "." => at,
            p if p.starts_with('[') => format!("{at}{p}"),
            p => format!("{at}.{p}"),
        };
        self.reject(&range, path, message);
        None
    }

    fn reject(&self, range: &Range<usize>, path: String, error: String) {
        let raw = self.body.get(range.clone()).unwrap_or_default().to_vec();
        self.rejected
            .borrow_mut()
            .push(Rejected::new(raw, path, error));
    }

    /// Where `text` (borrowed from [`RawPage::bytes`]) sits in the body.
    fn range_of(&self, text: &str) -> Range<usize> {
        let start = (text.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        match start.checked_add(text.len()) {
            Some(end) if end <= self.text.len() => start..end,
            _ => 0..0,
        }
    }
}

/// Decodes a page: `fast` decodes the whole body at once (today's decoder);
/// when it fails, `lenient` decodes the envelope from [`RawPage::bytes`]
/// with each record raw and each record with [`RawPage::record`]. Returns
/// what was decoded and the records that could not be. When the envelope
/// itself cannot be decoded, the page fails with `strict()` (the error the
/// one-pass decoder names, with its path).
pub(crate) fn decode_page<R>(
    body: &[u8],
    fast: impl FnOnce(&[u8]) -> serde_json::Result<R>,
    lenient: impl FnOnce(&RawPage<'_>) -> serde_json::Result<R>,
    strict: impl FnOnce() -> Error,
) -> Result<(R, Vec<Rejected>)> {
    if let Ok(r) = fast(body) {
        return Ok((r, Vec::new()));
    }
    let mut invalid = Vec::new();
    let text: Cow<'_, [u8]> = if std::str::from_utf8(body).is_ok() {
        Cow::Borrowed(body)
    } else {
        let mut copy = body.to_vec();
        let mut at = 0;
        while let Err(e) = std::str::from_utf8(&copy[at..]) {
            let start = at + e.valid_up_to();
            let end = e
                .error_len()
                .map_or(copy.len(), |n| start.saturating_add(n).min(copy.len()));
            for (i, b) in copy.iter_mut().enumerate().take(end).skip(start) {
                *b = b'?';
                invalid.push(i);
            }
            at = end;
        }
        Cow::Owned(copy)
    };
    let page = RawPage {
        text: &text,
        body,
        invalid: &invalid,
        covered: RefCell::new(Vec::new()),
        rejected: RefCell::new(Vec::new()),
    };
    let Ok(r) = lenient(&page) else {
        return Err(strict());
    };
    if !invalid.is_empty() {
        let covered = page.covered.borrow();
        if !invalid
            .iter()
            .all(|i| covered.iter().any(|r| r.contains(i)))
        {
            return Err(strict());
        }
    }
    Ok((r, page.rejected.into_inner()))
}

/// Fails with the first of `rejected` as an [`Error::Decode`] (the typed
/// SDK's answers stay strict: a caller asked for every item).
pub(crate) fn refuse(provider: &'static str, what: &str, rejected: Vec<Rejected>) -> Result<()> {
    match rejected.into_iter().next() {
        None => Ok(()),
        Some(r) => Err(Error::Decode {
            provider,
            what: what.to_owned(),
            path: r.path,
            message: r.error,
        }),
    }
}

/// The error a strict decode of `body` as `T` gives (with its JSON path),
/// for [`decode_page`]'s `strict`.
pub(crate) fn strict_error<T: DeserializeOwned>(
    provider: &'static str,
    what: impl FnOnce() -> String,
    body: &[u8],
) -> Error {
    match Error::decode::<T>(provider, what, body) {
        Err(e) => e,
        // Decodable as a whole but not record by record: name the page.
        Ok(_) => Error::Decode {
            provider,
            what: "page".into(),
            path: ".".into(),
            message: "the page decodes as a whole but not record by record".into(),
        },
    }
}

/// An optional time where the provider may send `null`, `""` or blanks for
/// "none" (`HubSpot` `archivedAt`, Constant Contact dates): those are `None`;
/// any other text must be a date-time.
pub(crate) fn opt_time<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<DateTime<Utc>>, D::Error> {
    d.deserialize_option(OptTime(std::marker::PhantomData))
}

struct OptTime<'de>(std::marker::PhantomData<&'de ()>);

impl<'de> serde::de::Visitor<'de> for OptTime<'de> {
    type Value = Option<DateTime<Utc>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a date-time, null or an empty string")
    }
    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Self::Value, E> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.parse::<DateTime<Utc>>().map(Some).map_err(E::custom)
    }
}

/// A value where the provider may send `null` for "none": `null` is the
/// type's default (an empty text).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Rec {
        id: String,
        name: String,
        #[serde(default, deserialize_with = "opt_time")]
        at: Option<DateTime<Utc>>,
        /// Any JSON (a field skipped as unknown is never too deep).
        #[serde(default)]
        deep: Option<serde_json::Value>,
    }

    #[derive(Deserialize)]
    struct Env<T> {
        results: Vec<T>,
        #[serde(default)]
        next: Option<String>,
    }

    type Decoded = ((Vec<Rec>, Option<String>), Vec<Rejected>);

    fn decode(body: &[u8]) -> Result<Decoded> {
        decode_page(
            body,
            |b| serde_json::from_slice::<Env<Rec>>(b).map(|e| (e.results, e.next)),
            |page| {
                let env: Env<&RawValue> = serde_json::from_slice(page.bytes())?;
                let items = env
                    .results
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| page.record(r, || format!("results[{i}]")))
                    .collect();
                Ok((items, env.next))
            },
            || strict_error::<Env<Rec>>("test", || "page".into(), body),
        )
    }

    fn page(bad: &[u8]) -> Vec<u8> {
        let mut b = br#"{"results":[{"id":"1","name":"a"},"#.to_vec();
        b.extend_from_slice(bad);
        b.extend_from_slice(br#",{"id":"3","name":"c"}],"next":"n2"}"#);
        b
    }

    fn one_rejected(bad: &[u8]) -> Rejected {
        let ((items, next), rejected) = decode(&page(bad)).expect("the page survives");
        assert_eq!(
            items.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["1", "3"]
        );
        assert_eq!(next.as_deref(), Some("n2"));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].raw, bad, "the exact bytes");
        rejected[0].clone()
    }

    #[test]
    fn a_record_with_invalid_utf8_is_rejected_with_its_bytes() {
        let r = one_rejected(b"{\"id\":\"2\",\"name\":\"caf\xff\xfe\"}");
        assert_eq!(r.path, "results[1]");
        assert!(r.error.contains("invalid UTF-8"), "{}", r.error);
    }

    #[test]
    fn a_record_with_an_unpaired_surrogate_is_rejected_with_its_path() {
        let r = one_rejected(br#"{"id":"2","name":"\ud800"}"#);
        assert_eq!(r.path, "results[1].name");
    }

    #[test]
    fn a_record_nested_past_the_recursion_limit_is_rejected() {
        let bad = format!(
            r#"{{"id":"2","name":"b","deep":{}{}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        let r = one_rejected(bad.as_bytes());
        assert!(r.error.contains("recursion limit"), "{}", r.error);
    }

    #[test]
    fn a_record_of_the_wrong_shape_is_rejected_with_its_path() {
        let r = one_rejected(br#"{"id":"2","name":7}"#);
        assert_eq!(r.path, "results[1].name");
    }

    #[test]
    fn blank_and_null_times_are_none_and_other_text_must_be_a_time() {
        let ((items, _), rejected) = decode(&page(
            br#"{"id":"2","name":"b","at":""},{"id":"4","name":"d","at":null},{"id":"5","name":"e","at":"2024-01-02T03:04:05Z"},{"id":"6","name":"f","at":"soon"}"#,
        ))
        .expect("decode");
        let ids: Vec<_> = items
            .iter()
            .map(|r| (r.id.as_str(), r.at.is_some()))
            .collect();
        assert_eq!(
            ids,
            [
                ("1", false),
                ("2", false),
                ("4", false),
                ("5", true),
                ("3", false)
            ]
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].path, "results[4].at");
    }

    #[test]
    fn a_bad_envelope_fails_the_page() {
        // Invalid UTF-8 in the cursor: the envelope cannot be trusted.
        let body = b"{\"results\":[{\"id\":\"1\",\"name\":\"a\"}],\"next\":\"n\xff\"}";
        assert!(matches!(decode(body), Err(Error::Decode { .. })));
        // A missing list.
        let err = decode(br#"{"next":"n"}"#).expect_err("fails");
        match err {
            Error::Decode { path, .. } => assert_eq!(path, "."),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_good_page_decodes_in_one_pass() {
        let ((items, next), rejected) =
            decode(br#"{"results":[{"id":"1","name":"a"}],"next":null}"#).expect("decode");
        assert_eq!(items.len(), 1);
        assert!(next.is_none() && rejected.is_empty());
    }
}
