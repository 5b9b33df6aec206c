use super::*;
use spec::MAX_KEPT_ENV;

fn view(json: &str) -> SpecView {
    SpecView::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn container(json: &str) -> Result<Container, Error> {
    BundleConfig::from_bytes(Path::new("/b"), json.as_bytes())?.container(None)
}

#[test]
fn state_errors_are_clear() {
    let e = read_state(&b""[..]).unwrap_err();
    assert!(e.to_string().contains("stdin is empty"), "{e}");
    let e = read_state(&b"{not json"[..]).unwrap_err();
    assert!(e.to_string().contains("OCI state"), "{e}");
    let e = read_state(&b"[1]"[..]).unwrap_err();
    assert!(e.to_string().contains("not a JSON object"), "{e}");
    let big = vec![b' '; (MAX_STATE_SIZE + 10) as usize];
    assert!(read_state(&big[..]).is_err());
}

#[test]
fn state_parses() {
    let s = read_state(
        &br#"{"ociVersion":"1.0.2","id":"c1","status":"created","pid":42,"bundle":"/b"}"#[..],
    )
    .unwrap();
    assert_eq!(s.pid(), Some(42));
    assert_eq!(s.id(), "c1");
    assert_eq!(s.bundle(), Path::new("/b"));
}

/// A status or version nvhook has never heard of, unknown fields, and the `bundlePath` of
/// Docker's runc before 17.06 (which the toolkit reads too).
#[test]
fn state_is_read_tolerantly() {
    let s = read_state(
        &br#"{"ociVersion":"9.9.9-new","id":"c1","status":"paused-in-the-future","pid":42,
              "bundlePath":"/old","annotations":{"a":{"nested":[1]}},"extra":1e400,"more":18446744073709551616}"#[..],
    )
    .unwrap();
    assert_eq!(s.bundle(), Path::new("/old"));
    assert_eq!(s.pid(), Some(42));
}

#[test]
fn missing_bundle_names_the_path() {
    let s = read_state(
        &br#"{"ociVersion":"1.0.2","id":"c1","status":"created","pid":42,"bundle":"/nonexistent/bundle"}"#[..],
    )
    .unwrap();
    let e = BundleConfig::read(s.bundle()).err().unwrap();
    assert!(
        e.to_string().contains("/nonexistent/bundle/config.json"),
        "{e}"
    );
}

#[test]
fn relative_root_is_joined_to_the_bundle() {
    let c = container(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
            "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"env":["A=1","NVIDIA_VISIBLE_DEVICES=all","CUDA_VERSION=12.4","NVHOOK_DEVICES_X=all"]}}"#,
    )
    .unwrap();
    assert_eq!(c.rootfs, Path::new("/b/rootfs"));
    // only the variables nvhook reads are kept
    assert_eq!(
        c.env,
        [
            "NVIDIA_VISIBLE_DEVICES=all",
            "CUDA_VERSION=12.4",
            "NVHOOK_DEVICES_X=all"
        ]
    );
    assert_eq!(c.user, ProcessUser::default());
    assert!(!c.privileged);
}

#[test]
fn process_user_is_mapped_through_the_specs_own_user_namespace() {
    let u = container(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "annotations":{"run.oci.keep_original_groups":"1"},
            "process":{"cwd":"/","args":["sh"],"user":{"uid":1000,"gid":5,"additionalGids":[5,7,70000]}},
            "linux":{"uidMappings":[{"containerID":0,"hostID":1,"size":999},{"containerID":1000,"hostID":0,"size":1}],
                     "gidMappings":[{"containerID":0,"hostID":100,"size":65536}]}}"#,
    )
    .unwrap()
    .user;
    assert_eq!((u.uid, u.gid), (0, 105));
    // an id outside every range cannot be taken by the process: u32::MAX, never a real id
    assert_eq!(u.additional_gids, [105, 107, u32::MAX]);
    assert!(u.keep_groups);
}

/// Issue 15: the capability rule of the toolkit (strings compared, bounding set only), a name
/// no table knows, the flat list of OCI 1.0.0-rc1..rc4.
#[test]
fn capabilities_table() {
    let rows: &[(&str, bool, &str)] = &[
        (r#"{"bounding":["CAP_SYS_ADMIN"]}"#, true, "bounding"),
        (
            r#"{"bounding":["CAP_CHOWN","CAP_BRAND_NEW_2031","CAP_SYS_ADMIN"],"effective":["CAP_NOT_YET"]}"#,
            true,
            "unknown names beside it",
        ),
        (
            r#"{"bounding":["CAP_BRAND_NEW_2031"],"effective":["CAP_SYS_ADMIN"]}"#,
            false,
            "only the bounding set counts",
        ),
        (
            r#"{"bounding":["cap_sys_admin","SYS_ADMIN"]}"#,
            false,
            "the toolkit compares exactly",
        ),
        (
            r#"["CAP_CHOWN","CAP_SYS_ADMIN"]"#,
            true,
            "pre-rc5 flat list",
        ),
        (r#"["CAP_CHOWN"]"#, false, "pre-rc5 flat list without it"),
        (
            r#"{"bounding":[1,null,{"a":[]},"CAP_SYS_ADMIN"]}"#,
            true,
            "junk items skipped",
        ),
        (r#"{"bounding":"CAP_SYS_ADMIN"}"#, false, "not a list"),
        (r#""CAP_SYS_ADMIN""#, false, "not a set"),
        (r#"null"#, false, "null"),
        (
            r#"{"Bounding":["CAP_SYS_ADMIN"]}"#,
            true,
            "Go matches keys ignoring case",
        ),
    ];
    for (caps, want, why) in rows {
        let json = format!(
            r#"{{"root":{{"path":"/r"}},"process":{{"capabilities":{caps},"env":["NVIDIA_VISIBLE_DEVICES=all"]}}}}"#
        );
        let c = container(&json).unwrap_or_else(|e| panic!("{why}: {e}"));
        assert_eq!(c.privileged, *want, "{why}: {caps}");
    }
}

/// Fields nvhook does not use are never read: any type, any size, any future field.
#[test]
fn unused_fields_of_any_type_are_ignored() {
    let c = container(
        r#"{"ociVersion":"0.5.0-ancient","root":{"path":"/r","readonly":"maybe"},
            "process":{"terminal":"no","args":7,"rlimits":[{"type":"RLIMIT_NOFILE","hard":18446744073709551615,"soft":-1}],
                       "oomScoreAdj":1e300,"noNewPrivileges":"yes","env":["NVIDIA_VISIBLE_DEVICES=0"],"ioPriority":{"class":"IOPRIO_CLASS_FUTURE"}},
            "linux":{"resources":{"memory":{"limit":18446744073709551615,"swappiness":1000},"cpu":{"shares":99999999999999999999}},
                     "namespaces":[{"type":"time"},{"type":"brand-new"}],"seccomp":{"defaultAction":"SCMP_ACT_KILL_THREAD_FUTURE"},
                     "intelRdt":{"closID":"x","schemata":[1]},"personality":{"domain":"LINUX32"}},
            "hooks":{"prestart":"not a list","poststop":[{"path":7}]},
            "domainname":{"not":"a string"},"vm":{},"windows":[],"zos":null,"newTopLevelField":[[[]]],
            "mounts":[{"destination":"/x","type":"bind","options":["rbind",1]},"junk",{"source":7}]}"#,
    )
    .unwrap();
    assert_eq!(c.env, ["NVIDIA_VISIBLE_DEVICES=0"]);
    assert_eq!(
        c.mounts,
        [("".into(), "/x".into()), (String::new(), String::new())]
    );
}

/// Huge numbers where nvhook reads ids: no panic, no wrap-around to a real id.
#[test]
fn huge_ids_are_no_ids() {
    let u = container(
        r#"{"root":{"path":"/r"},"process":{"user":{"uid":4294967296,"gid":-1,"additionalGids":[1e3,99999999999999999999]}},
            "linux":{"uidMappings":[{"containerID":0,"hostID":4294967295,"size":4294967295}]}}"#,
    )
    .unwrap()
    .user;
    assert_eq!(u.uid, u32::MAX);
    assert_eq!(u.gid, u32::MAX);
    assert_eq!(u.additional_gids, [u32::MAX, u32::MAX]);
    let u = container(
        r#"{"root":{"path":"/r"},"process":{"user":{"uid":5}},
            "linux":{"uidMappings":[{"containerID":0,"hostID":4294967290,"size":4294967295}]}}"#,
    )
    .unwrap()
    .user;
    assert_eq!(u.uid, u32::MAX, "host id past u32 must not wrap");
}

/// What runc's decoder (Go) and crun's (yajl) read differently: a repeated key (runc: the last,
/// crun: the first) and a key in other case (runc only). Measured with runc 1.1.5 and
/// crun 1.8.1. A field nvhook uses read differently refuses a container that asks for a device.
#[test]
fn keys_the_runtimes_read_differently() {
    let v = view(
        r#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"],"env":["NVIDIA_VISIBLE_DEVICES=1"]}}"#,
    );
    assert_eq!(v.env, ["NVIDIA_VISIBLE_DEVICES=1"], "last wins, as in runc");
    assert_eq!(v.ambiguous, ["process.env"]);
    let v = view(
        r#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0", "A=1"],"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#,
    );
    assert!(
        v.ambiguous.is_empty(),
        "the same value twice (for what nvhook reads) is no ambiguity"
    );
    let v = view(r#"{"Process":{"ENV":["NVIDIA_VISIBLE_DEVICES=0"]}}"#);
    assert_eq!(v.env, ["NVIDIA_VISIBLE_DEVICES=0"], "runc reads ENV");
    assert_eq!(v.ambiguous, ["process.env"], "crun does not");
    let v = view(r#"{"proce\u017f\u017f":{"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#);
    assert_eq!(
        v.env,
        ["NVIDIA_VISIBLE_DEVICES=0"],
        "Go folds LONG S onto s"
    );
    let v = view(
        r#"{"process":{"capabilities":{"bounding":[]}},"process":{"capabilities":{"bounding":["CAP_SYS_ADMIN"]}}}"#,
    );
    assert_eq!(v.sys_admin, Some(true));
    assert_eq!(v.ambiguous, ["process.capabilities"]);
    let e = container(r#"{"root":{"path":"/r"},"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"],"env":["NVIDIA_VISIBLE_DEVICES=1"]}}"#)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("process.env twice") && e.contains("crun the first"),
        "{e}"
    );
    // a repeated object merges (Go): fields of both count
    let v =
        view(r#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]},"process":{"user":{"uid":7}}}"#);
    assert_eq!((v.env.len(), v.uid), (1, Some(7)));
    assert!(v.ambiguous.is_empty());
}

#[test]
fn what_cannot_be_read_is_an_error_naming_the_file() {
    for (text, want) in [
        ("", "EOF"),
        ("[]", "not a JSON object"),
        ("{\"process\":", "EOF"),
        ("{} {}", "trailing"),
    ] {
        let e = BundleConfig::from_bytes(Path::new("/b"), text.as_bytes())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("/b/config.json") && e.contains(want),
            "{text:?}: {e}"
        );
    }
    let e = container(r#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no \"root\""), "{e}");
    let e = container(r#"{"root":{"path":7}}"#)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no \"root\""), "{e}");
}

/// Invalid UTF-8 in a string is replaced, as Go's decoder does, not refused.
#[test]
fn invalid_utf8_is_replaced() {
    let mut text = br#"{"root":{"path":"/r"},"process":{"args":[""#.to_vec();
    text.extend_from_slice(b"\xff\xfe");
    text.extend_from_slice(br#""],"env":["NVIDIA_VISIBLE_DEVICES=0"#);
    text.extend_from_slice(b"\xc3");
    text.extend_from_slice(br#""]}}"#);
    let c = BundleConfig::from_bytes(Path::new("/b"), &text)
        .unwrap()
        .container(None)
        .unwrap();
    assert_eq!(c.env, ["NVIDIA_VISIBLE_DEVICES=0\u{fffd}"]);
}

/// Issue 16: memory is bounded by what is kept, not by the file.
#[test]
fn bounds() {
    // a million variables nvhook does not read are not kept
    let env: Vec<String> = (0..1_000_000).map(|i| format!("V{i}=x")).collect();
    let json = serde_json::json!({"root": {"path": "/r"}, "process": {"env": env}}).to_string();
    let v = view(&json);
    assert!(v.env.is_empty() && v.over_limit.is_none());
    // too many that it reads: refused when a device is asked for
    let env: Vec<String> = (0..=MAX_KEPT_ENV)
        .map(|i| format!("NVIDIA_X{i}=x"))
        .collect();
    let json = serde_json::json!({"root": {"path": "/r"}, "process": {"env": env}}).to_string();
    let v = view(&json);
    assert_eq!(v.env.len(), MAX_KEPT_ENV);
    let e = container(&json).err().unwrap().to_string();
    assert!(e.contains("more than 4096"), "{e}");
}

#[test]
fn oversized_config_is_refused_before_it_is_parsed() {
    let dir = std::env::temp_dir().join(format!("nvhook-state-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = std::fs::File::create(dir.join("config.json")).unwrap();
    f.set_len(MAX_CONFIG_SIZE + 1).unwrap();
    let e = BundleConfig::read(&dir).err().unwrap().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(e.contains("larger than 16 MiB"), "{e}");
}

#[test]
fn key_folding_is_gos() {
    for (k, n, want) in [
        ("env", "env", true),
        ("ENV", "env", true),
        ("eNv", "env", true),
        ("env ", "env", false),
        ("en", "env", false),
        ("\u{212A}", "k", true),
        ("\u{17F}ize", "size", true),
        ("\u{130}d", "id", false),
    ] {
        assert_eq!(spec::key_is(k, n), want, "{k:?} ~ {n:?}");
    }
}

/// Escapes Go's decoder takes: a lone surrogate becomes U+FFFD there.
#[test]
fn lone_surrogates_do_not_fail_a_container() {
    let c = container(
        r#"{"root":{"path":"/r"},"hostname":"\ud800","process":{"args":["\udfff x"],"env":["NVIDIA_VISIBLE_DEVICES=0","X=\ud800"]}}"#,
    )
    .unwrap();
    assert_eq!(c.env, ["NVIDIA_VISIBLE_DEVICES=0"]);
    let c =
        container(r#"{"root":{"path":"/r"},"process":{"env":["NVIDIA_VISIBLE_DEVICES=0\ud800"]}}"#)
            .unwrap();
    assert_eq!(c.env, ["NVIDIA_VISIBLE_DEVICES=0\u{fffd}"]);
}

#[test]
fn surrogate_escapes_are_replaced_as_go_does() {
    for (text, want) in [
        (r#""\ud800""#, r#""\ufffd""#),
        (r#""\ud83d\ude00""#, r#""\ud83d\ude00""#),
        (r#""\\ud800""#, r#""\\ud800""#),
        (r#""\udc00\ud800x""#, r#""\ufffd\ufffdx""#),
        (r#""é\"\ud800" "\u0041""#, r#""é\"\ufffd" "\u0041""#),
    ] {
        assert_eq!(spec::replace_lone_surrogates(text), want, "{text}");
    }
}
