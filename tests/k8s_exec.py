#!/usr/bin/env python3
"""k8s_exec.py - runs one container of a rendered Kubernetes pod template on this machine, as
the kubelet would start it, without a cluster (test_deploy_k8s.sh).

    k8s_exec.py RENDERED.yaml KIND/NAME CONTAINER --root DIR --bin DIR --secret DIR
                [--subst FROM TO]... [--without OPT]... [--append ARG]... [--init] [--print]

The pod's volumes become directories under DIR/KIND-NAME/ (emptyDirs and the claims of
volumeClaimTemplates; each container of a pod sees the same ones), a ConfigMap volume is
written there from the rendered ConfigMap, a Secret volume is the directory --secret. The
container's command line is taken as the kubelet takes it: $(VAR) expanded from its env
(fieldRef metadata.name: the pod's name; status.podIP: 127.0.0.1; resourceFieldRef: the
resource in whole units, rounded up; value), then an argument (not the command) equal to FROM of
a --subst FROM TO becomes TO (the cluster's addresses and ports, this machine's), every path
under a volume mount moves to that volume's directory, and the command runs from --bin when it
is there.
--without OPT drops OPT and its value, --append adds arguments, --init runs the pod's init
containers first (the key copies), --print prints the command line as JSON instead of running
it. The process replaces this one (exec), in DIR/KIND-NAME.
"""
import json
import math
import os
import re
import subprocess
import sys

import yaml


def die(msg):
    print("k8s_exec: " + msg, file=sys.stderr)
    sys.exit(2)


def quantity(q):
    """A Kubernetes quantity ("500m", "2", "1Gi") as a number."""
    m = re.fullmatch(r"([0-9.]+)(m|k|Ki|M|Mi|G|Gi|T|Ti)?", str(q))
    if not m:
        die("quantity %r" % q)
    mult = {None: 1, "m": 1e-3, "k": 1e3, "Ki": 1024, "M": 1e6, "Mi": 2**20, "G": 1e9,
            "Gi": 2**30, "T": 1e12, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * mult


def main(argv):
    opts = {"--subst": [], "--without": [], "--append": []}
    flags, pos, single = set(), [], {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--subst" and i + 2 < len(argv):
            opts[a].append((argv[i + 1], argv[i + 2]))
            i += 3
        elif a in opts and i + 1 < len(argv):
            opts[a].append(argv[i + 1])
            i += 2
        elif a in ("--root", "--bin", "--secret") and i + 1 < len(argv):
            single[a] = argv[i + 1]
            i += 2
        elif a in ("--init", "--print"):
            flags.add(a)
            i += 1
        else:
            pos.append(a)
            i += 1
    if len(pos) != 3 or set(single) != {"--root", "--bin", "--secret"}:
        die(__doc__.split("\n\n")[1])
    rendered, obj_ref, cname = pos
    kind, _, name = obj_ref.partition("/")
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    obj = next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)
    if not obj:
        die("no %s in %s" % (obj_ref, rendered))
    spec = obj["spec"]["template"]["spec"]
    pod = name + ("-0" if kind == "StatefulSet" else "-local")
    for k in single:
        single[k] = os.path.abspath(single[k])
    pod_dir = os.path.join(single["--root"], "%s-%s" % (kind, name))

    # volumes -> directories
    vol_dir = {}
    claims = [t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])]
    for v in spec.get("volumes", []) + [{"name": c, "claim": True} for c in claims]:
        if "secret" in v:
            vol_dir[v["name"]] = single["--secret"]
            continue
        d = os.path.join(pod_dir, v["name"])
        os.makedirs(d, exist_ok=True)
        vol_dir[v["name"]] = d
        if "configMap" in v:
            cm = next(c for c in docs if c["kind"] == "ConfigMap" and
                      c["metadata"]["name"] == v["configMap"]["name"])
            for k, text in cm.get("data", {}).items():
                with open(os.path.join(d, k), "w") as f:
                    f.write(text)

    def command_of(c):
        env = {}
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            if "value" in e:
                env[e["name"]] = e["value"]
            elif vf.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[e["name"]] = pod
            elif vf.get("fieldRef", {}).get("fieldPath") == "status.podIP":
                env[e["name"]] = "127.0.0.1"
            elif "resourceFieldRef" in vf:
                r = vf["resourceFieldRef"]
                target = next(x for x in spec["containers"] if x["name"] == r.get(
                    "containerName", c["name"]))
                kind_, res = r["resource"].split(".")
                val = quantity(target["resources"][kind_][res]) / quantity(r.get("divisor", 1))
                env[e["name"]] = str(max(1, math.ceil(val)))
        mounts = sorted(c.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))

        def one(arg, is_arg=True):
            arg = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                         lambda m: env.get(m.group(1), m.group(0)), arg)
            for f, t in opts["--subst"] if is_arg else []:
                if arg == f:
                    arg = t
            head, eq, tail = arg.partition("=") if arg.startswith("--") else ("", "", arg)
            for m in mounts:
                mp = m["mountPath"].rstrip("/")
                if tail == mp or tail.startswith(mp + "/"):
                    tail = vol_dir[m["name"]] + tail[len(mp):]
                    break
            return head + eq + tail

        command = c.get("command", [])
        argv_ = [one(a, i > 0) for i, a in enumerate(command)] + [one(a) for a in c.get("args", [])]
        for o in opts["--without"]:
            while o in argv_:
                j = argv_.index(o)
                del argv_[j:j + 2]
        local = os.path.join(single["--bin"], argv_[0])
        if os.path.exists(local):
            argv_[0] = local
        return argv_, env

    if "--init" in flags:
        for ic in spec.get("initContainers", []):
            cmd, _ = command_of(ic)
            r = subprocess.run(cmd)
            if r.returncode:
                die("init container %s: exit %d: %s" % (ic["name"], r.returncode, cmd))
    c = next((x for x in spec["containers"] if x["name"] == cname), None)
    if not c:
        die("no container %s in %s" % (cname, obj_ref))
    cmd, env = command_of(c)
    cmd += opts["--append"]
    if "--print" in flags:
        print(json.dumps(cmd))
        return 0
    full_env = dict(os.environ)
    full_env.update(env)
    os.chdir(pod_dir)
    os.execvpe(cmd[0], cmd, full_env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
