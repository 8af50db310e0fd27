// The TTG dashboard: runs (live), a run (spec, progress, outputs, charts,
// best points, failures), agents (live). Talks only to this server's
// /api/v1: the session cookie carries the token (set by signing in), so no
// secret is ever in a URL or readable by this script.

import * as charts from "/charts.js";

const main = document.getElementById("main");
let me = null;            // whoami: name, role, can_act, trace_url_template
let live = null;          // the shared runs/agents EventSource
let runEvents = null;     // the open run's EventSource
let snapshot = null;      // the last runs/agents snapshot
let page = "";            // the route rendered

/** Replace `node`'s children with `kids`, leaving out null ones. */
function put(node, ...kids) {
  node.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined));
}

/** Elements: el("td.num#id", {title}, "text" | Node, …). */
function el(spec, attrs, ...kids) {
  const id = spec.match(/#([\w-]+)/);
  const [tag, ...classes] = spec.replace(/#[\w-]+/, "").split(".");
  const e = document.createElement(tag);
  if (id) e.id = id[1];
  if (classes.length) e.className = classes.join(" ");
  if (attrs !== null && attrs !== undefined && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) kids.unshift(attrs);
  else if (attrs) for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

class HttpError extends Error {
  constructor(status, body) { super(body?.error?.message || `HTTP ${status}`); this.status = status; this.code = body?.error?.code; }
}

async function api(path, opts = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...opts });
  const body = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    if (r.status === 401) signIn();
    throw new HttpError(r.status, body);
  }
  return body;
}

/** POST an action (retry, cancel): the header proves it comes from this page. */
function act(path, body) {
  return api(path, { method: "POST", headers: { "X-TTG-Action": "1", "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
}

// ---- sign in ------------------------------------------------------------

function signIn() {
  const d = document.getElementById("login");
  if (!d.open) d.showModal();
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("login-error");
  err.textContent = "";
  try {
    await api("/api/v1/session", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: document.getElementById("token").value }) });
    document.getElementById("token").value = "";
    document.getElementById("login").close();
    await start();
  } catch (e) { err.textContent = e.message; }
});

document.getElementById("sign-out").addEventListener("click", async () => {
  await fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin" });
  location.reload();
});

// ---- formatting ---------------------------------------------------------

const fmt = charts.fmt;
function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}
function duration(s) {
  if (!Number.isFinite(s) || s < 0) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
const state = (s) => el("span.state." + s, s);
function bar(c) {
  const t = Math.max(1, c.total);
  const b = el("span.bar", { title: `${c.done}/${c.total} chunks done, ${c.dead} dead` });
  const done = el("span"); done.style.width = `${(100 * c.done) / t}%`;
  const dead = el("span.dead"); dead.style.left = `${(100 * c.done) / t}%`; dead.style.width = `${(100 * c.dead) / t}%`;
  b.append(done, dead);
  return b;
}
function eta(r) {
  if (r.state !== "RUNNING" || !r.params_per_second) return "–";
  return duration((r.params - r.params_done) / r.params_per_second);
}

// ---- live snapshot (runs and agents) --------------------------------------

function openLive() {
  if (live) return;
  live = new EventSource("/api/v1/live");
  live.addEventListener("snapshot", (m) => {
    snapshot = JSON.parse(m.data);
    if (page === "runs") renderRuns();
    if (page === "agents") renderAgents();
  });
  live.onerror = () => { document.querySelectorAll(".live").forEach((d) => d.classList.add("off")); };
  live.onopen = () => { document.querySelectorAll(".live").forEach((d) => d.classList.remove("off")); };
}

function runsPage() {
  page = "runs";
  main.replaceChildren(el("h1", "Runs", el("span.live", { title: "live" })), el("div#runs", el("p.muted", "Waiting for the first update…")));
  if (snapshot) renderRuns();
}

function renderRuns() {
  const box = document.getElementById("runs");
  if (!box) return;
  const rows = snapshot.runs.map((r) => el("tr", { "data-run": r.run_id },
    el("td", el("a", { href: `#/run/${r.run_id}` }, r.run_id)),
    el("td", r.name || ""),
    el("td", state(r.state)),
    el("td", r.priority),
    el("td", bar(r.chunks), " ", el("span.muted.progress", `${r.chunks.done}/${r.chunks.total}`)),
    el("td.num", fmt(Math.round(r.params_per_second))),
    el("td.num", eta(r)),
    el("td", r.kernel),
    el("td", ago(r.created_ms))));
  box.replaceChildren(rows.length ? el("table",
    el("thead", el("tr", ["Run", "Name", "State", "Priority", "Progress", "Params/s", "ETA", "Kernel", "Submitted"].map((h) => el("th", h)))),
    el("tbody", rows)) : el("p.muted", "No runs yet: ttgctl submit --params 10000"));
}

let firstCounters = null; // the fleet's counters when the page opened
function agentsPage() {
  page = "agents";
  firstCounters = snapshot ? snapshot.counters : null;
  main.replaceChildren(el("h1", "Agents", el("span.live", { title: "live" })), el("p#counters.muted"), el("div#agents", el("p.muted", "Waiting for the first update…")));
  if (snapshot) renderAgents();
}

function renderAgents() {
  const box = document.getElementById("agents");
  if (!box) return;
  const c = snapshot.counters;
  if (!firstCounters) firstCounters = c;
  const since = (k) => (c[k] - firstCounters[k] > 0 ? ` (+${c[k] - firstCounters[k]} since you opened this page)` : "");
  document.getElementById("counters").textContent =
    `Chunks completed ${fmt(c.completed)}${since("completed")} · reclaimed from dead agents ${fmt(c.reclaimed)}${since("reclaimed")} · failed attempts ${fmt(c.failed)}${since("failed")} · dead-lettered ${fmt(c.dead)}`;
  const rows = snapshot.agents.map((a) => el("tr",
    el("td", a.agent_id), el("td", a.host), el("td", a.kernels.join(", ")),
    el("td.num", `${a.held.length} / ${a.concurrency}`),
    el("td.num", fmt(a.completed_total || 0)),
    el("td", ago(a.last_heartbeat_ms)), el("td", ago(a.connected_ms)), el("td", a.server_id)));
  box.replaceChildren(rows.length ? el("table",
    el("thead", el("tr", ["Agent", "Host", "Kernels", "Slots busy", "Chunks done", "Last heartbeat", "Connected", "Server"].map((h) => el("th", h)))),
    el("tbody", rows)) : el("p.muted", "No agent is connected."));
}

// ---- one run --------------------------------------------------------------

async function runPage(id) {
  page = "run";
  main.replaceChildren(el("p.muted", "Loading…"));
  let r;
  try { r = await api(`/api/v1/runs/${encodeURIComponent(id)}`); } catch (e) { main.replaceChildren(el("p.error", e.message)); return; }
  const v = {
    head: el("h1", `Run ${r.run_id}`, r.name ? ` (${r.name})` : "", " ", el("span#run-state", state(r.state)), el("span.live", { title: "live" })),
    actions: el("div.controls#actions"),
    progress: el("div.card#progress"),
    outputs: el("div.card#outputs"),
    charts: el("div.grid#charts"),
    best: el("div.card#best"),
    failures: el("div.card#failures"),
  };
  // Failures first when there are any: they are what needs acting on.
  const failures = [el("h2", "Failures"), v.failures];
  put(main, v.head, v.actions, el("div.grid", specCard(r), v.progress), r.chunks.dead ? failures : null,
    el("h2", "Outputs"), v.outputs, el("h2", "Charts"), v.charts, el("h2", "Best points"), v.best,
    r.chunks.dead ? null : failures);
  renderRun(r);
  renderCharts(r);
  renderBest(r, r.output_names[0], false, 10);
  if (runEvents) { runEvents.close(); runEvents = null; }
  let refreshing = false;
  const refresh = async () => {
    if (refreshing) return;
    refreshing = true;
    try { renderRun(await api(`/api/v1/runs/${encodeURIComponent(id)}`)); } finally { setTimeout(() => { refreshing = false; }, 500); }
  };
  follow = () => {
    if (runEvents || page !== "run") return;
    runEvents = new EventSource(`/api/v1/runs/${encodeURIComponent(id)}/events`);
    runEvents.addEventListener("event", (m) => {
      const e = JSON.parse(m.data);
      const p = document.getElementById("progress-text");
      if (p && e.progress) p.textContent = `${e.progress.chunks_done}/${e.progress.chunks_total} chunks done, ${e.progress.chunks_dead} dead, ${fmt(e.progress.params_done)} params`;
      if (e.kind === "ChunkReclaimed") note(`chunk ${e.detail.chunk} reclaimed from ${e.detail.agent_id} (${e.detail.cause})`);
      refresh();
    });
    // The run is over (or the server let go): show its final state; follow
    // again if it goes on (a retry).
    runEvents.addEventListener("end", async () => {
      runEvents.close();
      runEvents = null;
      refresh();
      renderCharts(null, id);
      const now = await api(`/api/v1/runs/${encodeURIComponent(id)}`).catch(() => null);
      if (now && (now.state === "RUNNING" || now.state === "QUEUED")) setTimeout(follow, 1000);
    });
  };
  follow();
}

/** Follow the open run's events (again, after an action restarted it). */
let follow = () => {};

function note(text) {
  const p = document.getElementById("notes");
  if (p) p.prepend(el("li", `${new Date().toLocaleTimeString()} ${text}`));
}

function specCard(r) {
  const rows = [["Kernel", r.kernel], ["Arguments", Object.entries(r.args || {}).map(([k, x]) => `${k}=${x}`).join(" ") || "–"],
    ["Space", r.axes ? r.axes.map((a) => `${a.name}${a.values ? ` (${a.values})` : ""}`).join(" × ") : `p (${r.params})`],
    ["Search", r.random_search ? "random" : "grid"], ["Outputs", (r.output_names || []).join(", ")],
    ["Points", fmt(r.params)], ["Chunks", `${r.chunks.total} × ${r.chunk_size} points`], ["Priority", r.priority],
    ["Max attempts", r.max_attempts], ["Submitted", ago(r.created_ms)]];
  const dl = el("dl.spec", rows.flatMap(([k, x]) => [el("dt", k), el("dd", x)]));
  if (r.trace_url) dl.append(el("dt", "Trace"), el("dd", el("a#trace-link", { href: r.trace_url, target: "_blank", rel: "noopener noreferrer" }, "open the run's trace")));
  const file = (ext) => el(`a#download-${ext}`, { href: `/api/v1/runs/${encodeURIComponent(r.run_id)}/results.${ext}`, download: `${r.run_id}.${ext}` }, `results.${ext}`);
  dl.append(el("dt", "Download"), el("dd", file("csv"), " · ", file("parquet")));
  return el("div.card", el("h2", "Spec"), dl);
}

function renderRun(r) {
  const st = document.getElementById("run-state");
  if (st) st.replaceChildren(state(r.state));
  const prog = document.getElementById("progress");
  if (!prog) return;
  put(prog, el("h2", "Progress"), bar(r.chunks),
    el("p#progress-text", `${r.chunks.done}/${r.chunks.total} chunks done, ${r.chunks.dead} dead, ${fmt(r.params_done)} params`),
    el("p.muted", `${fmt(Math.round(r.params_per_second))} params/s · ETA ${eta(r)} · ${r.chunks.in_flight} in flight, ${r.chunks.queued} queued`),
    r.message ? el("p.muted#message", r.message) : null, el("ul.muted#notes"));
  const acts = document.getElementById("actions");
  const can = me && me.can_act;
  const active = r.state === "RUNNING" || r.state === "QUEUED";
  put(acts,
    el("button.danger#cancel", { disabled: (!can || !active) ? "" : undefined, title: can ? "" : "your token may only read", onclick: async () => { await act(`/api/v1/runs/${r.run_id}/cancel`, { reason: "cancelled from the dashboard" }).catch((e) => alert(e.message)); } }, "Cancel"),
    can ? null : el("span.muted#read-only", "read-only token: you can look, not act"));
  const out = document.getElementById("outputs");
  out.replaceChildren(el("table", el("thead", el("tr", ["Output", "Count", "Mean", "Min", "Best point (min)", "Max"].map((h) => el("th", h)))),
    el("tbody", (r.outputs || []).map((o) => el("tr", el("td", o.name), el("td.num", fmt(o.count)), el("td.num", fmt(o.mean)), el("td.num", fmt(o.min)),
      el("td", o.argmin ? [`#${o.argmin.index}`, ...Object.entries(o.argmin).filter(([k]) => k !== "index").map(([k, x]) => `${k}=${fmt(x)}`)].join(" ") : "–"), el("td.num", fmt(o.max)))))));
  const fail = document.getElementById("failures");
  const dead = r.dead_chunks || [];
  fail.replaceChildren(
    el("div.controls", el("span", `${r.chunks.dead} dead-lettered chunk(s)`),
      el("button.primary#retry", { disabled: (!can || !r.chunks.dead) ? "" : undefined, title: can ? "" : "your token may only read", onclick: async () => {
        try { const x = await act(`/api/v1/runs/${r.run_id}/retry`); note(`${x.chunks_requeued} chunks re-queued`); follow(); } catch (e) { note(e.message); }
      } }, "Retry dead chunks")),
    dead.length ? el("table#dead", el("thead", el("tr", el("th", "Chunk"), el("th", "Attempt"), el("th", "Error"))),
      el("tbody", dead.map((d) => el("tr", el("td.num", d.chunk), el("td.num", d.attempt), el("td", el("pre.err", d.error)))))) : el("p.muted", "None."));
}

async function renderCharts(r, id) {
  if (!r) {
    try { r = await api(`/api/v1/runs/${encodeURIComponent(id)}`); } catch { return; }
  }
  const box = document.getElementById("charts");
  if (!box) return;
  const base = `/api/v1/runs/${encodeURIComponent(r.run_id)}`;
  box.replaceChildren();
  for (const o of r.output_names || []) {
    const c = el("canvas.histogram", { "data-output": o });
    const cap = el("p.muted");
    box.append(el("div.card", el("h2", `Histogram of ${o}`), c, cap));
    api(`${base}/histogram?output=${encodeURIComponent(o)}&bins=40`).then((h) => {
      if (!h.coverage.points) { c.hidden = true; cap.textContent = "no values yet"; return; }
      charts.histogram(c, h);
      cap.textContent = `${fmt(h.coverage.points)} points${h.coverage.stride > 1 ? `, every ${h.coverage.stride}th chunk` : ""}`;
    }).catch((e) => { cap.textContent = e.message; });
  }
  const grid = (r.axes || []).filter((a) => a.values);
  if (!r.random_search && grid.length >= 2) {
    const pick = (id, items, chosen) => el(`select#${id}`, items.map((x) => el("option", x === chosen ? { value: x, selected: "" } : { value: x }, x)));
    const names = grid.map((a) => a.name);
    const sx = pick("hm-x", names, names[names.length - 1]), sy = pick("hm-y", names, names[names.length - 2]);
    const so = pick("hm-output", r.output_names, r.output_names[0]), sr = pick("hm-reduce", ["min", "mean"], "min");
    const c = el("canvas#heatmap"), cap = el("p.muted#heatmap-caption");
    const draw = () => api(`${base}/heatmap?output=${encodeURIComponent(so.value)}&x=${encodeURIComponent(sx.value)}&y=${encodeURIComponent(sy.value)}&reduce=${sr.value}`)
      .then((hm) => { charts.heatmap(c, hm); cap.textContent = `${hm.reduce} of ${hm.output} over the other axes; ${fmt(hm.coverage.points)} points read`; c.dataset.drawn = "1"; })
      .catch((e) => { cap.textContent = e.message; });
    [sx, sy, so, sr].forEach((s) => s.addEventListener("change", draw));
    box.append(el("div.card", el("h2", "Heatmap"), el("div.controls", "x", sx, "y", sy, "output", so, "reduce", sr), c, cap));
    draw();
  }
  if (r.random_search || grid.length < 2) {
    const c1 = el("canvas#scatter"), c2 = el("canvas#parallel"), cap = el("p.muted");
    box.append(el("div.card", el("h2", "Scatter (sample)"), c1, cap), el("div.card", el("h2", "Parallel coordinates (sample)"), c2));
    api(`${base}/points?limit=1000`).then((s) => {
      if (!s.rows.length) { c1.hidden = true; c2.hidden = true; cap.textContent = "no values yet"; return; }
      const names = [...s.axes, ...s.outputs];
      const out = 1 + s.axes.length;
      charts.scatter(c1, s, 1, out, out);
      charts.parallel(c2, s, names, names.length - s.outputs.length);
      cap.textContent = `${s.axes[0]} against ${s.outputs[0]}, ${s.rows.length} points sampled`;
    }).catch((e) => { cap.textContent = e.message; });
  }
}

async function renderBest(r, output, max, k) {
  const box = document.getElementById("best");
  if (!box) return;
  const so = el("select#best-output", (r.output_names || []).map((o) => el("option", o === output ? { selected: "" } : {}, o)));
  const sk = el("select#best-k", [10, 100, 1000].map((n) => el("option", n === k ? { selected: "" } : {}, String(n))));
  const sm = el("select#best-dir", ["smallest", "largest"].map((d) => el("option", (d === "largest") === max ? { selected: "" } : {}, d)));
  const again = () => renderBest(r, so.value, sm.value === "largest", Number(sk.value));
  [so, sk, sm].forEach((s) => s.addEventListener("change", again));
  box.replaceChildren(el("div.controls", "by", so, sm, "top", sk), el("p.muted", "Loading…"));
  let b;
  try { b = await api(`/api/v1/runs/${encodeURIComponent(r.run_id)}/best?output=${encodeURIComponent(output)}&k=${k}&max=${max}`); }
  catch (e) { box.lastChild.textContent = e.message; return; }
  // Index, the axes in the space's order, then the outputs.
  const axes = (r.axes || [{ name: "p" }]).map((a) => a.name);
  const cols = b.points.length ? ["index", ...axes.filter((a) => a in b.points[0]), ...b.outputs] : [];
  let sortBy = null, asc = true;
  const table = el("table#best-table");
  const draw = () => {
    const pts = [...b.points];
    if (sortBy) pts.sort((x, y) => (x[sortBy] < y[sortBy] ? -1 : x[sortBy] > y[sortBy] ? 1 : 0) * (asc ? 1 : -1));
    table.replaceChildren(
      el("thead", el("tr", el("th", "#"), cols.map((c) => el("th.sortable", { onclick: () => { asc = sortBy === c ? !asc : true; sortBy = c; draw(); } }, c + (sortBy === c ? (asc ? " ▲" : " ▼") : ""))))),
      el("tbody", pts.map((p, i) => el("tr", el("td.num", i + 1), cols.map((c) => el("td.num", fmt(p[c])))))));
  };
  draw();
  box.replaceChildren(box.firstChild, table, el("p.muted", `${b.points.length} points; ${b.chunks_read} chunks read`));
}

// ---- routing ----------------------------------------------------------------

function route() {
  if (runEvents && !location.hash.startsWith("#/run/")) { runEvents.close(); runEvents = null; }
  document.getElementById("nav-runs").classList.toggle("active", !location.hash.startsWith("#/agents"));
  document.getElementById("nav-agents").classList.toggle("active", location.hash.startsWith("#/agents"));
  const m = location.hash.match(/^#\/run\/([A-Za-z0-9-]{1,64})$/);
  if (m) return runPage(m[1]);
  if (location.hash === "#/agents") return agentsPage();
  return runsPage();
}

async function start() {
  try { me = await api("/api/v1/whoami"); } catch { return; }
  document.getElementById("who").textContent = `${me.name} (${me.role})`;
  document.getElementById("sign-out").hidden = !me.auth;
  openLive();
  route();
}

// A script error is shown, not swallowed: the page says what broke.
function showError(msg) {
  let b = document.getElementById("page-error");
  if (!b) { b = el("p.error#page-error"); document.body.prepend(b); }
  b.textContent = `Dashboard error: ${msg}`;
}
window.addEventListener("error", (e) => showError(e.message));
window.addEventListener("unhandledrejection", (e) => showError(e.reason?.message || String(e.reason)));

window.addEventListener("hashchange", route);
start();
