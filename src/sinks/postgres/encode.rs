//! JSON values to Postgres' binary COPY format, per column type.
//!
//! Each cell is written as COPY BINARY wants it: a 4-byte length (or -1 for
//! NULL) and the value in the type's binary send format. Conversions are
//! defensive: records normally arrive typed by the source (see
//! [`crate::schema::coerce`]), but a value that does not fit its column becomes
//! NULL there (it stays in `_record`) and is reported as a mismatch; blank
//! strings become NULL in every non-text column.

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use crate::schema::FieldType;

/// What became of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cell {
    /// Written.
    Value,
    /// Written as NULL: absent, JSON null, or a blank string.
    Null,
    /// Written as NULL because it does not fit the column.
    Mismatch,
}

/// Microseconds from 1970-01-01 to 2000-01-01, Postgres' epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 0001-01-01 (CE day 1) to 2000-01-01.
const PG_EPOCH_CE_DAYS: i64 = 730_120;
/// The earliest timestamp Postgres takes (4714-11-24 BC), in µs since 2000.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// The earliest date Postgres takes (4714-11-24 BC), in days since 2000.
const MIN_DATE: i64 = -2_451_545;
/// Largest number of digits before / after the point a `numeric` holds.
const NUMERIC_MAX_WEIGHT_DIGITS: i64 = 131_072;
const NUMERIC_MAX_DSCALE: i64 = 16_383;

/// Appends one cell: `value` converted to the column type `ty`.
pub(crate) fn cell(value: Option<&Value>, ty: FieldType, out: &mut BytesMut) -> Cell {
    let value = match value {
        None | Some(Value::Null) => return null(out),
        Some(v) => v,
    };
    if let Value::String(s) = value {
        if ty != FieldType::String && s.trim().is_empty() {
            return null(out);
        }
    }
    let start = out.len();
    out.put_i32(0);
    let ok = match ty {
        FieldType::String => {
            text(value, out);
            true
        }
        FieldType::Integer => integer(value).map(|i| out.put_i64(i)).is_some(),
        FieldType::Number => number(value, out),
        FieldType::Boolean => boolean(value).map(|b| out.put_u8(u8::from(b))).is_some(),
        FieldType::Date => date(value).map(|d| out.put_i32(d)).is_some(),
        FieldType::Timestamp => timestamp(value).map(|t| out.put_i64(t)).is_some(),
        FieldType::Json => {
            jsonb(value, out);
            true
        }
    };
    if !ok {
        out.truncate(start);
        null(out);
        return Cell::Mismatch;
    }
    patch_len(out, start);
    Cell::Value
}

fn null(out: &mut BytesMut) -> Cell {
    out.put_i32(-1);
    Cell::Null
}

/// Writes the length of the cell that starts at `start` into its header.
fn patch_len(out: &mut BytesMut, start: usize) {
    let len = out.len() - start - 4;
    // A single value over 2 GiB cannot come out of a JSON document we hold in
    // memory next to it; saturate rather than wrap if it ever did.
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a `jsonb` cell holding `value`.
pub(crate) fn jsonb_cell<T: serde::Serialize + ?Sized>(value: &T, out: &mut BytesMut) {
    let start = out.len();
    out.put_i32(0);
    jsonb(value, out);
    patch_len(out, start);
}

fn jsonb<T: serde::Serialize + ?Sized>(value: &T, out: &mut BytesMut) {
    out.put_u8(1); // jsonb binary format version
    let mark = out.len();
    let mut w = out.writer();
    if serde_json::to_writer(&mut w, value).is_err() {
        // serde_json::Value and maps of it always serialize; keep the cell
        // valid anyway.
        let out = w.into_inner();
        out.truncate(mark);
        out.put_slice(b"null");
    }
}

/// Appends a non-NULL `boolean` cell.
pub(crate) fn bool_cell(b: bool, out: &mut BytesMut) {
    out.put_i32(1);
    out.put_u8(u8::from(b));
}

/// Appends a `uuid` cell.
pub(crate) fn uuid_cell(u: &uuid::Uuid, out: &mut BytesMut) {
    out.put_i32(16);
    out.put_slice(u.as_bytes());
}

/// Appends a `timestamptz` cell (microseconds are kept, nanoseconds dropped).
pub(crate) fn timestamp_cell(t: &DateTime<Utc>, out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i64(t.timestamp_micros() - PG_EPOCH_MICROS);
}

/// Appends a non-NULL `text` cell.
pub(crate) fn text_cell(s: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_i32(0);
    out.put_slice(s.as_bytes());
    patch_len(out, start);
}

/// Appends to `key` a form of the encoded key cell `cell` (length and
/// bytes) that is equal for equal values. The binary forms of text, bigint,
/// boolean, date and timestamptz already are; a numeric's display scale is
/// dropped (1.5 and 1.50 are one key). JSON is refused as a key elsewhere.
pub(crate) fn canonical_key(cell: &[u8], ty: FieldType, key: &mut Vec<u8>) {
    let start = key.len();
    key.extend_from_slice(cell);
    // [len i32][ndigits i16][weight i16][sign u16][dscale u16][digits…]
    if ty == FieldType::Number && cell.len() >= 12 {
        key[start + 10] = 0;
        key[start + 11] = 0;
    }
}

fn text(value: &Value, out: &mut BytesMut) {
    match value {
        Value::String(s) => out.put_slice(s.as_bytes()),
        Value::Bool(b) => out.put_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.put_slice(n.to_string().as_bytes()),
        // Arrays and objects: their JSON text.
        other => {
            let mut w = out.writer();
            let _ = serde_json::to_writer(&mut w, other);
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(integral)),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>()
                .ok()
                .or_else(|| t.parse::<f64>().ok().and_then(integral))
        }
        _ => None,
    }
}

/// `f` as an i64 when it is a whole number in range.
fn integral(f: f64) -> Option<i64> {
    // 2^63 as f64 is exact; i64::MAX is not representable.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

fn number(value: &Value, out: &mut BytesMut) -> bool {
    match value {
        Value::Number(n) => numeric(&n.to_string(), out),
        Value::String(s) => numeric(s.trim(), out),
        _ => false,
    }
}

fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("true") {
                Some(true)
            } else if t.eq_ignore_ascii_case("false") {
                Some(false)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Days since 2000-01-01.
fn date(value: &Value) -> Option<i32> {
    let d = match value {
        Value::String(s) => {
            let t = s.trim();
            // A full timestamp counts by its date part, as `coerce` does.
            let head = if t.len() > 10 && matches!(t.as_bytes()[10], b'T' | b't' | b' ') {
                &t[..10]
            } else {
                t
            };
            NaiveDate::parse_from_str(head, "%Y-%m-%d").ok()?
        }
        Value::Number(n) => DateTime::from_timestamp_millis(n.as_i64()?)?.date_naive(),
        _ => return None,
    };
    let days = i64::from(chrono::Datelike::num_days_from_ce(&d)) - PG_EPOCH_CE_DAYS;
    if days < MIN_DATE {
        return None;
    }
    i32::try_from(days).ok()
}

/// Microseconds since 2000-01-01 UTC.
fn timestamp(value: &Value) -> Option<i64> {
    let t = match value {
        Value::String(s) => parse_timestamp(s.trim())?,
        Value::Number(n) => DateTime::from_timestamp_millis(n.as_i64()?)?,
        _ => return None,
    };
    let micros = t.timestamp_micros() - PG_EPOCH_MICROS;
    (micros >= MIN_TIMESTAMP).then_some(micros)
}

fn parse_timestamp(t: &str) -> Option<DateTime<Utc>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return Some(naive.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc());
    }
    // Epoch milliseconds as text (HubSpot's legacy form).
    t.parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
}

/// Appends the `numeric` binary form of a decimal literal (`-12.50`, `1e-7`).
/// False, with nothing appended, when `s` is not a finite decimal number
/// Postgres can hold.
pub(crate) fn numeric(s: &str, out: &mut BytesMut) -> bool {
    let Some((negative, digits, point, dscale)) = parse_decimal(s) else {
        return false;
    };
    // Base-10000 groups aligned on the decimal point. `e` is the power of ten
    // of the first significant digit.
    let mut groups: Vec<i16> = Vec::new();
    let mut weight: i64 = 0;
    if !digits.is_empty() {
        let e = point - 1;
        weight = e.div_euclid(4);
        let pad = (3 - e.rem_euclid(4)) as usize;
        let mut padded = vec![0u8; pad];
        padded.extend_from_slice(&digits);
        while padded.len() % 4 != 0 {
            padded.push(0);
        }
        groups = padded
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(*d)))
            .collect();
        while groups.last() == Some(&0) {
            groups.pop();
        }
    }
    let (Ok(ndigits), Ok(weight), Ok(dscale)) = (
        i16::try_from(groups.len()),
        i16::try_from(weight),
        u16::try_from(dscale),
    ) else {
        return false;
    };
    out.put_i16(ndigits);
    out.put_i16(weight);
    out.put_u16(if negative && ndigits > 0 { 0x4000 } else { 0 });
    out.put_u16(dscale);
    for g in groups {
        out.put_i16(g);
    }
    true
}

/// Splits a decimal literal into sign, significant digits (no leading or
/// trailing zeros), the number of digits before the point, and the display
/// scale Postgres would give it.
fn parse_decimal(s: &str) -> Option<(bool, Vec<u8>, i64, i64)> {
    let b = s.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut digits = Vec::with_capacity(b.len());
    let mut int_len: i64 = 0;
    let mut frac_len: i64 = 0;
    let mut seen_point = false;
    while i < b.len() {
        match b[i] {
            c @ b'0'..=b'9' => {
                digits.push(c - b'0');
                if seen_point {
                    frac_len += 1;
                } else {
                    int_len += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => break,
        }
        i += 1;
    }
    if digits.is_empty() {
        return None;
    }
    let mut exp: i64 = 0;
    if i < b.len() {
        if !matches!(b[i], b'e' | b'E') {
            return None;
        }
        let rest = &s[i + 1..];
        let unsigned = rest.strip_prefix(['+', '-']).unwrap_or(rest);
        if unsigned.is_empty()
            || unsigned.len() > 9
            || !unsigned.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        exp = rest.parse().ok()?;
    }
    let dscale = (frac_len - exp).max(0);
    let mut point = int_len + exp;
    let lead = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..lead);
    point -= lead as i64;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        point = 0;
    }
    // Significant digits after the point never outnumber `dscale`, so this
    // bounds both ends.
    if point > NUMERIC_MAX_WEIGHT_DIGITS || dscale > NUMERIC_MAX_DSCALE {
        return None;
    }
    Some((negative, digits, point, dscale))
}

/// True when a string anywhere in `v` (keys included) holds a NUL, which
/// neither `text` nor `jsonb` can store.
pub(crate) fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.as_bytes().contains(&0),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => map_has_nul(m),
        _ => false,
    }
}

/// [`has_nul`] for a map.
pub(crate) fn map_has_nul(m: &Map<String, Value>) -> bool {
    m.iter()
        .any(|(k, v)| k.as_bytes().contains(&0) || has_nul(v))
}

/// What a NUL becomes in anything the sink stores (names, ids, labels,
/// values): U+FFFD, the replacement character.
pub(crate) const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// `s` as Postgres can store it: each NUL replaced by U+FFFD. The one
/// helper for every string on its way to the database (tenants, stream and
/// field names, record ids, labels, values).
pub(crate) fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if s.as_bytes().contains(&0) {
        std::borrow::Cow::Owned(s.replace('\0', NUL_REPLACEMENT))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A copy of `m` with every NUL replaced by U+FFFD (by [`clean`]).
pub(crate) fn replace_nul(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| (clean(k).into_owned(), clean_value(v)))
        .collect()
}

/// A copy of `v` with every NUL replaced by U+FFFD (by [`clean`]).
pub(crate) fn clean_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(clean(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(clean_value).collect()),
        Value::Object(m) => Value::Object(replace_nul(m)),
        other => other.clone(),
    }
}

/// The key under which a checkpoint holding a NUL is stored as JSON text.
const ESCAPED_STATE_KEY: &str = "headwater_json_text";

/// A checkpoint as the `jsonb` of the state table. It must come back
/// exactly (a resume sends its cursors), so one holding a NUL is not
/// [`clean`]ed but stored as its JSON text, where NUL is the escape
/// `\u0000`: `{"headwater_json_text": "…"}`.
pub(crate) fn state_to_jsonb<T: serde::Serialize>(state: &T) -> serde_json::Result<Value> {
    let value = serde_json::to_value(state)?;
    if has_nul(&value) {
        let text = serde_json::to_string(&value)?;
        return Ok(Value::Object(Map::from_iter([(
            ESCAPED_STATE_KEY.to_owned(),
            Value::String(text),
        )])));
    }
    Ok(value)
}

/// The inverse of [`state_to_jsonb`].
pub(crate) fn state_from_jsonb(value: Value) -> serde_json::Result<Value> {
    match value {
        Value::Object(m) if m.len() == 1 => match m.get(ESCAPED_STATE_KEY) {
            Some(Value::String(text)) => serde_json::from_str(text),
            _ => Ok(Value::Object(m)),
        },
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn numeric_parts(s: &str) -> Option<(i16, i16, u16, u16, Vec<i16>)> {
        let mut out = BytesMut::new();
        if !numeric(s, &mut out) {
            return None;
        }
        let r = |i: usize| i16::from_be_bytes([out[i], out[i + 1]]);
        let n = r(0);
        let digits = (0..n as usize).map(|k| r(8 + 2 * k)).collect();
        Some((n, r(2), r(4) as u16, r(6) as u16, digits))
    }

    #[test]
    fn numerics_are_grouped_like_postgres_does() {
        assert_eq!(numeric_parts("0"), Some((0, 0, 0, 0, vec![])));
        assert_eq!(numeric_parts("-0.00"), Some((0, 0, 0, 2, vec![])));
        assert_eq!(numeric_parts("1"), Some((1, 0, 0, 0, vec![1])));
        assert_eq!(numeric_parts("12345"), Some((2, 1, 0, 0, vec![1, 2345])));
        assert_eq!(numeric_parts("10000"), Some((1, 1, 0, 0, vec![1])));
        assert_eq!(
            numeric_parts("-1.5"),
            Some((2, 0, 0x4000, 1, vec![1, 5000]))
        );
        assert_eq!(numeric_parts("1.50"), Some((2, 0, 0, 2, vec![1, 5000])));
        assert_eq!(numeric_parts("0.001"), Some((1, -1, 0, 3, vec![10])));
        assert_eq!(numeric_parts("1e-7"), Some((1, -2, 0, 7, vec![10])));
        assert_eq!(numeric_parts("1.5e3"), Some((1, 0, 0, 0, vec![1500])));
        assert_eq!(numeric_parts("1e20"), Some((1, 5, 0, 0, vec![1])));
        assert_eq!(
            numeric_parts("123456789.123456789"),
            Some((6, 2, 0, 9, vec![1, 2345, 6789, 1234, 5678, 9000]))
        );
        assert_eq!(numeric_parts("+.5"), Some((1, -1, 0, 1, vec![5000])));
    }

    #[test]
    fn non_numbers_are_refused() {
        for s in [
            "",
            "-",
            ".",
            "n/a",
            "NaN",
            "Infinity",
            "1e",
            "1e+",
            "1.2.3",
            "1 2",
            "0x10",
            "1e99999999999",
        ] {
            assert!(numeric_parts(s).is_none(), "{s:?}");
        }
        assert!(numeric_parts("1e131073").is_none());
        assert!(numeric_parts("1e-16384").is_none());
        assert!(numeric_parts("1e131071").is_some());
    }

    fn one(v: Value, ty: FieldType) -> (Cell, Vec<u8>) {
        let mut out = BytesMut::new();
        let c = cell(Some(&v), ty, &mut out);
        (c, out.to_vec())
    }

    #[test]
    fn blanks_are_null_except_in_text() {
        for ty in [
            FieldType::Integer,
            FieldType::Number,
            FieldType::Boolean,
            FieldType::Date,
            FieldType::Timestamp,
            FieldType::Json,
        ] {
            assert_eq!(one(json!(""), ty).0, Cell::Null, "{ty:?}");
            assert_eq!(one(json!("  "), ty).0, Cell::Null, "{ty:?}");
        }
        assert_eq!(
            one(json!(""), FieldType::String),
            (Cell::Value, vec![0, 0, 0, 0])
        );
    }

    #[test]
    fn misfits_are_null_and_reported() {
        assert_eq!(one(json!("n/a"), FieldType::Number).0, Cell::Mismatch);
        assert_eq!(
            one(json!("n/a"), FieldType::Number).1,
            (-1i32).to_be_bytes()
        );
        assert_eq!(one(json!(1.5), FieldType::Integer).0, Cell::Mismatch);
        assert_eq!(one(json!(u64::MAX), FieldType::Integer).0, Cell::Mismatch);
        assert_eq!(one(json!("yes"), FieldType::Boolean).0, Cell::Mismatch);
        assert_eq!(one(json!(1), FieldType::Boolean).0, Cell::Mismatch);
        assert_eq!(one(json!("2024-13-01"), FieldType::Date).0, Cell::Mismatch);
        assert_eq!(one(json!("soon"), FieldType::Timestamp).0, Cell::Mismatch);
        assert_eq!(one(json!({"a": 1}), FieldType::Number).0, Cell::Mismatch);
    }

    #[test]
    fn values_are_encoded_in_binary_form() {
        let (c, b) = one(json!(42), FieldType::Integer);
        assert_eq!(c, Cell::Value);
        assert_eq!(b, [&8i32.to_be_bytes()[..], &42i64.to_be_bytes()].concat());
        assert_eq!(
            one(json!("7"), FieldType::Integer).1[4..],
            7i64.to_be_bytes()
        );
        assert_eq!(
            one(json!(3.0), FieldType::Integer).1[4..],
            3i64.to_be_bytes()
        );
        assert_eq!(one(json!("TRUE"), FieldType::Boolean).1, [0, 0, 0, 1, 1]);
        assert_eq!(
            one(json!("2000-01-02"), FieldType::Date).1[4..],
            1i32.to_be_bytes()
        );
        assert_eq!(
            one(json!("2000-01-02T23:00:00Z"), FieldType::Date).1[4..],
            1i32.to_be_bytes()
        );
        assert_eq!(
            one(json!("2000-01-01T00:00:01.5Z"), FieldType::Timestamp).1[4..],
            1_500_000i64.to_be_bytes()
        );
        assert_eq!(
            one(json!("2000-01-01T01:00:00+01:00"), FieldType::Timestamp).1[4..],
            0i64.to_be_bytes()
        );
        assert_eq!(
            one(json!(946_684_800_000i64), FieldType::Timestamp).1[4..],
            0i64.to_be_bytes()
        );
        assert_eq!(one(json!(12), FieldType::String).1[4..], *b"12");
        assert_eq!(
            one(json!([1, "a"]), FieldType::String).1[4..],
            *b"[1,\"a\"]"
        );
        assert_eq!(
            one(json!({"a": 1}), FieldType::Json).1[4..],
            *b"\x01{\"a\":1}"
        );
        assert_eq!(one(json!("x"), FieldType::Json).1[4..], *b"\x01\"x\"");
        let mut out = BytesMut::new();
        assert_eq!(cell(None, FieldType::String, &mut out), Cell::Null);
        assert_eq!(
            cell(Some(&Value::Null), FieldType::Json, &mut out),
            Cell::Null
        );
    }

    #[test]
    fn dates_before_postgres_range_do_not_fit() {
        assert_eq!(one(json!("-5000-01-01"), FieldType::Date).0, Cell::Mismatch);
        assert_eq!(
            one(json!("-5000-01-01T00:00:00"), FieldType::Timestamp).0,
            Cell::Mismatch
        );
        assert_eq!(
            NaiveDate::from_ymd_opt(2000, 1, 1).map(|d| chrono::Datelike::num_days_from_ce(&d)),
            Some(PG_EPOCH_CE_DAYS as i32)
        );
    }

    #[test]
    fn numeric_keys_ignore_the_display_scale() {
        let key = |v: Value, ty: FieldType| {
            let (_, cell) = one(v, ty);
            let mut k = Vec::new();
            canonical_key(&cell, ty, &mut k);
            k
        };
        assert_eq!(
            key(json!("1.5"), FieldType::Number),
            key(json!("1.50"), FieldType::Number)
        );
        assert_ne!(
            key(json!("1.5"), FieldType::Number),
            key(json!("15"), FieldType::Number)
        );
        assert_eq!(
            key(json!("0.0"), FieldType::Number),
            key(json!(0), FieldType::Number)
        );
        assert_eq!(
            key(json!("7"), FieldType::Integer),
            key(json!(7), FieldType::Integer)
        );
        assert_ne!(
            key(json!("a"), FieldType::String),
            key(json!("A"), FieldType::String)
        );
    }

    #[test]
    fn nul_characters_are_found_and_replaced() {
        let m = json!({"a": ["x\u{0}y"], "k\u{0}": 1});
        let Value::Object(m) = m else { unreachable!() };
        assert!(map_has_nul(&m));
        let r = replace_nul(&m);
        assert!(!map_has_nul(&r));
        assert_eq!(r["a"][0], "x\u{FFFD}y");
        assert!(r.contains_key("k\u{FFFD}"));
        assert_eq!(clean("a\u{0}b\u{0}"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(clean("ab"), std::borrow::Cow::Borrowed("ab")));
    }

    #[test]
    fn checkpoints_with_nul_round_trip_exactly() {
        for state in [
            json!({"after": "a\u{0}b"}),
            json!({"after": "ab"}),
            json!(null),
        ] {
            let stored = state_to_jsonb(&state).unwrap();
            assert!(!has_nul(&stored), "{stored}");
            assert_eq!(state_from_jsonb(stored).unwrap(), state);
        }
    }
}
