/* The genq console: fills the server-rendered pages from the /v1 API.
 *
 * The API key lives in this tab's sessionStorage only; it is sent in the Authorization
 * header of fetch() calls, never in a URL, a cookie or a log. Pages poll the API about
 * once a second, so progress moves without a reload (no event stream is needed).
 * Everything from the API is written with textContent, never as HTML.
 */
"use strict";

const KEY_NAME = "genq.apiKey";
const POLL_MS = 1000;
const JOBS_PAGE_SIZE = 20;
const ITEMS_PAGE_SIZE = 50;
const OPEN_STATES = ["queued", "running", "cancelling"];

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered ${status}`);
    this.status = status;
    this.code = error.code || "http_" + status;
    this.field = error.field || null;
  }
}

/* --- the key and the API ------------------------------------------------------ */

function apiKey() { return sessionStorage.getItem(KEY_NAME); }

async function request(method, path, { body, key, raw } = {}) {
  const headers = { Authorization: "Bearer " + (key || apiKey() || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let parsed = null;
    try { parsed = await response.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, parsed);
  }
  return raw ? response : response.json();
}

const api = {
  get: (path, options) => request("GET", path, options),
  post: (path, body) => request("POST", path, { body }),
  delete: (path) => request("DELETE", path, { raw: true }),
  blob: async (path) => (await request("GET", path, { raw: true })).blob(),
};

/* --- small helpers ------------------------------------------------------------ */

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function showAlert(message, link) {
  const box = $("#alert");
  box.replaceChildren(message);
  if (link) box.append(" ", el("a", { href: link.href, text: link.text }));
  box.hidden = false;
}

function clearAlert() { const box = $("#alert"); box.hidden = true; box.replaceChildren(); }

function signInUrl() {
  return "/signin?next=" + encodeURIComponent(location.pathname + location.search);
}

/* A failed call: a rejected key sends the person to sign in again; anything else is said. */
function report(error) {
  if (error instanceof ApiError && error.status === 401) {
    sessionStorage.removeItem(KEY_NAME);
    showAlert("Your API key was not accepted (revoked, or this server does not know it).",
      { href: signInUrl(), text: "Sign in again" });
    return;
  }
  showAlert(error instanceof ApiError ? `${error.message} (${error.code})` : `Cannot reach the API: ${error.message}`);
}

function percent(progress) { return `${Math.floor(progress * 100)} %`; }

function duration(seconds) {
  seconds = Math.round(seconds);
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

const ETA_REASONS = { not_measured: "not measured yet", no_live_worker: "no worker serves the model",
  unavailable: "unavailable" };

/* Queue position and ETA, when the API gives them (absent fields are left out). */
function etaText(job) {
  const parts = [];
  if (job.queue && job.queue.position) {
    const atLeast = job.queue.exact === false ? "≥ " : "";
    parts.push(`${atLeast}#${job.queue.position} in queue` +
      (job.queue.items_ahead != null ? ` (${atLeast}${job.queue.items_ahead} items ahead)` : ""));
  }
  if (typeof job.eta_seconds === "number") {
    parts.push(`ETA ${job.eta_reason === "lower_bound" ? "≥ " : ""}${duration(job.eta_seconds)}` +
      (job.eta_reason === "worker_lost" ? " (items of a lost worker wait for their lease to expire)" : ""));
  } else if (ETA_REASONS[job.eta_reason]) {
    parts.push(`ETA unknown: ${ETA_REASONS[job.eta_reason]}`);
  }
  return parts.join(", ");
}

function countsText(counts) {
  const done = counts.succeeded + counts.failed + counts.cancelled;
  let text = `${done}/${counts.total}`;
  if (counts.failed) text += `, ${counts.failed} failed`;
  if (counts.cancelled) text += `, ${counts.cancelled} cancelled`;
  return text;
}

function when(timestamp) { return timestamp ? new Date(timestamp).toLocaleString() : "—"; }

function isOpen(job) { return OPEN_STATES.includes(job.state); }

function canCancel(job) { return job.state === "queued" || job.state === "running"; }

function canRetry(job) { return !isOpen(job) && job.counts.failed > 0; }

/* Cancel or retry a job: a refusal is said; the caller then shows the job as it is. */
async function jobAction(jobId, verb) {
  try { await api.post(`/v1/jobs/${jobId}/${verb}`); clearAlert(); } catch (error) { report(error); }
}

function stateBadge(state) { return el("span", { class: `state state-${state}`, text: state }); }

function every(ms, step) {
  let timer = null;
  const tick = async () => {
    try {
      if (await step() === false) return;
    } catch (error) {
      report(error);
      if (error.status === 401 || error.status === 404) return;  // no key, or no such job: polling cannot help
    }
    timer = setTimeout(tick, ms);
  };
  tick();
  return { stop: () => clearTimeout(timer), restart: () => { clearTimeout(timer); tick(); } };
}

/* --- the header: who is signed in ------------------------------------------------ */

function initHeader() {
  const signedIn = Boolean(apiKey());
  $("#signout").hidden = !signedIn;
  $("#signin-link").hidden = signedIn;
  $("#who").textContent = signedIn ? "Signed in" : "";
  $("#signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_NAME);
    location.assign("/signin");
  });
}

function requireKey() {
  if (apiKey()) return true;
  location.replace(signInUrl());
  return false;
}

/* --- sign in ------------------------------------------------------------------- */

function initSignIn() {
  const form = $("#signin-form");
  const input = $("#api-key");
  input.focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearAlert();
    const key = input.value.trim();
    if (!key) { showAlert("Paste an API key first."); return; }
    try {
      await api.get("/v1/models", { key });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        showAlert("That API key was not accepted: it is unknown, revoked or mistyped. " +
          "Check it (genq up prints one) and try again.");
      } else {
        report(error);
      }
      input.select();
      return;
    }
    sessionStorage.setItem(KEY_NAME, key);
    const next = new URLSearchParams(location.search).get("next") || "/";
    location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
  });
}

/* --- jobs ---------------------------------------------------------------------- */

function initJobs() {
  if (!requireKey()) return;
  const filter = $("#state-filter");
  const body = $("#jobs-table tbody");
  const params = new URLSearchParams(location.search);
  filter.value = params.get("state") || "";
  let cursors = [null];  // cursors[i]: where page i starts
  let page = 0;
  let nextCursor = null;
  const rows = new Map();

  const load = async () => {
    const query = new URLSearchParams({ limit: JOBS_PAGE_SIZE });
    if (filter.value) query.set("state", filter.value);
    if (cursors[page]) query.set("cursor", cursors[page]);
    const listing = await api.get("/v1/jobs?" + query);
    nextCursor = listing.next_cursor;
    renderJobs(body, rows, listing.jobs, load);
    $("#jobs-next").disabled = !nextCursor;
    $("#jobs-prev").disabled = page === 0;
    $("#jobs-first").disabled = page === 0;
    $("#jobs-updated").textContent = "updated " + new Date().toLocaleTimeString();
  };
  const poller = every(POLL_MS, load);
  const go = (index) => { page = index; poller.restart(); };

  filter.addEventListener("change", () => {
    const url = new URL(location.href);
    if (filter.value) url.searchParams.set("state", filter.value); else url.searchParams.delete("state");
    history.replaceState(null, "", url);
    cursors = [null];
    go(0);
  });
  $("#jobs-filter").addEventListener("submit", (event) => event.preventDefault());
  $("#jobs-next").addEventListener("click", () => { cursors[page + 1] = nextCursor; go(page + 1); });
  $("#jobs-prev").addEventListener("click", () => go(Math.max(0, page - 1)));
  $("#jobs-first").addEventListener("click", () => go(0));
}

/* Rows are kept by job id and updated in place, so a focused button stays focused. */
function renderJobs(body, rows, jobs, reload) {
  const ids = jobs.map((job) => job.id);
  const sameOrder = ids.length === rows.size && ids.every((id, i) => [...rows.keys()][i] === id);
  if (!sameOrder) {
    rows.clear();
    body.replaceChildren();
    for (const job of jobs) { const row = jobRow(job, reload); rows.set(job.id, row); body.append(row.tr); }
    if (!jobs.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No jobs." })));
  }
  for (const job of jobs) updateJobRow(rows.get(job.id), job);
}

function jobRow(job, reload) {
  const cells = {
    state: el("td"), counts: el("td"), percent: el("span", { class: "percent" }), eta: el("td", { class: "muted" }),
    progress: el("progress", { max: 1, value: 0, "aria-label": `Progress of job ${job.id}` }),
  };
  const act = (label, verb) => el("button", {
    type: "button", text: label, "aria-label": `${label} job ${job.id}`,
    onclick: async () => { await jobAction(job.id, verb); reload(); },
  });
  cells.cancel = act("Cancel", "cancel");
  cells.retry = act("Retry", "retry");
  const tr = el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: `/jobs/${job.id}`, title: job.id }, el("code", { text: job.id.slice(0, 12) }))),
    el("td", { text: job.model }), cells.state, cells.counts,
    el("td", { class: "progress-cell" }, cells.progress, " ", cells.percent), cells.eta,
    el("td", { text: when(job.created_at) }), el("td", { class: "actions" }, cells.cancel, cells.retry));
  return { tr, cells };
}

function updateJobRow(row, job) {
  const { cells } = row;
  cells.state.replaceChildren(stateBadge(job.state));
  cells.counts.textContent = countsText(job.counts);
  cells.progress.value = job.progress;
  cells.percent.textContent = percent(job.progress);
  cells.eta.textContent = isOpen(job) ? etaText(job) : "";
  cells.cancel.hidden = !canCancel(job);
  cells.retry.hidden = !canRetry(job);
}

/* --- one job ------------------------------------------------------------------- */

function initJob() {
  if (!requireKey()) return;
  const jobId = document.body.dataset.jobId;
  const view = { offset: 0, job: null, itemsKey: "", images: new Map(), next: null };
  const refreshItems = async (force) => {
    const key = `${view.offset}:${JSON.stringify(view.job.counts)}`;
    if (!force && key === view.itemsKey) return;
    view.itemsKey = key;
    const page = await api.get(`/v1/jobs/${jobId}/items?offset=${view.offset}&limit=${ITEMS_PAGE_SIZE}`);
    view.next = page.next_offset;
    renderItems(page);
    if (view.job.task !== "text-generation") await renderGallery(view, page.items);
  };
  const poller = every(POLL_MS, async () => {
    view.job = await api.get(`/v1/jobs/${jobId}`);
    renderJob(view.job);
    await refreshItems(false);
    return isOpen(view.job);  // a finished job stops polling (until a retry)
  });
  const act = async (verb) => { await jobAction(jobId, verb); poller.restart(); };
  $("#job-cancel").addEventListener("click", () => act("cancel"));
  $("#job-retry").addEventListener("click", () => act("retry"));
  $("#job-download").addEventListener("click", () => download(jobId));
  $("#job-delete").addEventListener("click", async () => {
    if (!window.confirm("Delete this job, its items and all its outputs? This cannot be undone.")) return;
    try {
      await api.delete(`/v1/jobs/${jobId}`);
      window.location.assign("/");
    } catch (error) { report(error); poller.restart(); }
  });
  $("#items-prev").addEventListener("click", () => {
    view.offset = Math.max(0, view.offset - ITEMS_PAGE_SIZE); refreshItems(true).catch(report);
  });
  $("#items-next").addEventListener("click", () => {
    if (view.next !== null) { view.offset = view.next; refreshItems(true).catch(report); }
  });
  $("#viewer").addEventListener("click", (event) => { if (event.target.id === "viewer") event.target.close(); });
}

function renderJob(job) {
  const facts = [["State", stateBadge(job.state)], ["Model", `${job.model} (${job.task})`],
    ["Items", countsText(job.counts)], ["Priority", String(job.priority)], ["Created", when(job.created_at)],
    ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
    ["Expires", job.expires_at ? when(job.expires_at) : (isOpen(job) ? "—" : "never")]];
  $("#job-summary").replaceChildren(...facts.flatMap(([name, value]) =>
    [el("dt", { text: name }), el("dd", { id: `job-${name.toLowerCase()}` }, value)]));
  $("#job-progress").value = job.progress;
  $("#job-percent").textContent = percent(job.progress);
  $("#job-eta").textContent = isOpen(job) ? etaText(job) : "";
  const error = $("#job-error");
  error.hidden = !job.error;
  error.textContent = job.error || "";
  $("#job-params").replaceChildren(...Object.entries(job.params).flatMap(([name, value]) =>
    [el("dt", {}, el("code", { text: name })), el("dd", { text: JSON.stringify(value) })]));
  $("#job-cancel").hidden = !canCancel(job);
  $("#job-retry").hidden = !canRetry(job);
  $("#job-delete").hidden = isOpen(job);
  $("#job-download").hidden = job.counts.succeeded + job.counts.failed + job.counts.cancelled === 0;
  $("#gallery-section").hidden = job.task === "text-generation";
}

function renderItems(page) {
  const rows = page.items.map((item) => el("tr", { "data-index": item.index },
    el("td", { text: item.index }), el("td", { class: "prompt", text: item.prompt }), el("td", { text: item.seed }),
    el("td", {}, stateBadge(item.state)),
    el("td", { class: "text", text: item.output && "text" in item.output ? item.output.text : "" }),
    el("td", { class: "error", text: item.error || "" })));
  $("#items-table tbody").replaceChildren(...rows);
  const first = page.items.length ? page.items[0].index : 0;
  $("#items-range").textContent = page.items.length
    ? `items ${first}–${page.items[page.items.length - 1].index} of ${page.total}` : `no items of ${page.total}`;
  $("#items-prev").disabled = first === 0;
  $("#items-next").disabled = page.next_offset === null;
}

/* Thumbnails of the page's finished images, each fetched once (with the key) as a blob. */
async function renderGallery(view, items) {
  const gallery = $("#gallery");
  const shown = new Set([...gallery.children].map((li) => Number(li.dataset.index)));
  for (const li of [...gallery.children]) {
    if (!items.some((item) => item.index === Number(li.dataset.index))) li.remove();
  }
  for (const item of items) {
    if (!item.output || !item.output.image_url || shown.has(item.index)) continue;
    let url = view.images.get(item.index);
    if (!url) {
      url = URL.createObjectURL(await api.blob(item.output.image_url));
      view.images.set(item.index, url);
    }
    const label = `Item ${item.index}: ${item.prompt}`;
    const img = el("img", { src: url, alt: label, class: "thumb" });
    const button = el("button", { type: "button", class: "thumb-button", "aria-label": `Show item ${item.index} full size`,
      onclick: () => openViewer(url, label, item) }, img);
    const li = el("li", { "data-index": item.index }, button, el("span", { class: "caption", text: `#${item.index}` }));
    const after = [...gallery.children].find((other) => Number(other.dataset.index) > item.index);
    gallery.insertBefore(li, after || null);
  }
}

function openViewer(url, label, item) {
  const viewer = $("#viewer");
  $("#viewer-title").textContent = `Item ${item.index}`;
  $("#viewer-image").src = url;
  $("#viewer-image").alt = label;
  $("#viewer-caption").textContent = `prompt ${JSON.stringify(item.prompt)}, seed ${item.seed}`;
  viewer.showModal();
  $("#viewer-close").focus();
}

async function download(jobId) {
  const button = $("#job-download");
  button.disabled = true;
  button.textContent = "Preparing the archive…";
  try {
    const blob = await api.blob(`/v1/jobs/${jobId}/archive`);
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: `genq-${jobId}.zip`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
    button.textContent = "Download all results (.zip)";
  }
}

/* --- submit -------------------------------------------------------------------- */

function initSubmit() {
  if (!requireKey()) return;
  const form = $("#submit-form");
  const select = $("#model");
  const textarea = $("#prompts");
  const limits = { items: Number(document.body.dataset.maxItems), chars: Number(document.body.dataset.maxPromptChars) };
  const state = { models: new Map(), fileInputs: null };
  const choose = () => applyModel(state.models.get(select.value), select.selectedOptions[0]);

  api.get("/v1/models").then((listing) => {
    for (const model of listing.models) state.models.set(model.name, model);
    markUnavailable(select, state.models);
    choose();
  }).catch(report);
  select.addEventListener("change", choose);
  choose();

  const count = () => countPrompts(state, textarea, limits);
  textarea.addEventListener("input", () => { state.fileInputs = null; count(); });
  const load = async (file) => {
    try {
      state.fileInputs = parsePromptFile(file.name, await file.text());
      textarea.value = state.fileInputs.map((input) => input.prompt).join("\n");
      count();
    } catch (error) {
      showAlert(`${file.name}: ${error.message}`);
    }
  };
  $("#prompts-file").addEventListener("change", (event) => { if (event.target.files[0]) load(event.target.files[0]); });
  textarea.addEventListener("dragover", (event) => { event.preventDefault(); textarea.classList.add("dropping"); });
  textarea.addEventListener("dragleave", () => textarea.classList.remove("dropping"));
  textarea.addEventListener("drop", (event) => {
    event.preventDefault();
    textarea.classList.remove("dropping");
    if (event.dataTransfer.files[0]) load(event.dataTransfer.files[0]);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearAlert();
    count();
    if (!form.reportValidity()) return;
    const button = $("#submit-button");
    button.disabled = true;
    try {
      const accepted = await api.post("/v1/jobs", jobBody(form, state, textarea));
      location.assign(`/jobs/${accepted.id}`);
    } catch (error) {
      report(error);
      focusField(error.field);
      button.disabled = false;
    }
  });
}

/* A model whose weights this deployment lacks cannot take a job: its option says why and
   cannot be chosen (the API would refuse it with model_unavailable). */
function markUnavailable(select, models) {
  for (const option of select.options) {
    const model = models.get(option.value);
    if (!model || model.available !== false) continue;
    option.disabled = true;
    option.textContent = `${option.textContent} (unavailable: ${model.unavailable_reason})`;
  }
  if (select.selectedOptions[0] && select.selectedOptions[0].disabled) {
    const usable = [...select.options].find((option) => !option.disabled);
    if (usable) select.value = usable.value;
  }
}

function applyModel(model, option) {
  const task = option ? option.dataset.task : null;
  for (const fieldset of document.querySelectorAll("fieldset.params")) {
    const active = fieldset.dataset.task === task;
    fieldset.hidden = !active;
    fieldset.disabled = !active;
  }
  if (!model) return;
  const facts = [["Task", model.task], ["Output", model.output], ["Micro-batch", String(model.micro_batch_size)],
    ["Defaults", JSON.stringify(model.defaults)], ["Limits", JSON.stringify(model.limits)]];
  $("#model-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
  const fieldset = document.querySelector(`fieldset.params[data-task="${task}"]`);
  for (const input of fieldset.querySelectorAll("[data-param]")) applyParam(input, model);
}

/* One parameter's field for `model`: the model's default as its value, the task's bounds
   narrowed by the model's limits as min and max (the browser then refuses values outside
   them), and both said in the hint. The task's own, as the page was served, are kept. */
function applyParam(input, model) {
  const name = input.dataset.param;
  if (input.dataset.taskMin === undefined) {
    Object.assign(input.dataset, { taskMin: input.min, taskMax: input.max, taskValue: input.value,
      taskChecked: String(input.checked) });
  }
  const bounds = model.limits[name] || {};
  if (input.type === "number") {
    const taskMin = input.dataset.taskMin === "" ? -Infinity : Number(input.dataset.taskMin);
    const taskMax = input.dataset.taskMax === "" ? Infinity : Number(input.dataset.taskMax);
    input.min = bounds.min !== undefined ? String(Math.max(bounds.min, taskMin)) : input.dataset.taskMin;
    input.max = bounds.max !== undefined ? String(Math.min(bounds.max, taskMax)) : input.dataset.taskMax;
  }
  const hasDefault = name in model.defaults;
  if (input.type === "checkbox") {
    input.checked = hasDefault ? Boolean(model.defaults[name]) : input.dataset.taskChecked === "true";
    input.dataset.initial = String(input.checked);
  } else {
    input.value = hasDefault ? model.defaults[name] : input.dataset.taskValue;
    input.dataset.initial = input.value;
  }
  const hint = [];
  if (hasDefault) hint.push(`default ${JSON.stringify(model.defaults[name])}`);
  if (input.type === "number" && input.min !== "") hint.push(`≥ ${input.min}`);
  if (input.type === "number" && input.max !== "") hint.push(`≤ ${input.max}`);
  const help = document.getElementById(input.getAttribute("aria-describedby") || "");
  if (help) help.textContent = hint.join(", ");
}

function parsePromptFile(name, text) {
  const lines = text.split(/\r?\n/).filter((line) => line.trim() !== "");
  if (!name.toLowerCase().endsWith(".jsonl")) return lines.map((prompt) => ({ prompt }));
  return lines.map((line, i) => {
    let value;
    try { value = JSON.parse(line); } catch (_) { throw new Error(`line ${i + 1} is not JSON`); }
    if (typeof value === "string") return { prompt: value };
    if (value && typeof value.prompt === "string") {
      return Number.isInteger(value.seed) ? { prompt: value.prompt, seed: value.seed } : { prompt: value.prompt };
    }
    throw new Error(`line ${i + 1} is neither a string nor {"prompt": ...}`);
  });
}

function promptLines(textarea) { return textarea.value.split(/\r?\n/).filter((line) => line.trim() !== ""); }

function countPrompts(state, textarea, limits) {
  const prompts = promptLines(textarea);
  const longest = prompts.reduce((most, prompt, i) => (prompt.length > most.length ? { length: prompt.length, i } : most),
    { length: 0, i: -1 });
  let problem = "";
  if (!prompts.length) problem = "Give at least one prompt.";
  else if (prompts.length > limits.items) problem = `${prompts.length} prompts: the limit is ${limits.items}.`;
  else if (longest.length > limits.chars) {
    problem = `Prompt ${longest.i + 1} has ${longest.length} characters: the limit is ${limits.chars}.`;
  }
  textarea.setCustomValidity(problem);
  const seeds = state.fileInputs && state.fileInputs.some((input) => "seed" in input) ? " (seeds from the file)" : "";
  $("#prompts-count").textContent = problem || `${prompts.length} prompt${prompts.length === 1 ? "" : "s"}${seeds}`;
}

function jobBody(form, state, textarea) {
  const params = {};
  /* Only what was changed from the model's defaults: the server fills in the rest, so the
     job's parameters are exactly the registry's defaults plus what the person chose. */
  for (const input of form.querySelectorAll("fieldset.params:not([disabled]) [data-param]")) {
    if (input.type === "checkbox") {
      if (String(input.checked) !== input.dataset.initial) params[input.dataset.param] = input.checked;
    } else if (input.value !== "" && input.value !== input.dataset.initial) {
      params[input.dataset.param] = input.type === "number" ? Number(input.value) : input.value;
    }
  }
  const seed = $("#seed").value;
  if (seed !== "") params.seed = Number(seed);
  const body = { model: $("#model").value, params, priority: Number($("#priority").value) };
  const withSeeds = state.fileInputs && state.fileInputs.some((input) => "seed" in input);
  if (withSeeds) body.inputs = state.fileInputs; else body.prompts = promptLines(textarea);
  return body;
}

function focusField(field) {
  if (!field) return;
  const name = field.split(".").pop();
  const target = field.startsWith("params.")
    ? (name === "seed" ? $("#seed") : document.querySelector(`fieldset.params:not([disabled]) [data-param="${name}"]`))
    : { prompts: $("#prompts"), inputs: $("#prompts"), priority: $("#priority"), model: $("#model") }[field.split(".")[0]];
  if (target) target.focus();
}

/* --- models -------------------------------------------------------------------- */

function initModels() {
  if (!requireKey()) return;
  every(5 * POLL_MS, async () => {
    const listing = await api.get("/v1/workers");
    const serving = new Map();
    for (const worker of listing.workers) {
      for (const model of worker.models) serving.set(model, [...(serving.get(model) || []), worker.name]);
    }
    for (const row of document.querySelectorAll("#models-table tr[data-model]")) {
      const names = serving.get(row.dataset.model) || [];
      const cell = $(".served", row);
      cell.textContent = names.length ? `yes: ${names.join(", ")}` : "no worker";
      cell.className = names.length ? "served yes" : "served no";
    }
    $("#workers-line").textContent = `${listing.workers.length} worker${listing.workers.length === 1 ? "" : "s"} ` +
      `answered at ${new Date().toLocaleTimeString()}.`;
  });
}

/* --- start --------------------------------------------------------------------- */

const PAGES = { signin: initSignIn, jobs: initJobs, job: initJob, submit: initSubmit, models: initModels };

document.addEventListener("DOMContentLoaded", () => {
  initHeader();
  const init = PAGES[document.body.dataset.page];
  if (init) init();
});
