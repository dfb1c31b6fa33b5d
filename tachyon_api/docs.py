"""The docs pages: ``/openapi.json``, Scalar (``/docs``), Swagger UI (``/swagger``) and ReDoc (``/redoc``).

Every configured string that reaches a page is escaped for where it lands (HTML text, an attribute, or a
JavaScript literal), so a title such as ``</title><script>alert(1)</script>`` is shown, never run.

The pages load their scripts from the jsDelivr CDN unless configured otherwise. With the ``docs`` extra
installed (``swagger-ui-py``, which ships the Swagger UI 5 files), the app serves Swagger UI's files itself
under ``swagger_url``, so that page works without internet access. A page whose script cannot be loaded (no
internet, or scripts off) shows a line of text saying so, with links to that page and to the schema.
"""

from __future__ import annotations

import html
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .exceptions import HTTPException
from .openapi import (
    REDOC_JS_URL,
    SCALAR_JS_URL,
    SWAGGER_CSS_URL,
    SWAGGER_FAVICON_URL,
    SWAGGER_JS_URL,
)
from .requests import Request
from .responses import HTMLResponse, Response
from .routing import Route

if TYPE_CHECKING:
    from .applications import Tachyon
    from .openapi import OpenAPIConfig

__all__ = ["docs_routes", "swagger_ui_assets", "swagger_ui_html", "redoc_html", "scalar_html"]


# The Swagger UI files the app serves (from the docs extra), with their media types; nothing else is served.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "oauth2-redirect.html": "text/html; charset=utf-8",
}


def swagger_ui_assets() -> Path | None:
    """The folder of Swagger UI's files shipped by ``swagger-ui-py`` (the ``docs`` extra), or None.

    Found without importing the package (its import pulls in Jinja2 and PyYAML, which we do not need).
    """
    try:
        spec = importlib.util.find_spec("swagger_ui")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if all((static / name).is_file() for name in _ASSETS) else None


def _js(value: Any) -> str:
    """``value`` as a JavaScript literal that cannot end the surrounding ``<script>`` element."""
    text = json.dumps(value)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _local_swagger(config: OpenAPIConfig, root_path: str) -> str | None:
    """The URL prefix of the Swagger UI files served by the app, or None when they come from elsewhere."""
    if config.swagger_url is None or swagger_ui_assets() is None:
        return None
    return root_path + config.swagger_url.rstrip("/")


def _page(title: str, head: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n{head}</head>\n<body>\n{body}</body>\n</html>\n"
    )


def _offline_notice(config: OpenAPIConfig, openapi_url: str, root_path: str, script: str) -> tuple[str, str]:
    """A page whose script comes from another host is blank without internet (or with scripts off): a line
    of text, shown by the script's ``onerror`` and in ``<noscript>``, says so and links to what works
    offline. Returns the notice and the ``onerror`` attribute of the script tag; nothing for a script the
    app serves itself."""
    host = urlsplit(script).hostname
    if host is None:
        return "", ""
    text = f"This page loads its script from a CDN ({html.escape(host)}), which this browser could not reach or run."
    if config.swagger_url:
        swagger = root_path + config.swagger_url
        offline = "" if _local_swagger(config, root_path) else " once the app is installed with the docs extra"
        link = f'<a href="{_attr(swagger)}">{html.escape(swagger)}</a>'
        text += f" Swagger UI at {link} works without internet{offline}."
    text += f' The schema itself is at <a href="{_attr(openapi_url)}">{html.escape(openapi_url)}</a>.'
    notice = f'<p id="docs-offline" hidden>{text}</p>\n<noscript><p>{text}</p></noscript>\n'
    return notice, " onerror=\"document.getElementById('docs-offline').hidden = false\""


def swagger_ui_html(config: OpenAPIConfig, openapi_url: str, title: str, root_path: str = "") -> str:
    """The Swagger UI page for the schema at ``openapi_url``; ``swagger_ui_parameters`` are passed to
    ``SwaggerUIBundle`` as they are (JSON values)."""
    local = _local_swagger(config, root_path)

    def asset(configured: str | None, default: str) -> str:
        """A file left at its CDN default comes from the app itself when it serves Swagger UI's files."""
        if local and configured in (None, default):
            return f"{local}/{default.rsplit('/', 1)[1]}"
        return configured or default

    js = asset(config.swagger_js_url, SWAGGER_JS_URL)
    css = asset(config.swagger_css_url, SWAGGER_CSS_URL)
    favicon = asset(config.swagger_favicon_url, SWAGGER_FAVICON_URL)
    options: dict[str, Any] = {"url": openapi_url, "dom_id": "#swagger-ui", "deepLinking": True}
    if local:
        options["oauth2RedirectUrl"] = f"{local}/oauth2-redirect.html"
    options.update(config.swagger_ui_parameters or {})
    head = f'<link rel="stylesheet" href="{_attr(css)}">\n<link rel="icon" href="{_attr(favicon)}">\n'
    notice, onerror = _offline_notice(config, openapi_url, root_path, js)
    body = (
        f'{notice}<div id="swagger-ui"></div>\n'
        f'<script src="{_attr(js)}"{onerror}></script>\n'
        "<script>\n"
        f"window.ui = SwaggerUIBundle(Object.assign({{presets: [SwaggerUIBundle.presets.apis, "
        f'SwaggerUIBundle.SwaggerUIStandalonePreset], layout: "BaseLayout"}}, {_js(options)}));\n'
        "</script>\n"
    )
    return _page(title, head, body)


def redoc_html(config: OpenAPIConfig, openapi_url: str, title: str, root_path: str = "") -> str:
    """The ReDoc page for the schema at ``openapi_url``."""
    js = config.redoc_js_url or REDOC_JS_URL
    notice, onerror = _offline_notice(config, openapi_url, root_path, js)
    body = f'{notice}<redoc spec-url="{_attr(openapi_url)}"></redoc>\n<script src="{_attr(js)}"{onerror}></script>\n'
    return _page(title, "", body)


def scalar_html(config: OpenAPIConfig, openapi_url: str, title: str, root_path: str = "") -> str:
    """The Scalar API reference page for the schema at ``openapi_url`` (``docs_url``, as in tachyon-api 1.3)."""
    js = config.scalar_js_url or SCALAR_JS_URL
    head = f'<link rel="icon" href="{_attr(config.scalar_favicon_url)}">\n' if config.scalar_favicon_url else ""
    notice, onerror = _offline_notice(config, openapi_url, root_path, js)
    body = (
        f'{notice}<script id="api-reference" data-url="{_attr(openapi_url)}"></script>\n'
        f'<script src="{_attr(js)}"{onerror}></script>\n'
    )
    return _page(title, head, body)


def _html_page(config: OpenAPIConfig, render: Callable[..., str]) -> Callable[[Request], Any]:
    """An endpoint serving ``render``'s page, rendered once per ``root_path`` (the app may be mounted)."""
    rendered: dict[str, bytes] = {}

    async def page(request: Request) -> Response:
        root_path = request.scope.get("root_path", "")
        body = rendered.get(root_path)
        if body is None:
            openapi_url = root_path + (config.openapi_url or "")
            body = rendered[root_path] = render(config, openapi_url, config.info.title, root_path).encode()
        return HTMLResponse(body)

    return page


def _assets_endpoint(folder: Path) -> Callable[[str], Any]:
    """``GET {swagger_url}/{file}`` for the files of :data:`_ASSETS` only, each read once."""
    content: dict[str, bytes] = {}

    async def swagger_ui_asset(file: str) -> Response:
        media_type = _ASSETS.get(file)
        if media_type is None:
            raise HTTPException(404, "Not Found")
        body = content.get(file)
        if body is None:
            body = content[file] = (folder / file).read_bytes()
        return Response(body, media_type=media_type, headers={"cache-control": "public, max-age=3600"})

    return swagger_ui_asset


def docs_routes(app: Tachyon) -> list[Route]:
    """The GET routes of the configured docs pages (left out of the schema); a page whose URL is None is
    not served, and without ``openapi_url`` there is no page at all. ``/openapi.json`` sends the bytes of
    ``app.openapi()``, encoded once per schema."""
    config = app.openapi_config
    routes: list[Route] = []
    if config.openapi_url:

        async def openapi() -> Response:
            generator = app.openapi_generator
            return Response(generator.encode(app.openapi()), media_type="application/json")

        routes.append(Route(config.openapi_url, openapi, ["GET"], include_in_schema=False))
        pages = (
            (config.docs_url, scalar_html, "scalar"),
            (config.swagger_url, swagger_ui_html, "swagger_ui"),
            (config.redoc_url, redoc_html, "redoc"),
        )
        for url, render, name in pages:
            if url:
                endpoint = _html_page(config, render)
                routes.append(Route(url, endpoint, ["GET"], name=f"{name}_html", include_in_schema=False))
        assets = swagger_ui_assets()
        if config.swagger_url and assets is not None:
            path = config.swagger_url.rstrip("/") + "/{file}"
            routes.append(Route(path, _assets_endpoint(assets), ["GET"], include_in_schema=False))
    return routes
