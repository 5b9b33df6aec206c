//! Process hygiene (issue 6, item 5): nvhook executes nothing with the container's environment,
//! every descriptor it opens is close-on-exec and none reaches the container or a child, and
//! `#![forbid(unsafe_code)]` heads every crate root but nvhook-sys, whose every `unsafe` carries a
//! SAFETY comment. Each check is shown able to fail on a crafted sample.

#![forbid(unsafe_code)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
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
            "sys/src/process.rs" => line.contains("libc::fork()"),
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

// ------------------------------------------------------------------------- import circles

/// The module path of a file of `src/` (relative to it): `lib.rs` is the crate root, `foo.rs`
/// and `foo/mod.rs` are `foo`, `foo/bar.rs` is `foo::bar`.
fn module_of(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut segs: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if matches!(segs.last().map(String::as_str), Some("mod" | "lib")) {
        segs.pop();
    }
    segs
}

/// Every `crate::…` and `super::…` path in `code` (line comments left out), resolved to an
/// absolute module path from the module `me`; `use` groups (`crate::a::{b, c::d}`) are expanded.
fn import_paths(code: &str, me: &[String]) -> Vec<Vec<String>> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if i > 0 && (ident(b[i - 1]) || b[i - 1] == b':') {
            i += 1;
            continue;
        }
        let (base, mut j) = if code[i..].starts_with("crate::") {
            (Vec::new(), i + 7)
        } else if code[i..].starts_with("super::") {
            let mut base = me.to_vec();
            let mut j = i;
            while code[j..].starts_with("super::") {
                base.pop();
                j += 7;
            }
            (base, j)
        } else {
            i += 1;
            continue;
        };
        j = path_tree(&code, j, base, &mut out);
        i = j.max(i + 1);
    }
    out
}

/// Parse one path tree at `at` (segments, then maybe a `{…}` group) below `prefix`; push each
/// leaf path to `out`; return where it ended.
fn path_tree(
    code: &str,
    mut at: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let b = code.as_bytes();
    let skip_ws = |mut k: usize| {
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        k
    };
    loop {
        at = skip_ws(at);
        if at < b.len() && b[at] == b'{' {
            return path_group(code, at + 1, &prefix, out);
        }
        let start = at;
        while at < b.len() && (b[at].is_ascii_alphanumeric() || b[at] == b'_') {
            at += 1;
        }
        if at > start && &code[start..at] != "self" {
            prefix.push(code[start..at].to_owned());
        }
        if at > start && code[at..].starts_with("::") {
            at += 2;
            continue;
        }
        out.push(prefix);
        return at;
    }
}

/// The rest of a `{…}` group from `at` (just after its `{`), as [`path_tree`]; returns the
/// position after its `}`.
fn path_group(code: &str, mut at: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let b = code.as_bytes();
    while at < b.len() {
        match b[at] {
            b'}' => return at + 1,
            b',' => at += 1,
            c if c.is_ascii_whitespace() => at += 1,
            _ => {
                let before = at;
                at = path_tree(code, at, prefix.to_vec(), out);
                // `as x`, `*` and the like: on to the next `,` or `}`
                while at < b.len() && b[at] != b',' && b[at] != b'}' {
                    at += 1;
                }
                at = at.max(before + 1);
            }
        }
    }
    at
}

/// The import graph of `files` ((path relative to src/, code)): file -> the files whose modules
/// it names through `crate::`/`super::`, each path resolved to the longest module that has a
/// file. A file naming an ancestor or a descendant of its own module (a child using its parent,
/// `super::`) is not an edge: only files that are not nested in one another form circles.
fn import_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let by_module: BTreeMap<Vec<String>, &str> = files
        .iter()
        .map(|(rel, _)| (module_of(rel), rel.as_str()))
        .collect();
    let mut graph = BTreeMap::new();
    for (rel, code) in files {
        let me = module_of(rel);
        let mut to = BTreeSet::new();
        for path in import_paths(code, &me) {
            let target = (0..=path.len())
                .rev()
                .find_map(|n| by_module.get(&path[..n]).map(|f| (n, *f)));
            let Some((n, file)) = target else { continue };
            let m = &path[..n];
            if m.starts_with(&me) || me.starts_with(m) {
                continue;
            }
            to.insert(file.to_owned());
        }
        graph.insert(rel.clone(), to);
    }
    graph
}

/// `graph` with each file replaced by its top-level module (`nvidia/facts.rs` -> `nvidia`;
/// `lib.rs` left out); edges inside one module dropped.
fn top_level_graph(
    graph: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let top = |f: &str| module_of(f).first().cloned();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph {
        let Some(a) = top(from) else { continue };
        let entry = out.entry(a.clone()).or_default();
        for b in tos.iter().filter_map(|t| top(t)) {
            if b != a {
                entry.insert(b);
            }
        }
    }
    out
}

/// One circle per strongly connected part of `graph` with more than one node, written
/// `a -> b -> a` (the shortest way round from its first node).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(n) = stack.pop() {
            for t in graph.get(&n).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in graph.keys() {
        if done.contains(n) {
            continue;
        }
        let part: BTreeSet<String> = reach(n)
            .into_iter()
            .filter(|m| m != n && reach(m).contains(n))
            .collect();
        if part.is_empty() {
            continue;
        }
        done.extend(part.iter().cloned());
        // breadth first from n back to n inside the part
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([n.clone()]);
        let mut last = None;
        while let Some(x) = queue.pop_front() {
            for t in &graph[&x] {
                if t == n {
                    last.get_or_insert(x.clone());
                } else if part.contains(t) && !prev.contains_key(t) {
                    prev.insert(t.clone(), x.clone());
                    queue.push_back(t.clone());
                }
            }
            if last.is_some() {
                break;
            }
        }
        let mut back = Vec::new();
        let mut x = last.expect("a strongly connected part leads back");
        while &x != n {
            back.push(x.clone());
            x = prev[&x].clone();
        }
        back.reverse();
        let way: Vec<&str> = std::iter::once(n.as_str())
            .chain(back.iter().map(String::as_str))
            .chain(std::iter::once(n.as_str()))
            .collect();
        out.push(way.join(" -> "));
    }
    out
}

/// The files of `src/` but the binary's `main.rs` (its `crate::` is the binary, not the
/// library), without test code: (path relative to src/, code).
fn src_files() -> Vec<(String, String)> {
    src_files_of(&repo().join("src"))
}

/// [`src_files`] of any tree's `src` directory.
fn src_files_of(src: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = sources(src)
        .into_iter()
        .map(|(p, code)| (p.strip_prefix(src).unwrap().display().to_string(), code))
        .filter(|(rel, _)| rel != "main.rs")
        .collect();
    files.sort();
    files
}

/// Every import circle of `files`: between files, then between top-level modules.
fn import_circles(files: &[(String, String)]) -> Vec<String> {
    let graph = import_graph(files);
    let mut out: Vec<String> = circles(&graph)
        .into_iter()
        .map(|c| format!("files: {c}"))
        .collect();
    out.extend(
        circles(&top_level_graph(&graph))
            .into_iter()
            .map(|c| format!("modules: {c}")),
    );
    out
}

#[test]
fn the_import_circle_check_can_fail() {
    let f = |rel: &str, code: &str| (rel.to_owned(), code.to_owned());
    let clean = vec![
        f("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        f("a/mod.rs", "mod x;\nmod y;\nuse crate::b::B;\n"),
        // a child using its parent is no circle
        f("a/x.rs", "use super::{A, y::Y};\nuse crate::a::A2;\n"),
        f(
            "a/y.rs",
            "use super::super::b::{self, B};\n// use super::x::X;\n",
        ),
        f("b.rs", "pub fn g() { crate::c::h() }\n"),
        f("c.rs", "use std::fmt;\n"),
    ];
    assert_eq!(import_circles(&clean), Vec::<String>::new());
    let graph = import_graph(&clean);
    assert_eq!(graph["a/x.rs"], BTreeSet::from(["a/y.rs".to_owned()]));
    assert_eq!(graph["a/y.rs"], BTreeSet::from(["b.rs".to_owned()]));
    assert_eq!(graph["b.rs"], BTreeSet::from(["c.rs".to_owned()]));

    // two siblings naming each other
    let mut siblings = clean.clone();
    siblings[3] = f("a/y.rs", "use crate::a::{\n    x::X as Z,\n};\n");
    assert_eq!(
        import_circles(&siblings),
        vec!["files: a/x.rs -> a/y.rs -> a/x.rs".to_owned()]
    );

    // two top-level modules naming each other through different files
    let mut modules = clean.clone();
    modules[5] = f("c.rs", "fn k() -> crate::a::x::X { todo!() }\n");
    assert_eq!(
        import_circles(&modules),
        vec![
            "files: a/x.rs -> a/y.rs -> b.rs -> c.rs -> a/x.rs".to_owned(),
            "modules: a -> b -> c -> a".to_owned(),
        ]
    );
    // a/mod.rs -> nothing; a/y.rs -> b.rs -> c.rs -> a/mod.rs: no circle of files
    let mut modules_only = clean;
    modules_only[1] = f("a/mod.rs", "mod x;\nmod y;\n");
    modules_only[5] = f("c.rs", "use crate::a::A;\n");
    assert_eq!(
        import_circles(&modules_only),
        vec!["modules: a -> b -> c -> a".to_owned()]
    );
}

/// EXPECTED FAILURES: the circles on main when this check was written (one named circle per
/// tangle). The test expects exactly these, so a new circle fails it at once; when a branch
/// removes one (facts<->mig and request<->require are being removed in parallel), the test fails
/// until its line here is deleted too. The goal is an empty list.
const CIRCLES_BEING_REMOVED: &[&str] = &[
    // none left: facts<->mig and request<->require broken by nvidia/nvml.rs and src/text.rs;
    // cache->driver_files->gpus->cache by nvidia/private_file.rs; the class/config/nvidia/state
    // tangle by src/capability.rs and the env constants in state/spec.rs
];

#[test]
fn no_import_circles_in_src() {
    let mut found = import_circles(&src_files());
    found.sort();
    let mut expected = CIRCLES_BEING_REMOVED.to_vec();
    expected.sort();
    assert_eq!(
        found, expected,
        "import circles between files or top-level modules of src/ (expected: \
         CIRCLES_BEING_REMOVED); break each by moving what both sides need into one of them or a \
         third file. Module map: cargo test --test hygiene -- --ignored --nocapture"
    );
}

/// The module map: each file of src/ and the files it imports through `crate::`/`super::`,
/// then its import circles (`cargo test --test hygiene module_map -- --ignored --nocapture`).
/// `NVHOOK_MAP_SRC=DIR` maps another tree's src/ instead (an older checkout: before and after).
#[test]
#[ignore = "prints the module map; run with --ignored --nocapture"]
fn module_map() {
    let files = match std::env::var_os("NVHOOK_MAP_SRC") {
        Some(dir) => src_files_of(Path::new(&dir)),
        None => src_files(),
    };
    for (file, to) in import_graph(&files) {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        println!("{file} -> {}", to.join(", "));
    }
    for c in import_circles(&files) {
        println!("circle: {c}");
    }
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
        // a syscall strace cannot name prints its result in hex
        let ok_result = result
            .split_whitespace()
            .next()
            .and_then(|r| match r.strip_prefix("0x") {
                Some(h) => i64::from_str_radix(h, 16).ok(),
                None => r.parse::<i64>().ok(),
            })
            .is_some_and(|r| r >= 0);
        if !ok_result {
            continue;
        }
        let mut cloexec = call.contains("CLOEXEC");
        // open_tree_attr (467) where strace is older than the syscall: its flags are the third
        // argument, in hex; O_CLOEXEC is 0x80000
        if name == "syscall_0x1d3" {
            cloexec = call
                .split(", ")
                .nth(2)
                .and_then(|f| i64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .is_some_and(|f| f & 0x80000 != 0);
        }
        let fine = match name {
            "execve" | "execveat" => {
                execs += 1;
                execs == 1 // strace starting nvhook itself
            }
            // always close-on-exec, by the kernel
            "bpf" | "pidfd_open" => true,
            "fcntl" => !call.contains("F_DUPFD,") && !call.contains("F_SETFD, 0"),
            "clone" | "clone3" | "fork" | "vfork" => true, // counted by the caller
            "open" | "openat" | "openat2" | "open_by_handle_at" | "open_tree"
            | "open_tree_attr" | "syscall_0x1d3" | "fsopen" | "fsmount" | "fspick" | "pipe2"
            | "dup3" | "socket" | "socketpair" | "accept4" | "eventfd2" | "epoll_create1"
            | "inotify_init1" | "signalfd4" | "memfd_create" | "timerfd_create" | "userfaultfd"
            | "perf_event_open" | "pidfd_getfd" => cloexec,
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

/// Every syscall is traced: nvhook makes one (open_tree_attr, Linux 6.15) that an older strace
/// (Debian 12's 6.1) cannot name, so cannot select, and shows as `syscall_0x1d3`;
/// [`hygiene_violations`] judges the ones that make descriptors.
const TRACED: &str = "all";

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
             syscall_0x1d3(0xffffff9c, 0x55c0, 0x80001, 0x7ffc, 0x20, 0xb) = 0x9\n\
             syscall_0x1d3(0xffffff9c, 0x55c0, 0x1, 0x7ffc, 0x20, 0xb) = 0xa\n\
             open_tree_attr(AT_FDCWD, \"/x\", OPEN_TREE_CLONE, 0x7ffc, 32) = 11\n\
             execve(\"/bin/sh\", [\"sh\"], 0x7ffd /* 3 vars */) = 0\n";
    let bad = hygiene_violations(t);
    assert_eq!(bad.len(), 7, "{bad:#?}");
    assert!(bad[4].starts_with("syscall_0x1d3") && bad[4].contains(" 0x1,"));
    assert!(bad[5].starts_with("open_tree_attr("));
    assert!(bad[0].contains("/proc/1/ns/mnt") && bad[6].starts_with("execve(\"/bin/sh\""));
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
            opened > 20
                && ["open_tree(", "open_tree_attr(", "syscall_0x1d3("]
                    .iter()
                    .any(|c| trace.contains(c)),
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

/// The host-mount check leaves out only a runtime's transient binary guard, nothing a hook
/// could leave behind.
#[test]
fn the_runtime_guard_filter_takes_only_the_guard() {
    let guard = "901 29 254:0 /usr/bin/crun /tmp/crun.znApN7 ro,relatime - ext4 /dev/vda rw";
    assert!(common::is_runtime_binary_guard(guard));
    for other in [
        "901 29 254:0 /usr/bin/crun /tmp/crun.znApN7x ro - ext4 /dev/vda rw",
        "901 29 254:0 /usr/lib/libcuda.so.1 /tmp/crun.znApN7 ro - ext4 /dev/vda rw",
        "901 29 254:0 /usr/bin/crun /usr/bin/crun ro - ext4 /dev/vda rw",
        "901 29 254:0 / /tmp/crun.abc/x ro - ext4 /dev/vda rw",
    ] {
        assert!(!common::is_runtime_binary_guard(other), "{other}");
    }
}
