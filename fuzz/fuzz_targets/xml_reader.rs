//! `cargo fuzz run -s none xml_reader`: see `checks::xml_reader` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::xml_reader(data));
