#![no_main]
libfuzzer_sys::fuzz_target!(|input: (&str, &str)| nvhook::fuzz::proc_files(input.0, input.1));
