"""The Live tab in a real browser: Debian's chromium (through Playwright, never its own
download) with a fake microphone that plays a wav of espeak-ng speech, against an
in-process ingress on the real FSMN-VAD and Whisper tiny.en plain classes (as
tests/serve/test_fast_path.py builds it, no Ray) served by uvicorn in a thread.

The page's CSP is left on (no ``bypass_csp``): the websocket and the AudioWorklet module
must work under the policy the service sends. So the test waits with locators and polls
with ``page.evaluate`` rather than ``wait_for_function`` (whose string predicates need eval).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serve_app.config import AudioSettings, RecognizerSettings, VadSettings
from serve_app.core.evaluation import word_error_rate
from serve_app.online.ingress import IngressOptions, IngressServer
from tests.reference import assert_wer_near_reference
from tests.serve.fake_ingress import FakeHandle
from tests.serve.live_helpers import serve_in_thread
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, silence, synthesize
from tests.ui.test_browser import CHROMIUM, FLAGS

sync_api = pytest.importorskip("playwright.sync_api")

MODEL = "whisper-tiny.en"
TEXTS = SENTENCES[:2]
KEY = "live-tab-key"
MIC_FLAGS = [
    *FLAGS,
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]

pytestmark = [
    pytest.mark.slow,
    requires_espeak,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed"),
]

# Every state each transcript line passes through (class, text, colour), in order, however
# fast the page replaces them.
WATCH_JS = """() => {
  window.__lines = [];
  const lines = document.getElementById("live-lines");
  const note = (li) => {
    if (!li || li.tagName !== "LI") return;
    const text = li.querySelector(".text");
    window.__lines.push({item: li.dataset.item, state: li.className,
      text: text ? text.textContent : "", color: getComputedStyle(li).color});
  };
  new MutationObserver((records) => {
    for (const r of records) {
      const target = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      note(target && target.closest ? target.closest("li") : null);
      for (const n of r.addedNodes) if (n.nodeType === 1) note(n.closest("li"));
    }
  }).observe(lines, {childList: true, subtree: true, attributes: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def stages(models_dir: Path):
    """The real VAD and recognizer as the ingress's handles (in-process, one decode at a
    time: the replica's batch queue serialises them the same way)."""
    from serve_app.recognizers.factory import build_recognizer
    from serve_app.vad.detectors import FsmnVad

    vad = FsmnVad(VadSettings(), models_dir=models_dir)
    recognizer = build_recognizer(
        RecognizerSettings(
            name=MODEL, backend="whisper", model=MODEL, precision="int8", language="en"
        ),
        models_dir,
    )
    lock = threading.Lock()

    def decode(job):
        with lock:
            return recognizer.transcribe_batch([job])

    async def segments(samples: np.ndarray):
        return await asyncio.to_thread(vad.segments, samples)

    async def transcribe(job):
        (result,) = await asyncio.to_thread(decode, job)
        if isinstance(result, Exception):
            raise result
        return result

    async def capabilities() -> dict:
        return recognizer.capabilities().to_json()

    return FakeHandle(segments=segments), FakeHandle(
        transcribe=transcribe, capabilities=capabilities
    )


def build_ingress(stages) -> IngressServer:
    vad, recognizer = stages
    options = IngressOptions(
        limits=AudioSettings(),
        model_names={MODEL: MODEL, "whisper-1": MODEL},
        default_model=MODEL,
        default_options={},
    )
    return IngressServer(vad, {MODEL: recognizer}, options)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The fake microphone's wav: silence while the page sets up, two sentences with a
    pause that ends a turn, silence after. ``%noloop``: chromium plays it once (then
    silence) instead of looping it."""
    tmp = tmp_path_factory.mktemp("live-tab")
    audio = np.concatenate(
        [
            silence(1.0),
            concat_with_pauses([synthesize(t, tmp) for t in TEXTS], pause_s=1.2),
            silence(2.0),
        ]
    ).astype(np.float32)
    path = tmp / "mic.wav"
    sf.write(path, audio, 16000, format="WAV", subtype="PCM_16")
    return path, audio


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("ASR_UI_SCREENSHOTS_DIR")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def mic_page(wav: Path, url: str):
    """A page of ``url``'s UI in a chromium whose microphone plays ``wav`` once."""
    flags = [*MIC_FLAGS, f"--use-file-for-fake-audio-capture={wav}%noloop"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 800})
            context.grant_permissions(["microphone"])
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(url + "/ui#live")
            yield page
        finally:
            browser.close()


SHOT_READY = f"""(() => {{
  const lines = document.getElementById("live-lines");
  return Boolean(lines.querySelector("li.final + li.partial .text:not(:empty)"))
    || lines.querySelectorAll("li.final").length >= {len(TEXTS)};
}})()"""


def until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_live_tab_shows_partials_then_finals_and_stop_closes(
    stages, speech, whisper_reference, shots
):
    wav, audio = speech
    server = build_ingress(stages)
    with serve_in_thread(server) as url, mic_page(wav, url) as page:
        page.wait_for_selector(f"#live-model option[value='{MODEL}']", state="attached")
        page.select_option("#live-model", MODEL)
        page.evaluate(WATCH_JS)
        page.click("#live-start")
        # The docs' picture: a black final line over a grey partial one (if the timing
        # shows one; else the finals).
        until(lambda: page.evaluate(SHOT_READY), 90, "transcript lines")
        page.screenshot(path=str(shots / "live.png"))
        page.locator("#live-lines li.final").nth(len(TEXTS) - 1).wait_for(timeout=90_000)
        assert server.live.slots.open == 1
        page.click("#live-stop")
        page.locator("#live-status", has_text="Stopped").wait_for()
        until(lambda: server.live.slots.open == 0, 10, "the server to close the session")
        finals = page.locator("#live-lines li.final .text").all_inner_texts()
        times = page.locator("#live-lines li.final .time").all_inner_texts()
        error = page.locator("#live-error")
        assert error.is_hidden(), error.inner_text()
        history = page.evaluate("window.__lines")
    # The final lines: the spoken sentences, as well as faster-whisper's own run on the audio.
    assert len(finals) == len(TEXTS), finals
    reference = whisper_reference.transcribe(audio)
    assert_wer_near_reference([" ".join(TEXTS)], [" ".join(finals)], [reference])
    for text, final in zip(TEXTS, finals, strict=True):
        assert word_error_rate([text], [final]) < 0.5, (text, final)
    # Each line's start time, m:ss, in order (the first sentence starts after 1 s).
    assert all(re.fullmatch(r"\d+:\d\d", t) for t in times), times
    assert times[0] in ("0:00", "0:01") and times == sorted(times), times
    # Grey partial text came before the black final of a line.
    first_final: dict[str, int] = {}
    for i, h in enumerate(history):
        if h["state"] == "final":
            first_final.setdefault(h["item"], i)
    partial = [h for h in history if h["state"] == "partial" and h["text"].strip()]
    early = [
        i for i, h in enumerate(history) if h in partial and i < first_final.get(h["item"], -1)
    ]
    assert early and len(first_final) == len(TEXTS), history
    final_colors = {h["color"] for h in history if h["state"] == "final"}
    assert final_colors == {"rgb(0, 0, 0)"}, final_colors
    assert all(h["color"] != "rgb(0, 0, 0)" for h in partial), partial


def test_live_tab_connects_with_the_key_field(stages, speech, monkeypatch):
    monkeypatch.setenv("ASR_API_KEYS", KEY)
    wav, _ = speech
    server = build_ingress(stages)
    with serve_in_thread(server) as url, mic_page(wav, url) as page:
        page.wait_for_selector("#global-error:not([hidden])")  # /v1/models: 401
        # Without the key the socket is refused, and the tab says so.
        page.click("#live-start")
        page.locator("#live-error", has_text="API key").wait_for()
        assert server.live.slots.open == 0
        page.fill("#apikey", KEY)
        page.click("#apikey-save")
        page.wait_for_selector(f"#live-model option[value='{MODEL}']", state="attached")
        page.click("#live-start")
        page.locator("#live-status", has_text="Listening").wait_for()
        assert server.live.slots.open == 1
        assert page.locator("#live-error").is_hidden()
        page.click("#live-stop")
        page.locator("#live-status", has_text="Stopped").wait_for()
        until(lambda: server.live.slots.open == 0, 10, "the server to close the session")
