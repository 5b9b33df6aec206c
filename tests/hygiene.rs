//! Process hygiene (issue 6, item 5): nvhook executes nothing with the container's environment,
//! every descriptor it opens is close-on-exec and none reaches the container or a child, and
//! `#![forbid(unsafe_code)]` heads every crate root but nvhook-sys, whose every `unsafe` carries a
//! SAFETY comment. Each check is shown able to fail on a crafted sample.

#![forbid(unsafe_code)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------------- static checks

/// Does `text` (a crate root) carry `#![forbid(unsafe_code)]` among its leading inner
/// attributes, i.e. before any item, and not inside a comment?
fn forbids_unsafe(text: &str) -> bool {
    let mut in_block_comment = false;
    for line in text.lines().map(str::trim) {
        if in_block_comment {
            in_block_comment = !line.contains("*/");
            continue;
        }
        if line.starts_with("/*") {
            in_block_comment = !line.contains("*/");
            continue;
        }
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if compact == "#![forbid(unsafe_code)]" {
            return true;
        }
        if compact.starts_with("#![") {
            continue; // another crate attribute
        }
        return false; // the first item: too late
    }
    false
}

/// Every `unsafe` block, fn or impl in `text` without a `// SAFETY:` comment in the 8 lines
/// before it (or on its own line): (line number, line).
fn unsafe_without_safety_comment(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let is_unsafe = ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
            .iter()
            .any(|k| code.contains(k));
        if !is_unsafe {
            continue;
        }
        let from = i.saturating_sub(8);
        if !lines[from..=i].iter().any(|l| l.contains("SAFETY:")) {
            bad.push((i + 1, line.trim().to_owned()));
        }
    }
    bad
}

/// Every target (crate root) of every workspace package: (package, root file).
fn crate_roots() -> Vec<(String, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(repo().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut roots = Vec::new();
    for p in m["packages"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            roots.push((
                p["name"].as_str().unwrap().to_owned(),
                PathBuf::from(t["src_path"].as_str().unwrap()),
            ));
        }
    }
    roots
}

#[test]
fn the_static_checks_can_fail() {
    assert!(forbids_unsafe(
        "//! doc\n\n#![forbid(unsafe_code)]\nmod a;\n"
    ));
    assert!(forbids_unsafe(
        "#![allow(dead_code)]\n#![ forbid( unsafe_code ) ]\n"
    ));
    assert!(!forbids_unsafe(
        "//! doc\nmod a;\n#![forbid(unsafe_code)]\n"
    ));
    assert!(!forbids_unsafe(
        "// #![forbid(unsafe_code)]\nfn main() {}\n"
    ));
    assert!(!forbids_unsafe(
        "/*\n#![forbid(unsafe_code)]\n*/\nfn main() {}\n"
    ));
    assert!(!forbids_unsafe("#![deny(unsafe_code)]\nfn main() {}\n"));
    assert_eq!(
        unsafe_without_safety_comment("fn f() {\n    let x = unsafe { g() };\n}\n").len(),
        1
    );
    assert!(
        unsafe_without_safety_comment(
            "    // SAFETY: g has no preconditions\n    unsafe { g() };\n"
        )
        .is_empty()
    );
}

#[test]
fn every_crate_root_but_sys_forbids_unsafe_code() {
    let roots = crate_roots();
    assert!(
        roots.iter().any(|(_, p)| p.ends_with("src/main.rs"))
            && roots.iter().any(|(_, p)| p.ends_with("tests/hygiene.rs")),
        "cargo metadata listed {roots:?}"
    );
    let missing: Vec<String> = roots
        .iter()
        .filter(|(pkg, _)| pkg != "nvhook-sys")
        .filter(|(_, p)| !forbids_unsafe(&std::fs::read_to_string(p).unwrap()))
        .map(|(pkg, p)| format!("{pkg}: {}", p.display()))
        .collect();
    assert!(
        missing.is_empty(),
        "these crate roots lack a leading #![forbid(unsafe_code)]:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_unsafe_in_sys_has_a_safety_comment() {
    let mut bad = Vec::new();
    for (pkg, root) in crate_roots() {
        if pkg != "nvhook-sys" {
            continue;
        }
        let dir = root.parent().unwrap().to_owned();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "rs") {
                for (n, l) in unsafe_without_safety_comment(&std::fs::read_to_string(&p).unwrap()) {
                    bad.push(format!("{}:{n}: {l}", p.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "unsafe without SAFETY:\n{}", bad.join("\n"));
}

/// The non-test code of every file under `dir` (a file's `#[cfg(test)]` module and what follows
/// it are left out): (path, code).
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                // A module `mod tests;` in its own file is test code: it is only compiled under
                // `#[cfg(test)]` (checked below), like the part of a file after `#[cfg(test)]`.
                let stem = p.file_stem().unwrap_or_default().to_string_lossy();
                if stem == "tests" || stem.ends_with("_tests") {
                    continue;
                }
                let lines: Vec<&str> = text.lines().collect();
                for (i, l) in lines.iter().enumerate() {
                    if l.trim() == "mod tests;" {
                        let before = &lines[i.saturating_sub(2)..i];
                        assert!(
                            before.iter().any(|b| b.trim() == "#[cfg(test)]"),
                            "{}: `mod tests;` without #[cfg(test)] right before it",
                            p.display()
                        );
                    }
                }
                let code = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
                out.push((p, code));
            }
        }
    }
    out
}

/// nvhook starts exactly one kind of program: `doctor` asks the runtimes for their version, with a
/// cleared environment. Nothing else in `src/` or `sys/` spawns or execs. Its children are forks
/// of nvhook itself, all through the one `libc::fork()` of nvhook-sys (`fork_child`): the NVML
/// child and the systemd D-Bus child (src/apply/systemd.rs); neither execs. A new `Command` anywhere fails this test until it is
/// reviewed and listed here.
#[test]
fn nothing_is_executed_but_doctors_runtime_versions() {
    let mut found = Vec::new();
    for dir in ["src", "sys/src"] {
        for (p, code) in sources(&repo().join(dir)) {
            for (i, line) in code.lines().enumerate() {
                let l = line.split("//").next().unwrap_or("");
                if [
                    "Command::new",
                    "execv",
                    "execl",
                    "posix_spawn",
                    "libc::system",
                    "fork(",
                ]
                .iter()
                .any(|k| l.contains(k))
                {
                    let rel = p.strip_prefix(repo()).unwrap().display().to_string();
                    let next: String = code.lines().skip(i).take(3).collect();
                    found.push((rel, l.trim().to_owned(), next));
                }
            }
        }
    }
    let mut unexpected = Vec::new();
    for (file, line, next) in &found {
        let ok = match file.as_str() {
            "src/doctor.rs" => line.contains("Command::new(rt)") && next.contains(".env_clear()"),
            "sys/src/lib.rs" => line.contains("libc::fork()"),
            _ => false,
        };
        if !ok {
            unexpected.push(format!("{file}: {line}"));
        }
    }
    assert_eq!(
        found.len(),
        2,
        "expected exactly doctor's runtime --version and nvhook-sys's one fork (NVML and systemd children): {found:?}"
    );
    assert!(
        unexpected.is_empty(),
        "unreviewed exec/spawn: {unexpected:?}"
    );
}

// ------------------------------------------------------------------------- the hook, traced

/// What strace saw the hook do that breaks hygiene: a descriptor made without close-on-exec
/// (every syscall that returns one, with the flag each takes), close-on-exec cleared, or an exec.
fn hygiene_violations(trace: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut execs = 0;
    for line in trace.lines() {
        let Some((call, result)) = line.rsplit_once(" = ") else {
            continue;
        };
        let name = call.split('(').next().unwrap_or("").trim();
        let ok_result = result
            .split_whitespace()
            .next()
            .and_then(|r| r.parse::<i64>().ok())
            .is_some_and(|r| r >= 0);
        if !ok_result {
            continue;
        }
        let cloexec = call.contains("CLOEXEC");
        let fine = match name {
            "execve" | "execveat" => {
                execs += 1;
                execs == 1 // strace starting nvhook itself
            }
            // always close-on-exec, by the kernel
            "bpf" | "pidfd_open" => true,
            "fcntl" => !call.contains("F_DUPFD,") && !call.contains("F_SETFD, 0"),
            "clone" | "clone3" | "fork" | "vfork" => true, // counted by the caller
            "open" | "openat" | "openat2" | "open_by_handle_at" | "open_tree" | "fsopen"
            | "fsmount" | "fspick" | "pipe2" | "dup3" | "socket" | "socketpair" | "accept4"
            | "eventfd2" | "epoll_create1" | "inotify_init1" | "signalfd4" | "memfd_create"
            | "timerfd_create" | "userfaultfd" | "perf_event_open" | "pidfd_getfd" => cloexec,
            // these cannot set the flag at all
            "creat" | "pipe" | "dup" | "dup2" | "accept" | "eventfd" | "epoll_create"
            | "inotify_init" | "signalfd" => false,
            _ => true,
        };
        if !fine {
            bad.push(line.to_owned());
        }
    }
    bad
}

const TRACED: &str = "open,openat,openat2,creat,open_by_handle_at,open_tree,fsopen,fsmount,\
fspick,pipe,pipe2,dup,dup2,dup3,fcntl,socket,socketpair,accept,accept4,eventfd,eventfd2,\
epoll_create,epoll_create1,inotify_init,inotify_init1,signalfd,signalfd4,memfd_create,\
timerfd_create,userfaultfd,perf_event_open,pidfd_open,pidfd_getfd,bpf,execve,execveat,clone,\
clone3,fork,vfork";

#[test]
fn the_trace_check_can_fail() {
    let t = "execve(\"/x/nvhook\", [\"nvhook\"], 0x7ffd /* 3 vars */) = 0\n\
             openat(AT_FDCWD, \"/etc/ld.so.cache\", O_RDONLY|O_CLOEXEC) = 3\n\
             openat(AT_FDCWD, \"/proc/1/ns/mnt\", O_RDONLY) = 4\n\
             openat(AT_FDCWD, \"/nope\", O_RDONLY) = -1 ENOENT (No such file or directory)\n\
             pipe2([5, 6], 0) = 0\n\
             dup(3) = 7\n\
             fcntl(3, F_DUPFD_CLOEXEC, 10) = 10\n\
             fcntl(3, F_SETFD, 0) = 0\n\
             open_tree(AT_FDCWD, \"/x\", OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC) = 8\n\
             execve(\"/bin/sh\", [\"sh\"], 0x7ffd /* 3 vars */) = 0\n";
    let bad = hygiene_violations(t);
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(bad[0].contains("/proc/1/ns/mnt") && bad[4].starts_with("execve(\"/bin/sh\""));
}

/// Run nvhook as the prestart hook under strace (no -f: the hook process itself), for a
/// container asking for everything on the CUDA compat image, and for a MIG device (the NVML
/// child). Every descriptor it made must be close-on-exec, and it must execute nothing.
#[test]
fn every_descriptor_the_hook_opens_is_close_on_exec() {
    require_tool("strace", "strace");
    for (name, image, env, clones) in [
        (
            "all GPUs, all capabilities, compat image",
            "rootfs-compat",
            vec![
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=all",
            ],
            1, // "all" asks NVML (in the child) which GPUs have MIG on
        ),
        (
            "a MIG device (NVML in a forked child)",
            "rootfs-debian",
            vec!["NVIDIA_VISIBLE_DEVICES=MIG-aaaaaaaa-1111-2222-3333-444444444444"],
            1,
        ),
    ] {
        let mut s = Spec::new(&env, "probe cuda; true");
        s.rootfs = image;
        let b = bundle(&s);
        let log = b.dir.with_extension("strace");
        let _ = std::fs::remove_file(&log);
        let cfg = b.dir.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        let hook = c["hooks"]["prestart"][0].clone();
        let mut args = vec![
            Value::from("strace"),
            "-qq".into(),
            "-o".into(),
            log.to_string_lossy().into_owned().into(),
            "-e".into(),
            format!("trace={TRACED}").into(),
            nvhook().into(),
        ];
        args.extend(hook["args"].as_array().unwrap()[1..].iter().cloned());
        c["hooks"]["prestart"][0]["path"] = "/usr/bin/strace".into();
        c["hooks"]["prestart"][0]["args"] = args.into();
        std::fs::write(&cfg, serde_json::to_vec(&c).unwrap()).unwrap();
        let r = {
            let _g = serial();
            run_oci("runc", &b)
        }
        .expect_ok(name);
        assert!(r.has("cuda: path="), "{name}: {}", r.stdout);
        let trace = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        let opened = trace
            .lines()
            .filter(|l| l.starts_with("open") && !l.contains(" = -1 "))
            .count();
        assert!(
            opened > 20 && trace.contains("open_tree("),
            "{name}: the trace does not show the hook's work:\n{trace}"
        );
        let bad = hygiene_violations(&trace);
        assert!(
            bad.is_empty(),
            "{name}: descriptors without close-on-exec, or an exec:\n{}",
            bad.join("\n")
        );
        let forks = trace
            .lines()
            .filter(|l| {
                ["clone(", "clone3(", "fork(", "vfork("]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .count();
        assert_eq!(forks, clones, "{name}: processes started:\n{trace}");
        println!(
            "{name}: {opened} descriptors opened, all close-on-exec; {forks} fork(s), no exec"
        );
    }
}

// ------------------------------------------------------------------------- children, container

/// Start a container (one at a time); the host's mount table is not compared here (other test
/// runs on a shared machine change it; hostile.rs and the e2e tests check it).
fn run_one(runtime: &str, s: &Spec<'_>) -> Run {
    let _g = serial();
    let b = bundle(s);
    run_oci(runtime, &b)
}

/// The NVML child is a fork of the hook: it holds only what the hook held (its registration's
/// environment, never the container's) and every descriptor in it is close-on-exec, so nothing
/// would outlive an exec by NVML.
#[test]
fn the_nvml_child_has_no_container_env_and_only_close_on_exec_fds() {
    let report = fixtures().dir.join("nvml-child-report");
    let _ = std::fs::remove_file(&report);
    let mut s = Spec::new(
        &[
            "NVIDIA_VISIBLE_DEVICES=MIG-aaaaaaaa-1111-2222-3333-444444444444",
            "NVHOOK_CONTAINER_MARKER=leak",
            "LD_PRELOAD=/container-marker.so",
        ],
        "probe cuda; true",
    );
    s.hook_env = vec![format!("NVML_FAKE_REPORT={}", report.display())];
    run_one("runc", &s).expect_ok("a MIG container");
    let text = std::fs::read_to_string(&report).expect("the fake NVML was not initialized");
    let env: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .collect();
    assert!(
        env.iter().any(|e| e.starts_with("NVML_FAKE_REPORT="))
            && !env
                .iter()
                .any(|e| e.contains("marker") || e.contains("MARKER") || e.starts_with("LD_")),
        "the NVML child's environment: {env:?}"
    );
    let fds: Vec<(u32, u64, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("fd "))
        .filter_map(|l| {
            let (n, rest) = l.split_once(" flags=")?;
            let (flags, target) = rest.split_once(" -> ")?;
            Some((n.parse().ok()?, u64::from_str_radix(flags, 8).ok()?, target))
        })
        .collect();
    assert!(fds.len() >= 3, "{text}");
    const O_CLOEXEC: u64 = 0o2000000;
    let open_on_exec: Vec<_> = fds
        .iter()
        .filter(|(n, flags, _)| *n > 2 && flags & O_CLOEXEC == 0)
        .collect();
    assert!(
        open_on_exec.is_empty(),
        "descriptors of the NVML child that an exec would keep: {open_on_exec:?}"
    );
}

/// `nvhook doctor` asks runc, crun and podman for their version: those children get a cleared
/// environment and no descriptor but stdin, stdout and stderr, even when nvhook itself was
/// started with extra environment and a descriptor left open without close-on-exec. The
/// runtimes are stand-ins bind-mounted over /usr/local/sbin (first in doctor's PATH) in a
/// private mount namespace, so the host's own are not touched.
#[test]
fn doctors_children_get_a_cleared_env_and_no_inherited_fds() {
    require_tool("unshare", "util-linux");
    let fx = fixtures();
    let dir = fx.dir.join("doctor-children");
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for rt in ["runc", "crun", "podman"] {
        let out = dir.join(rt);
        std::fs::write(
            bin.join(rt),
            format!(
                "#!/bin/sh\nenv > {o}.env\nexec ls -l /proc/self/fd/ > {o}.fds\n",
                o = out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            bin.join(rt),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    // a descriptor nvhook inherits without close-on-exec: the shell opens it on fd 7
    let leak = dir.join("inherited-marker");
    std::fs::write(&leak, b"x").unwrap();
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /usr/local/sbin && exec 7<{} && exec {} --config {} doctor",
            bin.display(),
            leak.display(),
            nvhook(),
            fx.config.display()
        ))
        .env("NVHOOK_CONTAINER_MARKER", "leak")
        .env("LD_LIBRARY_PATH", "/nonexistent-marker")
        .output()
        .unwrap();
    let doctor = String::from_utf8_lossy(&o.stdout);
    for rt in ["runc", "crun", "podman"] {
        let env = std::fs::read_to_string(dir.join(format!("{rt}.env")))
            .unwrap_or_else(|_| panic!("doctor did not run the stand-in {rt}:\n{doctor}"));
        let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        assert!(
            names.contains(&"PATH")
                && names
                    .iter()
                    .all(|n| ["PATH", "PWD", "SHLVL", "_", "OLDPWD"].contains(n)),
            "{rt} was started with this environment:\n{env}"
        );
        let fds = std::fs::read_to_string(dir.join(format!("{rt}.fds"))).unwrap();
        // ls's own fds: 0-2 and the directory it lists
        let extra: Vec<&str> = fds
            .lines()
            .filter(|l| l.contains(" -> "))
            .filter(|l| {
                let n = l.split(" -> ").next().unwrap_or("");
                let fd = n.split_whitespace().last().unwrap_or("");
                !["0", "1", "2"].contains(&fd) && !l.contains("/proc/")
            })
            .collect();
        assert!(
            extra.is_empty() && !fds.contains("inherited-marker"),
            "{rt} inherited descriptors:\n{fds}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container's process holds only stdin, stdout and stderr: the hook passes it nothing (its
/// descriptors die with it, and it never hands one over). Compared with the same container
/// without the hook, under runc and crun.
#[test]
fn no_descriptor_of_the_host_reaches_the_container() {
    // the container's process becomes ls: it lists what it inherited (and its own directory fd)
    let script = "exec ls -l /proc/self/fd/";
    for runtime in ["runc", "crun"] {
        let mut listings = Vec::new();
        for stage in [Stage::None, Stage::Prestart] {
            let mut s = Spec::new(&["NVIDIA_VISIBLE_DEVICES=all"], script);
            s.stage = stage;
            let r = run_one(runtime, &s).expect_ok(runtime);
            let mut fds: Vec<String> = r
                .stdout
                .lines()
                .filter_map(|l| l.split_once(" -> "))
                .filter(|(_, target)| !target.starts_with("/proc/"))
                .filter_map(|(head, _)| head.split_whitespace().last())
                .map(|fd| format!("fd:{fd}"))
                .collect();
            fds.sort();
            listings.push((fds, r.stdout));
        }
        let (plain, hooked) = (&listings[0], &listings[1]);
        assert_eq!(
            plain.0, hooked.0,
            "{runtime}: the hook changed the container's descriptors:\nwithout:\n{}\nwith:\n{}",
            plain.1, hooked.1
        );
        assert_eq!(
            hooked.0,
            vec!["fd:0", "fd:1", "fd:2"],
            "{runtime}: the container holds more than stdio:\n{}",
            hooked.1
        );
    }
}
