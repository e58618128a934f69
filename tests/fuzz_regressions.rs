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
