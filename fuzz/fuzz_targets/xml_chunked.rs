//! `cargo fuzz run -s none xml_chunked`: see `checks::xml_chunked` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::xml_chunked(data));
