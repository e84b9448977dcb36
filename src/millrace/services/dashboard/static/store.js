// millrace dashboard, Store tab (#store/<collection>): browse every collection of the active store through
// /api/store: filters, time range, sort, pages, one row as JSON, CSV export. Self-contained (its own helpers
// in this closure) so it depends on app.js only for the tab switching ("millrace:tab" events).
"use strict";

(() => {
  const API = "/api/store/collections";
  const st = { meta: new Map(), name: null, offset: 0, total: 0, seq: 0, query: null };
  const $ = (sel) => document.querySelector(sel);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;" })[c]);
  const MAX_CELL = 80;  // characters of a cell shown in the table (the row view has everything)

  async function get(path) {
    const response = await fetch(path, { headers: authHeaders() });  // authHeaders: app.js
    const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    if (!response.ok) throw new Error(body?.detail || response.statusText);
    return body;
  }

  function cell(v) {
    if (v === null || v === undefined) return '<span class="muted">null</span>';
    const text = typeof v === "object" ? JSON.stringify(v) : String(v);
    return esc(text.length > MAX_CELL ? text.slice(0, MAX_CELL - 1) + "…" : text);
  }

  // The query as URL parameters: filters are separated by ";" in the input ("value>=20; location=loc-01").
  function params(withPage) {
    const p = new URLSearchParams();
    for (const f of $("#st-filters").value.split(";").map((s) => s.trim()).filter(Boolean)) p.append("filter", f);
    if ($("#st-from").value.trim()) p.set("from", $("#st-from").value.trim());
    if ($("#st-to").value.trim()) p.set("to", $("#st-to").value.trim());
    if ($("#st-sort").value) p.set("sort", $("#st-dir").value + $("#st-sort").value);
    if (withPage) {
      p.set("limit", String(Math.min(1000, Math.max(1, Number($("#st-limit").value) || 25))));
      p.set("offset", String(st.offset));
    }
    return p;
  }

  async function loadCollections() {
    const body = await get(API);
    $("#st-backend").textContent = body.backend;
    st.meta = new Map(body.collections.map((c) => [c.name, c]));
    $("#st-collections tbody").innerHTML = body.collections.map((c) =>
      `<tr data-collection="${esc(c.name)}"><td><a href="#store/${esc(c.name)}">${esc(c.name)}</a></td>` +
      `<td class="num">${c.count}</td><td>${esc(c.time_field)}</td><td>${esc(c.key.join(", "))}</td></tr>`).join("");
    const select = $("#st-collection");
    if (select.options.length !== body.collections.length) {
      select.innerHTML = body.collections.map((c) => `<option>${esc(c.name)}</option>`).join("");
    }
  }

  function choose(name) {
    const meta = st.meta.get(name) || st.meta.values().next().value;
    if (!meta) return;
    if (st.name !== meta.name) {
      st.name = meta.name;
      st.offset = 0;
      $("#st-collection").value = meta.name;
      $("#st-sort").innerHTML = meta.fields.filter((f) => f.kind !== "list").map((f) =>
        `<option value="${esc(f.name)}"${f.name === meta.time_field ? " selected" : ""}>${esc(f.name)}</option>`)
        .join("");
      $("#st-dir").value = "-";
      $("#st-filters").value = "";  // another collection's fields would not be this one's
      $("#st-rows thead").innerHTML = "<tr>" + meta.fields.map((f) => `<th>${esc(f.name)}</th>`).join("") + "</tr>";
      $("#st-doc").hidden = true;
    }
  }

  async function loadRows() {
    const meta = st.meta.get(st.name);
    if (!meta) return;
    const seq = ++st.seq;  // only the newest request fills the table
    const query = params(true);
    $("#st-csv").href = `${API}/${encodeURIComponent(st.name)}/export.csv?${params(false)}`;
    let body;
    try {
      body = await get(`${API}/${encodeURIComponent(st.name)}/rows?${query}`);
    } catch (e) {
      if (seq !== st.seq) return;
      $("#st-error").textContent = e.message;
      $("#st-rows tbody").innerHTML = "";
      $("#st-info").textContent = "";
      return;
    }
    if (seq !== st.seq) return;
    $("#st-error").textContent = "";
    st.total = body.total;
    $("#st-rows tbody").innerHTML = body.items.map((r) => `<tr data-key="${esc(r._key)}">` +
      meta.fields.map((f) => `<td>${cell(r[f.name])}</td>`).join("") + "</tr>").join("") ||
      `<tr><td colspan="${meta.fields.length}" class="muted">no rows</td></tr>`;
    $("#st-info").textContent = body.items.length
      ? `rows ${body.offset + 1}–${body.offset + body.items.length} of ${body.total}` : `0 of ${body.total}`;
    $("#st-prev").disabled = body.offset === 0;
    $("#st-next").disabled = body.next_offset === null;
  }

  async function showRow(key) {
    const name = st.name;
    try {
      const row = await get(`${API}/${encodeURIComponent(name)}/rows/${encodeURIComponent(key)}`);
      $("#st-doc").textContent = JSON.stringify(row, null, 2);
      $("#st-error").textContent = "";
    } catch (e) {
      $("#st-doc").textContent = "";
      $("#st-error").textContent = e.message;
    }
    $("#st-doc").hidden = !$("#st-doc").textContent;
    for (const tr of document.querySelectorAll("#st-rows tr.selected")) tr.classList.remove("selected");
    document.querySelector(`#st-rows tr[data-key="${CSS.escape(key)}"]`)?.classList.add("selected");
  }

  async function open(name) {
    try {
      await loadCollections();
    } catch (e) {
      $("#st-error").textContent = e.message;
      return;
    }
    choose(name);
    await loadRows();
  }

  // The tab's link, next to the others (the page's markup keeps this tab to one block).
  const nav = document.getElementById("tabs");
  if (nav && !nav.querySelector('[data-tab="store"]')) {
    const link = document.createElement("a");
    link.href = "#store";
    link.dataset.tab = "store";
    link.textContent = "Store";
    nav.appendChild(link);
  }

  window.addEventListener("millrace:tab", (ev) => {
    if (ev.detail.name === "store") open(ev.detail.arg || st.name).catch(() => {});
  });

  document.addEventListener("DOMContentLoaded", () => {
    $("#st-collection").addEventListener("change", () => { location.hash = `#store/${$("#st-collection").value}`; });
    $("#st-query").addEventListener("submit", (ev) => {
      ev.preventDefault();
      st.offset = 0;
      loadRows().catch(() => {});
    });
    for (const sel of ["#st-sort", "#st-dir"]) {
      $(sel).addEventListener("change", () => { st.offset = 0; loadRows().catch(() => {}); });
    }
    // A link cannot carry the Authorization header: with a token, fetch the CSV and save it as a blob.
    $("#st-csv").addEventListener("click", async (ev) => {
      if (!authToken()) return;
      ev.preventDefault();
      const link = ev.currentTarget;
      const response = await fetch(link.href, { headers: authHeaders() });
      if (!response.ok) return;
      const save = document.createElement("a");
      save.href = URL.createObjectURL(await response.blob());
      save.download = `${st.name}.csv`;
      save.click();
      setTimeout(() => URL.revokeObjectURL(save.href), 10000);
    });
    $("#st-prev").addEventListener("click", () => {
      st.offset = Math.max(0, st.offset - (Number($("#st-limit").value) || 25));
      loadRows().catch(() => {});
    });
    $("#st-next").addEventListener("click", () => {
      st.offset += Number($("#st-limit").value) || 25;
      loadRows().catch(() => {});
    });
    $("#st-rows tbody").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-key]");
      if (tr) showRow(tr.dataset.key).catch(() => {});
    });
  });
})();
