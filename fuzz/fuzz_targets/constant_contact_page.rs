#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| headwater::fuzzing::constant_contact_page(data));
