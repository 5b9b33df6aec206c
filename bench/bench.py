#!/usr/bin/env python3
"""nvhook start-latency benchmark.

Starts a busybox `true` container N times per setup under runc, each start being
create + start + delete (NVIDIA's runtime shim edits the spec only on `create`) on a rootfs that no
earlier start touched (copied from a template outside the timed part: hooks leave mount-point files
behind), with the setups in a fresh random order every round, and reports p50/p90/max per setup,
the latency each adds over plain runc (paired: the median of per-round differences, for the whole
run and for each half of it), and the CPU time (user+sys) of each start with all its processes.
With --burst, it also starts 16 and 64 (say) containers at once per setup, in random order, several
times: the wall time of the whole burst, p50/p99 per start, failed starts, CPU per start. With
--hook-cpu, each hook's own CPU time is read from its rusage in a separate pass (a wrapper waits
for it), single and in a burst. Before timing, every setup is run once with a check of what the container sees
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
  B  nvhook before the change (--nvhook-base BIN), no GPU asked
  C  nvhook before the change (--nvhook-base BIN), all GPUs, compute,utility

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
import threading
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


PHASES = ["total_us", "parse", "request", "config", "inventory", "inv_host", "inv_cache", "inv_gpus", "inv_nodes", "inv_ldcache",
          "inv_libs", "inv_bins", "inv_firmware", "inv_live", "require", "cgroup_open", "setns", "plan", "mounts", "ldcache", "cgroup"]
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
        self.lock = threading.Lock()
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
        if a.nvhook_base:
            self.setups += [
                Setup("B", "nvhook before the change, no GPU asked", self.runc, "nvhook-base", [], False),
                Setup("C", "nvhook before the change, all GPUs, compute,utility", self.runc, "nvhook-base", ALL, True),
            ]
        if a.setups:
            self.setups = [s for s in self.setups if s.key in a.setups]
        self.template = os.path.join(self.work, "rootfs-template")
        os.makedirs(self.template)
        with tarfile.open(a.rootfs_tar) as t:
            t.extractall(self.template, filter="fully_trusted") \
                if sys.version_info >= (3, 12) else t.extractall(self.template)
        self.cpuwrap = os.path.join(self.work, "cpuwrap.py")
        with open(self.cpuwrap, "w") as f:
            f.write(CPUWRAP)

    # ------------------------------------------------------------------ bundles
    def hooks(self, s, extra_env=(), cpu_out=None):
        h = None
        if s.hook == "noop":
            h = {"path": shutil.which("true") or "/bin/true", "args": ["true"]}
        elif s.hook in ("nvhook", "nvhook-base"):
            binary = self.nvhook if s.hook == "nvhook" else os.path.abspath(self.a.nvhook_base)
            h = {"path": binary, "args": ["nvhook", "prestart"], "env": self.hook_env + list(extra_env)}
        elif s.hook == "legacy":
            h = {"path": "/usr/local/bin/nvidia-container-runtime-hook",
                 "args": ["nvidia-container-runtime-hook", "-config",
                          os.path.join(self.work, "legacy-config.toml"), "prestart"]}
        if h is None:
            return None
        if cpu_out:
            # the hook's own CPU time: a wrapper forks it, waits, and appends its rusage
            h = dict(h, path=sys.executable, args=[sys.executable, "-I", self.cpuwrap, cpu_out, h["path"]] + h["args"])
        return {"prestart": [h]}

    def fresh(self, s, args, extra_hook_env=(), cpu_out=None):
        """A new bundle: a rootfs copied from the template that no start has touched (outside
        any timed part), and its config.json."""
        self.seq += 1
        d = os.path.join(self.work, "b-%s-%d" % (s.key, self.seq))
        os.makedirs(d)
        subprocess.run(["cp", "-a", self.template, os.path.join(d, "rootfs")], check=True)
        c = base_config("rootfs", args, s.env)
        h = self.hooks(s, extra_hook_env, cpu_out)
        if h:
            c["hooks"] = h
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
        return d

    @staticmethod
    def discard(d):
        shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ one start
    def start(self, s, d, errpath=None):
        """create + start + delete; returns (ms, cpu_ms, error or None). CPU is user+sys of the
        three runtime processes and everything they waited for (hooks, NVIDIA's helpers)."""
        with self.lock:
            self.seq += 1
            cid = "bench-%d-%d" % (os.getpid(), self.seq)
        errpath = errpath or os.path.join(d, "runtime.err")
        cpu = 0.0

        def run(args):
            nonlocal cpu
            # Never a pipe for the runtime's stdio: `runc init` inherits it and holds it open
            # until the container exits, so reading it to EOF would wait forever.
            with open(errpath, "a") as errf:
                p = subprocess.Popen(args, stdin=DEVNULL, stdout=DEVNULL, stderr=errf)
                _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            cpu += (ru.ru_utime + ru.ru_stime) * 1000.0
            return p.returncode

        t0 = time.perf_counter()
        err = None
        if run([s.runtime, "create", "--bundle", d, cid]) != 0:
            err = "create"
        elif run([s.runtime, "start", cid]) != 0:
            err = "start"
        if run([s.runtime, "delete", "--force", cid]) != 0 and err is None:
            err = "delete"
        ms = (time.perf_counter() - t0) * 1000.0
        if err:
            with open(errpath) as f:
                err = "%s failed: %s" % (err, f.read()[-600:].strip())
        return ms, cpu, err

    def run_and_capture(self, s, script):
        """create/start, wait for the process, return its output (same path as the timed runs)."""
        d = self.fresh(s, ["/bin/sh", "-c", script])
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
        self.discard(d)
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
        self.checked = []
        for s in self.setups:
            try:
                out = self.run_and_capture(s, gpu_script if s.gpu else plain)
            except Exception as e:  # a setup that cannot even start is reported, not timed
                out = "error: %s" % e
            ok = "CHECK-OK" in out and (re.search(gpu_ok, out) if s.gpu else "HAS-NVIDIA" not in out)
            log("check %s (%s): %s" % (s.key, s.title, "ok" if ok else "FAILED"))
            self.checked.append("(%s) %s: %s" % (s.key, s.title, "ok" if ok else "FAILED, not timed"))
            if not ok:
                log(out[-3000:])
                self.failed.append((s, out.strip().splitlines()[-1:] or ["(no output)"]))
        self.setups = [s for s in self.setups if s not in [f[0] for f in self.failed]]
        if not self.setups:
            raise SystemExit("every setup failed its correctness check; nothing was timed")

    def timed(self):
        n, warm = self.a.n, self.a.warmup
        log("timing: %d setups x (%d warm-up + %d) starts, fresh random order each round, a fresh rootfs each" % (
            len(self.setups), warm, n))
        for s in self.setups:
            s.cpu, s.errors = [], []
        for rnd in range(warm + n):
            order = self.setups[:]
            random.shuffle(order)
            bundles = {s.key: self.fresh(s, ["/bin/true"]) for s in order}  # outside the timing
            for s in order:
                ms, cpu, err = self.start(s, bundles[s.key])
                if err:  # reported under the table, never dropped
                    s.errors.append(err)
                if rnd >= warm:
                    s.samples.append(ms)
                    s.cpu.append(cpu)
            for d in bundles.values():
                self.discard(d)
            if (rnd + 1) % 25 == 0:
                log("  round %d/%d" % (rnd + 1, warm + n))

    def breakdown(self):
        """nvhook's own timings, from its debug log, in a separate untimed pass."""
        res = {}
        hooked = [s for s in self.setups if s.hook in ("nvhook", "nvhook-base")]
        if self.a.breakdown_n <= 0:
            hooked = []
        logs = {s.key: os.path.join(self.work, "nvhook-%s.log" % s.key) for s in hooked}
        for logf in logs.values():
            if os.path.exists(logf):
                os.unlink(logf)
        # interleaved, a fresh random order each round (as the timed rounds): a before/after pair
        # (c, C) sees the same state of the host
        for _ in range(self.a.breakdown_n):
            for s in random.sample(hooked, len(hooked)):
                d = self.fresh(s, ["/bin/true"], ["NVHOOK_LOG=debug", "NVHOOK_LOG_FILE=" + logs[s.key]])
                self.start(s, d)
                self.discard(d)
        for s in hooked:
            logf = logs[s.key]
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

    # ------------------------------------------------------------------ bursts
    def one_burst(self, s, k, cpu_out=None):
        """k containers of setup s started at once, each on its own fresh rootfs (prepared before
        the clock starts). Returns (wall ms, [per-start ms], [cpu ms], [errors])."""
        bundles = [self.fresh(s, ["/bin/true"], cpu_out=cpu_out) for _ in range(k)]
        go = threading.Barrier(k + 1)
        res = [None] * k

        def worker(i):
            go.wait()
            res[i] = self.start(s, bundles[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
        for t in threads:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = (time.perf_counter() - t0) * 1000.0
        for d in bundles:
            self.discard(d)
        return wall, [r[0] for r in res], [r[1] for r in res], [r[2] for r in res if r[2]]

    def bursts(self):
        sizes = [int(x) for x in self.a.burst.split(",") if x]
        setups = [s for s in self.setups if s.key in self.a.burst_setups]
        self.burst_res = {(s.key, k): {"wall": [], "starts": [], "cpu": [], "errors": []}
                          for s in setups for k in sizes}
        log("bursts: %s containers at once, setups %s, %d rounds in random order" % (
            sizes, "".join(s.key for s in setups), self.a.burst_reps))
        for rep in range(self.a.burst_reps):
            for k in sizes:
                order = setups[:]
                random.shuffle(order)
                for s in order:
                    wall, starts, cpu, errs = self.one_burst(s, k)
                    r = self.burst_res[(s.key, k)]
                    r["wall"].append(wall)
                    r["starts"] += starts
                    r["cpu"] += cpu
                    r["errors"] += errs
            log("  burst round %d/%d" % (rep + 1, self.a.burst_reps))

    # ------------------------------------------------------------------ hook CPU
    def hook_cpu(self):
        """Each hook's own user+sys CPU time per start (its rusage, read by a wrapper that waits
        for it), single starts and one burst; an untimed pass."""
        self.hook_cpu_res = {}
        k = max([int(x) for x in (self.a.burst or "16").split(",") if x])
        for s in self.setups:
            if s.hook is None:
                continue
            single = os.path.join(self.work, "cpu-%s-single" % s.key)
            burst = os.path.join(self.work, "cpu-%s-burst" % s.key)
            for _ in range(self.a.hook_cpu):
                d = self.fresh(s, ["/bin/true"], cpu_out=single)
                self.start(s, d)
                self.discard(d)
            if self.a.burst:
                self.one_burst(s, k, cpu_out=burst)
            res = {}
            for name, path in (("single", single), ("burst", burst)):
                if os.path.exists(path):
                    with open(path) as f:
                        v = [tuple(int(x) for x in l.split()) for l in f if l.strip()]
                    res[name] = (statistics.median(u / 1000.0 for u, _ in v),
                                 statistics.median(y / 1000.0 for _, y in v),
                                 statistics.median((u + y) / 1000.0 for u, y in v), len(v))
            self.hook_cpu_res[s.key] = res
        self.hook_cpu_burst_k = k

    # ------------------------------------------------------------------ report
    def report(self, bd):
        base = next((s for s in self.setups if s.key == "a"), None)
        b50 = pct(base.samples, 50) if base else float("nan")
        lines = [
            "| setup | p50 | p90 | max | added p50 | added, paired median | paired, 1st half | paired, 2nd half "
            "| CPU per start | CPU added, paired |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        paired = {}
        half = len(base.samples) // 2 if base else 0

        def pmed(xs, ys):
            return statistics.median(x - y for x, y in zip(xs, ys)) if xs else float("nan")
        for s in self.setups:
            p50, mx = pct(s.samples, 50), max(s.samples)
            # per-round differences from the baseline started in the same round: drift of the
            # machine between rounds cancels out; each half on its own shows whether the
            # conclusion holds across two runs
            cells = ["–"] * 5
            if base and s.key != "a" and len(base.samples) == len(s.samples):
                paired[s.key] = pmed(s.samples, base.samples)
                cells = ["%+.1f ms" % (p50 - b50), "%+.2f ms" % paired[s.key],
                         "%+.2f ms" % pmed(s.samples[:half], base.samples[:half]),
                         "%+.2f ms" % pmed(s.samples[half:], base.samples[half:]),
                         "%+.1f ms" % pmed(s.cpu, base.cpu)]
            lines.append("| (%s) %s | %.1f ms | %.1f ms | %.1f ms | %s | %s | %s | %s | %.1f ms | %s |" % (
                s.key, s.title, p50, pct(s.samples, 90), mx, cells[0], cells[1], cells[2], cells[3],
                statistics.median(s.cpu), cells[4]))
        by = {s.key: pct(s.samples, 50) - b50 for s in self.setups}
        ratios = []
        for ours, theirs, label in (("c", "i", "legacy hook"), ("c", "f", "shim (jit-cdi)"),
                                    ("b", "h", "legacy hook, no GPU"), ("b", "e", "shim, no GPU")):
            if ours in by and theirs in by and by[ours] > 0:
                ratios.append("- added p50: nvhook (%s) %.1f ms vs NVIDIA %s (%s) %.1f ms: %.1fx less" % (
                    ours, by[ours], label, theirs, by[theirs], by[theirs] / by[ours]))
        for s, why in getattr(self, "failed", []):
            lines.append("| (%s) %s | failed its correctness check, not timed: %s | | | | | | | | |" % (
                s.key, s.title, why[0][:120]))
        for ours, theirs, label in (("c", "i", "legacy hook"), ("c", "f", "shim (jit-cdi)")):
            if ours in paired and theirs in paired and paired[ours] > 0:
                ratios.append("- paired medians: nvhook (%s) %+.1f ms vs NVIDIA %s (%s) %+.1f ms: %.1fx less" % (
                    ours, paired[ours], label, theirs, paired[theirs], paired[theirs] / paired[ours]))
        if "z" in paired and "b" in paired:
            ratios.append("- over the no-op hook (z, %+.1f ms paired): nvhook without a GPU request (b) adds %+.1f ms, "
                          "with all GPUs (c) %+.1f ms" % (paired["z"], paired["b"] - paired["z"],
                                                          paired.get("c", float("nan")) - paired["z"]))
        for s in self.setups:
            for e in getattr(s, "errors", [])[:3]:
                lines.append("- failed start (%s), %d in all: %s" % (s.key, len(s.errors), e.replace("\n", " ")[:300]))
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
        lines += self.report_bursts() + self.report_hook_cpu()
        return "\n".join(lines)

    def report_bursts(self):
        res = getattr(self, "burst_res", None)
        if not res:
            return []
        out = ["", "Bursts: K containers started at once (create+start+delete each, a fresh rootfs each), "
               "%d rounds, setups in random order within each round; wall = the whole burst (median over "
               "rounds), added = median of per-round differences from runc alone; per-start latency and CPU "
               "over all starts of all rounds:" % self.a.burst_reps, "",
               "| setup | K | burst wall | added wall, paired | per start p50 | per start p99 | CPU per start "
               "| CPU added | failed starts |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        titles = {s.key: s.title for s in self.setups}
        added = {}
        for (key, k), r in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0] != "a", kv[0][0])):
            base = res.get(("a", k))
            add, cadd = "–", "–"
            if base and key != "a":
                added[(key, k)] = statistics.median(x - y for x, y in zip(r["wall"], base["wall"]))
                add = "%+.0f ms" % added[(key, k)]
                cadd = "%+.1f ms" % (statistics.median(r["cpu"]) - statistics.median(base["cpu"]))
            n = len(r["starts"])
            out.append("| (%s) %s | %d | %.0f ms | %s | %.1f ms | %.1f ms | %.1f ms | %s | %d of %d |" % (
                key, titles.get(key, key), k, statistics.median(r["wall"]), add, pct(r["starts"], 50),
                pct(r["starts"], 99), statistics.median(r["cpu"]), cadd, len(r["errors"]), n))
        out.append("")
        for k in sorted({k for _, k in res}):
            for ours, theirs, label in (("c", "i", "legacy hook"), ("c", "f", "shim (jit-cdi)")):
                if (ours, k) in added and (theirs, k) in added:
                    a, b = added[(ours, k)], added[(theirs, k)]
                    ratio = "%.1fx less" % (b / a) if a > 0 else "nvhook adds nothing measurable"
                    out.append("- burst of %d, added wall: nvhook (%s) %+.0f ms vs NVIDIA %s (%s) %+.0f ms: %s" % (
                        k, ours, a, label, theirs, b, ratio))
        for (key, k), r in sorted(res.items()):
            for e in r["errors"][:3]:
                out.append("- failed start, (%s) burst of %d: %s" % (key, k, e.replace("\n", " ")[:300]))
        return out

    def report_hook_cpu(self):
        res = getattr(self, "hook_cpu_res", None)
        if not res:
            return []
        out = ["", "Each hook's own CPU time per start (its rusage with everything it waited for, read by a "
               "wrapper in a separate pass; median user / sys / user+sys, ms):", "",
               "| setup | single starts | in a burst of %d | user+sys over (z), single / burst |" % self.hook_cpu_burst_k,
               "| --- | --- | --- | --- |"]
        titles = {s.key: s.title for s in self.setups}
        z = res.get("z", {})
        for key, r in res.items():
            cells = []
            for name in ("single", "burst"):
                v = r.get(name)
                cells.append("%.2f / %.2f / **%.2f** (n=%d)" % v if v else "–")
            over = " / ".join("%+.2f ms" % (r[n][2] - z[n][2]) if n in r and n in z else "–"
                              for n in ("single", "burst"))
            out.append("| (%s) %s | %s | %s | %s |" % (key, titles[key], cells[0], cells[1], over))
        out.append("")
        out.append("The child's rusage includes the wrapper's own work between fork and exec (Python, about 2 ms): "
                   "the no-op hook (z) measures it, hence the last column. The kernel splits user and sys by "
                   "sampling at the tick; their sum is exact. The shim's hooks (nvidia-ctk, run by runc) are not "
                   "wrapped: its cost is in the CPU-added columns above.")
        return out


CPUWRAP = """
import os, sys
out, path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    try:
        os.execv(path, argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, b"%d %d\\n" % (round(ru.ru_utime * 1e6), round(ru.ru_stime * 1e6)))
os.close(fd)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


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
    p.add_argument("--nvhook-base", help="nvhook before the change: adds setups B and C, timed in the same rounds")
    p.add_argument("--burst", default="", help="burst sizes, e.g. 16,64: that many containers started at once")
    p.add_argument("--burst-reps", type=int, default=5, help="rounds of bursts (each size, each setup once)")
    p.add_argument("--burst-setups", default="acfi", help="setup letters timed in bursts")
    p.add_argument("--hook-cpu", type=int, default=0,
                   help="starts per hook setup in the pass that reads each hook's own CPU time (0: no pass)")
    p.add_argument("--work", default="/tmp/nvhook-bench")
    p.add_argument("--out", help="write the markdown report here too")
    p.add_argument("--no-tmpfs", action="store_true", help="keep the bundles on the work dir's filesystem")
    p.add_argument("--tmpfs-mb", type=int, default=4096, help="size of the work dir's tmpfs")
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root")
    if os.path.ismount(a.work):
        subprocess.run(["umount", "-l", a.work], check=True)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    if not a.no_tmpfs:
        # Bundles on a tmpfs: copying a fresh rootfs for every start (and 64 for a burst) onto a
        # disk leaves writeback that slows whichever setup creates files next (seen on the GPU
        # host: the phase that creates mount points took 10x longer after the bursts).
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=%dm" % a.tmpfs_mb, "nvhook-bench", a.work],
                       check=True)
    try:
        run(a)
    finally:
        if not a.no_tmpfs:
            subprocess.run(["umount", "-l", a.work])


def run(a):
    if a.peers:
        setup_peers(a.peers)
        with open(os.path.join(a.work, "legacy-config.toml"), "w") as f:
            f.write('[nvidia-container-cli]\npath = "/usr/local/bin/nvidia-container-cli"\nenvironment = []\n'
                    'ldconfig = "@/sbin/ldconfig.real"\n\n[nvidia-container-runtime]\nmode = "legacy"\n')
    b = Bench(a)
    b.check()
    b.timed()
    bd = b.breakdown()  # before the bursts: 64 containers' teardown must not disturb it
    if a.burst:
        b.bursts()
    if a.hook_cpu:
        b.hook_cpu()
    env = "%s; %s; %d CPUs" % (os.uname().release, subprocess.run([b.runc, "--version"], capture_output=True,
                                                                   text=True).stdout.splitlines()[0], os.cpu_count())
    head = "nvhook start-latency benchmark, %s UTC, N=%d per setup (+%d warm-up rounds), %s\n\n" % (
        time.strftime("%Y-%m-%d %H:%M", time.gmtime()), a.n, a.warmup, env)
    checks = "What each setup's container saw before timing (GPU setups: %s): %s\n\n" % (
        "nvidia-smi and the fixtures' CUDA probe" if a.fake else "nvidia-smi -L and the kit's PTX kernel, results verified",
        "; ".join(b.checked))
    rep = head + checks + b.report(bd)
    print(rep)
    raw = {s.key: {"title": s.title, "samples_ms": s.samples, "cpu_ms": s.cpu} for s in b.setups}
    bursts = {"%s-%d" % k: v for k, v in getattr(b, "burst_res", {}).items()}
    if a.out:
        with open(a.out, "w") as f:
            f.write(rep + "\n")
        with open(a.out + ".json", "w") as f:
            json.dump({"breakdown": bd, "setups": raw, "bursts": bursts,
                       "hook_cpu": getattr(b, "hook_cpu_res", {})}, f)


if __name__ == "__main__":
    main()
