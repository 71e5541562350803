// The inspector's page: one script, no build step. It reads the path and renders a view
// from the JSON API; live updates come from /api/events (server-sent events).
"use strict";

const main = () => document.getElementById("main");

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "-";
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

function when(ms) {
  return ms ? new Date(Number(ms)).toISOString().replace("T", " ").replace("Z", "") : "-";
}

function table(headers, rows, id) {
  return el("table", id ? { id } : {},
    el("thead", {}, el("tr", {}, headers.map(h => el("th", h.num ? { class: "num" } : {}, h.label || h)))),
    el("tbody", {}, rows.map(r => el("tr", {}, r.map((c, i) =>
      el("td", headers[i].num ? { class: "num" } : {}, c))))));
}

function statusSpan(s) {
  return el("span", { class: "status status-" + s }, s);
}

// ---- throughput chart: stage_done events per second per role, last 60 s ----
const finished = {}; // role -> array of ms
function noteEvent(e) {
  if (e.kind === "stage_done" && e.role) (finished[e.role] = finished[e.role] || []).push(Date.now());
}
const colors = ["#0969da", "#1a7f37", "#9a6700", "#8250df", "#c62828"];
function drawChart() {
  const c = document.getElementById("chart");
  if (!c) return;
  const w = c.width = c.clientWidth, h = c.height = 120;
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const now = Date.now();
  const roles = Object.keys(finished).sort();
  const series = roles.map(r => {
    finished[r] = finished[r].filter(t => t > now - 60000);
    const buckets = new Array(60).fill(0);
    for (const t of finished[r]) buckets[Math.min(59, Math.floor((now - t) / 1000))]++;
    return buckets.reverse();
  });
  const max = Math.max(1, ...series.flat());
  series.forEach((b, i) => {
    g.strokeStyle = colors[i % colors.length];
    g.beginPath();
    b.forEach((v, x) => {
      const px = x * w / 59, py = h - 14 - v * (h - 24) / max;
      x ? g.lineTo(px, py) : g.moveTo(px, py);
    });
    g.stroke();
    g.fillStyle = g.strokeStyle;
    g.fillText(roles[i] + " " + (b.slice(-10).reduce((a, v) => a + v, 0) / 10).toFixed(1) + "/s", 6 + i * 150, h - 2);
  });
  g.fillStyle = "#8a94a3";
  g.fillText("max " + max + "/s", w - 60, 10);
}

// ---- live events ----
let onEvent = () => {};
function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.textContent = "live"; };
  source.onerror = () => { live.textContent = "reconnecting…"; };
  source.onmessage = m => {
    const e = JSON.parse(m.data);
    noteEvent(e);
    onEvent(e);
  };
}

function eventLine(e) {
  const extra = Object.entries(e).filter(([k]) => !["id", "kind", "task"].includes(k))
    .map(([k, v]) => k + "=" + v).join(" ");
  return el("div", { class: "event" }, when(Number(e.id.split("-")[0])), " ", el("b", {}, e.kind), " ",
    el("a", { href: "/tasks/" + e.task }, e.task), " ", extra);
}

// ---- views ----
async function home() {
  const q = await api("/api/queues");
  document.getElementById("namespace").textContent = q.namespace + " · " + q.pipeline;
  const queues = el("section", {}, el("h2", {}, "Queues"),
    table(["role", { label: "pending", num: 1 }, { label: "in flight", num: 1 }, { label: "scheduled", num: 1 },
      { label: "review", num: 1 }, { label: "dead", num: 1 }, { label: "done", num: 1 }, { label: "retried", num: 1 },
      { label: "oldest pending", num: 1 }, { label: "workers", num: 1 }],
      q.roles.map(r => [r.role, r.pending, r.in_flight, r.scheduled, r.review, r.dead, r.done, r.retried,
        ago(r.oldest_pending_age_ms), r.live_workers]), "queues"));
  const workers = await api("/api/workers");
  const now = Date.now();
  const ws = el("section", {}, el("h2", {}, "Live workers"),
    table(["worker", "role", "host", "provider", "model", { label: "conc.", num: 1 }, { label: "in flight", num: 1 },
      { label: "done", num: 1 }, { label: "failed", num: 1 }, "up", "heartbeat"],
      workers.map(w => [w.id, w.role, w.host, w.provider, w.model, w.concurrency, w.in_flight, w.done, w.failed,
        ago(now - w.started_at_ms), ago(now - w.last_heartbeat_ms) + " ago"]), "workers"));
  const dead = await api("/api/dead?limit=50");
  const dl = el("section", {}, el("h2", {}, "Dead letters"),
    dead.length ? table(["id", "role", "class", { label: "attempts", num: 1 }, "error", "died"],
      dead.map(d => [el("a", { href: "/dead/" + d.role + "/" + d.job_id, class: "dead-link" }, d.job_id), d.role,
        d.error_class, d.attempts, d.error.slice(0, 120), when(d.dead_at_ms)]), "dead")
      : el("p", { class: "muted", id: "dead" }, "none"));
  const recent = await api("/api/tasks?limit=20");
  const tasks = el("section", {}, el("h2", {}, "Recent tasks"), taskTable(recent, "recent"));
  const events = window.eventsDiv || (window.eventsDiv = el("div", { id: "events" }));
  const chart = el("section", {}, el("h2", {}, "Throughput (stages finished per second)"), el("canvas", { id: "chart" }));
  main().replaceChildren(queues, chart, el("div", { class: "grid" }, ws, el("section", {}, el("h2", {}, "Events"), events)), tasks, dl);
  onEvent = e => {
    events.prepend(eventLine(e));
    while (events.childElementCount > 200) events.lastChild.remove();
  };
}

function taskTable(list, id) {
  if (!list.length) return el("p", { class: "muted", id }, "no tasks");
  return table(["task", "status", "enqueued", "metadata"],
    list.map(t => [el("a", { href: "/tasks/" + t.task_id, class: "task-link" }, t.task_id), statusSpan(t.status),
      when(t.created_at_ms), Object.entries(t.metadata).map(([k, v]) => k + "=" + v).join(", ")]), id);
}

async function search(text) {
  const results = await api("/api/tasks?limit=100&q=" + encodeURIComponent(text));
  main().replaceChildren(el("section", {}, el("h2", {}, "Tasks matching “" + text + "”"), taskTable(results, "results")));
  onEvent = () => {};
}

async function taskPage(id) {
  const { record: r, events } = await api("/api/tasks/" + encodeURIComponent(id));
  const stages = Object.entries(r.stages || {}).map(([role, s]) => el("section", { class: "stage" },
    el("h2", {}, role, " ", statusSpan(s.state || "-")),
    table(["attempts", "started", "finished", "took", "tokens (in/out)", "provider / model", "worker"],
      [[s.attempts, when(s.started_at_ms), when(s.finished_at_ms),
        s.finished_at_ms && s.started_at_ms ? ((s.finished_at_ms - s.started_at_ms) / 1000).toFixed(2) + " s" : "-",
        s.usage ? s.usage.prompt_tokens + " / " + s.usage.completion_tokens : "-",
        (s.provider || "-") + " / " + (s.model || "-"), s.worker_id || "-"]]),
    s.last_error ? el("p", { class: "error" }, "last error: " + s.last_error) : null,
    s.output ? el("pre", { class: "output" }, s.output) : null));
  const ev = el("div", { id: "events" }, events.map(eventLine));
  main().replaceChildren(
    el("section", {}, el("h2", {}, "Task ", el("code", {}, r.task_id)),
      el("p", {}, "status ", el("b", { id: "status" }, statusSpan(r.status)), " · pipeline ", r.pipeline || "-",
        " · lane ", r.lane || "normal", " · enqueued ", when(r.created_at_ms), " · updated ", when(r.updated_at_ms)),
      Object.keys(r.metadata || {}).length ? el("p", {}, "metadata ", Object.entries(r.metadata).map(([k, v]) => k + "=" + v).join(", ")) : null,
      r.last_error ? el("p", { class: "error" }, r.last_error) : null,
      r.stop_reason ? el("p", { class: "error" }, r.stop_reason) : null,
      el("h2", {}, "Prompt"), el("pre", {}, r.prompt),
      r.answer !== null && r.answer !== undefined ? [el("h2", {}, "Answer"), el("pre", { id: "answer" }, r.answer)] : null),
    ...stages,
    el("section", {}, el("h2", {}, "Events"), ev));
  let pending = false;
  onEvent = e => {
    if (e.task !== id) return;
    ev.append(eventLine(e));
    if (!pending) { pending = true; setTimeout(() => taskPage(id), 300); }
  };
}

async function deadPage(role, id) {
  const d = await api("/api/dead/" + encodeURIComponent(role) + "/" + encodeURIComponent(id));
  const result = el("p", { id: "result" });
  const act = (what) => async () => {
    if (what === "purge" && !confirm("Purge this dead letter for good?")) return;
    try {
      await api("/api/dead/" + encodeURIComponent(role) + "/" + encodeURIComponent(id) + "/" + what, { method: "POST" });
      result.replaceChildren(what === "replay" ? "replayed: " : "purged ", what === "replay"
        ? el("a", { href: "/tasks/" + id, id: "replayed-task" }, id) : "");
    } catch (err) {
      result.replaceChildren(el("span", { class: "error" }, err.message));
    }
  };
  main().replaceChildren(el("section", {}, el("h2", {}, "Dead letter ", el("code", {}, d.job_id)),
    table(["role", "class", "attempts", "first failed", "last failed", "worker"],
      [[d.role, d.error_class, d.attempts, when(d.first_failed_at_ms), when(d.last_failed_at_ms), d.worker_id]]),
    el("p", { class: "error" }, d.error),
    el("pre", {}, d.payload),
    el("p", {}, el("button", { id: "replay", onclick: act("replay") }, "Replay"), " ",
      el("button", { id: "purge", class: "danger", onclick: act("purge") }, "Purge"), " ",
      el("a", { href: "/tasks/" + d.job_id }, "task")),
    result));
  onEvent = () => {};
}

async function route() {
  const path = decodeURIComponent(location.pathname);
  const params = new URLSearchParams(location.search);
  try {
    let m;
    if ((m = path.match(/^\/tasks\/([^/]+)$/))) await taskPage(m[1]);
    else if ((m = path.match(/^\/dead\/([^/]+)\/([^/]+)$/))) await deadPage(m[1], m[2]);
    else if (params.get("q")) await search(params.get("q"));
    else await home();
  } catch (err) {
    main().replaceChildren(el("p", { class: "error" }, err.message));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("search-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const text = document.getElementById("search").value.trim();
    if (text) location.href = "/?q=" + encodeURIComponent(text);
  });
  if (new URLSearchParams(location.search).get("token")) history.replaceState(null, "", location.pathname);
  route();
  connect();
  setInterval(drawChart, 1000);
  setInterval(() => { if (location.pathname === "/" && !location.search) home().catch(() => {}); }, 5000);
});
