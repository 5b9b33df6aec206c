//! Entry points of the fuzz harnesses: `tests/fuzz.rs` (stable Rust, proptest, run by
//! `make test`) and `fuzz/` (cargo-fuzz, for long runs). See `docs/fuzzing.md`.
//!
//! Each function feeds one parser of outside input and checks what must hold for *any* input:
//! it returns (an error is a fine answer), its error names the input and stays short, and what it
//! accepts is sane (a linker cache written and read back has the same entries; a device request
//! selects only devices the host has). A property that does not hold panics: that panic is the
//! finding. The hook itself never calls this module.

use std::path::Path;

use crate::ldcache::{Entry, LdCache, ldconfig_order};
use crate::nvidia::gpus::{self, Gpu};
use crate::nvidia::mig::{MigDevice, MigSource};
use crate::nvidia::request::{Capabilities, Devices, Request, Sources};
use crate::nvidia::require::{self, Facts};
use crate::nvidia::select;

/// The longest error message a parser may print for any input: errors quote what they refuse,
/// but a 10 MB variable must not become a 10 MB line in the runtime's log.
pub const MAX_ERROR_LEN: usize = 4096;

fn check_error(what: &str, e: &dyn std::fmt::Display) {
    let msg = e.to_string();
    assert!(!msg.trim().is_empty(), "{what}: an empty error message");
    assert!(
        msg.len() <= MAX_ERROR_LEN,
        "{what}: an error message of {} bytes: {}...",
        msg.len(),
        msg.chars().take(200).collect::<String>()
    );
}

/// The OCI state on stdin.
pub fn state(bytes: &[u8]) {
    match crate::state::read_state(bytes) {
        Ok(st) => {
            // what nvhook reads next must be usable: the bundle is a path, the id a string
            let _ = st.bundle().join("config.json");
            let _ = (st.id().len(), st.pid());
        }
        Err(e) => {
            check_error("state", &e);
            assert!(e.to_string().contains("OCI state"), "{e}");
        }
    }
}

/// The bundle's `config.json`. Issue 15's rule: a value nvhook does not use is never a reason
/// to fail a container, so any JSON object parses, and a spec in which no string anywhere names
/// an `NVIDIA_*`/`NVHOOK_DEVICES_*`/`CUDA_VERSION` variable or the device-list mount directory
/// (decided here without nvhook's parser) asks for nothing: `nvhook plan` gives an empty plan,
/// never an error.
pub fn bundle_config(bytes: &[u8]) {
    let bundle = Path::new("/fuzz/bundle");
    let is_object = matches!(
        serde_json::from_slice::<serde_json::Value>(bytes),
        Ok(serde_json::Value::Object(_))
    );
    let b = match crate::state::BundleConfig::from_bytes(bundle, bytes) {
        Ok(b) => b,
        Err(e) => {
            check_error("config.json", &e);
            assert!(!is_object, "a JSON object was refused: {e}");
            return;
        }
    };
    if is_object && !names_a_request(bytes) {
        let plan =
            plan_of(bytes).unwrap_or_else(|e| panic!("a spec that asks for nothing failed: {e}"));
        assert!(
            plan.devices.is_empty() && plan.mounts.is_empty() && plan.cgroup_rules.is_empty(),
            "a spec that asks for nothing got a plan: {plan:?}"
        );
    }
    match b.container(None) {
        Ok(c) => {
            assert!(
                c.rootfs.is_absolute(),
                "rootfs {:?} is not absolute",
                c.rootfs
            );
            // the request parser takes whatever the spec holds
            request(&RequestInput {
                env: c.env.clone(),
                mounts: c.mounts.clone(),
                privileged: c.privileged,
                supported: "all".into(),
                ..RequestInput::default()
            });
        }
        Err(e) => check_error("config.json", &e),
    }
}

/// Does any string of the document (keys, values, with JSON escapes decoded) name something a
/// request is made of? Strings only: a spec that asks for nothing has none.
fn names_a_request(bytes: &[u8]) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        let named = |s: &str| {
            [
                "NVIDIA_",
                "NVHOOK_DEVICES_",
                "CUDA_VERSION",
                "nvidia-container-devices",
            ]
            .iter()
            .any(|w| s.contains(w))
        };
        match v {
            serde_json::Value::String(s) => named(s),
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| named(k) || walk(v)),
            _ => false,
        }
    }
    // (duplicate keys: serde_json's Value keeps the last; scanning the raw text covers the rest)
    let raw = String::from_utf8_lossy(bytes);
    serde_json::from_slice(bytes).map_or(true, |v| walk(&v))
        || [
            "NVIDIA_",
            "NVHOOK_DEVICES_",
            "CUDA_VERSION",
            "nvidia-container-devices",
            "\\u",
        ]
        .iter()
        .any(|w| raw.contains(w))
}

/// `nvhook plan --bundle` of a bundle whose config.json holds `bytes` (a config file that
/// does not exist: a spec that asks for nothing must not need one).
fn plan_of(bytes: &[u8]) -> Result<crate::plan::Plan, crate::error::Error> {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("nvhook-fuzz-bundle-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    });
    std::fs::write(dir.join("config.json"), bytes).expect("cannot write the fuzz bundle");
    crate::hook::plan::<&[u8]>(
        crate::hook::PlanSource::Bundle(dir.clone()),
        Some(&dir.join("no-such-config.toml")),
    )
}

/// A container's request sources, as the harnesses generate them.
#[derive(Debug, Clone, Default)]
pub struct RequestInput {
    pub env: Vec<String>,
    /// (source, destination) of the spec's mounts.
    pub mounts: Vec<(String, String)>,
    pub privileged: bool,
    pub accept_env_unprivileged: bool,
    pub accept_volume_mounts: bool,
    pub disable_require: bool,
    /// The host's `supported-driver-capabilities` (a comma list; invalid lists are skipped).
    pub supported: String,
}

/// The host the request is matched against: two GPUs (index != minor, as in the test fixtures),
/// the second with two MIG devices.
fn fake_gpus() -> Vec<Gpu> {
    let gpu = |uuid: &str, bus: &str, minor: u32| Gpu {
        index: 0,
        uuid: uuid.into(),
        minor,
        bus_id: bus.into(),
        model: "Fuzz".into(),
        proc_dir: Default::default(),
    };
    let mut g = vec![
        gpu("GPU-bbbb-2222", "0000:86:00.0", 0),
        gpu("GPU-aaaa-1111", "0000:3b:00.0", 1),
    ];
    gpus::number(&mut g);
    g
}

struct FakeMig(Vec<MigDevice>);

impl MigSource for FakeMig {
    fn mig_devices(&mut self, gpu: &Gpu) -> Result<Vec<MigDevice>, crate::error::Error> {
        Ok(self
            .0
            .iter()
            .filter(|m| m.parent == gpu.index)
            .cloned()
            .collect())
    }
}

fn fake_migs() -> Vec<MigDevice> {
    let m = |index: u32, uuid: &str| MigDevice {
        parent: 1,
        index,
        uuid: uuid.into(),
        gi: index + 1,
        ci: 0,
    };
    vec![m(0, "MIG-cccc-3333"), m(1, "MIG-dddd-4444")]
}

/// A proc root where GPU minor 0 shows MIG instances (made once per process).
fn fake_proc_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("nvhook-fuzz-proc-{}", std::process::id()));
        let _ = std::fs::create_dir_all(d.join("driver/nvidia/capabilities/gpu0/mig/gi1"));
        d
    })
}

struct FakeFacts;

impl Facts for FakeFacts {
    fn cuda_version(&mut self) -> Option<String> {
        Some("12.4".into())
    }
    fn driver_version(&mut self) -> Option<String> {
        Some("550.54.15".into())
    }
    fn arch(&mut self, gpu: u32) -> Option<String> {
        (gpu == 0).then(|| "9.0".into())
    }
    fn brand(&mut self, _gpu: u32) -> Option<String> {
        Some("Tesla".into())
    }
}

/// `NVIDIA_*` (and `CUDA_VERSION`) from the environment and volume mounts -> a request -> the
/// GPUs and MIG devices it selects -> its `NVIDIA_REQUIRE_*` checks.
pub fn request(input: &RequestInput) {
    let host = crate::config::Config {
        supported_driver_capabilities: input.supported.clone(),
        ..Default::default()
    };
    let supported = host.supported().unwrap_or_else(|_| Capabilities::all());
    let src = Sources {
        privileged: input.privileged,
        mounts: &input.mounts,
        accept_env_unprivileged: input.accept_env_unprivileged,
        accept_volume_mounts: input.accept_volume_mounts,
        disable_require: input.disable_require,
    };
    // the hook's fast path asks the same question without the config: it must not panic either
    if let Err(e) = Request::from_env(&input.env, &Capabilities::all()) {
        check_error("request (fast path)", &e);
    }
    let req = match Request::from_container(&input.env, &supported, &src) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            check_error("request", &e);
            let msg = e.to_string();
            assert!(
                msg.starts_with("NVIDIA_") || msg.starts_with("CUDA_VERSION"),
                "a request error that names no variable: {msg}"
            );
            return;
        }
    };
    if let Devices::List(ids) = &req.devices {
        assert!(!ids.is_empty(), "an empty device list");
        // a set, not a search of the ids before: the generator's lists hold 1.5 million ids, and
        // a quadratic oracle hung CI (seed 1796648246930941028)
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            assert!(
                !id.is_empty() && id.trim() == id && !id.contains(','),
                "device id {id:?} is not one trimmed list item"
            );
            assert!(seen.insert(id), "device id {id:?} twice");
        }
    }
    for c in &req.capabilities.0 {
        assert!(supported.has(*c), "capability {c} is not supported here");
    }
    let mut seen = std::collections::HashSet::with_capacity(req.imex_channels.len());
    for ch in &req.imex_channels {
        assert!(*ch < 1 << 20, "IMEX channel {ch}");
        assert!(seen.insert(ch), "IMEX channel {ch} twice");
    }
    if input.disable_require {
        assert!(
            req.requirements.is_empty(),
            "disable-require kept requirements"
        );
    }
    for r in &req.requirements {
        assert!(
            r.var.starts_with("NVIDIA_REQUIRE_") || r.var == "CUDA_VERSION",
            "requirement from {}",
            r.var
        );
    }
    select_and_check(&req);
}

/// What a request selects on the fake host: only the host's own devices, each once; the device
/// nodes that follow from it are the host's node names (no `/`, no `..` from the request).
fn select_and_check(req: &Request) {
    let gpus = fake_gpus();
    let migs = fake_migs();
    let mut src = FakeMig(migs.clone());
    let sel = match select::select(&req.devices, &gpus, fake_proc_root(), &mut src) {
        Ok(s) => s,
        Err(e) => {
            check_error("device selection", &e);
            return;
        }
    };
    for (i, g) in sel.gpus.iter().enumerate() {
        assert!(
            gpus.contains(g),
            "selected a GPU the host does not have: {g:?}"
        );
        assert!(!sel.gpus[..i].contains(g), "GPU {} selected twice", g.uuid);
        let node = format!("nvidia{}", g.minor);
        assert!(!node.contains('/') && !node.contains(".."), "{node}");
    }
    for (i, m) in sel.migs.iter().enumerate() {
        assert!(
            migs.contains(m),
            "selected a MIG device the host does not have: {m:?}"
        );
        assert!(!sel.migs[..i].contains(m), "MIG {} selected twice", m.uuid);
        assert!(
            sel.gpus.iter().any(|g| g.index == m.parent),
            "MIG device {} without its parent GPU",
            m.uuid
        );
    }
    if req.devices == Devices::All {
        assert_eq!(sel.gpus, gpus, "`all` must select every GPU");
    }
    let indexes: Vec<u32> = sel.gpus.iter().map(|g| g.index).collect();
    if let Err(e) = require::check(&req.requirements, &indexes, &mut FakeFacts) {
        check_error("NVIDIA_REQUIRE_*", &e);
    }
}

/// `NVIDIA_REQUIRE_*` expressions on their own, and the version order they rely on.
pub fn require(exprs: &[(String, String)], a: &str, b: &str) {
    let env: Vec<String> = exprs
        .iter()
        .map(|(k, v)| format!("NVIDIA_REQUIRE_{k}={v}"))
        .chain(["NVIDIA_VISIBLE_DEVICES=all".to_owned()])
        .collect();
    request(&RequestInput {
        env,
        accept_env_unprivileged: true,
        supported: "all".into(),
        ..RequestInput::default()
    });
    use std::cmp::Ordering;
    let ab = require::cmp_versions(a, b);
    assert_eq!(
        ab,
        require::cmp_versions(b, a).reverse(),
        "cmp_versions({a:?}, {b:?}) is not antisymmetric"
    );
    assert_eq!(
        require::cmp_versions(a, a),
        Ordering::Equal,
        "{a:?} != itself"
    );
}

/// `/etc/nvhook/config.toml`.
pub fn config(text: &str) {
    match crate::config::Config::parse(text) {
        Ok(c) => {
            // a parsed config's capability list is valid by construction
            c.supported()
                .expect("Config::parse accepted an invalid capability list");
        }
        Err(e) => check_error("config.toml", &e),
    }
}

/// The container image's (or the driver root's) `ld.so.cache`, and what nvhook writes back: the
/// image's cache merged with the driver's entries, written, must read back to the same entries,
/// sorted the way ld.so's binary search needs, with every image entry of another name kept.
pub fn ldcache(bytes: &[u8], ours: &[Entry]) {
    let parsed = LdCache::parse(bytes);
    filtered_agrees(bytes, &parsed);
    let cache = match parsed {
        Ok(c) => c,
        Err(e) => {
            check_error("ld.so.cache", &e);
            return;
        }
    };
    let names: usize = cache
        .entries
        .iter()
        .map(|e| e.key.len() + e.value.len())
        .chain(cache.hwcaps.iter().map(String::len))
        .sum();
    assert!(
        names <= bytes.len() * crate::ldcache::MAX_NAMES_FACTOR + crate::ldcache::MAX_NAMES_SLACK,
        "{} bytes of cache decoded to {names} bytes of names",
        bytes.len()
    );
    // ours must be valid names: what nvhook plans never holds a NUL
    let ours: Vec<Entry> = ours
        .iter()
        .filter(|e| !e.key.contains('\0') && !e.value.contains('\0'))
        .cloned()
        .collect();
    merge_round_trip(cache, &ours);
}

/// The filtered parse (driver root) agrees with the full one (`parsed`).
fn filtered_agrees(bytes: &[u8], parsed: &Result<LdCache, crate::ldcache::LdCacheError>) {
    let filtered = LdCache::parse_filtered(bytes, |k| k.starts_with(b"libnv"));
    match (parsed, &filtered) {
        (Ok(all), Ok(some)) => {
            let want: Vec<&Entry> = all
                .entries
                .iter()
                .filter(|e| e.key.as_bytes().starts_with(b"libnv"))
                .collect();
            assert_eq!(some.entries.iter().collect::<Vec<_>>(), want);
        }
        (Err(_), Err(_)) => {}
        (a, b) => {
            // the filter copies fewer names, so it may pass a bound the full parse trips; it
            // never fails where the full parse succeeds
            assert!(
                a.is_err() && b.is_ok(),
                "parse and parse_filtered disagree: {a:?} / {b:?}"
            )
        }
    }
}

/// `cache` written and read back, then merged with `ours`, written and read back: unchanged,
/// in ldconfig's order, with all of `ours` and every image entry `ours` does not replace.
fn merge_round_trip(mut cache: LdCache, ours: &[Entry]) {
    // an image entry with a NUL cannot exist (names end at NUL), so writing must succeed
    let again = LdCache::parse(&cache.to_bytes().expect("a parsed cache must serialize"))
        .expect("our own cache must parse");
    assert_eq!(again, cache, "written and read back, the cache changed");
    let before = cache.clone();
    cache.merge(ours);
    let bytes = cache.to_bytes().expect("a merged cache must serialize");
    let after = LdCache::parse(&bytes).expect("our merged cache must parse");
    assert_eq!(
        after, cache,
        "merged, written and read back, the cache changed"
    );
    assert!(
        after
            .entries
            .windows(2)
            .all(|w| ldconfig_order(&w[0], &w[1]) != std::cmp::Ordering::Greater),
        "the merged cache is not in ldconfig's order"
    );
    for n in ours {
        let found = after
            .entries
            .iter()
            .filter(|e| e.key == n.key && e.flags == n.flags)
            .collect::<Vec<_>>();
        assert!(
            found.contains(&n),
            "our entry {n:?} is not in the merged cache"
        );
    }
    for e in &before.entries {
        if !ours.iter().any(|n| n.key == e.key && n.flags == e.flags) {
            assert!(
                after.entries.contains(e),
                "the image's entry {e:?} was lost"
            );
        }
    }
    assert_eq!(after.hwcaps, before.hwcaps, "glibc-hwcaps names changed");
}

/// ELF headers of a library: soname and ABI (driver libraries, the image's CUDA compat
/// libraries) and libcuda's CUDA version note.
pub fn elf(bytes: &[u8]) {
    match crate::elf::read_bytes(bytes) {
        Ok(info) => {
            if let Some(s) = &info.soname {
                assert!(!s.contains('\0') && s.len() <= 256, "soname {s:?}");
            }
            assert_eq!(
                info.cache_flags & crate::ldcache::FLAG_ELF_LIBC6,
                crate::ldcache::FLAG_ELF_LIBC6
            );
        }
        Err(e) => check_error("ELF", &e),
    }
    if let Some(v) = crate::elf::cuda_version_note_bytes(bytes) {
        assert!(v.len() <= 64 * 1024, "a CUDA version of {} bytes", v.len());
    }
}

/// The kernel's files nvhook parses: a GPU's `information`, the driver's `version`, a MIG
/// capability's `access`, `/proc/devices`, and `/proc/<pid>/cgroup` with `/proc/self/mountinfo`.
pub fn proc_files(text: &str, second: &str) {
    let path = Path::new("/proc/driver/nvidia/gpus/0000:3b:00.0/information");
    let mut found = Vec::new();
    for t in [text, second] {
        match gpus::parse_information(path, t, "0000:3b:00.0") {
            Ok(Some(g)) => {
                assert!(
                    g.uuid.starts_with("GPU-") && !g.uuid.contains(['/', '\0']),
                    "GPU UUID {:?}",
                    g.uuid
                );
                found.push(g);
            }
            Ok(None) => {}
            Err(e) => check_error("GPU information", &e),
        }
    }
    gpus::number(&mut found);
    for (i, g) in found.iter().enumerate() {
        assert_eq!(g.index as usize, i, "GPU indexes are not 0..n");
    }
    if let Some(v) = gpus::parse_version(text) {
        assert!(
            !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
            "driver version {v:?}"
        );
    }
    let _ = crate::nvidia::mig::parse_cap_minor(text);
    let _ = crate::doctor::parse_proc_devices(text, &["nvidia-frontend", "nvidia", "nvidiactl"]);
    match crate::apply::cgroup::cgroup_dirs(text, second) {
        Ok(d) => {
            assert!(d.v1.is_some() || !d.v2.is_empty());
            // every cgroup2 directory nvhook would open lies under the first: leaf to root
            if let Some(root) = d.v2.last() {
                for dir in &d.v2 {
                    assert!(dir.starts_with(root), "{dir:?} outside {root:?}");
                }
            }
            // (the kernel's mount points have no `..`; the process's cgroup path must add none)
            for dir in d.v1.iter().chain(&d.v2).filter(|_| !second.contains("..")) {
                assert!(
                    !dir.components()
                        .any(|c| c == std::path::Component::ParentDir),
                    "a cgroup directory with `..`: {dir:?}"
                );
            }
        }
        Err(e) => check_error("cgroup", &e),
    }
}
