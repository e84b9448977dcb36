// millrace dashboard, Shop tab: the catalog (filtered and paged by /api/shop/products), the stop list with
// block/unblock (the API asks for the operator role: a viewer's click shows its refusal) and the clients' live
// search queries (client-search read back by /api/shop/queries, polled while the tab is shown).
// Uses api/esc/$/time from app.js.
"use strict";

const SHOP_PAGE = 25;
const SHOP_POLL_MS = 3000;
const shop = { timer: null, seq: 0, offset: 0, blocked: new Map(), facetsLoaded: false };

function shopNotice(text) {
  const box = $("#shop-notice");
  box.hidden = !text;
  box.textContent = text || "";
}

function shopFilters() {
  const params = new URLSearchParams({ limit: String(SHOP_PAGE), offset: String(shop.offset) });
  for (const [id, key] of [["#shop-q", "q"], ["#shop-category", "category"], ["#shop-brand", "brand"],
    ["#shop-price-min", "price_min"], ["#shop-price-max", "price_max"]]) {
    const value = $(id).value.trim();
    if (value) params.set(key, value);
  }
  return params;
}

async function shopFacets() {
  // the category and brand choices, from the whole catalog once
  if (shop.facetsLoaded) return;
  const categories = new Set(), brands = new Set();
  for (let offset = 0; offset !== null;) {
    const page = await api(`/api/shop/products?limit=500&offset=${offset}`);
    for (const p of page.items) { categories.add(p.category); brands.add(p.brand); }
    offset = page.next_offset;
  }
  const options = (values) => '<option value="">all</option>' +
    [...values].sort().map((v) => `<option>${esc(v)}</option>`).join("");
  $("#shop-category").innerHTML = options(categories);
  $("#shop-brand").innerHTML = options(brands);
  shop.facetsLoaded = true;
}

async function loadProducts() {
  const seq = ++shop.seq;  // only the newest request updates the table
  let page;
  try {
    page = await api(`/api/shop/products?${shopFilters()}`);
  } catch (e) {
    if (seq === shop.seq) shopNotice(e.message);
    return;
  }
  if (seq !== shop.seq) return;
  $("#shop-products tbody").innerHTML = page.items.map((p) => {
    const blocked = shop.blocked.has(p.id);
    return `<tr data-product-id="${esc(p.id)}" class="${blocked ? "anomaly" : ""}"><td>${esc(p.id)}</td>` +
      `<td>${esc(p.name)}</td><td>${esc(p.category)}</td><td>${esc(p.brand)}</td>` +
      `<td class="num">${esc(p.price.amount.toLocaleString())} ${esc(p.price.currency)}</td>` +
      `<td class="num">${esc(p.stock?.available ?? "–")}</td><td>${blocked ? "blocked" :
        `<button class="shop-block" data-id="${esc(p.id)}">Block</button>`}</td></tr>`;
  }).join("") || '<tr><td colspan="7" class="muted">no product matches</td></tr>';
  const last = page.offset + page.items.length;
  $("#shop-page").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "0 of 0";
  $("#shop-prev").disabled = page.offset === 0;
  $("#shop-next").disabled = page.next_offset === null;
}

async function loadBlocked() {
  const entries = await api("/api/shop/blocked");
  shop.blocked = new Map(entries.map((e) => [e.product_id, e]));
  $("#shop-blocked tbody").innerHTML = entries.map((e) => `<tr data-product-id="${esc(e.product_id)}">` +
    `<td>${esc(e.product_id)}</td><td class="reason">${esc(e.reason || "–")}</td><td>${time(e.at)}</td>` +
    `<td><button class="shop-unblock" data-id="${esc(e.product_id)}">Unblock</button></td></tr>`)
    .join("") || '<tr><td colspan="4" class="muted">no product is blocked</td></tr>';
}

async function loadQueries() {
  const queries = await api("/api/shop/queries?limit=50");
  $("#shop-queries tbody").innerHTML = queries.map((q) => `<tr><td>${time(q.timestamp)}</td>` +
    `<td>${esc(q.user)}</td><td>${esc(q.query)}</td><td class="num">${esc(q.results ?? "–")}</td></tr>`)
    .join("") || '<tr><td colspan="4" class="muted">no search yet</td></tr>';
  $("#shop-queries").dataset.count = String(queries.length);
}

async function shopChange(method, id, reason) {
  try {
    if (method === "POST") {
      await api("/api/shop/blocked", { method, body: JSON.stringify({ product_id: id, reason: reason || "" }) });
    } else {
      await api(`/api/shop/blocked/${encodeURIComponent(id)}`, { method });
    }
    shopNotice("");
  } catch (e) {
    shopNotice(`${method === "POST" ? "block" : "unblock"} ${id}: ${e.message}`);
  }
  await loadBlocked().catch((e) => shopNotice(e.message));
  await loadProducts();
}

async function loadShop() {
  try {
    await shopFacets();
    await loadBlocked();
    shopNotice("");
  } catch (e) {
    shopNotice(e.message);
  }
  await loadProducts();
  await loadQueries().catch((e) => {
    $("#shop-queries tbody").innerHTML = `<tr><td colspan="4" class="muted">${esc(e.message)}</td></tr>`;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const refilter = () => { shop.offset = 0; loadProducts(); };
  for (const id of ["#shop-q", "#shop-price-min", "#shop-price-max"]) $(id).addEventListener("input", refilter);
  for (const id of ["#shop-category", "#shop-brand"]) $(id).addEventListener("change", refilter);
  $("#shop-prev").addEventListener("click", () => { shop.offset = Math.max(0, shop.offset - SHOP_PAGE); loadProducts(); });
  $("#shop-next").addEventListener("click", () => { shop.offset += SHOP_PAGE; loadProducts(); });
  $("#shop-products").addEventListener("click", (ev) => {
    const button = ev.target.closest("button.shop-block");
    if (button) { button.disabled = true; shopChange("POST", button.dataset.id, $("#shop-reason").value.trim()); }
  });
  $("#shop-blocked").addEventListener("click", (ev) => {
    const button = ev.target.closest("button.shop-unblock");
    if (button) { button.disabled = true; shopChange("DELETE", button.dataset.id); }
  });
  $("#shop-block-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("#shop-block-id").value.trim();
    if (id) shopChange("POST", id, $("#shop-reason").value.trim());
  });
  // the live queries are polled only while the tab is shown
  window.addEventListener("millrace:tab", ({ detail }) => {
    clearInterval(shop.timer);
    if (detail.name !== "shop") return;
    loadShop();
    shop.timer = setInterval(() => loadQueries().catch(() => {}), SHOP_POLL_MS);
  });
});
