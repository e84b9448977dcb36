// millrace dashboard, Kafka tab: brokers, topics (partitions, ISR, offsets, configs), consumer groups with lag
// per partition, a message browser and topic creation — over /api/kafka. Uses api/esc/$ from app.js.
"use strict";

const STREAM_GROUP = "millrace-iot-process";  // the group the stream job commits its progress under
const kafka = { topics: [], topic: null, group: null, loaded: false };

const bytes = (n) => n == null ? "–" : n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB`
  : `${(n / 1048576).toFixed(1)} MiB`;
const num = (n) => n == null ? "–" : Number(n).toLocaleString("en");
const failed = (sel, cols, e) => { $(sel).innerHTML = `<tr><td colspan="${cols}" class="muted">${esc(e.message)}</td></tr>`; };

async function loadBrokers() {
  try {
    const info = await api("/api/kafka/brokers");
    $("#k-cluster").textContent = `cluster ${info.cluster_id}, controller ${info.controller_id ?? "–"}`;
    $("#k-brokers tbody").innerHTML = info.brokers.map((b) => `<tr data-broker="${b.id}"><td class="num">${b.id}</td>` +
      `<td>${esc(b.host)}</td><td class="num">${b.port}</td><td>${esc(b.rack ?? "–")}</td>` +
      `<td>${b.controller ? "yes" : ""}</td><td class="num">${bytes(b.log_size_bytes)}</td></tr>`).join("");
  } catch (e) { failed("#k-brokers tbody", 6, e); }
}

async function loadKafkaTopics() {
  try {
    const { topics } = await api(`/api/kafka/topics?internal=${$("#k-internal").checked}`);
    kafka.topics = topics;
    $("#k-topics tbody").innerHTML = topics.map((t) => `<tr data-topic="${esc(t.name)}" class="clickable">` +
      `<td><a href="#kafka" data-topic="${esc(t.name)}">${esc(t.name)}</a></td>` +
      `<td class="num">${t.partition_count}</td><td class="num">${t.replication_factor}</td>` +
      `<td class="num ${t.under_replicated ? "anomaly" : ""}">${t.under_replicated}</td>` +
      `<td class="num">${num(t.messages)}</td><td class="num">${bytes(t.size_bytes)}</td></tr>`).join("");
    const select = $("#k-msg-topic");
    const current = select.value;
    select.innerHTML = topics.map((t) => `<option value="${esc(t.name)}">${esc(t.name)}</option>`).join("");
    if (topics.some((t) => t.name === current)) select.value = current;
    msgPartitions();
  } catch (e) { failed("#k-topics tbody", 6, e); }
}

function msgPartitions() {
  const t = kafka.topics.find((x) => x.name === $("#k-msg-topic").value);
  const select = $("#k-msg-partition");
  const current = select.value;
  select.innerHTML = '<option value="">all</option>' + (t ? t.partitions.map((p) =>
    `<option value="${p.partition}">${p.partition}</option>`).join("") : "");
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

async function showTopic(name) {
  kafka.topic = name;
  const box = $("#k-topic");
  box.hidden = false;
  $("#k-topic-name").textContent = name;
  try {
    const t = await api(`/api/kafka/topics/${encodeURIComponent(name)}`);
    $("#k-partitions tbody").innerHTML = t.partitions.map((p) => `<tr data-partition="${p.partition}">` +
      `<td class="num">${p.partition}</td><td class="num">${p.leader}</td><td>${p.replicas.join(", ")}</td>` +
      `<td class="${p.isr.length < p.replicas.length ? "anomaly" : ""}">${p.isr.join(", ")}</td>` +
      `<td class="num">${num(p.low)}</td><td class="num">${num(p.high)}</td><td class="num">${num(p.messages)}</td>` +
      `<td class="num">${bytes(p.size_bytes)}</td></tr>`).join("");
    const configs = Object.entries(t.configs || {}).sort(([a], [b]) => a.localeCompare(b));
    $("#k-configs tbody").innerHTML = configs.map(([k, v]) =>
      `<tr data-config="${esc(k)}"><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("");
  } catch (e) { failed("#k-partitions tbody", 8, e); }
}

async function loadGroups() {
  try {
    const { groups } = await api("/api/kafka/groups");
    $("#k-groups tbody").innerHTML = groups.map((g) => {
      const topics = [...new Set((g.offsets || []).map((o) => o.topic))].sort();
      const job = g.group_id === STREAM_GROUP ? ' <span class="pill live">stream job</span>' : "";
      return `<tr data-group="${esc(g.group_id)}"><td><a href="#kafka" data-group="${esc(g.group_id)}">` +
        `${esc(g.group_id)}</a>${job}</td><td>${esc(g.state ?? "–")}</td>` +
        `<td class="num">${(g.members || []).length}</td><td>${esc(topics.join(", "))}</td>` +
        `<td class="num">${num(g.lag)}</td></tr>`;
    }).join("");
    if (kafka.group) showGroup(kafka.group).catch(() => {});
  } catch (e) { failed("#k-groups tbody", 5, e); }
}

async function showGroup(id) {
  kafka.group = id;
  $("#k-group").hidden = false;
  $("#k-group-name").textContent = id;
  try {
    const g = await api(`/api/kafka/groups/${encodeURIComponent(id)}`);
    $("#k-group-state").textContent = `${g.state}, total lag ${num(g.lag)}`;
    $("#k-members tbody").innerHTML = g.members.length ? g.members.map((m) => `<tr><td>${esc(m.member_id)}</td>` +
      `<td>${esc(m.client_id)}</td><td>${esc(m.host)}</td><td>${esc(m.assignment.join(", "))}</td></tr>`).join("")
      : '<tr><td colspan="4" class="muted">no active members</td></tr>';
    $("#k-offsets tbody").innerHTML = g.offsets.map((o) =>
      `<tr data-tp="${esc(o.topic)}[${o.partition}]"><td>${esc(o.topic)}</td><td class="num">${o.partition}</td>` +
      `<td class="num">${num(o.committed)}</td><td class="num">${num(o.high)}</td>` +
      `<td class="num lag">${num(o.lag)}</td></tr>`).join("");
  } catch (e) {
    if (e.status === 404) { kafka.group = null; $("#k-group").hidden = true; return; }
    failed("#k-offsets tbody", 5, e);
  }
}

function messageCard(m) {
  const value = m.format === "json" ? JSON.stringify(m.value, null, 2) : String(m.value ?? "null");
  const headers = Object.entries(m.headers || {});
  return `<div class="message" data-partition="${m.partition}" data-offset="${m.offset}">` +
    `<div class="meta"><b>partition ${m.partition} · offset ${m.offset}</b> ` +
    `<span>${m.timestamp ? esc(m.timestamp.replace("T", " ")) : "–"}</span> ` +
    `<span>key <code class="key">${esc(m.key ?? "null")}</code></span> <span class="muted">${esc(m.format)}, ` +
    `${num(m.size)} B</span></div>` +
    (headers.length ? `<table class="headers"><tbody>${headers.map(([k, v]) =>
      `<tr data-header="${esc(k)}"><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("")}</tbody></table>` : "") +
    `<pre class="value ${esc(m.format)}">${esc(value)}</pre></div>`;
}

async function browse() {
  const topic = $("#k-msg-topic").value;
  if (!topic) return;
  const params = new URLSearchParams({ limit: $("#k-msg-limit").value || "20" });
  const partition = $("#k-msg-partition").value;
  if (partition !== "") params.set("partition", partition);
  const mode = $("#k-msg-mode").value;
  if (mode === "offset") params.set("offset", $("#k-msg-offset").value || "0");
  if (mode === "timestamp") params.set("timestamp", $("#k-msg-time").value.trim());
  const key = $("#k-msg-key").value;
  if (key) params.set("key", key);
  $("#k-msg-info").textContent = "reading…";
  try {
    const body = await api(`/api/kafka/topics/${encodeURIComponent(topic)}/messages?${params}`);
    $("#k-messages").innerHTML = body.messages.map(messageCard).join("");
    $("#k-msg-info").textContent = `${body.messages.length} messages (${num(body.scanned)} read` +
      `${body.complete ? "" : ", stopped at the deadline"})`;
  } catch (e) {
    $("#k-messages").innerHTML = "";
    $("#k-msg-info").textContent = e.message;
  }
}

async function createTopic() {
  const configs = {};
  for (const part of $("#k-new-configs").value.split(/[,\n]/).map((p) => p.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i < 1) { $("#k-create-result").textContent = `config "${part}" is not name=value`; return; }
    configs[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  const body = { name: $("#k-new-name").value.trim(), partitions: Number($("#k-new-partitions").value),
    replication_factor: Number($("#k-new-rf").value), configs };
  const out = $("#k-create-result");
  out.className = "";
  out.textContent = "creating…";
  try {
    const t = await api("/api/kafka/topics", { method: "POST", body: JSON.stringify(body) });
    out.textContent = `created ${t.name}: ${t.partition_count} partitions, RF ${t.replication_factor}`;
    await loadKafkaTopics();
    showTopic(t.name).catch(() => {});
  } catch (e) {
    out.className = "error";
    out.textContent = e.message;
  }
}

function loadKafka() {
  return Promise.all([loadBrokers(), loadKafkaTopics(), loadGroups()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#k-topics").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-topic]");
    if (row) { event.preventDefault(); showTopic(row.dataset.topic).catch(() => {}); }
  });
  $("#k-groups").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-group]");
    if (row) { event.preventDefault(); showGroup(row.dataset.group).catch(() => {}); }
  });
  $("#k-internal").addEventListener("change", () => loadKafkaTopics());
  $("#k-refresh").addEventListener("click", () => {
    loadKafka();
    if (kafka.topic) showTopic(kafka.topic).catch(() => {});
  });
  $("#k-msg-topic").addEventListener("change", msgPartitions);
  $("#k-browse").addEventListener("submit", (event) => { event.preventDefault(); browse(); });
  $("#k-create").addEventListener("submit", (event) => { event.preventDefault(); createTopic(); });
  // the cluster is polled only while its tab is shown
  let timer = null;
  window.addEventListener("millrace:tab", ({ detail }) => {
    clearInterval(timer);
    if (detail.name !== "kafka") return;
    loadKafka();
    timer = setInterval(() => { loadBrokers(); loadGroups(); }, 10000);
  });
});
