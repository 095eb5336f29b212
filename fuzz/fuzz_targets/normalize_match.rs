//! libFuzzer entry for `checks::normalize_match::normalize_match` (see fuzz/checks.rs for what it asserts).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::normalize_match::normalize_match(data));
