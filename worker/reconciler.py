"""The reconciler: finds work nobody is doing and sends a new wake-up.

Each pass, in its own short transactions:
1. running items whose lease expired go back to pending (or fail at the attempt cap);
2. unfinished jobs with no item left to run get their final state (and files that no
   row points to are removed);
3. each model with claimable work and an empty Redis queue gets one wake-up (this
   covers lost messages and a Redis restart that lost everything; a wake-up too many
   finds nothing to claim and costs one query).

What each pass repaired is counted for /metrics (`genq_reconciler_repairs_total`, by
repair; the expired leases also in `genq_leases_expired_total`, which a worker's claim
adds to when it releases them first).

Beside the passes, a thread writes the output and error files of OpenAI batches whose
jobs have all finished, stops batches past their window and removes expired files
(`shared.openai_batches`), every GENQ_BATCH_POLL_SECONDS; another removes finished jobs
past GENQ_RESULT_TTL and their outputs (`shared.retention`), every
GENQ_RETENTION_INTERVAL_SECONDS.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

from shared import watch
from shared.ledger import Ledger
from shared.notices import notices_for
from shared.openai_batches import start_thread as start_batch_finalizer
from shared.queue import Wakeups, make_celery, queue_name
from shared.retention import start_thread as start_retention_sweeper
from shared.storage import storage_from_settings
from worker.deliverer import start_thread as start_deliverer
from worker.slices import remove_orphaned_outputs

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    leases_released: int = 0
    jobs_settled: int = 0
    wakeups_sent: int = 0


def reconcile_once(settings, celery, storage, ledger: Ledger | None = None, wakeups: Wakeups | None = None) -> PassReport:
    ledger = ledger or Ledger(settings.database_url)
    wakeups = wakeups or Wakeups(celery, settings.redis_url, settings.wakeup_mark_seconds)
    report = PassReport()
    report.leases_released = ledger.release_expired_leases(settings.max_attempts)
    settled = ledger.settle_unsettled()
    report.jobs_settled = len(settled)
    notices_for(settings.redis_url).publish_ended(settled, settled)  # committed: streams and batches re-read them
    remove_orphaned_outputs(storage, settled)
    for model in ledger.models_with_claimable_work():
        if queued_wakeups(celery, model) == 0 and wakeups.send(model, force=True):
            report.wakeups_sent += 1
    watch.repaired({"lease_released": report.leases_released, "job_settled": report.jobs_settled,
                    "wakeup_sent": report.wakeups_sent})
    return report


def queued_wakeups(celery, model: str) -> int:
    """Messages waiting in the model's queue (-1 when Redis cannot be asked)."""
    try:
        with celery.connection_for_write() as connection:
            return connection.default_channel.client.llen(queue_name(model))
    except Exception as exc:
        log.warning("cannot read queue of %s: %s", model, exc)
        return -1


def run_forever(settings, interval: float) -> None:
    celery, storage, ledger = make_celery(settings), storage_from_settings(settings), Ledger(settings.database_url)
    wakeups = Wakeups(celery, settings.redis_url, settings.wakeup_mark_seconds)
    watch.install(watch.Watch.from_settings(settings))  # lease expiries and repairs, counted for /metrics
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    log.info("reconciler started: a pass every %.1fs", interval)
    deliveries = start_deliverer(settings)  # the webhook outbox, in a thread of this process
    batches = start_batch_finalizer(settings, storage)  # OpenAI batches' files, in a thread of this process
    retention = start_retention_sweeper(settings, storage)  # expired jobs and their outputs, in a thread
    while not stopping:
        try:
            report = reconcile_once(settings, celery, storage, ledger, wakeups)
            if report.leases_released or report.jobs_settled or report.wakeups_sent:
                log.info("reconciled: %s", report)
        except Exception:
            log.exception("reconcile pass failed; trying again next interval")
        deadline = time.monotonic() + interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
    deliveries.set()
    batches.set()
    retention.set()
