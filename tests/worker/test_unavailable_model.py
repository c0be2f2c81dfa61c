"""A worker asked to run a model whose weights are not on its machine (the web process
saw them, or the job was accepted before they went) fails the items with an error that
says what is missing and how to fetch it, instead of a loader's traceback."""
from __future__ import annotations

import pytest
import yaml

from shared import ledger
from shared.db import session_scope
from shared.ledger import Ledger
from shared.orm import ItemState, JobState
from shared.registry import load_registry
from shared.settings import Settings
from shared.storage import storage_from_settings
from tests.helpers.database import create_schema, reset_schema
from tests.helpers.hub_cache import use_hub_cache
from tests.worker.test_slices import RecordingWakeups, job_and_items
from worker.cache import ModelCache
from worker.context import WorkerContext
from worker.slices import handle_wakeup


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    url = f"sqlite:///{tmp_path / 'genq.db'}"
    reset_schema(url)
    create_schema(url)
    registry_file = tmp_path / "models.yaml"
    registry_file.write_text(yaml.safe_dump({"models": {"gpt2": {
        "task": "text-generation", "source": "openai-community/gpt2"}}}))
    settings = Settings(data_dir=tmp_path / "var", database_url=url, models_file=registry_file, max_attempts=1,
                        wakeup_busy_seconds=0)
    return WorkerContext(settings=settings, registry=load_registry(registry_file), storage=storage_from_settings(settings),
                         celery=None, wakeups=RecordingWakeups(), cache=ModelCache("cpu"), ledger=Ledger(url),
                         name="test-worker")


def test_a_job_for_a_model_without_its_weights_fails_with_what_to_fetch(ctx):
    with session_scope(ctx.settings.database_url) as session:
        job_id = ledger.create_job(session, model="gpt2", task="text-generation", params={},
                                   inputs=[("hello", 1), ("world", 2)]).id
    with pytest.raises(Exception, match="cannot be loaded on this worker"):
        handle_wakeup(ctx, "gpt2")
    job, items = job_and_items(ctx, job_id)
    assert job.state == JobState.FAILED and {item.state for item in items} == {ItemState.FAILED}
    assert items[0].error.startswith("ModelUnavailable: model gpt2 cannot be loaded on this worker: its weights "
                                     "are not in this machine's Hugging Face cache")
    assert "run `hf download openai-community/gpt2`" in items[0].error
