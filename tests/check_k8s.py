#!/usr/bin/env python3
"""check_k8s.py - checks the rendered Kubernetes manifests of deploy/k8s (test_deploy_k8s.sh).

    check_k8s.py RENDERED.yaml HELP_DIR REPLICAS [--pending-opt OPT]...

RENDERED.yaml: `kubectl kustomize` of the base or an overlay. HELP_DIR holds the --help text of
each binary as the container runs it: rlhf-master.txt, rlhf-worker.txt, rlhf-run.txt (`rlhf
run --help`). REPLICAS: "rollout=2,reward=1,learner=1", the workers each role must have.
--pending-opt OPT: an option (--keys, --key, --insecure) the manifests may use although the
binaries' --help does not list it yet (reported as PENDING, not failed).

Checks, each printed as `ok NAME` or `FAIL NAME: why` (exit 1 on any FAIL):
  - every document is an object with apiVersion, kind and a name; the expected objects exist;
  - replicas per role; selectors match their pod templates; every container has requests;
  - every rlhf, rlhf-master and rlhf-worker container uses only options its binary's --help
    lists, and every $(VAR) in its arguments is a variable of the container;
  - keys: the Secret rlhf-keys is mounted read-only with mode 0400 or 0600 (nothing for group
    or others), only into init containers, which copy each key (`install -m 0600`) into an
    in-memory volume that the main container mounts read-only; every --key/--keys names such a
    copy, of the right role's key;
  - the master: a StatefulSet with a PersistentVolumeClaim holding --run-dir and --data-dir,
    the stage worker in its pod on the same volume at the same path; the ports of --bind,
    master.blob_port and --http-port declared and served by the Service rlhf-master; readiness,
    liveness and startup probes on /healthz of the HTTP port, which binds every interface;
  - workers: --master names the Service and its ZeroMQ port, listeners bind every interface and
    advertise the pod IP (downward API), --cache-dir is an emptyDir;
  - the Job runs `rlhf run` on the run.yaml of the ConfigMap rlhf-run against the Service;
  - with Python's kubernetes package (python3-kubernetes), every field name of every object is
    one that its API type has (what a server's strict validation would refuse).
"""
import re
import sys

import yaml

SVC, HEADLESS, STS, JOB = "rlhf-master", "rlhf-master-headless", "rlhf-master", "rlhf-submit"
ROLES = ("rollout", "reward", "learner")
SECRET = "rlhf-keys"
# fields newer than python3-kubernetes 22 (Kubernetes 1.22) knows
NEWER_FIELDS = {("V1JobSpec", "podFailurePolicy")}

fails = 0
pending = set()


def ok(name):
    print("ok   " + name)


def bad(name, why):
    global fails
    fails += 1
    print("FAIL %s: %s" % (name, why))


def check(name, cond, why=""):
    (ok if cond else lambda n: bad(n, why or "no"))(name)
    return cond


def help_options(text):
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def volumes(spec):
    return {v["name"]: v for v in spec.get("volumes", [])}


def mount_of(container, path):
    """The volume mount of container that holds path (the longest mount path), or None."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if not best or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def opt_values(args, opt):
    """The values of every `opt VALUE` or `opt=VALUE` in args."""
    out = []
    for i, a in enumerate(args):
        if a == opt and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(opt + "="):
            out.append(a[len(opt) + 1:])
    return out


def one(args, opt):
    v = opt_values(args, opt)
    return v[-1] if v else None


def argv_of(c):
    return list(c.get("command", [])) + list(c.get("args", []))


def check_options(where, c, helps):
    argv = argv_of(c)
    binary = argv[0] if argv else ""
    if binary == "rlhf":
        key = "rlhf-" + argv[1] if len(argv) > 1 else ""
    else:
        key = binary
    if key not in helps:
        return
    known = helps[key]
    opts = sorted({a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")})
    unknown = []
    for o in opts:
        if o in known:
            continue
        if o in PENDING_OPTS:
            pending.add(o)
            continue
        unknown.append(o)
    check("%s: %s accepts %s" % (where, binary if binary != "rlhf" else "rlhf " + argv[1],
                                  " ".join(opts)), not unknown, "not in --help: " + " ".join(unknown))
    env = {e["name"] for e in c.get("env", [])}
    refs = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(argv)))
    check("%s: $(VAR) of its arguments are its variables" % where, refs <= env,
          "undefined: " + " ".join(sorted(refs - env)))


def key_copies(spec, vols):
    """{(volume, file name): secret key} for every `install -m 0600 SRC... DIR/` of the init
    containers that copies Secret files into an in-memory emptyDir."""
    copies = {}
    for ic in spec.get("initContainers", []):
        argv = argv_of(ic)
        if argv[:3] != ["install", "-m", "0600"]:
            continue
        *srcs, dest = argv[3:]
        dm = mount_of(ic, dest.rstrip("/"))
        if not dm or dm["mountPath"].rstrip("/") != dest.rstrip("/"):
            continue
        dv = vols.get(dm["name"], {})
        if dv.get("emptyDir", {}).get("medium") != "Memory":
            continue
        for s in srcs:
            sm = mount_of(ic, s)
            sv = vols.get(sm["name"], {}) if sm else {}
            if sv.get("secret", {}).get("secretName") == SECRET:
                name = s.rsplit("/", 1)[1]
                copies[(dm["name"], name)] = name
    return copies


def check_key_path(where, c, spec, vols, path, files):
    """path (a key file, or with files a directory of them) is a read-only mount of a copy the
    init containers made of those Secret keys."""
    copies = key_copies(spec, vols)
    m = mount_of(c, path)
    if not check("%s: %s is a volume" % (where, path), m is not None, "not under any mount"):
        return
    check("%s: %s is mounted read-only" % (where, path), m.get("readOnly") is True)
    rel = path[len(m["mountPath"].rstrip("/")):].strip("/")
    names = files if files else [rel]
    missing = [n for n in names if (m["name"], n) not in copies]
    check("%s: %s holds %s, copied mode 0600 from Secret %s" % (where, path, " ".join(names),
                                                              SECRET), not missing,
          "no init container copies " + " ".join(missing))


# --- the kubernetes package's API types: field names -----------------------------------------
def schema_check(docs):
    try:
        import kubernetes.client as kc
    except ImportError:
        print("note: no Python kubernetes package (python3-kubernetes): field names not checked")
        return
    kinds = {("v1", "Service"): "V1Service", ("v1", "ConfigMap"): "V1ConfigMap",
             ("apps/v1", "StatefulSet"): "V1StatefulSet",
             ("apps/v1", "Deployment"): "V1Deployment", ("batch/v1", "Job"): "V1Job"}

    def walk(value, typ, path, errs):
        if value is None:
            return
        m = re.fullmatch(r"list\[(.+)\]", typ)
        if m:
            for i, v in enumerate(value if isinstance(value, list) else []):
                walk(v, m.group(1), "%s[%d]" % (path, i), errs)
            if not isinstance(value, list):
                errs.append("%s: not a list" % path)
            return
        m = re.fullmatch(r"dict\(str, (.+)\)", typ)
        if m:
            if not isinstance(value, dict):
                errs.append("%s: not a mapping" % path)
                return
            for k, v in value.items():
                walk(v, m.group(1), "%s.%s" % (path, k), errs)
            return
        cls = getattr(kc, typ, None)
        if cls is None:  # str, int, bool, object, datetime
            return
        if not isinstance(value, dict):
            errs.append("%s: not a mapping (%s)" % (path, typ))
            return
        by_json = {j: p for p, j in cls.attribute_map.items()}
        for k, v in value.items():
            if k not in by_json:
                if (typ, k) not in NEWER_FIELDS:
                    errs.append("%s.%s: no such field of %s" % (path, k, typ))
                continue
            walk(v, cls.openapi_types[by_json[k]], "%s.%s" % (path, k), errs)

    for d in docs:
        typ = kinds.get((d.get("apiVersion"), d.get("kind")))
        if not typ:
            bad("%s/%s: an API type" % (d.get("kind"), d["metadata"]["name"]), "unknown kind")
            continue
        errs = []
        walk(d, typ, d["kind"], errs)
        check("%s %s: every field is one of %s" % (d["kind"], d["metadata"]["name"], typ),
              not errs, "; ".join(errs))


def main(argv):
    global PENDING_OPTS
    PENDING_OPTS = set()
    args = []
    i = 0
    while i < len(argv):
        if argv[i] == "--pending-opt" and i + 1 < len(argv):
            PENDING_OPTS.add(argv[i + 1])
            i += 2
            continue
        args.append(argv[i])
        i += 1
    rendered, help_dir, replicas_arg = args
    want_replicas = dict((k, int(v)) for k, v in (p.split("=") for p in replicas_arg.split(",")))
    helps = {}
    for b in ("rlhf-master", "rlhf-worker", "rlhf-run"):
        with open("%s/%s.txt" % (help_dir, b)) as f:
            helps[b] = help_options(f.read())

    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    check("%d documents, each with apiVersion, kind and a name" % len(docs),
          all(isinstance(d, dict) and d.get("apiVersion") and d.get("kind")
              and d.get("metadata", {}).get("name") for d in docs))
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def get(kind, name):
        d = by.get((kind, name))
        check("%s %s exists" % (kind, name), d is not None)
        return d

    svc, headless, sts, job = (get("Service", SVC), get("Service", HEADLESS),
                               get("StatefulSet", STS), get("Job", JOB))
    deps = {r: get("Deployment", "rlhf-" + r) for r in ROLES}
    cms = [d for d in docs if d["kind"] == "ConfigMap" and
           d["metadata"]["name"].startswith("rlhf-run")]
    check("ConfigMap rlhf-run (generated) with run.yaml",
          len(cms) == 1 and "run.yaml" in cms[0].get("data", {}))
    if None in (svc, headless, sts, job) or None in deps.values() or len(cms) != 1:
        return 1

    # --- replicas, selectors, requests ---------------------------------------------------------
    check("StatefulSet %s: 1 replica" % STS, sts["spec"].get("replicas", 1) == 1)
    for r, d in deps.items():
        n = d["spec"].get("replicas", 1)
        check("Deployment rlhf-%s: %d replicas" % (r, want_replicas[r]), n == want_replicas[r],
              "has %d" % n)
    for d in [sts, job] + list(deps.values()):
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        sel = d["spec"].get("selector", {}).get("matchLabels", {})
        if d["kind"] != "Job":
            check("%s %s: its selector matches its pods" % (d["kind"], d["metadata"]["name"]),
                  sel and all(labels.get(k) == v for k, v in sel.items()))
        spec = pod_spec(d)
        for c in spec.get("initContainers", []) + spec["containers"]:
            req = c.get("resources", {}).get("requests", {})
            check("%s/%s: requests cpu and memory" % (d["metadata"]["name"], c["name"]),
                  "cpu" in req and "memory" in req)
    for s in (svc, headless):
        labels = sts["spec"]["template"]["metadata"]["labels"]
        check("Service %s selects the master's pod" % s["metadata"]["name"],
              s["spec"].get("selector") and all(labels.get(k) == v
                                                for k, v in s["spec"]["selector"].items()))
    check("Service %s is headless, the StatefulSet's serviceName" % HEADLESS,
          headless["spec"].get("clusterIP") == "None" and sts["spec"]["serviceName"] == HEADLESS)

    # --- options of every container, and its keys ---------------------------------------------
    for d in [sts, job] + list(deps.values()):
        spec = pod_spec(d)
        vols = volumes(spec)
        for c in spec.get("initContainers", []) + spec["containers"]:
            check_options("%s/%s" % (d["metadata"]["name"], c["name"]), c, helps)
        for vname, v in vols.items():
            if v.get("secret", {}).get("secretName") != SECRET:
                continue
            modes = [v["secret"].get("defaultMode", 0o644)] + \
                    [it.get("mode", v["secret"].get("defaultMode", 0o644))
                     for it in v["secret"].get("items", [])]
            check("%s: Secret %s mode %s (nothing for group or others)" %
                  (d["metadata"]["name"], SECRET, "/".join("%04o" % m for m in modes)),
                  all(m & 0o077 == 0 and m & 0o400 for m in modes))
            for c in spec.get("initContainers", []) + spec["containers"]:
                for m in c.get("volumeMounts", []):
                    if m["name"] != vname:
                        continue
                    check("%s/%s: Secret mounted read-only" % (d["metadata"]["name"], c["name"]),
                          m.get("readOnly") is True)
            mains = [c["name"] for c in spec["containers"]
                     if any(m["name"] == vname for m in c.get("volumeMounts", []))]
            check("%s: Secret only in init containers (kubelet makes it 0440 with fsGroup)" %
                  d["metadata"]["name"], not mains, "mounted in " + " ".join(mains))

    def container(d, name):
        return next(c for c in pod_spec(d)["containers"] if c["name"] == name)

    # --- the master ----------------------------------------------------------------------------
    spec = pod_spec(sts)
    vols = volumes(spec)
    master = container(sts, "master")
    margs = argv_of(master)
    where = "%s/master" % STS
    check("%s: runs rlhf-master" % where, margs[0] == "rlhf-master")
    keys_dir = one(margs, "--keys")
    if check("%s: --keys" % where, keys_dir is not None):
        check_key_path(where, master, spec, vols, keys_dir,
                       ["master.key", "authorized_keys", "http.token"])
    pvc = {t["metadata"]["name"]: t for t in sts["spec"].get("volumeClaimTemplates", [])}
    check("StatefulSet %s: a PersistentVolumeClaim template with a size" % STS,
          len(pvc) == 1 and all(t["spec"]["resources"]["requests"].get("storage")
                                for t in pvc.values()))
    data_mount = None
    for opt in ("--run-dir", "--data-dir"):
        path = one(margs, opt)
        m = mount_of(master, path) if path else None
        ok_ = check("%s: %s %s on the PersistentVolumeClaim" % (where, opt, path),
                    m is not None and m["name"] in pvc)
        if ok_:
            data_mount = m
    ports = {p["name"]: p["containerPort"] for p in master.get("ports", [])}
    bind = one(margs, "--bind") or ""
    sets = dict(s.split("=", 1) for s in opt_values(margs, "--set"))
    zmq_port = int(bind.rsplit(":", 1)[1]) if re.search(r":\d+$", bind) else None
    check("%s: --bind %s on every interface, port zmq" % (where, bind),
          bind.startswith("tcp://0.0.0.0:") and ports.get("zmq") == zmq_port)
    check("%s: master.blob_port = port blob" % where,
          "master.blob_port" in sets and ports.get("blob") == int(sets["master.blob_port"]))
    http_port = int(one(margs, "--http-port") or sets.get("master.http_port", 8080))
    check("%s: --http-port = port http" % where, ports.get("http") == http_port)
    check("%s: HTTP on every interface (the kubelet probes the pod IP)" % where,
          sets.get("master.http_host") == "0.0.0.0")
    check("%s: --advertise the Service %s" % (where, SVC), one(margs, "--advertise") == SVC)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = master.get(probe, {}).get("httpGet", {})
        port = g.get("port")
        check("%s: %s on /healthz of the HTTP port" % (where, probe),
              g.get("path") == "/healthz" and (port == "http" or port == http_port))
    sp = {p["name"]: p for p in svc["spec"]["ports"]}
    for name in ("zmq", "blob", "http"):
        p = sp.get(name, {})
        check("Service %s: port %s -> the master's %s" % (SVC, name, name),
              p.get("targetPort") in (name, ports.get(name)) and p.get("port") == ports.get(name))

    # the stage worker: beside the master, on the same volume at the same path
    stage = next((c for c in spec["containers"] if "--role" in argv_of(c) and
                  one(argv_of(c), "--role") == "stage"), None)
    if check("%s: a stage worker in the master's pod" % STS, stage is not None):
        sargs = argv_of(stage)
        where = "%s/%s" % (STS, stage["name"])
        check("%s: --master the master on the pod's loopback" % where,
              one(sargs, "--master") == "tcp://127.0.0.1:%s" % zmq_port)
        sm = [m for m in stage.get("volumeMounts", []) if data_mount and
              m["name"] == data_mount["name"]]
        check("%s: the master's volume at the master's path" % where,
              bool(sm) and sm[0]["mountPath"] == data_mount["mountPath"])
        check_key_path(where, stage, spec, vols, one(sargs, "--key") or "/", None)
        check("%s: --key is stage.key" % where, (one(sargs, "--key") or "").endswith("/stage.key"))

    # --- workers -------------------------------------------------------------------------------
    for r, d in deps.items():
        c = next(c for c in pod_spec(d)["containers"] if c["command"][0] == "rlhf-worker")
        a = argv_of(c)
        where = "rlhf-%s/%s" % (r, c["name"])
        env = {e["name"]: e for e in c.get("env", [])}
        check("%s: --role %s" % (where, r), one(a, "--role") == r)
        check("%s: --master the Service %s:%s" % (where, SVC, zmq_port),
              one(a, "--master") == "tcp://%s:%s" % (SVC, zmq_port))
        check("%s: --bind-host 0.0.0.0" % where, one(a, "--bind-host") == "0.0.0.0")
        adv = one(a, "--advertise") or ""
        m = re.fullmatch(r"\$\((\w+)\)", adv)
        check("%s: --advertise the pod IP (downward API)" % where,
              m is not None and env.get(m.group(1), {}).get("valueFrom", {})
              .get("fieldRef", {}).get("fieldPath") == "status.podIP")
        cm = mount_of(c, one(a, "--cache-dir") or "/")
        check("%s: --cache-dir an emptyDir" % where,
              cm is not None and "emptyDir" in volumes(pod_spec(d)).get(cm["name"], {}))
        check_key_path(where, c, pod_spec(d), volumes(pod_spec(d)), one(a, "--key") or "/", None)
        check("%s: --key is %s.key" % (where, r), (one(a, "--key") or "").endswith("/%s.key" % r))
        if r == "learner":
            ck = mount_of(c, one(a, "--ckpt-root") or "/")
            check("%s: --ckpt-root on a volume" % where, ck is not None)

    # --- the Job -------------------------------------------------------------------------------
    spec = pod_spec(job)
    c = spec["containers"][0]
    a = argv_of(c)
    where = "%s/%s" % (JOB, c["name"])
    check("%s: rlhf run CONFIG" % where, a[:2] == ["rlhf", "run"] and len(a) > 2)
    cfg_mount = mount_of(c, a[2]) if len(a) > 2 else None
    cfg_vol = volumes(spec).get(cfg_mount["name"], {}) if cfg_mount else {}
    check("%s: CONFIG is run.yaml of the ConfigMap %s" % (where, cms[0]["metadata"]["name"]),
          cfg_vol.get("configMap", {}).get("name") == cms[0]["metadata"]["name"] and
          a[2].endswith("/run.yaml"))
    check("%s: --master the Service" % where, one(a, "--master") == "tcp://%s:%s" % (SVC, zmq_port))
    check_key_path(where, c, spec, volumes(spec), one(a, "--key") or "/", None)
    check("%s: --key is client.key" % where, (one(a, "--key") or "").endswith("/client.key"))

    schema_check(docs)
    for o in sorted(pending):
        print("PENDING %s: used by the manifests, not yet in the binaries' --help" % o)
    print("%s" % ("all checks passed" if not fails else "%d checks failed" % fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
