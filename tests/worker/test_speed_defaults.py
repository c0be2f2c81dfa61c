"""Speed defaults of a worker: dtype `auto`, TF32 on a GPU, torch threads shared by the
workers of a host, and a slice's text prompts ordered by length into micro-batches."""
from __future__ import annotations

import pytest
import torch

from shared.registry import ModelSpec
from tests.worker.test_slices import ctx, job_and_items, submit  # noqa: F401 (ctx: the worker core's fixture)
from worker.batches import in_batch_order
from worker.device import configure_torch, thread_share
from worker.launcher import Device, worker_commands
from worker.runners.base import ItemInput
from worker.runners.common import load_options, torch_dtype


def test_registry_dtype_defaults_to_auto_which_is_float32_on_the_cpu(tmp_path):
    spec = ModelSpec(name="m", task="text-generation", source=str(tmp_path))
    assert spec.dtype == "auto"
    assert load_options(spec, "cpu")["dtype"] is torch.float32
    assert torch_dtype("float16", "cuda") is torch.float16  # a named dtype is kept on any device


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_is_bfloat16_on_a_gpu_and_float16_where_it_has_none(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert torch_dtype("auto", "cuda") is expected
    assert torch_dtype("auto", "cuda:0") is expected
    assert torch_dtype("auto", "cpu") is torch.float32


@pytest.fixture
def saved_torch_settings():
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    threads = torch.get_num_threads()
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
    torch.set_num_threads(threads)


def test_configure_torch_turns_on_tf32_on_a_gpu_only(saved_torch_settings):
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    configure_torch("cpu", 0)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    configure_torch("cuda", 0)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


def test_configure_torch_sets_the_threads(saved_torch_settings):
    configure_torch("cpu", 1)
    assert torch.get_num_threads() == 1


def test_thread_share_divides_the_cores_between_the_workers():
    assert thread_share(8, cores=64) == 8
    assert thread_share(3, cores=16) == 5
    assert thread_share(4, cores=2) == 1  # never none
    assert thread_share(0, cores=4) == 4
    assert thread_share(1) >= 1


def test_launcher_gives_each_worker_its_share_of_the_cores_unless_set(monkeypatch):
    monkeypatch.setattr("worker.device.host_cores", lambda: 16)
    gpus = [Device(f"gpu{i}", f"GPU-{i}", str(i)) for i in range(4)]
    commands = worker_commands(gpus, [], base_env={"PATH": "/bin"})
    assert [c.env["GENQ_TORCH_THREADS"] for c in commands] == ["4"] * 4
    [cpu] = worker_commands([None], [], base_env={})
    assert cpu.env["GENQ_TORCH_THREADS"] == "16"
    commands = worker_commands(gpus, [], base_env={"GENQ_TORCH_THREADS": "2"})
    assert {c.env["GENQ_TORCH_THREADS"] for c in commands} == {"2"}


class _Plain:
    """A runner without `batch_order`."""


def test_items_keep_the_claimed_order_for_a_runner_without_batch_order():
    items = [ItemInput(i, "x" * (9 - i), i) for i in range(5)]
    assert in_batch_order(_Plain(), items, {}) == items


PROMPTS = ["a much longer prompt than most of the others here", "hi", "", "a medium prompt",
           "x" * 400, "hi", "short one", "the longest of the prompts, by a good margin, or nearly"]


def test_text_runner_orders_a_slice_by_prompt_length(text_runner):
    items = [ItemInput(i, prompt, 50 + i) for i, prompt in enumerate(PROMPTS)]
    ordered = in_batch_order(text_runner, items, {"max_new_tokens": 4})
    assert sorted(ordered, key=lambda item: item.index) == items  # the same items, seeds with them
    lengths = [len(text_runner.tokenizer(item.prompt)["input_ids"]) for item in ordered]
    room = text_runner._lengths({"max_new_tokens": 4})[1]
    assert [min(length, room) for length in lengths] == sorted(min(length, room) for length in lengths)
    hi = [item.index for item in ordered if item.prompt == "hi"]
    assert hi == [1, 5], "equal lengths keep their claimed order"


def _padding(runner, batches: list[list[ItemInput]]) -> int:
    pads = 0
    for batch in batches:
        _, mask = runner._encode([item.prompt for item in batch], runner._lengths({"max_new_tokens": 4})[1])
        pads += int((mask == 0).sum())
    return pads


def test_length_order_cuts_padding_and_changes_no_item(text_runner):
    params = {"max_new_tokens": 6, "do_sample": True, "top_p": 0.9}
    items = [ItemInput(i, prompt, 50 + i) for i, prompt in enumerate(PROMPTS)]
    ordered = in_batch_order(text_runner, items, params)
    claimed_batches, ordered_batches = [items[:4], items[4:]], [ordered[:4], ordered[4:]]
    assert _padding(text_runner, ordered_batches) < _padding(text_runner, claimed_batches)
    by_claim = {item.index: out for batch in claimed_batches for item, out in zip(batch, text_runner.predict(batch, params))}
    by_length = {item.index: out for batch in ordered_batches for item, out in zip(batch, text_runner.predict(batch, params))}
    assert by_claim == by_length


def test_a_slice_forms_its_micro_batches_in_the_runner_s_order_and_results_find_their_items(ctx):  # noqa: F811
    from worker.slices import handle_wakeup

    prompts = [f"ok {'x' * n}" for n in (5, 1, 7, 2, 6, 0, 3, 4)]
    job_id = submit(ctx, prompts)
    runner = ctx.cache.get(ctx.registry.get("fault"))
    original, batches = runner.predict, []

    def recording_predict(inputs, params, should_stop=None):
        batches.append([item.index for item in inputs])
        return original(inputs, params, should_stop)

    runner.predict = recording_predict
    runner.batch_order = lambda items, params: sorted(items, key=lambda item: len(item.prompt))
    assert handle_wakeup(ctx, "fault").succeeded == 8
    assert batches == [[5, 1, 3, 6], [7, 0, 4, 2]]  # by length, in micro-batches of 4
    _job, items = job_and_items(ctx, job_id)
    assert [item.output_text for item in items] == [f"ok:{prompt}:{i}" for i, prompt in enumerate(prompts)]
