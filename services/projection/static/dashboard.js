// Rapport ops dashboard: polls /dashboard/data and redraws. No CDN: the two libraries it uses
// (uPlot for charts, Cytoscape.js for graphs) are vendored beside it.
// Every value from the server goes in through textContent (industry names are user input).
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "rapport-token";
const fmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

function $(id) { return document.getElementById(id); }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function rows(tbody, items, cells, emptyText) {
  tbody.replaceChildren();
  if (!items.length) {
    const span = tbody.closest("table").tHead.rows[0].cells.length;
    tbody.append(el("tr", {}, el("td", { class: "empty", colspan: span }, emptyText)));
    return;
  }
  for (const item of items) {
    const tr = el("tr");
    for (const [value, numeric] of cells(item)) {
      tr.append(el("td", numeric ? { class: "num" } : {}, value)); // value: text or a node
    }
    tbody.append(tr);
  }
}

function renderIndustries(data) {
  const tbody = $("industries").tBodies[0];
  rows(tbody, data.industries, (i) => [
    [i.industry, false], [fmt.format(i.members), true],
    [fmt.format(i.average_connections), true], [fmt.format(i.median_connections), true],
  ], "no members yet");
  [...tbody.rows].forEach((tr, n) => {
    if (data.industries[n]) tr.dataset.industry = data.industries[n].industry;
  });
  const chart = $("industry-chart");
  chart.replaceChildren();
  const max = Math.max(1, ...data.industries.map((i) => i.average_connections));
  for (const i of data.industries) {
    const width = (100 * i.average_connections / max).toFixed(1) + "%";
    chart.append(el("div", { class: "row" },
      el("span", {}, i.industry),
      el("div", { class: "track" }, el("div", { class: "fill", style: { width } })),
      el("span", { class: "num" }, fmt.format(i.average_connections))));
  }
}

function renderDistribution(data) {
  const box = $("distribution");
  box.replaceChildren();
  const max = Math.max(1, ...data.distribution.map((b) => b.members));
  for (const b of data.distribution) {
    const height = (100 * b.members / max).toFixed(1) + "%";
    box.append(el("div", { class: "col", title: `${b.members} members with ${b.bucket} connections` },
      el("span", { class: "n" }, fmt.format(b.members)),
      el("div", { class: "bar", style: { height } }),
      el("span", { class: "label" }, b.bucket)));
  }
}

function renderPipeline(data) {
  rows($("throughput").tBodies[0], data.throughput,
    (t) => [[t.topic, false], [fmt.format(t.events_per_s), true]], "no topics");
  const byTopic = new Map();
  for (const p of data.lag) {
    if (!byTopic.has(p.topic)) byTopic.set(p.topic, []);
    byTopic.get(p.topic).push(p);
  }
  rows($("lag").tBodies[0], [...byTopic], ([topic, parts]) => {
    const strip = el("div", { class: "parts" });
    for (const p of parts) {
      strip.append(el("span", {
        class: p.lag > 0 ? "part behind" : "part",
        title: `partition ${p.partition}: end ${p.end}, applied ${p.position}, lag ${p.lag}`,
      }, el("span", { class: "p" }, `${p.partition}:`), fmt.format(p.lag)));
    }
    const total = parts.reduce((sum, p) => sum + p.lag, 0);
    return [[topic, false], [fmt.format(total), true], [strip, false]];
  }, "no partitions");
  rows($("dlq").tBodies[0], data.dlq,
    (d) => [[d.topic, false], [fmt.format(d.records), true]], "no dead letters");
  const p = data.projection;
  const rebuild = p.rebuild.state === "running"
    ? `running into v${p.rebuild.version}: ${fmt.format(p.rebuild.applied || 0)} / ${fmt.format(p.rebuild.total || 0)}`
    : p.rebuild.state;
  const facts = $("projection");
  facts.replaceChildren();
  for (const [k, v] of [["read model version", p.version], ["rebuild", rebuild],
                        ["last event", p.last_event_time || "none yet"]]) {
    facts.append(el("dt", {}, k), el("dd", { "data-fact": k }, v));
  }
}


// --- charts over time (uPlot) ---------------------------------------------------------------
const CHARTS = [
  { key: "events_per_s", title: "Events per second by topic", unit: "events/s" },
  { key: "lag", title: "Consumer lag by consumer group", unit: "records" },
  { key: "requests_per_s", title: "HTTP requests per second by service", unit: "req/s" },
  { key: "p99_ms", title: "HTTP p99 latency by service", unit: "ms" },
  { key: "errors_per_s", title: "HTTP 4xx and 5xx by service", unit: "responses/s" },
  { key: "dlq_records", title: "Records in dead-letter topics", unit: "records" },
  { key: "outbox_backlog", title: "Outbox backlog by service", unit: "entries" },
];
const PALETTE = ["#2f6fdb", "#19a974", "#d9480f", "#8e44ad", "#e0a800", "#16a2b8", "#6c757d",
                 "#c2255c", "#5c940d", "#364fc7"];
const plots = new Map(); // chart key -> {plot, names}

function shortName(name) { return name.replace(/^.*?rapport\./, ""); }

function renderCharts(history) {
  const box = $("charts");
  for (const spec of CHARTS) {
    const series = history[spec.key] || {};
    const names = Object.keys(series);
    let entry = plots.get(spec.key);
    let holder = box.querySelector(`[data-chart="${spec.key}"]`);
    if (!holder) {
      holder = el("div", { class: "chart", "data-chart": spec.key },
        el("h3", {}, `${spec.title} (${spec.unit})`), el("div", { class: "plot" }));
      box.append(holder);
    }
    const points = names.reduce((n, name) => n + series[name].filter((v) => v != null).length, 0);
    holder.dataset.points = String(points);
    holder.dataset.series = String(names.length);
    if (!names.length) continue;
    const data = [history.t, ...names.map((n) => series[n])];
    if (!entry || entry.names.join("|") !== names.join("|")) {
      if (entry) entry.plot.destroy();
      const target = holder.querySelector(".plot");
      const opts = {
        width: Math.max(360, target.clientWidth || holder.clientWidth || 420),
        height: 190,
        scales: { x: { time: true } },
        axes: [{}, { label: spec.unit, size: 64,
                     values: (u, vals) => vals.map((v) => fmt.format(v)) }],
        series: [{}, ...names.map((name, i) => ({
          label: shortName(name), stroke: PALETTE[i % PALETTE.length], width: 1.5,
          value: (u, v) => (v == null ? "–" : `${fmt.format(v)} ${spec.unit}`),
        }))],
      };
      entry = { plot: new uPlot(opts, data, target), names };
      plots.set(spec.key, entry);
    } else {
      entry.plot.setData(data);
    }
  }
}

// --- service health -------------------------------------------------------------------------
function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function renderHealth(instances) {
  const tbody = $("health").tBodies[0];
  rows(tbody, instances, (i) => {
    const failing = Object.entries(i.failed || {}).map(([k, v]) => `${k}: ${v}`).join("; ");
    const label = {
      ready: "ready",
      not_ready: `not ready: ${failing}`,
      down: `down (no heartbeat for ${fmt.format(i.seen_ago_s)}s)`,
      stopped: "stopped",
    }[i.state] || i.state;
    const loops = el("span");
    for (const [name, loop] of Object.entries(i.loops || {})) {
      loops.append(el("span", {
        class: loop.failing ? "loop failing" : "loop",
        title: loop.last_error || "no failure",
      }, `${name.replace(`${i.service}-`, "")}${loop.failures ? ` ×${loop.failures}` : ""} `));
    }
    const error = i.last_error
      ? `${new Date(i.last_error_at * 1000).toLocaleTimeString()} ${i.last_error}` : "none";
    return [[i.service, false], [`${i.instance} :${i.port}`, false],
            [el("span", { class: `badge ${i.state}` }, label), false],
            [duration(Date.now() / 1000 - i.started_at), true], [i.version, false],
            [fmt.format(i.metrics.backlog), true], [loops, false], [error, false]];
  }, "no service has reported yet");
  [...tbody.rows].forEach((tr, n) => {
    const i = instances[n];
    if (!i) return;
    tr.dataset.service = i.service;
    tr.dataset.port = String(i.port);
    tr.dataset.state = i.state;
    tr.className = i.state;
  });
}

// --- network explorer (Cytoscape.js) ---------------------------------------------------------
const DEGREE_COLOURS = ["#16202e", "#2f6fdb", "#19a974", "#e0a800"];

function drawGraph(container, nodes, edges, layout) {
  const cy = cytoscape({
    container,
    elements: [
      ...nodes.map((n) => ({ data: { id: n.id, label: n.label, degree: n.degree } })),
      ...edges.map(([a, b], k) => ({ data: { id: `e${k}`, source: a, target: b } })),
    ],
    style: [
      { selector: "node", style: {
        label: "data(label)", "font-size": 10, width: 14, height: 14, color: "#1d2633",
        "background-color": (n) => DEGREE_COLOURS[n.data("degree")] || "#999" } },
      { selector: "edge", style: { width: 1, "line-color": "#c5ccd6" } },
    ],
    layout,
    minZoom: 0.2,
    maxZoom: 1.6, // a graph of three nodes is not drawn with letters an inch high
  });
  container.dataset.nodes = String(nodes.length);
  container.dataset.edges = String(edges.length);
  return cy;
}

function people(list, items, text) {
  list.replaceChildren();
  if (!items.length) { list.append(el("li", { class: "empty" }, "none")); return; }
  for (const item of items) list.append(el("li", {}, text(item)));
}

async function explorerFetch(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(response.status === 403
      ? "the explorer needs the ops or admin token" : message);
  }
  return body;
}

async function explore(a, b) {
  $("explore-error").textContent = "";
  const member = await explorerFetch(`/dashboard/explore/${encodeURIComponent(a)}`);
  const facts = $("explore-member");
  facts.replaceChildren();
  const p = member.profile;
  for (const [k, v] of [["member", `${member.member_id} (${p.name || "?"})`],
                        ["industry", p.industry || "–"], ["active", p.active === "1" ? "yes" : "no"],
                        ["connections", fmt.format(member.summary.connections)],
                        ["engaged", fmt.format(member.summary.engaged_connections)],
                        ["stale", fmt.format(member.stale.length)]]) {
    facts.append(el("dt", {}, k), el("dd", { "data-fact": k }, v));
  }
  people($("explore-engaged"), member.engaged, (i) => `${i.member_id} · score ${fmt.format(i.score)}`);
  people($("explore-stale"), member.stale, (i) => `${i.member_id} · last ${i.last_interaction || "never"}`);
  people($("explore-suggestions"), member.suggestions, (i) =>
    `${i.member_id}${i.name ? ` (${i.name})` : ""} · ${i.mutual_connections} mutual` +
    (i.shared.length ? ` · shared ${i.shared.join(", ")}` : ""));
  const hood = member.neighbourhood;
  $("explore-note").textContent = hood.sampled
    ? `Sampled: ${hood.first_shown} of ${fmt.format(hood.connections)} connections (most engaged first) ` +
      `and ${hood.second_shown} of their connections (a few each, at random).`
    : `All ${hood.connections} connections and ${hood.second_shown} of their connections.`;
  $("explore-result").hidden = false;
  drawGraph($("explore-graph"),
    hood.nodes.map((n) => ({ id: n.id, label: n.name || n.id, degree: n.degree })), hood.edges,
    { name: "concentric", concentric: (n) => 3 - n.data("degree"), levelWidth: () => 1,
      minNodeSpacing: 8, animate: false });
  if (!b) { $("explore-pair").hidden = true; return; }
  const pair = await explorerFetch(
    `/dashboard/explore/${encodeURIComponent(a)}/${encodeURIComponent(b)}`);
  const degree = $("explore-degree");
  degree.replaceChildren();
  degree.append(el("dt", {}, "between"), el("dd", {}, `${a} and ${b}`),
                el("dt", {}, "degree"), el("dd", { "data-fact": "degree" },
                  pair.degree == null ? "not within 3" : String(pair.degree)),
                el("dt", {}, "mutual"), el("dd", { "data-fact": "mutual" }, fmt.format(pair.mutual.total)));
  const name = (m) => (pair.names[m] ? `${m} (${pair.names[m]})` : m);
  people($("explore-mutual"), pair.mutual.items, name);
  const list = $("explore-paths");
  list.replaceChildren();
  for (const path of pair.paths) list.append(el("li", {}, `${path.members.join(" → ")} · score ${fmt.format(path.score)}`));
  if (!pair.paths.length) list.append(el("li", { class: "empty" }, "no path within 3 degrees"));
  $("explore-pair").hidden = false; // drawn into a visible box, or Cytoscape sees no size
  const nodes = new Map();
  const edges = new Set();
  for (const path of pair.paths) {
    path.members.forEach((m, step) => {
      const degreeOfNode = m === b ? 3 : Math.min(step, 2);
      if (!nodes.has(m)) nodes.set(m, { id: m, label: m, degree: step === 0 ? 0 : degreeOfNode });
      if (step) edges.add(`${path.members[step - 1]}|${m}`);
    });
  }
  drawGraph($("explore-paths-graph"), [...nodes.values()],
    [...edges].map((e) => e.split("|")),
    { name: "breadthfirst", directed: true, roots: [a], spacingFactor: 0.9, animate: false });
}

$("explore").addEventListener("submit", (event) => {
  event.preventDefault();
  const a = $("explore-a").value.trim();
  const b = $("explore-b").value.trim();
  explore(a, b).catch((err) => { $("explore-error").textContent = err.message; });
});

function render(data) {
  $("kpi-members").textContent = fmt.format(data.totals.members);
  $("kpi-connections").textContent = fmt.format(data.totals.connections);
  $("kpi-average").textContent = fmt.format(data.totals.average_connections);
  $("kpi-applied").textContent = fmt.format(data.projection.events_applied);
  $("kpi-lag").textContent = fmt.format(data.total_lag);
  $("kpi-lag").classList.toggle("bad", data.total_lag > 1000);
  $("kpi-dlq").textContent = fmt.format(data.dlq_total);
  $("kpi-dlq").classList.toggle("bad", data.dlq_total > 0);
  const refused = Object.values(data.quota_refused || {}).reduce((a, b) => a + b, 0);
  $("kpi-quota").textContent = fmt.format(refused);
  $("kpi-quota").title = Object.entries(data.quota_refused || {})
    .map(([endpoint, n]) => `${endpoint}: ${n}`).join(", ") || "none refused";
  $("kpi-quota").classList.toggle("bad", refused > 0);
  renderIndustries(data);
  renderDistribution(data);
  renderPipeline(data);
  renderHealth(data.instances || []);
  renderCharts(data.history || { t: [] });
}

function showLogin(message) {
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("state").textContent = "signed out";
}

let timer = null;

async function poll() {
  clearTimeout(timer);
  const t = token();
  if (!t) { showLogin(); return; }
  try {
    const response = await fetch("/dashboard/data", { headers: { Authorization: `Bearer ${t}` } });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("That token was not accepted.");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    $("login").hidden = true;
    $("board").hidden = false;
    const state = $("state");
    state.classList.remove("stale");
    state.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (err) {
    const state = $("state");
    state.classList.add("stale");
    state.textContent = `stale · ${err.message}; retrying`;
  }
  timer = setTimeout(poll, POLL_MS);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  poll();
});
window.addEventListener("hashchange", poll);
poll();
