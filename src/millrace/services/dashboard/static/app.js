// millrace dashboard: REST for history, the /ws channels for live updates. No external resources.
"use strict";

const MAX_POINTS = 300;          // per sensor in the live time series
const MAX_ALERTS = 50;
const MAX_SERIES = 12;           // sensors per type with a history (a chart of more lines is unreadable)
const HIGHLIGHT_MS = 30000;      // how long a new alert stays highlighted
const TYPES = ["temperature", "humidity", "pressure", "vibration", "voltage", "current"];
const HIST_TYPES = TYPES;        // a distribution per sensor type
const SENSOR_PAGE = 50;          // rows per page of the sensor table (searched and paged by the server)
const MAX_WINDOWS = 360;         // windows drawn per key (6 hours of 1-minute windows)
// A fresh layout per call: Plotly writes into layout objects (axis types), so they must not be shared.
const dark = (extra = {}) => ({ paper_bgcolor: "#171d24", plot_bgcolor: "#171d24",
  font: { color: "#e6e9ed", size: 11 }, margin: { l: 50, r: 10, t: 10, b: 40 },
  xaxis: { gridcolor: "#27303a" }, yaxis: { gridcolor: "#27303a" }, ...extra });
const CONFIG = { displayModeBar: false, responsive: true };

const state = {
  sensors: new Map(),   // sensor_id -> latest reading
  series: new Map(),    // sensor_id -> {x: [], y: [], a: []}
  alerts: new Map(),    // alert_id -> alert
  fresh: new Map(),     // alert_id -> time it arrived live
  live: 0,
  lastBatch: null,
  seriesType: null,
  pending: new Map(),   // sensor_id -> earliest event time announced live but not yet fetched
  // the sensor table: the page asked for (q, offset) and the page shown (as the server answered it)
  table: { q: "", offset: 0, seq: 0, shown: { offset: 0, items: [], total: 0 } },
  win: { scope: "type_location", key: "", rows: [] },  // the windowed-metrics chart
  detail: null,         // alert_id shown in the alert detail
  dirty: { series: true, tables: true, alerts: true, windows: true },
};

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
const time = (iso) => iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";

// ---------- API token ----------
// `millrace serve` / `millrace demo` print the dashboard URL with #token=...: keep it in sessionStorage (this
// tab only, gone when it closes) and clear it from the address bar before the tab router reads the hash.
const TOKEN_KEY = "millrace.token";
(() => {
  const m = location.hash.match(/^#token=([^&]+)$/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
const authToken = () => sessionStorage.getItem(TOKEN_KEY);
const authHeaders = () => (authToken() ? { authorization: `Bearer ${authToken()}` } : {});
let asked = false;
// A 401 asks once per page for a token (the login box), then reloads with it.
function askToken() {
  if (asked) return;
  asked = true;
  const token = window.prompt("This millrace API needs a token (`millrace token create`):");
  if (token) { sessionStorage.setItem(TOKEN_KEY, token.trim()); location.reload(); }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options,
    headers: { "content-type": "application/json", ...authHeaders(), ...(options.headers || {}) } });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (response.status === 401) askToken();
  if (!response.ok) { const e = new Error(body?.detail || response.statusText); e.status = response.status; throw e; }
  return body;
}

// ---------- sensors, current metrics, data table ----------
async function loadSensors() {
  await loadTablePage();
  // every sensor, page by page: current metrics and distributions cover the whole fleet
  for (let offset = 0; offset !== null;) {
    const page = await api(`/api/sensors?limit=1000&offset=${offset}`);
    for (const row of page.items) {
      const prev = state.sensors.get(row.sensor_id);
      // a live message newer than the stored reading keeps its values (the store catches up later)
      const live = prev && (prev.timestamp || "") > (row.timestamp || "");
      state.sensors.set(row.sensor_id, live ? { ...row, ...prev, state: row.state } : { ...prev, ...row });
    }
    offset = page.next_offset;
  }
  state.dirty.tables = true;
  const types = new Set([...state.sensors.values()].map((s) => s.sensor_type));
  const select = $("#series-type");
  const known = new Set([...select.options].map((o) => o.value));
  for (const t of TYPES.filter((t) => types.has(t) && !known.has(t))) select.add(new Option(t, t));
  if (!state.seriesType && select.options.length) {  // first sensors seen: load the history of one type
    select.value = types.has("temperature") ? "temperature" : select.options[0].value;
    state.seriesType = select.value;
  }
  updateWindowKeys();
  await loadSeries();  // history for sensors tracked from now on (new ones included)
}

function renderCurrent() {
  const cells = new Map();  // location -> type -> [values]
  const anomalous = new Set();
  const units = {};
  for (const s of state.sensors.values()) {
    if (s.value === null || s.value === undefined) continue;
    const byType = cells.get(s.location) || new Map();
    cells.set(s.location, byType);
    (byType.get(s.sensor_type) || byType.set(s.sensor_type, []).get(s.sensor_type)).push(s.value);
    if (s.is_anomaly) anomalous.add(`${s.location}|${s.sensor_type}`);
    units[s.sensor_type] = s.unit || units[s.sensor_type] || "";
  }
  if (!cells.size) return;
  const types = TYPES.filter((t) => [...cells.values()].some((m) => m.has(t)));
  let html = "<table><thead><tr><th>location</th>" + types.map((t) => `<th>${esc(t)}</th>`).join("") +
    "</tr></thead><tbody>";
  for (const loc of [...cells.keys()].sort()) {
    html += `<tr><td>${esc(loc)}</td>` + types.map((t) => {
      const vals = cells.get(loc).get(t);
      if (!vals) return "<td>–</td>";
      const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
      const cls = anomalous.has(`${loc}|${t}`) ? "num anomaly" : "num";
      return `<td class="${cls}" data-cell="${esc(loc)}|${esc(t)}">${fmt(mean)} ${esc(units[t])}</td>`;
    }).join("") + "</tr>";
  }
  $("#current-metrics").innerHTML = html + "</tbody></table>";
}

// The sensor table shows one server page (search and paging run in the REST API, so a fleet of any size
// stays browsable); live updates of the sensors on that page are merged in.
async function loadTablePage() {
  const t = state.table;
  const seq = ++t.seq;  // only the newest request (search, page, poll) updates the table
  const q = t.q ? `&q=${encodeURIComponent(t.q)}` : "";
  const page = await api(`/api/sensors?limit=${SENSOR_PAGE}&offset=${t.offset}${q}`);
  if (seq !== t.seq) return;
  if (t.offset && !page.items.length && page.total) { t.offset = 0; return loadTablePage(); }
  t.shown = { offset: page.offset, items: page.items, total: page.total, q: t.q };
  state.dirty.tables = true;
}

function renderTable() {
  const t = state.table.shown;
  const rows = t.items.map((r) => {
    const live = state.sensors.get(r.sensor_id);
    return live && (live.timestamp || "") >= (r.timestamp || "") ? { ...r, ...live } : r;
  });
  $("#data-table tbody").innerHTML = rows.map((s) => `<tr class="${s.is_anomaly ? "anomaly" : ""}" ` +
    `data-sensor-id="${esc(s.sensor_id)}"><td>${esc(s.sensor_id)}</td>` +
    `<td><a href="#device/${encodeURIComponent(s.device_id || "")}">${esc(s.device_id)}</a></td>` +
    `<td>${esc(s.sensor_type)}</td>` +
    `<td>${esc(s.location)}</td><td class="num">${fmt(s.value)} ${esc(s.unit)}</td><td>${time(s.timestamp)}</td>` +
    `<td class="num">${fmt(s.score)}</td><td>${s.is_anomaly ? esc(s.anomaly_kind || "yes") : ""}</td>` +
    `<td>${esc(s.state)}</td></tr>`).join("");
  $("#sensor-page-info").textContent = t.total
    ? `${(t.offset + 1).toLocaleString("en")}–${(t.offset + rows.length).toLocaleString("en")} of ` +
      `${t.total.toLocaleString("en")}` : (t.q ? "no sensor matches" : "no sensors yet");
  $("#sensor-prev").disabled = t.offset === 0;
  $("#sensor-next").disabled = t.offset + rows.length >= t.total;
}

function pageSensors(delta) {
  state.table.offset = Math.max(0, state.table.shown.offset + delta * SENSOR_PAGE);
  loadTablePage().then(render).catch(() => {});
}

// ---------- time series and distributions ----------
function push(sensorId, ts, value, anomaly) {
  if (value === null || value === undefined || !ts) return;
  const s = state.series.get(sensorId) || { x: [], y: [], a: [] };
  state.series.set(sensorId, s);
  if (s.x.length && ts <= s.x[s.x.length - 1]) {       // late or repeated: keep the series ordered
    const i = s.x.findIndex((x) => x >= ts);
    if (s.x[i] === ts) { s.y[i] = value; s.a[i] = anomaly; return; }
    s.x.splice(i, 0, ts); s.y.splice(i, 0, value); s.a.splice(i, 0, anomaly);
  } else { s.x.push(ts); s.y.push(value); s.a.push(anomaly); }
  if (s.x.length > MAX_POINTS) { s.x.shift(); s.y.shift(); s.a.shift(); }
  state.dirty.series = true;
}

// The sensors whose history is kept: up to MAX_SERIES of the selected type and of the distribution types.
function trackedIds() {
  const ids = new Set();
  for (const type of new Set([state.seriesType, ...HIST_TYPES])) {
    [...state.sensors.values()].filter((s) => s.sensor_type === type).map((s) => s.sensor_id).sort()
      .slice(0, MAX_SERIES).forEach((id) => ids.add(id));
  }
  return ids;
}

async function loadSeries() {
  const wanted = trackedIds();
  const sensors = [...state.sensors.values()].filter((s) => wanted.has(s.sensor_id) && s.timestamp &&
    !state.series.has(s.sensor_id));
  await Promise.all(sensors.map(async (s) => {
    const start = new Date(Date.parse(s.timestamp) - 5 * 60 * 1000).toISOString();
    const page = await api(`/api/sensors/${encodeURIComponent(s.sensor_id)}/readings?limit=${MAX_POINTS}` +
      `&start=${encodeURIComponent(start)}`);
    for (const r of page.items) push(r.sensor_id, r.timestamp, r.value, !!r.is_anomaly);
  }));
  state.dirty.series = true;
}

function renderSeries() {
  const type = $("#series-type").value;
  const traces = [];
  const ax = [], ay = [], at = [];
  for (const [id, s] of [...state.series.entries()].sort()) {
    if (state.sensors.get(id)?.sensor_type !== type) continue;
    traces.push({ x: s.x, y: s.y, name: id, mode: "lines", type: "scatter", line: { width: 1.5 } });
    s.a.forEach((a, i) => { if (a) { ax.push(s.x[i]); ay.push(s.y[i]); at.push(id); } });
  }
  traces.push({ x: ax, y: ay, text: at, name: "anomaly", mode: "markers", type: "scatter",
    marker: { color: "#ff4d4f", size: 10, symbol: "circle-open", line: { width: 2 } } });
  Plotly.react("ts-chart", traces, dark({ showlegend: true, legend: { orientation: "h", y: -0.2 } }), CONFIG);
  for (const t of HIST_TYPES) {
    if (!document.getElementById(`hist-${t}`)) continue;
    const values = [];
    for (const [id, s] of state.series) if (state.sensors.get(id)?.sensor_type === t) values.push(...s.y);
    for (const s of state.sensors.values()) if (s.sensor_type === t && !state.series.has(s.sensor_id) &&
      s.value !== null && s.value !== undefined) values.push(s.value);
    Plotly.react(`hist-${t}`, [{ x: values, type: "histogram", nbinsx: 30, marker: { color: "#3fa7ff" } }],
      dark({ bargap: 0.05, xaxis: { gridcolor: "#27303a", type: "linear" }, ...empty(values, `no ${t} readings yet`) }),
      CONFIG);
  }
}

// Layout for a chart without data: a note instead of empty axes.
const empty = (values, note) => values.length ? {} : { xaxis: { visible: false }, yaxis: { visible: false },
  annotations: [{ text: note, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
    font: { color: "#8a94a0", size: 13 } }] };

function histPanels() {
  $("#hists").innerHTML = HIST_TYPES.map((t) => `<div class="hist"><h3>${esc(t)}</h3>` +
    `<div id="hist-${esc(t)}" class="chart small" data-testid="hist-${esc(t)}"></div></div>`).join("");
}

// ---------- windowed metrics ----------
function updateWindowKeys() {
  const scope = state.win.scope;
  const keys = [...new Set([...state.sensors.values()].map((s) => scope === "sensor" ? s.sensor_id
    : `${s.sensor_type}|${s.location}`))].sort();
  const select = $("#win-key");
  const have = [...select.options].map((o) => o.value);
  if (have.join("\n") === keys.join("\n")) return;
  const current = select.value;
  select.innerHTML = keys.map((k) => `<option value="${esc(k)}">${esc(k)}</option>`).join("");
  // first time: a key of the type the time series shows (the job writes windows for every key)
  const preferred = keys.find((k) => scope === "type_location" ? k.startsWith(`${state.seriesType}|`)
    : state.sensors.get(k)?.sensor_type === state.seriesType);
  if (keys.includes(current)) select.value = current;
  else if (preferred) select.value = preferred;
  if (select.value !== state.win.key) { state.win.key = select.value; loadWindows().catch(() => {}); }
}

async function loadWindows() {
  const { scope, key } = state.win;
  if (!key) return;
  let rows = [];
  for (let offset = 0; offset !== null;) {  // oldest first; keep the newest MAX_WINDOWS
    const page = await api(`/api/windows?scope=${scope}&key=${encodeURIComponent(key)}&limit=1000&offset=${offset}`);
    rows = rows.concat(page.items).slice(-MAX_WINDOWS);
    offset = page.next_offset;
  }
  if (scope !== state.win.scope || key !== state.win.key) return;  // the selection changed meanwhile
  state.win.rows = rows;
  state.dirty.windows = true;
}

function addWindow(w) {
  if (w.scope !== state.win.scope || w.key !== state.win.key) return;
  const rows = state.win.rows;
  const i = rows.findIndex((r) => r.window_start === w.window_start);
  if (i >= 0) rows[i] = w;  // a window is updated while it is open
  else { rows.push(w); rows.sort((a, b) => a.window_start.localeCompare(b.window_start)); }
  if (rows.length > MAX_WINDOWS) rows.shift();
  state.dirty.windows = true;
}

function renderWindows() {
  const rows = state.win.rows;
  const x = rows.map((r) => r.window_start);
  $("#win-info").textContent = rows.length ? `${rows.length} windows, ` +
    `${time(rows[0].window_start)} – ${time(rows[rows.length - 1].window_end)}` : "no windows for this key yet";
  Plotly.react("win-chart", [
    { x, y: rows.map((r) => r.max), name: "max", mode: "lines", type: "scatter", line: { width: 0.5, color: "#3fa7ff" } },
    { x, y: rows.map((r) => r.min), name: "min", mode: "lines", type: "scatter", fill: "tonexty",
      fillcolor: "rgba(63,167,255,0.15)", line: { width: 0.5, color: "#3fa7ff" } },
    { x, y: rows.map((r) => r.mean), name: "mean", mode: "lines+markers", type: "scatter",
      line: { width: 2, color: "#3fcf8e" } },
    { x, y: rows.map((r) => r.anomaly_count), name: "anomalies", type: "bar", yaxis: "y2",
      marker: { color: "rgba(255,77,79,0.6)" } },
  ], dark({ showlegend: rows.length > 0, legend: { orientation: "h", y: -0.2 }, margin: { l: 50, r: 50, t: 10, b: 40 },
    yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, title: "anomalies",
      visible: rows.length > 0 },
    ...empty(rows, "no windows for this key yet") }), CONFIG);
}

async function fetchPending() {
  const work = [...state.pending.entries()];
  state.pending.clear();
  await Promise.all(work.map(async ([id, since]) => {
    const page = await api(`/api/sensors/${encodeURIComponent(id)}/readings?limit=${MAX_POINTS}` +
      `&start=${encodeURIComponent(since)}`);
    for (const r of page.items) {
      push(r.sensor_id, r.timestamp, r.value, !!r.is_anomaly);
      const cur = state.sensors.get(r.sensor_id);
      if (cur && r.timestamp >= (cur.timestamp || "")) state.sensors.set(r.sensor_id, { ...cur, value: r.value });
    }
  }));
}

// ---------- alerts ----------
async function loadAlerts() {
  const page = await api(`/api/alerts?limit=${MAX_ALERTS}`);
  // merged: a field only the live message carries (e.g. a recommendation) is kept
  for (const a of page.items) state.alerts.set(a.alert_id, { ...state.alerts.get(a.alert_id), ...a });
  state.dirty.alerts = true;
}

const recommendation = (a) => a.recommendation
  ? `<div class="rec" data-testid="recommendation">${esc(a.recommendation)}` +
    `${a.recommendation_id ? ` <small class="muted">(${esc(a.recommendation_id)})</small>` : ""}</div>` : "";

function renderAlerts() {
  const now = Date.now();
  const rows = [...state.alerts.values()]
    .sort((a, b) => (b.updated_at || "").localeCompare(a.updated_at || "")).slice(0, MAX_ALERTS);
  const open = rows.filter((a) => a.status === "open").length;
  $("#alert-counts").textContent = `${rows.length} shown, ${open} open`;
  $("#alerts tbody").innerHTML = rows.map((a) => {
    const fresh = state.fresh.has(a.alert_id) && now - state.fresh.get(a.alert_id) < HIGHLIGHT_MS;
    const canAck = a.status === "open" || a.status === "closed";
    const canResolve = a.status !== "resolved";
    const id = esc(a.alert_id);
    return `<tr data-alert-id="${id}" class="${fresh ? "alert-new" : ""}">` +
      `<td>${time(a.opened_at)}</td><td><span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span></td>` +
      `<td>${esc(a.kind)}</td><td>${esc((a.sensor_ids || []).join(", "))}</td><td>${esc(a.location)}</td>` +
      `<td class="num">${fmt(a.score)}</td><td class="reason">${esc(a.reason)}${recommendation(a)}</td>` +
      `<td class="status status-${esc(a.status)}">${esc(a.status)}</td>` +
      `<td>${canAck ? `<button class="ack" data-alert-id="${id}">Acknowledge</button>` : ""}` +
      `${canResolve ? ` <button class="resolve" data-alert-id="${id}">Resolve</button>` : ""}</td></tr>`;
  }).join("");
}

// One alert with its lifecycle events, under the list (click a row).
async function showAlert(alertId) {
  state.detail = alertId;
  const box = $("#alert-detail");
  let a;
  try { a = await api(`/api/alerts/${encodeURIComponent(alertId)}`); }
  catch (e) { box.hidden = false; box.innerHTML = `<p class="muted">${esc(e.message)}</p>`; return; }
  a = { ...state.alerts.get(alertId), ...a };
  const field = (name, value) => `<dt>${esc(name)}</dt><dd data-field="${esc(name)}">${value}</dd>`;
  box.hidden = false;
  box.innerHTML = `<h3>Alert ${esc(a.alert_id)} <button class="close-detail">close</button></h3><dl>` +
    field("device", `<a href="#device/${encodeURIComponent(a.device_id || "")}">${esc(a.device_id)}</a>`) +
    field("sensors", esc((a.sensor_ids || []).join(", "))) + field("kind", esc(a.kind)) +
    field("severity", esc(a.severity)) + field("score", fmt(a.score)) + field("reason", esc(a.reason)) +
    field("recommendation", a.recommendation ? esc(a.recommendation) : '<span class="muted">none</span>') +
    field("top features", esc((a.top_features || []).join(", "))) + field("status", esc(a.status)) +
    field("opened", time(a.opened_at)) + field("updated", time(a.updated_at)) + "</dl>" +
    "<table class=\"events\"><thead><tr><th>at</th><th>status</th><th>by</th><th>note</th></tr></thead><tbody>" +
    (a.events || []).map((e) => `<tr><td>${time(e.at)}</td><td>${esc(e.status)}</td><td>${esc(e.by)}</td>` +
      `<td>${esc(e.note)}</td></tr>`).join("") + "</tbody></table>";
}

async function transition(alertId, action, button) {
  button.disabled = true;
  try {
    const updated = await api(`/api/alerts/${encodeURIComponent(alertId)}/${action}`, {
      method: "POST", body: JSON.stringify({ by: $("#operator").value.trim() || "operator", note: "dashboard" }),
    });
    state.alerts.set(alertId, { ...state.alerts.get(alertId), ...updated });
    state.fresh.delete(alertId);
    if (state.detail === alertId) showAlert(alertId).catch(() => {});
  } catch (e) {
    button.disabled = false;
    button.title = e.message;
    if (e.status === 404) state.alerts.delete(alertId);  // not stored yet or expired
  }
  state.dirty.alerts = true;
  render();
}

// ---------- quality, importance, Kafka ----------
async function loadQuality() {
  const { totals } = await api("/api/quality");
  const names = Object.keys(totals).sort();
  let html = names.length ? '<div class="quality-grid">' + names.map((n) =>
    `<div class="counter" data-counter="${esc(n)}"><b>${totals[n].toLocaleString()}</b>${esc(n)}</div>`).join("") +
    "</div>" : '<p class="muted">no counters yet</p>';
  const last = state.lastBatch;
  if (last) {
    const counters = Object.entries(last.counters || {}).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`);
    html += `<p class="muted">last micro-batch ${esc(last.batch_id)}: ${esc(counters.join(", ") || "empty")}</p>`;
  }
  $("#quality").innerHTML = html;
}

async function loadImportance() {
  try {
    const imp = await api("/api/model/importance");
    const entries = Object.entries(imp.sensors || {}).slice(0, 20).reverse();
    $("#model-version").textContent = imp.version ? `model ${imp.version}` : "";
    Plotly.react("importance", [{ type: "bar", orientation: "h", x: entries.map((e) => e[1]),
      y: entries.map((e) => e[0]), marker: { color: "#3fcf8e" } }], dark({ margin: { l: 160, r: 10, t: 10, b: 40 } }),
      CONFIG);
  } catch (e) {
    $("#importance").innerHTML = `<p class="muted">${e.status === 404 ? "no model promoted yet" : esc(e.message)}</p>`;
  }
}

async function loadTopics() {
  try {
    const { topics } = await api("/api/kafka/topics");
    $("#kafka-topics tbody").innerHTML = topics.map((t) => `<tr><td>${esc(t.name)}</td>` +
      `<td class="num">${t.partition_count}</td><td class="num">${t.replication_factor}</td>` +
      `<td class="num">${(t.messages ?? 0).toLocaleString()}</td>` +
      `<td class="num">${t.size_bytes == null ? "–" : (t.size_bytes / 1048576).toFixed(1) + " MiB"}</td></tr>`)
      .join("");
  } catch (e) {
    $("#kafka-topics tbody").innerHTML = `<tr><td colspan="5" class="muted">${esc(e.message)}</td></tr>`;
  }
}

// ---------- live channels ----------
function onMessage(msg) {
  if (!msg.channel) return;
  state.live += 1;
  const d = msg.data;
  if (msg.channel === "sensors") {
    const prev = state.sensors.get(d.sensor_id) || { sensor_id: d.sensor_id };
    if (!prev.timestamp || d.timestamp >= prev.timestamp) {
      // without a value, take only the verdict; value and time come with the next /api/sensors refresh
      const { score, is_anomaly, anomaly_kind } = d;
      state.sensors.set(d.sensor_id, d.value === undefined ? { ...prev, score, is_anomaly, anomaly_kind }
        : { ...prev, ...d });
    }
    if (d.value !== undefined) push(d.sensor_id, d.timestamp, d.value, !!d.is_anomaly);
    else if (state.series.has(d.sensor_id)) {
      // predictions carry scores, not values: fetch the stored readings of this sensor since then
      const since = state.pending.get(d.sensor_id);
      if (!since || d.timestamp < since) state.pending.set(d.sensor_id, d.timestamp);
    }
    state.dirty.tables = true;
  } else if (msg.channel === "alerts") {
    const known = state.alerts.get(d.alert_id);
    // operator lifecycle wins over the job's later updates, as in the store
    const status = known && ["acknowledged", "resolved"].includes(known.status) ? known.status : d.status;
    if (!known) state.fresh.set(d.alert_id, Date.now());
    state.alerts.set(d.alert_id, { ...known, ...d, status });
    state.dirty.alerts = true;
  } else if (msg.channel === "quality") {
    state.lastBatch = d;
    scheduleQuality();
  } else if (msg.channel === "windows") {
    addWindow(d);
  }
}

let qualityTimer = null;
function scheduleQuality() {
  if (qualityTimer) return;
  qualityTimer = setTimeout(() => { qualityTimer = null; loadQuality().catch(() => {}); }, 1000);
}

function connect(delay = 1000) {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => {
    // Browsers cannot set headers on a WebSocket: the token goes in the first message instead.
    if (authToken()) ws.send(JSON.stringify({ type: "auth", token: authToken() }));
    ws.send(JSON.stringify({ subscribe: ["sensors", "alerts", "quality", "windows"] }));
    delay = 1000;
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "subscribed") { const s = $("#ws-status"); s.textContent = "live"; s.className = "pill live"; }
    else onMessage(msg);
  };
  ws.onclose = () => {
    const s = $("#ws-status"); s.textContent = "offline"; s.className = "pill offline";
    setTimeout(() => connect(Math.min(delay * 2, 15000)), delay);
  };
}

// ---------- render loop ----------
function render() {
  if (state.dirty.series) { state.dirty.series = false; renderSeries(); }
  if (state.dirty.tables) { state.dirty.tables = false; renderCurrent(); renderTable(); }
  if (state.dirty.alerts) { state.dirty.alerts = false; renderAlerts(); }
  if (state.dirty.windows) { state.dirty.windows = false; renderWindows(); }
  $("#live-counts").textContent = `${state.live.toLocaleString()} live messages`;
}

// Run fn now and again ms after each run ends: a slow backend is never asked again before it has answered.
function every(ms, fn) {
  const run = () => fn().catch(() => {}).finally(() => setTimeout(run, ms));
  run();
}

// ---------- tabs ----------
// Each tab is a <main id="tab-NAME" class="tab"> with a link href="#NAME" in nav#tabs; the hash may carry an
// argument after a slash (#device/dev-0001). Showing a tab fires "millrace:tab" with {name, arg}.
function showTab() {
  const [raw, ...rest] = location.hash.replace(/^#/, "").split("/");
  const name = raw && document.getElementById(`tab-${raw}`) ? raw : "overview";
  for (const el of document.querySelectorAll("main.tab")) el.hidden = el.id !== `tab-${name}`;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === name);
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  window.dispatchEvent(new CustomEvent("millrace:tab", { detail: { name, arg } }));
  // charts drawn while hidden have no size: let Plotly measure again
  for (const el of document.querySelectorAll(`#tab-${name} .js-plotly-plot`)) Plotly.Plots.resize(el);
}
window.addEventListener("hashchange", showTab);

document.addEventListener("DOMContentLoaded", () => {
  histPanels();
  setTimeout(showTab);  // after every script's DOMContentLoaded handler has subscribed to "millrace:tab"
  $("#win-scope").addEventListener("change", () => {
    state.win = { scope: $("#win-scope").value, key: "", rows: [] };
    updateWindowKeys();
    state.dirty.windows = true;
  });
  $("#win-key").addEventListener("change", () => {
    state.win = { ...state.win, key: $("#win-key").value, rows: [] };
    loadWindows().catch(() => {});
    state.dirty.windows = true;
  });
  let searchTimer = null;
  $("#sensor-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.table.q = $("#sensor-search").value.trim();
      state.table.offset = 0;
      loadTablePage().then(render).catch(() => {});
    }, 250);
  });
  $("#sensor-prev").addEventListener("click", () => pageSensors(-1));
  $("#sensor-next").addEventListener("click", () => pageSensors(1));
  $("#series-type").addEventListener("change", () => {
    state.seriesType = $("#series-type").value;
    loadSeries().catch(() => {});
    state.dirty.series = true;
  });
  $("#alerts").addEventListener("click", (event) => {
    const button = event.target.closest("button.ack, button.resolve");
    if (button) { transition(button.dataset.alertId, button.matches(".ack") ? "acknowledge" : "resolve", button); return; }
    const row = event.target.closest("tr[data-alert-id]");
    if (row && !event.target.closest("a")) showAlert(row.dataset.alertId).catch(() => {});
  });
  $("#alert-detail").addEventListener("click", (event) => {
    if (event.target.closest("button.close-detail")) { $("#alert-detail").hidden = true; state.detail = null; }
  });
  every(3000, loadSensors);
  every(15000, loadAlerts);
  every(10000, loadQuality);
  every(60000, loadImportance);
  every(15000, loadTopics);
  connect();
  setInterval(() => fetchPending().catch(() => {}), 1500);
  setInterval(() => {
    if ([...state.fresh.values()].some((t) => Date.now() - t >= HIGHLIGHT_MS)) {
      for (const [id, t] of state.fresh) if (Date.now() - t >= HIGHLIGHT_MS) state.fresh.delete(id);
      state.dirty.alerts = true;
    }
    render();
  }, 500);
});
