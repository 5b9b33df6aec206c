#!/usr/bin/env python3
"""nvhook start-latency benchmark.

Starts the same busybox `true` container N times per setup under runc, each start being
create + start + delete (NVIDIA's runtime shim edits the spec only on `create`), with the setups
in a fresh random order every round, and reports p50/p90/max per setup and the latency each adds
over plain runc. Before timing, every setup is run once with a check of what the container sees
(GPU setups must run the CUDA probe: nvidia-smi -L and a verified PTX kernel), so nothing
fast-but-broken is timed. Afterwards nvhook's own per-phase timings and peak RSS are collected
from its debug log in a separate pass (so logging never slows the timed runs).

Setups:
  a  runc alone (baseline)
  z  runc with a no-op prestart hook (/bin/true): what registering any hook costs in runc
  b  nvhook registered, NVIDIA_VISIBLE_DEVICES unset (the path of every non-GPU container)
  c  nvhook, all GPUs, compute,utility
  d  nvhook, all GPUs, all capabilities
  e  NVIDIA's runtime shim (jit-cdi, defaults), no GPU asked        (--peers only)
  f  NVIDIA's shim, all GPUs, compute,utility                       (--peers only)
  g  NVIDIA's shim, all GPUs, all capabilities                      (--peers only)
  h  NVIDIA's legacy prestart hook (1.17.2 + libnvidia-container), no GPU asked  (--peers only)
  i  NVIDIA's legacy hook, all GPUs, compute,utility                (--peers only)

Needs root. Standard library only.
"""

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

DEVNULL = subprocess.DEVNULL


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def base_config(rootfs, args, env):
    """A minimal runc spec (what `runc spec` gives, without a terminal)."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            # /usr/local/nvidia/bin first, as nvidia/cuda images set it (NVIDIA's shim mounts the
            # tools at their host paths there)
            "env": ["PATH=/usr/local/nvidia/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + env,
            "cwd": "/",
            "capabilities": {k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                             for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


PHASES = ["total_us", "parse", "request", "config", "inventory", "inv_gpus", "inv_nodes", "inv_ldcache",
          "inv_libs", "inv_bins", "inv_firmware", "require", "cgroup_open", "setns", "plan", "mounts", "ldcache", "cgroup"]
ALL = ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
ALL_CAPS = ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all"]


class Setup:
    def __init__(self, key, title, runtime, hook, env, gpu):
        self.key, self.title, self.runtime, self.hook, self.env, self.gpu = key, title, runtime, hook, env, gpu
        self.samples = []


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.work)
        self.runc = shutil.which(a.runc) or a.runc
        self.nvhook = os.path.abspath(a.nvhook)
        self.hook_env = ["NVHOOK_CONFIG=" + os.path.abspath(a.config)] if a.config else []
        self.seq = 0
        self.errfile = open(os.path.join(self.work, "create.err"), "w+")
        self.setups = [
            Setup("a", "runc alone", self.runc, None, [], False),
            Setup("z", "runc, no-op hook (/bin/true)", self.runc, "noop", [], False),
            Setup("b", "nvhook, no GPU asked", self.runc, "nvhook", [], False),
            Setup("c", "nvhook, all GPUs, compute,utility", self.runc, "nvhook", ALL, True),
            Setup("d", "nvhook, all GPUs, all capabilities", self.runc, "nvhook", ALL_CAPS, True),
        ]
        if a.peers:
            shim = shutil.which("nvidia-container-runtime") or "/usr/bin/nvidia-container-runtime"
            self.setups += [
                Setup("e", "NVIDIA shim (jit-cdi), no GPU asked", shim, None, [], False),
                Setup("f", "NVIDIA shim (jit-cdi), all GPUs, compute,utility", shim, None, ALL, True),
                Setup("g", "NVIDIA shim (jit-cdi), all GPUs, all capabilities", shim, None, ALL_CAPS, True),
                Setup("h", "NVIDIA legacy hook, no GPU asked", self.runc, "legacy", [], False),
                Setup("i", "NVIDIA legacy hook, all GPUs, compute,utility", self.runc, "legacy", ALL, True),
            ]
        if a.setups:
            self.setups = [s for s in self.setups if s.key in a.setups]

    # ------------------------------------------------------------------ bundles
    def hooks(self, s, extra_env=()):
        if s.hook == "noop":
            return {"prestart": [{"path": shutil.which("true") or "/bin/true", "args": ["true"]}]}
        if s.hook == "nvhook":
            return {"prestart": [{"path": self.nvhook, "args": ["nvhook", "prestart"],
                                  "env": self.hook_env + list(extra_env)}]}
        if s.hook == "legacy":
            return {"prestart": [{"path": "/usr/local/bin/nvidia-container-runtime-hook",
                                  "args": ["nvidia-container-runtime-hook", "-config",
                                           os.path.join(self.work, "legacy-config.toml"), "prestart"]}]}
        return None

    def bundle(self, s):
        d = os.path.join(self.work, "bundle-" + s.key)
        if not os.path.isdir(os.path.join(d, "rootfs")):
            os.makedirs(os.path.join(d, "rootfs"))
            with tarfile.open(self.a.rootfs_tar) as t:
                t.extractall(os.path.join(d, "rootfs"), filter="fully_trusted") \
                    if sys.version_info >= (3, 12) else t.extractall(os.path.join(d, "rootfs"))
        return d

    def write_config(self, s, args, extra_hook_env=()):
        d = self.bundle(s)
        c = base_config("rootfs", args, s.env)
        h = self.hooks(s, extra_hook_env)
        if h:
            c["hooks"] = h
        # Written fresh before every create: NVIDIA's shim rewrites config.json on create.
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
        return d

    # ------------------------------------------------------------------ one start
    def start(self, s, d, out=DEVNULL):
        self.seq += 1
        cid = "bench-%d-%d" % (os.getpid(), self.seq)
        # Never a pipe for the runtime's stdio: `runc init` inherits it and holds it open until the
        # container exits, so reading it to EOF would wait forever.
        errf = self.errfile
        errf.seek(0)
        errf.truncate()
        t0 = time.perf_counter()
        r = subprocess.run([s.runtime, "create", "--bundle", d, cid], stdin=DEVNULL, stdout=out, stderr=errf)
        if r.returncode != 0:
            subprocess.run([s.runtime, "delete", "--force", cid], stdout=DEVNULL, stderr=DEVNULL)
            errf.seek(0)
            raise RuntimeError("%s: create failed: %s" % (s.key, errf.read()[-2000:]))
        subprocess.run([s.runtime, "start", cid], stdin=DEVNULL, stdout=DEVNULL, check=True)
        subprocess.run([s.runtime, "delete", "--force", cid], stdin=DEVNULL, stdout=DEVNULL, check=True)
        return (time.perf_counter() - t0) * 1000.0, cid

    def run_and_capture(self, s, script):
        """create/start, wait for the process, return its output (same path as the timed runs)."""
        d = self.write_config(s, ["/bin/sh", "-c", script])
        outp = os.path.join(self.work, "check-%s.out" % s.key)
        self.seq += 1
        cid = "bench-check-%d-%d" % (os.getpid(), self.seq)
        with open(outp, "w") as out:
            r = subprocess.run([s.runtime, "create", "--bundle", d, cid], stdin=DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT)
        if r.returncode == 0:
            subprocess.run([s.runtime, "start", cid], check=True)
            for _ in range(600):
                st = subprocess.run([s.runtime, "state", cid], capture_output=True, text=True)
                if '"status": "stopped"' in st.stdout or st.returncode != 0:
                    break
                time.sleep(0.05)
        subprocess.run([s.runtime, "delete", "--force", cid], stdout=DEVNULL, stderr=DEVNULL)
        with open(outp) as f:
            return f.read()

    # ------------------------------------------------------------------ phases
    def check(self):
        """Every setup must give the container what it promises before it is timed."""
        if self.a.fake:
            gpu_script = "nvidia-smi && probe cuda && echo CHECK-OK"
            gpu_ok = r"cuInit=0 devices=2"
        else:
            gpu_script = "nvidia-smi -L && cudaprobe && echo CHECK-OK"
            gpu_ok = r"results verified"
        plain = "ls /dev | grep -q nvidia && echo HAS-NVIDIA; echo CHECK-OK"
        self.failed = []
        for s in self.setups:
            try:
                out = self.run_and_capture(s, gpu_script if s.gpu else plain)
            except Exception as e:  # a setup that cannot even start is reported, not timed
                out = "error: %s" % e
            ok = "CHECK-OK" in out and (re.search(gpu_ok, out) if s.gpu else "HAS-NVIDIA" not in out)
            log("check %s (%s): %s" % (s.key, s.title, "ok" if ok else "FAILED"))
            if not ok:
                log(out[-3000:])
                self.failed.append((s, out.strip().splitlines()[-1:] or ["(no output)"]))
        self.setups = [s for s in self.setups if s not in [f[0] for f in self.failed]]
        if not self.setups:
            raise SystemExit("every setup failed its correctness check; nothing was timed")

    def timed(self):
        configs = {s.key: self.write_config(s, ["/bin/true"]) for s in self.setups}
        n, warm = self.a.n, self.a.warmup
        log("timing: %d setups x (%d warm-up + %d) starts, fresh random order each round" % (
            len(self.setups), warm, n))
        for rnd in range(warm + n):
            order = self.setups[:]
            random.shuffle(order)
            for s in order:
                d = configs[s.key]
                if s.runtime != self.runc:  # the shim rewrote config.json: restore it
                    self.write_config(s, ["/bin/true"])
                ms, _ = self.start(s, d)
                if rnd >= warm:
                    s.samples.append(ms)
            if (rnd + 1) % 25 == 0:
                log("  round %d/%d" % (rnd + 1, warm + n))

    def breakdown(self):
        """nvhook's own timings, from its debug log, in a separate untimed pass."""
        res = {}
        for s in self.setups:
            if s.hook != "nvhook":
                continue
            logf = os.path.join(self.work, "nvhook-%s.log" % s.key)
            if os.path.exists(logf):
                os.unlink(logf)
            d = self.write_config(s, ["/bin/true"], ["NVHOOK_LOG=debug", "NVHOOK_LOG_FILE=" + logf])
            for _ in range(self.a.breakdown_n):
                self.start(s, d)
            phases = {}
            with open(logf) as f:
                for line in f:
                    m = re.search(r"timing (.*)", line)
                    if not m:
                        continue
                    for kv in m.group(1).split():
                        k, _, v = kv.partition("=")
                        phases.setdefault(k, []).append(int(v))
            res[s.key] = {k: statistics.median(v) for k, v in phases.items()}
            res[s.key]["maxrss_kib_max"] = max(phases.get("maxrss_kib", [0]))
        return res

    # ------------------------------------------------------------------ report
    def report(self, bd):
        base = next((s for s in self.setups if s.key == "a"), None)
        b50 = pct(base.samples, 50) if base else float("nan")
        b90 = pct(base.samples, 90) if base else float("nan")
        lines = [
            "| setup | p50 | p90 | max | added p50 | added p90 | added, paired median |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        paired = {}
        for s in self.setups:
            p50, p90, mx = pct(s.samples, 50), pct(s.samples, 90), max(s.samples)
            # per-round differences from the baseline started in the same round: drift of the
            # machine between rounds cancels out
            if base and len(base.samples) == len(s.samples):
                paired[s.key] = statistics.median(x - y for x, y in zip(s.samples, base.samples))
            add = "–" if s.key == "a" else "%+.1f ms" % (p50 - b50)
            add90 = "–" if s.key == "a" else "%+.1f ms" % (p90 - b90)
            addp = "–" if s.key == "a" or s.key not in paired else "%+.1f ms" % paired[s.key]
            lines.append("| (%s) %s | %.1f ms | %.1f ms | %.1f ms | %s | %s | %s |" % (
                s.key, s.title, p50, p90, mx, add, add90, addp))
        by = {s.key: pct(s.samples, 50) - b50 for s in self.setups}
        ratios = []
        for ours, theirs, label in (("c", "i", "legacy hook"), ("c", "f", "shim (jit-cdi)"),
                                    ("b", "h", "legacy hook, no GPU"), ("b", "e", "shim, no GPU")):
            if ours in by and theirs in by and by[ours] > 0:
                ratios.append("- added p50: nvhook (%s) %.1f ms vs NVIDIA %s (%s) %.1f ms: %.1fx less" % (
                    ours, by[ours], label, theirs, by[theirs], by[theirs] / by[ours]))
        for s, why in getattr(self, "failed", []):
            lines.append("| (%s) %s | failed its correctness check, not timed: %s | | | | | |" % (s.key, s.title, why[0][:120]))
        for ours, theirs, label in (("c", "i", "legacy hook"), ("c", "f", "shim (jit-cdi)")):
            if ours in paired and theirs in paired and paired[ours] > 0:
                ratios.append("- paired medians: nvhook (%s) %+.1f ms vs NVIDIA %s (%s) %+.1f ms: %.1fx less" % (
                    ours, paired[ours], label, theirs, paired[theirs], paired[theirs] / paired[ours]))
        if "z" in paired and "b" in paired:
            ratios.append("- over the no-op hook (z, %+.1f ms paired): nvhook without a GPU request (b) adds %+.1f ms, "
                          "with all GPUs (c) %+.1f ms" % (paired["z"], paired["b"] - paired["z"],
                                                          paired.get("c", float("nan")) - paired["z"]))
        lines.append("")
        lines += ratios
        if bd:
            lines.append("")
            lines.append("nvhook's own time per start (median over %d debug-logged starts, microseconds; "
                         "peak RSS of the hook process):" % self.a.breakdown_n)
            lines.append("")
            keys = sorted({k for v in bd.values() for k in v if k not in ("maxrss_kib", "maxrss_kib_max")},
                          key=lambda k: PHASES.index(k)
                          if k in PHASES else 99)
            lines.append("| setup | " + " | ".join(keys) + " | peak RSS |")
            lines.append("| --- |" + " --- |" * (len(keys) + 1))
            for k, v in bd.items():
                lines.append("| (%s) | " % k + " | ".join("%g" % v.get(x, 0) for x in keys)
                             + " | %d KiB |" % v.get("maxrss_kib_max", 0))
        return "\n".join(lines)


def setup_peers(peers):
    """Install NVIDIA's binaries as ../shared/peers/README.md describes (throwaway host only)."""
    def unxz(src, dst, mode=0o755):
        with open(dst, "wb") as f:
            subprocess.run(["xz", "-dc", src], stdout=f, check=True)
        os.chmod(dst, mode)
    for b in ("nvidia-ctk", "nvidia-cdi-hook", "nvidia-container-runtime"):
        unxz(os.path.join(peers, b + ".xz"), "/usr/bin/" + b)
    lib = os.path.join(peers, "libnvc")
    os.makedirs("/usr/local/lib", exist_ok=True)
    for l in ("libnvidia-container.so.1", "libnvidia-container-go.so.1"):
        unxz(os.path.join(lib, l + ".xz"), "/usr/local/lib/" + l, 0o644)
    for l in ("libcap.so.2", "libseccomp.so.2", "libelf.so.1"):
        if subprocess.run("ldconfig -p | grep -q '%s '" % l, shell=True).returncode != 0:
            unxz(os.path.join(lib, l + ".xz"), "/usr/local/lib/" + l, 0o644)
    subprocess.run(["ldconfig"], check=True)
    unxz(os.path.join(lib, "nvidia-container-cli.xz"), "/usr/local/bin/nvidia-container-cli")
    unxz(os.path.join(lib, "nvidia-container-runtime-hook-1.17.2.xz"), "/usr/local/bin/nvidia-container-runtime-hook")
    for d in ("/usr/local/nvidia/bin",):
        if os.path.isdir(d):
            for b in os.listdir(d):
                dst = os.path.join("/usr/local/bin", b)
                if not os.path.exists(dst):
                    os.symlink(os.path.join(d, b), dst)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nvhook", required=True, help="the nvhook binary")
    p.add_argument("--rootfs-tar", required=True, help="busybox+glibc rootfs (with cudaprobe on a GPU host)")
    p.add_argument("--runc", default="runc")
    p.add_argument("--config", help="nvhook config file (the fake driver tree on a machine without GPU)")
    p.add_argument("--fake", action="store_true", help="fake driver tree: check with the fixtures' probe")
    p.add_argument("--peers", help="directory of NVIDIA's xz binaries: installs them and adds setups e-i")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--breakdown-n", type=int, default=30)
    p.add_argument("--setups", help="only these setup letters, e.g. abc")
    p.add_argument("--work", default="/tmp/nvhook-bench")
    p.add_argument("--out", help="write the markdown report here too")
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    if a.peers:
        setup_peers(a.peers)
        with open(os.path.join(a.work, "legacy-config.toml"), "w") as f:
            f.write('[nvidia-container-cli]\npath = "/usr/local/bin/nvidia-container-cli"\nenvironment = []\n'
                    'ldconfig = "@/sbin/ldconfig.real"\n\n[nvidia-container-runtime]\nmode = "legacy"\n')
    b = Bench(a)
    b.check()
    b.timed()
    bd = b.breakdown()
    env = "%s; %s; %d CPUs" % (os.uname().release, subprocess.run([b.runc, "--version"], capture_output=True,
                                                                   text=True).stdout.splitlines()[0], os.cpu_count())
    head = "nvhook start-latency benchmark, %s UTC, N=%d per setup (+%d warm-up rounds), %s\n\n" % (
        time.strftime("%Y-%m-%d %H:%M", time.gmtime()), a.n, a.warmup, env)
    rep = head + b.report(bd)
    print(rep)
    raw = {s.key: {"title": s.title, "samples_ms": s.samples} for s in b.setups}
    if a.out:
        with open(a.out, "w") as f:
            f.write(rep + "\n")
        with open(a.out + ".json", "w") as f:
            json.dump({"breakdown": bd, "setups": raw}, f)


if __name__ == "__main__":
    main()
