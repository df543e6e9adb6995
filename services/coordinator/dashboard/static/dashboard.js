// The dashboard's behaviour: live job list, live job page, token login from a link's fragment.
// Everything it fetches is on this server (the API the page is served by); data from the API is
// put into the page as text (textContent), never as markup.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const page = document.body.dataset.page;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const PHASES = ["downloading", "loading_model", "inferring", "uploading", "collective", "done"];
  const TIMELINE_RANKS = 64;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key === "style") Object.assign(node.style, value);
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  const number = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en"));

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 90) return `${seconds.toFixed(0)} s`;
    return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }

  async function call(method, url) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
    const response = await fetch(url, { method, headers, credentials: "same-origin" });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { ok: response.ok, status: response.status, body };
  }

  function detail(body) {
    if (!body || body.detail === undefined) return "no detail";
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  }

  // -- sign in from a link: /#token=... (a fragment never reaches the server or its logs) ---------
  if (page === "login" && location.hash.startsWith("#token=")) {
    const form = document.getElementById("login-form");
    form.elements.token.value = decodeURIComponent(location.hash.slice("#token=".length));
    history.replaceState(null, "", location.pathname + location.search);
    form.submit();
  }

  // -- the job list: rows refreshed in place, selections and keyboard focus kept -----------------
  if (page === "jobs") {
    const rows = document.getElementById("job-rows");
    setInterval(async () => {
      if (rows.contains(document.activeElement)) return; // do not pull the row from under the keyboard
      const response = await fetch(rows.dataset.refresh, { credentials: "same-origin" });
      if (!response.ok) return;
      const checked = new Set([...rows.querySelectorAll("input:checked")].map((box) => box.value));
      rows.innerHTML = await response.text(); // rendered by the server's template, escaped there
      for (const box of rows.querySelectorAll("input[type=checkbox]")) box.checked = checked.has(box.value);
    }, 3000);
  }

  if (page !== "job") return;

  // -- one job, live ------------------------------------------------------------------------------
  const initial = JSON.parse(document.getElementById("initial-status").textContent);
  const jobId = initial.job_id;
  const url = `/jobs/${encodeURIComponent(jobId)}`;
  const cancelButton = document.getElementById("cancel-button");
  const retryButton = document.getElementById("retry-button");
  const said = document.getElementById("action-result");
  let timer = null;
  // The shown results' loads (their fragment, their plots), null while none are shown; aborted when
  // the job runs again, so that nothing asks for the report of a job that no longer has one.
  let resultsLoading = null;

  function renderOverview(status) {
    const state = document.getElementById("job-state");
    state.textContent = status.state;
    state.className = `state state-${status.state}`;
    document.getElementById("queue-position").textContent =
      status.queue_position ? `(position ${status.queue_position} in the function's queue)` : "";
    const progress = status.progress || {};
    const bar = document.getElementById("progress-bar");
    const expected = progress.samples_expected;
    bar.max = expected || 1;
    bar.value = expected ? Math.min(progress.samples_done, expected) : 0;
    const parts = [`${number(progress.samples_done)} of ${expected ? "~" + number(expected) : "?"} samples`];
    if (progress.samples_per_s) parts.push(`${number(progress.samples_per_s)} samples/s`);
    if (!TERMINAL.has(status.state) && progress.eta_s !== null && progress.eta_s !== undefined) {
      parts.push(`ETA ${duration(progress.eta_s)}`);
    }
    document.getElementById("progress-text").textContent = parts.join(" · ");
    cancelButton.disabled = TERMINAL.has(status.state) || status.state === "cancelling";
    retryButton.disabled = status.state !== "failed";
    const counts = Object.entries(status.ranks_by_state || {}).map(([s, n]) => `${n} ${s}`);
    document.getElementById("rank-counts").textContent = `Ranks: ${counts.join(", ") || "none yet"}`;
  }

  function renderRanks(status) {
    const grid = document.getElementById("rank-grid");
    const cells = (status.ranks || []).map((rank) => {
      const attempts = rank.attempts.length;
      const phase = rank.phase ? rank.phase.replace("_", " ") : "-";
      const samples = rank.samples_expected
        ? `${number(rank.samples_done)}/${number(rank.samples_expected)}` : number(rank.samples_done);
      return el("li", { class: `rank state-${rank.state} phase-${rank.phase || "none"}`, "data-rank": rank.rank,
                        "data-state": rank.state, "data-phase": rank.phase || "" },
        el("span", { class: "rank-id" }, `rank ${rank.rank}`),
        el("span", { class: "rank-state" }, rank.state),
        el("span", { class: "rank-phase" }, phase),
        el("span", { class: "rank-attempts" }, `${attempts} attempt${attempts === 1 ? "" : "s"}`),
        el("span", { class: "rank-samples" }, `${samples} samples`));
    });
    grid.replaceChildren(...cells);
  }

  function renderTimeline(status) {
    const start = status.submitted_at;
    const ranks = (status.ranks || []).filter((r) => Object.keys(r.phases || {}).length);
    const end = Math.max(TERMINAL.has(status.state) && status.finished_at ? status.finished_at : Date.now() / 1000, start + 1);
    const rows = ranks.slice(0, TIMELINE_RANKS).map((rank) => {
      const entered = PHASES.filter((p) => rank.phases[p] !== undefined).map((p) => [p, rank.phases[p]]);
      const last = TERMINAL.has(rank.state) ? (rank.progress_at || end) : end;
      const segments = entered.filter(([p]) => p !== "done").map(([p, at], i) => {
        const until = i + 1 < entered.length ? entered[i + 1][1] : last;
        const left = (100 * (at - start)) / (end - start);
        const width = Math.max((100 * (until - at)) / (end - start), 0.3);
        return el("span", { class: `segment phase-${p}`, title: `${p.replace("_", " ")}: ${(until - at).toFixed(1)} s`,
                            style: { left: `${left}%`, width: `${width}%` } });
      });
      return el("div", { class: "timeline-row" }, el("span", { class: "timeline-label" }, `rank ${rank.rank}`),
        el("span", { class: "timeline-bar", role: "img",
                     "aria-label": `rank ${rank.rank}: ` + entered.map(([p, at]) =>
                       `${p.replace("_", " ")} from ${(at - start).toFixed(1)} s`).join(", ") }, ...segments));
    });
    const note = ranks.length > TIMELINE_RANKS ? [el("p", { class: "hint" }, `First ${TIMELINE_RANKS} ranks of ${ranks.length}.`)] : [];
    const empty = ranks.length ? [] : [el("p", { class: "hint" }, "No rank has reported a phase yet.")];
    document.getElementById("timeline").replaceChildren(...rows, ...note, ...empty);
  }

  function renderProblems(status) {
    const items = [];
    if (status.error) items.push(["error", `Job: ${status.error}`]);
    for (const [rank, error] of Object.entries(status.failed_ranks || {})) items.push(["error", `Rank ${rank}: ${error}`]);
    for (const rank of status.ranks || []) {
      for (const attempt of rank.attempts) {
        if (attempt.error) items.push([attempt.state === "failed" ? "error" : "warning",
                                       `Rank ${rank.rank}, attempt ${attempt.attempt} (${attempt.state}): ${attempt.error}`]);
      }
    }
    for (const warning of status.warnings || []) items.push(["warning", warning]);
    const list = items.map(([kind, text]) => el("li", { class: kind }, el("strong", {}, `${kind}: `), text));
    document.getElementById("problems").replaceChildren(...(list.length ? list : [el("li", {}, "None.")]));
  }

  async function showResults() {
    if (resultsLoading !== null) return;
    const loading = resultsLoading = new AbortController();
    const section = document.getElementById("results");
    const body = section.querySelector(".results-body");
    try {
      const response = await fetch(`/ui/jobs/${encodeURIComponent(jobId)}/results`,
                                   { credentials: "same-origin", signal: loading.signal });
      body.innerHTML = await response.text(); // our template, escaped there
      section.hidden = false;
      await Promise.all([...body.querySelectorAll("img[data-src]")].map(async (img) => {
        const plot = await fetch(img.dataset.src, { credentials: "same-origin", signal: loading.signal });
        const image = plot.ok ? await plot.blob() : null;
        if (image !== null && !loading.signal.aborted) img.src = URL.createObjectURL(image); // (hidden meanwhile: no URL to revoke)
      }));
    } catch (error) {
      if (error.name !== "AbortError") throw error;
    }
  }

  function hideResults() {
    if (resultsLoading !== null) resultsLoading.abort();
    resultsLoading = null;
    const section = document.getElementById("results");
    section.hidden = true;
    const body = section.querySelector(".results-body");
    for (const img of body.querySelectorAll("img[src^='blob:']")) URL.revokeObjectURL(img.src);
    body.replaceChildren();
  }

  function render(status) {
    renderOverview(status);
    renderRanks(status);
    renderTimeline(status);
    renderProblems(status);
    if (TERMINAL.has(status.state)) showResults();
  }

  async function poll() {
    const answer = await call("GET", url);
    if (answer.ok) {
      render(answer.body);
      if (TERMINAL.has(answer.body.state)) { timer = null; return; }
    }
    timer = setTimeout(poll, 1000);
  }

  async function act(method, path, what) {
    said.textContent = `${what}…`;
    hideResults(); // before asking: once the job runs again, its report is gone until it ends again
    const answer = await call(method, path);
    said.textContent = answer.ok ? `${what}: asked (${answer.body.state})` : `${what} refused: ${detail(answer.body)}`;
    const now = answer.ok ? answer : await call("GET", url); // refused: the job as it is (its results, if it ended)
    if (now.ok) render(now.body);
    if (answer.ok && timer === null) timer = setTimeout(poll, 500);
  }

  cancelButton.addEventListener("click", () => act("DELETE", url, "Cancel"));
  retryButton.addEventListener("click", () => act("POST", `${url}/retry`, "Retry of the failed ranks"));
  render(initial);
  if (!TERMINAL.has(initial.state)) timer = setTimeout(poll, 1000);
})();
