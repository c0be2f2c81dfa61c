"""The model cache budgets memory, not a count of models, and makes room when a load
runs out of memory instead of failing (fault runners with real tensors as weights)."""
from __future__ import annotations

import gc

import pytest

from shared.registry import ModelSpec
from tests.fault_runner import FaultRunner
from worker.cache import ModelCache
from worker.device import DeviceBroken
from worker.memory import OutOfMemory, estimate_weight_bytes, weight_bytes

MB = 2**20


def fault(name: str, **options) -> ModelSpec:
    return ModelSpec(name=name, task="text-generation", source=".", runner="tests.fault_runner:FaultRunner",
                     options=options)


@pytest.fixture(autouse=True)
def no_runner_left():
    gc.collect()
    yield
    gc.collect()


def test_the_cpu_budget_counts_bytes_and_unloads_the_least_recently_used():
    cache = ModelCache("cpu", capacity=10, budget_bytes=20 * MB)
    a, b, c = fault("a", weights_mb=8), fault("b", weights_mb=8), fault("c", weights_mb=8)
    cache.get(a), cache.get(b)
    assert cache.loaded() == ["a", "b"] and cache.sizes == {"a": 8 * MB, "b": 8 * MB}
    cache.get(a)  # a is now the most recently used
    cache.get(c)  # 24 MB > 20 MB: b goes
    assert cache.loaded() == ["a", "c"]
    cache.get(fault("small", weights_mb=1))  # 17 MB: fits beside both
    assert cache.loaded() == ["a", "c", "small"]


def test_without_a_byte_budget_the_count_still_caps():
    cache = ModelCache("cpu", capacity=2)
    for name in ("a", "b", "c"):
        cache.get(fault(name, weights_mb=1))
    assert cache.loaded() == ["b", "c"]


def test_out_of_memory_while_loading_unloads_a_model_and_tries_again():
    cache = ModelCache("cpu", capacity=4)
    cache.get(fault("a", weights_mb=1))
    cache.get(fault("b", weights_mb=1))
    runner = cache.get(fault("needs-room", load_oom_beside=True))
    assert runner.spec.name == "needs-room" and cache.loaded() == ["needs-room"]
    assert cache.loads == {"a": 1, "b": 1, "needs-room": 1}
    gc.collect()
    assert [r.spec.name for r in FaultRunner.loaded] == ["needs-room"]  # the others are really gone


def test_a_model_that_does_not_fit_alone_fails_with_out_of_memory():
    cache = ModelCache("cpu")
    outside = FaultRunner(fault("outside"))  # loaded outside this cache, which cannot unload it
    outside.setup()
    with pytest.raises(OutOfMemory, match="out_of_memory: model lonely does not fit on cpu alone"):
        cache.get(fault("lonely", load_oom_beside=True))
    assert cache.loaded() == [] and outside.weights is not None


def test_a_sticky_cuda_error_while_loading_means_the_process_must_go():
    with pytest.raises(DeviceBroken, match="ECC"):
        ModelCache("cpu").get(fault("ecc", load_cuda_error=True))


def test_weight_bytes_and_the_estimate_from_files(tmp_path):
    import torch

    class Holder:
        def __init__(self):
            self.model = torch.nn.Linear(256, 256)  # 65792 floats
            self.alias = self.model.weight  # counted once
            self.tokenizer = object()

    assert weight_bytes(Holder()) == (256 * 256 + 256) * 4
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 400)
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x" * 200)
    (tmp_path / "config.json").write_bytes(b"{}" * 50)
    assert estimate_weight_bytes(tmp_path) == 400
    assert estimate_weight_bytes(tmp_path, "fp16") == 200
    assert estimate_weight_bytes(None) == 0
