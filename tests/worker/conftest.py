"""Runner fixtures: the tiny models of `tests.tiny_models`, loaded once per session.

The models themselves come from the suite-wide `tiny_model_dirs` / `models_file`
fixtures (tests/conftest.py), so a full test run builds them only once.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from shared.registry import load_registry


@pytest.fixture(scope="session")
def tiny_registry(models_file):
    return load_registry(models_file)


def ready_runner(spec):
    import torch

    from worker.runners import build_runner

    # One intra-op thread: on a 2-core machine shared with other test processes,
    # torch's default of one thread per core made these tests 5-10x slower.
    torch.set_num_threads(1)

    runner = build_runner(spec, "cpu")
    runner.setup()
    return runner


@pytest.fixture(scope="session")
def text_runner(tiny_registry):
    return ready_runner(tiny_registry.get("tiny-text"))


@pytest.fixture(scope="session")
def sd_runner(tiny_registry):
    return ready_runner(tiny_registry.get("tiny-sd"))


@pytest.fixture(scope="session")
def uncond_runner(tiny_registry):
    return ready_runner(tiny_registry.get("tiny-uncond"))


# Item alone vs. in a batch: batched convolutions give tiny float differences between batch
# sizes, and rounding to 8 bits turns a few of them into a difference of 1 (in 255).
PIXEL_TOLERANCE = 1


def png_pixels(data: bytes) -> np.ndarray:
    """Decode PNG bytes to an int array (height, width, channels); fails if not a PNG."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(np.int16)


class StopAfter:
    """A `should_stop` that says yes from its `n`-th call on, counting its calls."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n
