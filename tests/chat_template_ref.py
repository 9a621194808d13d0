#!/usr/bin/env python3
"""chat_template_ref.py - renders a conversation through a tokenizer_config.json's chat template
with Python's Jinja2 configured as transformers' apply_chat_template configures it (a sandboxed
environment with trim_blocks, lstrip_blocks and loop controls; its tojson, raise_exception and
strftime_now). The reference side of test_tok_hf.sh, beside @huggingface/jinja.

Usage: chat_template_ref.py JOBS
JOBS: lines of TOKENIZER_CONFIG<TAB>MESSAGES<TAB>GEN_PROMPT(0|1)<TAB>OUT. MESSAGES is a JSON
array of messages or an object with "messages" and other variables. OUT receives the rendering,
or "ERROR: " and the message.
"""
import json
import sys
from datetime import datetime

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise RuntimeError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def token_content(t):
    return t.get("content") if isinstance(t, dict) else t


def render(env, config_path, messages_path, gen):
    with open(config_path, encoding="utf-8") as f:
        cfg = json.load(f)
    with open(messages_path, encoding="utf-8") as f:
        variables = json.load(f)
    if isinstance(variables, list):
        variables = {"messages": variables}
    for key in ("bos_token", "eos_token"):
        value = token_content(cfg.get(key))
        if value is not None:
            variables[key] = value
    variables["add_generation_prompt"] = gen == "1"
    return env.from_string(cfg["chat_template"]).render(**variables)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    with open(sys.argv[1], encoding="utf-8") as jobs:
        for line in jobs:
            if not line.strip():
                continue
            config_path, messages_path, gen, out_path = line.rstrip("\n").split("\t")
            try:
                text = render(env, config_path, messages_path, gen)
            except Exception as e:  # the test reports it
                text = "ERROR: %s" % e
            with open(out_path, "w", encoding="utf-8", newline="") as f:
                f.write(text)


if __name__ == "__main__":
    main()
