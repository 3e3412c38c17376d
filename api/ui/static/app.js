// mlexp-ctrl dashboard: a client of the service's public API, in plain JavaScript.
//
// Hash routes (#/experiments/<id>, #/runs/<id>, ...) over one static page; every number on
// screen comes from a documented endpoint. The bearer token, when the service needs one, is
// kept in sessionStorage (this tab only) and sent in the Authorization header, never in a
// URL or a cookie. DOM nodes are built with textContent only (markup is never parsed): a log, a
// param or a metric name cannot inject markup. Charts are uPlot (vendored, see vendor/README.md).
"use strict";

(() => {
  const TOKEN_KEY = "mlexp.token";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
  const PAGE_SIZE = 50;
  const LOG_SCREEN_CHARS = 1_000_000; // the page keeps the tail of a longer log
  const INTEGER_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
  const COLORS = ["#1f4e8c", "#b35900", "#1d6b32", "#a1221b", "#6a3d9a", "#00707a"];

  let page = null; // what the current route started: fetches to abort, timers, charts

  // -- DOM ------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const $ = (selector) => document.querySelector(selector);
  const link = (href, text) => h("a", { href }, text);
  const badge = (state) => h("span", { class: `badge ${state}`, dataset: { state } }, state);
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
  const short = (id) => (id && id.length > 16 ? `${id.slice(0, 16)}…` : id || "");

  function fmt(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      // Five significant digits, without trailing zeros (0.1, not 0.1000).
      return Math.abs(value) >= 1e-3 && Math.abs(value) < 1e6 ? String(Number(value.toPrecision(5))) : value.toExponential(3);
    }
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function notice(text, isError = false) {
    const box = $("#notice");
    box.textContent = text || "";
    box.classList.toggle("error", isError);
  }

  function facts(pairs) {
    return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
  }

  function table(headers, rows, attrs) {
    return h("div", { class: "scroll" }, h("table", attrs || null,
      h("thead", null, h("tr", null, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, rows)));
  }

  function report(err) {
    if (!isAbort(err)) notice(err.message, true);
  }

  function empty(text) {
    return h("p", { class: "empty" }, text);
  }

  // -- the API --------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path, { method = "GET", json, raw = false } = {}) {
    const headers = new Headers({ Accept: "application/json" });
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    let body;
    if (json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(json);
    }
    const signal = page ? page.abort.signal : undefined;
    const resp = await fetch(path, { method, headers, body, signal, cache: "no-store", credentials: "omit" });
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        detail = (await resp.json()).detail || detail;
      } catch (_) { /* not JSON */ }
      if (resp.status === 401) showTokenForm(`The service asks for a token: ${detail}`);
      throw new ApiError(resp.status, detail);
    }
    return raw ? resp : resp.json();
  }

  // -- token ----------------------------------------------------------------------------

  function showTokenForm(message) {
    $("#token-form").hidden = false;
    if (message) notice(message, true);
    $("#token-input").focus();
  }

  function setUpToken() {
    $("#token-button").addEventListener("click", () => {
      const form = $("#token-form");
      form.hidden = !form.hidden;
      if (!form.hidden) $("#token-input").focus();
    });
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#token-input").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      $("#token-input").value = "";
      $("#token-form").hidden = true;
      notice("");
      route();
    });
    $("#token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("#token-form").hidden = true;
      notice("Token forgotten.");
      route();
    });
  }

  // -- page lifetime: timers, streams and charts end when the route changes ---------------

  function sleep(ms) {
    return new Promise((resolve) => page.timers.push(setTimeout(resolve, ms)));
  }

  function every(ms, tick) {
    const owner = page;
    const loop = async () => {
      if (page !== owner) return;
      let again = true;
      try {
        again = (await tick()) !== false;
      } catch (err) {
        if (!isAbort(err)) notice(`Refresh failed: ${err.message}`, true);
      }
      if (again && page === owner) owner.timers.push(setTimeout(loop, ms));
    };
    owner.timers.push(setTimeout(loop, ms));
  }

  const isAbort = (err) => err && err.name === "AbortError";

  function teardown() {
    if (!page) return;
    page.abort.abort();
    page.timers.forEach(clearTimeout);
    page.charts.forEach((c) => c.destroy());
  }

  // -- charts -----------------------------------------------------------------------------

  // A uPlot chart in `box`; series: [{label, values, line?}] over xs. data-points counts
  // the points drawn (non-null y of the first series), for people and tests alike.
  function chart(box, { xs, series, xLabel, yLabel, title, integerX = false }) {
    box.replaceChildren();
    box.dataset.points = String(series.length ? series[0].values.filter((v) => v !== null).length : 0);
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", `${title || yLabel}: ${box.dataset.points} points`);
    if (!xs.length) {
      box.append(empty("No data yet."));
      return null;
    }
    if (typeof uPlot !== "function") {
      box.append(empty("The chart library did not load."));
      return null;
    }
    const width = Math.max(260, box.clientWidth || 600);
    const opts = {
      width,
      height: 240,
      scales: { x: { time: false } },
      legend: { show: series.length > 1 },
      axes: [integerX ? { label: xLabel, incrs: INTEGER_STEPS } : { label: xLabel }, { label: yLabel, size: 60 }],
      series: [{ label: xLabel }].concat(series.map((s, i) => ({
        label: s.label,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        paths: s.line ? undefined : () => null,
        points: { show: true, size: s.line ? 4 : 7, space: 0, fill: COLORS[i % COLORS.length] },
        spanGaps: true,
      }))),
    };
    const plot = new uPlot(opts, [xs].concat(series.map((s) => s.values)), box);
    plot.mlexpBox = box;
    page.charts.push(plot);
    return plot;
  }

  window.addEventListener("resize", () => {
    if (!page) return;
    for (const plot of page.charts) {
      const width = Math.max(260, plot.mlexpBox.clientWidth);
      if (Math.abs(width - plot.width) > 4) plot.setSize({ width, height: plot.height });
    }
  });

  // -- sortable, filterable, paged table of runs ---------------------------------------------

  // "Params" and "Metrics" over their columns: a param and a metric may share a name.
  function groupRow(columns) {
    const count = (kind) => columns.filter((c) => c.kind === kind).length;
    const cells = [h("th", { colspan: String(count(undefined)) })];
    if (count("param")) cells.push(h("th", { colspan: String(count("param")), scope: "colgroup" }, "Params"));
    if (count("metric")) cells.push(h("th", { colspan: String(count("metric")), scope: "colgroup", class: "metric" }, "Metrics"));
    return h("tr", { class: "groups" }, cells);
  }

  function runsTable(view, rows) {
    const { columns } = view;
    const sorted = rows.slice();
    if (view.sort) {
      const { key, dir } = view.sort;
      const column = columns.find((c) => c.key === key);
      sorted.sort((a, b) => {
        const x = column.value(a);
        const y = column.value(b);
        if (x === y) return 0;
        if (x === null || x === undefined || x === "") return 1; // missing last, both ways
        if (y === null || y === undefined || y === "") return -1;
        const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return dir === "asc" ? order : -order;
      });
    }
    const pages = Math.max(1, Math.ceil(sorted.length / PAGE_SIZE));
    view.page = Math.min(view.page, pages - 1);
    const first = view.page * PAGE_SIZE;
    const shown = sorted.slice(first, first + PAGE_SIZE);
    const head = columns.map((c) => {
      const active = view.sort && view.sort.key === c.key;
      const dir = active ? view.sort.dir : null;
      return h("th", { scope: "col", class: c.kind === "metric" && c === columns.find((k) => k.kind === "metric") ? "metric" : null, "aria-sort": active ? (dir === "asc" ? "ascending" : "descending") : "none" },
        h("button", {
          type: "button", class: "sort", "aria-pressed": active ? "true" : "false",
          onclick: () => {
            view.sort = { key: c.key, dir: active && dir === "desc" ? "asc" : "desc" };
            view.page = 0;
            view.render();
            const again = document.querySelector(`[data-sort-key="${CSS.escape(c.key)}"]`);
            if (again) again.focus();
          },
          dataset: { sortKey: c.key },
        }, c.label, active ? (dir === "asc" ? " ▲" : " ▼") : ""));
    });
    const body = shown.map((row) => h("tr", { class: row.best ? "best" : null, dataset: { runId: row.run_id } },
      columns.map((c) => c.cell(row))));
    const wrap = h("div", null,
      h("div", { class: "scroll" }, h("table", { "data-testid": "runs-table", dataset: { rows: String(sorted.length) } },
        h("caption", { class: "skip" }, "Runs"),
        h("thead", null, groupRow(columns), h("tr", null, head)),
        h("tbody", null, body))),
      h("div", { class: "pager" },
        h("button", { type: "button", class: "quiet", disabled: view.page === 0, onclick: () => { view.page -= 1; view.render(); } }, "← Previous"),
        h("span", { "aria-live": "polite" }, sorted.length
          ? `Runs ${first + 1}–${first + shown.length} of ${sorted.length} (page ${view.page + 1} of ${pages})`
          : "No runs match."),
        h("button", { type: "button", class: "quiet", disabled: view.page >= pages - 1, onclick: () => { view.page += 1; view.render(); } }, "Next →")));
    return wrap;
  }

  // -- pages ----------------------------------------------------------------------------------

  async function experimentsPage(main) {
    const experiments = await api("/experiments?limit=1000");
    const search = h("input", { type: "search", id: "exp-search", placeholder: "id, repository, stage…" });
    const list = h("div");
    const render = () => {
      const q = search.value.trim().toLowerCase();
      const shown = experiments.filter((e) => !q || [e.experiment_id, e.git_url, e.owner, e.stages.join(" ")]
        .some((t) => t.toLowerCase().includes(q)));
      list.replaceChildren(shown.length ? table(["Experiment", "Created", "Stages", "Repository", "Owner"],
        shown.map((e) => h("tr", null,
          h("td", null, link(`#/experiments/${encodeURIComponent(e.experiment_id)}`, e.experiment_id)),
          h("td", null, when(e.created_at)),
          h("td", null, e.stages.join(" → ")),
          h("td", null, e.git_url),
          h("td", null, e.owner))), { "data-testid": "experiments-table" })
        : empty(experiments.length ? "No experiment matches." : "No experiments yet: post a bundle to POST /experiment/create (see the README)."));
    };
    search.addEventListener("input", render);
    main.replaceChildren(h("h1", null, "Experiments"),
      h("div", { class: "toolbar" }, h("label", { for: "exp-search" }, "Search", search)), list);
    render();
  }

  async function experimentPage(main, id) {
    const enc = encodeURIComponent(id);
    // All three at once: the runs table (the largest answer) does not wait for the others.
    const first = api(`/experiments/${enc}/compare?limit=1000`);
    first.catch(() => {}); // awaited below; a failure is reported there
    const [experiment, sweeps] = await Promise.all([
      api(`/experiments/${enc}`),
      api(`/sweeps?experiment_id=${enc}&limit=1000`),
    ]);
    const view = { rows: [], columns: [], sort: null, page: 0, metric: "", param: "", state: "", sweep: "" };
    let table_ = null;
    const controls = h("div", { class: "toolbar" });
    const tableBox = h("div");
    const metricChart = h("div", { class: "chart", id: "metric-chart", "data-testid": "metric-chart" });
    const scatter = h("div", { class: "chart", id: "scatter-chart", "data-testid": "scatter-chart" });
    const scatterTitle = h("h3");
    const metricTitle = h("h3");

    let pending = first;
    const load = async () => {
      const q = view.metric ? `&metric=${encodeURIComponent(view.metric)}` : "";
      table_ = await (pending || api(`/experiments/${enc}/compare?limit=1000${q}`));
      pending = null;
      if (!view.metric && table_.metric_columns.length) {
        view.metric = table_.metric_columns[0];
      }
      view.rows = table_.rows;
      const began = performance.now();
      view.render();
      // How long the table and charts took to build, once the data was there (for people
      // checking the page's speed, and the UI tests).
      main.dataset.renderMs = String(Math.round(performance.now() - began));
      return table_.rows.some((r) => !TERMINAL.has(r.state));
    };

    const select = (label, id_, options, value, onchange) => {
      const el = h("select", { id: id_, onchange: (e) => onchange(e.target.value) },
        options.map(([v, t]) => h("option", { value: v, selected: v === value }, t)));
      return h("label", { for: id_ }, label, el);
    };

    view.render = () => {
      if (!table_) return;
      const sweepIds = [...new Set(table_.rows.map((r) => r.sweep_id).filter(Boolean))];
      controls.replaceChildren(
        select("State", "filter-state", [["", "every state"]].concat(STATES.map((s) => [s, s])), view.state, (v) => { view.state = v; view.page = 0; view.render(); }),
        select("Sweep", "filter-sweep", [["", "every run"], ["-", "not in a sweep"]].concat(sweepIds.map((s) => [s, s])), view.sweep, (v) => { view.sweep = v; view.page = 0; view.render(); }),
        select("Metric (charts)", "pick-metric", table_.metric_columns.map((m) => [m, m]), view.metric, (v) => { view.metric = v; load().catch(report); }),
        select("Param (scatter)", "pick-param", table_.param_columns.map((p) => [p, p]), view.param, (v) => { view.param = v; view.render(); }),
      );
      view.columns = [
        { key: "run", label: "Run", value: (r) => r.run_id, cell: (r) => h("td", null, link(`#/runs/${encodeURIComponent(r.run_id)}`, short(r.run_id))) },
        { key: "state", label: "State", value: (r) => r.state, cell: (r) => h("td", null, badge(r.state)) },
        { key: "sweep", label: "Sweep", value: (r) => r.sweep_id || "", cell: (r) => h("td", null, r.sweep_id ? link(`#/sweeps/${encodeURIComponent(r.sweep_id)}`, short(r.sweep_id)) : "") },
        { key: "created", label: "Created", value: (r) => r.created_at, cell: (r) => h("td", null, when(r.created_at)) },
      ].concat(table_.param_columns.map((p) => ({
        key: `p:${p}`, kind: "param", label: p, value: (r) => r.params[p], cell: (r) => h("td", { class: typeof r.params[p] === "number" ? "num" : null }, fmt(r.params[p])),
      }))).concat(table_.metric_columns.map((m) => ({
        key: `m:${m}`, kind: "metric", label: m, value: (r) => r.metrics[m], cell: (r) => h("td", { class: "num" }, fmt(r.metrics[m])),
      })));
      if (!view.sort) view.sort = { key: "created", dir: "desc" };
      const rows = table_.rows.filter((r) => (!view.state || r.state === view.state)
        && (!view.sweep || (view.sweep === "-" ? !r.sweep_id : r.sweep_id === view.sweep)));
      tableBox.replaceChildren(runsTable(view, rows));
      drawCharts(rows);
    };

    const drawCharts = (rows) => {
      page.charts.forEach((c) => c.destroy());
      page.charts = [];
      const m = view.metric;
      const finished = rows.filter((r) => r.state === "succeeded" && typeof r.metrics[m] === "number")
        .sort((a, b) => a.created_at.localeCompare(b.created_at));
      metricTitle.textContent = m ? `${m} per finished run (oldest first)` : "No metrics yet";
      chart(metricChart, {
        xs: finished.map((_, i) => i + 1),
        series: [{ label: m, values: finished.map((r) => r.metrics[m]) }],
        xLabel: "run", yLabel: m, title: metricTitle.textContent, integerX: true,
      });
      const p = view.param || table_.param_columns.find((c) => finished.some((r) => typeof r.params[c] === "number")) || "";
      const pairs = finished.filter((r) => typeof r.params[p] === "number")
        .map((r) => [r.params[p], r.metrics[m]]).sort((a, b) => a[0] - b[0]);
      scatterTitle.textContent = p ? `${m} against ${p}` : "No numeric param differs between runs";
      chart(scatter, {
        xs: pairs.map((x) => x[0]), series: [{ label: m, values: pairs.map((x) => x[1]) }],
        xLabel: p, yLabel: m, title: scatterTitle.textContent,
      });
    };

    main.replaceChildren(
      h("h1", null, `Experiment ${id}`),
      h("p", null, link(`#/experiments/${enc}/registry`, "Model registry"), " · ",
        link(`/experiments/${enc}/compare?format=csv&limit=1000`, "Runs as CSV")),
      facts([["Repository", experiment.git_url], ["Branch", experiment.branch], ["Commit", experiment.commit],
        ["Stages", experiment.stages.join(" → ")], ["Created", when(experiment.created_at)], ["Owner", experiment.owner]]),
      h("h2", null, "Runs"), controls, tableBox,
      h("div", { class: "grid" },
        h("section", { class: "card" }, metricTitle, metricChart),
        h("section", { class: "card" }, scatterTitle, scatter)),
      h("h2", null, "Sweeps"),
      sweeps.length ? table(["Sweep", "State", "Trials", "Objective", "Created"], sweeps.map((s) => h("tr", null,
        h("td", null, link(`#/sweeps/${encodeURIComponent(s.sweep_id)}`, s.sweep_id)),
        h("td", null, s.state),
        h("td", null, `${Object.values(s.counts).reduce((a, b) => a + b, 0)} of ${s.total_trials}`),
        h("td", null, s.request.objective ? `${s.request.objective.goal} ${s.request.objective.metric}` : "—"),
        h("td", null, when(s.created_at)))), { "data-testid": "sweeps-table" }) : empty("No sweeps."));
    const running = await load();
    if (running) every(3000, load);
  }

  async function runPage(main, id) {
    const enc = encodeURIComponent(id);
    let run = await api(`/runs/${enc}`);
    const state = h("span", { id: "run-state", "aria-live": "polite" });
    const about = h("div");
    const actions = h("div", { class: "toolbar" });
    const results = h("div");
    const plots = h("div", { class: "grid", id: "plots" });
    const log = h("pre", { class: "log", id: "run-log", tabindex: "0", "aria-label": "Run log", dataset: { bytes: "0" } });

    const renderRun = () => {
      state.replaceChildren(badge(run.state), run.cancel_requested && !TERMINAL.has(run.state) ? " cancel requested" : "");
      about.replaceChildren(facts([
        ["Experiment", link(`#/experiments/${encodeURIComponent(run.experiment_id)}`, run.experiment_id)],
        ["Sweep", run.sweep_id ? link(`#/sweeps/${encodeURIComponent(run.sweep_id)}`, run.sweep_id) : null],
        ["Resource", run.namespace ? `${run.resource} in ${run.namespace}` : run.resource],
        ["Overrides", Object.keys(run.params).length ? Object.entries(run.params).map(([k, v]) => `${k}=${fmt(v)}`).join(", ") : "none"],
        ["Created", when(run.created_at)], ["Started", when(run.started_at)], ["Finished", when(run.finished_at)],
        ["Reason", run.reason],
      ]));
      actions.replaceChildren();
      if (!TERMINAL.has(run.state) && !run.cancel_requested) {
        const cancel = h("button", { type: "button", class: "danger", id: "cancel-run" }, "Cancel run");
        cancel.addEventListener("click", async () => {
          if (cancel.dataset.armed !== "yes") {
            cancel.dataset.armed = "yes";
            cancel.textContent = "Confirm: cancel this run";
            return;
          }
          cancel.disabled = true;
          try {
            run = await api(`/runs/${enc}/cancel`, { method: "POST" });
            notice("Cancel requested.");
            renderRun();
          } catch (err) {
            notice(`Cancel failed: ${err.message}`, true);
            cancel.disabled = false;
          }
        });
        actions.append(cancel);
      }
      const result = run.result;
      if (!result) {
        results.replaceChildren(empty(TERMINAL.has(run.state) ? "No results: the run did not succeed." : "Results appear when the run succeeds."));
        return;
      }
      const code = h("code", { id: "clone-command" }, result.clone_command);
      const copy = h("button", { type: "button", class: "quiet", id: "copy-clone" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(result.clone_command);
          copy.textContent = "Copied";
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(code);
          getSelection().removeAllRanges();
          getSelection().addRange(range);
          copy.textContent = "Selected: press Ctrl+C";
        }
      });
      results.replaceChildren(
        h("h2", null, "Get the results"), h("div", { class: "copy" }, code, copy),
        h("div", { class: "grid" },
          h("section", { class: "card" }, h("h3", null, "Metrics"), Object.keys(result.flat_metrics).length
            ? table(["Metric", "Value"], Object.entries(result.flat_metrics).map(([k, v]) => h("tr", null, h("td", null, k), h("td", { class: "num" }, fmt(v)))), { id: "run-metrics" })
            : empty("No metrics.")),
          h("section", { class: "card" }, h("h3", null, "Params"), table(["Param", "Value"],
            Object.entries(result.params).map(([k, v]) => h("tr", null, h("td", null, k), h("td", null, fmt(v))))))),
        result.warnings.length ? h("ul", { class: "error" }, result.warnings.map((w) => h("li", null, w))) : "");
    };

    let plotsShown = "";
    // While the run runs its plots are read as its stages write them (live: true).
    const plotsLive = h("span", { id: "plots-live", class: "badge running", "aria-live": "polite", hidden: true });
    const loadPlots = async () => {
      const body = await api(`/runs/${enc}/plots`);
      plotsLive.hidden = !body.live;
      plotsLive.textContent = body.live ? "live" : "";
      plotsLive.title = body.live ? "Redrawn as the run writes its plot files" : "";
      const key = JSON.stringify(body.plots.map((p) => Object.values(p.data).map((d) => d.rows.length)));
      if (key === plotsShown) return;
      plotsShown = key;
      page.charts.forEach((c) => c.destroy());
      page.charts = [];
      plots.replaceChildren();
      if (!body.plots.length) {
        plots.append(empty(TERMINAL.has(run.state) ? "This run has no plots." : "Plots appear when the run has them."));
        return;
      }
      for (const plot of body.plots) {
        for (const [file, data] of Object.entries(plot.data)) {
          const box = h("div", { class: "chart", dataset: { plot: plot.id, file } });
          plots.append(h("section", { class: "card plot" }, h("h3", null, plot.title || (plot.id === file ? file : `${plot.id}: ${file}`)), box,
            data.truncated_from ? h("p", { class: "empty" }, `first ${data.rows.length} of ${data.truncated_from} rows`) : null));
          if (data.error || !data.rows.length) {
            box.append(empty(data.image ? "An image: get it from the run's branch." : data.error || "No rows."));
            continue;
          }
          drawPlot(box, plot, file, data.rows);
        }
      }
    };

    const drawPlot = (box, plot, file, rows) => {
      const objects = rows.filter((r) => r && typeof r === "object");
      const x = plot.x && objects.some((r) => typeof num(r[plot.x]) === "number") ? plot.x : null;
      let ys = (plot.y[file] || []).filter((k) => k !== x);
      if (!ys.length) {
        ys = Object.keys(objects[0] || {}).filter((k) => k !== x && objects.some((r) => typeof num(r[k]) === "number"));
      }
      const points = objects.map((r, i) => [x ? num(r[x]) : i, r]).filter((p) => typeof p[0] === "number")
        .sort((a, b) => a[0] - b[0]);
      if (!ys.length || !points.length) {
        box.append(empty("No numeric columns to draw (a confusion matrix or text)."));
        return;
      }
      chart(box, {
        xs: points.map((p) => p[0]),
        series: ys.map((k) => ({ label: k, values: points.map((p) => { const v = num(p[1][k]); return typeof v === "number" ? v : null; }), line: true })),
        xLabel: x || "step", yLabel: ys.join(", "), title: plot.id,
      });
    };

    main.replaceChildren(
      h("h1", null, `Run ${id} `, state), about, actions, results,
      h("h2", null, "Plots ", plotsLive), plots,
      h("h2", null, "Log"), log);
    renderRun();
    await loadPlots();
    followLog(id, log);
    if (!TERMINAL.has(run.state)) {
      every(1500, async () => {
        const before = run.state;
        run = await api(`/runs/${enc}`);
        if (run.state !== before || TERMINAL.has(run.state)) renderRun();
        await loadPlots();
        return !TERMINAL.has(run.state);
      });
    }
  }

  function num(v) {
    if (typeof v === "number") return v;
    if (typeof v === "string" && v.trim() !== "" && !Number.isNaN(Number(v))) return Number(v);
    return undefined;
  }

  // The log, streamed by GET /runs/{id}/logs?follow=true; resumed at the byte it reached if
  // the stream breaks before the run has ended.
  async function followLog(id, pre) {
    const owner = page;
    const enc = encodeURIComponent(id);
    let offset = 0;
    let text = "";
    const decoder = new TextDecoder();
    const show = (chunk) => {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
      text += chunk;
      if (text.length > LOG_SCREEN_CHARS) text = `[… earlier lines not shown …]\n${text.slice(-LOG_SCREEN_CHARS)}`;
      pre.textContent = text;
      pre.dataset.bytes = String(offset);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };
    while (page === owner) {
      try {
        const resp = await api(`/runs/${enc}/logs?follow=true&offset=${offset}`, { raw: true });
        const reader = resp.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          offset += value.length;
          show(decoder.decode(value, { stream: true }));
        }
        const run = await api(`/runs/${enc}`);
        if (TERMINAL.has(run.state)) {
          pre.dataset.ended = "yes";
          if (!text) pre.textContent = "(empty log)";
          return;
        }
      } catch (err) {
        if (isAbort(err) || page !== owner) return;
        if (err.status === 404) {
          pre.textContent = "(no log)";
          return;
        }
      }
      await sleep(1000);
    }
  }

  async function sweepPage(main, id) {
    const enc = encodeURIComponent(id);
    const box = h("div");
    const progressChart = h("div", { class: "chart", id: "best-chart", "data-testid": "best-chart" });
    const render = (sweep) => {
      const objective = sweep.request.objective;
      const ended = Object.entries(sweep.counts).filter(([s]) => TERMINAL.has(s)).reduce((a, [, n]) => a + n, 0);
      const better = objective && objective.goal === "min" ? (a, b) => a < b : (a, b) => a > b;
      let best = null;
      const trials = sweep.trials.slice().sort((a, b) => a.number - b.number);
      const values = [];
      const bests = [];
      for (const t of trials) {
        const v = typeof t.value === "number" && t.state === "succeeded" ? t.value : null;
        if (v !== null && (best === null || better(v, best))) best = v;
        values.push(v);
        bests.push(best);
      }
      box.replaceChildren(
        facts([
          ["Experiment", link(`#/experiments/${encodeURIComponent(sweep.experiment_id)}`, sweep.experiment_id)],
          ["State", sweep.state + (sweep.reason ? ` (${sweep.reason})` : "")],
          ["Objective", objective ? `${objective.goal} ${objective.metric}` : "none"],
          ["Progress", h("span", null, h("progress", { max: String(sweep.total_trials), value: String(ended), "aria-label": "Trials ended" }), ` ${ended} of ${sweep.total_trials} trials ended`)],
          ["By state", Object.entries(sweep.counts).map(([s, n]) => `${s}: ${n}`).join(", ")],
          ["Best so far", sweep.best ? h("span", null, link(`#/runs/${encodeURIComponent(sweep.best.run_id)}`, short(sweep.best.run_id)), ` ${sweep.best.metric} = ${fmt(sweep.best.value)}`) : "—"],
          ["Created", when(sweep.created_at)], ["Finished", when(sweep.finished_at)],
        ]),
        h("h2", null, "Trials"),
        table(["#", "Run", "State", "Params", objective ? objective.metric : "Value"], trials.map((t) => h("tr", null,
          h("td", null, String(t.number)),
          h("td", null, link(`#/runs/${encodeURIComponent(t.run_id)}`, short(t.run_id))),
          h("td", null, badge(t.state)),
          h("td", null, Object.entries(t.params).map(([k, v]) => `${k}=${fmt(v)}`).join(", ")),
          h("td", { class: "num" }, fmt(t.value)))), { "data-testid": "trials-table" }));
      page.charts.forEach((c) => c.destroy());
      page.charts = [];
      drawPerParam(sweep, trials);
      chart(progressChart, {
        xs: trials.map((t) => t.number),
        series: [{ label: objective ? objective.metric : "value", values }, { label: "best so far", values: bests, line: true }],
        xLabel: "trial", yLabel: objective ? objective.metric : "value", title: "Best so far over trials", integerX: true,
      });
      return sweep.state === "running";
    };
    // The objective against each searched param, side by side (what a parallel-coordinates
    // view shows for the few params a sweep searches).
    const perParam = h("div", { class: "grid", id: "per-param" });
    const drawPerParam = (sweep, trials) => {
      const objective = sweep.request.objective;
      const search = sweep.request.grid || (sweep.request.random || sweep.request.adaptive || {}).space || {};
      perParam.replaceChildren();
      if (!objective) return;
      for (const key of Object.keys(search)) {
        const pairs = trials.filter((t) => t.state === "succeeded" && typeof t.value === "number" && typeof t.params[key] === "number")
          .map((t) => [t.params[key], t.value]).sort((a, b) => a[0] - b[0]);
        const box = h("div", { class: "chart", dataset: { param: key } });
        perParam.append(h("section", { class: "card" }, h("h3", null, `${objective.metric} against ${key}`), box));
        chart(box, { xs: pairs.map((p) => p[0]), series: [{ label: objective.metric, values: pairs.map((p) => p[1]) }], xLabel: key, yLabel: objective.metric, title: `${objective.metric} against ${key}` });
      }
    };
    main.replaceChildren(h("h1", null, `Sweep ${id}`), box,
      h("section", { class: "card" }, h("h3", null, "Objective per trial, and the best so far"), progressChart),
      perParam);
    if (render(await api(`/sweeps/${enc}`))) every(2000, async () => render(await api(`/sweeps/${enc}`)));
  }

  async function registryPage(main, id) {
    const enc = encodeURIComponent(id);
    const box = h("div");
    const render = (registry) => {
      if (!registry.artifacts.length) {
        box.replaceChildren(empty("No registered versions yet: register a run (POST /runs/{id}/register) or promote the best (POST /experiments/{id}/promote-best)."));
        return;
      }
      box.replaceChildren(...registry.artifacts.map((a) => artifactCard(registry, a)));
    };
    const artifactCard = (registry, a) => {
      const safe = a.name.replace(/[^a-z0-9-]/g, "");
      const versionSelect = h("select", { id: `promote-version-${safe}` },
        a.versions.filter((v) => v.active).map((v) => h("option", { value: v.version }, v.version)));
      const stageInput = h("input", { id: `promote-stage-${safe}`, required: true, maxlength: "63", list: `stages-${safe}`, placeholder: "prod" });
      const form = h("form", { class: "toolbar", dataset: { artifact: a.name } },
        h("label", { for: versionSelect.id }, "Version", versionSelect),
        h("label", { for: stageInput.id }, "Stage", stageInput),
        h("datalist", { id: `stages-${safe}` }, Object.keys(a.stages).map((s) => h("option", { value: s }))),
        h("button", { type: "submit" }, "Promote"));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const button = form.querySelector("button");
        button.disabled = true;
        try {
          const promotion = await api(`/experiments/${enc}/registry/${encodeURIComponent(a.name)}/promote`,
            { method: "POST", json: { version: versionSelect.value, stage: stageInput.value.trim() } });
          notice(promotion.assigned ? `${a.name} ${promotion.version.version} is now in ${promotion.stage.stage}.`
            : `${a.name} ${promotion.version.version} already was the current version of ${promotion.stage.stage}.`);
          render(await api(`/experiments/${enc}/registry`));
        } catch (err) {
          notice(`Promotion refused: ${err.message}`, true);
          button.disabled = false;
        }
      });
      return h("section", { class: "card", dataset: { artifact: a.name } },
        h("h2", null, a.name, a.deprecated ? " (deprecated)" : ""),
        h("p", null, `Latest: ${a.latest || "—"}`),
        h("h3", null, "Stages"),
        Object.keys(a.stages).length ? table(["Stage", "Version", "Assigned", "Run"], Object.values(a.stages).map((s) => h("tr", { dataset: { stage: s.stage } },
          h("td", null, s.stage), h("td", null, s.version), h("td", null, when(s.assigned_at)),
          h("td", null, s.run_id ? link(`#/runs/${encodeURIComponent(s.run_id)}`, short(s.run_id)) : "—"))), { "data-testid": "stages-table" })
          : empty("No stage assigned yet."),
        h("h3", null, "Versions"),
        table(["Version", "Stages", "Run", "Metrics", "Registered"], a.versions.map((v) => h("tr", { dataset: { version: v.version } },
          h("td", null, v.version, v.active ? "" : " (deregistered)"),
          h("td", null, v.stages.join(", ")),
          h("td", null, v.run_id ? link(`#/runs/${encodeURIComponent(v.run_id)}`, short(v.run_id)) : "—"),
          h("td", null, Object.entries(v.metrics).slice(0, 4).map(([k, m]) => `${k}=${fmt(m)}`).join(", ")),
          h("td", null, when(v.created_at))))),
        h("h3", null, "Promote"), form);
    };
    main.replaceChildren(h("h1", null, "Model registry"),
      h("p", null, "Experiment ", link(`#/experiments/${enc}`, id)), box);
    render(await api(`/experiments/${enc}/registry`));
  }

  async function resourcesPage(main) {
    const resources = await api("/resources");
    const ready = (r) => (r.readiness ? `${r.readiness.ready} of ${r.readiness.desired}` : "—");
    main.replaceChildren(h("h1", null, "Kubernetes resources"),
      resources.length ? table(["Resource", "Namespace", "Image", "Experiment", "Ready", "Created"], resources.map((r) => h("tr", null,
        h("td", null, r.resource), h("td", null, r.namespace), h("td", null, r.image),
        h("td", null, r.experiment_id ? link(`#/experiments/${encodeURIComponent(r.experiment_id)}`, r.experiment_id) : "—"),
        h("td", { dataset: { resource: r.resource } }, ready(r)), h("td", null, when(r.created_at))))) : empty("No workloads provisioned."));
    // The list may not carry readiness: ask each workload's detail (a few at most).
    for (const r of resources.filter((x) => !x.readiness).slice(0, 20)) {
      const kind = r.resource.split("/")[0];
      const detail = await api(`/resources/${encodeURIComponent(r.namespace)}/${kind}/${encodeURIComponent(r.name)}`);
      const cell = main.querySelector(`td[data-resource="${CSS.escape(r.resource)}"]`);
      if (cell) cell.textContent = ready(detail);
    }
  }

  // -- router -----------------------------------------------------------------------------

  const ROUTES = [
    [/^#?\/?$/, experimentsPage],
    [/^#\/experiments\/([^/]+)$/, experimentPage],
    [/^#\/experiments\/([^/]+)\/registry$/, registryPage],
    [/^#\/runs\/([^/]+)$/, runPage],
    [/^#\/sweeps\/([^/]+)$/, sweepPage],
    [/^#\/resources$/, resourcesPage],
  ];

  function route() {
    teardown();
    page = { abort: new AbortController(), timers: [], charts: [] };
    const main = $("#main");
    main.replaceChildren(h("p", null, "Loading…"));
    const hash = location.hash || "#/";
    for (const [pattern, show] of ROUTES) {
      const match = pattern.exec(hash);
      if (!match) continue;
      const owner = page;
      const args = match.slice(1).map(decodeURIComponent);
      show(main, ...args).then(() => {
        if (owner === page) main.dataset.ready = hash;
      }).catch((err) => {
        if (isAbort(err) || owner !== page) return;
        main.replaceChildren(h("h1", null, "Could not load this page"), h("p", { class: "error" }, err.message));
      });
      return;
    }
    main.replaceChildren(h("h1", null, "Not found"), h("p", null, link("#/", "Back to the experiments")));
  }

  window.addEventListener("hashchange", () => {
    notice("");
    route();
    $("#main").focus({ preventScroll: true });
  });

  function start() {
    setUpToken();
    // The skip link moves focus; following its href would change the route.
    $("#skip").addEventListener("click", (event) => {
      event.preventDefault();
      $("#main").focus();
    });
    route();
    fetch("/healthz", { cache: "no-store" }).then((r) => r.json()).then((health) => {
      $("#nav-resources").hidden = health.kubernetes_api_calls === null || health.kubernetes_api_calls === undefined;
    }).catch(() => { /* the nav stays as it is */ });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
