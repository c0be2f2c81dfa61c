"""web.queries: what a status poll reads besides the ledger."""
from __future__ import annotations

import time

import pytest

from shared.throughput import ThroughputLog
from web.queries import FreshThroughput


@pytest.fixture
def log(redis_server):
    client = redis_server.client()
    client.flushdb()
    return ThroughputLog(client, window=300, liveness=30)


class CountingLog:
    """A ThroughputLog that counts its full reads."""

    def __init__(self, log: ThroughputLog):
        self.redis, self._log, self.reads = log.redis, log, 0

    def measure(self, model):
        self.reads += 1
        return self._log.measure(model)


def test_a_measured_throughput_is_kept_for_max_age_while_samples_arrive(log):
    counting = CountingLog(log)
    fresh = FreshThroughput(counting, max_age=60)
    log.record("m", "w1", 4, 2.0)
    first = fresh.measure("m")
    assert first.rate_per_worker == pytest.approx(2.0)
    log.record("m", "w1", 4, 1.0)  # a commit of the model: not a reason to read thousands of samples again
    assert fresh.measure("m") == first and counting.reads == 1


def test_before_anything_is_measured_the_first_sample_is_seen_at_once(log):
    counting = CountingLog(log)
    fresh = FreshThroughput(counting, max_age=60)
    assert fresh.measure("m").rate_per_worker is None
    assert fresh.measure("m").rate_per_worker is None and counting.reads == 1  # the log did not change: kept
    log.record("m", "w1", 4, 1.0)
    assert fresh.measure("m").rate_per_worker == pytest.approx(4.0) and counting.reads == 2


def test_a_kept_throughput_is_read_again_after_max_age(log):
    counting = CountingLog(log)
    fresh = FreshThroughput(counting, max_age=0.05)
    log.record("m", "w1", 4, 2.0)
    fresh.measure("m")
    time.sleep(0.1)
    fresh.measure("m")
    assert counting.reads == 2


def test_a_model_without_samples_is_not_measured(log):
    assert FreshThroughput(log).measure("nothing").rate_per_worker is None
