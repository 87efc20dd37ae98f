"""The web UI in a real browser: Playwright drives Debian's chromium (never its own
download, which cannot work offline) against the session's served test app.

Screenshots of each tab go to $ASR_UI_SCREENSHOTS_DIR when set (docs/screenshots/ is
made that way), else to the test's tmp folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serve_app.core.evaluation import word_error_rate
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, synthesize

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODEL = "whisper-tiny.en"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    requires_espeak,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed"),
]


def wav_file(path: Path, samples: np.ndarray) -> Path:
    sf.write(path, samples, 16000, format="WAV", subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@contextlib.contextmanager
def open_ui(browser, url: str, model: str):
    """A fresh page on ``url``'s UI, once its model list (with ``model``) has loaded."""
    # bypass_csp: the page's CSP forbids eval, which wait_for_function's string predicates need.
    context = browser.new_context(
        viewport={"width": 1100, "height": 800}, accept_downloads=True, bypass_csp=True
    )
    pg = context.new_page()
    pg.set_default_timeout(240_000)  # a loaded 2-core machine: recognition takes its time
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url + "/ui")
    pg.wait_for_selector(f"#single-model option[value='{model}']", state="attached")
    pg.wait_for_load_state("networkidle")
    assert not errors, errors  # the page loads clean (a missing favicon was a 404 once)
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def page(browser, asr_url):
    with open_ui(browser, asr_url, MODEL) as pg:
        yield pg


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("ASR_UI_SCREENSHOTS_DIR")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def speech_files(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("ui-speech")
    return [wav_file(tmp / f"speech-{i}.wav", synthesize(SENTENCES[i], tmp)) for i in range(4)]


def test_single_file_shows_its_transcript(page, http, speech_files, shots):
    path = speech_files[0]
    page.select_option("#single-model", MODEL)
    page.set_input_files("#single-file", str(path))
    page.click("#single-go")
    page.wait_for_selector("#single-result:not([hidden])")
    shown = page.inner_text("#single-text")
    rows = page.locator("#single-segments tbody tr")
    assert rows.count() >= 1
    # The same file through the API: the page shows what the service answers.
    api = http.post(
        "/v1/audio/transcriptions",
        files={"file": (path.name, path.read_bytes(), "audio/wav")},
        data={"model": MODEL, "response_format": "verbose_json"},
    ).json()
    assert word_error_rate(api["text"], shown) <= 0.1, (api["text"], shown)
    assert len(api["segments"]) == rows.count()
    with page.expect_download() as info:
        page.click("#single-result .downloads button[data-fmt='srt']")
    srt = Path(info.value.path()).read_text()
    assert srt.startswith("1\n00:00:") and "-->" in srt
    page.screenshot(path=str(shots / "single.png"))


# Records every text the transcript and the status show (the text nodes each assignment
# adds), however fast the page replaces them.
WATCH_JS = """() => {
  window.__shown = {"single-text": [], "single-status": []};
  for (const id of Object.keys(window.__shown)) {
    new MutationObserver((records) => {
      for (const r of records) for (const n of r.addedNodes) window.__shown[id].push(n.textContent);
    }).observe(document.getElementById(id), { childList: true });
  }
}"""


def test_single_file_text_appears_as_segments_are_recognized(page, tmp_path):
    # The random-weight FunASR model: one item per VAD segment (no packing), so three
    # sentences stream as three deltas; bytes of its own so no cached answer stands in.
    audio = concat_with_pauses([synthesize(t, tmp_path) for t in SENTENCES[10:13]], pause_s=1.6)
    tail = np.random.default_rng().uniform(-1e-3, 1e-3, 160).astype(np.float32)
    path = wav_file(tmp_path / "three.wav", np.concatenate([audio, tail]))
    page.evaluate(WATCH_JS)
    page.select_option("#single-model", "paraformer-tiny-random")
    page.set_input_files("#single-file", str(path))
    page.click("#single-go")
    page.wait_for_function(
        "document.getElementById('single-status').textContent.startsWith('Done')"
    )
    final = page.inner_text("#single-text").strip()
    shown = page.evaluate("window.__shown")
    partial = [t for t in shown["single-text"] if t.strip() and t.strip() != final]
    # Shown before the end: growing prefixes of the final text, one per segment.
    assert partial and all(final.startswith(t.strip()) for t in partial), (partial, final)
    assert any("so far" in status for status in shown["single-status"]), shown["single-status"]
    assert page.locator("#single-segments tbody tr").count() >= 3


def test_batch_with_one_bad_file(page, speech_files, tmp_path, shots):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    files = [*speech_files, bad]
    page.click("#tab-batch")
    page.select_option("#batch-model", MODEL)
    page.set_input_files("#batch-files", [str(f) for f in files])
    page.click("#batch-go")
    page.wait_for_function(
        "document.querySelectorAll('#batch-table tbody td.state-done, "
        "#batch-table tbody td.state-error').length === 5"
    )
    states = page.locator("#batch-table tbody tr td:nth-child(2)").all_inner_texts()
    assert sorted(states) == ["done"] * 4 + ["error"]
    error_row = page.locator("#batch-table tbody tr[data-file='broken.wav']")
    assert error_row.locator("td").nth(1).inner_text() == "error"
    message = error_row.locator("td").nth(3).inner_text()
    assert message.startswith(("400", "415")) and len(message) > 10, message
    with page.expect_download() as info:
        page.click("#batch-zip")
    archive = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))
    assert archive.testzip() is None  # CRCs of the JS zip writer are right
    names = archive.namelist()
    results = {n.split("/")[0] for n in names if "/" in n}
    assert results == {f.stem for f in speech_files}
    for stem in results:
        for ext in ("txt", "srt", "vtt", "json"):
            assert f"{stem}/{stem}.{ext}" in names
    summary = archive.read("summary.csv").decode().splitlines()
    assert len(summary) == 6 and summary[0].startswith("file,state")
    page.screenshot(path=str(shots / "batch.png"), full_page=True)


def test_system_panel_shows_batch_statistics(page, http, speech_files, shots):
    http.post(
        "/v1/audio/transcriptions",
        files={"file": ("s.wav", speech_files[1].read_bytes(), "audio/wav")},
        data={"model": MODEL},
    )
    page.click("#tab-system")
    card = page.locator(f"#system-models .card[data-model='{MODEL}']")
    card.wait_for()
    page.wait_for_function(
        f"(() => {{ const td = document.querySelector(\"#system-models .card[data-model='{MODEL}']"
        " td[data-key='batches']\"); return td && Number(td.textContent) > 0; })()"
    )
    items = int(card.locator("td[data-key='items']").inner_text())
    assert items > 0
    assert card.locator(".bars .bar").count() >= 1  # the batch-size histogram
    assert page.locator("#system-deployments tbody tr").count() >= 3
    page.screenshot(path=str(shots / "system.png"), full_page=True)


def test_tune_panel_changes_the_live_batch_wait(page, http, shots):
    before = http.get("/v1/tune").json()["models"][MODEL]["settings"]["batch_wait_timeout_s"]
    new_wait_s = round(before + 0.05, 3)
    page.click("#tab-tune")
    page.wait_for_selector(f"#tune-model option[value='{MODEL}']", state="attached")
    page.select_option("#tune-model", MODEL)
    try:
        page.fill("#tune-wait", str(new_wait_s))
        page.click("#tune-apply")
        page.wait_for_function(
            "document.getElementById('tune-status').textContent.startsWith('In force')"
        )
        live = http.get("/v1/tune").json()["models"][MODEL]
        assert live["replicas"] and all(
            r["batch_wait_timeout_s"] == pytest.approx(new_wait_s) for r in live["replicas"]
        )
        page.screenshot(path=str(shots / "tune.png"), full_page=True)
    finally:
        http.post("/v1/tune", json={"model": MODEL, "batch_wait_timeout_s": before})


def test_phone_layout_and_keyboard_tabs(page, shots):
    page.set_viewport_size({"width": 390, "height": 800})
    page.focus("#tab-single")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-batch"
    assert page.get_attribute("#tab-batch", "aria-selected") == "true"
    assert page.is_hidden("#panel-single") and page.is_visible("#panel-batch")
    page.keyboard.press("End")
    assert page.evaluate("document.activeElement.id") == "tab-tune"
    page.keyboard.press("Home")
    # No horizontal scroll of the page itself on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "phone.png"))


def test_options_follow_the_models_capabilities(page, http, speech_files, shots):
    models = {m["id"]: m.get("capabilities") for m in http.get("/v1/models").json()["data"]}
    whisper, paraformer = models[MODEL], models["paraformer-tiny-random"]
    # The two models differ (so the page must change what it offers between them).
    assert bool(whisper["hotwords"]) != bool(paraformer["hotwords"])
    for model, caps in ((MODEL, whisper), ("paraformer-tiny-random", paraformer)):
        page.select_option("#single-model", model)
        assert page.is_visible("#single-hotwords") == bool(caps["hotwords"]), model
        assert page.is_visible("#single-words") == caps["word_timestamps"], model
        assert page.is_visible("#single-diarize") == caps["diarization"], model
    # A diarized request from the page: every segment row names its speaker.
    assert whisper["diarization"]
    page.select_option("#single-model", MODEL)
    page.check("#single-diarize")
    page.set_input_files("#single-file", str(speech_files[0]))
    page.click("#single-go")
    page.wait_for_function(
        "document.getElementById('single-status').textContent.startsWith('Done')"
    )
    speakers = page.locator("#single-segments tbody tr td:nth-child(3)").all_inner_texts()
    assert speakers and all(s.strip() for s in speakers), speakers
    page.screenshot(path=str(shots / "single-speakers.png"))


def test_translation_from_the_page(browser, caps_url, caps_http, tmp_path):
    """ "Translate to English" is offered only for a model that can (the multilingual
    Whisper base, not the Paraformer) and sends the file to /v1/audio/translations."""
    from tests.served_apps import CAPS_PARAFORMER, CAPS_WHISPER_BASE

    models = {m["id"]: m["capabilities"] for m in caps_http.get("/v1/models").json()["data"]}
    assert models[CAPS_WHISPER_BASE]["translation"] and not models[CAPS_PARAFORMER]["translation"]
    french = "Le train pour Paris part tous les matins à huit heures."
    audio = wav_file(tmp_path / "fr.wav", synthesize(french, tmp_path, voice="fr-fr"))
    with open_ui(browser, caps_url, CAPS_WHISPER_BASE) as pg:
        pg.select_option("#single-model", CAPS_PARAFORMER)
        assert not pg.is_visible("#single-translate")
        pg.select_option("#single-model", CAPS_WHISPER_BASE)
        pg.check("#single-translate")
        with pg.expect_request(lambda r: r.url.endswith("/v1/audio/translations")):
            pg.set_input_files("#single-file", str(audio))
            pg.click("#single-go")
        pg.wait_for_function(
            "document.getElementById('single-status').textContent.startsWith('Done')"
        )
        text = pg.inner_text("#single-text")
    words = set(re.findall(r"[a-z']+", text.lower()))
    # English words out of French speech (Whisper base's translation of this espeak-ng
    # sentence; faster-whisper's own task="translate" gives English too, see
    # tests/serve/test_capabilities_http.py).
    assert words & {"the", "to", "train", "paris", "every", "morning", "at", "leaves"}, text
    assert all(ord(ch) < 0x250 for ch in text), text
