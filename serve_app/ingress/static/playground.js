// The playground: submits a job, follows its event stream, plays and describes the result; an output
// (or an upload) can be the source of the next job's task.
// Talks only to this service's own API (relative URLs); keeps the API key and the recent jobs in localStorage.
"use strict";

const BASE = location.pathname.replace(/\/playground\/?$/, "");
const KEY_STORAGE = "acestep.playground.apiKey";
const JOBS_STORAGE = "acestep.playground.jobs";
const RECENT_LIMIT = 20;
const $ = (selector) => document.querySelector(selector);

const state = { presets: {}, models: {}, job: null, stream: null, blobUrls: [] };
// The tasks that start from a source recording (the rest ask for a duration instead).
const SOURCE_TASKS = ["repaint", "extend", "edit", "audio2audio", "cover"];

// ------------------------------------------------------------------ API

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.fields = error.fields || [];
  }
}

// A FormData body goes as multipart (the browser writes its boundary), anything else as JSON.
async function api(method, path, body, signal) {
  const headers = { ...authHeaders() };
  const multipart = body instanceof FormData;
  if (body !== undefined && !multipart) headers["content-type"] = "application/json";
  const response = await fetch(BASE + path, {
    method, headers, signal, body: body === undefined || multipart ? body : JSON.stringify(body),
  });
  if (response.status === 401) askForKey("This server needs an API key.");
  if (!response.ok) {
    let detail = null;
    try { detail = await response.json(); } catch (_) { /* not JSON: the status says enough */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

// ------------------------------------------------------------------ API key

function askForKey(reason) {
  $("#key-box").hidden = false;
  if (reason) $("#key-reason").textContent = reason;
  $("#api-key").focus();
}

$("#toggle-key").addEventListener("click", () => { $("#key-box").hidden = !$("#key-box").hidden; });
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY_STORAGE, $("#api-key").value.trim());
  $("#key-box").hidden = true;
  loadCatalog();
});
$("#forget-key").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORAGE);
  $("#api-key").value = "";
});

// ------------------------------------------------------------------ catalog and form

async function loadCatalog() {
  try {
    const [presets, models] = await Promise.all([
      api("GET", "/presets").then((r) => r.json()),
      api("GET", "/models").then((r) => r.json()),
    ]);
    showError(null);
    state.presets = Object.fromEntries(presets.map((preset) => [preset.name, preset]));
    state.models = Object.fromEntries(models.filter((model) => model.served).map((model) => [model.name, model]));
    fillSelect($("#preset"), presets.map((p) => p.name), "none");
    fillSelect($("#model"), Object.keys(state.models));
    showDefaults();
    showTasks();
  } catch (error) {
    showError(error);
  }
}

function fillSelect(select, names, emptyLabel) {
  const chosen = select.value;
  select.replaceChildren();
  if (emptyLabel !== undefined) select.append(new Option(emptyLabel, ""));
  for (const name of names) select.append(new Option(name, name));
  if ([...select.options].some((option) => option.value === chosen)) select.value = chosen;
}

// Empty advanced fields show what they resolve to: the preset's value, else the model's default.
function showDefaults() {
  const model = state.models[$("#model").value];
  const preset = state.presets[$("#preset").value];
  const resolved = { ...(model ? model.defaults : {}), ...(preset ? preset.params : {}) };
  for (const control of document.querySelectorAll("#advanced [data-field]")) {
    const value = resolved[control.dataset.field];
    const shown = value === undefined ? "" : String(value);
    if (control.tagName === "SELECT") control.options[0].textContent = shown ? `(${shown})` : "";
    else control.placeholder = shown;
  }
  if (model) {
    const duration = $("#audio_duration");
    duration.min = model.min_duration_s;
    duration.max = model.max_duration_s;
  }
}
$("#preset").addEventListener("change", showDefaults);
$("#model").addEventListener("change", () => { showDefaults(); showTasks(); });

// The task list is the chosen model's; each task shows only the fields it reads.
function showTasks() {
  const model = state.models[$("#model").value];
  fillSelect($("#task"), model ? model.tasks : ["text2music"]);
  showTaskFields();
}

function showTaskFields() {
  const task = $("#task").value;
  for (const element of document.querySelectorAll("[data-tasks]")) {
    element.hidden = !element.dataset.tasks.split(" ").includes(task);
  }
  $("#task-fields").hidden = ![...$("#task-fields").querySelectorAll("[data-tasks]")].some((e) => !e.hidden);
}
$("#task").addEventListener("change", showTaskFields);

// A source the page knows of (an output shown here or an upload), selected for the next job.
function offerSource(key, label) {
  const select = $("#source");
  if (![...select.options].some((option) => option.value === key)) select.append(new Option(label, key));
  select.value = key;
}

function useAsSource(output) {
  offerSource(output.key, `output · seed ${output.seed} · ${output.duration} s`);
  if (!SOURCE_TASKS.includes($("#task").value)) {
    const model = state.models[$("#model").value];
    const offered = model ? model.tasks : [];
    const task = SOURCE_TASKS.find((name) => offered.includes(name));
    if (task) $("#task").value = task;
  }
  showTaskFields();
  $("#task").scrollIntoView({ block: "center" });
}

$("#source-file").addEventListener("change", async () => {
  const file = $("#source-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    const uploaded = await (await api("POST", "/uploads", form)).json();
    showError(null);
    offerSource(uploaded.key, `upload · ${file.name} · ${uploaded.duration.toFixed(1)} s`);
  } catch (error) {
    showError(error);
  }
  $("#source-file").value = "";
});

function requestBody() {
  const body = {};
  for (const control of document.querySelectorAll("#generate-form [data-field]")) {
    control.removeAttribute("aria-invalid");
    if (control.closest("[hidden]")) continue; // a field the chosen task does not read
    const text = control.value.trim();
    if (text === "" && control.dataset.field !== "prompt") continue;
    if (control.dataset.field === "source") body.source = { key: text };
    else if (control.dataset.type === "bool") body[control.dataset.field] = text === "true";
    else if (control.dataset.type === "ints") body[control.dataset.field] = text.split(",").map(Number);
    else if (control.type === "number" || control.dataset.type === "int") body[control.dataset.field] = Number(text);
    else body[control.dataset.field] = control.id === "prompt" || control.id === "lyrics" ? control.value : text;
  }
  return body;
}

function showError(error) {
  const box = $("#error");
  box.hidden = !error;
  if (!error) return;
  const fields = (error.fields || []).map((f) => `${f.field}: ${f.message}`);
  box.textContent = [error.message, ...fields].join("\n");
  for (const { field } of error.fields || []) {
    const control = document.querySelector(`[data-field="${field.split(".")[0]}"]`);
    if (control) control.setAttribute("aria-invalid", "true");
  }
}

// ------------------------------------------------------------------ jobs

$("#generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = requestBody();
  $("#submit").disabled = true;
  try {
    const accepted = await (await api("POST", "/jobs", body)).json();
    showError(null);
    remember(accepted.job_id, body.prompt);
    follow(accepted.job_id);
  } catch (error) {
    showError(error);
  } finally {
    $("#submit").disabled = false;
  }
});

$("#cancel").addEventListener("click", async () => {
  if (!state.job) return;
  $("#cancel").disabled = true;
  try {
    render(await (await api("DELETE", `/jobs/${state.job}`)).json());
  } catch (error) {
    showError(error);
  }
});

// Follows a job's server-sent events through fetch (EventSource cannot send the Authorization header).
async function follow(jobId) {
  if (state.stream) state.stream.abort();
  const stream = new AbortController();
  state.stream = stream;
  state.job = jobId;
  resetJobView(jobId);
  try {
    let status = null;
    while (!(status && isFinished(status))) {
      const response = await api("GET", `/jobs/${jobId}/events`, undefined, stream.signal);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5)).join("\n");
          if (data) {
            status = JSON.parse(data);
            if (state.job === jobId) render(status);
          }
        }
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error);
  }
}

function isFinished(status) {
  return ["succeeded", "failed", "cancelled"].includes(status.status);
}

function resetJobView(jobId) {
  for (const url of state.blobUrls) URL.revokeObjectURL(url);
  state.blobUrls = [];
  $("#job").hidden = false;
  $("#job-id").textContent = jobId;
  $("#job-status").textContent = "";
  $("#job-status").className = "badge"; // the previous job's status is not this one's
  $("#outputs").replaceChildren();
  delete $("#outputs").dataset.job;
  $("#resolved").hidden = true;
  $("#progress").max = 1;
  $("#progress").value = 0;
  $("#progress-text").textContent = "";
}

function render(status) {
  const badge = $("#job-status");
  badge.textContent = status.status;
  badge.className = `badge ${status.status}`;
  $("#cancel").disabled = isFinished(status);
  const progress = status.progress;
  $("#progress").max = progress.total_steps || 1;
  $("#progress").value = status.status === "succeeded" ? progress.total_steps : progress.step;
  $("#progress-text").textContent = describeProgress(status);
  if (status.status === "succeeded") showResult(status.result);
  if (status.status === "failed") showError(status.error);
}

function describeProgress(status) {
  const { stage, step, total_steps: total } = status.progress;
  if (status.status === "queued") {
    return status.queue_position ? `queued behind ${status.queue_position} job(s)` : "queued";
  }
  if (isFinished(status)) return status.status;
  if (stage === "encoding") return `step ${total} of ${total} · encoding and storing`;
  const eta = status.eta_s == null ? "" : ` · ETA ${Math.max(0, Math.round(status.eta_s))} s`;
  return `step ${step} of ${total}${eta}`;
}

async function showResult(result) {
  if ($("#outputs").dataset.job === result.request_id) return;
  $("#outputs").dataset.job = result.request_id;
  for (const output of result.outputs) {
    const row = document.createElement("div");
    row.className = "output";
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.dataset.seed = output.seed;
    const link = document.createElement("a");
    link.textContent = `seed ${output.seed} · ${output.format} · ${output.duration} s`;
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "secondary use-source";
    reuse.textContent = "Use as source";
    reuse.addEventListener("click", () => useAsSource(output));
    row.append(audio, link, reuse);
    $("#outputs").append(row);
    const url = await playableUrl(output.url);
    audio.src = url;
    link.href = url;
    link.download = output.key.split("/").pop();
  }
  $("#params").textContent = JSON.stringify(result.params, null, 2);
  $("#curl").textContent = curlCommand(result.params);
  $("#resolved").hidden = false;
  $("#resolved").open = true;
}

// Audio elements cannot send an Authorization header: with a key the file comes through fetch (whole);
// without one the browser streams it from /outputs with Range requests, so it can seek before it has loaded.
async function playableUrl(url) {
  if (/^https?:/.test(url) || !apiKey()) return /^https?:/.test(url) ? url : BASE + url;
  const response = await api("GET", url);
  const blobUrl = URL.createObjectURL(await response.blob());
  state.blobUrls.push(blobUrl);
  return blobUrl;
}

function curlCommand(params) {
  const quoted = JSON.stringify(params).replaceAll("'", "'\\''");
  const auth = apiKey() ? ' -H "Authorization: Bearer $ACESTEP_API_KEY"' : "";
  return `curl -s ${location.origin}${BASE}/generate -H 'content-type: application/json'${auth} -d '${quoted}'`;
}

$("#copy-curl").addEventListener("click", async () => {
  const text = $("#curl").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // Not a secure context (plain http to another host): copy through a selection instead.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("#copied").hidden = false;
  setTimeout(() => { $("#copied").hidden = true; }, 1500);
});

// ------------------------------------------------------------------ recent jobs

function recentJobs() {
  try { return JSON.parse(localStorage.getItem(JOBS_STORAGE)) || []; } catch (_) { return []; }
}

function remember(jobId, prompt) {
  const jobs = [{ id: jobId, prompt, at: new Date().toISOString() }, ...recentJobs()].slice(0, RECENT_LIMIT);
  localStorage.setItem(JOBS_STORAGE, JSON.stringify(jobs));
  showRecent();
}

function showRecent() {
  const list = $("#recent");
  list.replaceChildren();
  for (const job of recentJobs()) {
    const item = document.createElement("li");
    item.dataset.jobId = job.id;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = job.prompt.length > 60 ? `${job.prompt.slice(0, 57)}...` : job.prompt;
    open.addEventListener("click", () => follow(job.id));
    const when = document.createElement("small");
    when.textContent = `${new Date(job.at).toLocaleString()} · ${job.id.slice(0, 8)}`;
    item.append(open, when);
    list.append(item);
  }
}

$("#api-key").value = apiKey();
showRecent();
loadCatalog();
