#!/usr/bin/env python3
"""check_layers.py - the include rules of the source tree, checked (ctest `layers`, label lint).

Every project include names its room ("base/err.h", "nn/gpt.h"); a file in a room may include
only from the rooms listed for it below, so every dependency points down:

    common/base   errors, files, JSONL, CRC-32C, RNG, YAML config    (nothing of ours)
    common/nn     kernels, model, tokenizer, generation, training     base
    common/net    framing, weight sync, blobs, client, secrets        base + the wire schema
    common/align  task, annotations, ranking, reward model, PPO       base, nn
    master/       the rlhf-master daemon: schedules, never does math  base, net; of align
                  only the annotation store, ranking statistics and the task's guideline
                  version (human annotation runs in the master: data and counting, no model)
    master/cli/   the rlhf command                                    all of common/
    worker/       rlhf-worker                                         all of common/
    tests/        anything

and no two modules (a name.c with its name.h) depend on each other, directly or round a longer
cycle. Usage: check_layers.py [SOURCE_DIR]; prints each violation as FILE:LINE and exits 1.
"""
import os
import re
import sys

COMMON = ("base", "nn", "net", "align")
# room -> rooms it may include from (itself always allowed)
ALLOWED = {
    "common/base": set(),
    "common/nn": {"common/base"},
    "common/net": {"common/base", "proto"},
    "common/align": {"common/base", "common/nn"},
    "master": {"common/base", "common/net", "proto"},
    "master/cli": {"common/" + r for r in COMMON} | {"proto"},
    "worker": {"common/" + r for r in COMMON} | {"proto"},
    "tests": {"common/" + r for r in COMMON} | {"proto", "master", "worker", "generated"},
}
# single headers a room may include beyond its rooms (no model math behind them)
EXTRA = {"master": {"align/annot.h", "align/rank.h", "align/task.h"}}
# headers made at build time, by the room that owns them
GENERATED = {"rlhf.pb-c.h": "proto", "rlhf_descriptors.h": "generated"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def room_of(rel):
    d = os.path.dirname(rel)
    return d if d in ALLOWED else None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), ".."))
    files = []
    for d in ALLOWED:
        full = os.path.join(root, d)
        for name in sorted(os.listdir(full)) if os.path.isdir(full) else []:
            if name.endswith((".c", ".h")):
                files.append(os.path.join(d, name))
    known = set(files)
    errors = []
    deps = {}  # module (path without extension) -> {module: (file, line)}
    for rel in files:
        room = room_of(rel)
        mod = rel[:-2]
        deps.setdefault(mod, {})
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            lines = f.readlines()
        for n, text in enumerate(lines, 1):
            m = INCLUDE.match(text)
            if not m:
                continue
            inc = m.group(1)
            where = f"{rel}:{n}"
            if inc in GENERATED:
                target_room, target = GENERATED[inc], None
            elif "/" in inc and inc.split("/")[0] in COMMON:
                target = "common/" + inc
                target_room = os.path.dirname(target)
            else:  # a header of the file's own directory (tests also see master/'s)
                target = os.path.join(os.path.dirname(rel), inc)
                if room == "tests" and target not in known and "master/" + inc in known:
                    target = "master/" + inc
                if room == "tests" and target not in known and "worker/" + inc in known:
                    target = "worker/" + inc
                target_room = os.path.dirname(target)
                if os.path.dirname(inc):
                    errors.append(f'{where}: "{inc}": include common/ headers as "ROOM/name.h"')
                    continue
            if target is not None and target not in known:
                errors.append(f'{where}: "{inc}" is not a header of this project '
                              f"(common/ headers are included as \"ROOM/name.h\")")
                continue
            if (target_room != room and target_room not in ALLOWED[room]
                    and inc not in EXTRA.get(room, ())):
                errors.append(f'{where}: {room}/ may not include "{inc}" from {target_room}/ '
                              f"(allowed: {', '.join(sorted(ALLOWED[room])) or 'nothing'})")
            if target is not None and target[:-2] != mod:
                deps[mod].setdefault(target[:-2], where)
    # cycles between modules: depth-first search, reporting each cycle once
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(deps.get(m, {})):
            if state.get(t) == 1:
                cyc = stack[stack.index(t):] + [t]
                steps = [f"{a} ({deps[a][b]})" for a, b in zip(cyc, cyc[1:])]
                errors.append("include cycle: " + " -> ".join(steps) + f" -> {t}")
            elif t in deps and not state.get(t):
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(deps):
        if not state.get(m):
            visit(m)
    for e in errors:
        print(e)
    print(f"check_layers: {len(files)} files, {sum(len(d) for d in deps.values())} module "
          f"dependencies, {len(errors)} violations")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
