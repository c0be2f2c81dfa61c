"""The model cache budgets memory, not a count of models, and makes room when a load
runs out of memory instead of failing (fault runners with real tensors as weights)."""
from __future__ import annotations

import gc
from pathlib import Path

import pytest

from shared.errors import ModelUnavailable
from shared.registry import ModelSpec
from tests.fault_runner import FaultRunner
from tests.helpers.hub_cache import save_to_hub_cache, use_hub_cache, write_files
from worker.cache import ModelCache
from worker.device import DeviceBroken
from worker.memory import OutOfMemory, estimate_weight_bytes, weight_bytes

MB = 2**20


NO_WEIGHTS = Path(__file__).parent  # a fault runner's directory: none of its files is a weight file


def fault(name: str, **options) -> ModelSpec:
    """A fault runner with real tensors of `weights_mb` as weights. Its source is a
    directory without weight files, so that what a load is estimated to need is 0 (".",
    the checkout, holds the demo models' weights after `make run`)."""
    return ModelSpec(name=name, task="text-generation", source=str(NO_WEIGHTS), runner="tests.fault_runner:FaultRunner",
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


def hub_fault(name: str, repo_id: str, **options) -> ModelSpec:
    return ModelSpec(name=name, task="text-generation", source=repo_id, runner="tests.fault_runner:FaultRunner",
                     options=options)


def test_a_hub_cache_model_is_budgeted_by_the_bytes_of_its_snapshot(tmp_path, monkeypatch):
    """The estimate measures the files the snapshot's links point to (it used to be 0 for
    a Hub id, so the cache loaded beside a model it had no room for)."""
    cache_dir = use_hub_cache(monkeypatch, tmp_path / "hub")
    source = write_files(tmp_path / "big", {"config.json": {}, "model.safetensors": 16 * MB,
                                            "pytorch_model.bin": 16 * MB})  # both formats: one is read
    snapshot = save_to_hub_cache(source, "org/big", cache_dir)
    assert (snapshot / "model.safetensors").is_symlink()
    assert estimate_weight_bytes(snapshot) == 16 * MB
    cache = ModelCache("cpu", capacity=10, budget_bytes=20 * MB)
    cache.get(fault("a", weights_mb=8))
    cache.get(hub_fault("big", "org/big", weights_mb=1))  # 8 + 16 > 20: a goes before the load
    assert cache.loaded() == ["big"]


def test_a_model_without_its_weights_here_fails_clearly_before_anything_is_unloaded(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    cache = ModelCache("cpu", capacity=1)
    cache.get(fault("a", weights_mb=1))
    with pytest.raises(ModelUnavailable, match=r"model gone cannot be loaded on this worker: its weights are not "
                       r"in this machine's Hugging Face cache .*models--org--gone\); on a machine with network "
                       r"access run `hf download org/gone`"):
        cache.get(hub_fault("gone", "org/gone"))
    assert cache.loaded() == ["a"] and cache.loads == {"a": 1}


@pytest.fixture
def thawed_after():
    yield
    gc.unfreeze()  # what the test froze is this test process's heap


def test_a_worker_freezes_what_it_loads_and_thaws_it_to_unload_it(thawed_after):
    """In a worker's pool process a loaded model is frozen out of full collections; an
    unloaded one must still be collectable, reference cycles and all."""
    import weakref

    cache = ModelCache("cpu", capacity=1)
    cache.freeze_loaded = True
    frozen_before = gc.get_freeze_count()
    runner = cache.get(fault("a", weights_mb=1))
    assert gc.get_freeze_count() > frozen_before
    runner.cycle = [runner]  # a cycle only the collector can free
    gone = weakref.ref(runner)
    del runner
    cache.get(fault("b", weights_mb=1))  # capacity 1: a is unloaded
    assert gone() is None
