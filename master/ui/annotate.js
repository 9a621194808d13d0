/* annotate.js - the annotation page: one prompt at a time, its completions in the order the
 * master chose for this annotator, ranked by keyboard or drag and drop, ties allowed; submit,
 * or skip with a reason. Everything shown is set with textContent: completions are model
 * output and never parsed as HTML. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const tok = rlhf.token("rlhf-annotator");
  let cur = null;      /* the assignment */
  let level = {};      /* completion index -> rank (1 = best), absent = not ranked */
  let view = [];       /* the cards' display order: typing a rank keeps it (the focus stays
                          put), moving or dropping a card sorts the cards by rank */
  let pollTimer = null;
  window.rlhfTimings = []; /* per submission: ms the page and server took, think time excluded */
  let tNext = 0, tShown = 0;

  function showError(msg) {
    $("error").textContent = msg || "";
    $("error").hidden = !msg;
  }
  function progress(p) {
    if (p) $("progress").textContent = "done " + p.done + " of " + p.assigned +
      (p.skipped ? " (" + p.skipped + " skipped)" : "");
  }
  function letter(i) { return String.fromCharCode(65 + (i % 26)) + (i >= 26 ? Math.floor(i / 26) : ""); }

  /* ranks made dense (1, 2, ...) keeping their order */
  function normalize() {
    const vals = [...new Set(Object.values(level))].sort((a, b) => a - b);
    for (const k in level) level[k] = vals.indexOf(level[k]) + 1;
  }
  /* the cards in display order: ranked ones by rank, then the rest in the order shown */
  function ordered() {
    const pos = {};
    cur.shown.forEach((c, i) => { pos[c] = i; });
    return cur.shown.slice().sort((a, b) => {
      const la = level[a] || 1e9, lb = level[b] || 1e9;
      return la !== lb ? la - lb : pos[a] - pos[b];
    });
  }
  function rankingGroups() {
    const groups = {};
    for (const c of cur.shown) {
      if (!level[c]) return null;
      (groups[level[c]] = groups[level[c]] || []).push(c);
    }
    return Object.keys(groups).map(Number).sort((a, b) => a - b).map((l) => groups[l]);
  }
  function render(focus, sort) {
    const list = $("cards");
    if (sort || view.length !== cur.shown.length) view = ordered();
    const order = view;
    list.textContent = "";
    for (const c of order) {
      const comp = cur.completions.find((x) => x.index === c);
      const tied = level[c] && order.some((o) => o !== c && level[o] === level[c]);
      const li = rlhf.el("li", { class: "card" + (level[c] ? " ranked" : "") + (tied ? " tied" : ""),
        tabindex: "0", draggable: "true", "data-index": String(c),
        "aria-label": "completion " + letter(cur.shown.indexOf(c)) +
          (level[c] ? ", rank " + level[c] : ", not ranked") });
      const badge = rlhf.el("span", { class: "badge" }, level[c] ? String(level[c]) : "–");
      const name = rlhf.el("span", { class: "name" }, letter(cur.shown.indexOf(c)));
      const text = rlhf.el("pre", { class: "text" }, comp.text);
      const up = rlhf.el("button", { type: "button", class: "mv", title: "better", tabindex: "-1" }, "▲");
      const tie = rlhf.el("button", { type: "button", class: "mv", title: "tie with the one above", tabindex: "-1" }, "=");
      const down = rlhf.el("button", { type: "button", class: "mv", title: "worse", tabindex: "-1" }, "▼");
      up.addEventListener("click", () => move(c, -1));
      down.addEventListener("click", () => move(c, 1));
      tie.addEventListener("click", () => tieAbove(c));
      li.append(rlhf.el("div", { class: "head" }, badge, name, up, tie, down), text);
      li.addEventListener("keydown", (e) => onKey(e, c));
      li.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", String(c)); });
      li.addEventListener("dragover", (e) => e.preventDefault());
      li.addEventListener("drop", (e) => {
        e.preventDefault();
        const from = Number(e.dataTransfer.getData("text/plain"));
        const r = li.getBoundingClientRect();
        dropOn(from, c, e.clientY > r.top + r.height / 2);
      });
      list.append(li);
    }
    const g = rankingGroups();
    $("order").textContent = g ? "Ranking: " + g.map((grp) => grp.map((c) => letter(cur.shown.indexOf(c))).join(" = ")).join("  >  ")
                               : "Ranked " + Object.keys(level).length + " of " + cur.shown.length + ".";
    if (focus !== undefined) {
      const f = list.querySelector('[data-index="' + focus + '"]');
      if (f) f.focus();
    }
  }
  /* puts completion c, as a rank of its own, before the ranked completion at position p of the
   * others (after them all when p is past the end) */
  function place(c, p) {
    const rest = ordered().filter((x) => x !== c && level[x]);
    const nl = {};
    let r = 0, prev = null;
    rest.forEach((x, i) => {
      if (i === p) { nl[c] = ++r; prev = null; }
      if (level[x] !== prev) r++;
      nl[x] = r;
      prev = level[x];
    });
    if (nl[c] === undefined) nl[c] = r + 1;
    level = nl;
  }
  function move(c, d) {
    const order = ordered().filter((x) => level[x] || x === c);
    let p = order.indexOf(c);
    if (!level[c]) p = order.length - 1;
    place(c, Math.max(0, p + d));
    render(c, true);
  }
  function tieAbove(c) {
    const order = view;
    const p = order.indexOf(c);
    if (p > 0 && level[order[p - 1]]) level[c] = level[order[p - 1]];
    else level[c] = 1;
    normalize();
    render(c, true);
  }
  function dropOn(from, to, tie) {
    if (from === to) return;
    if (tie && level[to]) { level[from] = level[to]; normalize(); render(from, true); return; }
    if (!level[to]) level[to] = Math.max(0, ...Object.values(level)) + 1;
    place(from, ordered().filter((x) => level[x] && x !== from).indexOf(to));
    render(from, true);
  }
  function onKey(e, c) {
    const order = view;
    const p = order.indexOf(c);
    if (e.key >= "1" && e.key <= "9" && !e.altKey && !e.ctrlKey && !e.metaKey) {
      level[c] = Number(e.key);
      /* typed ranks are kept as typed until submission: 1, 2, 2 means a tie for second */
      render(c);
      e.preventDefault();
    } else if (e.key === "0" || e.key === "Backspace" || e.key === "Delete") {
      delete level[c];
      render(c);
      e.preventDefault();
    } else if (e.key === "=") {
      tieAbove(c);
      e.preventDefault();
    } else if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      move(c, e.key === "ArrowUp" ? -1 : 1);
      e.preventDefault();
    } else if (e.key === "ArrowDown" || e.key === "j") {
      const n = $("cards").children[Math.min(p + 1, order.length - 1)];
      if (n) n.focus();
      e.preventDefault();
    } else if (e.key === "ArrowUp" || e.key === "k") {
      const n = $("cards").children[Math.max(p - 1, 0)];
      if (n) n.focus();
      e.preventDefault();
    }
  }

  function showWait(msg) {
    $("task").hidden = true;
    $("wait").hidden = false;
    $("waitmsg").textContent = msg;
    clearTimeout(pollTimer);
    pollTimer = setTimeout(next, 5000);
  }
  async function next() {
    clearTimeout(pollTimer);
    tNext = performance.now();
    let r;
    try {
      r = await rlhf.api(tok, "GET", "/api/annotate/next");
    } catch (e) {
      showError(e.message);
      if (e.status !== 401) pollTimer = setTimeout(next, 5000);
      return;
    }
    showError("");
    progress(r.progress);
    if (!r.assignment) {
      const why = { waiting: "The run's annotation has not started yet; this page checks again by itself.",
                    done: "Nothing more for you now: thank you! This page checks again by itself.",
                    closed: "Annotation is closed for this run. Thank you!" }[r.state] ||
                  "Every prompt left is with another annotator right now; this page checks again by itself.";
      showWait(why);
      if (r.state === "closed") clearTimeout(pollTimer);
      return;
    }
    cur = r.assignment;
    level = {};
    view = [];
    $("wait").hidden = true;
    $("task").hidden = false;
    $("pid").textContent = "(" + cur.prompt_id + ")";
    $("prompt").textContent = cur.prompt;
    $("note").value = "";
    $("confidence").value = "";
    $("skipreason").value = "";
    render();
    tShown = performance.now();
    const first = $("cards").firstElementChild;
    if (first) first.focus();
  }
  async function send(path, body) {
    const t0 = performance.now();
    $("submit").disabled = $("skip").disabled = true;
    try {
      const r = await rlhf.api(tok, "POST", path, body);
      const t1 = performance.now();
      window.rlhfTimings.push({ prompt_id: body.prompt_id, fetch_render_ms: tShown - tNext,
                                submit_ms: t1 - t0, overhead_ms: (tShown - tNext) + (t1 - t0) });
      showError("");
      progress(r.progress);
      await next();
    } catch (e) {
      showError(e.message); /* nothing was stored: fix it and send again */
    } finally {
      $("submit").disabled = $("skip").disabled = false;
    }
  }
  function submit() {
    const groups = rankingGroups();
    if (!groups) {
      showError("Rank every completion first (ties allowed).");
      return;
    }
    const body = { prompt_id: cur.prompt_id, ranking: groups, shown: cur.shown };
    if ($("confidence").value) body.confidence = Number($("confidence").value);
    if ($("note").value.trim()) body.note = $("note").value.trim();
    send("/api/annotate/submit", body);
  }
  function skip() {
    const reason = $("skipreason").value.trim();
    if (!reason) {
      showError("Give a reason to skip.");
      $("skipreason").focus();
      return;
    }
    send("/api/annotate/skip", { prompt_id: cur.prompt_id, reason: reason, shown: cur.shown });
  }

  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("skipreason").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); skip(); } });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && cur && !$("task").hidden) {
      e.preventDefault();
      submit();
    }
  });

  async function start() {
    if (!tok) { $("tokenbox").hidden = false; $("guidebox").hidden = true; return; }
    try {
      const me = await rlhf.api(tok, "GET", "/api/annotate/me");
      $("who").textContent = me.annotator + " · run " + me.run + " · " + me.guideline_version;
      $("guidelines").textContent = me.guidelines;
      progress(me.progress);
    } catch (e) {
      showError(e.message);
      return;
    }
    next();
  }
  /* another link opened in this tab: start again with its token */
  window.addEventListener("hashchange", () => { if (/token=/.test(location.hash)) location.reload(); });
  start();
})();
