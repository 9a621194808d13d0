/* dashboard.js - the master's runs and their stages, its workers and their jobs, the live PPO
 * curves of the selected run (drawn here as SVG from the run's metrics lines) and its human
 * annotators (progress, agreement). Reads /status and /api/runs with the master's token every
 * two seconds. */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const el = rlhf.el;
  let tok = rlhf.token("rlhf-master");
  let selected = new URLSearchParams(location.search).get("run") || "";
  const SVG = "http://www.w3.org/2000/svg";

  function fmt(x, d) {
    return x === null || x === undefined || Number.isNaN(x) ? "–" : typeof x === "number" ? x.toFixed(d === undefined ? 3 : d) : String(x);
  }
  function table(t, head, rows) {
    t.textContent = "";
    t.append(el("tr", {}, ...head.map((h) => el("th", {}, h))));
    for (const r of rows) t.append(r);
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  /* one curve: the values of key at each iteration */
  function chart(title, pts) {
    const box = el("div", { class: "curve" }, el("h3", {}, title));
    const W = 320, H = 150, L = 40, B = 18;
    const s = svg("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title,
                           "data-points": String(pts.length),
                           "data-values": JSON.stringify(pts.map((p) => (Number.isFinite(p[1]) ? p[1] : null))) });
    const ys = pts.map((p) => p[1]).filter((y) => Number.isFinite(y));
    if (ys.length) {
      let lo = Math.min(...ys), hi = Math.max(...ys);
      if (hi === lo) { hi += 1; lo -= 1; }
      const n = Math.max(1, pts.length - 1);
      const X = (i) => L + (W - L - 6) * i / n, Y = (y) => 6 + (H - B - 12) * (hi - y) / (hi - lo);
      s.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
      s.append(svg("line", { class: "axis", x1: L, y1: 0, x2: L, y2: H - B }));
      const lab = (x, y, t, anchor) => { const e = svg("text", { x: x, y: y, "text-anchor": anchor || "end" }); e.textContent = t; return e; };
      s.append(lab(L - 3, 12, hi.toPrecision(3)), lab(L - 3, H - B, lo.toPrecision(3)),
               lab(W - 2, H - 4, "iteration " + (pts.length ? pts[pts.length - 1][0] : 0)));
      const d = pts.filter((p) => Number.isFinite(p[1])).map((p, i) => (i ? "L" : "M") + X(pts.indexOf(p)).toFixed(1) + "," + Y(p[1]).toFixed(1)).join(" ");
      s.append(svg("path", { d: d, fill: "none", stroke: "#2458c6", "stroke-width": "2" }));
    }
    box.append(s);
    return box;
  }
  function renderRun(r) {
    $("runbox").hidden = false;
    $("runname").textContent = r.name;
    $("runstate").textContent = r.state + (r.reason ? " - " + r.reason : "") + (r.progress ? " · " + r.progress : "");
    table($("stages"), ["stage", "state", "seconds"], r.stages.map((s) =>
      el("tr", {}, el("td", {}, s.name), el("td", { class: "state-" + s.state }, s.state), el("td", {}, fmt(s.seconds, 1)))));
    const m = r.metrics || [];
    const curves = $("curves");
    curves.textContent = "";
    if (m.length) {
      const series = (f) => m.map((x, i) => [x && x.iteration !== undefined ? x.iteration + 1 : i + 1, x ? f(x) : NaN]);
      curves.append(chart("reward (mean)", series((x) => x.ppo && x.ppo.reward_mean)),
                    chart("score (reward model, mean)", series((x) => x.ppo && x.ppo.score_mean)),
                    chart("KL to the reference (k1)", series((x) => x.ppo && x.ppo.kl_k1)));
      if (m.some((x) => x && x.gold_mean !== undefined))
        curves.append(chart("gold score (mean)", series((x) => x.gold_mean)));
    }
    const a = r.annotation;
    $("annotation").hidden = !a;
    if (a) {
      $("annstate").textContent = a.state + (a.closed ? " - " + a.closed : "");
      $("annsummary").textContent = a.prompts_complete + " of " + a.prompts + " prompts complete (overlap " + a.overlap +
        "), " + a.records + " records; pairwise agreement " + fmt(a.pairwise_agreement) +
        ", mean Kendall's W " + fmt(a.mean_kendall_w) + ", Krippendorff's alpha " + fmt(a.krippendorff_alpha_ordinal) +
        (a.consensus_age_s > 1 ? " (consensus figures of " + a.consensus_records + " records, " + fmt(a.consensus_age_s, 0) + " s ago)" : "");
      table($("annotators"), ["annotator", "done / assigned", "skipped", "s per ranking", "agreement with others", "with consensus (leave-one-out)", "working on"],
        a.annotators.map((x) => el("tr", {}, el("td", {}, x.annotator), el("td", {}, fmt(x.done, 0) + " / " + fmt(x.assigned, 0)),
          el("td", {}, fmt(x.skipped, 0)), el("td", {}, fmt(x.seconds_per_ranking, 1)), el("td", {}, fmt(x.agreement_with_others)),
          el("td", {}, fmt(x.agreement_with_consensus)), el("td", {}, x.working_on || "–"))));
    }
  }
  async function refresh() {
    try {
      const [st, runs] = await Promise.all([rlhf.api(tok, "GET", "/status"), rlhf.api(tok, "GET", "/api/runs")]);
      $("error").hidden = true;
      $("master").textContent = "master " + st.master_id + " · up " + fmt(st.uptime_s, 0) + " s";
      table($("workers"), ["worker", "role", "state", "job", "done"], st.workers.map((w) =>
        el("tr", {}, el("td", {}, w.id), el("td", {}, w.role), el("td", { class: "state-" + w.state }, w.state),
           el("td", { class: "id" }, w.job === null ? "idle" : String(w.job)), el("td", {}, String(w.jobs_done)))));
      if (!selected && runs.runs.length) selected = (runs.runs.find((r) => r.state === "running") || runs.runs[runs.runs.length - 1]).name;
      table($("runs"), ["run", "state", "stage", "progress"], runs.runs.map((r) => {
        const a = el("a", { href: "?run=" + encodeURIComponent(r.name) }, r.name);
        a.addEventListener("click", (e) => { e.preventDefault(); selected = r.name; refresh(); });
        return el("tr", {}, el("td", {}, a), el("td", { class: "state-" + r.state }, r.state), el("td", {}, r.stage), el("td", {}, r.progress));
      }));
      if (selected) renderRun(await rlhf.api(tok, "GET", "/api/runs/" + encodeURIComponent(selected)));
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      $("error").textContent = e.message;
      $("error").hidden = false;
      if (e.status === 401) { $("tokenform").hidden = false; return; }
    }
    setTimeout(refresh, 2000);
  }
  $("tokenform").addEventListener("submit", (e) => {
    e.preventDefault();
    tok = $("tok").value.trim();
    sessionStorage.setItem("rlhf-master", tok);
    $("tokenform").hidden = true;
    refresh();
  });
  if (!tok) $("tokenform").hidden = false; else refresh();
})();
