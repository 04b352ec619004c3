// The tidings console's page: polls the JSON API (relative to the page, so that it works
// mounted under any path) and draws the charts as SVG. Text from the store is only ever set as
// textContent: nothing the store holds is parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const CHART = { w: 600, h: 220, left: 48, right: 8, top: 10, bottom: 24 };
const MAX_LINES = 8;
const state = { selected: null, history: null, subscriptions: [], writable: false };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

// Calls the API; resolves with { status, body }, rejects with the server's message.
async function api(path, body) {
  const init = { headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    const token = $("token").value;
    if (token) init.headers["X-Tidings-Token"] = token;
    init.body = JSON.stringify(body);
  }
  const response = await fetch("api/" + path, init);
  let json = {};
  try { json = await response.json(); } catch (_) { /* an empty body */ }
  if (!response.ok) throw new Error(json.error || response.status + " " + response.statusText);
  return { status: response.status, body: json };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

// ---- overview and subscriptions ------------------------------------------------------------

async function refreshOverview() {
  const { body } = await api("overview");
  $("head").textContent = body.head;
  $("store").textContent = body.store || "";
  state.writable = body.state_changes;
  $("writable").textContent = body.state_changes ? "" : "read only (no token configured)";
}

function rate(values, times, span) {
  // Per second over the last `span` samples that have values.
  let last = values.length - 1;
  while (last >= 0 && values[last] === null) last--;
  let first = Math.max(0, last - span);
  while (first < last && values[first] === null) first++;
  if (last <= first) return 0;
  const seconds = (times[last] - times[first]) / 1000;
  return seconds > 0 ? Math.max(0, (values[last] - values[first]) / seconds) : 0;
}

async function refreshSubscriptions() {
  const { body } = await api("subscriptions");
  state.subscriptions = body.items;
  const tbody = $("subscriptions").tBodies[0];
  const rows = [];
  for (const s of body.items) {
    const tr = el("tr", { class: "clickable", "data-subscription": s.name });
    if (s.name === state.selected) tr.classList.add("selected");
    const series = seriesOf(s.name);
    const handled = series ? rate(series.checkpoint, state.history.times_ms, 10) : 0;
    tr.append(
      el("td", {}, s.name),
      el("td", {}, s.state),
      el("td", { class: "num" }, s.checkpoint),
      el("td", { class: "num" + (s.lag > 0 ? " lagging" : ""), "data-lag": s.lag }, s.lag),
      el("td", { class: "num" }, handled.toFixed(1)),
      el("td", { class: "num" }, s.parked === 0 ? "0" : s.parked + " in " + s.parked_streams + " stream" + (s.parked_streams === 1 ? "" : "s")),
      el("td", {}, s.holder ? s.holder.host + " pid " + s.holder.pid : ""),
    );
    tr.addEventListener("click", () => select(s.name));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

function seriesOf(name) {
  return state.history && state.history.subscriptions.find((s) => s.name === name);
}

// ---- charts --------------------------------------------------------------------------------

function niceMax(v) {
  if (v <= 5) return 5;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Draws `lines` ({ name, values, cls }) against `times` into the SVG `chart`, over at least
// `minSpan` milliseconds.
function drawChart(chart, times, lines, minSpan) {
  const { w, h, left, right, top, bottom } = CHART;
  const plotW = w - left - right, plotH = h - top - bottom;
  let max = 0;
  for (const l of lines) for (const v of l.values) if (v !== null && v > max) max = v;
  max = niceMax(max);
  const now = times.length ? times[times.length - 1] : Date.now();
  const span = Math.max(minSpan, times.length ? now - times[0] : 0);
  const x = (t) => left + plotW * (1 - (now - t) / span);
  const y = (v) => top + plotH * (1 - v / max);
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    parts.push(svg("line", { class: "axis", x1: left, x2: w - right, y1: y(max * f), y2: y(max * f) }));
    parts.push(svg("text", { x: left - 6, y: y(max * f) + 4, "text-anchor": "end" }, Math.round(max * f)));
  }
  parts.push(svg("text", { x: left, y: h - 6 }, "-" + Math.round(span / 1000) + " s"));
  parts.push(svg("text", { x: w - right, y: h - 6, "text-anchor": "end" }, "now"));
  for (const l of lines) {
    const points = [];
    l.values.forEach((v, i) => { if (v !== null) points.push(x(times[i]).toFixed(1) + "," + y(v).toFixed(1)); });
    let lastValue = null;
    for (let i = l.values.length - 1; i >= 0; i--) if (l.values[i] !== null) { lastValue = l.values[i]; break; }
    parts.push(svg("polyline", {
      class: "series " + l.cls, points: points.join(" "),
      "data-series": l.name, "data-last": lastValue === null ? "" : lastValue,
    }));
  }
  chart.replaceChildren(...parts);
}

function legend(box, lines, unit) {
  box.replaceChildren(...lines.map((l) => {
    let last = null;
    for (let i = l.values.length - 1; i >= 0; i--) if (l.values[i] !== null) { last = l.values[i]; break; }
    const shown = last === null ? "-" : (Number.isInteger(last) ? last : last.toFixed(1));
    return el("span", { class: l.cls, "data-series": l.name, "data-last": last === null ? "" : last }, l.name + ": " + shown + unit);
  }));
}

function lastOf(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return 0;
}

// Per-second rates, each over the `window` samples before it (checkpoints move in commits:
// a rate between two samples alone jumps).
function rates(values, times, window) {
  return values.map((v, i) => {
    const j = i - window;
    if (j < 0 || v === null || values[j] === null) return null;
    const seconds = (times[i] - times[j]) / 1000;
    return seconds > 0 ? Math.max(0, (v - values[j]) / seconds) : null;
  });
}

async function refreshHistory() {
  const { body } = await api("history");
  state.history = body;
  const times = body.times_ms;
  // The selected subscription first, then those furthest behind.
  const chosen = body.subscriptions.slice().sort((a, b) => {
    if (a.name === state.selected) return -1;
    if (b.name === state.selected) return 1;
    return lastOf(b.lag) - lastOf(a.lag) || a.name.localeCompare(b.name);
  }).slice(0, MAX_LINES);
  // At least 30 samples wide, so that a young history does not fill the chart at once.
  const minSpan = 30 * body.interval_ms;
  const window = Math.max(1, Math.round(2000 / body.interval_ms));
  const lagLines = chosen.map((s, i) => ({ name: s.name, values: s.lag, cls: "c" + i }));
  drawChart($("lag-chart"), times, lagLines, minSpan);
  legend($("lag-legend"), lagLines, "");
  const rateLines = [{ name: "appended", values: rates(body.head, times, window), cls: "c7" }];
  const selected = seriesOf(state.selected);
  if (selected) rateLines.push({ name: selected.name + " handled", values: rates(selected.checkpoint, times, window), cls: "c0" });
  drawChart($("rate-chart"), times, rateLines, minSpan);
  legend($("rate-legend"), rateLines, "/s");
  $("rate").textContent = rate(body.head, times, 10).toFixed(1);
  const notes = [];
  if (body.error) notes.push("sampling failed: " + body.error);
  if (body.truncated) notes.push("more than " + body.max_subscriptions + " subscriptions: the first by name are charted");
  if (!times.length) notes.push("no samples yet");
  $("history-note").textContent = notes.join("; ");
}

// ---- one subscription: parked events, reset ------------------------------------------------

function select(name) {
  state.selected = name;
  $("detail").hidden = false;
  $("selected").textContent = name;
  $("reset-result").textContent = "";
  for (const tr of $("subscriptions").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.subscription === name);
  refreshParked().catch((e) => say(e.message, true));
  refreshHistory().catch((e) => say(e.message, true));
}

async function refreshParked() {
  const name = state.selected;
  if (!name) return;
  const { body } = await api("parked" + query({ subscription: name }));
  if (name !== state.selected) return;
  const rows = body.items.map((p) => {
    const tr = el("tr", { "data-position": p.position, "data-stream": p.stream_id });
    const replay = el("button", { type: "button", class: "replay" }, "Replay stream");
    replay.addEventListener("click", () => replayStream(name, p.stream_id));
    const skip = el("button", { type: "button", class: "skip danger" }, "Skip");
    skip.addEventListener("click", () => skipEvent(name, p.position));
    const actions = el("td");
    actions.append(replay, skip);
    tr.append(
      el("td", { class: "num" }, p.position), el("td", {}, p.stream_id), el("td", {}, p.event_type),
      el("td", {}, p.parked_at), el("td", {}, p.reason), actions,
    );
    return tr;
  });
  $("parked").tBodies[0].replaceChildren(...rows);
  $("parked-empty").hidden = rows.length > 0;
}

// What a dry run says, as text for a confirmation.
function describe(items) {
  return items.map((i) => {
    if (i.events) return "Stream " + i.stream_id + ": handle again, in order: " + i.events.map((e) => e.position + " (" + e.event_type + ")").join(", ") + whereApplied(i) + ".";
    if (i.event_type) return "Drop the parked event at position " + i.position + " (" + i.event_type + " of stream " + i.stream_id + "): it will never be handled. " + i.still_parked + " events stay parked.";
    if (i.previous_checkpoint !== undefined) {
      const moves = i.handled_again ? i.handled_again + " events handled again" : i.skipped ? i.skipped + " events never handled" : "the checkpoint does not move";
      return "Checkpoint " + i.previous_checkpoint + " -> " + i.checkpoint + " (head " + i.head + "): " + moves + (i.state_cleared ? "; " + i.state_entries_deleted + " state entries deleted" : "; handler state kept") + ".";
    }
    return JSON.stringify(i);
  }).join("\n");
}

function whereApplied(i) {
  if (i.applied === "here") return ", now";
  if (i.applied === "holder") return ", by the process that runs it (" + i.holder + ")";
  return ", when the subscription next starts";
}

function outcome(res) {
  const done = res.body.items.map((i) => {
    if (i.deferred) return "stream " + i.stream_id + ": recorded; " + i.still_parked + " events are handled when the subscription next starts";
    if (i.handled !== undefined) return "stream " + i.stream_id + ": handled " + i.handled + ", " + i.still_parked + " still parked";
    if (i.still_parked !== undefined) return "skipped position " + i.position + "; " + i.still_parked + " still parked";
    if (i.checkpoint !== undefined) return "checkpoint " + i.previous_checkpoint + " -> " + i.checkpoint;
    return JSON.stringify(i);
  });
  return (res.status === 202 ? "Accepted: " : "Done: ") + (done.join("; ") || res.body.message || "");
}

async function confirmed(path, request) {
  const preview = await api(path, Object.assign({}, request, { dry_run: true }));
  if (!window.confirm(describe(preview.body.items) + "\n\nGo ahead?")) return null;
  return api(path, request);
}

async function act(path, request) {
  try {
    const res = await confirmed(path, request);
    if (res) say(outcome(res));
  } catch (e) {
    say(e.message, true);
  }
  await Promise.allSettled([refreshParked(), refreshSubscriptions()]);
}

function replayStream(name, stream) {
  return act("replay-parked", { subscription: name, stream });
}

function skipEvent(name, position) {
  return act("skip-parked", { subscription: name, position });
}

function resetRequest() {
  return { subscription: state.selected, to: $("reset-to").value.trim(), clear_state: $("reset-clear").checked };
}

async function previewReset() {
  try {
    const res = await api("reset", Object.assign(resetRequest(), { dry_run: true }));
    $("reset-result").textContent = "Dry run, nothing changed. " + describe(res.body.items);
  } catch (e) {
    $("reset-result").textContent = e.message;
  }
}

async function applyReset() {
  try {
    const res = await confirmed("reset", resetRequest());
    if (res) $("reset-result").textContent = outcome(res);
  } catch (e) {
    $("reset-result").textContent = e.message;
  }
  refreshSubscriptions().catch(() => {});
}

// ---- streams and events --------------------------------------------------------------------

async function refreshStreams() {
  const { body } = await api("streams" + query({ category: $("category").value.trim(), limit: 100 }));
  $("streams").tBodies[0].replaceChildren(...body.items.map((s) => {
    const tr = el("tr", { class: "clickable", "data-stream": s.stream_id });
    tr.append(el("td", {}, s.stream_id), el("td", {}, s.category), el("td", { class: "num" }, s.version), el("td", { class: "num" }, s.last_position));
    tr.addEventListener("click", () => showEvents(s.stream_id).catch((e) => say(e.message, true)));
    return tr;
  }));
}

async function showEvents(stream) {
  const { body } = await api("events" + query({ stream, limit: 100 }));
  $("events-title").hidden = false;
  $("events-title").textContent = "Events of " + stream + " (first 100)";
  $("events").hidden = false;
  $("events").tBodies[0].replaceChildren(...body.items.map((e) => {
    const tr = el("tr");
    let payload = e.payload === undefined ? "" : JSON.stringify(e.payload, null, 2);
    if (e.payload_error) payload = "(does not decode: " + e.payload_error + ")\n" + payload;
    const cell = el("td");
    cell.append(el("pre", {}, payload));
    tr.append(el("td", { class: "num" }, e.position), el("td", { class: "num" }, e.stream_version), el("td", {}, e.event_type), el("td", {}, e.timestamp), cell);
    return tr;
  }));
}

// ---- start ---------------------------------------------------------------------------------

let unreachable = false;

async function tick() {
  try {
    await refreshOverview();
    await refreshHistory();
    await refreshSubscriptions();
    if (unreachable) say("");
    unreachable = false;
  } catch (e) {
    unreachable = true;
    say("cannot reach the console: " + e.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const token = $("token");
  token.value = sessionStorage.getItem("tidings-token") || "";
  token.addEventListener("change", () => sessionStorage.setItem("tidings-token", token.value));
  $("reset-preview").addEventListener("click", previewReset);
  $("reset-apply").addEventListener("click", applyReset);
  $("category").addEventListener("change", () => refreshStreams().catch((e) => say(e.message, true)));
  refreshStreams().catch((e) => say(e.message, true));
  tick();
  setInterval(tick, 1000);
  setInterval(() => refreshParked().catch(() => {}), 3000);
});
