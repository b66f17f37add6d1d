//! `cargo fuzz run -s none config`: see `checks::config` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::config(data));
