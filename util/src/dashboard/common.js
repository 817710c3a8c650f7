// Sluice dashboards: what the load balancer's page and the gateway's page share.
// Plain script, no dependencies, no external assets. Everything shown is written with
// textContent or SVG attributes, never as markup.
"use strict";

window.Sluice = (function () {
  const SVG = "http://www.w3.org/2000/svg";

  // An element with attributes and children (strings become text).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function number(n, digits) {
    if (n === undefined || n === null || !isFinite(n)) return "–";
    const abs = Math.abs(n);
    const units = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (const [size, unit] of units) {
      if (abs >= size) return (n / size).toFixed(abs >= size * 100 ? 0 : 1) + unit;
    }
    return n.toFixed(digits === undefined ? (abs < 10 && n % 1 !== 0 ? 1 : 0) : digits);
  }

  function bytes(n) {
    if (n === undefined || n === null || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return n.toFixed(i === 0 || n >= 100 ? 0 : 1) + " " + units[i];
  }

  function percent(ratio) {
    if (ratio === undefined || ratio === null || !isFinite(ratio)) return "–";
    return (ratio * 100).toFixed(ratio > 0 && ratio < 0.01 ? 2 : 1) + "%";
  }

  function duration(ms) {
    if (ms === undefined || ms === null || !isFinite(ms)) return "–";
    const s = ms / 1000;
    if (s < 1) return Math.round(ms) + " ms";
    if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  // A sparkline of `values` (nulls are gaps) as inline SVG, labelled for screen readers.
  function sparkline(values, label, format) {
    const w = 120, h = 28;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const seen = (values || []).filter((v) => v !== null && isFinite(v));
    const last = seen.length ? seen[seen.length - 1] : null;
    const max = seen.length ? Math.max(...seen) : 0;
    const fmt = format || number;
    svg.setAttribute(
      "aria-label",
      `${label}: ${seen.length ? `now ${fmt(last)}, peak ${fmt(max)} over ${values.length} s` : "no data yet"}`
    );
    if (!seen.length) return svg;
    const top = max > 0 ? max : 1;
    const step = values.length > 1 ? w / (values.length - 1) : w;
    let d = "";
    let pen = false;
    values.forEach((v, i) => {
      if (v === null || !isFinite(v)) {
        pen = false;
        return;
      }
      const x = (i * step).toFixed(1);
      const y = (h - 2 - (v / top) * (h - 4)).toFixed(1);
      d += (pen ? "L" : "M") + x + " " + y;
      pen = true;
    });
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    svg.append(path);
    return svg;
  }

  // The history a page holds: appended from each answer, or replaced after a gap.
  class History {
    constructor(capacity) {
      this.capacity = capacity;
      this.lastSeq = null;
      this.boot = null;
      this.t = [];
      this.series = new Map();
    }
    merge(view) {
      if (!view) return;
      // Another daemon (restarted) numbers its samples afresh: start over.
      if (!view.contiguous || view.boot !== this.boot) {
        this.t = [];
        this.series = new Map();
      }
      const before = this.t.length;
      this.t.push(...view.t);
      for (const [name, values] of this.series) {
        if (!(name in view.series)) values.push(...new Array(view.t.length).fill(null));
      }
      for (const [name, values] of Object.entries(view.series)) {
        const have = this.series.get(name) || new Array(before).fill(null);
        have.push(...values);
        this.series.set(name, have);
      }
      const extra = this.t.length - this.capacity;
      if (extra > 0) {
        this.t.splice(0, extra);
        for (const [name, values] of this.series) {
          values.splice(0, extra);
          // A series gone from the daemon (a backend removed) goes once it has scrolled away.
          if (values.every((v) => v === null)) this.series.delete(name);
        }
      }
      this.lastSeq = view.last_seq;
      this.boot = view.boot;
    }
    get(name) {
      return this.series.get(name) || [];
    }
  }

  // Polls `url`, one request at a time, `everyMs` after the last answer, passing each
  // answer to `render`. The page keeps what it last showed when a poll fails, and says how
  // stale it is; an error while drawing is reported, not taken for a live page.
  function poll(url, everyMs, render) {
    const status = document.getElementById("live");
    const age = document.getElementById("age");
    const history = new History(300);
    let lastOk = null;
    let lastError = null;
    let said = null;
    function showState() {
      const since = lastOk === null ? null : Date.now() - lastOk;
      const renderError = lastError !== null && lastError.startsWith("render");
      const stale = since === null || since > 3 * everyMs;
      document.body.classList.toggle("stale", stale || renderError);
      // The live region changes only with the state, so a screen reader hears each change
      // once; how long it has been stale goes in a separate, silent element.
      const word = lastOk === null ? (lastError ? "no answer yet" : "connecting…")
        : renderError ? "render error"
        : stale ? "stale" : "live";
      if (status && word !== said) {
        status.textContent = word;
        said = word;
      }
      if (age) {
        age.textContent = word === "live" || since === null ? ""
          : `no update for ${duration(since)}${lastError ? ` (${lastError})` : ""}`;
      }
    }
    async function once() {
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), Math.max(everyMs * 2, 2000));
      let state = null;
      try {
        const q = history.lastSeq === null ? "" : `?since=${history.lastSeq}`;
        const r = await fetch(url + q, { cache: "no-store", signal: ctl.signal });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        state = await r.json();
      } catch (e) {
        lastError = e.name === "AbortError" ? "timed out" : e.message;
      } finally {
        clearTimeout(timer);
      }
      if (state !== null) {
        try {
          history.merge(state.history);
          render(state, history);
          lastOk = Date.now();
          lastError = null;
        } catch (e) {
          lastError = `render: ${e.message}`;
          console.error("dashboard render failed", e);
        }
      }
      showState();
      setTimeout(once, everyMs);
    }
    once();
    setInterval(showState, 1000);
  }

  // Replaces the children of the element `id` with `nodes` (nested lists are flattened;
  // null and undefined leave no trace).
  function fill(id, ...nodes) {
    const target = document.getElementById(id);
    if (target) target.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined));
  }

  // A table with a caption, headers and rows of cells (strings or nodes).
  function table(caption, headers, rows, empty) {
    if (!rows.length) return el("p", { class: "empty" }, empty || "none");
    return el(
      "div",
      { class: "scroll" },
      el(
        "table",
        {},
        caption ? el("caption", {}, caption) : null,
        el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
        el(
          "tbody",
          {},
          rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))
        )
      )
    );
  }

  // A state word in a coloured badge (the colour is also in the word).
  function badge(state) {
    return el("span", { class: `badge ${String(state).replace(/[^a-z-]/g, "")}` }, state);
  }

  return { el, number, bytes, percent, duration, sparkline, poll, fill, table, badge };
})();
