"""The worker core in process: a wake-up driven through claim, micro-batches, commit and
settle with the fault runner, a real SQLite ledger and a recording stand-in for the one
publish call (the integration tests keep the real broker). A failure here points at a
function, not at a worker's log line."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import yaml
from sqlalchemy.exc import OperationalError

from shared import ledger
from shared.db import session_scope
from shared.ledger import Ledger
from shared.notices import CHANNEL, SETTLED_CHANNEL
from shared.orm import ItemState, Job, JobItem, JobState
from shared.registry import Registry, load_registry
from shared.settings import Settings
from shared.storage import storage_from_settings
from tests.helpers.database import create_schema, reset_schema
from worker.cache import ModelCache
from worker.context import WorkerContext
from worker.device import DeviceBroken
from worker.slices import handle_wakeup


class RecordingWakeups:
    """Stands in for `shared.queue.Wakeups`, the worker core's only way to the broker."""

    def __init__(self):
        self.sent: list[str] = []
        self.taken_by_worker: list[str] = []
        self.alongside: list[tuple] = []  # commands queued on a wake-up's round trip (`also`)
        self.waiting: list[str] = []  # models with a wake-up queued (`queued`)

    def send(self, model: str, *, force: bool = False, also=None) -> bool:
        self.sent.append(model)
        if also is not None:
            also(RecordingPipe(self.alongside))
        return True

    def taken(self, model: str) -> None:
        self.taken_by_worker.append(model)

    def queued(self, models: list[str]) -> list[str]:
        return [model for model in models if model in self.waiting]


class RecordingPipe:
    """Stands in for a Redis pipeline: records each command queued on it."""

    def __init__(self, commands: list[tuple]):
        self._commands = commands

    def __getattr__(self, name):
        return lambda *args, **kwargs: self._commands.append((name, *args))


@pytest.fixture
def ctx(tmp_path):
    url = f"sqlite:///{tmp_path / 'genq.db'}"
    reset_schema(url)
    create_schema(url)
    registry_file = tmp_path / "models.yaml"
    registry_file.write_text(yaml.safe_dump({"models": {"fault": {
        "task": "text-generation", "source": str(tmp_path), "runner": "tests.fault_runner:FaultRunner",
        "micro_batch_size": 4, "options": {"slow_seconds": 0.05, "oom_above": 2}}}}))
    settings = Settings(data_dir=tmp_path / "var", database_url=url, models_file=registry_file, slice_max_items=8,
                        cancel_check_seconds=0.01, wakeup_busy_seconds=0)  # one slice per wake-up, unless a test says
    return WorkerContext(settings=settings, registry=load_registry(registry_file), storage=storage_from_settings(settings),
                         celery=None, wakeups=RecordingWakeups(), cache=ModelCache("cpu"), ledger=Ledger(url),
                         name="test-worker")


def submit(ctx, prompts: list[str]) -> str:
    with session_scope(ctx.settings.database_url) as session:
        job = ledger.create_job(session, model="fault", task="text-generation", params={},
                                   inputs=[(prompt, i) for i, prompt in enumerate(prompts)])
        return job.id


def test_a_wake_up_keeps_claiming_while_work_waits_within_its_time_budget(ctx):
    ctx.settings.wakeup_busy_seconds = 60
    job_id = submit(ctx, [f"ok {i}" for i in range(20)])
    last = handle_wakeup(ctx, "fault")
    assert (last.claimed, last.succeeded) == (4, 4)  # slices of 8, 8 and 4, all in one wake-up
    assert ctx.wakeups.sent == ["fault", "fault"]  # each claim that left work behind woke another worker
    # ... and said that the claim's job runs on that wake-up's round trip to Redis
    assert ctx.wakeups.alongside == [("publish", CHANNEL, job_id)] * 2
    job, items = job_and_items(ctx, job_id)
    assert job.state == JobState.SUCCEEDED and all(item.attempts == 1 for item in items)


def test_past_its_budget_a_wake_up_goes_on_while_no_other_model_of_the_worker_waits(ctx):
    ctx.settings.wakeup_busy_seconds = 0.1  # a slice of 8 slow items takes 0.4 s
    ctx.models = ("fault", "other")
    job_id = submit(ctx, [f"slow {i}" for i in range(24)])
    last = handle_wakeup(ctx, "fault")
    assert (last.claimed, last.succeeded) == (8, 8)
    assert job_and_items(ctx, job_id)[0].state == JobState.SUCCEEDED  # three slices in one wake-up


def test_past_its_budget_a_wake_up_ends_when_another_model_of_the_worker_waits(ctx):
    ctx.settings.wakeup_busy_seconds = 0.1
    ctx.models = ("fault", "other")
    ctx.wakeups.waiting = ["other"]
    job_id = submit(ctx, [f"slow {i}" for i in range(24)])
    handle_wakeup(ctx, "fault")
    _, items = job_and_items(ctx, job_id)
    assert sum(item.state == ItemState.SUCCEEDED for item in items) == 8  # one slice; the other model's turn next


def job_and_items(ctx, job_id: str) -> tuple[Job, list[JobItem]]:
    with session_scope(ctx.settings.database_url) as session:
        job = session.get(Job, job_id)
        items = session.query(JobItem).filter_by(job_id=job_id).order_by(JobItem.index).all()
        session.expunge_all()
        return job, items


def test_a_wake_up_claims_a_slice_runs_it_in_micro_batches_and_settles_the_job(ctx):
    job_id = submit(ctx, [f"ok {i}" for i in range(10)])
    first = handle_wakeup(ctx, "fault")
    assert (first.claimed, first.succeeded, first.failed, first.lost) == (8, 8, 0, 0)
    assert ctx.wakeups.sent == ["fault"]  # two items left: wake another worker
    second = handle_wakeup(ctx, "fault")
    assert (second.claimed, second.succeeded) == (2, 2)
    job, items = job_and_items(ctx, job_id)
    assert job.state == JobState.SUCCEEDED
    assert [item.output_text for item in items] == [f"ok:ok {i}:{i}" for i in range(10)]
    assert all(item.lease_id is None for item in items)
    assert handle_wakeup(ctx, "fault") is None  # a duplicate wake-up finds nothing
    assert len(ctx.wakeups.sent) == 1 and ctx.wakeups.taken_by_worker == ["fault"] * 3


def test_the_model_runs_the_next_micro_batch_while_the_last_ones_results_are_committed(ctx, tmp_path):
    """A commit held up (SQLite's write lock taken from outside for half a second) does
    not hold the model up: the next micro-batch starts before that commit can land, and
    every result lands."""
    job_id = submit(ctx, [f"ok {i}" for i in range(8)])  # two micro-batches of 4
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original, started, released = runner.predict, [], []
    other_writer = sqlite3.connect(tmp_path / "genq.db", isolation_level=None, check_same_thread=False)

    def release() -> None:
        released.append(time.monotonic())
        other_writer.execute("COMMIT")

    def predict(inputs, params, should_stop=None):
        started.append(time.monotonic())
        if len(started) == 1:  # the first micro-batch's commit will wait for the other writer
            other_writer.execute("BEGIN IMMEDIATE")
            threading.Timer(0.5, release).start()
        return original(inputs, params, should_stop)

    runner.predict = predict
    report = handle_wakeup(ctx, "fault")
    assert len(started) == 2 and started[1] < released[0]
    assert (report.claimed, report.succeeded, report.lost) == (8, 8, 0)
    job, items = job_and_items(ctx, job_id)
    assert job.state == JobState.SUCCEEDED and [item.output_text for item in items] == [f"ok:ok {i}:{i}" for i in range(8)]


def running_items(ctx, job_id: str) -> list[int]:
    return [item.index for item in job_and_items(ctx, job_id)[1] if item.state == ItemState.RUNNING]


def wait_for_the_next_slice(ctx, job_id: str, indices: list[int]) -> bool:
    """Whether the items `indices` were claimed within 5 s (in the predict of a slice's
    last micro-batch: they are the next slice's, claimed meanwhile)."""
    deadline = time.monotonic() + 5
    while not set(indices) <= set(running_items(ctx, job_id)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_next_slice_is_claimed_while_the_model_runs_the_last_micro_batch(ctx):
    ctx.settings.wakeup_busy_seconds = 60
    job_id = submit(ctx, [f"ok {i}" for i in range(16)])  # two slices of 8, micro-batches of 4
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original, claimed_meanwhile = runner.predict, []

    def predict(inputs, params, should_stop=None):
        if inputs[0].index == 4:  # the first slice's last micro-batch
            claimed_meanwhile.append(wait_for_the_next_slice(ctx, job_id, list(range(8, 16))))
        return original(inputs, params, should_stop)

    runner.predict = predict
    report = handle_wakeup(ctx, "fault")
    assert claimed_meanwhile == [True] and (report.claimed, report.succeeded) == (8, 8)
    job, items = job_and_items(ctx, job_id)
    assert job.state == JobState.SUCCEEDED and all(item.attempts == 1 for item in items)


def test_a_slice_that_breaks_off_gives_the_next_slice_back_unrun(ctx):
    ctx.settings.wakeup_busy_seconds = 60
    job_id = submit(ctx, [f"ok {i}" for i in range(7)] + ["cuda-error 7"] + [f"ok {i}" for i in range(8, 16)])
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original, claimed_meanwhile = runner.predict, []

    def predict(inputs, params, should_stop=None):
        if inputs[0].index == 4:  # the last micro-batch, which breaks the device
            claimed_meanwhile.append(wait_for_the_next_slice(ctx, job_id, list(range(8, 16))))
        return original(inputs, params, should_stop)

    runner.predict = predict
    with pytest.raises(DeviceBroken):
        handle_wakeup(ctx, "fault")
    assert claimed_meanwhile == [True]
    _job, items = job_and_items(ctx, job_id)
    assert [item.state for item in items] == [ItemState.SUCCEEDED] * 4 + [ItemState.PENDING] * 12
    assert [item.attempts for item in items[4:]] == [1] * 4 + [0] * 8  # the next slice's spent none
    assert all(item.lease_id is None for item in items)
    assert ctx.heartbeat._leases == set()  # no lease of it kept alive


def test_a_slice_whose_end_fails_is_abandoned_alone_while_the_next_slice_runs(ctx, monkeypatch):
    """The last micro-batch's commit and the slice's end run in the committer's thread
    (end_slice): when they fail, that slice alone is abandoned there, and the next slice,
    already on the model, completes."""
    ctx.settings.wakeup_busy_seconds = 60
    job_id = submit(ctx, [f"ok {i}" for i in range(16)])  # two slices of 8, micro-batches of 4
    record_results, failed = ctx.ledger.record_results, []

    def database_gone_at_the_first_slices_end(lease_id, rows, last_of=None):
        if last_of is not None and not failed or failed == [lease_id]:
            failed[:] = [lease_id]
            raise OperationalError("UPDATE job_items", {}, Exception("server closed the connection"))
        return record_results(lease_id, rows, last_of=last_of)

    monkeypatch.setattr(ctx.ledger, "record_results", database_gone_at_the_first_slices_end)
    monkeypatch.setattr("worker.slices.time.sleep", lambda seconds: None)  # the commit's retries
    last = handle_wakeup(ctx, "fault")
    assert (last.claimed, last.succeeded) == (8, 8)  # the second slice
    _job, items = job_and_items(ctx, job_id)
    assert [item.state for item in items] == [ItemState.SUCCEEDED] * 4 + [ItemState.PENDING] * 4 + [ItemState.SUCCEEDED] * 8
    assert [item.attempts for item in items[4:8]] == [1] * 4  # abandoned: the attempt spent
    assert ctx.wakeups.sent[-1] == "fault"  # its items given back: another wake-up
    assert all(item.lease_id is None for item in items) and ctx.heartbeat._leases == set()


def test_a_suspect_slice_runs_once_the_slice_before_it_has_ended(ctx, monkeypatch):
    """A slice ends in the committer's thread while the model runs the next, but for a
    suspect slice (an item that was in a slice that died): it may kill the process, and
    with it the end of the slice before, whose items would each lose an attempt."""
    ctx.settings.wakeup_busy_seconds = 60
    first = submit(ctx, [f"ok {i}" for i in range(8)])
    suspect = submit(ctx, ["ok suspect"])
    with session_scope(ctx.settings.database_url) as session:
        session.query(JobItem).filter_by(job_id=suspect).update({"attempts": 1})  # it was in a slice that died
    record_results = ctx.ledger.record_results

    def slow_end(lease_id, rows, last_of=None):
        if last_of is not None:
            time.sleep(0.3)
        return record_results(lease_id, rows, last_of=last_of)

    monkeypatch.setattr(ctx.ledger, "record_results", slow_end)
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original, first_job_when_suspect_ran = runner.predict, []

    def predict(inputs, params, should_stop=None):
        if inputs[0].prompt == "ok suspect":
            first_job_when_suspect_ran.append(job_and_items(ctx, first)[0].state)
        return original(inputs, params, should_stop)

    runner.predict = predict
    handle_wakeup(ctx, "fault")
    assert first_job_when_suspect_ran == [JobState.SUCCEEDED]
    assert job_and_items(ctx, suspect)[0].state == JobState.SUCCEEDED


def test_the_slice_that_settles_a_job_names_it_as_settled(ctx, redis_server):
    ctx.settings = ctx.settings.model_copy(update={"redis_url": redis_server.url})
    pubsub = redis_server.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(SETTLED_CHANNEL)
    job_id = submit(ctx, [f"ok {i}" for i in range(10)])
    handle_wakeup(ctx, "fault")  # 8 of 10 items: the job stays open
    assert pubsub.get_message(timeout=0.5) is None
    handle_wakeup(ctx, "fault")
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["data"].decode() == job_id
    pubsub.close()


def test_an_item_that_raises_fails_alone(ctx):
    job_id = submit(ctx, ["ok a", "raise", "ok b"])
    report = handle_wakeup(ctx, "fault")
    assert (report.succeeded, report.failed) == (2, 1)
    job, items = job_and_items(ctx, job_id)
    assert [item.state for item in items] == [ItemState.SUCCEEDED, ItemState.FAILED, ItemState.SUCCEEDED]
    assert items[1].error.startswith("RuntimeError: injected failure on item 1")
    assert job.state == JobState.FAILED


def test_out_of_memory_halves_the_micro_batch_and_every_item_completes(ctx):
    job_id = submit(ctx, [f"oom {i}" for i in range(8)])
    report = handle_wakeup(ctx, "fault")
    spec = ctx.registry.get("fault")
    assert report.succeeded == 8 and ctx.batch_sizes.size(spec, {}) == 2 and spec.micro_batch_size == 4
    assert job_and_items(ctx, job_id)[0].state == JobState.SUCCEEDED


def test_a_cancel_stops_the_slice_and_keeps_what_finished(ctx):
    job_id = submit(ctx, [f"slow {i}" for i in range(8)])
    calls = {"n": 0}
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original = runner.predict

    def predict_then_cancel(inputs, params, should_stop=None):
        outputs = original(inputs, params, should_stop)
        calls["n"] += 1
        with session_scope(ctx.settings.database_url) as session:  # what POST /cancel does, mid-slice
            ledger.cancel_job(session, session.get(Job, job_id))
        return outputs

    runner.predict = predict_then_cancel
    report = handle_wakeup(ctx, "fault")
    assert report.stopped == "cancelled" and report.succeeded == 4 and calls["n"] == 1
    job, items = job_and_items(ctx, job_id)
    assert job.state == JobState.CANCELLED
    assert [item.state for item in items] == [ItemState.SUCCEEDED] * 4 + [ItemState.CANCELLED] * 4


def test_a_slice_whose_lease_was_taken_writes_nothing(ctx):
    job_id = submit(ctx, ["ok 0", "ok 1"])
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original = runner.predict

    def predict_after_losing_the_lease(inputs, params, should_stop=None):
        with session_scope(ctx.settings.database_url) as session:  # the reconciler, after an expiry
            session.query(JobItem).filter_by(job_id=job_id).update({"lease_id": "someone-else"})
        return original(inputs, params, should_stop)

    runner.predict = predict_after_losing_the_lease
    report = handle_wakeup(ctx, "fault")
    assert (report.succeeded, report.lost) == (0, 2)
    assert all(item.output_text is None for item in job_and_items(ctx, job_id)[1])


def test_one_item_jobs_share_a_slice_and_a_micro_batch(ctx):
    job_ids = [submit(ctx, [f"ok {n}"]) for n in range(6)]
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original, batches = runner.predict, []

    def recording_predict(inputs, params, should_stop=None):
        batches.append([item.job_id for item in inputs])
        return original(inputs, params, should_stop)

    runner.predict = recording_predict
    report = handle_wakeup(ctx, "fault")
    assert report.job_ids == job_ids and report.succeeded == 6
    assert batches == [job_ids[:4], job_ids[4:]]  # micro_batch_size 4
    for job_id in job_ids:
        job, items = job_and_items(ctx, job_id)
        assert job.state == JobState.SUCCEEDED and items[0].output_text == f"ok:ok {job_ids.index(job_id)}:0"


def test_a_micro_batch_larger_than_a_slice_is_claimed_whole(ctx):
    """GENQ_SLICE_MAX_ITEMS (8 here) does not cut the micro-batch the registry asks for
    (12): a claim takes one whole micro-batch, and the model runs it in one call."""
    spec = ctx.registry.get("fault").model_copy(update={"micro_batch_size": 12})
    ctx.registry = Registry({"fault": spec})
    job_id = submit(ctx, [f"ok {i}" for i in range(20)])
    runner = ctx.cache.get(spec)
    original, batches = runner.predict, []

    def recording_predict(inputs, params, should_stop=None):
        batches.append(len(inputs))
        return original(inputs, params, should_stop)

    runner.predict = recording_predict
    assert (handle_wakeup(ctx, "fault").succeeded, batches) == (12, [12])
    assert (handle_wakeup(ctx, "fault").succeeded, batches) == (8, [12, 8])
    assert job_and_items(ctx, job_id)[0].state == JobState.SUCCEEDED


def test_a_cancel_drops_only_that_jobs_items_from_a_shared_slice(ctx):
    kept, cancelled = submit(ctx, [f"slow k{i}" for i in range(2)]), submit(ctx, [f"slow c{i}" for i in range(6)])
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original = runner.predict

    def predict_then_cancel(inputs, params, should_stop=None):
        outputs = original(inputs, params, should_stop)
        with session_scope(ctx.settings.database_url) as session:
            if session.get(Job, cancelled).state == JobState.RUNNING:
                ledger.cancel_job(session, session.get(Job, cancelled))
        return outputs

    runner.predict = predict_then_cancel
    report = handle_wakeup(ctx, "fault")
    assert report.job_ids == [kept, cancelled] and report.succeeded == 4 and report.stopped == "cancelled"
    assert job_and_items(ctx, kept)[0].state == JobState.SUCCEEDED
    job, items = job_and_items(ctx, cancelled)
    assert job.state == JobState.CANCELLED
    assert [item.state for item in items] == [ItemState.SUCCEEDED] * 2 + [ItemState.CANCELLED] * 4
