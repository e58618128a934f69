//! Entry points for the `cargo fuzz` targets under `fuzz/` (feature
//! `fuzzing`; not public API).
//!
//! Each function takes the fuzzer's bytes, hands them to the crate's own
//! decoders and encoders (the functions the sources and sinks call, never a
//! copy of them) and checks what must hold for any input: no panic, and the
//! output is well formed (a cell's length prefix matches its bytes, a
//! decoded stream state reads back as itself, a normalized number is in
//! normal form). Where one entry point covers several decoders, the first
//! byte picks one and the rest is the body. `tests/fuzz_regressions.rs`
//! replays every input the fuzzers found through these same functions.

use std::collections::HashMap;

use bytes::BytesMut;
use serde_json::Value;

use crate::error::ApiErrorBody;
use crate::schema::{Field, FieldType, StreamSchema};
use crate::source::{Record, StreamState};

/// The selector byte and the body.
fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((k, rest)) => (*k, rest),
        None => (0, data),
    }
}

/// Every record a decoder produced must serialize (sinks write it as JSON).
fn check_records<'a>(records: impl IntoIterator<Item = &'a Record>) {
    for r in records {
        if let Err(e) = serde_json::to_vec(&r.data) {
            panic!("record {:?} does not serialize: {e}", r.id);
        }
    }
}

// ---------------------------------------------------------------------------
// Headers and error bodies
// ---------------------------------------------------------------------------

/// Response headers and error bodies: byte 0 picks `Retry-After`
/// (`http::retry`), the daily rate-limit count (`X-HubSpot-RateLimit-
/// Daily-Remaining` against a daily counter) or a provider error body
/// (`ApiErrorBody::parse`, and its `Display`).
pub fn header(data: &[u8]) {
    let (kind, body) = split(data);
    match kind % 3 {
        0 => {
            // A header value is visible ASCII; reqwest hands over what
            // `to_str` accepts.
            let Ok(v) = http::HeaderValue::from_bytes(body) else {
                return;
            };
            let Ok(s) = v.to_str() else { return };
            let _ = crate::http::parse_retry_after(s);
        }
        1 => {
            let remaining = std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or_else(|| {
                    let mut b = [0u8; 8];
                    let n = body.len().min(8);
                    b[..n].copy_from_slice(&body[..n]);
                    u64::from_le_bytes(b)
                });
            let limit = crate::http::DailyLimit::utc(250_000);
            let counter = crate::http::limit::DailyCounter::new(limit);
            let now = chrono::Utc::now();
            counter.set_remaining(now, remaining);
            let usage = counter.usage(now);
            assert!(usage.remaining() <= usage.limit, "{usage:?}");
            let _ = counter.take(now);
            let _ = counter.exhaust(now);
        }
        _ => {
            let parsed = ApiErrorBody::parse(body);
            assert!(parsed.raw.len() <= 4096 * 3, "raw body kept whole");
            let _ = parsed.to_string();
        }
    }
}

// ---------------------------------------------------------------------------
// HubSpot
// ---------------------------------------------------------------------------

/// A contacts-like schema with one property of each type, as `discover()`
/// builds them (`source_type` set on properties).
#[cfg(feature = "hubspot")]
fn hubspot_schema() -> StreamSchema {
    let prop = |name: &str, t: FieldType| Field::new(name, t).with_source_type("fuzz");
    StreamSchema::new(
        "contacts",
        "id",
        vec![
            Field::new("id", FieldType::String),
            prop("email", FieldType::String),
            prop("num_employees", FieldType::Integer),
            prop("amount", FieldType::Number),
            prop("hs_is_unworked", FieldType::Boolean),
            prop("closedate", FieldType::Date),
            prop("lastmodifieddate", FieldType::Timestamp),
            prop("hs_object_source_detail", FieldType::Json),
            prop("hs_merged_object_ids", FieldType::String),
            prop("createdAt", FieldType::Timestamp),
            Field::new("updatedAt", FieldType::Timestamp),
        ],
    )
}

/// `HubSpot` answers: byte 0 picks a CRM object listing or search page
/// (`decode_list_page`: the decode and the typing of every record), an
/// owners page (records from raw JSON), a pipelines answer, a v4
/// association batch answer, property definitions or token/account info.
#[cfg(feature = "hubspot")]
pub fn hubspot_page(data: &[u8]) {
    use crate::sources::hubspot::{self as hs, associations, source};
    use crate::Error;
    let (kind, body) = split(data);
    match kind % 6 {
        0 => {
            if let Ok(page) = hs::decode_list_page(body, &hubspot_schema()) {
                check_records(&page.items);
            }
        }
        1 => {
            let Ok(page) = Error::decode::<hs::ListPage<Value>>("hubspot", String::new, body)
            else {
                return;
            };
            let page = page.into_paged();
            let records: Vec<Record> = page
                .items
                .into_iter()
                .filter_map(|v| source::json_record(v, false))
                .collect();
            check_records(&records);
        }
        2 => {
            let Ok(page) = Error::decode::<hs::ListPage<Value>>("hubspot", String::new, body)
            else {
                return;
            };
            for v in page.into_paged().items {
                if let Ok(p) = serde_path_to_error::deserialize::<_, hs::Pipeline>(&v) {
                    let _ = source::json_record(v, p.archived);
                }
            }
        }
        3 => {
            let Ok(answer) =
                Error::decode::<associations::BatchAnswer>("hubspot", String::new, body)
            else {
                return;
            };
            for e in &answer.errors {
                let _ = associations::is_benign(e);
            }
        }
        4 => {
            let Ok(page) =
                Error::decode::<hs::ListPage<hs::PropertyDefinition>>("hubspot", String::new, body)
            else {
                return;
            };
            for p in page.into_paged().items {
                let _ = hs::property_field_type(&p.property_type, &p.field_type);
            }
        }
        _ => {
            let _ = Error::decode::<hs::AccessTokenInfo>("hubspot", String::new, body);
            let _ = Error::decode::<hs::AccountDetails>("hubspot", String::new, body);
        }
    }
}

// ---------------------------------------------------------------------------
// Mailchimp
// ---------------------------------------------------------------------------

/// Mailchimp collection pages (`decode_collection` under each collection's
/// key) and the records the source makes of them: audiences, members (with
/// merge fields of every type), merge fields, campaigns, reports,
/// automations and automation emails.
#[cfg(feature = "mailchimp")]
pub fn mailchimp_page(data: &[u8]) {
    use crate::sources::mailchimp::{self as mc, source};
    let (kind, body) = split(data);
    fn page<T: serde::de::DeserializeOwned>(body: &[u8], key: &'static str) -> Vec<T> {
        mc::decode_collection::<T>(body, key, String::new)
            .map(|c| c.items)
            .unwrap_or_default()
    }
    let records: Vec<Record> = match kind % 7 {
        0 => page::<mc::Audience>(body, "lists")
            .into_iter()
            .map(|a| source::plain_record(a.id.clone(), &a))
            .collect(),
        1 => {
            let merge = [
                ("FNAME".to_owned(), FieldType::String),
                ("SCORE".to_owned(), FieldType::Number),
                ("COUNT".to_owned(), FieldType::Integer),
                ("OK".to_owned(), FieldType::Boolean),
                ("BDAY".to_owned(), FieldType::Date),
                ("SEEN".to_owned(), FieldType::Timestamp),
                ("ADDRESS".to_owned(), FieldType::Json),
            ];
            page::<mc::Member>(body, "members")
                .into_iter()
                .map(|m| source::member_record(m, "list1", &merge))
                .collect()
        }
        2 => {
            for f in page::<mc::MergeField>(body, "merge_fields") {
                let _ = source::merge_field_type(&f.field_type);
            }
            Vec::new()
        }
        3 => page::<mc::Campaign>(body, "campaigns")
            .into_iter()
            .map(source::campaign_record)
            .collect(),
        4 => page::<mc::CampaignReport>(body, "reports")
            .into_iter()
            .map(source::report_record)
            .collect(),
        5 => page::<mc::Automation>(body, "automations")
            .into_iter()
            .map(|a| source::plain_record(a.id.clone(), &a))
            .collect(),
        _ => page::<mc::AutomationEmail>(body, "emails")
            .into_iter()
            .map(|e| source::plain_record(e.id.clone(), &e))
            .collect(),
    };
    check_records(&records);
}

// ---------------------------------------------------------------------------
// Constant Contact
// ---------------------------------------------------------------------------

/// Constant Contact listing pages (the envelope: items under the
/// listing's key, `_links.next`, the count, `status: processing`) and the
/// records made of them: contacts (with custom fields typed as text and as
/// dates), lists, custom fields, campaigns, summaries and activities.
#[cfg(feature = "constant-contact")]
pub fn constant_contact_page(data: &[u8]) {
    use crate::sources::constant_contact::{self as cc, source, Envelope};
    use crate::Error;
    let (kind, body) = split(data);
    fn page<T: cc::Listed>(body: &[u8]) -> Vec<T> {
        Error::decode::<Envelope<T>>("constant_contact", String::new, body)
            .map(|e| e.items)
            .unwrap_or_default()
    }
    let records: Vec<Record> = match kind % 6 {
        0 => {
            let contacts = page::<cc::Contact>(body);
            // Every custom field the page names, half of them typed as dates.
            let columns: source::CustomFieldColumns = contacts
                .iter()
                .flat_map(|c| &c.custom_fields)
                .enumerate()
                .map(|(i, f)| {
                    let t = if i % 2 == 0 {
                        FieldType::Date
                    } else {
                        FieldType::String
                    };
                    let id = f.custom_field_id.clone();
                    (id.clone(), (format!("cf_{id}"), t))
                })
                .collect::<HashMap<_, _>>();
            contacts
                .into_iter()
                .map(|c| source::contact_record(c, &columns))
                .collect()
        }
        1 => page::<cc::ContactList>(body)
            .into_iter()
            .map(source::list_record)
            .collect(),
        2 => page::<cc::CustomField>(body)
            .into_iter()
            .map(source::custom_field_record)
            .collect(),
        3 => page::<cc::EmailCampaign>(body)
            .into_iter()
            .map(source::campaign_record)
            .collect(),
        4 => page::<cc::CampaignSummary>(body)
            .into_iter()
            .map(source::summary_record)
            .collect(),
        _ => Error::decode::<cc::CampaignActivity>("constant_contact", String::new, body)
            .map(|a| vec![source::activity_record(a, "campaign")])
            .unwrap_or_default(),
    };
    check_records(&records);
}

// ---------------------------------------------------------------------------
// Stream states and checkpoints
// ---------------------------------------------------------------------------

/// A state that decodes must encode and decode back to itself: a
/// checkpoint the engine wrote must be readable by the next run.
fn round_trip<T: PartialEq + std::fmt::Debug>(
    state: &StreamState,
    read: impl Fn(&StreamState) -> Option<T>,
    write: impl Fn(&T) -> StreamState,
) {
    if let Some(pos) = read(state) {
        let again = write(&pos);
        let back = read(&again);
        assert_eq!(
            back.as_ref(),
            Some(&pos),
            "state {again:?} does not read back"
        );
    }
}

/// Stream states (the JSON each source keeps in a checkpoint) and the
/// checkpoint itself: byte 0 picks the decoder, the rest is JSON.
pub fn stream_state(data: &[u8]) {
    let (kind, body) = split(data);
    if kind % 7 == 6 {
        if let Ok(c) = serde_json::from_slice::<crate::sink::Checkpoint>(body) {
            let bytes = serde_json::to_vec(&c).expect("a checkpoint serializes");
            let back: crate::sink::Checkpoint =
                serde_json::from_slice(&bytes).expect("a checkpoint reads back");
            assert_eq!(back, c);
        }
        return;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let state = StreamState(value);
    match kind % 7 {
        #[cfg(feature = "hubspot")]
        0 => {
            use crate::sources::hubspot::source::Position;
            round_trip(
                &state,
                |s| Position::from_state(Some(s.clone())).ok(),
                Position::to_state,
            );
        }
        #[cfg(feature = "hubspot")]
        1 => {
            use crate::sources::hubspot::associations::AssocPosition;
            round_trip(
                &state,
                |s| AssocPosition::from_state(Some(s)).ok().flatten(),
                AssocPosition::to_state,
            );
        }
        #[cfg(feature = "mailchimp")]
        2 => {
            use crate::sources::mailchimp::source::{from_state, to_state, MembersPos};
            round_trip(
                &state,
                |s| from_state::<MembersPos>(Some(s), "m").ok().flatten(),
                to_state,
            );
        }
        #[cfg(feature = "mailchimp")]
        3 => {
            use crate::sources::mailchimp::source::{from_state, to_state, CampaignsPos};
            round_trip(
                &state,
                |s| from_state::<CampaignsPos>(Some(s), "c").ok().flatten(),
                to_state,
            );
        }
        #[cfg(feature = "mailchimp")]
        4 => {
            use crate::sources::mailchimp::source::{from_state, to_state, FullPos, ReportsPos};
            round_trip(
                &state,
                |s| from_state::<ReportsPos>(Some(s), "r").ok().flatten(),
                to_state,
            );
            round_trip(
                &state,
                |s| from_state::<FullPos>(Some(s), "f").ok().flatten(),
                to_state,
            );
        }
        #[cfg(feature = "constant-contact")]
        5 => {
            use crate::sources::constant_contact::source::Position;
            round_trip(
                &state,
                |s| Position::from_state(Some(s.clone())).ok(),
                Position::to_state,
            );
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Postgres binary COPY encoder
// ---------------------------------------------------------------------------

#[cfg(feature = "postgres")]
const FIELD_TYPES: [FieldType; 7] = [
    FieldType::String,
    FieldType::Integer,
    FieldType::Number,
    FieldType::Boolean,
    FieldType::Date,
    FieldType::Timestamp,
    FieldType::Json,
];

/// The value of a `numeric` binary cell (ndigits, weight, sign, dscale,
/// base-10000 digits), checked to be a form Postgres accepts, as an `f64`.
#[cfg(feature = "postgres")]
fn numeric_value(cell: &[u8]) -> f64 {
    let word = |i: usize| u16::from_be_bytes([cell[i], cell[i + 1]]);
    assert!(cell.len() >= 8, "numeric cell too short: {cell:?}");
    let ndigits = word(0) as i16;
    let weight = word(2) as i16;
    let sign = word(4);
    let dscale = word(6);
    assert!(ndigits >= 0, "negative ndigits");
    assert_eq!(cell.len(), 8 + 2 * ndigits as usize, "ndigits vs length");
    assert!(sign == 0 || sign == 0x4000, "sign {sign:#x}");
    assert!(dscale <= 16_383, "dscale {dscale}");
    let mut v = 0f64;
    for i in 0..ndigits as usize {
        let d = word(8 + 2 * i);
        assert!(d < 10_000, "digit {d}");
        if i + 1 == ndigits as usize {
            assert_ne!(d, 0, "trailing zero group");
        }
        v += f64::from(d) * 10f64.powi(4 * (i32::from(weight) - i as i32));
    }
    if sign == 0x4000 {
        -v
    } else {
        v
    }
}

/// Postgres' binary COPY encoder (`sinks::postgres::encode`): byte 0 picks
/// a column type, the rest is a JSON value (or, for a number column, also
/// the literal itself). Every cell is a 4-byte length followed by exactly
/// that many bytes (or -1 alone); a `numeric` is in Postgres' normal form
/// and equals the literal it came from; NUL replacement leaves no NUL.
#[cfg(feature = "postgres")]
pub fn postgres_cell(data: &[u8]) {
    use crate::sinks::postgres::encode;
    let (kind, body) = split(data);
    let ty = FIELD_TYPES[usize::from(kind) % FIELD_TYPES.len()];
    let check_cell = |out: &BytesMut, start: usize| -> Option<Vec<u8>> {
        let cell = &out[start..];
        assert!(cell.len() >= 4, "cell without a length");
        let len = i32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]);
        if len == -1 {
            assert_eq!(cell.len(), 4, "NULL cell with bytes");
            return None;
        }
        assert!(len >= 0, "length {len}");
        assert_eq!(cell.len(), 4 + len as usize, "length prefix vs bytes");
        Some(cell[4..].to_vec())
    };
    if ty == FieldType::Number {
        if let Ok(s) = std::str::from_utf8(body) {
            let mut out = BytesMut::new();
            if encode::numeric(s, &mut out) {
                let v = numeric_value(&out);
                // Compare with the float reading where a float is exact
                // enough to tell.
                let significant = s.bytes().filter(u8::is_ascii_digit).count();
                if let Ok(f) = s.parse::<f64>() {
                    if f.is_finite() && f.abs() < 1e300 && f.abs() > 1e-300 && significant <= 15 {
                        let tol = f.abs() * 1e-12;
                        assert!((v - f).abs() <= tol, "{s:?} encoded as {v}");
                    }
                }
                let mut key = Vec::new();
                encode::canonical_key(&out, ty, &mut key);
            } else {
                assert!(out.is_empty(), "a refused numeric left bytes");
            }
        }
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(b"prefix");
    let start = out.len();
    let result = encode::cell(Some(&value), ty, &mut out);
    assert_eq!(&out[..start], b"prefix", "earlier cells overwritten");
    let bytes = check_cell(&out, start);
    match (result, &bytes) {
        (encode::Cell::Value, None) => panic!("a value written as NULL"),
        (encode::Cell::Null | encode::Cell::Mismatch, Some(_)) => {
            panic!("{result:?} written with bytes")
        }
        _ => {}
    }
    if let Some(b) = &bytes {
        match ty {
            FieldType::Integer | FieldType::Timestamp => assert_eq!(b.len(), 8),
            FieldType::Date => assert_eq!(b.len(), 4),
            FieldType::Boolean => assert!(b == &[0] || b == &[1]),
            FieldType::Number => {
                numeric_value(b);
            }
            FieldType::Json => {
                assert_eq!(b.first(), Some(&1), "jsonb version");
                serde_json::from_slice::<Value>(&b[1..]).expect("jsonb holds JSON");
            }
            _ => {}
        }
        let mut key = Vec::new();
        encode::canonical_key(&out[start..], ty, &mut key);
        assert_eq!(key.len(), out.len() - start);
    }
    if let Value::Object(map) = &value {
        let clean = encode::replace_nul(map);
        assert!(!encode::map_has_nul(&clean), "NUL left after replacement");
    }
}

// ---------------------------------------------------------------------------
// BigQuery values
// ---------------------------------------------------------------------------

/// True for text in `normalize_numeric`'s normal form: an optional `-`,
/// 1 to 29 integer digits without leading zeros, and 1 to 9 fractional
/// digits without trailing zeros.
#[cfg(feature = "bigquery")]
fn is_normal_numeric(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    !int.is_empty()
        && int.len() <= 29
        && digits(int)
        && (int == "0" || !int.starts_with('0'))
        && digits(frac)
        && frac.len() <= 9
        && (frac.is_empty() || !frac.ends_with('0'))
        && !(body.contains('.') && frac.is_empty())
        && s != "-0"
}

/// The BigQuery value normalizer (`sinks::bigquery::values`): byte 0
/// picks NUMERIC text (`normalize_numeric`: normal form, idempotent, equal
/// to the literal), a load value of a column type (`to_load_value`), a
/// TIMESTAMP result cell or a query result (schema and rows, decoded).
#[cfg(feature = "bigquery")]
pub fn bigquery_value(data: &[u8]) {
    use crate::sinks::bigquery::values::{self, ColumnType, ResultField};
    let (kind, body) = split(data);
    match kind % 4 {
        0 => {
            let Ok(s) = std::str::from_utf8(body) else {
                return;
            };
            if let Some(n) = values::normalize_numeric(s) {
                assert!(is_normal_numeric(&n), "{s:?} normalized to {n:?}");
                assert_eq!(
                    values::normalize_numeric(&n).as_deref(),
                    Some(n.as_str()),
                    "not idempotent"
                );
                let significant = s.bytes().filter(u8::is_ascii_digit).count();
                if let (Ok(f), Ok(g)) = (s.trim().parse::<f64>(), n.parse::<f64>()) {
                    if f.is_finite() && f.abs() >= 1e-6 && f.abs() < 1e28 && significant <= 15 {
                        // Rounded to 9 fractional digits.
                        assert!((f - g).abs() <= 6e-10 + f.abs() * 1e-12, "{s:?} → {n:?}");
                    }
                }
            }
        }
        1 => {
            let Some((t, rest)) = body.split_first() else {
                return;
            };
            let ty = match t % 9 {
                0 => ColumnType::String,
                1 => ColumnType::Int64,
                2 => ColumnType::Numeric,
                3 => ColumnType::Float64,
                4 => ColumnType::Bool,
                5 => ColumnType::Date,
                6 => ColumnType::Timestamp,
                7 => ColumnType::Json,
                _ => ColumnType::Other("BIGNUMERIC".into()),
            };
            let Ok(value) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            if let Ok(Some(v)) = values::to_load_value(&value, &ty) {
                if ty == ColumnType::Numeric {
                    let s = v.as_str().expect("NUMERIC loads as text");
                    assert!(is_normal_numeric(s), "{value} loaded as {s:?}");
                }
            }
        }
        2 => {
            if let Ok(s) = std::str::from_utf8(body) {
                let _ = values::parse_timestamp_cell(s);
            }
        }
        _ => {
            #[derive(serde::Deserialize)]
            struct Result {
                #[serde(default)]
                fields: Vec<ResultField>,
                #[serde(default)]
                rows: Vec<Value>,
            }
            if let Ok(r) = serde_json::from_slice::<Result>(body) {
                for row in &r.rows {
                    let _ = values::decode_row(&r.fields, row);
                }
            }
        }
    }
}
