//! Values on their way into BigQuery (load-job JSON for a column type) and
//! out of it (query result cells).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::schema::FieldType;

/// A BigQuery column type headwater writes or reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnType {
    String,
    Int64,
    Numeric,
    Float64,
    Bool,
    Date,
    Timestamp,
    Json,
    /// Anything else found in an existing table (`BIGNUMERIC`, `DATETIME`…):
    /// values are passed through unchanged.
    Other(String),
}

impl ColumnType {
    /// The column type of a field type; `numeric` picks NUMERIC over FLOAT64.
    pub(crate) fn of(field_type: FieldType, numeric: bool) -> Self {
        match field_type {
            FieldType::String => ColumnType::String,
            FieldType::Integer => ColumnType::Int64,
            FieldType::Number if numeric => ColumnType::Numeric,
            FieldType::Number => ColumnType::Float64,
            FieldType::Boolean => ColumnType::Bool,
            FieldType::Date => ColumnType::Date,
            FieldType::Timestamp => ColumnType::Timestamp,
            FieldType::Json => ColumnType::Json,
        }
    }

    /// Parses a type name from a table schema (legacy aliases included).
    pub(crate) fn parse(name: &str) -> Self {
        match name.to_ascii_uppercase().as_str() {
            "STRING" => ColumnType::String,
            "INTEGER" | "INT64" => ColumnType::Int64,
            "NUMERIC" => ColumnType::Numeric,
            "FLOAT" | "FLOAT64" => ColumnType::Float64,
            "BOOLEAN" | "BOOL" => ColumnType::Bool,
            "DATE" => ColumnType::Date,
            "TIMESTAMP" => ColumnType::Timestamp,
            "JSON" => ColumnType::Json,
            other => ColumnType::Other(other.to_owned()),
        }
    }

    /// The name used in table schemas and DDL.
    pub(crate) fn name(&self) -> &str {
        match self {
            ColumnType::String => "STRING",
            ColumnType::Int64 => "INT64",
            ColumnType::Numeric => "NUMERIC",
            ColumnType::Float64 => "FLOAT64",
            ColumnType::Bool => "BOOL",
            ColumnType::Date => "DATE",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Json => "JSON",
            ColumnType::Other(s) => s,
        }
    }

    /// True when values of this type can be compared with `=` (a MERGE key).
    pub(crate) fn is_comparable(&self) -> bool {
        !matches!(self, ColumnType::Json | ColumnType::Float64)
    }
}

/// The load-job JSON value of `value` in a column of type `ty`:
/// `Ok(None)` for null, `Err(())` when the value does not fit the type.
///
/// INT64 and NUMERIC go as strings (JSON numbers lose digits beyond 2^53),
/// TIMESTAMP as RFC 3339 in UTC with microseconds, DATE as `YYYY-MM-DD`.
#[allow(clippy::result_unit_err)]
pub(crate) fn to_load_value(value: &Value, ty: &ColumnType) -> Result<Option<Value>, ()> {
    if value.is_null() {
        return Ok(None);
    }
    // As `schema::coerce` has it: a blank string is no value, except as text.
    if *ty != ColumnType::String && value.as_str().is_some_and(|s| s.trim().is_empty()) {
        return Ok(None);
    }
    let out = match ty {
        ColumnType::String => Value::String(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        ColumnType::Json | ColumnType::Other(_) => value.clone(),
        ColumnType::Int64 => Value::String(to_int64(value).ok_or(())?.to_string()),
        ColumnType::Numeric => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_owned(),
                _ => return Err(()),
            };
            Value::String(normalize_numeric(&text).ok_or(())?)
        }
        ColumnType::Float64 => {
            let f = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|f| f.is_finite())
            .ok_or(())?;
            Value::Number(serde_json::Number::from_f64(f).ok_or(())?)
        }
        ColumnType::Bool => match value {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Value::Bool(true),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => return Err(()),
        },
        ColumnType::Date => Value::String(to_date(value).ok_or(())?),
        ColumnType::Timestamp => Value::String(
            to_timestamp(value)
                .ok_or(())?
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        ),
    };
    Ok(Some(out))
}

fn to_int64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>().ok().or_else(|| {
                let n = normalize_numeric(t)?;
                if n.contains('.') {
                    None
                } else {
                    n.parse().ok()
                }
            })
        }
        _ => None,
    }
}

fn in_range(d: NaiveDate) -> bool {
    (1..=9999).contains(&d.year())
}

fn to_date(value: &Value) -> Option<String> {
    let d = match value {
        Value::String(s) => {
            let t = s.trim();
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .or_else(|| to_timestamp(value).map(|ts| ts.date_naive()))?
        }
        Value::Number(_) => to_timestamp(value)?.date_naive(),
        _ => return None,
    };
    in_range(d).then(|| d.format("%Y-%m-%d").to_string())
}

/// A point in time: RFC 3339, a naive date-time or date (taken as UTC), or a
/// number of milliseconds since the epoch (as `schema::coerce` reads them).
fn to_timestamp(value: &Value) -> Option<DateTime<Utc>> {
    let ts = match value {
        Value::String(s) => {
            let t = s.trim();
            if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
                dt.with_timezone(&Utc)
            } else if let Some(n) = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
            {
                n.and_utc()
            } else if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                d.and_hms_opt(0, 0, 0)?.and_utc()
            } else {
                return None;
            }
        }
        Value::Number(n) => DateTime::from_timestamp_millis(to_int64(&Value::Number(n.clone()))?)?,
        _ => return None,
    };
    in_range(ts.date_naive()).then_some(ts)
}

/// A decimal number as NUMERIC takes it: plain notation, at most 29 integer
/// digits, the fraction rounded (half away from zero) to 9 digits. `None`
/// for text that is not a number or a number out of NUMERIC's range.
pub(crate) fn normalize_numeric(text: &str) -> Option<String> {
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    if digits.iter().all(|d| *d == 0) {
        return Some("0".to_owned());
    }
    // Position of the decimal point within `digits`. The exponent comes
    // from the network: an overflow means a number far out of range.
    let point = i64::try_from(int_part.len()).ok()?.checked_add(exponent)?;
    if point < -10 {
        return Some("0".to_owned()); // rounds to zero at 9 fractional digits
    }
    let first_nonzero = digits.iter().position(|d| *d != 0).unwrap_or(0) as i64;
    if point.saturating_sub(first_nonzero) > 29 {
        return None; // more than 29 integer digits
    }
    // Integer digits and the first 10 fractional digits (one for rounding).
    let digit_at = |i: i64| -> u8 {
        if i < 0 || i >= digits.len() as i64 {
            0
        } else {
            digits[i as usize]
        }
    };
    let mut int_digits: Vec<u8> = (0.max(first_nonzero.min(point))..point)
        .map(digit_at)
        .collect();
    let mut frac: Vec<u8> = (point..point + 9).map(digit_at).collect();
    let round_up = digit_at(point + 9) >= 5;
    if round_up {
        let mut carry = true;
        for d in frac.iter_mut().rev().chain(int_digits.iter_mut().rev()) {
            if !carry {
                break;
            }
            if *d == 9 {
                *d = 0;
            } else {
                *d += 1;
                carry = false;
            }
        }
        if carry {
            int_digits.insert(0, 1);
        }
    }
    while int_digits.len() > 1 && int_digits[0] == 0 {
        int_digits.remove(0);
    }
    if int_digits.is_empty() {
        int_digits.push(0);
    }
    if int_digits.len() > 29 {
        return None;
    }
    while frac.last() == Some(&0) {
        frac.pop();
    }
    let mut out = String::with_capacity(int_digits.len() + frac.len() + 2);
    let zero = int_digits == [0] && frac.is_empty();
    if negative && !zero {
        out.push('-');
    }
    out.extend(int_digits.iter().map(|d| char::from(b'0' + d)));
    if !frac.is_empty() {
        out.push('.');
        out.extend(frac.iter().map(|d| char::from(b'0' + d)));
    }
    Some(out)
}

/// Parses a TIMESTAMP cell of a query result: float seconds since the epoch
/// (BigQuery's default, e.g. `1.7092512001234E9`) or integer microseconds
/// (with `formatOptions.useInt64Timestamp`, and what the emulator sends).
pub(crate) fn parse_timestamp_cell(s: &str) -> Option<DateTime<Utc>> {
    let t = s.trim();
    if t.contains(['.', 'e', 'E']) {
        // Exact decimal arithmetic: seconds with up to 6 fractional digits.
        let normalized = normalize_numeric(t)?;
        let (neg, body) = match normalized.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, normalized.as_str()),
        };
        let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
        let secs: i64 = secs.parse().ok()?;
        let mut frac6: String = frac.chars().take(6).collect();
        while frac6.len() < 6 {
            frac6.push('0');
        }
        let mut micros = secs
            .checked_mul(1_000_000)?
            .checked_add(frac6.parse::<i64>().ok()?)?;
        // A seventh fractional digit rounds.
        if frac.len() > 6 && frac.as_bytes()[6] >= b'5' {
            micros += 1;
        }
        if neg {
            micros = -micros;
        }
        DateTime::from_timestamp_micros(micros)
    } else {
        DateTime::from_timestamp_micros(t.parse().ok()?)
    }
}

/// A field of a result schema (name, type, mode, nested fields).
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct ResultField {
    pub name: String,
    #[serde(rename = "type", default)]
    pub field_type: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub fields: Vec<ResultField>,
}

/// Decodes one result row (`{"f":[{"v":…},…]}`) into a JSON object.
pub(crate) fn decode_row(fields: &[ResultField], row: &Value) -> Map<String, Value> {
    let cells = row
        .get("f")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut out = Map::with_capacity(fields.len());
    for (i, field) in fields.iter().enumerate() {
        let v = cells
            .get(i)
            .and_then(|c| c.get("v"))
            .unwrap_or(&Value::Null);
        out.insert(field.name.clone(), decode_cell(field, v));
    }
    out
}

fn decode_cell(field: &ResultField, v: &Value) -> Value {
    if field.mode.as_deref() == Some("REPEATED") {
        let items = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
        return Value::Array(
            items
                .iter()
                .map(|item| decode_scalar(field, item.get("v").unwrap_or(&Value::Null)))
                .collect(),
        );
    }
    decode_scalar(field, v)
}

fn decode_scalar(field: &ResultField, v: &Value) -> Value {
    let s = match v {
        Value::Null => return Value::Null,
        Value::String(s) => s.as_str(),
        Value::Object(_) if !field.fields.is_empty() => {
            return Value::Object(decode_row(&field.fields, v));
        }
        other => return other.clone(),
    };
    match field.field_type.to_ascii_uppercase().as_str() {
        "INTEGER" | "INT64" => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.to_owned())),
        "FLOAT" | "FLOAT64" | "NUMERIC" | "BIGNUMERIC" | "DECIMAL" | "BIGDECIMAL" => {
            number_value(s)
        }
        "BOOLEAN" | "BOOL" => match s {
            "true" | "TRUE" => Value::Bool(true),
            "false" | "FALSE" => Value::Bool(false),
            _ => Value::String(s.to_owned()),
        },
        "TIMESTAMP" => parse_timestamp_cell(s)
            .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
            .unwrap_or_else(|| Value::String(s.to_owned())),
        "JSON" => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned())),
        _ => Value::String(s.to_owned()),
    }
}

/// A numeric cell as a JSON number: an integer when it is whole and fits
/// i64, else a float (NUMERIC's 38 digits do not all survive that);
/// text BigQuery uses for non-finite floats (`NaN`, `Infinity`) stays text.
fn number_value(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Some(n) = normalize_numeric(s) {
        if !n.contains('.') {
            if let Ok(i) = n.parse::<i64>() {
                return Value::from(i);
            }
        }
    }
    s.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absurd_exponents_neither_panic_nor_allocate() {
        let n = |s: &str| normalize_numeric(s);
        let max = i64::MAX;
        let min = i64::MIN;
        assert_eq!(n(&format!("1e{max}")), None);
        assert_eq!(n(&format!("123.45e{max}")), None);
        assert_eq!(n(&format!("1e{min}")), Some("0".to_owned()));
        assert_eq!(n(&format!("-9.9e-{max}")), Some("0".to_owned()));
        assert_eq!(n(&format!("0e{max}")), Some("0".to_owned()));
        assert_eq!(n("1e99999999999999999999"), None);
        assert_eq!(n("1e-99999999999999999999"), None);
        assert_eq!(n("1e28"), Some(format!("1{}", "0".repeat(28))));
        assert_eq!(n("1e29"), None);
        // A number kept as text by `coerce` loads exactly into NUMERIC.
        let coerced = crate::schema::coerce(
            json!("1234567890123456789012345678.123456789"),
            FieldType::Number,
        );
        assert_eq!(
            to_load_value(&coerced, &ColumnType::Numeric),
            Ok(Some(json!("1234567890123456789012345678.123456789")))
        );
    }

    #[test]
    fn numeric_normalization() {
        let n = |s: &str| normalize_numeric(s);
        assert_eq!(n("1.5").as_deref(), Some("1.5"));
        assert_eq!(n("-0.000").as_deref(), Some("0"));
        assert_eq!(n("1e-7").as_deref(), Some("0.0000001"));
        assert_eq!(n("1.5E3").as_deref(), Some("1500"));
        assert_eq!(n("0.1234567891").as_deref(), Some("0.123456789"));
        assert_eq!(n("0.9999999999").as_deref(), Some("1"));
        assert_eq!(n("-2.0000000005").as_deref(), Some("-2.000000001"));
        assert_eq!(n("1e-11").as_deref(), Some("0"));
        assert_eq!(n("007").as_deref(), Some("7"));
        assert_eq!(n(".5").as_deref(), Some("0.5"));
        assert_eq!(n(&"9".repeat(29)).as_deref(), Some("9".repeat(29).as_str()));
        assert_eq!(n(&"9".repeat(30)), None);
        assert_eq!(n("1e29"), None);
        assert_eq!(n("n/a"), None);
        assert_eq!(n(""), None);
        assert_eq!(n("."), None);
        assert_eq!(n("1e"), None);
        assert_eq!(n("NaN"), None);
    }

    #[test]
    fn load_values_by_type() {
        let v = |x: Value, t: ColumnType| to_load_value(&x, &t);
        assert_eq!(v(json!(null), ColumnType::Int64), Ok(None));
        assert_eq!(v(json!(42), ColumnType::Int64), Ok(Some(json!("42"))));
        assert_eq!(v(json!("42"), ColumnType::Int64), Ok(Some(json!("42"))));
        assert_eq!(v(json!(4.0), ColumnType::Int64), Ok(Some(json!("4"))));
        assert_eq!(v(json!(4.5), ColumnType::Int64), Err(()));
        assert_eq!(v(json!("n/a"), ColumnType::Int64), Err(()));
        assert_eq!(v(json!(1.25), ColumnType::Numeric), Ok(Some(json!("1.25"))));
        assert_eq!(v(json!("n/a"), ColumnType::Numeric), Err(()));
        assert_eq!(v(json!("2.5"), ColumnType::Float64), Ok(Some(json!(2.5))));
        assert_eq!(v(json!("NaN"), ColumnType::Float64), Err(()));
        assert_eq!(v(json!("TRUE"), ColumnType::Bool), Ok(Some(json!(true))));
        assert_eq!(v(json!("yes"), ColumnType::Bool), Err(()));
        assert_eq!(
            v(json!("2024-03-01T10:00:00Z"), ColumnType::Date),
            Ok(Some(json!("2024-03-01")))
        );
        assert_eq!(
            v(json!("2024-03-01T10:00:00+02:00"), ColumnType::Timestamp),
            Ok(Some(json!("2024-03-01T08:00:00.000000Z")))
        );
        assert_eq!(
            v(json!(1709251200000i64), ColumnType::Timestamp),
            Ok(Some(json!("2024-03-01T00:00:00.000000Z")))
        );
        assert_eq!(v(json!("soon"), ColumnType::Timestamp), Err(()));
        assert_eq!(v(json!(7), ColumnType::String), Ok(Some(json!("7"))));
        assert_eq!(v(json!([1]), ColumnType::Json), Ok(Some(json!([1]))));
        assert_eq!(v(json!(" "), ColumnType::Json), Ok(None));
        assert_eq!(v(json!(""), ColumnType::Int64), Ok(None));
        assert_eq!(v(json!(""), ColumnType::String), Ok(Some(json!(""))));
    }

    #[test]
    fn timestamps_from_both_encodings() {
        let want = "2024-03-01T00:00:00.123456Z";
        for cell in [
            "1.709251200123456E9",
            "1709251200.123456",
            "1709251200123456",
        ] {
            let t = parse_timestamp_cell(cell).expect(cell);
            assert_eq!(
                t.to_rfc3339_opts(SecondsFormat::Micros, true),
                want,
                "{cell}"
            );
        }
        assert_eq!(
            parse_timestamp_cell("1.7092512E9")
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .as_deref(),
            Some("2024-03-01T00:00:00Z")
        );
        assert!(parse_timestamp_cell("x").is_none());
    }

    #[test]
    fn rows_decode() {
        let fields: Vec<ResultField> = serde_json::from_value(json!([
            {"name": "s", "type": "STRING"},
            {"name": "i", "type": "INTEGER"},
            {"name": "n", "type": "NUMERIC"},
            {"name": "b", "type": "BOOLEAN"},
            {"name": "t", "type": "TIMESTAMP"},
            {"name": "j", "type": "JSON"},
            {"name": "r", "type": "STRING", "mode": "REPEATED"},
            {"name": "z", "type": "STRING"}
        ]))
        .unwrap();
        let row = json!({"f": [
            {"v": "x"}, {"v": "3"}, {"v": "1.500000000"}, {"v": "true"},
            {"v": "1709251200000000"}, {"v": "{\"a\":[1]}"},
            {"v": [{"v": "p"}, {"v": "q"}]}, {"v": null}
        ]});
        let out = decode_row(&fields, &row);
        assert_eq!(
            Value::Object(out),
            json!({"s": "x", "i": 3, "n": 1.5, "b": true, "t": "2024-03-01T00:00:00Z",
                   "j": {"a": [1]}, "r": ["p", "q"], "z": null})
        );
    }
}
