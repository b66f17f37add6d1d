//! `cargo fuzz run -s none serializer_roundtrip`: see `checks::serializer_roundtrip` for what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::serializer_roundtrip(data));
