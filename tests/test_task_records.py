"""Task status records: the state machine, the bounded in-memory store, results, progress and watching."""

from __future__ import annotations

import asyncio
import threading
import time
import types

import msgspec
import pytest

from tachyon_api.tasks.records import (
    CANCELLED,
    FAILED,
    FINAL,
    QUEUED,
    RETRYING,
    RUNNING,
    SCHEDULED,
    STATES,
    SUCCEEDED,
    TRANSITIONS,
    MemoryTaskStore,
    TaskError,
    TaskRecord,
    check_progress,
    encode_result,
)


def test_every_state_has_its_transitions_and_final_states_have_none() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for state, targets in TRANSITIONS.items():
        assert targets <= set(STATES)
        assert (not targets) == (state in FINAL)
    assert {SUCCEEDED, FAILED, CANCELLED} == FINAL


def test_a_task_moves_through_its_states_and_a_final_state_sticks() -> None:
    store = MemoryTaskStore()
    tracker = store.create("t1", "job")
    with store.lock:
        assert tracker.advance(RUNNING)
        assert tracker.advance(RETRYING)
        assert tracker.advance(RUNNING)
        assert tracker.end(SUCCEEDED, result=b'{"rows":3}')
        assert not tracker.advance(RUNNING)
        assert not tracker.end(CANCELLED)
        record = tracker.record()
    assert record.state == SUCCEEDED and record.attempts == 2 and record.result == {"rows": 3}
    assert record.created_at <= record.started_at <= record.ended_at
    assert record.created_at.tzinfo is not None and record.created_at.utcoffset().total_seconds() == 0


def test_a_queued_task_cannot_jump_to_success() -> None:
    store = MemoryTaskStore()
    tracker = store.create("t1", "job")
    with store.lock:
        assert not tracker.advance(SUCCEEDED)
        assert not tracker.advance(RETRYING)
        assert tracker.state == QUEUED
        assert tracker.advance(SCHEDULED) and tracker.advance(QUEUED)


def test_the_record_encodes_to_the_documented_shape() -> None:
    store = MemoryTaskStore()
    tracker = store.create("abc", "csv-import")
    with store.lock:
        tracker.advance(RUNNING)
        tracker.progress(0.5, "half")
        tracker.end(FAILED, error=TaskError("ValueError", "bad row"))
        data = msgspec.json.decode(msgspec.json.encode(tracker.record()))
    assert set(data) == {
        "id",
        "name",
        "state",
        "attempts",
        "created_at",
        "started_at",
        "ended_at",
        "progress",
        "result",
        "error",
    }
    assert data["progress"] == {"done": 0.5, "message": "half"}
    assert data["error"] == {"type": "ValueError", "message": "bad row"}
    assert data["created_at"].endswith("Z") and data["state"] == "failed"
    assert msgspec.json.decode(msgspec.json.encode(tracker.record()), type=TaskRecord).error.type == "ValueError"


@pytest.mark.parametrize("done", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_progress_outside_zero_to_one_is_refused(done: object) -> None:
    with pytest.raises(ValueError):
        check_progress(done, None)  # type: ignore[arg-type]


def test_progress_messages_are_short_strings() -> None:
    assert check_progress(1, "ok") == (1.0, "ok")
    assert check_progress(None, None) == (None, None)
    with pytest.raises(TypeError):
        check_progress(None, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_progress(None, "x" * 1001)


def test_results_are_json_within_the_limit_and_an_error_beyond_it() -> None:
    assert encode_result({"a": [1, 2]}, 100) == (b'{"a":[1,2]}', None)
    data, error = encode_result("x" * 200, 100)
    assert data is None and error.type == "ResultTooLarge" and "202" in error.message
    data, error = encode_result(object(), 100)
    assert data is None and error.type == "ResultNotSerializable"


def test_the_store_keeps_unfinished_records_and_drops_the_oldest_ended_past_its_bound() -> None:
    store = MemoryTaskStore(max_records=3)
    running = store.create("running", "job")
    with store.lock:
        running.advance(RUNNING)
    for n in range(10):
        tracker = store.create(f"t{n}", "job")
        with store.lock:
            tracker.advance(RUNNING)
            tracker.end(SUCCEEDED)
    assert [n for n in range(10) if store.get(f"t{n}") is not None] == [7, 8, 9]
    assert store.get("running") is running
    assert len(store) == 4


def test_ended_records_expire_after_the_ttl() -> None:
    store = MemoryTaskStore(ttl=0.05)
    tracker = store.create("t", "job")
    with store.lock:
        tracker.advance(RUNNING)
        tracker.end(SUCCEEDED)
    assert store.get("t") is tracker
    time.sleep(0.1)
    assert store.get("t") is None
    other = store.create("u", "job")  # the next ending makes room: the expired record leaves memory
    with store.lock:
        other.advance(RUNNING)
        other.end(SUCCEEDED)
    assert len(store) == 1


def test_kept_results_are_bounded_in_total() -> None:
    store = MemoryTaskStore(result_limit=100, max_result_bytes=250)
    for n in range(4):
        tracker = store.create(f"t{n}", "job")
        with store.lock:
            tracker.advance(RUNNING)
            tracker.end(SUCCEEDED, result=b"1" * 100)
    assert [n for n in range(4) if store.get(f"t{n}") is not None] == [2, 3]


def test_watch_yields_the_current_record_then_each_change_until_the_final_one() -> None:
    async def main() -> list[tuple[str, float | None]]:
        store = MemoryTaskStore()
        tracker = store.create("t", "job")
        seen: list[tuple[str, float | None]] = []

        async def watcher() -> None:
            async for record in tracker.watch():
                seen.append((record.state, record.progress.done))

        watching = asyncio.ensure_future(watcher())
        await asyncio.sleep(0)

        def work() -> None:  # changes from a worker thread wake the watcher on the loop; one at a time
            for count, step in enumerate(
                (lambda: tracker.advance(RUNNING), lambda: tracker.progress(0.5, None), lambda: tracker.end(SUCCEEDED)),
                start=2,
            ):
                with store.lock:
                    step()
                deadline = time.monotonic() + 5
                while len(seen) < count and time.monotonic() < deadline:
                    time.sleep(0.001)

        await asyncio.get_running_loop().run_in_executor(None, work)
        await asyncio.wait_for(watching, 5)
        late = [record.state async for record in tracker.watch()]
        assert late == [SUCCEEDED]
        return seen

    assert asyncio.run(main()) == [(QUEUED, None), (RUNNING, None), (RUNNING, 0.5), (SUCCEEDED, 0.5)]


def test_cancel_ends_a_queued_task_interrupts_a_running_async_one_and_refuses_an_ended_one() -> None:
    store = MemoryTaskStore()
    queued = store.create("q", "job")
    running = store.create("r", "job", is_async=True)
    interrupted = threading.Event()
    with store.lock:
        running.advance(RUNNING)
        running.interrupt = types.SimpleNamespace(cancel=interrupted.set)  # the asyncio task running it
        assert queued.cancel() and queued.state == CANCELLED
        assert running.cancel() and running.state == RUNNING and interrupted.is_set()
        assert running.is_cancelled() and running.cancel_seen
        assert not queued.cancel()


def test_stores_and_the_durable_backend_answer_the_status_protocol() -> None:
    import inspect

    from tachyon_api.backends.base import TaskBackend
    from tachyon_api.backends.rq import RQBackend
    from tachyon_api.tasks import RedisTaskStore
    from tachyon_api.tasks.status import StatusSource

    assert StatusSource in TaskBackend.__mro__
    names = ("read_status", "watch_status", "cancel_status")
    for source in (MemoryTaskStore, RedisTaskStore, RQBackend):
        for name in names:
            ours, theirs = getattr(source, name), getattr(StatusSource, name)
            assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), (source, name)
