"""shared.queue.Wakeups against a real Redis: at most one waiting wake-up per model, and
what a caller adds riding on the mark's round trip."""
from __future__ import annotations

import pytest

from shared.queue import WAITING_MARK, Wakeups, make_celery, queue_name
from shared.settings import Settings


@pytest.fixture
def wakeups(redis_server, tmp_path):
    client = redis_server.client()
    client.flushdb()
    settings = Settings(data_dir=tmp_path / "var", redis_url=redis_server.url)
    return Wakeups(make_celery(settings), redis_server.url, mark_seconds=60)


def test_a_second_send_waits_on_the_first_and_what_rides_along_is_sent_each_time(wakeups, redis_server):
    client = redis_server.client()
    for _ in range(2):
        assert wakeups.send("m", also=lambda pipe: pipe.incr("riders"))
    assert client.llen(queue_name("m")) == 1  # one waiting wake-up
    assert client.get("riders") == b"2"
    wakeups.taken("m")
    assert not client.exists(WAITING_MARK.format(model="m"))
    assert wakeups.send("m", also=lambda pipe: pipe.incr("riders"))
    assert client.llen(queue_name("m")) == 2 and client.get("riders") == b"3"


def test_queued_names_the_models_with_a_wake_up_waiting_and_all_of_them_without_redis(wakeups, tmp_path):
    assert wakeups.queued(["m", "n"]) == []
    wakeups.send("n")
    assert wakeups.queued(["m", "n"]) == ["n"]
    unreachable = Wakeups(make_celery(Settings(data_dir=tmp_path / "var")), "redis://127.0.0.1:1/0", mark_seconds=60)
    assert unreachable.queued(["m", "n"]) == ["m", "n"]  # a caller deciding whether others wait assumes they do
