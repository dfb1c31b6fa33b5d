"""Leases of ``tachyon worker``'s jobs, and the take-over of the jobs a gone worker held.

A claimed job's entry in the started registry is a lease that expires ``lease`` seconds (1.5 heartbeats)
after its worker last renewed it; the worker renews all of its jobs every heartbeat. Every half heartbeat one
live worker per queue (a Redis lock elects it) runs RQ's cleanup of expired leases: a job whose worker is gone
is re-queued if it has retries left, or moved to the failed registry, within two heartbeats of the worker's
death. Jobs that an RQ worker left in the queue's intermediate list are put back on the queue. No lease is
taken over until Redis has been up, and this worker in touch with it, for a whole lease and more: after a Redis
restart the live workers renew first.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence

from rq.queue import Queue
from rq.registry import StartedJobRegistry

from .rq_jobs import RunningJob
from .rq_ledger import Ledger

__all__ = ["Leases"]

logger = logging.getLogger("tachyon_api.worker")


class Leases:
    """The worker's side of leases: renewing its own, taking over the expired ones of ``queues``.

    Blocking Redis calls, made in the worker's Redis thread."""

    def __init__(self, ledger: Ledger, queues: Sequence[Queue], heartbeat_interval: float) -> None:
        self.ledger = ledger
        self.connection = ledger.connection
        self.name = ledger.name
        self.queues = queues
        self.heartbeat_interval = heartbeat_interval

    @property
    def guard(self) -> float:
        """How long Redis and this worker must have been in touch before it takes over expired leases: a lease,
        the longest backoff and a heartbeat, time for every live worker to renew after a Redis restart."""
        return self.ledger.lease + 2.0 + self.heartbeat_interval

    def renew(self, running: Mapping[str, RunningJob], state: str) -> None:
        """Renew the leases of the ``running`` jobs (by composite key); a job whose lease was taken over is marked
        ``lost``, with a warning (once)."""
        for composite in self.ledger.renew(list(running.values()), state):
            job = running.get(composite)
            if job is not None and not job.lost:
                job.lost = True
                logger.warning(
                    "Worker %s: the lease of job %s was taken over while it ran (this worker could not renew it in "
                    "time): another worker may run it again",
                    self.name,
                    job.job.id,
                )

    def recover(self, in_touch_for: float) -> None:
        """Expired leases and stuck intermediate entries of each queue, by one worker per half heartbeat;
        ``in_touch_for``: the seconds this worker has reached Redis without a failure."""
        settled = in_touch_for >= self.guard
        for queue in self.queues:
            lock = f"tachyon:worker-recovery:{queue.name}"
            if not self.connection.set(lock, self.name, nx=True, px=max(int(self.heartbeat_interval * 450), 1)):
                continue
            self.requeue_intermediate(queue)
            if not settled or self.connection.info("server").get("uptime_in_seconds", 0) < self.guard:
                continue
            registry = queue.started_job_registry
            expired = registry.get_expired_job_ids()
            if expired:
                logger.warning(
                    "Worker %s: %d job(s) of queue %s were held by a worker that stopped renewing their leases: "
                    "retried if they have retries left, else failed: %s",
                    self.name,
                    len(expired),
                    queue.name,
                    ", ".join(expired),
                )
                registry.cleanup()  # RQ's: each job to its queue (retries left) or to the failed registry

    def requeue_intermediate(self, queue: Queue) -> None:
        """Put back on ``queue`` the jobs an RQ worker left in its intermediate list, seen there for half a
        heartbeat (at least a second) and not started: an RQ worker may be between its two steps."""
        intermediate = queue.intermediate_queue
        ids = intermediate.get_job_ids()
        if not ids:
            return
        entries: list[bytes] = self.connection.zrange(queue.started_job_registry.key, 0, -1)  # type: ignore[assignment]
        started = {StartedJobRegistry.parse_job_id(entry.decode()) for entry in entries}
        for job_id in ids:
            if job_id in started or intermediate.set_first_seen(job_id):
                continue  # first seen now
            first = intermediate.get_first_seen(job_id)
            if first is None or (dt.datetime.now(dt.timezone.utc) - first).total_seconds() < max(
                self.heartbeat_interval / 2, 1.0
            ):
                continue
            if self.ledger.requeue_intermediate(queue, job_id):
                logger.warning(
                    "Worker %s: job %s was left in %s by a worker that stopped before running it: back on the queue",
                    self.name,
                    job_id,
                    intermediate.key,
                )
