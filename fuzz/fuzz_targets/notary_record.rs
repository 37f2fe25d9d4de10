#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zosd_fuzz::notary_record(data));
