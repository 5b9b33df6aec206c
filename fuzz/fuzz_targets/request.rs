#![no_main]
use nvhook::fuzz::RequestInput;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    env: Vec<String>,
    mounts: Vec<(String, String)>,
    flags: [bool; 4],
    supported: String,
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    nvhook::fuzz::request(&RequestInput {
        env: i.env,
        mounts: i.mounts,
        privileged: i.flags[0],
        accept_env_unprivileged: i.flags[1],
        accept_volume_mounts: i.flags[2],
        disable_require: i.flags[3],
        supported: i.supported,
    });
});
