"use strict";
// The Weir console: polls the admin API once a second and draws every pipeline as a graph
// of its stages; clicking a stage (or opening the page at #tap=PIPELINE/STAGE) taps it.
// Everything is built with textContent: nothing a record or config says becomes markup.

const seen = new Map(); // "pipeline/stage" -> [records_out, time]
let tap = null; // {pipeline, stage, after}

function token() { return sessionStorage.getItem("weir-token") || ""; }

async function api(path) {
  const headers = token() ? { Authorization: "Bearer " + token() } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) {
    document.getElementById("token-form").hidden = false;
    throw new Error("the admin API needs its token");
  }
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function rate(key, count, now) {
  const before = seen.get(key);
  seen.set(key, [count, now]);
  if (!before || now <= before[1]) return null;
  return (count - before[0]) / ((now - before[1]) / 1000);
}

function stageBox(p, s, now) {
  const box = el("div", "stage");
  box.dataset.pipeline = p.name;
  box.dataset.stage = s.name;
  box.dataset.kind = s.kind;
  box.dataset.in = s.records_in;
  box.dataset.out = s.records_out;
  box.title = "Tap " + s.name;
  box.append(el("div", "name", s.name));
  box.append(el("div", "plugin", s.kind + " · " + s.plugin));
  if (s.after) box.append(el("div", "after", "after " + s.after));
  const r = rate(p.name + "/" + s.name, s.records_out, now);
  box.append(el("div", "rate", (r === null ? "…" : r.toFixed(r < 10 ? 1 : 0)) + " rec/s"));
  box.append(el("div", "counts", "in " + s.records_in + " · out " + s.records_out));
  const trouble = [];
  if (s.queue_depth > 0) trouble.push("queued " + s.queue_depth);
  if (s.rejected > 0) trouble.push("rejected " + s.rejected);
  if (s.dropped > 0) trouble.push("dropped " + s.dropped);
  if (s.errors > 0) trouble.push("errors " + s.errors);
  box.append(el("div", s.errors > 0 ? "bad" : "counts", trouble.join(" · ") || "no errors"));
  for (const [dep, h] of Object.entries(s.health || {})) {
    if (!h.up) box.append(el("div", "down", dep + " down" + (h.reason ? ": " + h.reason : "")));
  }
  box.addEventListener("click", () => openTap(p.name, s.name));
  return box;
}

function draw(list) {
  const now = performance.now();
  const main = document.getElementById("pipelines");
  main.replaceChildren();
  if (list.length === 0) main.append(el("p", null, "No pipelines yet: PUT /pipelines/NAME or `weir apply FILE`."));
  for (const p of list) {
    const sec = el("section", "pipeline");
    sec.dataset.pipeline = p.name;
    const h = el("h2", null, p.name);
    const state = p.paused ? "paused" : p.state;
    const badge = el("span", "state " + state, state);
    badge.dataset.state = state;
    h.append(badge);
    sec.append(h);
    if (p.error) sec.append(el("p", "error", p.error));
    const graph = el("div", "graph");
    const stages = p.stages || [];
    const columns = [stages.filter((s) => s.kind === "source")];
    for (const t of stages.filter((s) => s.kind === "transform")) columns.push([t]);
    const sinks = stages.filter((s) => s.kind === "sink");
    if (sinks.length) columns.push(sinks.filter((s) => !s.after));
    const following = sinks.filter((s) => s.after);
    if (following.length) columns.push(following);
    columns.forEach((col, i) => {
      if (i > 0) graph.append(el("span", "arrow", "→"));
      const c = el("div", "column");
      for (const s of col) c.append(stageBox(p, s, now));
      graph.append(c);
    });
    sec.append(graph);
    main.append(sec);
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    draw(await api("/pipelines"));
    status.textContent = "live · " + new Date().toLocaleTimeString();
  } catch (e) {
    status.textContent = e.message;
  }
}

function openTap(pipeline, stage) {
  tap = { pipeline, stage, after: null };
  document.getElementById("tap-title").textContent = pipeline + " / " + stage;
  document.getElementById("tap").textContent = "";
  document.getElementById("tap-panel").hidden = false;
  history.replaceState(null, "", "#tap=" + encodeURIComponent(pipeline) + "/" + encodeURIComponent(stage));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Once a second: what the stage passed on since the last look (waiting a little for it).
async function followTap() {
  while (true) {
    await sleep(1000);
    if (!tap) continue;
    const t = tap;
    try {
      const q = "stage=" + encodeURIComponent(t.stage) + "&limit=50&wait_ms=200" + (t.after === null ? "" : "&after=" + t.after);
      const r = await api("/pipelines/" + encodeURIComponent(t.pipeline) + "/tap?" + q);
      if (tap !== t) continue;
      if (r.next !== null) t.after = r.next;
      const out = document.getElementById("tap");
      for (const rec of r.records) {
        const line = el("div", "record", rec.time + "  " + (rec.key ? rec.key + "  " : "") + JSON.stringify(rec.value));
        line.dataset.seq = rec.seq;
        out.append(line);
      }
      while (out.childElementCount > 200) out.firstElementChild.remove();
    } catch (e) {
      document.getElementById("status").textContent = e.message;
    }
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("weir-token", document.getElementById("token").value);
  document.getElementById("token-form").hidden = true;
  refresh();
});
document.getElementById("tap-close").addEventListener("click", () => {
  tap = null;
  document.getElementById("tap-panel").hidden = true;
  history.replaceState(null, "", "#");
});
const wanted = /^#tap=([^/]+)\/(.+)$/.exec(location.hash);
try {
  if (wanted) openTap(decodeURIComponent(wanted[1]), decodeURIComponent(wanted[2]));
} catch (e) {
  document.getElementById("status").textContent = "the link's #tap= is not PIPELINE/STAGE";
}
refresh();
setInterval(refresh, 1000);
followTap();
