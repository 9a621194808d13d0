#!/usr/bin/env python3
"""annot_load.py - N annotators working at once against the master's annotation API, as the page
does: each asks for its next assignment, thinks, and submits a ranking; one with nothing to do
asks again after 5 s, as the page polls. Each annotator is a thread with its own keep-alive
connection. Prints one JSON line: requests, submissions, and the latency of each kind (p50,
p99, max, in ms; measured on this side, so they include this process's own scheduling).

Usage: annot_load.py BASE_URL TOKENS_FILE SECONDS THINK_S
"""
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

base, tokfile, seconds, think = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
u = urllib.parse.urlsplit(base)
tokens = [l.strip() for l in open(tokfile) if l.strip()]
lat = {"next": [], "submit": []}
errors = []
lock = threading.Lock()
start = threading.Barrier(len(tokens) + 1)
deadline = 0.0


def annotator(i, tok):
    rnd = random.Random(i)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    h = {"Authorization": "Bearer " + tok, "Content-Type": "application/json",
         "Origin": base}

    def call(kind, method, path, body=None):
        t = time.perf_counter()
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        data = r.read()
        ms = (time.perf_counter() - t) * 1e3
        with lock:
            lat[kind].append(ms)
            if r.status != 200:
                errors.append("%s %d %s" % (path, r.status, data[:200]))
        return json.loads(data) if r.status == 200 else None

    start.wait()
    time.sleep(rnd.random() * think)  # people do not start in the same millisecond
    while time.time() < deadline:
        r = call("next", "GET", "/api/annotate/next")
        a = r and r.get("assignment")
        if not a:
            time.sleep(5)
            continue
        time.sleep(think * (0.5 + rnd.random()))
        if time.time() >= deadline:
            break
        idx = [x["index"] for x in a["completions"]]
        rnd.shuffle(idx)
        call("submit", "POST", "/api/annotate/submit",
             {"prompt_id": a["prompt_id"], "ranking": [[x] for x in idx]})


threads = [threading.Thread(target=annotator, args=(i, t), daemon=True)
           for i, t in enumerate(tokens)]
for t in threads:
    t.start()
deadline = time.time() + seconds
start.wait()
for t in threads:
    t.join(timeout=seconds + 60)


def q(v, p):
    v = sorted(v)
    return round(v[min(len(v) - 1, int(p * len(v)))], 2) if v else None


out = {"annotators": len(tokens), "seconds": seconds, "think_s": think,
       "requests": sum(len(v) for v in lat.values()), "submissions": len(lat["submit"]),
       "errors": len(errors), "first_errors": errors[:3]}
for k, v in lat.items():
    out[k + "_ms"] = {"p50": q(v, .5), "p99": q(v, .99), "max": q(v, 1)}
print(json.dumps(out))
