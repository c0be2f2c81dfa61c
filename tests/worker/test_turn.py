"""worker.turn: how long a wake-up keeps its worker on one model, on a clock the test moves."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from shared.settings import Settings
from worker import turn as turn_module
from worker.turn import Turn


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class QueuedWakeups:
    def __init__(self, waiting: list[str]):
        self.waiting, self.asked = waiting, []

    def queued(self, models: list[str]) -> list[str]:
        self.asked.append(list(models))
        return [model for model in models if model in self.waiting]


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(turn_module.time, "monotonic", clock)
    return clock


def context(tmp_path, waiting: list[str], busy: float = 1.0, models=("a", "b")):
    settings = Settings(data_dir=tmp_path / "var", wakeup_busy_seconds=busy, slice_max_seconds=60)
    return SimpleNamespace(settings=settings, wakeups=QueuedWakeups(waiting), models=models, registry=None)


def test_within_the_budget_the_turn_lasts_without_asking_redis(tmp_path, clock):
    ctx = context(tmp_path, waiting=["b"])
    turn = Turn(ctx, "a")
    clock.now += 0.9
    assert turn.lasts() and ctx.wakeups.asked == []


def test_past_the_budget_the_turn_ends_when_another_model_of_the_worker_waits(tmp_path, clock):
    ctx = context(tmp_path, waiting=["b"])
    turn = Turn(ctx, "a")
    clock.now += 1.1
    assert not turn.lasts()
    assert ctx.wakeups.asked == [["b"]]  # its own queue (the wake-ups its claims sent) is not asked


def test_while_no_other_model_waits_the_turn_goes_on_until_the_slice_time_limit(tmp_path, clock):
    ctx = context(tmp_path, waiting=["a"])
    turn = Turn(ctx, "a")
    for _ in range(118):
        clock.now += 0.5
        assert turn.lasts()
    assert len(ctx.wakeups.asked) == 59  # asked once a budget of 1 s, not at every slice
    clock.now += 1.0
    assert not turn.lasts()  # no slice starts later than GENQ_SLICE_MAX_SECONDS after the wake-up


def test_a_model_alone_on_its_worker_goes_on_and_a_budget_of_zero_is_one_slice(tmp_path, clock):
    alone = Turn(context(tmp_path, waiting=["a"], models=("a",)), "a")
    clock.now += 5
    assert alone.lasts()
    zero = Turn(context(tmp_path, waiting=[], busy=0), "a")
    assert not zero.lasts()
