// millrace dashboard, Monitoring tab: Prometheus' view of the pipeline through /api/monitoring/panels
// (throughput, lag, batch duration, dead letters, broker health, firing alerts) and the infrastructure alerts
// Alertmanager delivered into millrace's alert list. Uses api/esc/$/dark/CONFIG/time from app.js.
"use strict";

const MON_RANGE_S = 900;        // the charts show the last 15 minutes
const MON_POLL_MS = 10000;
const MON_CHARTS = ["throughput", "lag", "batch_duration", "dead_letters"];
const mon = { timer: null, seq: 0 };

function monNotice(text) {
  const box = $("#mon-notice");
  box.hidden = !text;
  box.textContent = text || "";
}

function monChart(panel) {
  const traces = panel.series.map((s) => ({
    x: s.points.map((p) => new Date(p[0] * 1000)), y: s.points.map((p) => p[1]),
    name: s.label, type: "scatter", mode: "lines",
  }));
  const layout = dark({ showlegend: true, legend: { orientation: "h", y: -0.25 },
    yaxis: { gridcolor: "#27303a", title: { text: panel.unit }, rangemode: "tozero" } });
  if (!traces.length) layout.annotations = [{ text: "no data yet", showarrow: false, xref: "paper", yref: "paper",
    x: 0.5, y: 0.5, font: { color: "#8a94a0" } }];
  Plotly.react(`mon-${panel.id}`, traces, layout, CONFIG);
  $(`#mon-${panel.id}`).dataset.series = String(panel.series.length);
}

function monBrokers(panel) {
  const rows = panel.series.map((s) => {
    const up = s.points.length ? s.points[s.points.length - 1][1] : null;
    return `<tr data-instance="${esc(s.metric.instance)}" class="${up === 1 ? "" : "anomaly"}">` +
      `<td>${esc(s.metric.job)}</td><td>${esc(s.metric.instance)}</td><td>${up === 1 ? "up" : "down"}</td></tr>`;
  });
  $("#mon-brokers tbody").innerHTML = rows.join("") ||
    '<tr><td colspan="3" class="muted">no broker serves JMX metrics (start the stack with --with monitoring)</td></tr>';
}

function monFiring(alerts) {
  $("#mon-firing tbody").innerHTML = alerts.map((a) => `<tr data-alertname="${esc(a.alertname)}" ` +
    `class="${a.state === "firing" ? "anomaly" : ""}"><td>${esc(a.alertname)}</td><td>${esc(a.state)}</td>` +
    `<td><span class="sev sev-${esc(a.severity)}">${esc(a.severity ?? "–")}</span></td>` +
    `<td>${esc(a.instance ?? "–")}</td><td>${time(a.active_at)}</td><td class="reason">${esc(a.summary)}</td></tr>`)
    .join("") || '<tr><td colspan="6" class="muted">no alert pending or firing</td></tr>';
}

async function monInfra() {
  try {
    const { items } = await api("/api/alerts?kind=infrastructure&limit=50");
    $("#mon-infra tbody").innerHTML = items.map((a) => {
      const [name, ...rest] = (a.reason || "").split(": ");
      return `<tr data-alert-id="${esc(a.alert_id)}" class="status-${esc(a.status)}"><td>${time(a.opened_at)}</td>` +
        `<td>${esc(name)}</td><td><span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span></td>` +
        `<td>${esc(a.device_id || "–")}</td><td class="reason">${esc(rest.join(": "))}</td>` +
        `<td>${esc(a.status)}</td><td>${time(a.closed_at)}</td></tr>`;
    }).join("") || '<tr><td colspan="7" class="muted">Alertmanager has delivered no alert</td></tr>';
  } catch (e) {
    $("#mon-infra tbody").innerHTML = `<tr><td colspan="7" class="muted">${esc(e.message)}</td></tr>`;
  }
}

async function loadMonitoring() {
  const seq = ++mon.seq;
  monInfra();
  let body;
  try {
    body = await api(`/api/monitoring/panels?range=${MON_RANGE_S}`);
  } catch (e) {
    if (seq !== mon.seq) return;
    monNotice(e.status === 503 ? `Monitoring is not running: ${e.message}` : e.message);
    $("#mon-info").textContent = "";
    return;
  }
  if (seq !== mon.seq) return;
  monNotice("");
  $("#mon-info").textContent = `Prometheus ${body.prometheus}, last ${body.range / 60} min, step ${body.step} s`;
  for (const panel of body.panels) {
    if (MON_CHARTS.includes(panel.id)) monChart(panel);
    if (panel.id === "brokers") monBrokers(panel);
  }
  monFiring(body.alerts);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#mon-refresh").addEventListener("click", () => loadMonitoring());
  // Prometheus is polled only while the tab is shown
  window.addEventListener("millrace:tab", ({ detail }) => {
    clearInterval(mon.timer);
    if (detail.name !== "monitoring") return;
    loadMonitoring();
    mon.timer = setInterval(loadMonitoring, MON_POLL_MS);
  });
});
