"""Swagger UI in a real browser: headless Chromium (the system's, else Playwright's own) driven by Playwright
(the ``page`` fixture of conftest.py) opens ``/swagger`` of an app served by ``tachyon run``, with every
request off the loopback interface blocked (the page must work with no internet: its files come from the
``docs`` extra), sees every operation, runs one with "Try it out" / "Execute" and reads the app's answer. On
failure a screenshot is kept in ``tests/artifacts/``. The CDN pages (/docs, /redoc) show a line of text
instead when their script cannot be loaded."""

from __future__ import annotations

import textwrap
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

EVIL_TITLE = "Shop </title><script>window.__pwned = 1</script>"

APP = textwrap.dedent(
    f"""
    from typing import Optional
    from tachyon_api import Router, Struct, Tachyon, UploadFile, Header
    from tachyon_api.openapi import create_openapi_config

    app = Tachyon(openapi_config=create_openapi_config(title={EVIL_TITLE!r}))

    class Item(Struct):
        name: str
        price: float

    @app.get("/items/{{item_id}}", tags=["items"])
    def read_item(item_id: int, q: Optional[str] = None):
        \"\"\"Read one item.\"\"\"
        return {{"item_id": item_id, "q": q, "served_by": "tachyon"}}

    @app.post("/items", status_code=201, tags=["items"])
    def create_item(item: Item):
        return item

    @app.post("/upload")
    async def upload(file: UploadFile):
        return {{"size": len(await file.read())}}

    admin = Router(prefix="/admin", tags=["admin"])

    @admin.get("/stats")
    def stats(x_token: str = Header()):
        return {{}}

    app.include_router(admin)
    """
)


def test_swagger_ui_offline_lists_every_operation_and_executes_one(serve_process: Any, page: Any) -> None:
    server = serve_process(APP)
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    operations = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert len(operations) == 4

    blocked: list[str] = []
    dialogs: list[str] = []

    def only_loopback(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{server.url}/swagger")
    page.wait_for_selector(".opblock", timeout=20_000)
    shown = {
        (
            block.query_selector(".opblock-summary-method").inner_text().strip(),
            block.query_selector(".opblock-summary-path").get_attribute("data-path"),
        )
        for block in page.query_selector_all(".opblock")
    }
    assert shown == operations

    page.click("#operations-items-read_item_items__item_id__get .opblock-summary")
    operation = page.locator("#operations-items-read_item_items__item_id__get")
    operation.locator("button.try-out__btn").click()
    operation.locator('tr[data-param-name="item_id"] input').fill("42")
    operation.locator('tr[data-param-name="q"] input').fill("lamp")
    operation.locator("button.execute").click()
    body = operation.locator(".live-responses-table .response-col_description .microlight").first
    body.wait_for(timeout=20_000)
    assert '"served_by": "tachyon"' in body.inner_text()
    assert '"item_id": 42' in body.inner_text() and '"q": "lamp"' in body.inner_text()
    status = operation.locator(".live-responses-table .response .response-col_status").first.inner_text()
    assert status.strip() == "200"

    # The configured title is shown as text, its script never runs; nothing was fetched from outside.
    assert page.title() == EVIL_TITLE
    assert page.evaluate("window.__pwned") is None and not dialogs
    assert blocked == []


@pytest.mark.parametrize("url", ["/docs", "/redoc"])
def test_cdn_pages_without_internet_say_so_and_link_to_what_works_offline(
    serve_process: Any, page: Any, url: str
) -> None:
    """Scalar (/docs) and ReDoc (/redoc) load their script from a CDN: with no internet they were blank pages.
    Now a line of text says why and links to Swagger UI (served by the app itself, with the docs extra) and to
    the schema: shown when the script fails to load, and in <noscript> when scripts are off."""
    server = serve_process(APP)
    cdn_requests: list[str] = []

    def no_internet(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            cdn_requests.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", no_internet)
    page.goto(f"{server.url}{url}")
    notice = page.locator("#docs-offline")
    notice.wait_for(state="visible", timeout=10_000)
    assert cdn_requests and all(urlsplit(u).hostname == "cdn.jsdelivr.net" for u in cdn_requests)
    assert notice.inner_text() == (
        "This page loads its script from a CDN (cdn.jsdelivr.net), which this browser could not reach or run. "
        "Swagger UI at /swagger works without internet. The schema itself is at /openapi.json."
    )
    assert [a.get_attribute("href") for a in notice.locator("a").all()] == ["/swagger", "/openapi.json"]
    notice.locator("a", has_text="/swagger").click()
    page.wait_for_selector(".opblock", timeout=20_000)  # the offline Swagger UI, from the link
    page.go_back()
    page.locator("#docs-offline a", has_text="/openapi.json").click()
    page.wait_for_load_state()
    assert '"openapi"' in page.locator("body").inner_text()

    # Scripts off: the same line, from <noscript>.
    context = page.context.browser.new_context(java_script_enabled=False)
    try:
        quiet = context.new_page()
        quiet.route("**/*", no_internet)
        quiet.goto(f"{server.url}{url}")
        assert "This page loads its script from a CDN" in quiet.locator("body").inner_text()
    finally:
        context.close()

    # With the script loaded (a stand-in for the CDN's file), the line stays hidden.
    page.unroute("**/*")
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if urlsplit(route.request.url).hostname == "127.0.0.1"
            else route.fulfill(body="window.fromCdn = true;", content_type="text/javascript")
        ),
    )
    page.goto(f"{server.url}{url}")
    page.wait_for_function("window.fromCdn === true")
    assert page.locator("#docs-offline").is_hidden()
