"""The runners report their progress inside the model (tokens, denoising steps) through
`shared.watch` into a real Redis, and clear it when the micro-batch ends."""
from __future__ import annotations

import pytest

from shared import watch
from shared.ledger import ClaimedItem
from shared.progress import ProgressBoard


class RecordingBoard(ProgressBoard):
    """The real board, which also keeps what it wrote (the test reads the sequence)."""

    def __init__(self, client):
        super().__init__(client, interval=0)
        self.written: list[dict] = []

    def write(self, fields, value):
        super().write(fields, value)
        self.written.append(value)
        assert {item.index for item in self.read("job")} == set(fields["job"])  # readable while it runs


@pytest.fixture
def board(settings, redis_server):
    redis_server.client().flushdb()
    installed = watch.Watch.from_settings(settings)
    installed.progress = RecordingBoard(installed.progress.redis)
    watch.install(installed)
    yield installed.progress
    watch.install(None)


def claimed(n: int) -> list[ClaimedItem]:
    return [ClaimedItem(index, f"prompt {index}", 7 + index, 100 + index, "job") for index in range(n)]


def test_text_reports_tokens_as_they_are_generated(text_runner, board):
    text_runner.predict(claimed(2), {"max_new_tokens": 6})
    tokens = [value["tokens"] for value in board.written]
    assert tokens[0] >= 0 and tokens == sorted(tokens) and 1 <= tokens[-1] <= 6
    assert board.read("job") == []


@pytest.mark.parametrize("name,params", [
    ("sd_runner", {"num_inference_steps": 4, "guidance_scale": 5.0, "width": 64, "height": 64}),
    ("uncond_runner", {"num_inference_steps": 4}),  # no step callback: the progress bar reports
])
def test_images_report_each_denoising_step(request, board, name, params):
    request.getfixturevalue(name).predict(claimed(2), params)
    assert board.written == [{"step": step, "steps": 4} for step in (1, 2, 3, 4)]
    assert board.read("job") == []


def test_items_outside_a_slice_report_nothing(text_runner, board):
    from worker.runners.base import ItemInput

    text_runner.predict([ItemInput(0, "p", 1)], {"max_new_tokens": 2})
    assert board.written == []
