"""How soon and how cheaply a finished batch is finalized: the reconciler's finalizer
wakes when a job settles (not only on its poll), and the prompts' tokens of `usage` are
counted once, when the lines are checked, with the same figures as a count at the end."""
from __future__ import annotations

import time

import pytest
from openai.types import Batch
from tokenizers import Tokenizer

from shared.db import session_scope
from shared.notices import Notices
from shared.openai_batches import advance_batches, start_thread
from shared.openai_orm import OpenAIBatchRequest
from shared.storage import storage_from_settings
from tests.helpers.ledger import work_by_hand
from tests.helpers.openai_batches import completion_line, registry_with_chat_model
from tests.web.test_openai_batches import create


@pytest.fixture
def openai_settings(settings, tmp_path, tiny_model_dirs):
    return settings.model_copy(update={"models_file": registry_with_chat_model(tmp_path / "registry", tiny_model_dirs),
                                       "batch_poll_seconds": 30.0})


@pytest.fixture
def app_settings(openai_settings):
    return openai_settings


def batch_status(client, batch_id: str) -> Batch:
    return Batch.model_validate(client.get(f"/v1/batches/{batch_id}").get_json(), strict=True)


def test_a_settled_job_wakes_the_finalizer_long_before_its_poll(client, openai_settings):
    batch = create(client, [completion_line("a", "The quick")])
    stop = start_thread(openai_settings, storage_from_settings(openai_settings))
    try:
        time.sleep(1.0)  # its first pass has seen the batch running
        assert batch_status(client, batch["id"]).status == "in_progress"
        job_id = work_by_hand(openai_settings.database_url, "tiny-text", ["fox"]).job_ids[0]
        Notices(openai_settings.redis_url).publish_ended([job_id], [job_id])  # what the worker says once the job is final
        deadline = time.monotonic() + 10  # the poll is 30 s away
        while batch_status(client, batch["id"]).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batch_status(client, batch["id"]).status == "completed"
    finally:
        stop.set()


def test_prompt_tokens_counted_at_validation_match_a_count_at_finalization(client, openai_settings, tiny_model_dirs):
    lines = [completion_line("a", "The quick brown", n=2, seed=1), completion_line("b", ["Open the", "Rain"], n=2)]
    counted, recounted = create(client, lines), create(client, lines)
    tokenizer = Tokenizer.from_file(str(tiny_model_dirs["text"] / "tokenizer.json"))
    with session_scope(openai_settings.database_url) as session:
        kept = [request.shaping.get("prompt_tokens")
                for request in session.query(OpenAIBatchRequest).filter_by(batch_id=counted["id"])]
        assert sorted(kept) == sorted([len(tokenizer.encode("The quick brown").ids),
                                       len(tokenizer.encode("Open the").ids) + len(tokenizer.encode("Rain").ids)])
        for request in session.query(OpenAIBatchRequest).filter_by(batch_id=recounted["id"]):
            request.shaping = {k: v for k, v in request.shaping.items() if k != "prompt_tokens"}  # as a batch checked before the counts were kept
    for _ in range(2):
        work_by_hand(openai_settings.database_url, "tiny-text", ["fox"] * 6)  # each batch is one job of 6 items
    advance_batches(openai_settings, storage_from_settings(openai_settings))
    expected = sum(len(tokenizer.encode(prompt).ids) for prompt in ("The quick brown", "Open the", "Rain"))
    usage = [batch_status(client, batch["id"]).usage for batch in (counted, recounted)]
    assert usage[0].input_tokens == usage[1].input_tokens == expected
    assert usage[0].output_tokens == usage[1].output_tokens > 0
