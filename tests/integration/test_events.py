"""Live events over real HTTP, under the real stack (gunicorn's gthread worker, a Celery
worker, Redis pub/sub): read with an SSE client (sseclient-py), as a user would."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests
import sseclient

from genq.devstack import wait_for

pytestmark = pytest.mark.integration

STREAMS = 100
ITEMS = 24


class Reader(threading.Thread):
    """One SSE client in a thread: every event it got, until the stream ends or it has
    `stop_after` item events."""

    def __init__(self, stack, path: str, last_event_id: str | None = None, stop_after: int | None = None):
        super().__init__(daemon=True)
        self.stack, self.path, self.last_event_id, self.stop_after = stack, path, last_event_id, stop_after
        self.events: list = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.opened = threading.Event()

    def run(self):
        headers = self.stack.auth()
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        try:
            with requests.get(self.stack.base_url + self.path, headers=headers, stream=True, timeout=60) as response:
                self.status = response.status_code
                self.opened.set()
                if response.status_code != 200:
                    return
                for event in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
                    self.events.append(event)
                    if event.event in ("completed", "failed", "cancelled") and "/jobs/" in self.path:
                        return
                    if self.stop_after is not None and len(self.items()) >= self.stop_after:
                        return
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.opened.set()

    def items(self) -> list[dict]:
        return [json.loads(event.data) for event in self.events if event.event == "item"]

    def named(self, name: str) -> list:
        return [event for event in self.events if event.event == name]


def test_a_hundred_streams_each_see_every_item_once(make_stack):
    stack = make_stack(events_heartbeat_seconds=2)
    stack.start_reconciler()
    tenant = Reader(stack, "/v1/events")
    tenant.start()
    wait_for(tenant.opened.is_set, 30, what="the tenant stream")
    job_id = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(ITEMS)]})
    readers = [Reader(stack, f"/v1/jobs/{job_id}/events") for _ in range(STREAMS)]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(reader.opened.is_set() for reader in readers), 60, what="every stream to open")
    assert {reader.status for reader in readers} == {200}
    stack.start_worker()  # the job runs while every stream is open
    for reader in readers:
        reader.join(120)
    for reader in readers:
        assert reader.error is None and not reader.is_alive()
        indices = [item["index"] for item in reader.items()]
        assert sorted(indices) == list(range(ITEMS)), indices  # each item exactly once
        assert all(event.id for event in reader.events)  # an id on every event
        [final] = reader.named("completed")
        assert json.loads(final.data)["counts"]["succeeded"] == ITEMS
        assert final.id.endswith(f"{job_id}-end")
        assert reader.named("progress")
    progress = json.loads(readers[0].named("progress")[-1].data)
    assert progress["job_id"] == job_id and {"counts", "progress", "eta_seconds", "eta_reason"} <= set(progress)
    first = readers[0].items()[0]
    assert first["state"] == "succeeded" and first["output_url"] == f"/v1/jobs/{job_id}/items/{first['index']}/output"
    wait_for(lambda: tenant.named("completed"), 30, what="the tenant stream's end of the job")
    assert sorted(item["index"] for item in tenant.items() if item["job_id"] == job_id) == list(range(ITEMS))


def test_a_reconnect_with_last_event_id_gets_exactly_what_it_missed(make_stack):
    stack = make_stack(events_heartbeat_seconds=2)
    stack.start_worker()
    job_id = stack.submit({"model": "fault", "prompts": [f"slow {i}" for i in range(ITEMS)]})
    first = Reader(stack, f"/v1/jobs/{job_id}/events", stop_after=5)
    first.start()
    first.join(60)
    got = first.items()
    assert len(got) == 5 and first.error is None
    time.sleep(1.5)  # more items finish while the client is away
    second = Reader(stack, f"/v1/jobs/{job_id}/events", last_event_id=first.events[-1].id)
    second.start()
    second.join(120)
    missed = second.items()
    assert sorted(item["index"] for item in got + missed) == list(range(ITEMS))  # nothing twice, nothing lost
    [final] = second.named("completed")
    after_the_end = Reader(stack, f"/v1/jobs/{job_id}/events", last_event_id=final.id)
    after_the_end.start()
    after_the_end.join(30)
    assert after_the_end.status == 204  # an EventSource stops reconnecting
    replay = Reader(stack, f"/v1/jobs/{job_id}/events")
    replay.start()
    replay.join(30)
    assert [item["index"] for item in replay.items()] == [item["index"] for item in got + missed]


def test_an_idle_stream_sends_comments_and_a_bad_id_is_refused(make_stack):
    stack = make_stack(events_heartbeat_seconds=0.5)
    job_id = stack.submit({"model": "fault", "prompts": ["ok"]})  # no worker: it stays queued
    with requests.get(f"{stack.base_url}/v1/jobs/{job_id}/events", headers=stack.auth(), stream=True,
                      timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = []
        for line in response.iter_lines(chunk_size=None, decode_unicode=True):
            lines.append(line)
            if line.startswith(":"):
                break
    assert "event: progress" in lines and ": keep-alive" in lines
    bad = requests.get(f"{stack.base_url}/v1/jobs/{job_id}/events", timeout=30,
                       headers={**stack.auth(), "Last-Event-ID": "nonsense"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "Last-Event-ID"
    assert stack.get(f"/v1/jobs/{'0' * 32}/events").status_code == 404
    other = stack.new_key("someone-else")
    assert stack.get(f"/v1/jobs/{job_id}/events", key=other).status_code == 404


def test_a_cancel_ends_the_stream(make_stack):
    stack = make_stack(events_heartbeat_seconds=2)
    job_id = stack.submit({"model": "fault", "prompts": ["ok a", "ok b"]})
    reader = Reader(stack, f"/v1/jobs/{job_id}/events")
    reader.start()
    wait_for(lambda: reader.named("progress"), 30, what="the first progress event")
    assert stack.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    reader.join(30)
    [final] = reader.named("cancelled")
    assert json.loads(final.data)["counts"]["cancelled"] == 2
    assert sorted(item["index"] for item in reader.items()) == [0, 1]


def test_stopping_the_server_ends_its_streams_at_once(make_stack):
    stack = make_stack(events_heartbeat_seconds=30)
    job_id = stack.submit({"model": "fault", "prompts": ["ok"]})  # no worker: the stream would stay open
    reader = Reader(stack, f"/v1/jobs/{job_id}/events")
    reader.start()
    wait_for(lambda: reader.named("progress"), 30, what="the first event")
    started = time.monotonic()
    stack.processes["web"].stop(timeout=25)  # SIGTERM: gunicorn's graceful stop would wait 30 s for a stream
    reader.join(10)
    assert not reader.is_alive() and time.monotonic() - started < 10
