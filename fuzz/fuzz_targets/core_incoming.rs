//! `cargo fuzz run -s none core_incoming`: see `checks::core_incoming` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::core_incoming(data));
