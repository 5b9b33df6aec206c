#![forbid(unsafe_code)]
//! Packaging: the .deb/.rpm metadata agrees with the hooks.d file, the man page covers
//! `nvhook help`, the Kubernetes manifests validate against Kubernetes' schemas (offline, with
//! kubernetes-validate), and packaging/kubernetes/install.sh installs into a fake node root:
//! files, modes, idempotence, atomic replacement, the CDI step, uninstall.
//! The .deb itself is built, installed and run under podman by .ci/run (NVHOOK_TEST_INSTALLED).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// What install.sh did.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn has(&self, s: &str) -> bool {
        self.stdout.contains(s)
    }
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn cargo_toml() -> toml::Value {
    toml::from_str(&std::fs::read_to_string(repo("Cargo.toml")).unwrap()).unwrap()
}

fn packaged_hook() -> Value {
    serde_json::from_slice(&std::fs::read(repo("hooks.d/nvhook.json")).unwrap()).unwrap()
}

#[test]
fn deb_assets_match_the_hooks_file() {
    let t = cargo_toml();
    let deb = &t["package"]["metadata"]["deb"];
    let assets: Vec<(String, String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            let s = |i: usize| a[i].as_str().unwrap().to_owned();
            (s(0), s(1), s(2))
        })
        .collect();
    let dest = |src: &str| -> String {
        let (_, d, _) = assets
            .iter()
            .find(|(s, _, _)| s == src)
            .unwrap_or_else(|| panic!("{src} is not a .deb asset"));
        // "usr/bin/" keeps the source's file name
        let name = Path::new(src).file_name().unwrap().to_str().unwrap();
        let d = if d.ends_with('/') {
            format!("{d}{name}")
        } else {
            d.clone()
        };
        format!("/{d}")
    };
    let bin = dest("target/release/nvhook");
    assert_eq!(bin, "/usr/bin/nvhook");
    assert_eq!(packaged_hook()["hook"]["path"].as_str(), Some(bin.as_str()));
    // prestart gives the container its GPUs; poststop puts the rootfs back (the same arguments:
    // nvhook tells the stage from the state's status)
    assert_eq!(
        packaged_hook()["stages"],
        serde_json::json!(["prestart", "poststop"])
    );
    assert_eq!(
        dest("hooks.d/nvhook.json"),
        "/usr/share/containers/oci/hooks.d/nvhook.json"
    );
    assert_eq!(dest("packaging/config.toml"), "/etc/nvhook/config.toml");
    assert_eq!(
        dest("packaging/nvhook.1"),
        "/usr/share/man/man1/nvhook.1",
        "cargo-deb gzips man pages itself"
    );
    assert_eq!(
        deb["conf-files"].as_array().unwrap()[0].as_str(),
        Some("/etc/nvhook/config.toml")
    );
    for (src, _, mode) in &assets {
        if !src.starts_with("target/") {
            assert!(repo(src).is_file(), "asset {src} is missing");
        }
        let want = if src == "target/release/nvhook" {
            "755"
        } else {
            "644"
        };
        assert_eq!(mode, want, "{src}");
    }
    // the Makefile's `install` rewrites the path for its PREFIX; its default must be the same
    let mk = std::fs::read_to_string(repo("Makefile")).unwrap();
    assert!(mk.contains("PREFIX ?= /usr\n"), "Makefile PREFIX default");
}

/// nvhook-docker (`make deb-docker`) ships exactly the link `make install-docker` makes: the
/// name dockerd looks up, next to the nvhook the main package installs, and stays off hosts
/// with NVIDIA's toolkit.
#[test]
fn deb_docker_variant_is_the_install_docker_link() {
    let t = cargo_toml();
    let v = &t["package"]["metadata"]["deb"]["variants"]["docker"];
    assert_eq!(v["name"].as_str(), Some("nvhook-docker"));
    assert_eq!(v["depends"].as_str(), Some("nvhook"));
    let conflicts = v["conflicts"].as_str().unwrap_or_default();
    assert!(
        conflicts.contains("nvidia-container-toolkit-base")
            && conflicts.contains("nvidia-container-toolkit,"),
        "{conflicts}"
    );
    let assets = v["assets"].as_array().unwrap();
    assert_eq!(assets.len(), 1, "{assets:?}");
    let a = assets[0].as_array().unwrap();
    assert_eq!(a[1].as_str(), Some("usr/bin/nvidia-container-runtime-hook"));
    let src = repo(a[0].as_str().unwrap());
    assert_eq!(
        std::fs::read_link(&src).ok().as_deref(),
        Some(Path::new("nvhook")),
        "{} must be a relative link to nvhook (cargo-deb packages a dangling link as a link)",
        src.display()
    );
    let mk = std::fs::read_to_string(repo("Makefile")).unwrap();
    assert!(
        mk.contains("packaging/install-docker.sh install $(PREFIX)/bin"),
        "make install-docker links in $(PREFIX)/bin, where the .deb puts the link"
    );
    let sh = std::fs::read_to_string(repo("packaging/install-docker.sh")).unwrap();
    assert!(
        sh.contains("ln -s nvhook \"$link\""),
        "the same relative link"
    );
}

#[test]
fn rpm_assets_match_the_deb() {
    let t = cargo_toml();
    let deb: Vec<String> = t["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[0].as_str().unwrap().to_owned())
        .collect();
    let rpm = t["package"]["metadata"]["generate-rpm"]["assets"]
        .as_array()
        .unwrap();
    let rpm_src: Vec<&str> = rpm.iter().map(|a| a["source"].as_str().unwrap()).collect();
    assert_eq!(deb, rpm_src, "the .deb and the .rpm ship the same files");
    let find = |src: &str| {
        rpm.iter()
            .find(|a| a["source"].as_str() == Some(src))
            .unwrap()
    };
    assert_eq!(
        find("target/release/nvhook")["dest"].as_str(),
        packaged_hook()["hook"]["path"].as_str()
    );
    assert_eq!(
        find("packaging/config.toml")["config"].as_str(),
        Some("noreplace")
    );
}

/// The words of `nvhook help` that a reader must find in the man page: each command, each
/// option, each NVHOOK_* variable.
fn help_words() -> Vec<String> {
    let out = Command::new(common::nvhook()).arg("help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut words = Vec::new();
    for w in help.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '=') {
        if w.starts_with("--") || w.starts_with("NVHOOK_") {
            words.push(w.to_owned());
        }
    }
    for line in help.lines() {
        let Some(rest) = line.trim_start().strip_prefix("nvhook ") else {
            continue;
        };
        let rest = rest.strip_prefix("[--config FILE] ").unwrap_or(rest);
        words.push(rest.split_whitespace().next().unwrap().to_owned());
    }
    words.sort();
    words.dedup();
    words
}

#[test]
fn man_page_covers_the_help_text() {
    let man = std::fs::read_to_string(repo("packaging/nvhook.1")).unwrap();
    let plain = man.replace("\\-", "-");
    let words = help_words();
    for cmd in [
        "prestart",
        "plan",
        "list",
        "doctor",
        "version",
        "help",
        "--config",
        "NVHOOK_LOG",
    ] {
        assert!(
            words.iter().any(|w| w == cmd),
            "help parsing lost {cmd}: {words:?}"
        );
    }
    for w in &words {
        assert!(plain.contains(w.as_str()), "nvhook.1 does not mention {w}");
    }
    assert!(
        plain.contains(&format!("nvhook {}", env!("CARGO_PKG_VERSION"))),
        ".TH version"
    );
    // groff renders it with no warning
    common::require_tool("groff", "groff-base");
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(repo("packaging/nvhook.1"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "groff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------ Kubernetes

const MANIFESTS: &[&str] = &["nvhook.yaml", "example-pod.yaml", "example-pod-env.yaml"];

/// kubernetes-validate (PyPI; ships the schemas of each Kubernetes release, validates offline):
/// $NVHOOK_K8S_VALIDATE, else target/tools/k8s-venv (what tests/run.sh makes), else $PATH.
fn k8s_validate() -> PathBuf {
    let venv = repo("target/tools/k8s-venv/bin/kubernetes-validate");
    let p = std::env::var_os("NVHOOK_K8S_VALIDATE")
        .map(PathBuf::from)
        .or_else(|| venv.is_file().then_some(venv))
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("kubernetes-validate"))
                    .find(|p| p.is_file())
            })
        });
    p.unwrap_or_else(|| {
        panic!(
            "kubernetes-validate not found: run tests/run.sh (it makes target/tools/k8s-venv), or \
             pip install kubernetes-validate==1.37.0 and set NVHOOK_K8S_VALIDATE"
        )
    })
}

/// The Python beside kubernetes-validate: it has PyYAML.
fn k8s_python() -> PathBuf {
    let v = k8s_validate();
    let py = v.parent().unwrap().join("python3");
    if py.exists() { py } else { "python3".into() }
}

fn validate(files: &[PathBuf], version: &str) -> Output {
    Command::new(k8s_validate())
        .args(["--strict", "--no-warn", "-k", version])
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let files: Vec<PathBuf> = MANIFESTS
        .iter()
        .map(|m| repo(&format!("packaging/kubernetes/{m}")))
        .collect();
    // the oldest and newest releases the schemas cover that we claim (docs/kubernetes.md)
    for version in ["1.28.0", "1.37.0"] {
        let out = validate(&files, version);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "Kubernetes {version}:\n{text}");
        // every object was checked: Namespace, ServiceAccount, ConfigMap, DaemonSet, 2 pods
        assert_eq!(text.matches(" passed for resource ").count(), 6, "{text}");
    }
    // the validator does reject a wrong manifest: a misspelt field in the DaemonSet
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("k8s-negative");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("nvhook.yaml");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("      nodeSelector:"));
    std::fs::write(
        &bad,
        text.replace("      nodeSelector:", "      nodeSelecter:"),
    )
    .unwrap();
    let out = validate(&[bad], "1.37.0");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("nodeSelecter"),
        "a misspelt field passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The ConfigMap's config.toml and the DaemonSet's install arguments, read with PyYAML.
fn daemonset_parts() -> (String, Vec<String>, String) {
    let script = r#"
import json, sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
cm = next(d for d in docs if d["kind"] == "ConfigMap")
ds = next(d for d in docs if d["kind"] == "DaemonSet")
c = ds["spec"]["template"]["spec"]["initContainers"][0]
print(json.dumps({"config": cm["data"]["config.toml"], "args": c["args"], "command": c["command"]}))
"#;
    let out = Command::new(k8s_python())
        .arg("-c")
        .arg(script)
        .arg(repo("packaging/kubernetes/nvhook.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let args = v["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    (
        v["config"].as_str().unwrap().to_owned(),
        args,
        v["command"][0].as_str().unwrap().to_owned(),
    )
}

#[test]
fn daemonset_config_parses_and_its_install_arguments_work() {
    let (config, args, command) = daemonset_parts();
    nvhook::config::Config::parse(&config)
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml: {e}"));
    let node = Node::new("daemonset");
    let cfg = node.dir.join("configmap/config.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, &config).unwrap();
    // the image's paths (Containerfile) -> this repository's files; /host -> the fake node
    assert_eq!(command, "/usr/share/nvhook/install.sh");
    let containerfile =
        std::fs::read_to_string(repo("packaging/kubernetes/Containerfile")).unwrap();
    assert!(containerfile.contains("/usr/share/nvhook/nvhook"));
    assert!(containerfile.contains("packaging/kubernetes/install.sh /usr/share/nvhook/"));
    let args: Vec<String> = args
        .into_iter()
        .map(|a| match a.as_str() {
            "/host" => node.root.to_str().unwrap().to_owned(),
            "/config/config.toml" => cfg.to_str().unwrap().to_owned(),
            _ => a,
        })
        .collect();
    let bin = node.stub("nvhook-cdi", true);
    let mut all = vec!["--bin".to_owned(), bin.to_str().unwrap().to_owned()];
    all.extend([
        "--hook".to_owned(),
        repo("hooks.d/nvhook.json").to_str().unwrap().to_owned(),
    ]);
    all.extend(args);
    let r = node.install(&all.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(node.read("etc/nvhook/config.toml"), config);
    let hook: Value =
        serde_json::from_str(&node.read("usr/share/containers/oci/hooks.d/nvhook.json")).unwrap();
    assert_eq!(hook["hook"]["path"], "/usr/local/bin/nvhook");
    assert_eq!(hook["stages"], serde_json::json!(["prestart", "poststop"]));
    assert!(
        node.root.join("etc/cdi/nvidia.json").is_file(),
        "{}",
        r.stdout
    );
}

// ---------------------------------------------------------------- install.sh on a fake node

/// A fake node root with a static busybox as /bin/sh, so that the CDI step's chroot can run a
/// stub nvhook (a shell script) inside it.
struct Node {
    dir: PathBuf,
    root: PathBuf,
}

impl Node {
    fn new(name: &str) -> Node {
        common::require_tool("chroot", "coreutils");
        common::require_tool("busybox", "busybox-static");
        assert!(
            nix::unistd::geteuid().is_root(),
            "install.sh tests chroot: run as root"
        );
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("node-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let busybox = which("busybox");
        let out = Command::new("ldd").arg(&busybox).output().unwrap();
        assert!(
            !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("not a dynamic"),
            "{} must be static (busybox-static)",
            busybox.display()
        );
        std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        Node { dir, root }
    }

    /// A stub nvhook: with `cdi`, its help lists `cdi generate` and `cdi generate --output F`
    /// writes a spec to F (failing when /fail exists in its root) and records its arguments.
    fn stub(&self, name: &str, cdi: bool) -> PathBuf {
        let p = self.dir.join(name);
        let help = if cdi {
            "  nvhook [--config FILE] cdi generate [--output FILE]"
        } else {
            "  nvhook [--config FILE] doctor [--json]"
        };
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\n\
                 case \"$1\" in\n\
                 help) echo '{help}' ;;\n\
                 cdi) [ \"$2\" = generate ] && [ \"$3\" = --output ] || exit 2\n\
                 [ -e /fail ] && exit 3\n\
                 echo \"$@\" > /cdi-args\n\
                 echo '{{\"cdiVersion\":\"0.6.0\",\"kind\":\"nvidia.com/gpu\",\"devices\":[]}}' > \"$4\" ;;\n\
                 *) exit 2 ;;\n\
                 esac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn install(&self, args: &[&str]) -> Run {
        let out = Command::new("sh")
            .arg(repo("packaging/kubernetes/install.sh"))
            .args(args)
            .output()
            .unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// install.sh with this repository's template and config, BIN and extra options.
    fn install_with(&self, bin: &Path, extra: &[&str]) -> Run {
        let (b, h, c) = (
            bin.to_str().unwrap().to_owned(),
            repo("hooks.d/nvhook.json"),
            repo("packaging/config.toml"),
        );
        let mut args = vec![
            "--bin",
            &b,
            "--hook",
            h.to_str().unwrap(),
            "--config",
            c.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(self.root.to_str().unwrap());
        self.install(&args)
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn meta(&self, p: &str) -> std::fs::Metadata {
        std::fs::metadata(self.root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// Files install.sh left under a temporary name anywhere in the node.
    fn leftovers(&self) -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    walk(&p, out);
                } else if p.to_string_lossy().contains("nvhook-tmp") {
                    out.push(p);
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.root, &mut v);
        v
    }
}

fn which(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not in PATH"))
}

const BIN: &str = "usr/local/bin/nvhook";
const HOOK: &str = "usr/share/containers/oci/hooks.d/nvhook.json";
const CONFIG: &str = "etc/nvhook/config.toml";
const CDI: &str = "etc/cdi/nvidia.json";

#[test]
fn install_sh_installs_the_real_binary_and_is_idempotent() {
    let node = Node::new("real");
    let r = node.install_with(Path::new(common::nvhook()), &["--cdi", "no"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.has("CDI spec: not asked for"), "{}", r.stdout);
    // the binary, byte for byte, 0755; it runs
    assert_eq!(
        std::fs::read(node.root.join(BIN)).unwrap(),
        std::fs::read(common::nvhook()).unwrap()
    );
    assert_eq!(node.meta(BIN).permissions().mode() & 0o7777, 0o755);
    let v = Command::new(node.root.join(BIN))
        .arg("version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("nvhook "));
    // the registration: the packaged file with the node's path of the binary, 0644
    let mut want = packaged_hook();
    want["hook"]["path"] = "/usr/local/bin/nvhook".into();
    let got: Value = serde_json::from_str(&node.read(HOOK)).unwrap();
    assert_eq!(got, want);
    assert_eq!(node.meta(HOOK).permissions().mode() & 0o7777, 0o644);
    assert_eq!(
        node.read(CONFIG),
        std::fs::read_to_string(repo("packaging/config.toml")).unwrap()
    );
    assert_eq!(node.meta(CONFIG).permissions().mode() & 0o7777, 0o644);
    assert!(!node.root.join(CDI).exists());
    assert_eq!(node.leftovers(), Vec::<PathBuf>::new());

    // again: nothing is rewritten (same inodes and times)
    let before: Vec<(u64, i64)> = [BIN, HOOK, CONFIG]
        .iter()
        .map(|p| (node.meta(p).ino(), node.meta(p).mtime_nsec()))
        .collect();
    let r = node.install_with(Path::new(common::nvhook()), &["--cdi", "no"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches(": unchanged").count(), 3, "{}", r.stdout);
    let after: Vec<(u64, i64)> = [BIN, HOOK, CONFIG]
        .iter()
        .map(|p| (node.meta(p).ino(), node.meta(p).mtime_nsec()))
        .collect();
    assert_eq!(before, after);

    // a new binary replaces the old one by rename (a running hook keeps its inode); modes mended
    std::fs::set_permissions(node.root.join(HOOK), std::fs::Permissions::from_mode(0o600)).unwrap();
    let stub = node.stub("nvhook-new", false);
    let r = node.install_with(&stub, &["--cdi", "no"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_ne!(node.meta(BIN).ino(), before[0].0);
    assert_eq!(
        std::fs::read(node.root.join(BIN)).unwrap(),
        std::fs::read(&stub).unwrap()
    );
    assert_eq!(node.meta(HOOK).permissions().mode() & 0o7777, 0o644);
    assert_eq!(node.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn install_sh_keeps_a_node_config_unless_one_is_given() {
    let node = Node::new("keep");
    std::fs::create_dir_all(node.root.join("etc/nvhook")).unwrap();
    std::fs::write(
        node.root.join(CONFIG),
        "driver-root = \"/run/nvidia/driver\"\n",
    )
    .unwrap();
    let stub = node.stub("nvhook", false);
    let (b, h) = (stub.to_str().unwrap(), repo("hooks.d/nvhook.json"));
    let root = node.root.to_str().unwrap();
    let r = node.install(&[
        "--bin",
        b,
        "--hook",
        h.to_str().unwrap(),
        "--cdi",
        "no",
        root,
    ]);
    assert!(
        r.ok && r.has("kept (the node's own)"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(node.read(CONFIG), "driver-root = \"/run/nvidia/driver\"\n");
    // with --config it is the given one
    let r = node.install_with(&stub, &["--cdi", "no"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        node.read(CONFIG),
        std::fs::read_to_string(repo("packaging/config.toml")).unwrap()
    );
}

#[test]
fn install_sh_writes_the_cdi_spec_by_running_nvhook_on_the_node() {
    let node = Node::new("cdi");
    let stub = node.stub("nvhook", true);
    let r = node.install_with(&stub, &[]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    // the installed binary ran chrooted in the node: its /cdi-args is the node's
    let args = node.read("cdi-args");
    assert!(
        args.starts_with("cdi generate --output /etc/cdi/.nvidia.json.nvhook-tmp."),
        "{args}"
    );
    let spec: Value = serde_json::from_str(&node.read(CDI)).unwrap();
    assert_eq!(spec["kind"], "nvidia.com/gpu");
    assert_eq!(node.meta(CDI).permissions().mode() & 0o7777, 0o644);
    assert!(r.has("etc/cdi/nvidia.json: written"), "{}", r.stdout);
    let ino = node.meta(CDI).ino();
    let r = node.install_with(&stub, &["--cdi", "yes"]);
    assert!(
        r.ok && r.has("etc/cdi/nvidia.json: unchanged"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(node.meta(CDI).ino(), ino);
    assert_eq!(node.leftovers(), Vec::<PathBuf>::new());

    // generation fails: install.sh fails naming the command, the old spec stays, no temp file
    std::fs::write(node.root.join("fail"), "").unwrap();
    std::fs::write(node.root.join(CDI), "old spec\n").unwrap();
    let r = node.install_with(&stub, &[]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains("cdi generate --output") && r.stderr.contains("old spec"),
        "{}",
        r.stderr
    );
    assert_eq!(node.read(CDI), "old spec\n");
    assert_eq!(node.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn install_sh_without_cdi_generate_skips_only_when_asked_auto() {
    let node = Node::new("nocdi");
    let stub = node.stub("nvhook", false);
    let r = node.install_with(&stub, &[]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(
        r.has("CDI spec: skipped") && r.has("no 'cdi generate' command"),
        "{}",
        r.stdout
    );
    assert!(!node.root.join(CDI).exists() && !node.root.join("cdi-args").exists());
    let r = node.install_with(&stub, &["--cdi", "yes"]);
    assert!(
        !r.ok && r.stderr.contains("no 'cdi generate' command"),
        "{}",
        r.stderr
    );
}

#[test]
fn install_sh_uninstall_removes_its_files_only() {
    let node = Node::new("uninstall");
    let stub = node.stub("nvhook", true);
    let r = node.install_with(&stub, &[]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let other = node
        .root
        .join("usr/share/containers/oci/hooks.d/other.json");
    std::fs::write(&other, "{}").unwrap();
    let r = node.install(&["--uninstall", node.root.to_str().unwrap()]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    for p in [BIN, HOOK, CONFIG, CDI] {
        assert!(!node.root.join(p).exists(), "{p} is still there");
    }
    assert!(other.exists() && node.root.join("bin/busybox").exists());
    assert!(!node.root.join("etc/nvhook").exists());
}

#[test]
fn install_sh_refuses_bad_input_with_a_reason() {
    let node = Node::new("bad");
    let stub = node.stub("nvhook", false);
    let root = node.root.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "no NODE_ROOT given"),
        (vec!["/nonexistent-node".into()], "is not a directory"),
        (
            vec!["--prefix".into(), "usr/local".into(), root.clone()],
            "must be absolute",
        ),
        (
            vec!["--cdi".into(), "maybe".into(), root.clone()],
            "auto, yes or no",
        ),
        (
            vec!["--bin".into(), "/nonexistent".into(), root.clone()],
            "no nvhook binary",
        ),
        (
            vec!["--bogus".into(), root.clone()],
            "unknown option --bogus",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["--bin".to_owned(), stub.to_str().unwrap().to_owned()];
        all.extend([
            "--hook".to_owned(),
            repo("hooks.d/nvhook.json").to_str().unwrap().to_owned(),
        ]);
        all.extend(args.clone());
        let r = node.install(&all.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            !r.ok && r.stderr.contains(want),
            "{args:?}: {}{}",
            r.stdout,
            r.stderr
        );
    }
    // a template that does not name /usr/bin/nvhook cannot be pointed at the node's binary
    let tmpl = node.dir.join("other.json");
    std::fs::write(&tmpl, r#"{"hook": {"path": "/opt/x"}}"#).unwrap();
    let r = node.install(&[
        "--bin",
        stub.to_str().unwrap(),
        "--hook",
        tmpl.to_str().unwrap(),
        &root,
    ]);
    assert!(
        !r.ok && r.stderr.contains("is not \"/usr/bin/nvhook\""),
        "{}",
        r.stderr
    );
    assert!(!node.root.join(HOOK).exists());
}

/// shellcheck `script` (its shebang's shell, or `shell` where given): no finding at all.
fn shellcheck(script: &str, shell: Option<&str>) {
    common::require_tool("shellcheck", "shellcheck");
    let mut c = Command::new("shellcheck");
    if let Some(sh) = shell {
        c.args(["-s", sh]);
    }
    let out = c.arg(repo(script)).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn install_sh_passes_shellcheck() {
    shellcheck("packaging/kubernetes/install.sh", Some("sh"));
    shellcheck("packaging/install-docker.sh", Some("sh"));
}

/// The systemd test host's harness (tests/systemd/host.sh, run by `make test` and CI).
#[test]
fn systemd_host_sh_passes_shellcheck() {
    shellcheck("tests/systemd/host.sh", None);
}
