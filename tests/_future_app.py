"""An app whose annotations are strings (``from __future__ import annotations``), used by test_params.py."""

from __future__ import annotations

from typing import Optional

from tachyon_api import BackgroundTasks, Depends, Form, Header, Request, Struct, Tachyon, UploadFile


class FutureItem(Struct):
    name: str
    price: float


def scale_dep(request: Request, scale: int = 3) -> str:
    return f"dep:{scale}:{request.url.path}"


app = Tachyon()


@app.post("/items/{item_id}")
async def create(
    item_id: int,
    item: FutureItem,
    request: Request,
    background_tasks: BackgroundTasks,
    limit: int,
    flag: bool = False,
    tag: list[str] = [],  # noqa: B006
    maybe: int | None = None,
    x_api_key: str = Header(),
    dep: str = Depends(scale_dep),
) -> dict:
    return {
        "item_id": item_id,
        "limit": limit,
        "flag": flag,
        "tags": tag,
        "maybe": maybe,
        "item": {"name": item.name, "price": item.price},
        "key": x_api_key,
        "dep": dep,
        "method": request.method,
        "tasks": isinstance(background_tasks, BackgroundTasks),
    }


@app.post("/upload")
async def upload(file: UploadFile, count: int = Form(), other: Optional[UploadFile] = None) -> dict:
    return {"filename": file.filename, "count": count, "data": (await file.read()).decode()}
