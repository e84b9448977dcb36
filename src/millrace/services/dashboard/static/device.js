// millrace dashboard, Device tab (#device/<id>): the device's sensors, their alerts and the promoted model's
// sensor contributions, from /api/devices/<id>. Uses api/esc/fmt/time/dark/CONFIG/$ from app.js.
"use strict";

const device = { id: null };

async function loadDevice(id) {
  device.id = id;
  $("#device-id").value = id;
  let d;
  try {
    d = await api(`/api/devices/${encodeURIComponent(id)}`);
  } catch (e) {
    $("#device-info").textContent = e.message;
    for (const sel of ["#device-sensors tbody", "#device-alerts tbody", "#device-top tbody"]) $(sel).innerHTML = "";
    Plotly.purge("device-contrib");
    return;
  }
  if (device.id !== id) return;  // another device was opened meanwhile
  const open = d.alerts.filter((a) => a.status === "open").length;
  $("#device-info").textContent = `${d.locations.join(", ")} · ${d.sensors.length} sensors · ` +
    `${d.alerts.length} alerts, ${open} open`;
  const share = d.model ? d.model.contributions : {};
  $("#device-sensors tbody").innerHTML = d.sensors.map((s) => `<tr class="${s.is_anomaly ? "anomaly" : ""}" ` +
    `data-sensor-id="${esc(s.sensor_id)}"><td>${esc(s.sensor_id)}</td><td>${esc(s.sensor_type)}</td>` +
    `<td>${esc(s.location)}</td><td class="num">${fmt(s.value)} ${esc(s.unit)}</td><td>${time(s.timestamp)}</td>` +
    `<td class="num">${fmt(s.score)}</td><td>${s.is_anomaly ? esc(s.anomaly_kind || "yes") : ""}</td>` +
    `<td>${esc(s.state)}</td><td class="num share">${share[s.sensor_id] == null ? "–" : fmt(share[s.sensor_id], 3)}` +
    "</td></tr>").join("");
  $("#device-alerts tbody").innerHTML = d.alerts.length ? d.alerts.map((a) =>
    `<tr data-alert-id="${esc(a.alert_id)}"><td>${time(a.opened_at)}</td>` +
    `<td><span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span></td><td>${esc(a.kind)}</td>` +
    `<td>${esc((a.sensor_ids || []).join(", "))}</td><td class="status status-${esc(a.status)}">${esc(a.status)}</td>` +
    `<td class="rec">${esc(a.recommendation ?? "")}</td></tr>`).join("")
    : '<tr><td colspan="6" class="muted">no alerts</td></tr>';
  $("#device-top tbody").innerHTML = Object.entries(d.alert_top_features).map(([name, n]) =>
    `<tr data-feature="${esc(name)}"><td>${esc(name)}</td><td class="num">${n}</td></tr>`).join("");
  $("#device-model").textContent = d.model ? `model ${d.model.version}` : "no model promoted yet";
  const entries = Object.entries(share).filter(([, v]) => v != null).sort((a, b) => a[1] - b[1]);
  if (entries.length) {
    Plotly.react("device-contrib", [{ type: "bar", orientation: "h", x: entries.map((e) => e[1]),
      y: entries.map((e) => e[0]), marker: { color: "#3fcf8e" } }],
    dark({ margin: { l: 180, r: 10, t: 10, b: 40 } }), CONFIG);
  } else {
    Plotly.purge("device-contrib");
    $("#device-contrib").innerHTML = `<p class="muted">${d.model ? "the model ranks none of these sensors"
      : "no model promoted yet"}</p>`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#device-id").addEventListener("change", () => {
    const id = $("#device-id").value.trim();
    if (id) location.hash = `#device/${encodeURIComponent(id)}`;
  });
  let timer = null;
  window.addEventListener("millrace:tab", ({ detail }) => {
    clearInterval(timer);
    if (detail.name !== "device") return;
    const id = detail.arg || device.id;
    if (!id) { $("#device-info").textContent = "open a device from the sensor table or enter its id"; return; }
    loadDevice(id).catch(() => {});
    timer = setInterval(() => loadDevice(id).catch(() => {}), 15000);
  });
});
