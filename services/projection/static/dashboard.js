// Rapport ops dashboard: polls /dashboard/data and redraws. No dependencies, no CDN.
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
