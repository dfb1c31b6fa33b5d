"""Benchmark app for tachyon_api.

The SAME file is served by two contenders:
  * "ours"     -> the tachyon_api package of this repository
  * "upstream" -> tachyon-api 1.3.x from PyPI
so it must only use the public API that both share.

Scenarios 1-8 are the eight of the tachyon-api benchmark, written as upstream
writes them (plain ``def`` endpoints).  9-13 are extra scenarios of this
harness (async endpoint, background tasks).  /ping and /stats are helpers used
by bench/run.py (latency probe and background-task bookkeeping).
"""

import collections
import os
import threading
import time
from typing import List, Optional

from tachyon_api import (
    Body,
    Depends,
    Header,
    HTTPException,
    Query,
    Struct,
    Tachyon,
    injectable,
)
from tachyon_api.background import BackgroundTasks

# tachyon_inline.py serves this same file with every `def` endpoint on the loop (ours only: 1.3 has no such
# option, and never sees the variable).
_INLINE = bool(os.environ.get("TACHYON_BENCH_INLINE"))
# tachyon_nofreeze.py: the same app without gc.freeze() after startup (ours only, like the variable above).
_OPTIONS = {"gc_freeze": False} if os.environ.get("TACHYON_BENCH_NO_GC_FREEZE") else {}
# tachyon_status.py: the same app with a status record for every background task (ours only, likewise).
if os.environ.get("TACHYON_BENCH_TASK_STATUS"):
    _OPTIONS["task_status"] = True
app = Tachyon(sync_to_thread=False, **_OPTIONS) if _INLINE else Tachyon(**_OPTIONS)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
class Item(Struct):
    name: str
    price: float
    in_stock: bool = True


class OrderLine(Struct):
    item_id: int
    qty: int


class Order(Struct):
    customer: str
    lines: List[OrderLine]


class UserOut(Struct):
    id: int
    username: str
    email: str


@injectable
class Database:
    def query(self, id: int):
        return {"id": id, "source": "db"}


# --------------------------------------------------------------------------
# 1-8: the tachyon-api benchmark scenarios
# --------------------------------------------------------------------------
@app.get("/hello")
def hello():
    return {"message": "Hello, World!"}


@app.get("/items/{item_id}")
def get_item(item_id: int, q: Optional[str] = Query(None), limit: int = Query(10)):
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
def get_profile(user_id: int, db: Database = Depends()):
    return db.query(user_id)


@app.get("/search")
def search(
    q: str = Query(...),
    page: int = Query(1),
    size: int = Query(20),
    active: bool = Query(True),
):
    return {"q": q, "page": page, "size": size, "active": active, "tags": []}


# --------------------------------------------------------------------------
# 9-13: extra scenarios
# --------------------------------------------------------------------------
@app.get("/hello-async")
async def hello_async():
    return {"message": "Hello, World!"}


_log = collections.deque(maxlen=1024)
_stats = {"sync": 0, "async": 0, "slow_added": 0, "slow_done": 0}
_slow_lock = threading.Lock()


def record_sync(value: int) -> None:
    _log.append(value)
    _stats["sync"] += 1


async def record_async(value: int) -> None:
    _log.append(value)
    _stats["async"] += 1


def slow_task() -> None:
    time.sleep(0.05)
    with _slow_lock:
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
    with _slow_lock:
        _stats["slow_added"] += 1
    background_tasks.add_task(slow_task)
    return {"ok": True}


@app.get("/block", **({"sync_to_thread": True} if _INLINE else {}))
def block():
    """The blocking neighbour of scenario 14: a `def` endpoint that waits 50 ms (a slow database call).

    Always in a thread, even in tachyon_inline: on the loop it would stall every request, which is the
    documented danger of the opt-in, not what the scenario measures."""
    time.sleep(0.05)
    return {"ok": True}


# --------------------------------------------------------------------------
# Harness helpers
# --------------------------------------------------------------------------
@app.get("/ping")
async def ping():
    return {"pong": True}


@app.get("/stats")
async def stats():
    return dict(_stats)
