//! libFuzzer entry for `checks::upstream_response::upstream_response` (see fuzz/checks.rs for what it asserts).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::upstream_response::upstream_response(data));
