#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zos_fuzz::dns(data));
