/* common.js - what the master's pages share: the token (from the link's #token=, kept in this
 * tab's sessionStorage and taken out of the address bar), JSON requests carrying it as a
 * bearer token (never a cookie), and building elements whose text is always set as text. */
"use strict";
const rlhf = (function () {
  function token(key) {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(key, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(key) || "";
  }
  async function api(tok, method, path, body) {
    const opt = { method: method, headers: { "Authorization": "Bearer " + tok },
                  cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      opt.headers["Content-Type"] = "application/json";
      opt.body = JSON.stringify(body);
    }
    const res = await fetch(path, opt);
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const err = new Error(res.status === 401 ? "401: this link's token is not valid"
                            : (data && data.error) || ("HTTP " + res.status));
      err.status = res.status;
      throw err;
    }
    return data;
  }
  /* el("li", {class: "x"}, "text" | node, ...): text children become text nodes */
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    for (const c of kids) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  return { token: token, api: api, el: el };
})();
