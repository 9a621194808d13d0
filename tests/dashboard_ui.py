#!/usr/bin/env python3
"""dashboard_ui.py - the run dashboard in headless Chromium (Selenium) while a PPO run trains,
driven by test_dashboard_ui.sh: the page, opened once and never reloaded, shows the run with
its stage running and the workers, and its curves gain points as iterations commit; every
point drawn (reward, KL, the gold judge's score) is the run's committed metrics line for that
iteration. Prints `ok`/`FAIL` lines; exits 1 on a failure.

Usage: dashboard_ui.py BASE_URL MASTER_TOKEN METRICS_JSONL [SCREENSHOT]
"""
import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, mtok, metrics = sys.argv[1:4]
shot = sys.argv[4] if len(sys.argv) > 4 else ""
fails = 0


def check(name, cond):
    global fails
    print(("ok   " if cond else "FAIL ") + name, flush=True)
    if not cond:
        fails += 1


o = webdriver.ChromeOptions()
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1280,1250"):
    o.add_argument(a)
o.binary_location = "/usr/bin/chromium"
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def chart(label):
    """The values the chart titled label draws, or None while it is not there. Read in the page
    in one step: the page redraws its charts at every refresh, so an element found in one call
    may be gone by the next."""
    v = d.execute_script(
        "for (const s of document.querySelectorAll('svg.chart'))"
        "  if (s.getAttribute('aria-label') === arguments[0]) return s.getAttribute('data-values');"
        "return null;", label)
    return json.loads(v) if v else None


def wait(cond, t):
    return WebDriverWait(d, t, poll_frequency=0.1).until(lambda _: cond())


def committed():
    with open(metrics) as f:
        return [json.loads(l) for l in f if l.strip()]


try:
    d.get(base + "/dashboard#token=" + mtok)
    wait(lambda: chart("reward (mean)"), 60)
    first = chart("reward (mean)")
    check("the dashboard draws the running run's reward curve", len(first) >= 1)
    check("... the run is shown running, at its ppo stage",
          "running" in d.find_element(By.ID, "runstate").text and
          "ppo" in d.find_element(By.ID, "stages").text)
    check("... the workers are listed with their roles",
          all(r in d.find_element(By.ID, "workers").text for r in ("rollout", "reward", "learner")))
    # the same page, never reloaded: the curve grows as iterations commit
    wait(lambda: len(chart("reward (mean)") or []) >= len(first) + 2, 120)
    grown = chart("reward (mean)")
    kl = chart("KL to the reference (k1)")
    gold = chart("gold score (mean)") or []
    check("the curve gained points without a reload (%d -> %d)" % (len(first), len(grown)),
          len(grown) >= len(first) + 2)
    lines = committed()
    check("every point drawn is a committed iteration", len(grown) <= len(lines))
    check("... its reward and KL are that iteration's metrics",
          all(grown[i] == lines[i]["ppo"]["reward_mean"] and kl[i] == lines[i]["ppo"]["kl_k1"]
              for i in range(len(grown))))
    check("... and its gold score (the run scores with the gold judge)",
          len(gold) >= len(grown) and
          all(gold[i] == lines[i]["gold_mean"] for i in range(len(grown))))
    if shot:
        d.save_screenshot(shot)
finally:
    d.quit()
sys.exit(1 if fails else 0)
