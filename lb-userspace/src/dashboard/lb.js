// The L4 node's dashboard: renders /dashboard/state each second (see common.js).
"use strict";

(function () {
  const S = window.Sluice;
  const { el, number, bytes, percent, duration, sparkline, fill, table, badge } = S;
  let previous = null; // the last counters and when they were read, for rates

  function rate(name, value, now) {
    if (!previous || !(name in previous.counts)) return null;
    const dt = (now - previous.at) / 1000;
    return dt > 0 ? Math.max(0, value - previous.counts[name]) / dt : null;
  }

  function summary(st) {
    const items = [
      ["config generation", st.config.generation],
      ["last reload", st.config.last_reload_ok ? "applied" : "refused"],
      ["table generation", st.table_generation],
      ["last disruption", percent(st.last_disruption)],
    ];
    fill("summary", items.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function loadCells(load) {
    if (!load) return ["–", "–", "–", "–"];
    const errors = load.rps > 0 ? load.eps / load.rps : 0;
    return [number(load.rps), percent(errors), `${number(load.p99_ms)} ms`, percent(load.cpu_utilization)];
  }

  function vips(st, history) {
    const sections = st.vips.map((v) => {
      const pps = history.get(`vip/${v.vip}/pps`);
      const now = pps.length ? pps[pps.length - 1] : null;
      const bps = history.get(`vip/${v.vip}/bps`);
      const head = el(
        "h3",
        {},
        v.vip,
        " ",
        el("span", { class: "muted" }, `${number(now)} packets/s, ${bytes(bps.length ? bps[bps.length - 1] : null)}/s `),
        sparkline(pps, `${v.vip} packets per second`)
      );
      const headers = ["backend", "state", "weight (effective / configured)", "packets/s", "bytes/s", "last minutes",
        "requests/s", "errors", "p99", "CPU"];
      const rows = v.backends.map((b) => {
        const series = history.get(`backend/${b.address}/pps`);
        const weight = `${b.weight} / ${b.configured_weight}` +
          (b.load_factor === null || b.load_factor === undefined ? "" : ` (load ×${b.load_factor.toFixed(2)})`);
        const cells = [
          b.address, badge(b.state), weight, number(b.packets_per_second), bytes(b.bytes_per_second) + "/s",
          sparkline(series, `${b.address} packets per second`), ...loadCells(b.load),
        ];
        return el("tr", { "data-backend": b.address, "data-state": b.state },
          cells.map((c) => el("td", {}, c)));
      });
      return el("div", { class: "vip", "data-vip": v.vip }, head,
        el("div", { class: "scroll" }, el("table", {},
          el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, rows))));
    });
    fill("vips", sections.length ? sections : [el("p", { class: "empty" }, "no VIPs configured")]);
  }

  function outcomes(st, now) {
    const rows = st.outcomes.filter(([, n]) => n > 0).map(([name, n]) => {
      const r = rate(`o/${name}`, n, now);
      return [name, number(n), r === null ? "–" : `${number(r)}/s`];
    });
    const flows = st.flow_events.filter(([, n]) => n > 0).map(([name, n]) => {
      const r = rate(`f/${name}`, n, now);
      return [name, number(n), r === null ? "–" : `${number(r)}/s`];
    });
    const drops = st.drop_rates.filter(([, r]) => r > 0);
    fill("outcomes",
      drops.length ? el("p", { class: "error" },
        "dropping: " + drops.map(([k, r]) => `${k} ${number(r)}/s`).join(", ")) : null,
      table("by outcome", ["outcome", "packets", "rate"], rows, "no packets yet"),
      table("flow events", ["event", "count", "rate"], flows, "no flow events yet"));
  }

  function flows(st) {
    const f = st.flow_table;
    if (!f) {
      fill("flows", el("p", { class: "empty" }, "not counted yet (every 10 s)"));
      return;
    }
    fill("flows",
      el("p", {},
        el("meter", { min: 0, max: f.capacity, value: f.entries, "aria-label": "flow table occupancy" }),
        ` ${number(f.entries)} of ${number(f.capacity)} entries (${percent(f.entries / f.capacity)})`),
      el("p", { class: "muted" }, `counted ${duration(f.age_ms)} ago`));
  }

  function node(st) {
    const checks = st.node_checks.map((c) => [c.name, badge(c.ok ? "ok" : "failed"), c.detail]);
    fill("node",
      table(null, ["check", "result", "detail"], checks, "no checks yet"),
      el("p", {}, `config ${st.config.path}, generation ${st.config.generation}: `,
        badge(st.config.last_reload_ok ? "ok" : "error")),
      st.config.last_error ? el("p", { class: "error" }, st.config.last_error) : null);
  }

  function shield(st, state) {
    const s = st.shield;
    const entries = s.entries.map((e) => [
      e.prefix, e.reason, e.note || "", e.remaining_ms === null ? "no expiry" : duration(e.remaining_ms), number(e.drops),
    ]);
    const fl = s.flood;
    const gateways = s.gateways.map((g) => [g.gateway, badge(g.ok ? "ok" : "failed"), g.candidates, g.error || ""]);
    fill("shield",
      table(`${state.shield_entries} of ${s.max_entries} entries` +
        (state.shield_entries > s.entries.length ? ` (the ${s.entries.length} that dropped most shown)` : ""),
        ["prefix", "reason", "note", "expires in", "drops"],
        entries, "no prefixes blocked"),
      el("p", {}, "SYN-flood guard: ",
        fl.enabled ? badge(fl.cpus_flooding > 0 ? "flooding" : "ok") : el("span", { class: "muted" }, "off"),
        fl.enabled ? ` limit ${number(fl.new_flows_per_second)} new flows/s per CPU (an idle flow keeps its entry ${fl.idle_entry_seconds.toFixed(1)} s below it); ${number(fl.inserts_skipped)} inserts skipped` : ""),
      table("candidates pulled from gateways", ["gateway", "last pull", "candidates", "error"], gateways,
        "not pulling from gateways"));
  }

  function bgp(st) {
    const b = st.bgp;
    if (!b.enabled) {
      fill("bgp", el("p", { class: "empty" }, "no [bgp] section: nothing announced"));
      return;
    }
    fill("bgp",
      b.maintenance ? el("p", { class: "error" }, "maintenance: every VIP withdrawn") : null,
      b.error ? el("p", { class: "error" }, b.error) : null,
      table("VIPs", ["address", "state", "why"],
        b.vips.map((v) => [v.address, badge(v.announced ? "announced" : "withdrawn"), v.reason]), "no VIPs"),
      table("sessions", ["peer", "state", "info"],
        b.sessions.map((s) => [s.peer, badge(s.state.toLowerCase()), s.info]), "no sessions"));
  }

  function render(state, history) {
    const st = state.status;
    const now = Date.now();
    summary(st);
    vips(st, history);
    outcomes(st, now);
    flows(st);
    node(st);
    shield(st, state);
    bgp(st);
    const counts = {};
    for (const [k, n] of st.outcomes) counts[`o/${k}`] = n;
    for (const [k, n] of st.flow_events) counts[`f/${k}`] = n;
    previous = { at: now, counts };
  }

  S.poll("/dashboard/state", 1000, render);
})();
