#![no_main]
libfuzzer_sys::fuzz_target!(|input: (Vec<(String, String)>, &str, &str)| {
    let (exprs, a, b) = input;
    nvhook::fuzz::require(&exprs, a, b);
});
