"""What a worker process builds once: settings, registry, storage, Celery client, the
ledger and the model cache. Built in `worker.main` before Celery starts, never at import time."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from celery import Celery

from shared.ledger import Ledger
from shared.queue import Wakeups
from shared.registry import Registry
from shared.settings import Settings
from shared.storage import Storage
from worker.batch_sizes import BatchSizes
from worker.cache import ModelCache
from worker.committer import Committer
from worker.heartbeat import Heartbeat


@dataclass
class WorkerContext:
    settings: Settings
    registry: Registry
    storage: Storage
    celery: Celery
    cache: ModelCache
    ledger: Ledger
    wakeups: Wakeups | None = None  # set with the Celery app (make_worker_app)
    name: str = field(default_factory=lambda: f"{socket.gethostname()}")
    models: tuple[str, ...] = ()  # the models whose queues this worker consumes (all in the registry: empty)
    heartbeat: Heartbeat = field(init=False)
    batch_sizes: BatchSizes = field(init=False)  # micro-batch sizes learned from out-of-memory
    committer: Committer = field(init=False)  # a slice's results committed while the model runs on

    def __post_init__(self) -> None:
        self.heartbeat = Heartbeat(self.ledger, self.settings.heartbeat_seconds, self.settings.lease_seconds)
        self.batch_sizes = BatchSizes(self.settings.oom_probe_after)
        self.committer = Committer()

    def wake_models_with_work(self) -> None:
        """A wake-up for each model this worker serves that has claimable work (at start,
        for work submitted while no worker was up; after a dead process's items went back)."""
        for model in self.ledger.models_with_claimable_work():
            if not self.models or model in self.models:
                self.wakeups.send(model)

    @property
    def owner(self) -> str:
        """Who holds a lease: the node name and the process that runs the slice."""
        return f"{self.name}:{os.getpid()}"


_current: WorkerContext | None = None


def set_context(context: WorkerContext) -> None:
    global _current
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("worker context not set: start workers with `genq worker`")
    return _current
