// The Live tab: microphone -> AudioWorklet (pcm-worklet.js: mono PCM16 at 24 kHz, ~100 ms
// chunks) -> websocket /v1/realtime (OpenAI's realtime transcription events, server_vad
// turns, the partial-hypothesis extension) -> one line per utterance: grey while it is
// spoken (each partial replaces the last), black once final, with its start time.
// Plain JavaScript, loaded after app.js, whose globals it uses (API, KEY_STORE, $,
// setStatus, options).
"use strict";

(() => {
  const RATE = 24000; // OpenAI's default input rate; the worklet resamples to it
  const CHUNK_MS = 100;
  const MAX_QUEUED = 100; // chunks held while the socket opens (10 s)
  const FINISH_TIMEOUT_MS = 20000; // Stop waits this long for the last finals
  const KEY_SUBPROTOCOL = "openai-insecure-api-key.";
  const ITEM = "conversation.item.input_audio_transcription";

  let live = null; // the running session: {ws, stream, ctx, node, queue, pending, speaking, ...}

  function realtimeUrl() {
    const url = new URL(API + "/v1/realtime", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("intent", "transcription");
    return url.href;
  }

  // m:ss (h:mm:ss past an hour) of a stream time in ms.
  function clock(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const mm = Math.floor(s / 60) % 60, ss = String(s % 60).padStart(2, "0");
    return s >= 3600 ? `${Math.floor(s / 3600)}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
  }

  function base64(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  function showError(message) {
    const el = $("live-error");
    el.textContent = message;
    el.hidden = !message;
  }

  // ------------------------------------------------------------ the transcript lines
  function line(itemId, startMs) {
    let li = $("live-lines").querySelector(`li[data-item="${CSS.escape(itemId)}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.item = itemId;
      li.className = "partial";
      const time = document.createElement("span");
      time.className = "time";
      const text = document.createElement("span");
      text.className = "text";
      li.append(time, text);
      $("live-lines").append(li);
    }
    if (startMs != null) li.querySelector(".time").textContent = clock(startMs);
    li.scrollIntoView({ block: "nearest" });
    return li;
  }

  function setLine(li, text, state) {
    li.className = state;
    li.querySelector(".text").textContent = text;
  }

  // ------------------------------------------------------------ server events
  function onEvent(s, event) {
    switch (event.type) {
      case "session.updated":
        s.configured = true;
        setStatus("live-status", "Listening: speak now.", "busy");
        for (const chunk of s.queue.splice(0)) sendAudio(s, chunk);
        break;
      case "input_audio_buffer.speech_started":
        s.pending.add(event.item_id);
        s.speaking = event.item_id;
        line(event.item_id, event.audio_start_ms);
        break;
      case "input_audio_buffer.speech_stopped":
        if (s.speaking === event.item_id) s.speaking = null;
        break;
      case "input_audio_buffer.committed":
        s.pending.add(event.item_id);
        if (s.speaking === event.item_id) s.speaking = null;
        line(event.item_id);
        break;
      case ITEM + ".partial": {
        const li = line(event.item_id);
        if (li.className === "partial") setLine(li, event.transcript, "partial");
        break;
      }
      case ITEM + ".completed": {
        const text = (event.transcript || "").trim();
        setLine(line(event.item_id), text || "(no words)", text ? "final" : "final empty");
        s.pending.delete(event.item_id);
        break;
      }
      case ITEM + ".failed": {
        const err = event.error || {};
        setLine(line(event.item_id), `failed: ${err.message || err.code || "transcription failed"}`, "failed");
        s.pending.delete(event.item_id);
        break;
      }
      case "error": {
        const err = event.error || {};
        // Stop commits the utterance in progress; one that just ended leaves nothing.
        if (s.stopping && err.param === "input_audio_buffer") { s.speaking = null; break; }
        showError(`Error${err.code ? " (" + err.code + ")" : ""}: ${err.message || "unknown"}`);
        break;
      }
      default:
        break; // session.created, deltas (the text comes whole in completed), cleared
    }
  }

  function sendAudio(s, buffer) {
    if (s.ws.readyState !== WebSocket.OPEN) return;
    s.ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(buffer) }));
    s.sentS += buffer.byteLength / 2 / RATE;
    if (!s.stopping) setStatus("live-status", `Listening: ${s.sentS.toFixed(1)} s of audio sent.`, "busy");
  }

  function sessionUpdate() {
    const opts = options("live");
    const transcription = {};
    if (opts.model) transcription.model = opts.model;
    if (opts.language) transcription.language = opts.language;
    const silence = Number($("live-silence").value);
    const turns = { type: "server_vad" };
    if (silence >= 32 && silence <= 10000) turns.silence_duration_ms = Math.round(silence);
    return {
      type: "session.update",
      session: {
        type: "transcription",
        audio: {
          input: { format: { type: "audio/pcm", rate: RATE }, transcription, turn_detection: turns },
        },
        include: ["item.input_audio_transcription.partial"],
      },
    };
  }

  // ------------------------------------------------------------ start and stop
  async function start() {
    if (live) return;
    showError("");
    if (!navigator.mediaDevices || !window.AudioWorkletNode || !window.WebSocket) {
      showError("Live needs a browser with AudioWorklet and a microphone (and https or localhost).");
      return;
    }
    $("live-start").disabled = true;
    const s = { queue: [], pending: new Set(), speaking: null, sentS: 0, stopping: false, configured: false };
    live = s;
    let step = "Microphone unavailable: ";
    try {
      setStatus("live-status", "Opening the microphone...", "busy");
      s.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
      });
      s.ctx = new AudioContext();
      await s.ctx.audioWorklet.addModule("pcm-worklet.js");
      s.source = s.ctx.createMediaStreamSource(s.stream);
      s.node = new AudioWorkletNode(s.ctx, "pcm-sender", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { rate: RATE, chunkMs: CHUNK_MS },
      });
      s.node.port.onmessage = (e) => {
        if (e.data === "flushed") { if (s.onFlushed) s.onFlushed(); return; }
        if (s.configured) sendAudio(s, e.data);
        else if (s.queue.length < MAX_QUEUED) s.queue.push(e.data);
      };
      s.source.connect(s.node);
      s.node.connect(s.ctx.destination); // pulls the graph; the node outputs silence
      if (s.ctx.state === "suspended") await s.ctx.resume();
      setStatus("live-status", "Connecting...", "busy");
      step = "Cannot connect: ";
      connect(s);
    } catch (e) {
      showError(step + (e.message || e.name || e));
      closeMic(s);
      finish(s, "");
    }
  }

  function connect(s) {
    const key = sessionStorage.getItem(KEY_STORE);
    const protocols = ["realtime"];
    if (key) protocols.push(KEY_SUBPROTOCOL + key);
    s.ws = new WebSocket(realtimeUrl(), protocols); // a key that is no valid token throws
    s.ws.onopen = () => {
      s.opened = true;
      $("live-stop").disabled = false;
      s.ws.send(JSON.stringify(sessionUpdate()));
    };
    s.ws.onmessage = (e) => {
      let event;
      try { event = JSON.parse(e.data); } catch (_) { return; }
      onEvent(s, event);
    };
    s.ws.onclose = (e) => {
      closeMic(s);
      if (s.stopping) { finish(s, "Stopped."); return; }
      if (!s.opened) {
        showError(key
          ? "Could not connect to the live endpoint (is the API key right?)."
          : "Could not connect to the live endpoint (does the service need an API key? Enter it at the top).");
      } else {
        showError(`The connection closed (${e.code}${e.reason ? ": " + e.reason : ""}).`);
      }
      finish(s, "Stopped.");
    };
  }

  function closeMic(s) {
    if (s.stream) s.stream.getTracks().forEach((t) => t.stop());
    if (s.source) s.source.disconnect();
    if (s.node) { s.node.port.onmessage = null; s.node.disconnect(); }
    if (s.ctx && s.ctx.state !== "closed") s.ctx.close().catch(() => {});
    s.stream = s.source = s.node = null;
  }

  function finish(s, message) {
    if (live === s) live = null;
    for (const li of $("live-lines").querySelectorAll(`li.partial`)) {
      if (s.pending.has(li.dataset.item)) setLine(li, li.querySelector(".text").textContent, "partial unfinished");
    }
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
    setStatus("live-status", message);
  }

  function until(test, timeoutMs) {
    return new Promise((resolve) => {
      const began = performance.now();
      const tick = () => (test() || performance.now() - began > timeoutMs ? resolve() : setTimeout(tick, 100));
      tick();
    });
  }

  // Stop: the microphone first (its last samples still sent), then the utterance in
  // progress is committed, its final awaited (bounded), and the socket closed (1000).
  async function stop() {
    const s = live;
    if (!s || s.stopping) return;
    s.stopping = true;
    $("live-stop").disabled = true;
    if (s.node) {
      const flushed = new Promise((resolve) => { s.onFlushed = resolve; });
      s.node.port.postMessage("flush");
      await Promise.race([flushed, new Promise((r) => setTimeout(r, 500))]);
    }
    closeMic(s);
    const open = () => s.ws && s.ws.readyState === WebSocket.OPEN;
    if (open()) {
      if (s.speaking) s.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
      setStatus("live-status", "Finishing the last words...", "busy");
      await until(() => !open() || (s.pending.size === 0 && !s.speaking), FINISH_TIMEOUT_MS);
    }
    if (s.ws && s.ws.readyState !== WebSocket.CLOSED) s.ws.close(1000, "stopped");
    else finish(s, "Stopped.");
  }

  $("live-start").addEventListener("click", start);
  $("live-stop").addEventListener("click", stop);
  $("live-clear").addEventListener("click", () => { $("live-lines").replaceChildren(); showError(""); });
  window.addEventListener("pagehide", () => { if (live && live.ws) live.ws.close(1000, "page closed"); });
})();
