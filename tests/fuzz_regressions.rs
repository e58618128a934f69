//! Inputs the fuzz targets in `fuzz/` found, replayed through the same
//! entry points (`headwater::fuzzing`, feature `fuzzing`). Each of them
//! panicked before its fix. The first byte of an input picks the decoder
//! (see each entry point's docs), the rest is the body.

use headwater::fuzzing;

/// `Retry-After: 111…1` (60 digits): `Duration::from_secs_f64` panicked on
/// a delay past `Duration::MAX` (`http/retry.rs`).
#[test]
fn retry_after_past_duration_max() {
    let mut input = vec![0u8];
    input.extend_from_slice(&[b'1'; 60]);
    input.extend_from_slice(b"\t ");
    fuzzing::header(&input);
    fuzzing::header(b"\x001e20");
}

/// NUMERIC text with an exponent at the ends of `i64`
/// (`1e9223372036854775807`, `0.001e-9223372036854775808`): the position
/// of the decimal point overflowed in `normalize_numeric`
/// (`sinks/bigquery/values.rs`), as a load value and as a query result
/// cell.
#[test]
fn numeric_exponent_at_the_ends_of_i64() {
    for text in [
        "1e9223372036854775807",
        "-12.5E+9223372036854775807",
        "0.001e-9223372036854775808",
        ".0e-9223372036854775808",
    ] {
        let mut input = vec![0u8];
        input.extend_from_slice(text.as_bytes());
        fuzzing::bigquery_value(&input);
        // As a NUMERIC load value (type byte 2) and a query result cell.
        let mut input = vec![1u8, 2];
        input.extend_from_slice(format!("\"{text}\"").as_bytes());
        fuzzing::bigquery_value(&input);
        let rows = format!(
            r#"{{"fields":[{{"name":"x","type":"NUMERIC"}}],"rows":[{{"f":[{{"v":"{text}"}}]}}]}}"#
        );
        let mut input = vec![3u8];
        input.extend_from_slice(rows.as_bytes());
        fuzzing::bigquery_value(&input);
    }
}
