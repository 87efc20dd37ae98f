// The web UI's script: plain JavaScript, no framework, no build step, nothing from a CDN
// (the service must be usable offline; see serve_app/online/ui.py).
"use strict";

const API = new URL(".", document.baseURI.replace(/ui\/?$/, "")).pathname.replace(/\/$/, "");
const KEY_STORE = "asr-api-key";
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- API helpers
function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function errorMessage(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return `${status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${status}: ${text || "request failed"}`;
}

async function api(path, init = {}) {
  const res = await fetch(API + path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  const text = await res.text();
  if (!res.ok) {
    if (res.status === 401) showGlobalError("The service needs an API key: enter it at the top.");
    throw new Error(await errorMessage(res.status, text));
  }
  return JSON.parse(text);
}

// The options the page offers, as the API's form fields (only those set and offered).
function appendOptions(form, opts) {
  if (opts.model) form.append("model", opts.model);
  if (opts.language) form.append("language", opts.language);
  if (opts.hotwords) form.append("hotwords", opts.hotwords);
  if (opts.words) form.append("timestamp_granularities[]", "word");
  if (opts.split) form.append("channels", "split");
  else if (opts.diarize) {
    form.append("diarize", "true");
    if (opts.numSpeakers) form.append("num_speakers", opts.numSpeakers);
  }
}

// Translate to English: the same form to OpenAI's translations route.
function audioRoute(opts) {
  return opts.translate ? "/v1/audio/translations" : "/v1/audio/transcriptions";
}

// POST a file with upload progress (fetch has none): resolves the verbose_json body.
function transcribe(file, opts, onPhase) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name || "recording.webm");
    form.append("response_format", "verbose_json");
    appendOptions(form, opts);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + audioRoute(opts));
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => onPhase("uploading", e.lengthComputable ? e.loaded / e.total : null);
    xhr.upload.onload = () => onPhase("recognizing", 1);
    xhr.onerror = () => reject(new Error("network error (is the service up?)"));
    xhr.onload = async () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try { resolve(JSON.parse(xhr.responseText)); } catch (e) { reject(e); }
      } else {
        if (xhr.status === 401) showGlobalError("The service needs an API key: enter it at the top.");
        reject(new Error(await errorMessage(xhr.status, xhr.responseText)));
      }
    };
    onPhase("uploading", 0);
    xhr.send(form);
  });
}

// POST a file with stream=true and read its Server-Sent Events as they come: onDelta gets
// each transcript.text.delta ({delta, start, end}) in audio order; resolves the final
// verbose_json body (the done event's "response"). fetch, not XHR: XHR cannot hand over a
// body in pieces; the price is no upload progress.
async function transcribeStream(file, opts, onPhase, onDelta) {
  const form = new FormData();
  form.append("file", file, file.name || "recording.webm");
  form.append("response_format", "verbose_json");
  form.append("stream", "true");
  appendOptions(form, opts);
  onPhase("uploading", null);
  let res;
  try {
    res = await fetch(API + audioRoute(opts), { method: "POST", body: form, headers: authHeaders() });
  } catch (_) { throw new Error("network error (is the service up?)"); }
  if (!res.ok) {
    // Validation and admission errors come before the stream starts: plain JSON.
    if (res.status === 401) showGlobalError("The service needs an API key: enter it at the top.");
    throw new Error(await errorMessage(res.status, await res.text()));
  }
  onPhase("recognizing", 1);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      const event = JSON.parse(data);
      if (event.type === "transcript.text.delta") onDelta(event);
      else if (event.type === "transcript.text.done") return event.response || { text: event.text, segments: [] };
      else if (event.type === "error") {
        const err = event.error || {};
        throw new Error(`${err.code || "error"}: ${err.message || "the transcription failed"}`);
      }
    }
    if (done) throw new Error("the stream ended before the transcript was done");
  }
}

function showGlobalError(msg) {
  const el = $("global-error");
  el.textContent = msg;
  el.hidden = !msg;
}

// ---------------------------------------------------------------- transcript formats
function stamp(seconds, sep) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${sep}${pad(ms % 1000, 3)}`;
}
function segmentsOf(result) {
  return (result.segments || []).map((s) => ({
    start: s.start, end: s.end, text: (s.text || "").trim(), speaker: s.speaker || "",
  }));
}
const FORMATS = {
  txt: { ext: "txt", type: "text/plain", render: (r) => (r.text || "") + "\n" },
  json: { ext: "json", type: "application/json", render: (r) => JSON.stringify(r, null, 2) },
  srt: { ext: "srt", type: "text/plain", render: (r) => segmentsOf(r).map((s, i) =>
    `${i + 1}\n${stamp(s.start, ",")} --> ${stamp(s.end, ",")}\n${s.speaker ? `[${s.speaker}] ` : ""}${s.text}\n`).join("\n") },
  vtt: { ext: "vtt", type: "text/vtt", render: (r) => "WEBVTT\n\n" + segmentsOf(r).map((s) =>
    `${stamp(s.start, ".")} --> ${stamp(s.end, ".")}\n${s.speaker ? `<v ${s.speaker}>` : ""}${s.text}\n`).join("\n") },
};
function renderAs(result, responseFormat) {
  if (responseFormat === "verbose_json") return JSON.stringify(result, null, 2);
  if (responseFormat === "json") return JSON.stringify({ text: result.text });
  if (responseFormat === "text") return result.text || "";
  return FORMATS[responseFormat].render(result);
}
function baseName(name) { return (name || "recording").replace(/\.[^.]*$/, "") || "audio"; }
function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ---------------------------------------------------------------- store-only zip writer
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
// entries: [{name, data: Uint8Array}] -> Blob of a ZIP archive (method 0, no compression).
function makeZip(entries) {
  const enc = new TextEncoder();
  const parts = [], central = [];
  let offset = 0;
  for (const { name, data } of entries) {
    const nameBytes = enc.encode(name), crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true); local.setUint16(4, 20, true); local.setUint16(6, 0x0800, true);
    local.setUint16(8, 0, true); local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true); local.setUint32(22, data.length, true);
    local.setUint16(26, nameBytes.length, true);
    parts.push(local, nameBytes, data);
    const c = new DataView(new ArrayBuffer(46));
    c.setUint32(0, 0x02014b50, true); c.setUint16(4, 20, true); c.setUint16(6, 20, true);
    c.setUint16(8, 0x0800, true); c.setUint32(16, crc, true);
    c.setUint32(20, data.length, true); c.setUint32(24, data.length, true);
    c.setUint16(28, nameBytes.length, true); c.setUint32(42, offset, true);
    central.push(c, nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const size = central.reduce((n, p) => n + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true); end.setUint32(12, size, true); end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

// ---------------------------------------------------------------- tabs (WAI-ARIA pattern)
const tabs = Array.from(document.querySelectorAll("[role=tab]"));
const onShow = {};
function selectTab(tab, focus) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  history.replaceState(null, "", "#" + tab.id.replace("tab-", ""));
  const hook = onShow[tab.id];
  if (hook) hook();
}
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => selectTab(tab, false));
  tab.addEventListener("keydown", (e) => {
    const n = tabs.length;
    const to = { ArrowRight: (i + 1) % n, ArrowLeft: (i - 1 + n) % n, Home: 0, End: n - 1 }[e.key];
    if (to !== undefined) { e.preventDefault(); selectTab(tabs[to], true); }
  });
});

// ---------------------------------------------------------------- API key
$("apikey").value = sessionStorage.getItem(KEY_STORE) || "";
$("apikey-save").addEventListener("click", () => {
  const key = $("apikey").value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
  showGlobalError("");
  loadModels();
});

// ---------------------------------------------------------------- models
let modelIds = [];
let capabilities = {};  // model id -> its /v1/models capabilities ("" = the default model)
async function loadModels() {
  try {
    const body = await api("/v1/models");
    modelIds = body.data.map((m) => m.id);
    capabilities = {};
    for (const m of body.data) {
      if (m.capabilities) capabilities[m.id] = m.capabilities;
      if (m.default && m.capabilities) capabilities[""] = m.capabilities;
    }
    for (const sel of document.querySelectorAll(".model-select")) {
      const keep = sel.value;
      sel.replaceChildren(new Option("(default)", ""), ...modelIds.map((id) => new Option(id, id)));
      if (modelIds.includes(keep)) sel.value = keep;
      showOffered(sel);
    }
  } catch (e) { showGlobalError("Could not list models: " + e.message); }
}

// Show an option only when the chosen model supports it (unknown capabilities: show all).
function supports(caps, cap) {
  if (!caps) return true;
  if (cap === "language") return caps.language_detection || (caps.languages || []).length !== 1;
  if (cap === "hotwords") return Boolean(caps.hotwords);
  return Boolean(caps[cap]);
}
function showOffered(select) {
  const caps = capabilities[select.value];
  for (const label of select.closest("fieldset").querySelectorAll("label[data-cap]")) {
    label.hidden = !supports(caps, label.dataset.cap);
  }
}
for (const sel of document.querySelectorAll(".model-select")) {
  sel.addEventListener("change", () => showOffered(sel));
}

function dropZone(zone, onFiles) {
  // Keyboard: Enter or Space on the focused zone opens the file picker.
  zone.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target === zone) {
      e.preventDefault();
      zone.querySelector("input[type=file]").click();
    }
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (e.dataTransfer.files.length) onFiles(Array.from(e.dataTransfer.files));
  });
}

// ---------------------------------------------------------------- single file
let singleFile = null, singleResult = null;
function chooseSingle(file) {
  singleFile = file;
  $("single-chosen").textContent = `${file.name || "recording"} (${(file.size / 1024).toFixed(0)} KiB)`;
  $("single-go").disabled = false;
}
$("single-file").addEventListener("change", (e) => { if (e.target.files[0]) chooseSingle(e.target.files[0]); });
dropZone($("single-drop"), (files) => chooseSingle(files[0]));

let recorder = null;
$("record").addEventListener("click", async () => {
  const button = $("record");
  if (recorder) { recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("single-status", "Recording needs a browser with MediaRecorder (and https or localhost).", "error");
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const type = MediaRecorder.isTypeSupported("audio/webm;codecs=opus") ? "audio/webm;codecs=opus" : "";
    recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    const chunks = [];
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      recorder = null;
      button.textContent = "Record from microphone";
      chooseSingle(new File(chunks, "recording.webm", { type: "audio/webm" }));
    };
    recorder.start();
    button.textContent = "Stop recording";
    setStatus("single-status", "Recording... press Stop recording when done.");
  } catch (e) { setStatus("single-status", "Microphone unavailable: " + e.message, "error"); }
});

function setStatus(id, text, kind) {
  const el = $(id);
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

// An option is sent only while the chosen model offers it (its label is shown).
function offered(id) {
  const el = $(id);
  return el && !el.closest("label").hidden ? el : null;
}
function options(prefix) {
  const value = (id) => (offered(id) ? offered(id).value.trim() : "");
  const checked = (id) => Boolean(offered(id) && offered(id).checked);
  return {
    model: $(prefix + "-model").value,
    language: value(prefix + "-language"),
    hotwords: value(prefix + "-hotwords"),
    words: checked(prefix + "-words"),
    translate: checked(prefix + "-translate"),
    diarize: checked(prefix + "-diarize"),
    numSpeakers: value(prefix + "-num-speakers"),
    split: checked(prefix + "-split"),
  };
}

$("single-go").addEventListener("click", async () => {
  if (!singleFile) return;
  $("single-go").disabled = true;
  $("single-result").hidden = true;
  const started = performance.now();
  let partial = "", count = 0;
  const body = $("single-segments").tBodies[0];
  try {
    singleResult = await transcribeStream(singleFile, options("single"), (phase) => {
      setStatus("single-status", phase === "uploading" ? "Uploading..." : "Recognizing...", "busy");
    }, (event) => {
      // Text as it is recognized: each delta extends the transcript and adds a row; the
      // final result (done) replaces both with the finished transcript.
      if (count === 0) { body.replaceChildren(); $("single-raw").textContent = ""; }
      count += 1;
      partial += event.delta;
      $("single-text").textContent = partial;
      body.append(row([stamp(event.start, "."), stamp(event.end, "."), "", event.delta.trim()]));
      $("single-result").hidden = false;
      setStatus("single-status", `Recognizing... ${count} segment${count === 1 ? "" : "s"} so far.`, "busy");
    });
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    setStatus("single-status", `Done: ${Number(singleResult.duration || 0).toFixed(1)} s of audio in ${secs} s.`);
    showSingle();
  } catch (e) {
    setStatus("single-status", e.message, "error");
  } finally { $("single-go").disabled = false; }
});

function showSingle() {
  const r = singleResult;
  $("single-text").textContent = r.text || "(no speech)";
  const body = $("single-segments").tBodies[0];
  body.replaceChildren(
    ...segmentsOf(r).map((s) => row([stamp(s.start, "."), stamp(s.end, "."), s.speaker || "", s.text])),
  );
  const fmt = $("single-format").value;
  $("single-format-name").textContent = fmt;
  $("single-raw").textContent = renderAs(r, fmt);
  $("single-result").hidden = false;
}
$("single-format").addEventListener("change", () => { if (singleResult) showSingle(); });
for (const b of document.querySelectorAll("#single-result .downloads button")) {
  b.addEventListener("click", () => {
    const f = FORMATS[b.dataset.fmt];
    download(`${baseName(singleFile && singleFile.name)}.${f.ext}`, new Blob([f.render(singleResult)], { type: f.type }));
  });
}

function row(cells, classes = []) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c); else td.textContent = c;
    if (classes[i]) td.className = classes[i];
    tr.append(td);
  });
  return tr;
}

// ---------------------------------------------------------------- batch
let queue = [];  // {file, state, message, result, tr}
function addBatchFiles(files) {
  for (const file of files) {
    const item = { file, state: "waiting", message: "", result: null };
    item.tr = row([file.name, "", "", ""]);
    item.tr.dataset.file = file.name;
    queue.push(item);
    $("batch-table").tBodies[0].append(item.tr);
    paintItem(item);
  }
  $("batch-go").disabled = !queue.some((i) => i.state === "waiting");
  paintBatch();
}
function paintItem(item) {
  const [, state, dur, text] = item.tr.children;
  state.textContent = item.state;
  state.className = "state-" + item.state;
  dur.textContent = item.result ? Number(item.result.duration || 0).toFixed(1) : "";
  dur.className = "num";
  text.textContent = item.state === "error" ? item.message : item.result ? item.result.text : "";
  if (item.state === "error") text.className = "error"; else text.className = "";
}
function paintBatch() {
  const total = queue.length;
  const finished = queue.filter((i) => i.state === "done" || i.state === "error").length;
  const done = queue.filter((i) => i.state === "done").length;
  const failed = queue.filter((i) => i.state === "error").length;
  $("batch-progress").max = Math.max(1, total);
  $("batch-progress").value = finished;
  $("batch-summary").textContent = total ? `${finished}/${total} finished: ${done} done, ${failed} failed.` : "";
  $("batch-zip").disabled = done === 0;
  $("batch-csv").disabled = finished === 0;
}
$("batch-files").addEventListener("change", (e) => { addBatchFiles(Array.from(e.target.files)); e.target.value = ""; });
dropZone($("batch-drop"), addBatchFiles);
$("batch-clear").addEventListener("click", () => {
  queue = queue.filter((i) => i.state === "uploading" || i.state === "recognizing");
  $("batch-table").tBodies[0].replaceChildren(...queue.map((i) => i.tr));
  paintBatch();
});
$("batch-go").addEventListener("click", async () => {
  $("batch-go").disabled = true;
  const opts = options("batch");
  const parallel = Math.min(8, Math.max(1, Number($("batch-parallel").value) || 3));
  const next = () => queue.find((i) => i.state === "waiting");
  async function worker() {
    for (let item = next(); item; item = next()) {
      item.state = "uploading"; paintItem(item);
      try {
        item.result = await transcribe(item.file, opts, (phase) => { item.state = phase; paintItem(item); });
        item.state = "done";
      } catch (e) {  // one bad file never stops the rest
        item.state = "error"; item.message = e.message;
      }
      paintItem(item); paintBatch();
    }
  }
  await Promise.all(Array.from({ length: parallel }, worker));
  $("batch-go").disabled = !next();
});
function csvCell(v) { const s = String(v == null ? "" : v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; }
function summaryCsv() {
  const lines = [["file", "state", "audio_s", "language", "error", "text"].join(",")];
  for (const i of queue) {
    const r = i.result || {};
    lines.push([i.file.name, i.state, r.duration == null ? "" : Number(r.duration).toFixed(3),
      r.language || "", i.state === "error" ? i.message : "", r.text || ""].map(csvCell).join(","));
  }
  return lines.join("\n") + "\n";
}
$("batch-csv").addEventListener("click", () => download("summary.csv", new Blob([summaryCsv()], { type: "text/csv" })));
$("batch-zip").addEventListener("click", () => {
  const enc = new TextEncoder(), entries = [], used = new Set();
  for (const i of queue.filter((q) => q.state === "done")) {
    let base = baseName(i.file.name), n = 2;
    while (used.has(base)) base = `${baseName(i.file.name)}-${n++}`;
    used.add(base);
    for (const f of ["txt", "srt", "vtt", "json"]) {
      entries.push({ name: `${base}/${base}.${FORMATS[f].ext}`, data: enc.encode(FORMATS[f].render(i.result)) });
    }
  }
  entries.push({ name: "summary.csv", data: enc.encode(summaryCsv()) });
  download("transcripts.zip", makeZip(entries));
});

// ---------------------------------------------------------------- system
let lastSystem = null, systemTimer = null;
const fmt = (v, d = 1) => (v == null || Number.isNaN(v) ? "-" : Number(v).toFixed(d));
async function refreshSystem() {
  try {
    lastSystem = await api("/v1/system");
    paintSystem(lastSystem);
    $("system-time").textContent = "updated " + new Date().toLocaleTimeString();
    return lastSystem;
  } catch (e) { $("system-time").textContent = e.message; return null; }
}
function kv(rows) {
  const t = document.createElement("table");
  for (const [k, v] of rows) {
    const tr = document.createElement("tr"), th = document.createElement("th"), td = document.createElement("td");
    th.textContent = k; td.textContent = v; td.className = "num"; td.dataset.key = k;
    tr.append(th, td); t.append(tr);
  }
  return t;
}
function paintSystem(s) {
  const body = $("system-deployments").tBodies[0];
  body.replaceChildren(...Object.entries(s.deployments || {}).map(([name, d]) =>
    row([name, d.status, Object.entries(d.replica_states || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "0"])));
  const cards = Object.entries(s.models || {}).map(([name, m]) => {
    const card = document.createElement("div");
    card.className = "card"; card.dataset.model = name;
    const h = document.createElement("h3"); h.textContent = name;
    const t = m.totals || {};
    const table = kv([
      ["replicas reporting", String((m.replicas || []).length)],
      ["batches", String(t.num_batches || 0)],
      ["items", String(t.items || 0)],
      ["mean items per batch", fmt(t.num_batches ? t.items / t.num_batches : null, 2)],
      ["audio s", fmt(t.audio_s)],
      ["busy s", fmt(t.busy_s)],
      ["padding efficiency", fmt(t.padding_efficiency, 3)],
      [`RTFx (last ${fmt(m.rtfx && m.rtfx.window_s, 0)} s)`, fmt(m.rtfx && m.rtfx.rtfx, 2)],
      ["queued audio s", fmt(m.queued_audio_s)],
      ["errors", String(Object.values(t.errors || {}).reduce((a, b) => a + b, 0))],
    ]);
    const errs = Object.entries(t.errors || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    const e = document.createElement("p"); e.className = "muted"; e.textContent = errs ? "errors by kind: " + errs : "";
    const hist = document.createElement("div"); hist.className = "bars"; hist.setAttribute("aria-label", "batch size histogram");
    const counts = Object.entries(t.batch_size_counts || {});
    const max = Math.max(1, ...counts.map(([, v]) => v));
    for (const [size, count] of counts) {
      const label = document.createElement("span"); label.textContent = `${size} items`;
      const bar = document.createElement("div"); bar.className = "bar"; bar.style.width = `${(100 * count) / max}%`;
      const c = document.createElement("span"); c.textContent = count;
      hist.append(label, bar, c);
    }
    const hh = document.createElement("h3"); hh.textContent = "Batch sizes";
    const gpu = (m.replicas || []).filter((r) => r.gpu_memory_allocated_bytes != null).map((r) =>
      [`GPU MiB ${r.replica_id.slice(-8)}`, `${fmt(r.gpu_memory_allocated_bytes / 2 ** 20, 0)} (max ${fmt(r.gpu_max_memory_allocated_bytes / 2 ** 20, 0)})`]);
    card.append(h, table, e, hh, hist);
    if (gpu.length) card.append(kv(gpu));
    return card;
  });
  $("system-models").replaceChildren(...cards);
}
function systemTick() {
  clearTimeout(systemTimer);
  if ($("panel-system").hidden && $("panel-tune").hidden) return;
  const tuneOpen = !$("panel-tune").hidden;
  (tuneOpen ? refreshTune() : refreshSystem()).finally(() => {
    if ($("system-auto").checked || tuneOpen) systemTimer = setTimeout(systemTick, 2000);
  });
}
$("system-refresh").addEventListener("click", refreshSystem);
$("system-auto").addEventListener("change", systemTick);
onShow["tab-system"] = systemTick;

// ---------------------------------------------------------------- tune
let tuneState = null, beforeRtfx = null;
async function refreshTune() {
  try {
    const [tune, system] = await Promise.all([api("/v1/tune"), refreshSystem()]);
    tuneState = tune;
    const sel = $("tune-model"), keep = sel.value;
    const names = Object.keys(tune.models || {});
    if (sel.options.length !== names.length) sel.replaceChildren(...names.map((n) => new Option(n, n)));
    if (names.includes(keep)) sel.value = keep;
    paintTune(system);
  } catch (e) { setStatus("tune-status", e.message, "error"); }
}
function paintTune(system) {
  const model = $("tune-model").value, m = tuneState && tuneState.models[model];
  if (!m) return;
  const body = $("tune-current").tBodies[0];
  body.replaceChildren(...(m.replicas || []).map((r) =>
    row([r.replica_id, fmt(r.max_batch_audio_s, 3), fmt(r.batch_wait_timeout_s, 3)], ["", "num", "num"])));
  const inputs = [["tune-max-batch", "max_batch_audio_s"], ["tune-wait", "batch_wait_timeout_s"]];
  for (const [id, key] of inputs) if (document.activeElement !== $(id) && !$(id).dataset.dirty) $(id).value = m.settings[key];
  const rtfx = system && system.models[model] && system.models[model].rtfx;
  if (beforeRtfx && beforeRtfx.model === model) {
    $("tune-before").textContent = `${fmt(beforeRtfx.rtfx, 2)} x (over ${fmt(beforeRtfx.window_s, 0)} s)`;
    const since = system && system.models[model] && system.models[model].rtfx_since_tune;
    $("tune-after").textContent = since ? `${fmt(since.rtfx, 2)} x (over ${fmt(since.window_s, 0)} s)` : "-";
  } else {
    $("tune-before").textContent = "-";
    $("tune-after").textContent = rtfx ? `${fmt(rtfx.rtfx, 2)} x (over ${fmt(rtfx.window_s, 0)} s)` : "-";
  }
}
for (const id of ["tune-max-batch", "tune-wait"]) $(id).addEventListener("input", () => { $(id).dataset.dirty = "1"; });
$("tune-model").addEventListener("change", () => {
  for (const id of ["tune-max-batch", "tune-wait"]) delete $(id).dataset.dirty;
  paintTune(lastSystem);
});
$("tune-apply").addEventListener("click", async () => {
  const model = $("tune-model").value;
  const body = { model };
  const maxBatch = $("tune-max-batch").value, wait = $("tune-wait").value;
  if (maxBatch !== "") body.max_batch_audio_s = Number(maxBatch);
  if (wait !== "") body.batch_wait_timeout_s = Number(wait);
  const rtfx = lastSystem && lastSystem.models[model] && lastSystem.models[model].rtfx;
  setStatus("tune-status", "Applying...", "busy");
  try {
    const res = await api("/v1/tune", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    beforeRtfx = { model, ...(rtfx || { rtfx: null, window_s: null }) };
    for (const id of ["tune-max-batch", "tune-wait"]) delete $(id).dataset.dirty;
    const s = res.settings;
    setStatus("tune-status", `In force on ${res.replicas.length} replica(s): max_batch_audio_s=${s.max_batch_audio_s}, batch_wait_timeout_s=${s.batch_wait_timeout_s}.`);
    await refreshTune();
  } catch (e) { setStatus("tune-status", e.message, "error"); }
});
onShow["tab-tune"] = systemTick;

// ---------------------------------------------------------------- start
loadModels();
const start = tabs.find((t) => t.id === "tab-" + location.hash.slice(1));
selectTab(start || tabs[0], false);
