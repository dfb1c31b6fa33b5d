"""Group commit of durable tasks: batching, RQ's job layout, Redis faults and idempotent retries.

Real parts only: the app runs under ``tachyon run``, Redis is a real server process (stopped and restarted
under load in the fault test), and a small asyncio TCP proxy between the app and Redis delays or cuts Redis's
replies. Jobs are counted in Redis itself; ``tests/test_durable.py`` runs RQ workers on jobs stored this way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from redis import Redis
from rq import Queue, Retry
from rq.job import Job

from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.exceptions import TaskBackendUnavailable

from .conftest import ROOT, assert_error_shape, free_port, start_redis

APP = '''
import os
from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks, RQBackend
from tachyon_api.exceptions import TaskBackendUnavailable

backend = RQBackend(os.environ["REDIS_URL"], queue=os.environ["QUEUE"], socket_timeout=float(os.environ["TIMEOUT"]))
app = Tachyon(task_backend=backend)


def record(tag, part=0):
    """Run by RQ workers (``tachyon worker``): notes the tag in TASK_OUT, when the test sets it."""
    if os.environ.get("TASK_OUT"):
        with open(os.environ["TASK_OUT"], "a") as out:
            out.write(f"{tag}\\n")


@app.post("/record/{tag}")
def post_record(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(record, tag)
    return {"stored": tag}


@app.post("/three/{tag}")
async def post_three(tag: str, background_tasks: BackgroundTasks):
    for part in range(3):
        background_tasks.add_task(record, tag, part)
    return {"stored": tag}
'''


def jobs_by_tag(redis_url: str, queue: str) -> Counter:
    """How many jobs of each tag are queued in Redis."""
    connection = Redis.from_url(redis_url)
    ids = Queue(queue, connection=connection).get_job_ids()
    return Counter(job.args[0] for job in Job.fetch_many(ids, connection=connection) if job is not None)


def commits(redis_url: str) -> int:
    """Script runs Redis has served since the last CONFIG RESETSTAT (one per group commit)."""
    stats = Redis.from_url(redis_url).info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def app_env(redis_url: str, queue: str, timeout: float = 5.0) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "QUEUE": queue, "TIMEOUT": str(timeout)}


def start_app(serve_process: Any, redis_url: str, queue: str, timeout: float = 5.0) -> Any:
    return serve_process(APP, env=app_env(redis_url, queue, timeout))


async def post_all(url: str, paths: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(paths))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        return await asyncio.gather(*(client.post(path) for path in paths))


def test_requests_ready_together_share_one_round_trip(serve_process: Any, redis_url: str) -> None:
    server = start_app(serve_process, redis_url, "commit-batch")
    Redis.from_url(redis_url).config_resetstat()
    responses = asyncio.run(post_all(server.url, [f"/record/b{i}" for i in range(64)]))
    assert [r.status_code for r in responses] == [200] * 64
    assert jobs_by_tag(redis_url, "commit-batch") == Counter({f"b{i}": 1 for i in range(64)})
    batched = commits(redis_url)
    assert batched < 48, f"64 concurrent requests took {batched} round trips: they were not grouped"

    # A lone request is not held back to wait for company: one round trip each, answered at once.
    Redis.from_url(redis_url).config_resetstat()
    for i in range(5):
        started = time.perf_counter()
        assert httpx.post(f"{server.url}/three/lone{i}").status_code == 200
        assert time.perf_counter() - started < 0.5
    assert commits(redis_url) == 5
    assert jobs_by_tag(redis_url, "commit-batch")["lone4"] == 3


def stored_task(func: Any, backend: RQBackend, **options: Any) -> Any:
    return BackgroundTasks(backend=backend).add_task(func, 7, part=1).with_options(**options)


def layout_func(tag: Any, part: int = 0) -> None:
    """A module-level task function (RQ stores it by reference)."""


# Each case: the task's options, and the same job in the terms of RQ's own ``Queue.enqueue``/``enqueue_in``.
LAYOUTS = [
    ({}, {}),
    (
        {"retries": 2, "retry_delay": 1, "timeout": 30, "name": "n"},
        {"retry": Retry(max=2, interval=[1, 2]), "job_timeout": 30, "description": "n"},
    ),
    ({"delay": 60}, {}),
]


@pytest.mark.parametrize("options, rq_options", LAYOUTS)
def test_store_writes_what_rqs_own_enqueue_writes(redis_url: str, options: dict, rq_options: dict) -> None:
    """The group commit writes RQ's job layout itself: compare it, field by field, with RQ's ``enqueue``."""
    queue = f"layout-{len(options)}-{'delay' in options}"
    backend = RQBackend(redis_url, queue=queue, result_ttl=100)
    connection = Redis.from_url(redis_url)
    rq_options = {"description": stored_task(layout_func, backend).name, "result_ttl": 100, **rq_options}
    if "delay" in options:
        reference = backend.queue.enqueue_in(
            dt.timedelta(seconds=options["delay"]), layout_func, 7, part=1, **rq_options
        )
    else:
        reference = backend.queue.enqueue(layout_func, 7, part=1, **rq_options)

    async def store() -> None:
        await backend.store([stored_task(layout_func, backend, **options)], "POST", "/layout")
        await backend.aclose()

    asyncio.run(store())
    scheduled = "delay" in options
    if scheduled:
        ids = [i.decode() for i in connection.zrange(backend.queue.scheduled_job_registry.key, 0, -1)]
    else:
        ids = backend.queue.get_job_ids()
    assert len(ids) == 2 and reference.id in ids
    ours_id = next(i for i in ids if i != reference.id)
    ours = connection.hgetall(Job.key_for(ours_id))
    theirs = connection.hgetall(Job.key_for(reference.id))
    assert set(ours) == set(theirs)
    for field in theirs:
        if field == b"data":
            assert zlib.decompress(ours[field]) == zlib.decompress(theirs[field])
        elif field not in (b"created_at", b"enqueued_at"):
            assert ours[field] == theirs[field], field
    assert connection.sismember(Queue.redis_queues_keys, backend.queue.key)
    job = Job.fetch(ours_id, connection=connection)
    assert (job.func_name, job.args, job.kwargs) == (f"{__name__}.layout_func", (7,), {"part": 1})
    assert job.get_status() == ("scheduled" if scheduled else "queued")
    connection.delete(
        Job.key_for(ours_id), Job.key_for(reference.id), backend.queue.key, backend.queue.scheduled_job_registry.key
    )


def test_redis_killed_and_restarted_under_load_loses_and_duplicates_nothing(serve_process: Any, tmp_path: Path) -> None:
    """SIGKILL a persistent redis-server under load, restart it: every 2xx is a job, no 503 "not stored" is,
    the app reconnects by itself, and retrying the failed requests with their Idempotency-Key stores each
    request exactly once; then two ``tachyon worker`` processes run every job once."""
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    persistent = ("--appendonly", "yes", "--appendfsync", "always")
    redis = start_redis(port, data, *persistent)
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = start_app(serve_process, redis_url, "faults", timeout=1.0)
    answers: dict[str, tuple[int, str | None]] = {}
    phase = {"stop": False}

    async def client(name: str, http: httpx.AsyncClient) -> None:
        i = 0
        while not phase["stop"]:
            tag = f"{name}-{i}"
            i += 1
            response = await http.post(f"/record/{tag}", headers={"Idempotency-Key": tag})
            code = None if response.status_code == 200 else assert_error_shape(response, {503})["code"]
            answers[tag] = (response.status_code, code)
            await asyncio.sleep(0.1)  # a bounded number of jobs for the workers

    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            clients = [asyncio.create_task(client(f"c{n}", http)) for n in range(6)]
            await asyncio.sleep(1.0)
            redis.send_signal(signal.SIGKILL)
            await asyncio.to_thread(redis.wait, 10)
            await asyncio.sleep(0.5)
            restarted.append(await asyncio.to_thread(start_redis, port, data, *persistent))
            await asyncio.sleep(1.5)
            phase["stop"] = True
            await asyncio.gather(*clients)

    restarted: list[Any] = []
    try:
        asyncio.run(load())
        statuses = Counter(code or "stored" for _, code in answers.values())
        assert statuses["stored"] > 0 and statuses["TASK_BACKEND_UNAVAILABLE"] > 0, statuses
        jobs = jobs_by_tag(redis_url, "faults")
        assert max(jobs.values()) == 1, "a request stored twice"
        for tag, (status, code) in answers.items():
            if status == 200:
                assert jobs[tag] == 1, f"{tag} answered 2xx but is not in Redis"
            elif code == "TASK_BACKEND_UNAVAILABLE":
                assert jobs[tag] == 0, f"{tag} answered 'not stored' but is in Redis"
            else:
                assert code == "TASK_OUTCOME_UNKNOWN"
        # Reconnected by itself: the last answers of every client came after the restart, and were 2xx.
        last = {}
        for tag, answer in answers.items():
            name, number = tag.split("-")
            if int(number) >= last.get(name, (-1, None))[0]:
                last[name] = (int(number), answer)
        assert all(answer == (200, None) for _, answer in last.values()), last

        # Retry every request that did not get a 2xx, with the same key: each lands exactly once.
        async def retry(tags: list[str]) -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                requests = (http.post(f"/record/{tag}", headers={"Idempotency-Key": tag}) for tag in tags)
                return [response.status_code for response in await asyncio.gather(*requests)]

        failed = [tag for tag, (status, _) in answers.items() if status != 200]
        assert asyncio.run(retry(failed)) == [200] * len(failed)
        jobs = jobs_by_tag(redis_url, "faults")
        assert jobs == Counter(dict.fromkeys(answers, 1))

        Redis.from_url(redis_url).config_set("appendfsync", "no")  # the faults are over: workers need no fsync
        out = tmp_path / "ran.txt"
        env = {
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
            "TASK_OUT": str(out),
            **app_env(redis_url, "faults"),
        }
        command = [sys.executable, "-m", "tachyon_api", "worker", "app_module:app", "--burst"]
        workers = [
            subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(2)
        ]
        outputs = [worker.communicate(timeout=120)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-2000:]
        assert Counter(out.read_text().split()) == Counter(dict.fromkeys(answers, 1))
    finally:
        for proc in [redis, *restarted]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


class ReplyProxy:
    """A TCP proxy from the app to redis-server, on its own event loop in a thread.

    ``delay`` holds every reply from Redis back that many seconds; ``refuse()`` cuts every connection and
    closes new ones at once, so nothing reaches Redis; ``forward()`` goes back to passing everything.
    ``script_reply``, when set, answers every script run (``EVALSHA``/``EVAL``) itself with those bytes (an
    error reply Redis could give for a failure nobody foresaw) instead of passing it on.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = 0.0
        self.refusing = False
        self.script_reply: bytes | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await source.read(65536):
                    if not replies and self.script_reply is not None and b"\r\nEVAL" in data:
                        writer.write(self.script_reply)  # answered here: the script never reaches Redis
                        await writer.drain()
                        continue
                    if replies and self.delay:
                        await asyncio.sleep(self.delay)
                    target.write(data)
                    await target.drain()
            except OSError:
                pass
            finally:
                target.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self.writers -= {writer, up_writer}

    def refuse(self) -> None:
        def cut() -> None:
            self.refusing = True
            for writer in self.writers:
                writer.close()

        self.loop.call_soon_threadsafe(cut)
        time.sleep(0.1)

    def forward(self) -> None:
        self.refusing = False

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[ReplyProxy]:
    proxy = ReplyProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    yield proxy
    proxy.close()


def test_lost_reply_is_outcome_unknown_and_a_retry_with_the_same_key_lands_once(
    serve_process: Any, redis_url: str, proxy: ReplyProxy
) -> None:
    server = start_app(serve_process, f"redis://127.0.0.1:{proxy.port}/0", "unknown", timeout=0.5)

    def post(tag: str, key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return httpx.post(f"{server.url}/three/{tag}", headers=headers, timeout=30)

    proxy.delay = 0.2  # slow but within the timeout: stored, 2xx
    assert post("slow").status_code == 200

    proxy.delay = 1.5  # Redis applies the write, its reply comes after the timeout: the defect of issue 16
    response = post("late", key="order-42")
    body = assert_error_shape(response, {503}, "TASK_OUTCOME_UNKNOWN")
    assert "Idempotency-Key" in body["error"]
    assert jobs_by_tag(redis_url, "unknown")["late"] == 3  # stored after all: the answer did not say "not stored"

    proxy.delay = 0
    assert post("late", key="order-42").status_code == 200  # the retry with the same key stores nothing again
    assert post("late", key="order-42").status_code == 200
    time.sleep(0.1)
    assert jobs_by_tag(redis_url, "unknown")["late"] == 3
    assert post("other", key="order-42").status_code == 200  # the key is scoped to the method and path
    assert jobs_by_tag(redis_url, "unknown")["other"] == 3

    proxy.refuse()  # nothing reaches Redis: "not stored", safe to retry
    assert_error_shape(post("refused", key="order-43"), {503}, "TASK_BACKEND_UNAVAILABLE")
    assert jobs_by_tag(redis_url, "unknown")["refused"] == 0
    proxy.forward()  # Redis reachable again: the backend reconnects by itself
    assert post("refused", key="order-43").status_code == 200
    assert jobs_by_tag(redis_url, "unknown") == Counter({"slow": 3, "late": 3, "other": 3, "refused": 3})
    server.terminate()
    server.wait(20)
    log = server.output()
    assert "Outcome unknown for durable task(s) record, record, record of request POST /three/late" in log
    assert "Could not store durable task(s) record, record, record of request POST /three/refused" in log
    assert "Traceback" in log


# --- one request never fails or half-writes the others --------------------------------------------------------
def plain_task(backend: RQBackend, tag: str, **options: Any) -> Any:
    return BackgroundTasks(backend=backend).add_task(layout_func, tag).with_options(**options)


def job_keys(connection: Redis) -> set[bytes]:
    return set(connection.keys("rq:job:*"))


def test_a_request_that_cannot_be_stored_leaves_the_others_of_its_commit_whole(redis_url: str) -> None:
    """Redis does not roll a script back: a request whose write would fail (here the scheduled registry is a key
    of the wrong type) is refused whole before the first write, and the other requests of its flush are stored."""
    backend = RQBackend(redis_url, queue="wrong-type")
    connection = Redis.from_url(redis_url)
    connection.set(backend.queue.scheduled_job_registry.key, "not a sorted set")
    before = job_keys(connection)

    async def both() -> list[Any]:
        results = await asyncio.gather(
            backend.store([plain_task(backend, "alone")], "POST", "/a"),
            backend.store([plain_task(backend, "now"), plain_task(backend, "later", delay=60)], "POST", "/b"),
            return_exceptions=True,
        )
        await backend.aclose()
        return results

    first, second = asyncio.run(both())
    assert first is None
    assert isinstance(second, TaskBackendUnavailable)  # nothing of it stored: a plain retry is safe
    new = job_keys(connection) - before
    assert len(new) == 1  # the first request's job; no orphan hash of the second's "now" task
    (job,) = backend.queue.get_jobs()
    assert job.args == ("alone",) and job.key.encode() in new
    connection.delete(backend.queue.scheduled_job_registry.key, backend.queue.key, *new)


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True, "60"])
def test_an_idempotency_ttl_redis_would_refuse_is_refused_at_construction(ttl: Any) -> None:
    with pytest.raises(ValueError, match="idempotency_ttl"):
        RQBackend("redis://127.0.0.1:1/0", idempotency_ttl=ttl)


def test_the_script_refuses_a_bad_idempotency_ttl_alone(redis_url: str) -> None:
    """Past the constructor's check (an attribute set later), ``SET ... EX 0`` would fail the script half-way:
    the script's own check refuses that request only, before anything is written."""
    backend = RQBackend(redis_url, queue="bad-ttl")
    backend.idempotency_ttl = 0
    connection = Redis.from_url(redis_url)
    before = job_keys(connection)

    async def both() -> list[Any]:
        results = await asyncio.gather(
            backend.store([plain_task(backend, "no-key")], "POST", "/a"),
            backend.store([plain_task(backend, "keyed")], "POST", "/b", "key-1"),
            return_exceptions=True,
        )
        await backend.aclose()
        return results

    first, second = asyncio.run(both())
    assert first is None and isinstance(second, TaskBackendUnavailable)
    assert [job.args for job in backend.queue.get_jobs()] == [("no-key",)]
    assert len(job_keys(connection) - before) == 1
    backend.queue.empty()


# --- what an idempotency key covers --------------------------------------------------------------------------
def test_an_idempotency_key_covers_its_client_and_payload(redis_url: str) -> None:
    """The same key from another client is another key; from the same client with another payload it is a
    422 (the IETF Idempotency-Key draft), never a 2xx that silently drops the request's tasks."""
    from tachyon_api import Tachyon

    from .conftest import serve

    backend = RQBackend(redis_url, queue="idempotency-scope")
    app = Tachyon(task_backend=backend)

    @app.post("/orders")
    async def order(body: dict, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(layout_func, body["order"])
        return {"order": body["order"]}

    @app.post("/ping")  # the body is read for the comparison although the endpoint does not read it
    async def ping(background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(layout_func, "ping")
        return {}

    def post(path: str, who: str, payload: Any, key: str = "checkout-1") -> httpx.Response:
        headers = {"Idempotency-Key": key, "Authorization": f"Bearer {who}"}
        return httpx.post(f"{url}{path}", json=payload, headers=headers, timeout=10)

    with serve(app) as url:
        assert post("/orders", "alice", {"order": 1}).status_code == 200
        assert post("/orders", "alice", {"order": 1}).status_code == 200  # a retry: stored once
        assert backend.queue.count == 1
        assert post("/orders", "bob", {"order": 2}).json() == {"order": 2}  # another client's key
        assert backend.queue.count == 2
        assert_error_shape(post("/orders", "alice", {"order": 3}), {422}, "IDEMPOTENCY_KEY_REUSED")
        assert post("/ping", "alice", {"a": 1}, "ping-1").status_code == 200
        assert_error_shape(post("/ping", "alice", {"a": 2}, "ping-1"), {422}, "IDEMPOTENCY_KEY_REUSED")
    assert [job.args for job in backend.queue.get_jobs()] == [(1,), (2,), ("ping",)]
    backend.queue.empty()


def _jobs(backend: RQBackend) -> list[tuple]:
    return sorted(job.args for job in backend.queue.get_jobs())


def test_an_idempotency_key_covers_the_query_string(redis_url: str) -> None:
    """docs/durable-tasks.md's own shape: the input comes from the query. The key used for ``?email=ada`` is
    refused for ``?email=bob`` (422): a 2xx would tell bob's client his task was stored when it was not."""
    from tachyon_api import Tachyon

    from .conftest import serve

    backend = RQBackend(redis_url, queue="idempotency-query")
    app = Tachyon(task_backend=backend)

    @app.post("/signup")
    async def signup(email: str, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(layout_func, email)
        return {"email": email}

    with serve(app) as url:

        def post(email: str) -> httpx.Response:
            return httpx.post(f"{url}/signup", params={"email": email}, headers={"Idempotency-Key": "signup-1"})

        assert post("ada").status_code == 200
        assert post("ada").status_code == 200  # the retry
        assert_error_shape(post("bob"), {422}, "IDEMPOTENCY_KEY_REUSED")
    assert _jobs(backend) == [("ada",)]
    backend.queue.empty()


def test_an_idempotency_key_is_scoped_by_every_credential_the_request_carries(redis_url: str) -> None:
    """Two tenants reusing ``order-1001`` with the same payload: with an API key in a header or a query parameter
    (declared by the route's security schemes, at any depth), a session cookie, or ``X-API-Key``, each tenant's
    request is its own. Every 2xx answer means this request's task is stored; a retry stores nothing again."""
    from tachyon_api import Depends, Tachyon
    from tachyon_api.security import APIKeyHeader, APIKeyQuery

    from .conftest import serve

    backend = RQBackend(redis_url, queue="idempotency-tenants")
    app = Tachyon(task_backend=backend)
    tenant_header = APIKeyHeader("X-Tenant-Key")

    def tenant(key: str = Depends(tenant_header)) -> str:  # the scheme one level down
        return key

    @app.post("/by-header")
    async def by_header(body: dict, background_tasks: BackgroundTasks, who: str = Depends(tenant)) -> dict:
        background_tasks.add_task(layout_func, f"header:{who}")
        return {}

    @app.post("/by-query", dependencies=[Depends(APIKeyQuery("key"))])
    async def by_query(body: dict, background_tasks: BackgroundTasks, key: str) -> dict:
        background_tasks.add_task(layout_func, f"query:{key}")
        return {}

    @app.post("/by-cookie")
    async def by_cookie(body: dict, background_tasks: BackgroundTasks, sid: str | None = None) -> dict:
        background_tasks.add_task(layout_func, "cookie")
        return {}

    @app.post("/by-api-key")
    async def by_api_key(body: dict, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(layout_func, "x-api-key")
        return {}

    cases = [
        ("/by-header", [{"headers": {"X-Tenant-Key": t}} for t in ("t1", "t2")]),
        ("/by-query", [{"params": {"key": t}} for t in ("t1", "t2")]),
        ("/by-cookie", [{"cookies": {"session": t}} for t in ("s1", "s2")]),
        ("/by-api-key", [{"headers": {"X-API-Key": t}} for t in ("k1", "k2")]),
    ]
    with serve(app) as url:
        for path, tenants in cases:
            for options in tenants * 2:  # each tenant twice: the second is a retry
                with httpx.Client(base_url=url, cookies=options.get("cookies")) as client:
                    response = client.post(
                        path,
                        json={"order": 1001},
                        headers={"Idempotency-Key": "order-1001", **options.get("headers", {})},
                        params=options.get("params"),
                    )
                assert response.status_code == 200, (path, options, response.text)
    assert _jobs(backend) == sorted(
        [
            ("header:t1",),
            ("header:t2",),
            ("query:t1",),
            ("query:t2",),
            ("cookie",),
            ("cookie",),
            ("x-api-key",),
            ("x-api-key",),
        ]
    )
    backend.queue.empty()


def test_an_explicit_idempotency_scope(redis_url: str) -> None:
    """``RQBackend(idempotency_scope=...)``: the app says who the client is (here the user, whatever token it
    sends), so a retry with a refreshed token is a retry, and another user's key is another key."""
    from tachyon_api import Tachyon

    from .conftest import serve

    async def user_of(connection) -> str:
        return connection.headers["x-user"]

    backend = RQBackend(redis_url, queue="idempotency-explicit", idempotency_scope=user_of)
    app = Tachyon(task_backend=backend)

    @app.post("/pay")
    async def pay(body: dict, background_tasks: BackgroundTasks) -> dict:
        background_tasks.add_task(layout_func, body["amount"])
        return {}

    with serve(app) as url:

        def post(user: str, token: str, amount: int = 5) -> httpx.Response:
            headers = {"Idempotency-Key": "pay-1", "X-User": user, "Authorization": f"Bearer {token}"}
            return httpx.post(f"{url}/pay", json={"amount": amount}, headers=headers)

        assert post("ada", "old-token").status_code == 200
        assert post("ada", "refreshed-token").status_code == 200  # the same user's retry: stored once
        assert post("bob", "old-token").status_code == 200  # another user: stored
        assert_error_shape(post("ada", "t", amount=6), {422}, "IDEMPOTENCY_KEY_REUSED")
    assert _jobs(backend) == [(5,), (5,)]
    backend.queue.empty()


def test_an_unforeseen_script_error_is_outcome_unknown_and_an_idle_connection_closed_by_redis_is_reopened(
    serve_process: Any, redis_url: str, proxy: ReplyProxy
) -> None:
    """An error reply the script's checks did not foresee may come after some of its writes: the client is told
    "outcome unknown" (503 TASK_OUTCOME_UNKNOWN, retry with the same key only), never "not stored", which
    invites a duplicate. And a connection Redis closed while idle (a restart, its ``timeout``) is found closed
    before the next commit is sent on it: that commit is stored, not answered 503."""
    server = start_app(serve_process, f"redis://127.0.0.1:{proxy.port}/0", "unforeseen", timeout=2)
    connection = Redis.from_url(redis_url)
    assert httpx.post(f"{server.url}/record/first", timeout=10).status_code == 200

    proxy.script_reply = b"-ERR Error running script (call to f_0): @user_script:40: unexpected\r\n"
    response = httpx.post(f"{server.url}/record/odd", headers={"Idempotency-Key": "odd-1"}, timeout=10)
    assert_error_shape(response, {503}, "TASK_OUTCOME_UNKNOWN")
    proxy.script_reply = None
    assert httpx.post(f"{server.url}/record/odd", headers={"Idempotency-Key": "odd-1"}, timeout=10).status_code == 200

    # Redis closes the app's idle connection (as CLIENT KILL, a restart or its idle timeout would).
    assert httpx.post(f"{server.url}/record/warm", timeout=10).status_code == 200
    for client in connection.client_list():
        if client["id"] != str(connection.client_id()):
            connection.client_kill_filter(_id=client["id"])
    time.sleep(0.2)
    for tag in ("after-kill-1", "after-kill-2"):
        response = httpx.post(f"{server.url}/record/{tag}", timeout=10)
        assert response.status_code == 200, (tag, response.text, server.output()[-3000:])
    assert jobs_by_tag(redis_url, "unforeseen") == Counter(
        {"first": 1, "odd": 1, "warm": 1, "after-kill-1": 1, "after-kill-2": 1}
    )
