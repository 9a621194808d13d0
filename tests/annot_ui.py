#!/usr/bin/env python3
"""annot_ui.py - the annotation page and the dashboard in headless Chromium (Selenium), driven
by test_annot_ui.sh: two annotators rank through the page with the keyboard alone (a tie, a
skip, a confidence and a note), a completion holding <script> shows as text, a wrong token gets
the 401 message, the master is killed between two submissions of one annotator, and the
dashboard shows the run with its annotators. Prints `ok`/`FAIL` lines and, at the end, one JSON
line with the records it submitted and the page's timings.

Usage: annot_ui.py BASE_URL ALICE_TOKEN BOB_TOKEN MASTER_TOKEN KILL_CMD [SCREENSHOT_DIR]
"""
import json
import subprocess
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

base, alice, bob, mtok, kill_cmd = sys.argv[1:6]
shots = sys.argv[6] if len(sys.argv) > 6 else ""
fails = 0
records = []  # what we submitted: {"annotator", "prompt_id", "ranking" (sets), "skip"}


def check(name, cond):
    global fails
    print(("ok   " if cond else "FAIL ") + name, flush=True)
    if not cond:
        fails += 1


def browser(width=1280, height=900):
    o = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}"):
        o.add_argument(a)
    o.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def wait(d, cond, t=20):
    return WebDriverWait(d, t, poll_frequency=0.05).until(lambda _: cond())


def cards(d):
    return d.find_elements(By.CSS_SELECTOR, "#cards li.card")


def prompt_id(d):
    return d.find_element(By.ID, "pid").text.strip("()")


def rank_current(d, who, keys, confidence_down=0, note=""):
    """Types keys[i] on the i-th card (moving with the arrow keys), optionally a confidence and a
    note (by keyboard), submits with Ctrl+Enter; returns the record expected."""
    wait(d, lambda: len(cards(d)) > 0 and d.find_element(By.ID, "task").is_displayed())
    pid = prompt_id(d)
    shown = [int(c.get_attribute("data-index")) for c in cards(d)]
    cards(d)[0].send_keys(keys[0])
    for k in keys[1:]:
        d.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
        d.switch_to.active_element.send_keys(k)
    groups = {}
    for idx, k in zip(shown, keys):
        groups.setdefault(int(k), []).append(idx)
    ranking = [sorted(groups[k]) for k in sorted(groups)]
    rec = {"annotator": who, "prompt_id": pid, "ranking": ranking, "skip": False}
    if confidence_down:
        sel = d.find_element(By.ID, "confidence")
        sel.send_keys(Keys.ARROW_DOWN * confidence_down)
        rec["confidence"] = [None, 0.2, 0.4, 0.6, 0.8, 1][confidence_down]
    if note:
        d.find_element(By.ID, "note").send_keys(note)
        rec["note"] = note
    d.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)
    wait(d, lambda: prompt_id(d) != pid or not d.find_element(By.ID, "task").is_displayed())
    records.append(rec)
    return rec


def skip_current(d, who, reason):
    wait(d, lambda: len(cards(d)) > 0)
    pid = prompt_id(d)
    box = d.find_element(By.ID, "skipreason")
    box.send_keys(reason, Keys.ENTER)
    moved = lambda: prompt_id(d) != pid or not d.find_element(By.ID, "task").is_displayed()
    wait(d, lambda: moved() or d.find_element(By.ID, "error").is_displayed())
    if not moved():  # the POST raced the master's restart: send again, as a person would
        print("(skip sent again: %s)" % d.find_element(By.ID, "error").text, flush=True)
        time.sleep(1)
        box.send_keys(Keys.ENTER)
        wait(d, moved)
    records.append({"annotator": who, "prompt_id": pid, "ranking": [], "skip": True,
                    "note": reason})


timings = []
d = browser()
try:
    # --- a wrong token: the page says 401
    d.get(base + "/annotate#token=" + "f" * 64)
    wait(d, lambda: d.find_element(By.ID, "error").is_displayed())
    check("a wrong token: the page shows 401", "401" in d.find_element(By.ID, "error").text)

    # --- alice: guidelines as text, a ranking with a tie, a skip, the master killed between
    d.get("about:blank")  # (the same page with another fragment would not load again)
    d.get(base + "/annotate#token=" + alice)
    wait(d, lambda: len(cards(d)) > 0)
    check("the token leaves the address bar", "token" not in d.current_url)
    g = d.find_element(By.ID, "guidelines")
    check("the guidelines show as text (<b> not parsed)",
          "<b>not bold</b>" in g.text and not g.find_elements(By.TAG_NAME, "b"))
    check("progress shows done 0 of her share", "done 0 of 2" in d.find_element(By.ID, "progress").text)
    if shots:
        d.save_screenshot(shots + "/annotate-desktop.png")
    rank_current(d, "alice", ["1", "2", "2"], confidence_down=4, note="B and C tie")
    check("alice: progress done 1", "done 1 of" in d.find_element(By.ID, "progress").text)
    # the master killed between two submissions: its supervisor restarts it on the same port
    subprocess.run(kill_cmd, shell=True, check=True)
    skip_current(d, "alice", "cannot judge this one")
    rank_current(d, "alice", ["2", "1", "3"])
    wait(d, lambda: "Nothing more" in d.find_element(By.ID, "waitmsg").text)
    check("alice: nothing more once her three are done", True)
    timings += d.execute_script("return window.rlhfTimings")

    # --- bob, on a phone-sized screen: the XSS completion shows as text
    d.quit()
    d = browser(390, 844)
    d.get(base + "/annotate#token=" + bob)
    saw_script = False
    for i in range(3):
        wait(d, lambda: len(cards(d)) > 0)
        texts = [c.find_element(By.CSS_SELECTOR, "pre.text").text for c in cards(d)]
        if any("<script>alert(1)</script>" in t for t in texts):
            saw_script = True
            check("the <script> completion shows as text, no script element in the page",
                  not d.find_elements(By.CSS_SELECTOR, "#cards script"))
            try:
                d.switch_to.alert
                check("no alert ran", False)
            except NoAlertPresentException:
                check("no alert ran", True)
            if shots:
                d.save_screenshot(shots + "/annotate-phone.png")
        rank_current(d, "bob", [["1", "1", "2"], ["3", "2", "1"], ["1", "2", "3"]][i])
    check("bob saw the <script> completion", saw_script)
    timings += d.execute_script("return window.rlhfTimings")

    # --- the dashboard
    d.quit()
    d = browser()
    d.get(base + "/dashboard#token=" + mtok)
    wait(d, lambda: "alice" in d.find_element(By.ID, "annotators").text, 30)
    check("the dashboard lists the annotators", "bob" in d.find_element(By.ID, "annotators").text)
    check("the dashboard lists the workers", "stage" in d.find_element(By.ID, "workers").text)
    if shots:
        d.save_screenshot(shots + "/dashboard-annotation.png")
finally:
    d.quit()
print(json.dumps({"records": records, "timings": timings}))
sys.exit(1 if fails else 0)
