"""The Python client (`genq.client`) against a real stack: submit, wait, results (text and
PNG bytes), cancel, retry, and its exception tree."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from genq.client import ApiError, Client, Unreachable, WaitTimeout
from genq.devstack import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def sdk(make_stack):
    stack = make_stack()
    stack.start_worker()
    return Client(stack.base_url, stack.api_key)


def test_submit_wait_and_read_the_results(sdk):
    job = sdk.submit("tiny-text", ["one", "two", "three"], params={"seed": 7, "max_new_tokens": 4})
    assert job.state == "queued" and not job.done
    assert job.wait(timeout=120).state == "succeeded"
    results = list(job.results())
    assert [(r.index, r.seed, r.state) for r in results] == [(0, 7, "succeeded"), (1, 8, "succeeded"), (2, 9, "succeeded")]
    assert all(isinstance(r.text, str) and r.image is None for r in results)
    images = sdk.submit("tiny-uncond", inputs=[{"prompt": "x", "seed": 3}], params={"num_inference_steps": 2})
    (picture,) = images.wait(timeout=120).results()
    assert Image.open(io.BytesIO(picture.image)).format == "PNG" and picture.seed == 3
    assert images.id in {j.id for j in sdk.jobs()}
    assert {m["name"] for m in sdk.models()} >= {"tiny-text", "tiny-uncond", "fault"}


def test_cancel_retry_and_errors(sdk):
    slow = sdk.submit("fault", [f"slow {i}" for i in range(40)])
    assert slow.cancel().state in ("cancelling", "cancelled")
    assert slow.wait(timeout=60).state == "cancelled"
    broken = sdk.submit("fault", ["ok a", "raise"]).wait(timeout=60)
    assert broken.state == "failed" and broken.retry().state == "queued"
    with pytest.raises(ApiError) as refused:
        sdk.submit("no-such-model", ["x"])
    assert (refused.value.status, refused.value.code, refused.value.field) == (400, "unknown_model", "model")
    with pytest.raises(WaitTimeout):
        sdk.submit("fault", ["slow x"] * 8).wait(timeout=0.3, interval=0.1)
    with pytest.raises(Unreachable):
        Client(f"http://127.0.0.1:{free_port()}", "k").models()
