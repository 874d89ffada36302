// The Blitzen dashboard: follows /api/events (one status per second) and draws it.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "blitzen-dashboard-token";

function fmtDuration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 1) return ms + "ms";
  if (s < 60) return (ms / 1000).toFixed(1) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let unit = 0;
  while (n >= 1024 && unit + 1 < units.length) { n /= 1024; unit++; }
  return unit === 0 ? `${n} B` : `${n.toFixed(1)} ${units[unit]}`;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function setState(text, cls) {
  const s = $("state");
  s.textContent = text;
  s.className = "state " + (cls || "");
}

function drawChart(counts) {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 22;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...counts);
  ctx.fillStyle = "#6b7385";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(max + "/s", 4, 12);
  ctx.fillText("0", 4, h - 6);
  const step = (w - pad) / counts.length;
  ctx.fillStyle = "#3b6fd8";
  counts.forEach((n, i) => {
    const bar = (n / max) * (h - 20);
    ctx.fillRect(pad + i * step, h - bar - 2, Math.max(1, step - 1), bar);
  });
}

function progress(d) {
  const total = Math.max(1, d.submitted);
  const bar = el("div", { class: "progress", title: `${d.done + d.failed + d.cancelled} of ${d.submitted} finished` });
  for (const part of ["done", "failed", "cancelled"]) {
    bar.append(el("span", { class: part, style: `width:${(100 * d[part]) / total}%` }));
  }
  return bar;
}

function render(status) {
  const s = status.server;
  $("server").textContent = `server ${s.version}, up ${fmtDuration(s.uptime_ms)}${s.durable ? ", durable" : ""}`;
  $("t-queued").textContent = s.queued;
  $("t-waiting").textContent = s.waiting;
  $("t-running").textContent = s.running;
  $("t-prefetched").textContent = s.prefetched;
  $("t-finished").textContent = s.finished;
  $("t-failed").textContent = s.failed;
  $("t-cancelled").textContent = s.cancelled;
  $("t-throughput").textContent = s.throughput.toFixed(1);
  $("t-held").textContent = s.results_held;
  const workers = status.agents.reduce((n, a) => n + a.workers, 0);
  const busy = status.agents.reduce((n, a) => n + a.busy, 0);
  $("t-workers").textContent = `${busy} / ${workers}`;
  drawChart(s.finished_per_second);

  const sessions = $("sessions");
  sessions.replaceChildren(...status.sessions.map((d) => el("tr", { "data-session": d.name },
    el("td", {}, d.name), el("td", {}, d.driver + (d.connected ? "" : " (departed)")),
    el("td", {}, progress(d)), el("td", {}, String(d.submitted)), el("td", {}, String(d.queued)),
    el("td", {}, String(d.waiting)), el("td", {}, String(d.prefetched)), el("td", {}, String(d.running)), el("td", {}, String(d.done)), el("td", {}, String(d.failed)),
    el("td", {}, String(d.cancelled)), el("td", {}, d.throughput.toFixed(1)))));

  const agents = $("agents");
  // What the running tasks hold of what the agent has: "cpu 2/4 · mem 1.0 GiB/16.0 GiB · gpu 1/2".
  function resourcesUsed(a) {
    const parts = [`cpu ${a.used.cpus}/${a.capacity.cpus}`,
      `mem ${fmtBytes(a.used.memory)}/${fmtBytes(a.capacity.memory)}`];
    for (const [name, count] of a.capacity.custom || []) {
      const held = (a.used.custom || []).find(([n]) => n === name);
      parts.push(`${name} ${held ? held[1] : 0}/${count}`);
    }
    return parts.join(" · ");
  }
  if (status.agents.length === 0) {
    agents.replaceChildren(el("p", { class: "none" }, "no agents connected"));
  } else {
    agents.replaceChildren(...status.agents.map((a) => {
      const cells = a.worker_states.map((w) => w.task
        ? el("div", { class: "worker busy", title: `pid ${w.pid}: ${w.task.session} task ${w.task.id}` },
            `${w.task.task} #${w.task.id} · ${fmtDuration(w.task.for_ms)}`)
        : el("div", { class: "worker idle", title: `pid ${w.pid}` }, "idle"));
      for (let i = a.worker_states.length; i < a.workers; i++) {
        cells.push(el("div", { class: "worker idle" }, "starting"));
      }
      return el("div", { class: "agent", "data-agent": a.host },
        el("div", { class: "head" }, el("b", {}, a.host),
          ...[`${a.busy}/${a.workers} busy`, `${a.held} held`, `${a.done} done`, `${a.failed} failed`,
            resourcesUsed(a),
            `heard ${fmtDuration(a.last_heard_ms)} ago`, `connected ${fmtDuration(a.connected_for_ms)}`]
            .map((t) => el("span", {}, t))),
        el("div", { class: "workers" }, ...cells));
    }));
  }

  const failures = $("failures");
  const open = new Set([...failures.querySelectorAll("details[open]")].map((d) => d.dataset.key));
  if (status.recent_failures.length === 0) {
    failures.replaceChildren(el("p", { class: "none" }, "none"));
  } else {
    failures.replaceChildren(...status.recent_failures.slice().reverse().map((f) => {
      const key = `${f.session}/${f.id}`;
      const where = f.host ? ` on ${f.host}` + (f.pid ? ` (worker ${f.pid})` : "") : "";
      const details = el("details", { class: "failure", "data-key": key },
        el("summary", {}, `${f.kind}: session ${f.session}, task ${f.id} \`${f.task}\`${where}, ${new Date(f.at_unix_ms).toLocaleTimeString()}`),
        el("pre", {}, f.error));
      if (open.has(key)) details.open = true;
      return details;
    }));
  }
}

function start(token) {
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  const events = new EventSource("api/events" + query);
  events.addEventListener("status", (e) => {
    setState("live", "live");
    render(JSON.parse(e.data));
  });
  events.onerror = () => {
    setState("reconnecting…", "down");
  };
}

// Asks /api/status first: a 401 means this dashboard wants its token.
async function open() {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  try {
    const reply = await fetch("api/status" + query);
    if (reply.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      setState("needs its token", "down");
      $("board").hidden = true;
      $("token-form").hidden = false;
      return;
    }
    render(await reply.json());
    start(token);
  } catch (e) {
    setState("cannot reach the server", "down");
    setTimeout(open, 2000);
  }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token-form").hidden = true;
  $("board").hidden = false;
  // A script error is shown, not swallowed: the page would silently stop following otherwise.
window.addEventListener("error", (e) => setState("script error: " + e.message, "down"));

open();
});

// A script error is shown, not swallowed: the page would silently stop following otherwise.
window.addEventListener("error", (e) => setState("script error: " + e.message, "down"));

open();
