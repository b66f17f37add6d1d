//! `cargo fuzz run -s none dns_message`: see `checks::dns_message` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::dns_message(data));
