"""Progress, throughput and counters in a real Redis, as workers write them and the web
reads them."""
from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import redis

from shared import watch
from shared.progress import ProgressBoard
from shared.tallies import LATENCY_BUCKETS, RequestTimings, Tallies
from shared.throughput import ThroughputLog, estimate


@dataclass
class Item:
    job_id: str
    index: int


@pytest.fixture
def client(redis_server):
    client = redis_server.client()
    client.flushdb()
    return client


def test_progress_is_throttled_and_cleared_when_the_batch_ends(client):
    board = ProgressBoard(client, interval=0.5)
    tracker = board.tracker([Item("j1", 0), Item("j1", 1), Item("j2", 0)])
    tracker(step=1, steps=10)
    tracker(step=2, steps=10)  # within the interval: not written
    assert [(p.index, p.step, p.steps) for p in board.read("j1")] == [(0, 1, 10), (1, 1, 10)]
    time.sleep(0.55)
    tracker(step=7, steps=10)
    assert board.read("j2")[0].step == 7 and board.read("j2")[0].updated_at > time.time() - 5
    assert 0 < client.ttl("genq:progress:j1") <= 120
    tracker.close()
    assert board.read("j1") == [] and board.read("j2") == []


def test_token_progress_and_items_without_a_job_are_not_tracked(client):
    board = ProgressBoard(client, interval=0)
    tracker = board.tracker([Item("j", 3)])
    tracker(tokens=12)
    assert [(p.index, p.tokens, p.step) for p in board.read("j")] == [(3, 12, None)]
    board.tracker([object()])(tokens=1)  # a runner called outside a slice: nothing written
    assert client.keys("genq:progress:*") == [b"genq:progress:j"]


def test_a_redis_that_is_down_costs_the_figure_not_the_work():
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    board = ProgressBoard(dead, interval=0)
    tracker = board.tracker([Item("j", 0)])
    tracker(step=1, steps=2)
    tracker.close()
    assert board.read("j") == []
    assert estimate(ThroughputLog(dead), "m", 10) == (None, "unavailable")


def test_throughput_is_a_busy_workers_rate_times_live_workers(client):
    log = ThroughputLog(client, window=60, liveness=5)
    now = time.time()
    assert estimate(log, "m", 10, exact=True) == (None, "not_measured")
    for i in range(5):
        log.record("m", "w1", 4, 2.0, now=now - 10 + 2 * i)  # 2 items/s, last sample 2 s ago
        log.record("m", "w2", 4, 2.0, now=now - 20 + 2 * i)  # last sample 12 s ago: gone
    measured = log.measure("m", now=now)
    assert measured.rate_per_worker == pytest.approx(2.0) and measured.workers == 1 and measured.samples == 10
    assert log.measure("m", now=now + 100).samples == 0  # out of the window
    seconds, reason = estimate(log, "m", 30)
    assert reason is None and seconds == pytest.approx(15.0, rel=0.05)
    assert estimate(log, "m", 30, exact=False)[1] == "lower_bound"
    both = log.measure_all(["m", "other"], now=now)  # one round trip for every model of a scrape
    assert both["m"] == measured and both["other"].samples == 0 and both["other"].rate_per_worker is None


def test_a_worker_gone_quiet_leaves_no_live_worker(client):
    log = ThroughputLog(client, window=300, liveness=5)
    log.record("m", "w1", 4, 1.0, now=time.time() - 60)
    assert estimate(log, "m", 10) == (None, "no_live_worker")


def test_tallies_count_across_processes_and_read_back_as_histograms(client):
    Tallies(client).job_submitted("m", 3)
    Tallies(client).job_submitted("m", 2)  # another process: the same hashes
    Tallies(client).items_finished("m", {"succeeded": 4, "failed": 1})
    timings = RequestTimings(Tallies(client), interval=3600)
    for seconds in (0.001, 0.02, 100.0):
        timings.served("GET", "/v1/jobs/<job_id>", 200, seconds)
    assert "http_request_duration_seconds" not in Tallies(client).read().histograms or \
        not Tallies(client).read().histograms["http_request_duration_seconds"]  # kept in the process until due
    timings.flush()
    counts = Tallies(client).read()
    assert counts.counters["jobs_submitted"] == {("m",): 2}
    assert counts.counters["items_submitted"] == {("m",): 5}
    assert counts.counters["items_finished"] == {("m", "succeeded"): 4, ("m", "failed"): 1}
    assert dict(counts.histograms["micro_batch_items"][("m",)].cumulative())["4.0"] == 0
    assert dict(counts.histograms["micro_batch_items"][("m",)].cumulative())["8.0"] == 1
    histogram = counts.histograms["http_request_duration_seconds"][("GET", "/v1/jobs/<job_id>", "200")]
    cumulative = dict(histogram.cumulative())
    assert cumulative["0.005"] == 1 and cumulative["0.025"] == 2 and cumulative["+Inf"] == 3
    assert len(cumulative) == len(LATENCY_BUCKETS) + 1 and histogram.sum == pytest.approx(100.021)


def test_the_slice_hooks_record_busy_time_and_counts(client, settings):
    installed = watch.Watch.from_settings(settings)
    watch.install(installed)
    try:
        watch._busy_since.clear()  # a commit of an earlier test in this process would count as just before
        started = time.time()
        watch.slice_started()
        time.sleep(0.2)
        watch.committed("m", 3, 1)
        elapsed = time.time() - started
        measured = installed.throughput.measure("m")
        assert measured.samples == 1 and measured.workers == 1
        assert 4 / elapsed <= measured.rate_per_worker <= 4 / 0.2  # busy from the slice's start to the commit
        assert installed.tallies.read().counters["items_finished"] == {("m", "succeeded"): 3, ("m", "failed"): 1}
        with watch.watching([Item("j", 0)]) as tracker:
            tracker(tokens=5)
            assert installed.progress.read("j")[0].tokens == 5
        assert installed.progress.read("j") == []
    finally:
        watch.install(None)
    with watch.watching([Item("j", 0)]) as tracker:  # none installed: a tracker that reports to nobody
        tracker(tokens=5)
    assert installed.progress.read("j") == []
