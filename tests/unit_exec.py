#!/usr/bin/env python3
"""unit_exec.py - runs a systemd service unit's ExecStart= as systemd would, without systemd
(test_deploy_systemd.sh: systemd is not PID 1 in a container or a CI job).

    unit_exec.py [--map FROM=TO]... [--set-spec X=VALUE]... [--without OPT]... [--print]
                 UNIT_DIR UNIT

reads UNIT (a name such as rlhf-worker@rollout.service: the template rlhf-worker@.service and
the drop-ins of UNIT.d/ and TEMPLATE.d/ in UNIT_DIR, in systemd's order), then:
  - expands the specifiers of ExecStart=, Environment=, EnvironmentFile=, LoadCredential=,
    StateDirectory=, CacheDirectory= and WorkingDirectory= (%i %I %n %N %p %H %%, and %S %C %d
    given with --set-spec: the state and cache roots, the credentials directory);
  - builds the environment: Environment= assignments, then the EnvironmentFile= files (their
    settings win, as in systemd; a "-" file may be missing), plus STATE_DIRECTORY,
    CACHE_DIRECTORY and CREDENTIALS_DIRECTORY;
  - creates the StateDirectory= and CacheDirectory= directories, copies every LoadCredential=
    ID:PATH file to the credentials directory as ID, mode 0400;
  - expands ${VAR} (one word, even empty) and $VAR (split at whitespace, none when empty) in
    ExecStart= and execs it in WorkingDirectory= (the PID stays the binary's).
--map FROM=TO reads a path under FROM (/etc/rlhf) from TO instead. --without OPT leaves option
OPT and its value out of the command line (an option the binaries do not have yet). --print
prints the command line as JSON instead of running it. Exits 2 on a unit it cannot read.
"""
import json
import os
import re
import shlex
import shutil
import socket
import sys


def die(msg):
    print("unit_exec: " + msg, file=sys.stderr)
    sys.exit(2)


def parse_unit_text(text, entries):
    """Appends (section, key, value) for each assignment, continuation lines joined."""
    section, pending = None, ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            die("not an assignment: " + line)
        entries.append((section, key.strip(), value.strip()))


def unit_files(unit_dir, unit):
    """The unit's file and drop-ins: UNIT (or its template), then *.conf of the drop-in
    directories (the template's, then the instance's), sorted by file name."""
    name, _, suffix = unit.rpartition(".")
    prefix, at, instance = name.partition("@")
    template = prefix + "@." + suffix if at else None
    main = os.path.join(unit_dir, unit)
    if not os.path.exists(main) and template:
        main = os.path.join(unit_dir, template)
    if not os.path.exists(main):
        die("no unit file for " + unit + " in " + unit_dir)
    dropins = {}
    for d in [template, unit] if template else [unit]:
        ddir = os.path.join(unit_dir, d + ".d")
        if os.path.isdir(ddir):
            for f in os.listdir(ddir):
                if f.endswith(".conf"):
                    dropins[f] = os.path.join(ddir, f)  # the instance's wins over the template's
    return [main] + [dropins[f] for f in sorted(dropins)], prefix, instance


def expand_specifiers(s, spec):
    def one(m):
        c = m.group(1)
        if c not in spec:
            die("specifier %" + c + " not supported here")
        return spec[c]

    return re.sub(r"%(.)", one, s)


def env_assignments(value):
    """Environment= values: space-separated VAR=VALUE words, quoting as in the shell."""
    out = []
    for word in shlex.split(value):
        k, sep, v = word.partition("=")
        if not sep:
            die("bad Environment= assignment: " + word)
        out.append((k, v))
    return out


def read_env_file(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            k, sep, v = line.partition("=")
            if not sep:
                die(path + ": not VAR=VALUE: " + line)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            out.append((k.strip(), v))
    return out


def expand_command(line, env):
    """ExecStart= words with ${VAR} and $VAR expanded as systemd does."""
    words = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:  # $VAR alone: split at whitespace, zero words when empty
            words.extend(env.get(m.group(1), "").split())
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""),
                            word))
    return words


def main(argv):
    maps, spec_set, without, do_print = [], {}, [], False
    args = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--map", "--set-spec") and i + 1 < len(argv):
            k, sep, v = argv[i + 1].partition("=")
            if not sep:
                die(a + " takes X=VALUE")
            (maps.append((k, v)) if a == "--map" else spec_set.__setitem__(k, v))
            i += 2
            continue
        if a == "--without" and i + 1 < len(argv):
            without.append(argv[i + 1])
            i += 2
            continue
        if a == "--print":
            do_print = True
        else:
            args.append(a)
        i += 1
    if len(args) != 2:
        die("usage: unit_exec.py [--map FROM=TO]... [--set-spec X=VALUE]... [--print] "
            "UNIT_DIR UNIT")
    unit_dir, unit = args

    def mapped(path):
        for k, v in maps:
            if path == k or path.startswith(k.rstrip("/") + "/"):
                return v + path[len(k):]
        return path

    files, prefix, instance = unit_files(unit_dir, unit)
    entries = []
    for f in files:
        with open(f) as fh:
            parse_unit_text(fh.read(), entries)
    spec = {"i": instance, "I": instance, "n": unit, "N": unit.rpartition(".")[0], "p": prefix,
            "H": socket.gethostname(), "%": "%"}
    spec.update(spec_set)

    svc = [(k, v) for s, k, v in entries if s == "Service"]
    env, env_files, creds, state, cache, exec_start, workdir = {}, [], [], [], [], None, None
    for k, v in svc:
        if k == "Environment":
            env.update(env_assignments(expand_specifiers(v, spec)))
        elif k == "EnvironmentFile":
            env_files.append(expand_specifiers(v, spec))
        elif k == "LoadCredential":
            cid, _, path = expand_specifiers(v, spec).partition(":")
            creds.append((cid, path))
        elif k == "StateDirectory":
            state += expand_specifiers(v, spec).split()
        elif k == "CacheDirectory":
            cache += expand_specifiers(v, spec).split()
        elif k == "WorkingDirectory":
            workdir = expand_specifiers(v, spec)
        elif k == "ExecStart":
            exec_start = expand_specifiers(v, spec) if v else None  # "ExecStart=" resets
    if not exec_start:
        die(unit + ": no ExecStart=")
    for ef in env_files:
        optional = ef.startswith("-")
        path = mapped(ef[1:] if optional else ef)
        if not os.path.exists(path):
            if optional:
                continue
            die(unit + ": EnvironmentFile " + ef + " (" + path + ") does not exist")
        env.update(read_env_file(path))
    roots = {"StateDirectory": spec.get("S"), "CacheDirectory": spec.get("C")}
    made = []
    for kind, dirs in (("StateDirectory", state), ("CacheDirectory", cache)):
        for d in dirs:
            if not roots[kind]:
                die(unit + ": " + kind + "= needs --set-spec " + ("S" if kind[0] == "S" else "C"))
            made.append(os.path.join(roots[kind], d))
    if state:
        env["STATE_DIRECTORY"] = ":".join(os.path.join(roots["StateDirectory"], d) for d in state)
    if cache:
        env["CACHE_DIRECTORY"] = ":".join(os.path.join(roots["CacheDirectory"], d) for d in cache)
    if creds:
        if "d" not in spec:
            die(unit + ": LoadCredential= needs --set-spec d=DIR")
        env["CREDENTIALS_DIRECTORY"] = spec["d"]
    cmd = expand_command(exec_start, env)
    for opt in without:
        while opt in cmd:
            j = cmd.index(opt)
            del cmd[j:j + 2]
    if do_print:
        print(json.dumps({"argv": cmd, "env": env, "credentials": creds, "dirs": made,
                          "cwd": workdir}))
        return 0
    for d in made:
        os.makedirs(d, exist_ok=True)
    if creds:
        os.makedirs(spec["d"], exist_ok=True)
        for cid, path in creds:
            dst = os.path.join(spec["d"], cid)
            shutil.copyfile(mapped(path), dst)
            os.chmod(dst, 0o400)
    if workdir:
        os.chdir(workdir)
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    full_env.update(env)
    os.execve(cmd[0], cmd, full_env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
