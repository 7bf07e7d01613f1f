// The monitor page: fetches /dashboard/snapshot (monitor_snapshot(), sql/0140) every few
// seconds and draws it as SVG. Plain script, no library: served by the app itself.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#1c7ed6", "#f08c00", "#7048e8", "#0ca678", "#e64980", "#495057"];

function el(name, attributes, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function text(parent, x, y, content, attributes) {
  const node = el("text", Object.assign({ x, y }, attributes || {}), parent);
  node.textContent = content;
  return node;
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  return svg;
}

function size(svg) {
  const box = svg.viewBox.baseVal;
  return { w: box.width, h: box.height };
}

function niceMax(value) {
  if (value <= 1) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

function empty(svg, message) {
  const { w, h } = size(svg);
  text(svg, w / 2, h / 2, message, { "text-anchor": "middle" });
}

function axes(svg, left, top, width, height, max, labels) {
  el("line", { x1: left, y1: top + height, x2: left + width, y2: top + height, class: "axis" }, svg);
  for (const fraction of [0, 0.5, 1]) {
    const y = top + height - fraction * height;
    el("line", { x1: left, y1: y, x2: left + width, y2: y, class: "axis" }, svg);
    text(svg, left - 6, y + 4, String(Math.round(max * fraction * 100) / 100), { "text-anchor": "end" });
  }
  labels.forEach(([fraction, label]) => {
    text(svg, left + fraction * width, top + height + 16, label, { "text-anchor": "middle" });
  });
}

const MINUTE_LABELS = [[0, "-60 min"], [0.5, "-30 min"], [1, "now"]];

function drawQueue(svg, queue) {
  clear(svg);
  const { w, h } = size(svg);
  const lines = [];
  queue.series.forEach((s) => {
    lines.push({ name: `${s.job_type} pending`, values: s.pending });
    lines.push({ name: `${s.job_type} processing`, values: s.processing });
  });
  if (!lines.length) return empty(svg, "No jobs in the last hour");
  const left = 50, top = 10, width = w - left - 250, height = h - 40;
  const max = niceMax(Math.max(1, ...lines.flatMap((l) => l.values)));
  axes(svg, left, top, width, height, max, MINUTE_LABELS);
  lines.forEach((line, index) => {
    const n = line.values.length;
    const points = line.values.map((v, i) =>
      `${(left + (n > 1 ? i / (n - 1) : 1) * width).toFixed(1)},${(top + height - (v / max) * height).toFixed(1)}`);
    const colour = PALETTE[index % PALETTE.length];
    el("polyline", {
      points: points.join(" "), class: "line", stroke: colour,
      "data-series": line.name, "data-last": line.values[n - 1],
    }, svg);
    const y = top + 14 + index * 18;
    el("rect", { x: left + width + 16, y: y - 9, width: 10, height: 10, fill: colour }, svg);
    text(svg, left + width + 32, y, `${line.name}: ${line.values[n - 1]}`, { class: "value" });
  });
}

function drawThroughput(svg, throughput) {
  clear(svg);
  const { w, h } = size(svg);
  const minutes = throughput.per_minute;
  const left = 50, top = 10, width = w - left - 20, height = h - 40;
  const max = niceMax(Math.max(1, ...minutes.map((m) => m.completed + m.failed)));
  axes(svg, left, top, width, height, max, MINUTE_LABELS);
  const slot = width / minutes.length;
  minutes.forEach((m, i) => {
    const x = left + i * slot + 1;
    const done = (m.completed / max) * height, failed = (m.failed / max) * height;
    if (m.completed) {
      el("rect", { x, y: top + height - done, width: slot - 2, height: done,
                   class: "bar-completed", "data-count": m.completed }, svg);
    }
    if (m.failed) {
      el("rect", { x, y: top + height - done - failed, width: slot - 2, height: failed,
                   class: "bar-failed", "data-count": m.failed }, svg);
    }
  });
}

function arc(cx, cy, r, from, to) {
  const start = [cx + r * Math.cos(from), cy + r * Math.sin(from)];
  const end = [cx + r * Math.cos(to), cy + r * Math.sin(to)];
  const large = to - from > Math.PI ? 1 : 0;
  return `M ${start[0].toFixed(2)} ${start[1].toFixed(2)} A ${r} ${r} 0 ${large} 1 ${end[0].toFixed(2)} ${end[1].toFixed(2)}`;
}

function gauge(svg, fraction, label, detail, bad) {
  clear(svg);
  const { w } = size(svg);
  const cx = w / 2, cy = 130, r = 80;
  el("path", { d: arc(cx, cy, r, Math.PI, 2 * Math.PI), class: "gauge-track" }, svg);
  const f = Math.max(0, Math.min(1, fraction));
  if (f > 0) {
    el("path", { d: arc(cx, cy, r, Math.PI, Math.PI + Math.max(f, 0.005) * Math.PI),
                 class: bad ? "gauge-fill bad" : "gauge-fill" }, svg);
  }
  text(svg, cx, cy - 10, label, { "text-anchor": "middle", class: "big" });
  text(svg, cx, cy + 30, detail, { "text-anchor": "middle" });
}

function drawFailureRate(svg, throughput) {
  const rate = throughput.failure_rate;
  const ended = throughput.completed + throughput.failed;
  gauge(svg, rate || 0, rate === null ? "–" : `${(rate * 100).toFixed(1)}%`,
        `${throughput.failed} failed of ${ended} ended`, rate > 0.1);
  svg.dataset.value = rate === null ? "" : String(rate);
}

function drawProvider(svg, provider) {
  const used = provider.creates_last_minute;
  const limit = provider.limit_per_minute;
  const scale = limit || Math.max(60, used);
  const detail = (limit ? `of ${limit} a minute` : "no limit configured") +
    ` · ${provider.predictions_running} running` +
    (provider.paused_until ? " · paused" : "");
  gauge(svg, used / scale, String(used), detail, limit && used >= limit);
  svg.dataset.value = String(used);
}

function drawBars(svg, rows, emptyMessage) {
  // rows: [{label, parts: [{value, className, title}], note}]
  clear(svg);
  if (!rows.length) return empty(svg, emptyMessage);
  const { w } = size(svg);
  const left = 120, width = w - left - 120, rowHeight = Math.min(40, 180 / rows.length);
  const max = niceMax(Math.max(1, ...rows.flatMap((r) => r.parts.map((p) => p.value))));
  rows.forEach((row, i) => {
    const y = 10 + i * rowHeight;
    text(svg, left - 8, y + rowHeight / 2 + 4, row.label, { "text-anchor": "end" });
    const barHeight = (rowHeight - 6) / row.parts.length;
    row.parts.forEach((part, j) => {
      const bar = el("rect", {
        x: left, y: y + j * barHeight, width: Math.max(1, (part.value / max) * width),
        height: barHeight - 1, class: part.className, "data-value": part.value,
      }, svg);
      if (part.title) el("title", {}, bar).textContent = part.title;
      text(svg, left + (part.value / max) * width + 4, y + j * barHeight + barHeight / 2 + 3,
           part.text, { class: "value" });
    });
  });
}

function drawDurations(svg, durations) {
  drawBars(svg, durations.map((d) => ({
    label: `${d.model} (${d.count})`,
    parts: [
      { value: d.p50_seconds, className: "p50", text: `p50 ${d.p50_seconds}s` },
      { value: d.p95_seconds, className: "p95", text: `p95 ${d.p95_seconds}s` },
    ],
  })), "No generation completed in the last hour");
}

function drawWorkers(svg, workers) {
  drawBars(svg, workers.map((worker) => {
    const state = worker.alive === null ? "unknown" : worker.alive ? "alive" : "dead";
    const held = worker.jobs.map((j) => `${j.job_type} ${j.job_id} (attempt ${j.attempt})`);
    return {
      label: worker.worker_id.length > 22 ? `${worker.worker_id.slice(0, 21)}…` : worker.worker_id,
      parts: [{
        value: worker.holding, className: state,
        text: `${worker.holding} held · ${state}`,
        title: `${worker.worker_id}\n${held.join("\n") || "holds nothing"}`,
      }],
    };
  }), "No worker registered or holding a job");
  svg.dataset.workers = workers.map((w) => w.worker_id).join(" ");
}

function drawFailures(list, failures) {
  while (list.firstChild) list.removeChild(list.firstChild);
  if (!failures.length) {
    const item = document.createElement("li");
    item.textContent = "No failure in the last hour";
    list.appendChild(item);
    return;
  }
  for (const f of failures) {
    const item = document.createElement("li");
    const message = document.createElement("code");
    message.textContent = f.error || f.error_kind || f.outcome;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = ` ${f.job_type} · attempt ${f.attempt} · ${f.outcome}` +
      (f.error_kind ? ` (${f.error_kind})` : "") + ` · ${f.worker || "?"} · ` +
      new Date(f.finished_at).toLocaleTimeString();
    item.append(message, meta);
    list.appendChild(item);
  }
}

function render(snapshot) {
  const metrics = {
    pending: snapshot.queue.pending,
    processing: snapshot.queue.processing,
    completed: snapshot.throughput.completed,
    failed: snapshot.throughput.failed,
    creates: snapshot.provider.creates_last_minute,
  };
  for (const [name, value] of Object.entries(metrics)) {
    const node = document.querySelector(`[data-metric="${name}"]`);
    node.textContent = String(value);
    node.dataset.value = String(value);
  }
  drawQueue(document.getElementById("chart-queue"), snapshot.queue);
  drawThroughput(document.getElementById("chart-throughput"), snapshot.throughput);
  drawFailureRate(document.getElementById("chart-failure-rate"), snapshot.throughput);
  drawProvider(document.getElementById("chart-provider"), snapshot.provider);
  drawDurations(document.getElementById("chart-durations"), snapshot.durations);
  drawWorkers(document.getElementById("chart-workers"), snapshot.workers);
  drawFailures(document.getElementById("failures"), snapshot.failures);
  document.body.dataset.generatedAt = snapshot.generated_at;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch(document.body.dataset.snapshotUrl,
                                 { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.assign(document.body.dataset.loginUrl);
      return;
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    render(body);
    status.dataset.state = "ok";
    status.textContent = `updated ${new Date(body.generated_at).toLocaleTimeString()}`;
  } catch (error) {
    status.dataset.state = "error";
    status.textContent = `not updated: ${error.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  const seconds = Number(document.body.dataset.refreshSeconds) || 5;
  window.setInterval(refresh, seconds * 1000);
});
