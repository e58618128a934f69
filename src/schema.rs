//! Stream schemas: the typed shape of each stream, built by a source's
//! `discover()` and used by sinks to create tables and layouts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The type of a field, as a warehouse column understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldType {
    /// Text (also enumerations, phone numbers, ids).
    String,
    /// A whole number (64-bit).
    Integer,
    /// A decimal number.
    Number,
    /// True or false.
    Boolean,
    /// A calendar date (`YYYY-MM-DD`).
    Date,
    /// A point in time (RFC 3339, UTC).
    Timestamp,
    /// Nested JSON (arrays, objects).
    Json,
}

/// One field of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Field {
    /// The field's name in records (the provider's name, unchanged).
    pub name: String,
    /// The warehouse type.
    pub field_type: FieldType,
    /// Human-readable description or label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The provider's own type name (`HubSpot`: `enumeration`, `phone_number`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
}

impl Field {
    /// A field with a name and type.
    pub fn new(name: impl Into<String>, field_type: FieldType) -> Self {
        Field {
            name: name.into(),
            field_type,
            description: None,
            source_type: None,
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the provider's own type name.
    pub fn with_source_type(mut self, source_type: impl Into<String>) -> Self {
        self.source_type = Some(source_type.into());
        self
    }
}

/// The schema of one stream: its fields, key and cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamSchema {
    /// Stream name (`contacts`, `deal_pipelines`, …).
    pub name: String,
    /// Fields, in a stable order.
    pub fields: Vec<Field>,
    /// Fields forming the primary key (within a tenant).
    pub primary_key: Vec<String>,
    /// Field whose value orders changes (last-modified time), if any.
    pub cursor_field: Option<String>,
}

impl StreamSchema {
    /// A schema with a name, fields and a one-field primary key.
    pub fn new(name: impl Into<String>, primary_key: &str, fields: Vec<Field>) -> Self {
        StreamSchema {
            name: name.into(),
            fields,
            primary_key: vec![primary_key.to_owned()],
            cursor_field: None,
        }
    }

    /// Sets the cursor field.
    pub fn with_cursor_field(mut self, field: impl Into<String>) -> Self {
        self.cursor_field = Some(field.into());
        self
    }

    /// The field named `name`, if present.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// All streams a source offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Catalog {
    /// The streams.
    pub streams: Vec<StreamSchema>,
}

impl Catalog {
    /// A catalog of these streams.
    pub fn new(streams: Vec<StreamSchema>) -> Self {
        Catalog { streams }
    }

    /// The stream named `name`.
    pub fn stream(&self, name: &str) -> Option<&StreamSchema> {
        self.streams.iter().find(|s| s.name == name)
    }
}

/// Converts a provider value (often a string, as `HubSpot` sends every
/// property) to the JSON value of `field_type`.
///
/// Blank strings become `null` for every type but `String` (`HubSpot` sends
/// `""` for an empty number, date or checkbox). A value that does not parse is
/// kept as it came, so nothing is lost; sinks decide what to do with it.
pub fn coerce(value: Value, field_type: FieldType) -> Value {
    let Value::String(s) = value else {
        return value;
    };
    if field_type == FieldType::String {
        return Value::String(s);
    }
    let t = s.trim();
    if t.is_empty() {
        return Value::Null;
    }
    match field_type {
        FieldType::Integer | FieldType::Number => {
            if let Ok(i) = t.parse::<i64>() {
                return Value::from(i);
            }
            // A decimal becomes a JSON number only when f64 holds it
            // exactly (its shortest form is the same decimal); wider or
            // longer ones keep the source's text, which every sink reads as
            // an exact decimal.
            match t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Some(n) if same_decimal(t, &n.to_string()) => Value::Number(n),
                _ => Value::String(s),
            }
        }
        FieldType::Boolean => match t {
            "true" | "TRUE" | "True" => Value::Bool(true),
            "false" | "FALSE" | "False" => Value::Bool(false),
            _ => Value::String(s),
        },
        FieldType::Timestamp => {
            // HubSpot v3 sends ISO 8601; some legacy values are epoch milliseconds.
            if let Ok(ms) = t.parse::<i64>() {
                if let Some(dt) = chrono::DateTime::from_timestamp_millis(ms) {
                    return Value::String(dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                }
            }
            Value::String(s)
        }
        FieldType::Date => {
            // A date may arrive as midnight UTC in full ISO form or epoch ms.
            if let Ok(ms) = t.parse::<i64>() {
                if let Some(dt) = chrono::DateTime::from_timestamp_millis(ms) {
                    return Value::String(dt.format("%Y-%m-%d").to_string());
                }
            }
            if t.len() > 10 && t.as_bytes()[4] == b'-' && t.is_char_boundary(10) {
                return Value::String(t[..10].to_owned());
            }
            Value::String(s)
        }
        FieldType::Json => serde_json::from_str(t).unwrap_or(Value::String(s)),
        FieldType::String => Value::String(s),
    }
}

/// True when the decimal literals `a` and `b` (`-1.50`, `15e-1`) denote the
/// same number. Anything but a plain decimal literal compares unequal.
fn same_decimal(a: &str, b: &str) -> bool {
    match (decimal_parts(a), decimal_parts(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Sign, significant digits (no leading or trailing zeros) and the power of
/// ten of the first of them, of a decimal literal; zero is `(false, "", 0)`.
fn decimal_parts(s: &str) -> Option<(bool, String, i64)> {
    let (negative, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let all: String = int.chars().chain(frac.chars()).collect();
    let lead = all.bytes().take_while(|b| *b == b'0').count();
    let digits = all[lead..].trim_end_matches('0');
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    let int_len = i64::try_from(int.len()).ok()?;
    let lead = i64::try_from(lead).ok()?;
    let power = int_len
        .checked_sub(lead)?
        .checked_sub(1)?
        .checked_add(exponent)?;
    Some((negative, digits.to_owned(), power))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blanks_become_null_except_for_strings() {
        for t in [
            FieldType::Integer,
            FieldType::Number,
            FieldType::Boolean,
            FieldType::Date,
            FieldType::Timestamp,
            FieldType::Json,
        ] {
            assert_eq!(coerce(json!(""), t), Value::Null, "{t:?}");
        }
        assert_eq!(coerce(json!(""), FieldType::String), json!(""));
    }

    #[test]
    fn values_parse_to_their_types() {
        assert_eq!(coerce(json!("42"), FieldType::Number), json!(42));
        assert_eq!(coerce(json!("1.5"), FieldType::Number), json!(1.5));
        assert_eq!(coerce(json!("true"), FieldType::Boolean), json!(true));
        assert_eq!(coerce(json!("false"), FieldType::Boolean), json!(false));
        assert_eq!(
            coerce(json!("2024-03-01T00:00:00Z"), FieldType::Date),
            json!("2024-03-01")
        );
        assert_eq!(
            coerce(json!("1709251200000"), FieldType::Timestamp),
            json!("2024-03-01T00:00:00.000Z")
        );
        assert_eq!(coerce(json!("[1,2]"), FieldType::Json), json!([1, 2]));
        assert_eq!(coerce(json!(7), FieldType::String), json!(7));
    }

    #[test]
    fn numbers_beyond_f64_keep_their_source_text() {
        // Exact decimals are never rounded through f64: the source's text
        // stays (sinks read decimal text exactly).
        for wide in [
            "123456789012345678901234567890.123456789",
            "9223372036854775808",
            "-99999999999999999999",
            "0.12345678901234567890123",
            "1e400",
        ] {
            assert_eq!(
                coerce(json!(wide), FieldType::Number),
                json!(wide),
                "{wide}"
            );
            assert_eq!(
                coerce(json!(wide), FieldType::Integer),
                json!(wide),
                "{wide}"
            );
        }
        // What f64 holds exactly becomes a JSON number.
        assert_eq!(coerce(json!("0.1"), FieldType::Number), json!(0.1));
        assert_eq!(coerce(json!("1.50"), FieldType::Number), json!(1.5));
        assert_eq!(coerce(json!("-2.5e3"), FieldType::Number), json!(-2500.0));
        assert_eq!(coerce(json!("1e21"), FieldType::Number), json!(1e21));
        assert_eq!(coerce(json!(" 7 "), FieldType::Number), json!(7));
    }

    #[test]
    fn unparseable_values_are_kept() {
        assert_eq!(coerce(json!("n/a"), FieldType::Number), json!("n/a"));
        assert_eq!(coerce(json!("yes"), FieldType::Boolean), json!("yes"));
        assert_eq!(coerce(json!("NaN"), FieldType::Number), json!("NaN"));
    }
}
