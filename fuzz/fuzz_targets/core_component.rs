//! `cargo fuzz run -s none core_component`: see `checks::core_component` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::core_component(data));
