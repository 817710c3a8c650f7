// The gateway's dashboard: renders /dashboard/state each second (see common.js).
"use strict";

(function () {
  const S = window.Sluice;
  const { el, number, percent, sparkline, fill, table, badge } = S;

  // The last second's value: null when that second had none (a route with no requests has
  // no error ratio or p99 then, and an older value would pass for a current one).
  function last(values) {
    return values.length ? values[values.length - 1] : null;
  }

  function summary(st, history) {
    const items = [
      ["version", st.version],
      ["state", st.draining ? "draining" : "serving"],
      ["connections", number(st.connections)],
      ["requests/s", number(last(history.get("total/rps")))],
      ["config generation", st.config.generation],
    ];
    fill("summary", items.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function routes(st, history) {
    const rows = st.routes.map((r) => {
      const rps = history.get(`route/${r.route}/rps`);
      const errors = last(history.get(`route/${r.route}/errors`));
      const p99 = last(history.get(`route/${r.route}/p99_ms`));
      return el("tr", { "data-route": r.route }, [
        r.route, number(last(rps)), sparkline(rps, `${r.route} requests per second`),
        percent(errors), p99 === null ? "–" : `${number(p99, 1)} ms`, number(r.requests), number(r.errors),
      ].map((c) => el("td", {}, c)));
    });
    const headers = ["route", "requests/s", "last minutes", "5xx (last second)", "p99", "requests", "5xx"];
    fill("routes", rows.length
      ? el("div", { class: "scroll" }, el("table", {},
          el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, rows)))
      : el("p", { class: "empty" }, "no requests yet"));
  }

  function upstreams(st) {
    const rows = st.upstreams.map((t) => [
      t.upstream, t.target,
      badge(!t.healthy ? "down" : t.ejected ? "ejected" : t.weight === 0 ? "disabled" : "up"),
      number(t.ejections), number(t.in_flight),
      t.latency_ms === null ? "–" : `${number(t.latency_ms, 1)} ms`,
    ]);
    fill("upstreams", table(null, ["upstream", "target", "state", "ejections", "in flight", "latency"], rows,
      "no upstreams"));
  }

  function top(st) {
    const consumers = (st.top.consumers || []).map((c) => [
      c.consumer, number(c.requests), percent(c.error_rate), `${number(c.p99_ms, 1)} ms`,
    ]);
    fill("top", table(null, ["consumer", "requests", "5xx", "p99"], consumers, "no identified consumers yet"));
  }

  function config(st) {
    const c = st.config;
    const l = st.load;
    fill("config",
      el("p", {}, `generation ${c.generation}; last reload `, badge(c.last_reload_ok ? "ok" : "error"),
        ` (${c.reloads_ok} applied, ${c.reloads_failed} refused)`),
      c.last_error ? el("p", { class: "error" }, c.last_error) : null,
      table("load report sent to the L4 agents", ["CPU", "requests/s", "5xx/s", "in flight", "p99"],
        [[percent(l.cpu_utilization), number(l.rps), number(l.eps), number(l.in_flight), `${number(l.p99_ms, 1)} ms`]]));
  }

  S.poll("/dashboard/state", 1000, (st, history) => {
    summary(st, history);
    routes(st, history);
    upstreams(st);
    top(st);
    config(st);
  });
})();
