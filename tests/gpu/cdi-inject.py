#!/usr/bin/env python3
"""Apply a CDI spec's edits to an OCI bundle's config.json, as a CDI engine would (podman's CDI
library 0.5: env replaced by name, device nodes added to linux.devices and allowed in the device
cgroup, mounts replaced by destination and sorted by depth, hooks appended to their stage).

For runtimes that do not read CDI themselves (runc, crun alone): the GPU kit and the CI tests use
it to start containers from `nvhook cdi generate`'s spec without an engine.

usage: cdi-inject.py SPEC.json BUNDLE_DIR DEVICE_NAME...
"""
import json
import sys


def apply(cfg, edits):
    proc = cfg.setdefault("process", {})
    env = proc.setdefault("env", [])
    for e in edits.get("env", []):
        name = e.split("=", 1)[0]
        env[:] = [x for x in env if x.split("=", 1)[0] != name] + [e]
    linux = cfg.setdefault("linux", {})
    devices = linux.setdefault("devices", [])
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    for d in edits.get("deviceNodes", []):
        node = {k: d[k] for k in ("path", "type", "major", "minor") if k in d}
        if "fileMode" in d:
            node["fileMode"] = d["fileMode"]
        devices[:] = [x for x in devices if x.get("path") != d["path"]] + [node]
        rules.append({"allow": True, "type": d["type"], "major": d["major"],
                      "minor": d["minor"], "access": d.get("permissions") or "rwm"})
    mounts = cfg.setdefault("mounts", [])
    for m in edits.get("mounts", []):
        mounts[:] = [x for x in mounts if x.get("destination") != m["containerPath"]]
        mount = {"destination": m["containerPath"], "source": m["hostPath"],
                 "options": m.get("options", [])}
        if m.get("type"):
            mount["type"] = m["type"]
        mounts.append(mount)
    mounts.sort(key=lambda x: x["destination"].rstrip("/").count("/"))
    for h in edits.get("hooks", []):
        hook = {k: h[k] for k in ("path", "args", "env", "timeout") if k in h}
        cfg.setdefault("hooks", {}).setdefault(h["hookName"], []).append(hook)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    spec = json.load(open(sys.argv[1]))
    path = sys.argv[2].rstrip("/") + "/config.json"
    cfg = json.load(open(path))
    by_name = {d["name"]: d for d in spec["devices"]}
    for name in sys.argv[3:]:
        if name not in by_name:
            sys.exit(f"cdi-inject: {spec['kind']}={name}: no such device (have {', '.join(by_name)})")
    apply(cfg, spec.get("containerEdits", {}))
    for name in dict.fromkeys(sys.argv[3:]):
        apply(cfg, by_name[name]["containerEdits"])
    json.dump(cfg, open(path, "w"), indent=1)


main()
