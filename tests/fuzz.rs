#![forbid(unsafe_code)]
//! Fuzzing of every parser of outside input, on stable Rust, bounded for CI (`make test`).
//!
//! Structured generators (proptest) feed the oracles of `nvhook::fuzz`: OCI states, bundle
//! `config.json`s, hostile environments (newlines, NULs, `..`, 10 MB values), config TOML,
//! mutated linker caches (glibc's own `/etc/ld.so.cache`, one our writer wrote, an old-format
//! one), mutated ELF libraries, and the kernel's `/proc` files. Each target prints its exec count
//! and time (`--nocapture`, as tests/run.sh runs it). A failure prints proptest's shrunk input
//! and the seed; `NVHOOK_FUZZ_SEED=<seed>` replays a run, `NVHOOK_FUZZ_SCALE=<n>` runs n times
//! as many cases. Long runs: `fuzz/` (cargo-fuzz), see docs/fuzzing.md.

mod common;

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nvhook::fuzz::{self, RequestInput};
use nvhook::ldcache::{Entry, FLAG_ELF_LIBC6, LdCache, native_flags};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{Value, json};

// ------------------------------------------------------------------------------- the runner

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| common::seed_from_env("NVHOOK_FUZZ_SEED"))
}

fn scale() -> u32 {
    std::env::var("NVHOOK_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Run `check` on `cases` generated inputs (and on the shrinking steps of a failure); print the
/// exec count and time; fail with the smallest failing input.
fn run<S: Strategy>(name: &str, cases: u32, strategy: S, check: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases: cases.saturating_mul(scale()),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed()),
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let execs = Cell::new(0u64);
    let slowest = Cell::new(Duration::ZERO);
    let start = Instant::now();
    let result = runner.run(&strategy, |v| {
        execs.set(execs.get() + 1);
        let t = Instant::now();
        check(v);
        slowest.set(slowest.get().max(t.elapsed()));
        Ok(())
    });
    eprintln!(
        "fuzz {name}: {} execs in {:.2} s (slowest {:.1} ms), seed {}",
        execs.get(),
        start.elapsed().as_secs_f64(),
        slowest.get().as_secs_f64() * 1e3,
        seed()
    );
    if let Err(e) = result {
        panic!(
            "fuzz {name} failed (replay: NVHOOK_FUZZ_SEED={}): {e}",
            seed()
        );
    }
}

// ---------------------------------------------------------------------------- generators

/// Any short string, any characters (NULs, newlines, non-ASCII included).
fn any_str(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// Words the parsers give meaning to, and words that break paths and lines.
const WORDS: &[&str] = &[
    "all",
    "ALL",
    "none",
    "void",
    "0",
    "1",
    "2",
    "+1",
    "-1",
    "007",
    "4294967296",
    "99999999999999999999999",
    "GPU-aaaa-1111",
    "gpu-AAAA-1111",
    "GPU-bbbb-2222",
    "GPU-",
    "GPU-aaaa",
    "0000:3b:00.0",
    "3b:00.0",
    "0:3b:0",
    "0000:86:00.1",
    "ffffffff:ff:ff.f",
    "MIG-cccc-3333",
    "mig-DDDD-4444",
    "MIG-",
    "1:0",
    "1:1",
    "0:0",
    "1:9",
    ":",
    "",
    " ",
    ",",
    ", ,",
    "..",
    "../..",
    "/dev/nvidia0",
    "nvidia0",
    "../../etc/passwd",
    "\n",
    "\r\n",
    "\0",
    "\t",
    "compute",
    "utility",
    "graphics",
    "video",
    "display",
    "ngx",
    "compat32",
    "Compute",
    "cuda>=12.0",
    "cuda>=99.0",
    "cuda<12",
    "driver>=500",
    "driver<=550.54.15",
    "arch=9.0",
    "arch>=10",
    "brand=tesla",
    "brand!=Quadro",
    "brand>1",
    "cuda>=12.0,driver<600",
    "cuda=>1",
    "cuda>=",
    ">=1",
    "cuda>=1.a",
    "12.4.1",
    "v12",
    "12",
    "12.4-rc1",
    "1048575",
    "1048576",
    "true",
    "True",
    "1",
    "imex",
    "cdi",
    "cdi/x",
    "é",
    "\u{202e}",
];

/// A value with 10 MB in it, built once (cloned per use).
fn huge(kind: usize) -> String {
    static HUGE: OnceLock<Vec<String>> = OnceLock::new();
    HUGE.get_or_init(|| {
        let n = 10 << 20;
        vec![
            "x".repeat(n),
            "0,".repeat(n / 2),
            format!("cuda>=1.{}", "0".repeat(n)),
            format!("GPU-{}", "a".repeat(n)),
            "1:".repeat(n / 2),
            "cuda>=1 ".repeat(n / 8),
            // distinct ids: a list search per id would be quadratic
            (0..1_500_000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ]
    })[kind % 7]
        .clone()
}

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        60 => (vec(select(WORDS), 0..6), select(&[",", " ", ", ", "", "\n"][..]))
            .prop_map(|(w, sep)| w.join(sep)),
        20 => any_str(24),
        // rare: each costs tens of milliseconds in a debug build
        1 => any::<usize>().prop_map(huge),
    ]
}

const KEYS: &[&str] = &[
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "NVIDIA_REQUIRE_CUDA",
    "NVIDIA_REQUIRE_ARCH",
    "NVIDIA_REQUIRE_JETPACK",
    "NVIDIA_REQUIRE_",
    "CUDA_VERSION",
    "NVIDIA_IMEX_CHANNELS",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "NVIDIA_MIG_MONITOR_DEVICES",
    "NVIDIA_DISABLE_REQUIRE",
    "nvidia_visible_devices",
    "LD_PRELOAD",
    "PATH",
    "",
];

fn env_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (select(KEYS), env_value()).prop_map(|(k, v)| format!("{k}={v}")),
        1 => (any_str(8), env_value()).prop_map(|(k, v)| format!("NVIDIA_REQUIRE_{k}={v}")),
        1 => any_str(16),
    ]
}

fn env_list() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        6 => vec(env_entry(), 0..10),
        // more NVIDIA_REQUIRE_* than nvhook accepts
        1 => (0usize..48).prop_map(|n| {
            let mut v: Vec<String> = (0..n).map(|i| format!("NVIDIA_REQUIRE_{i}=cuda>=1")).collect();
            v.push("NVIDIA_VISIBLE_DEVICES=all".into());
            v
        }),
    ]
}

fn mounts() -> impl Strategy<Value = Vec<(String, String)>> {
    let src = select(
        &[
            "/dev/null",
            "dev/null",
            "//dev//null/",
            "/dev/./null",
            "/dev/zero",
        ][..],
    );
    let dir = select(
        &[
            "/var/run/nvidia-container-devices",
            "var/run/nvidia-container-devices/",
            "/var/run//nvidia-container-devices/.",
            "/var/run/nvidia-container-devices-x",
            "/run/nvidia-container-devices",
        ][..],
    );
    let dst = (dir, vec(select(WORDS), 0..4)).prop_map(|(d, w)| format!("{d}/{}", w.join("/")));
    vec((src.prop_map(str::to_owned), dst), 0..4)
}

fn request_input() -> impl Strategy<Value = RequestInput> {
    (
        env_list(),
        mounts(),
        any::<[bool; 4]>(),
        select(
            &[
                "all",
                "compute,utility",
                "",
                "compute",
                "video, graphics",
                "bogus",
            ][..],
        ),
    )
        .prop_map(|(env, mounts, f, supported)| RequestInput {
            env,
            mounts,
            privileged: f[0],
            accept_env_unprivileged: f[1],
            accept_volume_mounts: f[2],
            disable_require: f[3],
            supported: supported.into(),
        })
}

/// A JSON value of any shape (for fields of the wrong type).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any_str(12).prop_map(Value::from),
        select(WORDS).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            vec((any_str(6), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// `Some(good)` mostly, sometimes missing, sometimes of any type.
fn field(good: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![6 => good.prop_map(Some), 1 => Just(None), 1 => any_json().prop_map(Some)]
}

fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
    )
}

/// Mutations of a byte string: what a file fuzzer does to a seed.
#[derive(Debug, Clone)]
enum Mutation {
    Byte(Index, u8),
    U32(Index, u32),
    U64(Index, u64),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    CopyWithin(Index, Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        select(
            &[
                0u32,
                1,
                2,
                3,
                4,
                7,
                8,
                12,
                16,
                24,
                48,
                64,
                0x7fff_ffff,
                0xffff_ffff
            ][..]
        ),
        any::<u32>()
    ];
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        3 => (any::<Index>(), word).prop_map(|(i, w)| Mutation::U32(i, w)),
        2 => (
            any::<Index>(),
            prop_oneof![
                select(&[0u64, 1 << 32, 1 << 63, u64::MAX - 0xfff, u64::MAX][..]),
                any::<u64>()
            ]
        )
            .prop_map(|(i, w)| Mutation::U64(i, w)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), any::<Index>(), 1usize..64).prop_map(|(a, b, n)| Mutation::CopyWithin(a, b, n)),
    ]
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        // word writes land on aligned offsets: where the formats keep their fields
        let aligned = |i: &Index, a: usize| (i.index(len) / a * a).min(len.saturating_sub(a));
        match m {
            Mutation::Byte(i, v) => b[i.index(len)] = *v,
            Mutation::U32(i, v) if len >= 4 => {
                let at = aligned(i, 4);
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            Mutation::U64(i, v) if len >= 8 => {
                let at = aligned(i, 8);
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            Mutation::Truncate(i) => b.truncate(i.index(len)),
            Mutation::Insert(i, v) => {
                let at = i.index(len);
                b.splice(at..at, v.iter().copied());
            }
            Mutation::CopyWithin(from, to, n) => {
                let (f, t) = (from.index(len), to.index(len));
                let n = (*n).min(len - f).min(len - t);
                b.copy_within(f..f + n, t);
            }
            _ => {}
        }
    }
    b
}

// ------------------------------------------------------------------------------- targets

fn state_json() -> impl Strategy<Value = Value> {
    (
        field(select(&["1.0.2", "1.1.0", "", "0.0.0-bogus"][..]).prop_map(Value::from)),
        field(any_str(16).prop_map(Value::from)),
        field(
            select(
                &[
                    "creating", "created", "running", "stopped", "paused", "bogus",
                ][..],
            )
            .prop_map(Value::from),
        ),
        field(prop_oneof![
            any::<i32>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from)
        ]),
        field(prop_oneof![
            select(&["/b", "b", "", "/..", "/run/x/../../etc", "\0"][..]).prop_map(Value::from),
            any_str(32).prop_map(Value::from)
        ]),
        field(
            vec((any_str(8), any_str(8)), 0..3)
                .prop_map(|kv| json!(kv.into_iter().collect::<std::collections::BTreeMap<_, _>>())),
        ),
    )
        .prop_map(|(v, id, status, pid, bundle, ann)| {
            object(vec![
                ("ociVersion", v),
                ("id", id),
                ("status", status),
                ("pid", pid),
                ("bundle", bundle),
                ("annotations", ann),
            ])
        })
}

fn json_bytes(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => v.prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => v_bytes_mutated(),
        1 => vec(any::<u8>(), 0..256),
    ]
}

/// A valid state or config.json with byte mutations (of a fixed representative seed).
fn v_bytes_mutated() -> impl Strategy<Value = Vec<u8>> {
    let seed = br#"{"ociVersion":"1.0.2","id":"c1","status":"created","pid":42,"bundle":"/b","root":{"path":"rootfs","readonly":true},"process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"env":["A=1","NVIDIA_VISIBLE_DEVICES=all","NVIDIA_DRIVER_CAPABILITIES=compute,utility"],"capabilities":{"bounding":["CAP_SYS_ADMIN"]}},"mounts":[{"destination":"/var/run/nvidia-container-devices/0","source":"/dev/null","type":"bind"}],"linux":{"namespaces":[{"type":"user"}],"cgroupsPath":"/x"}}"#;
    vec(mutation(), 1..6).prop_map(move |ms| mutate(seed.to_vec(), &ms))
}

#[test]
fn fuzz_state() {
    run("state", 3000, json_bytes(state_json()), |b| fuzz::state(&b));
}

fn bundle_json() -> impl Strategy<Value = Value> {
    let root = field(
        (
            select(&["rootfs", "/rootfs", "", "..", "../../x", "a\0b"][..]),
            field(any::<bool>().prop_map(Value::from)),
        )
            .prop_map(|(p, ro)| object(vec![("path", Some(p.into())), ("readonly", ro)])),
    );
    let process = field((env_list(), field(capabilities())).prop_map(|(env, caps)| {
        object(vec![
            ("cwd", Some("/".into())),
            ("args", Some(json!(["sh"]))),
            ("user", Some(json!({"uid": 0, "gid": 0}))),
            ("env", Some(json!(env))),
            ("capabilities", caps),
        ])
    }));
    let mounts = field(mounts().prop_map(|ms| {
        Value::from(
            ms.into_iter()
                .map(|(s, d)| json!({"source": s, "destination": d, "type": "bind"}))
                .collect::<Vec<_>>(),
        )
    }));
    let linux = field(
        (
            vec(select(&["user", "mount", "pid", "bogus"][..]), 0..3),
            any_str(12),
        )
            .prop_map(|(ns, cg)| {
                json!({"namespaces": ns.iter().map(|t| json!({"type": t})).collect::<Vec<_>>(),
                       "cgroupsPath": cg})
            }),
    );
    (root, process, mounts, linux, extra_fields()).prop_map(
        |(root, process, mounts, linux, extra)| {
            let mut o = object(vec![
                ("ociVersion", Some("1.0.2".into())),
                ("root", root),
                ("process", process),
                ("mounts", mounts),
                ("linux", linux),
            ]);
            add_fields(&mut o, extra);
            o
        },
    )
}

/// `process.capabilities` as runtimes write it (sets of names, names no table knows among
/// them), as OCI 1.0.0-rc1..rc4 wrote it (one flat list), or of any other type.
fn capabilities() -> impl Strategy<Value = Value> {
    let names = vec(
        select(
            &[
                "CAP_SYS_ADMIN",
                "CAP_CHOWN",
                "CAP_BOGUS",
                "CAP_NVHOOK_FROM_2031",
                "sys_admin",
                "",
            ][..],
        ),
        0..4,
    );
    prop_oneof![
        3 => (names.clone(), names.clone()).prop_map(|(b, e)| json!({ "bounding": b, "effective": e })),
        1 => names.prop_map(|c| json!(c)),
        1 => any_json(),
    ]
}

/// Fields nvhook does not read, or reads, of any type: huge numbers, future names.
fn extra_fields() -> impl Strategy<Value = Vec<(&'static str, Value)>> {
    let big = prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1.7e308)),
        Just(json!(-1)),
        any_json(),
    ];
    vec(
        (
            select(
                &[
                    "hooks",
                    "annotations",
                    "hostname",
                    "vm",
                    "futureField",
                    "Process",
                    "ROOT",
                    "ociVersion",
                ][..],
            ),
            big,
        ),
        0..3,
    )
}

fn add_fields(o: &mut Value, extra: Vec<(&'static str, Value)>) {
    if let Some(m) = o.as_object_mut() {
        for (k, v) in extra {
            m.entry(k).or_insert(v);
        }
    }
}

/// A spec that asks for no device: its environment names no variable nvhook reads.
fn quiet_bundle_json() -> impl Strategy<Value = Value> {
    let env = vec(
        select(
            &[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
                "HOME=/root",
                "A",
                "=x",
                "nvidia_visible_devices=all",
                "LD_PRELOAD=/x.so",
                "X=\u{0}",
            ][..],
        ),
        0..6,
    );
    let user = prop_oneof![
        Just(json!({"uid": 0, "gid": 0})),
        Just(json!({"uid": u64::MAX, "gid": -1, "additionalGids": [1e300]})),
        any_json(),
    ];
    (env, field(capabilities()), user, any_json(), extra_fields()).prop_map(
        |(env, caps, user, linux, extra)| {
            let mut o = object(vec![
                ("ociVersion", Some("1.0.2-dev".into())),
                ("root", Some(json!({"path": "rootfs", "readonly": true}))),
                (
                    "process",
                    Some(object(vec![
                        ("env", Some(json!(env))),
                        ("capabilities", caps),
                        ("user", Some(user)),
                        ("args", Some(json!(["sh"]))),
                    ])),
                ),
                ("linux", Some(linux)),
            ]);
            add_fields(&mut o, extra);
            o
        },
    )
}

#[test]
fn fuzz_bundle_config() {
    run("bundle_config", 300, json_bytes(bundle_json()), |b| {
        fuzz::bundle_config(&b)
    });
}

/// Issue 15's oracle: a spec that asks for no device is never refused and plans nothing,
/// whatever else it holds (checked in `fuzz::bundle_config`); byte mutations of such specs too.
#[test]
fn fuzz_spec_without_request() {
    let mutated = (quiet_bundle_json(), vec(mutation(), 1..4))
        .prop_map(|(v, ms)| mutate(serde_json::to_vec(&v).unwrap_or_default(), &ms));
    let specs = prop_oneof![
        3 => quiet_bundle_json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => mutated,
    ];
    run("spec_without_request", 300, specs, |b| {
        fuzz::bundle_config(&b)
    });
}

#[test]
fn fuzz_request() {
    run("request", 1000, request_input(), |i| fuzz::request(&i));
}

#[test]
fn fuzz_require() {
    let expr = (
        vec(select(WORDS), 0..6),
        select(&[" ", ",", ", ", "  "][..]),
    )
        .prop_map(|(w, sep)| w.join(sep));
    let version = prop_oneof![
        select(
            &[
                "",
                "0",
                "00",
                "1.0",
                "1",
                "1.0.0",
                "12.4",
                "12.10",
                "550.54.15",
                ".",
                "..",
                "1..2"
            ][..]
        )
        .prop_map(str::to_owned),
        vec(0u32..1000, 0..5).prop_map(|p| p
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")),
        any_str(8),
    ];
    let input = (
        vec(
            (select(&["CUDA", "ARCH", "X", "JETPACK", ""][..]), expr),
            0..4,
        ),
        version.clone(),
        version,
    );
    run("require", 4000, input, |(exprs, a, b)| {
        let exprs: Vec<(String, String)> =
            exprs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        fuzz::require(&exprs, &a, &b)
    });
}

#[test]
fn fuzz_config_toml() {
    let key = select(
        &[
            "driver-root",
            "dev-root",
            "proc-root",
            "sys-root",
            "binary-dirs",
            "no-cgroups",
            "supported-driver-capabilities",
            "disable-require",
            "accept-nvidia-visible-devices-envvar-when-unprivileged",
            "accept-nvidia-visible-devices-as-volume-mounts",
            "log-file",
            "driver_root",
            "bogus",
            "\"driver-root\"",
            "a.b",
        ][..],
    );
    let value = prop_oneof![
        select(
            &[
                "\"/\"",
                "\"/run/nvidia/driver\"",
                "true",
                "false",
                "0",
                "-1",
                "99999999999999999999",
                "[]",
                "[\"/a\", \"/b\"]",
                "[1, \"a\"]",
                "{}",
                "\"compute, utility\"",
                "\"all\"",
                "\"bogus\"",
                "\"\\u0000\"",
                "\"a\\\"",
                "'''x'''",
                "\"\"\"\n\"\"\"",
                "1979-05-27T07:32:00Z",
                "inf",
                "nan",
                "\"",
            ][..]
        )
        .prop_map(str::to_owned),
        any_str(12).prop_map(|s| format!("{s:?}")),
        any_str(12),
    ];
    let line = prop_oneof![
        6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => select(&["[table]", "[[arr]]", "# comment", "", "=", "[", "key"][..]).prop_map(str::to_owned),
        1 => any_str(20),
    ];
    run("config_toml", 3000, vec(line, 0..8), |lines| {
        fuzz::config(&lines.join("\n"))
    });
}

/// glibc's own cache, one our writer wrote, and an old-format one (glibc < 2.32 wrote the old
/// format followed by the new).
fn cache_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let glibc =
            std::fs::read("/etc/ld.so.cache").expect("this glibc host has /etc/ld.so.cache");
        let f = native_flags();
        let mut c = LdCache::default();
        c.merge(&[
            Entry::new("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", f),
            Entry::new("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", f),
            Entry::new("libm.so.6", "/lib32/libm.so.6", FLAG_ELF_LIBC6),
        ]);
        c.hwcaps = vec!["x86-64-v3".into()];
        c.entries.push(Entry {
            hwcap: 1 << 62,
            ..Entry::new("libz.so.1", "/usr/lib/glibc-hwcaps/x86-64-v3/libz.so.1", f)
        });
        let ours = c.to_bytes().expect("our writer");
        // old format: header, 12-byte entries, strings (offsets from the strings' start)
        let mut old = b"ld.so-1.7.0\0".to_vec();
        old.extend_from_slice(&2u32.to_le_bytes());
        let strings = b"libc.so.6\0/lib/libc.so.6\0libm.so.6\0/lib/libm.so.6\0";
        for (k, v) in [(0u32, 10u32), (25, 35)] {
            old.extend_from_slice(&f.to_le_bytes());
            old.extend_from_slice(&k.to_le_bytes());
            old.extend_from_slice(&v.to_le_bytes());
        }
        old.extend_from_slice(strings);
        // and the same followed by a new-format cache at the next 8-byte boundary
        let mut both = old[..16 + 24].to_vec();
        both.resize(both.len().next_multiple_of(8), 0);
        both.extend_from_slice(&ours);
        vec![glibc, ours, old, both]
    })
}

/// A cache whose entries all name one long string: small file, large parse (the shape of an
/// allocation bomb).
fn shared_string_cache(n: usize, len: usize) -> Vec<u8> {
    let mut b = b"glibc-ld.so.cache1.1".to_vec();
    let strings_at = 48 + n * 24;
    b.extend_from_slice(&(n as u32).to_le_bytes());
    b.extend_from_slice(&(len as u32 + 1).to_le_bytes());
    b.push(2);
    b.resize(48, 0);
    for _ in 0..n {
        b.extend_from_slice(&native_flags().to_le_bytes());
        b.extend_from_slice(&(strings_at as u32).to_le_bytes());
        b.extend_from_slice(&(strings_at as u32).to_le_bytes());
        b.extend_from_slice(&[0; 12]);
    }
    b.resize(strings_at + len, b'l');
    b.push(0);
    b
}

fn our_entries() -> impl Strategy<Value = Vec<Entry>> {
    let soname = prop_oneof![
        select(
            &[
                "libcuda.so.1",
                "libc.so.6",
                "libm.so.6",
                "libnvidia-ml.so.1",
                "libz.so.1",
                "",
                "lib1",
                "liba"
            ][..]
        )
        .prop_map(str::to_owned),
        any_str(10),
    ];
    let flags = prop_oneof![Just(native_flags()), Just(FLAG_ELF_LIBC6), any::<i32>()];
    vec((soname, any_str(12), flags), 0..5).prop_map(|v| {
        v.into_iter()
            .map(|(k, p, f)| Entry::new(k, format!("/usr/lib/{p}"), f))
            .collect()
    })
}

#[test]
fn fuzz_ldcache() {
    let input = prop_oneof![
        8 => (0..cache_seeds().len(), vec(mutation(), 0..8)).prop_map(|(s, ms)| mutate(cache_seeds()[s].clone(), &ms)),
        1 => (1usize..4_000, 1usize..2_000).prop_map(|(n, len)| shared_string_cache(n, len)),
        1 => vec(any::<u8>(), 0..128).prop_map(|mut b| {
            let magic: &[u8] = if b.first().is_some_and(|x| x % 2 == 0) { b"glibc-ld.so.cache1.1" } else { b"ld.so-1.7.0\0" };
            b.splice(0..0, magic.iter().copied());
            b
        }),
    ];
    run("ldcache", 400, (input, our_entries()), |(b, ours)| {
        fuzz::ldcache(&b, &ours)
    });
}

/// A small ELF shared object built here: a PT_LOAD, a PT_DYNAMIC with DT_STRTAB and
/// DT_SONAME, and section headers naming a `.note.cuda.fwd_compatibility` note as NVIDIA's libcuda
/// carries it. 64- or 32-bit.
fn tiny_elf(wide: bool, soname: &str, note_desc: &str) -> Vec<u8> {
    let (ehsize, phentsize, shentsize) = if wide { (64, 56, 64) } else { (52, 32, 40) };
    let word = |b: &mut Vec<u8>, v: u64| {
        if wide {
            b.extend_from_slice(&v.to_le_bytes())
        } else {
            b.extend_from_slice(&(v as u32).to_le_bytes())
        }
    };
    let phoff = ehsize;
    let dyn_off = phoff + 2 * phentsize;
    let ent = if wide { 16 } else { 8 };
    let strtab_off = dyn_off + 3 * ent;
    let strtab = format!("\0{soname}\0");
    let note_off = (strtab_off + strtab.len()).next_multiple_of(4);
    let name = b"NVIDIA Corporation\0";
    let mut note = Vec::new();
    note.extend_from_slice(&(name.len() as u32).to_le_bytes());
    note.extend_from_slice(&(note_desc.len() as u32).to_le_bytes());
    note.extend_from_slice(&1u32.to_le_bytes());
    note.extend_from_slice(name);
    note.resize(12 + name.len().next_multiple_of(4), 0);
    note.extend_from_slice(note_desc.as_bytes());
    let shstr_off = note_off + note.len();
    let shstr = b"\0.shstrtab\0.note.cuda.fwd_compatibility\0";
    let shoff = (shstr_off + shstr.len()).next_multiple_of(8);
    let mut b = b"\x7fELF".to_vec();
    b.extend_from_slice(&[if wide { 2 } else { 1 }, 1, 1, 0]);
    b.resize(16, 0);
    b.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
    b.extend_from_slice(&(if wide { 62u16 } else { 3 }).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    word(&mut b, 0); // entry
    word(&mut b, phoff as u64);
    word(&mut b, shoff as u64);
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [ehsize, phentsize, 2, shentsize, 3, 1] {
        b.extend_from_slice(&(v as u16).to_le_bytes());
    }
    // program headers: PT_LOAD of the whole file at vaddr 0x1000, PT_DYNAMIC
    let file_len = shoff + 3 * shentsize;
    for (ty, off, va, sz) in [
        (1u32, 0, 0x1000, file_len),
        (2, dyn_off, 0x1000 + dyn_off, 3 * ent),
    ] {
        b.extend_from_slice(&ty.to_le_bytes());
        if wide {
            b.extend_from_slice(&7u32.to_le_bytes());
            for v in [off, va, va, sz, sz, 0x1000] {
                word(&mut b, v as u64);
            }
        } else {
            for v in [off, va, va, sz, sz] {
                word(&mut b, v as u64);
            }
            b.extend_from_slice(&7u32.to_le_bytes());
            word(&mut b, 0x1000);
        }
    }
    // dynamic: DT_STRTAB (an address), DT_SONAME (an index), DT_NULL
    for (tag, val) in [(5u64, 0x1000 + strtab_off as u64), (14, 1), (0, 0)] {
        word(&mut b, tag);
        word(&mut b, val);
    }
    b.extend_from_slice(strtab.as_bytes());
    b.resize(note_off, 0);
    b.extend_from_slice(&note);
    b.extend_from_slice(shstr);
    b.resize(shoff, 0);
    // sections: null, .shstrtab, the note
    for (name, ty, off, size) in [
        (0u32, 0u32, 0, 0),
        (1, 3, shstr_off, shstr.len()),
        (11, 7, note_off, note.len()),
    ] {
        b.extend_from_slice(&name.to_le_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
        word(&mut b, 0); // flags
        word(&mut b, 0); // addr
        word(&mut b, off as u64);
        word(&mut b, size as u64);
        b.resize(b.len() + if wide { 24 } else { 16 }, 0);
    }
    b
}

/// The ELF seeds: the tiny ones built here, and the host's small glibc libraries.
fn elf_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let desc = r#"{"format":1,"CUDA Version":"12.4","driver":[550,54],"device":[]}"#;
        let mut v = vec![
            tiny_elf(true, "libcuda.so.1", desc),
            tiny_elf(false, "libcuda.so.1", desc),
        ];
        let cache = LdCache::parse(&std::fs::read("/etc/ld.so.cache").expect("/etc/ld.so.cache"))
            .expect("glibc's cache parses");
        for name in [
            "libdl.so.2",
            "libutil.so.1",
            "libanl.so.1",
            "libpthread.so.0",
            "librt.so.1",
        ] {
            if let Some(e) = cache.lookup(name, native_flags())
                && let Ok(b) = std::fs::read(&e.value)
                && b.len() <= 64 << 10
            {
                v.push(b);
            }
        }
        assert!(
            v.len() >= 3,
            "no small glibc library found to fuzz ELF with"
        );
        v
    })
}

#[test]
fn fuzz_elf() {
    // the seeds themselves parse to what was built into them
    let seeds = elf_seeds();
    for s in &seeds[..2] {
        let info = nvhook::elf::read_bytes(s).expect("tiny ELF parses");
        assert_eq!(info.soname.as_deref(), Some("libcuda.so.1"));
        assert_eq!(
            nvhook::elf::cuda_version_note_bytes(s).as_deref(),
            Some("12.4")
        );
    }
    let input = prop_oneof![
        (0..seeds.len(), vec(mutation(), 0..8))
            .prop_map(|(s, ms)| mutate(elf_seeds()[s].clone(), &ms)),
        (any::<bool>(), any_str(8), any_str(40)).prop_map(|(w, s, d)| tiny_elf(w, &s, &d)),
    ];
    run("elf", 3000, input, |b| fuzz::elf(&b));
}

#[test]
fn fuzz_proc_files() {
    let info_line = (
        select(
            &[
                "Model",
                "GPU UUID",
                "Bus Location",
                "Device Minor",
                "GPU Excluded",
                "IRQ",
                " GPU UUID ",
                "",
            ][..],
        ),
        prop_oneof![
            select(
                &[
                    "GPU-aaaa-1111",
                    "GPU-a/../b",
                    "GPU-\0",
                    "gpu-x",
                    "0000:3b:00.0",
                    "zz:zz",
                    "0",
                    "4294967296",
                    "-1",
                    "Yes",
                    "No",
                    ""
                ][..]
            )
            .prop_map(str::to_owned),
            any_str(12),
        ],
    )
        .prop_map(|(k, v)| format!("{k}: {v}"));
    let other_line = prop_oneof![
        select(
            &[
                "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build",
                "NVRM version: 1..2 .5 5. x.y",
                "DeviceFileMinor: 7",
                "DeviceFileMinor: -1",
                "DeviceFileMinor:",
                "Character devices:",
                "195 nvidia",
                "195 nvidia-frontend",
                "508 nvidia-uvm",
                "x nvidia",
                "Block devices:",
                "  8 sd",
                "12:devices:/user.slice/x",
                "0::/system.slice/c.scope",
                "0::/../../outside",
                "1:name=systemd:/a",
                "5:cpu,devices:",
                "::",
                "0::",
            ][..]
        )
        .prop_map(str::to_owned),
        (
            0u32..20,
            select(&["devices", "", "cpu,devices", "memory"][..]),
            select(&["/", "/a/b", "/..", "/a/../..", "", "a"][..])
        )
            .prop_map(|(i, c, p)| format!("{i}:{c}:{p}")),
        any_str(24),
    ];
    let mountinfo_line = (
        select(&["/", "/x", "/..", "/a\\040b", "\\", "/\\777"][..]),
        select(
            &[
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/devices",
                "/sys/fs/cgroup/unified",
                "/",
                "/a\\040b",
                "rel",
                "",
            ][..],
        ),
        select(&["cgroup2", "cgroup", "tmpfs", ""][..]),
        select(&["rw", "rw,devices", "devices", "rw,nosuid,devices,x"][..]),
        select(&[" - ", " -", "- ", " ", " - - "][..]),
    )
        .prop_map(|(root, mp, fs, opts, sep)| {
            format!("35 24 0:30 {root} {mp} rw,nosuid shared:9{sep}{fs} cgroup {opts}")
        });
    let text = vec(prop_oneof![info_line.clone(), other_line], 0..10);
    let second = vec(
        prop_oneof![2 => mountinfo_line, 1 => info_line, 1 => any_str(24)],
        0..6,
    );
    let nl = select(&["\n", "\r\n", "\n\n", "\0"][..]);
    run("proc_files", 4000, (text, second, nl), |(t, s, nl)| {
        fuzz::proc_files(&t.join(nl), &s.join(nl))
    });
}

/// The whole pipeline, as the runtime runs it, on the fake driver tree: `nvhook plan` of a bundle
/// whose config.json carries a generated hostile environment and mounts. Whatever the container
/// asks, the plan holds only the host's nodes at `/dev/<name>`, and targets inside the rootfs.
#[test]
fn fuzz_plan_end_to_end() {
    let fx = common::fixtures();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-plan");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(&fx.config).unwrap()
            + "accept-nvidia-visible-devices-as-volume-mounts = true\n",
    )
    .unwrap();
    let rootfs = fx.dir.join("rootfs-debian");
    let dev = fx.dir.join("dev");
    // the host's 10 MB values are for the in-process targets; the command line gets them too,
    // but a few are enough
    run(
        "plan_end_to_end",
        120,
        (env_list(), mounts(), any::<bool>()),
        |(env, mounts, privileged)| {
            let spec = json!({
                "ociVersion": "1.0.2",
                "root": {"path": rootfs},
                "process": {"cwd": "/", "args": ["true"], "user": {"uid": 0, "gid": 0}, "env": env,
                            "capabilities": {"bounding": if privileged { vec!["CAP_SYS_ADMIN"] } else { vec![] }}},
                "mounts": mounts.iter().map(|(s, d)| json!({"source": s, "destination": d, "type": "bind"})).collect::<Vec<_>>(),
            });
            std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
            let out = std::process::Command::new(common::nvhook())
                .args([
                    "--config",
                    config.to_str().unwrap(),
                    "plan",
                    "--bundle",
                    dir.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "nvhook panicked: {stderr}");
            if !out.status.success() {
                assert_eq!(out.status.code(), Some(1), "{stderr}");
                assert!(stderr.contains("nvhook: error: "), "{stderr}");
                assert!(
                    stderr.len() <= fuzz::MAX_ERROR_LEN + 64,
                    "an error of {} bytes",
                    stderr.len()
                );
                return;
            }
            let plan: Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
            let no_dotdot = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..");
            for d in plan["devices"].as_array().into_iter().flatten() {
                let (path, name) = (d["path"].as_str().unwrap(), d["name"].as_str().unwrap());
                assert_eq!(path, format!("/dev/{name}"));
                assert!(no_dotdot(path), "device {path}");
                let host = std::path::Path::new(d["host_path"].as_str().unwrap());
                assert!(
                    host.starts_with(&dev) && host.exists(),
                    "device from {host:?}"
                );
            }
            for m in plan["mounts"].as_array().into_iter().flatten() {
                assert!(no_dotdot(m["target"].as_str().unwrap()), "mount {m}");
                let src = std::path::Path::new(m["source"].as_str().unwrap());
                assert!(
                    src.starts_with(&fx.dir),
                    "mount source {src:?} outside the fake host"
                );
            }
            for s in plan["symlinks"].as_array().into_iter().flatten() {
                assert!(no_dotdot(s["path"].as_str().unwrap()), "symlink {s}");
            }
            for t in plan["tmpfs"].as_array().into_iter().flatten() {
                assert!(no_dotdot(t["target"].as_str().unwrap()), "tmpfs {t}");
            }
            for f in plan["files"].as_array().into_iter().flatten() {
                assert!(no_dotdot(f["path"].as_str().unwrap()), "file {f}");
            }
            for e in plan["ldcache"].as_array().into_iter().flatten() {
                assert!(
                    no_dotdot(e["path"].as_str().unwrap()),
                    "linker cache entry {e}"
                );
                assert!(!e["soname"].as_str().unwrap().contains('/'), "soname {e}");
            }
        },
    );
}
