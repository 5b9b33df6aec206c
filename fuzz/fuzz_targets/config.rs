#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| nvhook::fuzz::config(text));
