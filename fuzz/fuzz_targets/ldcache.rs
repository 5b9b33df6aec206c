#![no_main]
use nvhook::ldcache::Entry;

// The cache's bytes, and the entries nvhook merges into it.
libfuzzer_sys::fuzz_target!(|input: (Vec<(String, String, i32)>, &[u8])| {
    let (ours, bytes) = input;
    let ours: Vec<Entry> = ours
        .into_iter()
        .take(8)
        .map(|(k, v, f)| Entry::new(k, v, f))
        .collect();
    nvhook::fuzz::ldcache(bytes, &ours);
});
