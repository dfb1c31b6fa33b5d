"""What a type checker sees of tachyon_api in a user's code. Checked by mypy --strict, never run.

tests/test_typing.py checks this file as a user's project would: from outside the repository, with the package
found as an installed one (so only through its ``py.typed``). Every line that ends with ``# error: CODE`` must
be reported with that error code, and no other line may be reported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from typing_extensions import assert_type

from tachyon_api import (
    BackgroundTask,
    BackgroundTasks,
    Body,
    Depends,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Router,
    Struct,
    Tachyon,
    WebSocket,
    cache,
    injectable,
)
from tachyon_api.background import BackgroundTasks as BackgroundTasks13
from tachyon_api.responses import JSONResponse, Response
from tachyon_api.security import HTTPAuthorizationCredentials, HTTPBearer
from tachyon_api.tasks import MemoryTaskStore, TaskOptions
from tachyon_api.testing import TachyonTestClient

app = Tachyon()
router = Router(prefix="/items", tags=["items"])
bearer = HTTPBearer()


class Item(Struct):
    name: str
    price: float


@injectable
class Database:
    def count(self) -> int:
        return 0


@injectable(scope="request")
class Session:
    pass


def send_email(to: str, subject: str, *, urgent: bool = False) -> None: ...


async def notify(user_id: int) -> None: ...


def get_user(token: str = Header(alias="authorization")) -> str:
    return token


# --- decorators give the endpoint back unchanged, with its own type --------------------------------------
@app.get("/items/{item_id}")
def read_item(item_id: int = Path(), q: str | None = Query(None, max_length=50)) -> dict[str, Any]:
    return {"item_id": item_id, "q": q}


@app.post("/items", status_code=201)
async def create_item(item: Item = Body(), user: str = Depends(get_user), db: Database = Depends()) -> Item:
    return item


@router.put("/{item_id}")
def update_item(item_id: int, item: Item) -> Item:
    return item


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    await websocket.accept()


@app.exception_handler(ValueError)
async def on_value_error(request: Request, exc: ValueError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


def on_key_error(request: Request, exc: KeyError) -> JSONResponse:  # the exception's own type, as users write it
    return JSONResponse({"detail": f"missing {exc}"}, status_code=404)


app.add_exception_handler(KeyError, on_key_error)
app.add_exception_handler("KeyError", on_key_error)  # error: arg-type


@app.middleware("http")
async def timing(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    return response


@app.on_event("startup")
async def startup() -> None: ...


@cache(ttl=60)
def expensive(n: int) -> list[int]:
    return [n]


assert_type(read_item(1), dict[str, Any])
assert_type(update_item(1, Item(name="a", price=1.0)), Item)
assert_type(expensive(3), list[int])
assert_type(Database, type[Database])
assert_type(Session(), Session)
assert_type(bearer, HTTPBearer)
read_item("1")  # error: arg-type
update_item(1)  # error: call-arg
expensive("3")  # error: arg-type


async def awaited() -> None:
    assert_type(await create_item(Item(name="a", price=1.0)), Item)


# --- add_task checks the task's arguments against the function ------------------------------------------
@app.post("/signup")
def signup(background_tasks: BackgroundTasks, credentials: HTTPAuthorizationCredentials = Depends(bearer)) -> None:
    task = background_tasks.add_task(send_email, "ada@example.com", "Welcome!", urgent=True)
    assert_type(task, BackgroundTask)
    assert_type(task.with_options(retries=3, timeout=10), BackgroundTask)
    task.with_options(delay=dt.timedelta(minutes=5)).with_options(delay=30.0).with_options(at=dt.datetime(2030, 1, 1))
    task.with_options(delay="5 minutes")  # error: arg-type
    task.with_options(at="2030-01-01")  # error: arg-type
    background_tasks.add_task(notify, 42)
    background_tasks.add_task(send_email, "ada@example.com")  # error: call-arg
    background_tasks.add_task(send_email, "ada@example.com", 2)  # error: arg-type
    background_tasks.add_task(send_email, "ada@example.com", "Hi", urgent="yes")  # error: arg-type
    background_tasks.add_task(send_email, "ada@example.com", "Hi", cc="bob@example.com")  # error: call-arg
    background_tasks.add_task(notify, "42")  # error: arg-type
    options = background_tasks.with_options(durable=False)
    assert_type(options, TaskOptions)
    options.add_task(notify, 42)
    options.add_task(notify)  # error: call-arg
    if not credentials.credentials:
        raise HTTPException(status_code=401, detail="no token")


def legacy(background_tasks: BackgroundTasks13) -> Response:
    assert_type(background_tasks, BackgroundTasks)
    BackgroundTask(send_email, "ada@example.com", subject=3)  # error: arg-type
    return Response(b"ok", background=BackgroundTask(notify, 1))


# --- the app's options, and a WebSocket route added without the decorator ---------------------------------
async def lifespan(app: Tachyon) -> AsyncIterator[None]:  # an undecorated async generator function
    yield


Tachyon(lifespan=lifespan, task_store=MemoryTaskStore(ttl=60))
Tachyon(task_store="redis://localhost")  # error: arg-type
app.add_websocket_route("/ws2", chat, max_message_size=1 << 20)
router.add_websocket_route("/ws", chat, max_message_size="1MB")  # error: arg-type
router.add_websocket_route("/ws", chat, nmae="chat")  # error: call-arg


# --- the test client takes the app -----------------------------------------------------------------------
app.include_router(router)
with TachyonTestClient(app) as client:
    assert_type(client.get("/items/1").json(), Any)
