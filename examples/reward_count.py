#!/usr/bin/env python3
"""reward_count.py - an example reward program (README.md, "Reward programs").

Reads one JSON request per line on stdin:
    {"prompt": TEXT, "completion": TEXT, "reference": ANY, "record": OBJECT}
and writes one JSON response per line on stdout, flushed:
    {"score": NUMBER, "details": ANY}

The score is the number of times the reference answer (a string) occurs in the completion - a
verifiable reward of the simplest kind; tests/test_reward_program.sh trains on it. A request
without a string reference gets {"error": ...}: a per-item error, scored with the fallback.
Replace the body of score() with a math checker, unit tests of generated code, etc.
"""
import json
import sys


def score(req):
    ref = req.get("reference")
    if not isinstance(ref, str) or not ref:
        return {"error": "no string \"reference\" in the prompt's record"}
    n = req["completion"].count(ref)
    return {"score": n, "details": {"reference": ref, "count": n}}


def main():
    for line in sys.stdin:
        try:
            resp = score(json.loads(line))
        except Exception as e:  # one bad request is one item's error, not the end of the program
            resp = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
