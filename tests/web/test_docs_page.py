"""``/docs`` in a real browser: Swagger UI loads offline and "Try it out" reaches the service.

Playwright drives Debian's Chromium (``.ci/system-deps.sh`` installs it); no browser is
downloaded. Every request the page makes is recorded, to show that it talks to the service
alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import needs_export, require
from tests.helpers import ServerProcess, require_serve_env

pytestmark = needs_export
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "docs-key"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(chromium() is not None, "chromium (.ci/system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def servers(tiny_bundle) -> Iterator[dict[str, ServerProcess]]:
    require_serve_env()
    started = {
        "open": ServerProcess(tiny_bundle("bert")),
        "keyed": ServerProcess(tiny_bundle("bert"), "--api-keys", KEY),
    }
    try:
        for process in started.values():
            process.wait_ready()
        yield started
    finally:
        for process in started.values():
            process.stop()


class DocsPage:
    """The Swagger UI page, by the selectors of its own markup."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.page = browser.new_page()
        self.requested: list[str] = []
        self.page.on("request", lambda request: self.requested.append(request.url))
        self.page.goto(base_url + "/docs")

    def execute(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        """Open the operation, press "Try it out" (once per operation) and "Execute"."""
        block = self.page.locator(f"#operations-tei-{method}_{path.strip('/').replace('/', '_')}")
        if "is-open" not in (block.get_attribute("class") or ""):
            block.locator(".opblock-summary-control").click()
        if block.locator("button.execute").count() == 0:
            block.locator("button.try-out__btn").click()
        if block.locator("button.btn-clear").count():
            block.locator("button.btn-clear").click()
        if body is not None:
            block.locator("textarea.body-param__text").fill(body)
        block.locator("button.execute").click()
        return self.response(block)

    @staticmethod
    def response(block: Any) -> tuple[int, Any]:
        live = block.locator(".live-responses-table .response")
        live.wait_for()
        status = int(live.locator(".response-col_status").inner_text())
        return status, json.loads(live.locator(".response-col_description pre").first.inner_text())

    def authorize(self, key: str) -> None:
        self.page.locator(".auth-wrapper button.authorize").click()
        dialog = self.page.locator(".modal-ux")
        dialog.locator("input").fill(key)
        dialog.locator("button.modal-btn.authorize").click()
        dialog.locator("button.btn-done").click()


def test_try_it_out_executes_predict(browser, servers):
    server = servers["open"]
    docs = DocsPage(browser, server.url)
    assert docs.page.locator(".info .title").inner_text().startswith("ONNX text-classifier service")
    status, body = docs.execute("post", "/predict", '{"inputs": "tried from the docs page"}')
    assert status == 200
    assert body == httpx.post(server.url + "/predict", json={"inputs": "tried from the docs page"}).json()
    assert [sorted(entry) for entry in body] == [["label", "score"]] * 3
    assert all(url.startswith(server.url + "/") for url in docs.requested), docs.requested
    assert {
        server.url + "/docs/swagger-ui/swagger-ui-bundle.js",
        server.url + "/openapi.json",
        server.url + "/predict",
    } <= set(docs.requested)
    # No Authorize button without API_KEYS: the document declares no security scheme.
    assert docs.page.locator(".auth-wrapper button.authorize").count() == 0
    docs.page.close()


def test_authorize_takes_the_bearer_key(browser, servers):
    server = servers["keyed"]
    docs = DocsPage(browser, server.url)
    status, body = docs.execute("get", "/info")
    assert (status, body["error_type"]) == (401, "unauthorized")
    docs.authorize(KEY)
    status, body = docs.execute("get", "/info")
    expected = httpx.get(server.url + "/info", headers={"authorization": f"Bearer {KEY}"}).json()
    assert (status, body) == (200, expected)
    docs.page.close()
