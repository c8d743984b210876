// afs dashboard: polls this server's JSON API and draws inline SVG charts. No libraries,
// no external fetch. After each refresh the hidden #afs-status element says what was
// drawn (data-ready, data-updates, data-errors, ...), which the headless-browser test reads.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2f6fdf", "#e0732c", "#1f8a4c", "#9b4dca", "#c23b3b", "#148f99", "#8a6d1f", "#d6478f"];
  const state = { hours: 48, updates: 0, errors: 0, fetchErrors: 0, colors: new Map(), timer: null };
  const status = document.getElementById("afs-status");

  // Any script error is counted where the test can see it.
  window.addEventListener("error", function (event) {
    state.errors += 1;
    status.dataset.errors = String(state.errors);
    status.dataset.lastError = String(event.message);
  });
  window.addEventListener("unhandledrejection", function (event) {
    state.errors += 1;
    status.dataset.errors = String(state.errors);
    status.dataset.lastError = String(event.reason);
  });

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      node.setAttribute(key, value);
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      node.setAttribute(key, String(value));
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function colorOf(model) {
    if (!state.colors.has(model)) {
      state.colors.set(model, PALETTE[state.colors.size % PALETTE.length]);
    }
    return state.colors.get(model);
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function utc(iso, withDate) {
    if (!iso) {
      return "–";
    }
    const d = new Date(iso);
    const time = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    return withDate === false ? time : d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + time;
  }

  // "06-01 12:00": month, day and time, for narrow table columns.
  function shortUtc(iso) {
    if (!iso) {
      return "–";
    }
    const d = new Date(iso);
    return pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
  }

  function fixed(x, digits) {
    return x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(digits);
  }

  function pct(x) {
    return x === null || x === undefined || !isFinite(x) ? "–" : (100 * x).toFixed(1) + "%";
  }

  function count(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) {
      return "–";
    }
    if (seconds < 60) {
      return seconds.toFixed(1) + " s";
    }
    if (seconds < 3600) {
      return Math.round(seconds / 60) + " min";
    }
    return (seconds / 3600).toFixed(1) + " h";
  }

  async function getJson(path) {
    const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) {
      throw new Error(path + " answered " + response.status);
    }
    return response.json();
  }

  // ---- header --------------------------------------------------------------------------

  function renderFacts(summary) {
    const s = summary.status || {};
    const usage = summary.usage || {};
    document.getElementById("fact-champion").textContent = s.champion_model || "none";
    document.getElementById("fact-challenger").textContent = s.challenger_model || "none";
    document.getElementById("fact-records").textContent = count(usage.total);
    document.getElementById("fact-day").textContent = count((summary.usage_last_24h || {}).total);
    document.getElementById("fact-quality").textContent = fixed(usage.avg_quality_score, 3);
    const server = summary.server || {};
    const loopText = server.with_loop
      ? s.iterations + " iterations, last " + utc(s.last_check, false)
      : s.iterations > 0 ? s.iterations + " iterations (elsewhere)" : "not running here";
    document.getElementById("fact-loop").textContent = loopText;
  }

  // ---- line charts ---------------------------------------------------------------------

  // The value range a chart shows: the data's, padded, at least 0.05 wide, within 0..1,
  // so an effect of a few hundredths (the size the judge decides on) is visible.
  function valueRange(series, pick) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const line of series) {
      for (const p of line.points) {
        const v = pick(p);
        if (v !== null && v !== undefined && isFinite(v)) {
          lo = Math.min(lo, v);
          hi = Math.max(hi, v);
        }
      }
    }
    if (!isFinite(lo)) {
      return { lo: 0, hi: 1 };
    }
    const padBy = Math.max((hi - lo) * 0.15, 0.01);
    lo = Math.max(0, lo - padBy);
    hi = Math.min(1, hi + padBy);
    if (hi - lo < 0.05) {
      const mid = (hi + lo) / 2;
      lo = Math.max(0, Math.min(mid - 0.025, 0.95));
      hi = Math.min(1, lo + 0.05);
    }
    return { lo: lo, hi: hi };
  }

  // Tick values for [lo, hi]: about five, at a round step.
  function ticks(lo, hi) {
    const step = [0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25].find(function (s) { return (hi - lo) / s <= 5; }) || 0.25;
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) {
      out.push(v);
    }
    return { values: out, digits: step < 0.01 ? 3 : 2 };
  }

  // What a mark on the time axis says, by event kind.
  const MARKS = { set_champion: "champion", deploy: "deploy", promote: "promote", rollback: "rollback" };

  // Draws one line per model of `series` (value picked by `pick`) over the window
  // [since, until], on the value range of the data, with a dashed mark at each deploy,
  // promotion and rollback of `events`; returns the number of points drawn.
  function lineChart(container, series, pick, since, until, events) {
    const width = Math.max(container.clientWidth || 560, 280);
    const height = 210;
    const m = { top: 14, right: 22, bottom: 24, left: 42 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const x0 = since.getTime();
    const x1 = Math.max(until.getTime(), x0 + 3600 * 1000);
    const range = valueRange(series, pick);
    const x = function (t) { return m.left + ((t - x0) / (x1 - x0)) * plotW; };
    const y = function (v) { return m.top + (1 - (Math.min(range.hi, Math.max(range.lo, v)) - range.lo) / (range.hi - range.lo)) * plotH; };
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, height: height, role: "img" });

    const yTicks = ticks(range.lo, range.hi);
    for (const v of yTicks.values) {
      root.appendChild(svg("line", { x1: m.left, x2: width - m.right, y1: y(v), y2: y(v), stroke: "#edf0f4" }));
      root.appendChild(svg("text", { x: m.left - 6, y: y(v) + 3, "text-anchor": "end" }, v.toFixed(yTicks.digits)));
    }
    const hourMs = 3600 * 1000;
    const spanHours = (x1 - x0) / hourMs;
    const stepHours = [1, 2, 3, 6, 12, 24, 48, 72, 168].find(function (h) { return spanHours / h <= 8; }) || 168;
    const firstTick = Math.ceil(x0 / (stepHours * hourMs)) * stepHours * hourMs;
    for (let t = firstTick; t <= x1; t += stepHours * hourMs) {
      root.appendChild(svg("line", { x1: x(t), x2: x(t), y1: m.top, y2: m.top + plotH, stroke: "#f3f5f8" }));
      const d = new Date(t);
      const label = stepHours >= 24 ? pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) : pad(d.getUTCHours()) + ":00";
      root.appendChild(svg("text", { x: x(t), y: height - 8, "text-anchor": "middle" }, label));
    }
    root.appendChild(svg("line", { x1: m.left, x2: m.left, y1: m.top, y2: m.top + plotH, stroke: "#c9cfd8" }));

    let marks = 0;
    for (const e of events) {
      const t = new Date(e.at).getTime();
      if (!MARKS[e.kind] || !(t >= x0 && t <= x1)) {
        continue;
      }
      const mark = svg("g", { class: "mark mark-" + e.kind });
      mark.appendChild(svg("line", { x1: x(t), x2: x(t), y1: m.top, y2: m.top + plotH }));
      mark.appendChild(svg("text", { x: x(t) + 3, y: m.top - 3 }, MARKS[e.kind]));
      mark.appendChild(svg("title", {}, MARKS[e.kind] + " " + (e.model || "") + " at " + utc(e.at) + (e.reason ? ": " + e.reason : "")));
      root.appendChild(mark);
      marks += 1;
    }

    let points = 0;
    for (const line of series) {
      const color = colorOf(line.model);
      const values = line.points
        .map(function (p) { return { t: new Date(p.hour).getTime() + hourMs / 2, v: pick(p), p: p }; })
        .filter(function (p) { return p.v !== null && p.v !== undefined && isFinite(p.v); });
      // Hours without data break the line instead of being bridged.
      let d = "";
      let previous = null;
      for (const p of values) {
        const joined = previous !== null && p.t - previous.t <= hourMs * 1.5;
        d += (joined ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.v).toFixed(1) + " ";
        previous = p;
      }
      if (d) {
        root.appendChild(svg("path", { d: d.trim(), fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }));
      }
      for (const p of values) {
        const dot = svg("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.6, fill: color });
        dot.appendChild(svg("title", {}, line.model + " " + utc(p.p.hour) + ": " + p.v.toFixed(3) + " (" + p.p.total + " records)"));
        root.appendChild(dot);
        points += 1;
      }
    }
    if (points === 0) {
      root.appendChild(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data in this window"));
    }
    container.replaceChildren(root);
    container.dataset.series = String(series.length);
    container.dataset.points = String(points);
    container.dataset.marks = String(marks);
    container.dataset.yMin = range.lo.toFixed(3);
    container.dataset.yMax = range.hi.toFixed(3);
    return points;
  }

  function renderSeries(data, marks) {
    const since = new Date(data.since);
    const until = new Date(data.until || data.now);
    const now = new Date(data.now);
    const models = data.models || [];
    const events = (marks && marks.events) || [];
    const quality = lineChart(document.getElementById("chart-quality"), models, function (p) { return p.avg_quality_score; }, since, until, events);
    const feedback = lineChart(document.getElementById("chart-feedback"), models, function (p) { return p.positive_rate; }, since, until, events);
    // The window follows the data: a database whose newest record is older than this hour
    // (the demo's simulated weeks) is shown up to that record, and the note says so.
    const note = document.getElementById("window-note");
    const behind = now.getTime() - until.getTime() > 3600 * 1000;
    note.hidden = !behind;
    note.textContent = behind ? "No records since " + utc(data.until) + " UTC; showing the " + state.hours + " h up to then." : "";
    status.dataset.windowEnd = data.until || data.now;
    status.dataset.marks = document.getElementById("chart-quality").dataset.marks;
    const legend = document.getElementById("legend");
    legend.replaceChildren();
    for (const line of models) {
      const item = el("span");
      const swatch = el("i");
      swatch.style.background = colorOf(line.model);
      item.appendChild(swatch);
      const total = line.points.reduce(function (sum, p) { return sum + p.total; }, 0);
      item.appendChild(document.createTextNode(line.model + " (" + count(total) + " records)"));
      legend.appendChild(item);
    }
    status.dataset.qualityPoints = String(quality);
    status.dataset.feedbackPoints = String(feedback);
    status.dataset.models = String(models.length);
  }

  // ---- traffic -------------------------------------------------------------------------

  function bar(container, parts, emptyText) {
    container.replaceChildren();
    const total = parts.reduce(function (sum, p) { return sum + p.value; }, 0);
    if (total <= 0) {
      container.appendChild(el("div", { class: "empty" }, emptyText));
      container.dataset.models = "0";
      return;
    }
    for (const p of parts) {
      const share = p.value / total;
      const segment = el("div", { title: p.label + ": " + pct(share) }, share >= 0.08 ? p.label + " " + pct(share) : "");
      segment.style.width = (100 * share).toFixed(2) + "%";
      segment.style.background = colorOf(p.model);
      container.appendChild(segment);
    }
    container.dataset.models = String(parts.length);
  }

  function renderTraffic(summary, series) {
    const weights = (summary.traffic_split || []).map(function (t) { return { model: t.model, label: t.model, value: t.share }; });
    bar(document.getElementById("traffic-weights"), weights, "no champion set");
    const observed = (series.models || []).map(function (line) {
      return { model: line.model, label: line.model, value: line.points.reduce(function (sum, p) { return sum + p.total; }, 0) };
    });
    document.getElementById("traffic-observed-caption").textContent = "Requests logged in the last " + series.hours + " h";
    bar(document.getElementById("traffic-observed"), observed, "no requests in this window");
    status.dataset.trafficModels = String(weights.length);

    const weightOf = new Map((summary.traffic_split || []).map(function (t) { return [t.model, t.share]; }));
    const rows = (series.models || []).map(function (line) {
      const sum = function (f) { return line.points.reduce(function (acc, p) { return acc + f(p); }, 0); };
      const samples = sum(function (p) { return p.quality_samples; });
      const quality = samples > 0 ? sum(function (p) { return (p.avg_quality_score || 0) * p.quality_samples; }) / samples : null;
      const withFeedback = sum(function (p) { return p.with_feedback; });
      const up = withFeedback > 0 ? sum(function (p) { return p.positive_feedback; }) / withFeedback : null;
      const name = el("span");
      const swatch = el("i", { class: "swatch" });
      swatch.style.background = colorOf(line.model);
      name.appendChild(swatch);
      name.appendChild(document.createTextNode(line.model));
      return [name, weightOf.has(line.model) ? pct(weightOf.get(line.model)) : "–", count(sum(function (p) { return p.total; })),
        fixed(quality, 3), count(withFeedback), pct(up)];
    });
    fillTable("models", rows, 6, "no records in this window");
  }

  // ---- experiment ----------------------------------------------------------------------

  function badge(text) {
    return el("span", { class: "badge " + text }, text.replace(/_/g, " "));
  }

  // One row per metric: its always-valid interval for challenger − champion, the point
  // estimate, zero, and (for guardrails) the margin the test is centred on. Metrics have
  // different units (a rate, milliseconds), so every value is drawn relative to the
  // champion's value, on one percent scale.
  function intervalPlot(metrics) {
    const width = 620;
    const rowH = 30;
    const m = { top: 8, right: 215, bottom: 22, left: 150 };
    const height = m.top + m.bottom + metrics.length * rowH;
    const rel = function (r, v) {
      const base = r.champion.value;
      return v === null || v === undefined || !isFinite(v) || !base ? null : v / Math.abs(base);
    };
    let lo = -0.05;
    let hi = 0.05;
    for (const r of metrics) {
      for (const v of [r.difference, r.null_difference].concat(r.interval || [])) {
        const x = rel(r, v);
        if (x !== null) {
          lo = Math.min(lo, x);
          hi = Math.max(hi, x);
        }
      }
    }
    lo = Math.max(lo * 1.1, -1);
    hi = Math.min(hi * 1.1, 1);
    const x = function (v) { return m.left + ((Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo)) * (width - m.left - m.right); };
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, height: height, role: "img" });
    root.appendChild(svg("line", { x1: x(0), x2: x(0), y1: m.top - 4, y2: height - m.bottom, stroke: "#6a7383", "stroke-dasharray": "2 2" }));
    root.appendChild(svg("text", { x: x(lo), y: height - 6, "text-anchor": "start" }, (100 * lo).toFixed(0) + "%"));
    root.appendChild(svg("text", { x: x(0), y: height - 6, "text-anchor": "middle" }, "0"));
    root.appendChild(svg("text", { x: x(hi), y: height - 6, "text-anchor": "end" }, "+" + (100 * hi).toFixed(0) + "%"));
    let intervals = 0;
    metrics.forEach(function (r, i) {
      const cy = m.top + i * rowH + rowH / 2;
      const name = r.metric.replace(/_/g, " ") + (r.role === "guardrail" ? " (guardrail)" : " (primary)");
      root.appendChild(svg("text", { x: m.left - 8, y: cy + 3, "text-anchor": "end" }, name));
      const margin = rel(r, r.null_difference);
      if (margin !== null && margin !== 0) {
        root.appendChild(svg("line", { x1: x(margin), x2: x(margin), y1: cy - 10, y2: cy + 10, stroke: "#b7791f", "stroke-width": 1.5 }));
      }
      const color = r.verdict === "better" || r.verdict === "within_margin" ? "#1f8a4c"
        : r.verdict === "worse" || r.verdict === "violated" ? "#c23b3b" : "#2f6fdf";
      const lower = r.interval ? rel(r, r.interval[0]) : null;
      const upper = r.interval ? rel(r, r.interval[1]) : null;
      if (lower !== null && upper !== null) {
        root.appendChild(svg("line", { x1: x(lower), x2: x(upper), y1: cy, y2: cy, stroke: color, "stroke-width": 5, "stroke-linecap": "round", opacity: 0.45 }));
        intervals += 1;
      }
      const point = rel(r, r.difference);
      if (point !== null) {
        const dot = svg("circle", { cx: x(point), cy: cy, r: 4, fill: color });
        dot.appendChild(svg("title", {}, r.metric + ": challenger − champion = " + fixed(r.difference, 4) +
          (r.interval ? ", interval [" + fixed(r.interval[0], 4) + ", " + fixed(r.interval[1], 4) + "]" : ", interval not started") +
          "; champion " + fixed(r.champion.value, 4) + " (n=" + r.champion.n + "), challenger " + fixed(r.challenger.value, 4) + " (n=" + r.challenger.n + ")"));
        root.appendChild(dot);
      }
      const signed = function (v) { return v === null ? "–" : (v >= 0 ? "+" : "") + (100 * v).toFixed(1) + "%"; };
      const text = lower !== null ? signed(point) + " [" + signed(lower) + ", " + signed(upper) + "]" : signed(point);
      root.appendChild(svg("text", { x: width - m.right + 10, y: cy + 3 }, text + "  " + r.verdict.replace(/_/g, " ")));
    });
    return { node: root, intervals: intervals };
  }

  function renderExperiment(data) {
    const box = document.getElementById("experiment");
    box.replaceChildren();
    const e = data.experiment;
    if (!e) {
      box.dataset.state = "none";
      box.dataset.metrics = "0";
      box.dataset.intervals = "0";
      box.appendChild(el("p", { class: "muted" }, "No experiment running."));
      const last = data.last_ended;
      if (last) {
        const p = el("p");
        p.appendChild(document.createTextNode("Last: #" + last.id + " " + last.challenger + " vs " + last.champion + " ended " + utc(last.ended_at) + " "));
        p.appendChild(badge(last.status));
        box.appendChild(p);
      }
      return;
    }
    box.dataset.state = "running";
    const c = data.comparison;
    const head = el("p", { class: "exp-head" });
    head.appendChild(el("strong", {}, "#" + e.id + " " + e.challenger));
    head.appendChild(document.createTextNode(" (" + pct(e.challenger_weight) + " of traffic) vs champion "));
    head.appendChild(el("strong", {}, e.champion));
    head.appendChild(document.createTextNode(" since " + utc(e.started_at) + (c ? ", " + c.elapsed_hours.toFixed(1) + " h" : "")));
    box.appendChild(head);
    if (!c) {
      box.dataset.metrics = "0";
      box.dataset.intervals = "0";
      return;
    }
    const reason = el("p", { class: "exp-reason" });
    reason.appendChild(badge(c.decision));
    reason.appendChild(document.createTextNode(" " + c.reason));
    box.appendChild(reason);
    box.appendChild(el("div", { class: "exp-counts" },
      "requests: champion " + count(c.requests.champion) + ", challenger " + count(c.requests.challenger) +
      " · feedback: " + count(c.feedback.champion) + " / " + count(c.feedback.challenger) +
      " · sample ratio: expected " + pct(c.srm.expected_challenger_share) + ", observed " + pct(c.srm.observed_challenger_share) +
      (c.srm.mismatch ? " (MISMATCH)" : "")));
    const plot = intervalPlot(c.metrics || []);
    box.appendChild(plot.node);
    box.dataset.metrics = String((c.metrics || []).length);
    box.dataset.intervals = String(plot.intervals);
    box.dataset.decision = c.decision;
  }

  // ---- tables --------------------------------------------------------------------------

  function fillTable(id, rows, columns, emptyText) {
    const table = document.getElementById(id);
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = el("tr", { class: "none" });
      const td = el("td", { colspan: String(columns) }, emptyText);
      tr.appendChild(td);
      body.appendChild(tr);
    }
    for (const cells of rows) {
      const tr = el("tr");
      for (const cell of cells) {
        const td = el("td");
        if (cell instanceof Node) {
          td.appendChild(cell);
        } else {
          td.textContent = cell === null || cell === undefined ? "–" : String(cell);
          td.title = td.textContent;
        }
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.dataset.rows = String(rows.length);
  }

  function renderRuns(data) {
    const rows = (data.runs || []).map(function (r) {
      return [r.id, badge(r.status), r.trigger_type, shortUtc(r.started_at), duration(r.duration_secs),
        r.n_samples === null ? "–" : count(r.n_samples), r.model_path || r.error || "–"];
    });
    fillTable("runs", rows, 7, "no retrain runs yet");
    status.dataset.runs = String(rows.length);
  }

  function renderHistory(data) {
    const rows = (data.events || []).map(function (e) {
      return [shortUtc(e.at), e.kind.replace(/_/g, " "), e.model || "–", e.decision ? badge(e.decision) : "–", e.reason || "–"];
    });
    fillTable("history", rows, 5, "no experiment events yet");
    status.dataset.events = String(rows.length);
  }

  // ---- refresh loop --------------------------------------------------------------------

  async function refresh() {
    const banner = document.getElementById("banner");
    try {
      const results = await Promise.all([
        getJson("/v1/status"),
        getJson("/v1/series?end=latest&hours=" + state.hours),
        getJson("/v1/experiment"),
        getJson("/v1/runs?limit=12"),
        getJson("/v1/history?limit=12"),
        getJson("/v1/history?limit=500&kinds=set_champion,deploy,promote,rollback"),
      ]);
      const summary = results[0];
      const series = results[1];
      renderFacts(summary);
      renderSeries(series, results[5]);
      renderTraffic(summary, series);
      renderExperiment(results[2]);
      renderRuns(results[3]);
      renderHistory(results[4]);
      banner.hidden = true;
      state.updates += 1;
      status.dataset.updates = String(state.updates);
      status.dataset.ready = "1";
      document.getElementById("updated").textContent = "updated " + utc(new Date().toISOString(), false) + " UTC";
    } catch (err) {
      state.fetchErrors += 1;
      status.dataset.fetchErrors = String(state.fetchErrors);
      banner.textContent = "Cannot refresh: " + err.message;
      banner.hidden = false;
    } finally {
      // One pending refresh at a time, also when a range button triggered this one.
      window.clearTimeout(state.timer);
      state.timer = window.setTimeout(refresh, REFRESH_MS);
    }
  }

  document.getElementById("range").addEventListener("click", function (event) {
    const hours = event.target && event.target.dataset ? event.target.dataset.hours : null;
    if (!hours) {
      return;
    }
    state.hours = Number(hours);
    for (const button of document.querySelectorAll("#range button")) {
      button.classList.toggle("on", button.dataset.hours === hours);
    }
    refresh();
  });

  refresh();
})();
