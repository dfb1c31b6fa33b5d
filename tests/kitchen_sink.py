"""A kitchen-sink app: one endpoint per kind of input the framework reads, for hostile-input tests and fuzzing.

Every parameter source (path, query, header, cookie), every scalar type, lists, JSON bodies (a Struct with
nested dicts and lists, a ``dict``, ``Any``, several embedded parameters), ``request.body()/json()/stream()``,
urlencoded forms and multipart uploads. Endpoints echo what they received, so a test can check the
conversion too. Uploads are saved under ``upload_dir`` (``$KITCHEN_SINK_UPLOAD_DIR`` for the module's ``app``,
else a new temporary folder) by their ``filename``, as the docs say an app may.

A module of its own, with ``app`` at module level, so that it can be served by ``tachyon run
tests.kitchen_sink:app`` and pointed at by schema-driven fuzzers (schemathesis) once the app has an OpenAPI
schema.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import os
import tempfile
import uuid
from pathlib import Path as FilePath
from typing import Any, Optional

import msgspec

from tachyon_api import Body, Cookie, File, Form, Header, Request, Tachyon, UploadFile


class Color(str, enum.Enum):
    red = "red"
    green = "green"


class Line(msgspec.Struct):
    sku: str
    qty: int


class Order(msgspec.Struct):
    customer: str
    lines: list[Line]
    meta: dict[str, int] = {}
    groups: dict[str, list[dict[str, float]]] = {}
    counts: dict[int, int] = {}
    note: Optional[str] = None
    extra: Any = None


def _json(component: str) -> dict[str, Any]:
    """A JSON response whose schema is one of the framework's error bodies in ``components/schemas``."""
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}}


def create_app(upload_dir: FilePath | None = None) -> Tachyon:
    """The app; ``max_body_size`` is 64 KiB so that limits are quick to reach."""
    configured = os.environ.get("KITCHEN_SINK_UPLOAD_DIR")
    folder = upload_dir or FilePath(configured or tempfile.mkdtemp(prefix="kitchen-sink-"))
    app = Tachyon(max_body_size=64 * 1024)

    # --- path, query, header, cookie: every scalar type -----------------------------------------------
    @app.get("/path/int/{value}")
    async def path_int(value: int) -> dict[str, Any]:
        return {"value": value}

    @app.get("/path/float/{value}")
    async def path_float(value: float) -> dict[str, Any]:
        return {"value": value}

    @app.get("/path/decimal/{value}")
    async def path_decimal(value: decimal.Decimal) -> dict[str, Any]:
        return {"value": str(value)}

    @app.get("/path/uuid/{value}")
    async def path_uuid(value: uuid.UUID) -> dict[str, Any]:
        return {"value": str(value)}

    @app.get("/path/str/{value}")
    async def path_str(value: str) -> dict[str, Any]:
        return {"value": value}

    @app.get("/query")
    async def query(
        n: int,
        x: float = 0.0,
        d: decimal.Decimal = decimal.Decimal(0),
        flag: bool = False,
        day: Optional[datetime.date] = None,
        color: Color = Color.red,
        tags: list[int] = [],  # noqa: B006 - a default the framework copies into no state
        text: str = "",
    ) -> dict[str, Any]:
        return {"n": n, "x": x, "d": str(d), "flag": flag, "day": day, "color": color, "tags": tags, "text": text}

    @app.get("/headers")
    def headers(
        x_count: int = Header(), x_ratio: float = Header(1.0), x_tags: list[str] = Header([])
    ) -> dict[str, Any]:
        return {"count": x_count, "ratio": x_ratio, "tags": x_tags}

    @app.get("/cookies")
    async def cookies(session: str = Cookie(), visits: int = Cookie(0)) -> dict[str, Any]:
        return {"session": session, "visits": visits}

    # --- JSON bodies ----------------------------------------------------------------------------------
    @app.post("/json/order")
    async def json_order(order: Order) -> Order:
        return order

    @app.post("/json/dict")
    def json_dict(data: dict[str, int]) -> dict[str, int]:
        return data

    @app.post("/json/any")
    async def json_any(data: Any = Body()) -> dict[str, Any]:
        return {"type": type(data).__name__}

    @app.post("/json/embed")
    async def json_embed(line: Line = Body(), count: int = Body(1)) -> dict[str, Any]:
        return {"sku": line.sku, "count": count}

    # These read the body by hand, which the schema cannot see: they document what the reads may answer.
    too_large = {"description": "Body larger than max_body_size", "content": _json("ErrorResponse")}
    read_by_hand = {413: too_large}

    @app.post("/request/body", responses=read_by_hand)
    async def request_body(request: Request) -> dict[str, Any]:
        return {"length": len(await request.body())}

    malformed = {"description": "Malformed JSON", "content": _json("ValidationErrorResponse")}

    @app.post("/request/json", responses={**read_by_hand, 422: malformed})
    async def request_json(request: Request) -> dict[str, Any]:
        return {"type": type(await request.json()).__name__}

    @app.post("/request/stream", responses=read_by_hand)
    async def request_stream(request: Request) -> dict[str, Any]:
        return {"length": sum([len(chunk) async for chunk in request.stream()])}

    # --- forms and uploads ----------------------------------------------------------------------------
    @app.post("/form")
    async def form(name: str = Form(), age: int = Form(), tags: list[str] = Form([])) -> dict[str, Any]:
        return {"name": name, "age": age, "tags": tags}

    @app.post("/upload")
    async def upload(file: UploadFile = File(), note: str = Form("")) -> dict[str, Any]:
        saved = None
        if file.filename is not None:  # the documented use: the sanitised name joined to a folder
            target = folder / file.filename
            target.write_bytes(await file.read())
            saved = target.name
        return {"filename": file.filename, "saved": saved, "size": file.size, "note": note}

    @app.post("/uploads")
    async def uploads(files: list[UploadFile] = File()) -> dict[str, Any]:
        return {"sizes": [f.size for f in files]}

    return app


app = create_app()
