"""With API keys set: the page loads without a key, the stats and tune API need one,
tuning needs the operator's key, and the page's key field (sessionStorage, Bearer) makes
the Tune tab work."""

from __future__ import annotations

import httpx
import pytest

from tests.served_apps import ENV_KEY, KEYED_MODEL, OPERATOR_KEY
from tests.ui.test_browser import CHROMIUM, FLAGS

pytestmark = pytest.mark.slow

KEY = ENV_KEY
MODEL = KEYED_MODEL


def test_page_open_api_protected(keyed_url):
    with httpx.Client(base_url=keyed_url, timeout=120) as client:
        assert client.get("/ui").status_code == 200
        assert client.get("/ui/app.js").status_code == 200
        assert client.get("/v1/system").status_code == 401
        assert client.get("/v1/tune").status_code == 401
        body = {"model": MODEL, "batch_wait_timeout_s": 0.07}
        assert client.post("/v1/tune", json=body).status_code == 401
        auth = {"authorization": f"Bearer {KEY}"}
        assert client.get("/v1/system", headers=auth).status_code == 200
        # A client key reads the settings but may not change them: the operator's may.
        assert client.get("/v1/tune", headers=auth).status_code == 200
        refused = client.post("/v1/tune", json=body, headers=auth)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"


@pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="no chromium")
def test_key_field_unlocks_the_tune_tab(keyed_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(bypass_csp=True)
            page.set_default_timeout(120_000)
            page.goto(keyed_url + "/ui#tune")
            page.wait_for_selector("#global-error:not([hidden])")  # 401: asks for the key
            page.fill("#apikey", OPERATOR_KEY)  # an operator's key: a key everywhere
            page.click("#apikey-save")
            page.wait_for_selector(f"#single-model option[value='{MODEL}']", state="attached")
            assert page.evaluate("sessionStorage.getItem('asr-api-key')") == OPERATOR_KEY
            page.click("#tab-tune")
            page.wait_for_selector(f"#tune-model option[value='{MODEL}']", state="attached")
            page.fill("#tune-wait", "0.07")
            page.click("#tune-apply")
            page.wait_for_function(
                "document.getElementById('tune-status').textContent.startsWith('In force')"
            )
        finally:
            browser.close()
    with httpx.Client(base_url=keyed_url, timeout=60) as client:
        live = client.get("/v1/tune", headers={"authorization": f"Bearer {KEY}"}).json()
    replicas = live["models"][MODEL]["replicas"]
    assert replicas and all(r["batch_wait_timeout_s"] == pytest.approx(0.07) for r in replicas)
