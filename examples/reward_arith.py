#!/usr/bin/env python3
"""reward_arith.py - a verifiable reward for the embedded task's arithmetic prompts.

`rlhf task` writes each arithmetic prompt's answer as its record's "reference" ("12" for
"What is 7 plus 5?"). This program scores a completion 1 when the first number in it is that
answer, else 0 - a checker in the manner of GRPO's math rewards. Prompts without a reference
(the task's naming and reply prompts) score 0.5, a neutral value, with a note in "details".

    rlhf ppo ... --reward-program "python3 /path/to/examples/reward_arith.py" --rm-weight 0

Protocol (README.md, "Reward programs"): one JSON request per line on stdin, one JSON response
per line on stdout, flushed.
"""
import json
import re
import sys

NUMBER = re.compile(r"-?\d+")


def score(req):
    ref = req.get("reference")
    if ref is None:
        return {"score": 0.5, "details": "no reference answer"}
    m = NUMBER.search(req.get("completion", ""))
    got = m.group(0) if m else None
    return {"score": 1.0 if got == str(ref) else 0.0, "details": {"answer": got, "reference": ref}}


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
