"""FastAPI version of the benchmark app (same routes as tachyon_app.py).

Idiomatic FastAPI: pydantic models, Query/Body/Header, Depends and
fastapi.BackgroundTasks.  Endpoints are plain ``def`` like in the tachyon app,
so FastAPI runs them in its thread pool (that is FastAPI's semantics).
The Database singleton is provided by an ``async def`` provider so that the
dependency itself does not cost a thread-pool hop (FastAPI's ``Depends()`` on
a class would build a new instance per request in the thread pool).
"""

import collections
import threading
import time

from fastapi import BackgroundTasks, Body, Depends, FastAPI, Header, HTTPException, Query
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float
    in_stock: bool = True


class OrderLine(BaseModel):
    item_id: int
    qty: int


class Order(BaseModel):
    customer: str
    lines: list[OrderLine]


class UserOut(BaseModel):
    id: int
    username: str
    email: str


class Database:
    def query(self, id: int):
        return {"id": id, "source": "db"}


_db = Database()


async def get_db() -> Database:
    return _db


@app.get("/hello")
def hello():
    return {"message": "Hello, World!"}


@app.get("/items/{item_id}")
def get_item(item_id: int, q: str | None = Query(None), limit: int = Query(10)):
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items")
def create_item(item: Item = Body()):
    return {"created": item.name, "price": item.price}


@app.post("/orders")
def create_order(order: Order = Body()):
    return {
        "customer": order.customer,
        "total_items": sum(line.qty for line in order.lines),
    }


@app.get("/users/{user_id}", response_model=UserOut)
def get_user(user_id: int):
    return UserOut(
        id=user_id,
        username=f"user_{user_id}",
        email=f"user_{user_id}@example.com",
    )


@app.get("/auth")
def auth(x_api_key: str = Header(...)):
    if x_api_key != "secret":
        raise HTTPException(status_code=403, detail="Forbidden")
    return {"authenticated": True}


@app.get("/users/{user_id}/profile")
def get_profile(user_id: int, db: Database = Depends(get_db)):
    return db.query(user_id)


@app.get("/search")
def search(
    q: str = Query(...),
    page: int = Query(1),
    size: int = Query(20),
    active: bool = Query(True),
):
    return {"q": q, "page": page, "size": size, "active": active, "tags": []}


@app.get("/block")
def block():
    time.sleep(0.05)  # the blocking neighbour of scenario 14
    return {"ok": True}


@app.get("/hello-async")
async def hello_async():
    return {"message": "Hello, World!"}


_log = collections.deque(maxlen=1024)
_stats = {"sync": 0, "async": 0, "slow_added": 0, "slow_done": 0}
_lock = threading.Lock()


def record_sync(value: int) -> None:
    _log.append(value)
    with _lock:  # FastAPI runs sync tasks in worker threads
        _stats["sync"] += 1


async def record_async(value: int) -> None:
    _log.append(value)
    _stats["async"] += 1


def slow_task() -> None:
    time.sleep(0.05)
    with _lock:
        _stats["slow_done"] += 1


@app.post("/task-sync")
def task_sync(background_tasks: BackgroundTasks):
    background_tasks.add_task(record_sync, 1)
    return {"ok": True}


@app.post("/notask")
def notask():
    return {"ok": True}


@app.post("/task-async")
def task_async(background_tasks: BackgroundTasks):
    background_tasks.add_task(record_async, 1)
    return {"ok": True}


@app.post("/task-slow")
def task_slow(background_tasks: BackgroundTasks):
    with _lock:
        _stats["slow_added"] += 1
    background_tasks.add_task(slow_task)
    return {"ok": True}


@app.get("/ping")
async def ping():
    return {"pong": True}


@app.get("/stats")
async def stats():
    return dict(_stats)
