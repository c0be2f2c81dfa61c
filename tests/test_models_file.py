"""The shipped registry loads, names the demo models exactly as the demo recipe does, and
names real checkpoints by their Hugging Face ids (served once their weights are in the
local cache: tests/worker/test_loading.py loads them by id)."""
from __future__ import annotations

from pathlib import Path

from shared.model_files import hub_id, weights_of
from shared.registry import load_registry
from tests.helpers.hub_cache import use_hub_cache
from worker.demo import demo_registry_entries

ROOT = Path(__file__).resolve().parents[1]
HUB_ENTRIES = {"gpt2": "openai-community/gpt2", "sd-turbo": "stabilityai/sd-turbo"}


def test_the_shipped_registry_matches_the_demo_recipe():
    shipped = load_registry(ROOT / "models.yaml")
    recipe = demo_registry_entries(ROOT / "var" / "models")["models"]
    assert shipped.names() == sorted([*recipe, *HUB_ENTRIES])
    for name, entry in recipe.items():
        spec = shipped.get(name)
        assert spec.source_path() == Path(entry["source"])
        for field in ("task", "runner", "options", "defaults", "micro_batch_size"):
            value = getattr(spec, field)
            assert (value.value if hasattr(value, "value") else value) == entry.get(field, value), (name, field)
        limits = {key: bounds.model_dump(exclude_none=True) for key, bounds in spec.limits.items()}
        assert limits == entry["limits"], name


def test_the_shipped_hub_entries_name_ids_and_say_how_to_fetch_them_when_missing(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "empty-hub")
    shipped = load_registry(ROOT / "models.yaml")
    for name, repo_id in HUB_ENTRIES.items():
        spec = shipped.get(name)
        assert hub_id(spec) == repo_id and spec.local_source() is None
        weights = weights_of(spec)
        assert not weights.available and weights.fetch == f"hf download {repo_id}"
    assert shipped.get("gpt2").defaults == {"max_new_tokens": 64, "do_sample": True, "top_k": 50, "top_p": 0.95}
    turbo = shipped.get("sd-turbo")
    assert (turbo.variant, turbo.dtype, turbo.defaults["num_inference_steps"], turbo.defaults["guidance_scale"]) == \
        ("fp16", "auto", 1, 0.0)
