// millrace dashboard, Shop analytics tab: what `millrace shop analytics` computed (GET /api/shop/analytics,
// the latest run of each metric): revenue by category and day, top products, the catalog per category, client
// query statistics, active users per hour and recommendation coverage. The figures are batch results, so
// the tab re-reads them on a slow timer while shown (and on Refresh) rather than polling like the live tabs.
// Uses api/esc/$/dark/empty/CONFIG/time from app.js.
"use strict";

const SA_POLL_MS = 30000;
const SA_TOP_CATEGORIES = 20;   // bars in the revenue chart (a longer bar list is unreadable)
const sa = { timer: null, seq: 0 };
// The metrics the tab draws: asked for by name, so the per-user figures (searches_per_user_hour, one record per
// user and hour: nearly all of a run's records) are not fetched every refresh.
const SA_METRICS = ["sales_revenue", "sales_units", "top_products", "category_product_count", "category_avg_price",
  "category_total_available", "search_queries", "zero_result_queries", "searches_per_hour", "active_users_per_hour",
  "recommendation_coverage"];

const saMoney = (v) => Number(v).toLocaleString("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const saCount = (v) => Number(v).toLocaleString("en", { maximumFractionDigits: 2 });
const saShare = (v) => `${(Number(v) * 100).toFixed(1)} %`;
// dimensions are strings; a rank orders a top list, the value breaks ties (and orders rank-less rows)
const saRanked = (rows) => [...rows].sort((a, b) =>
  (Number(a.dimensions.rank ?? Infinity) - Number(b.dimensions.rank ?? Infinity)) || (b.value - a.value));

function saNotice(text) {
  const box = $("#sa-notice");
  box.hidden = !text;
  box.textContent = text || "";
}

// Sums of a metric's values grouped by a key of each row, in first-seen order.
function saSum(rows, key) {
  const sums = new Map();
  for (const r of rows) { const k = key(r); sums.set(k, (sums.get(k) || 0) + Number(r.value)); }
  return sums;
}

function saLine(id, points, name, unit, note) {
  const sorted = [...points].sort((a, b) => a[0].localeCompare(b[0]));
  Plotly.react(id, sorted.length ? [{ x: sorted.map((p) => p[0]), y: sorted.map((p) => p[1]), name,
    type: "scatter", mode: "lines+markers", line: { width: 2, color: "#3fa7ff" } }] : [],
  dark({ yaxis: { gridcolor: "#27303a", rangemode: "tozero", title: { text: unit } }, ...empty(sorted, note) }),
  CONFIG);
}

// The hour of an hourly metric: its "hour" dimension (an ISO time) or else the window's start.
const saHour = (r) => r.dimensions.hour || r.window_start;
const saDay = (r) => r.dimensions.day || (r.window_start || "").slice(0, 10);

function saCategories(revenue) {
  const totals = [...saSum(revenue, (r) => r.dimensions.category ?? "–")].sort((a, b) => b[1] - a[1]);
  const top = totals.slice(0, SA_TOP_CATEGORIES).reverse();  // a horizontal bar chart draws bottom-up
  const [first] = totals;
  $("#sa-top-category").textContent = first ? `top: ${first[0]} · ${saMoney(first[1])}` : "";
  $("#sa-top-category").dataset.category = first ? first[0] : "";
  $("#sa-categories-info").textContent = totals.length > SA_TOP_CATEGORIES
    ? `(top ${SA_TOP_CATEGORIES} of ${totals.length})` : "";
  Plotly.react("sa-categories", top.length ? [{ type: "bar", orientation: "h", x: top.map((t) => t[1]),
    y: top.map((t) => t[0]), text: top.map((t) => saMoney(t[1])), textposition: "auto",
    marker: { color: "#3fcf8e" } }] : [],
  dark({ margin: { l: 160, r: 10, t: 10, b: 40 }, ...empty(top, "no sales in the lake yet") }), CONFIG);
}

function saSalesPerDay(revenue, units) {
  const days = [...saSum(revenue, saDay)].sort((a, b) => a[0].localeCompare(b[0]));
  const perDay = saSum(units, saDay);
  const traces = days.length ? [
    { x: days.map((d) => d[0]), y: days.map((d) => d[1]), name: "revenue", type: "scatter", mode: "lines+markers",
      line: { width: 2, color: "#3fa7ff" } },
    { x: days.map((d) => d[0]), y: days.map((d) => perDay.get(d[0]) ?? null), name: "units", type: "scatter",
      mode: "lines", yaxis: "y2", line: { width: 1, dash: "dot", color: "#f5a623" } },
  ] : [];
  Plotly.react("sa-sales-day", traces, dark({ showlegend: days.length > 0, legend: { orientation: "h", y: -0.25 },
    margin: { l: 60, r: 50, t: 10, b: 40 }, xaxis: { gridcolor: "#27303a", type: "category" },
    yaxis: { gridcolor: "#27303a", rangemode: "tozero", title: { text: "revenue" } },
    yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, title: { text: "units" },
      tickmode: "auto", tickformat: ",~r",
      visible: days.length > 0 }, ...empty(days, "no sales in the lake yet") }), CONFIG);
}

function saTable(id, rows, columns, none) {
  const tbody = $(`#${id} tbody`);
  tbody.innerHTML = rows.map((r) => "<tr>" + columns.map(([value, cls]) =>
    `<td${cls ? ` class="${cls}"` : ""}>${esc(value(r))}</td>`).join("") + "</tr>").join("") ||
    `<tr class="none"><td colspan="${columns.length}" class="muted">${esc(none)}</td></tr>`;
  $(`#${id}`).dataset.count = String(rows.length);
}

function saCatalog(metrics) {
  const byCategory = new Map();
  for (const [metric, field] of [["category_product_count", "count"], ["category_avg_price", "avg"],
    ["category_total_available", "available"]]) {
    for (const r of metrics[metric] || []) {
      const name = r.dimensions.category ?? "–";
      byCategory.set(name, { ...byCategory.get(name), category: name, [field]: r.value });
    }
  }
  const rows = [...byCategory.values()].sort((a, b) => a.category.localeCompare(b.category, "ru"));
  saTable("sa-category-table", rows, [[(r) => r.category], [(r) => r.count === undefined ? "–" : saCount(r.count), "num"],
    [(r) => r.avg === undefined ? "–" : saMoney(r.avg), "num"],
    [(r) => r.available === undefined ? "–" : saCount(r.available), "num"]], "no catalog figures yet");
}

function saCoverage(rows) {
  const sorted = [...rows].sort((a, b) => (a.dimensions.model || "").localeCompare(b.dimensions.model || ""));
  $("#sa-coverage").innerHTML = sorted.map((r) => `<div class="counter" data-model="${esc(r.dimensions.model)}">` +
    `<b>${saShare(r.value)}</b>${esc(r.dimensions.model ?? "–")}</div>`).join("") ||
    '<p class="muted">no recommendation coverage yet (run <code>millrace shop recommend-train</code>)</p>';
}

function saRender(body) {
  const metrics = body.metrics || {};
  const any = Object.values(metrics).some((rows) => rows.length);
  $("#sa-empty").hidden = any;
  for (const el of document.querySelectorAll("#tab-shop-analytics .sa-data")) el.hidden = !any;
  $("#sa-info").textContent = body.computed_at ? `computed ${time(body.computed_at)}` : "";
  if (!any) return;
  const revenue = metrics.sales_revenue || [];
  saCategories(revenue);
  saSalesPerDay(revenue, metrics.sales_units || []);
  saTable("sa-products", saRanked(metrics.top_products || []), [[(r) => r.dimensions.rank ?? "–", "num"],
    [(r) => r.dimensions.product_id], [(r) => r.dimensions.name], [(r) => r.dimensions.category],
    [(r) => saCount(r.value), "num"]], "no product sold yet");
  saCatalog(metrics);
  saLine("sa-searches-hour", [...saSum(metrics.searches_per_hour || [], saHour)], "searches", "searches",
    "no client searches yet");
  saLine("sa-users-hour", [...saSum(metrics.active_users_per_hour || [], saHour)], "active users", "users",
    "no active users yet");
  const query = [[(r) => r.dimensions.rank ?? "–", "num"], [(r) => r.dimensions.query], [(r) => saCount(r.value), "num"]];
  saTable("sa-queries", saRanked(metrics.search_queries || []), query, "no client searches yet");
  saTable("sa-zero", saRanked(metrics.zero_result_queries || []), query, "every query found something");
  saCoverage(metrics.recommendation_coverage || []);
  // charts drawn while their panels were hidden have no size: let Plotly measure again
  for (const el of document.querySelectorAll("#tab-shop-analytics .js-plotly-plot")) Plotly.Plots.resize(el);
}

async function loadShopAnalytics() {
  const seq = ++sa.seq;  // only the newest answer is drawn
  let body;
  try {
    body = await api(`/api/shop/analytics?${SA_METRICS.map((m) => `metric=${m}`).join("&")}`);
  } catch (e) {
    if (seq === sa.seq) saNotice(`shop analytics: ${e.message}`);
    return;
  }
  if (seq !== sa.seq) return;
  saNotice("");
  saRender(body);
  $("#tab-shop-analytics").dataset.loaded = String(seq);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sa-refresh").addEventListener("click", () => loadShopAnalytics());
  window.addEventListener("millrace:tab", ({ detail }) => {
    clearInterval(sa.timer);
    if (detail.name !== "shop-analytics") return;
    loadShopAnalytics();
    sa.timer = setInterval(loadShopAnalytics, SA_POLL_MS);
  });
});
