//! `cargo fuzz run -s none core_outgoing`: see `checks::core_outgoing` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::core_outgoing(data));
