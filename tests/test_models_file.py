"""The shipped registry loads, and names the demo models exactly as the demo recipe does."""
from __future__ import annotations

from pathlib import Path

from shared.registry import load_registry
from worker.demo import demo_registry_entries

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_registry_matches_the_demo_recipe():
    shipped = load_registry(ROOT / "models.yaml")
    recipe = demo_registry_entries(ROOT / "var" / "models")["models"]
    assert shipped.names() == sorted(recipe)
    for name, entry in recipe.items():
        spec = shipped.get(name)
        assert spec.source_path() == Path(entry["source"])
        for field in ("task", "runner", "options", "defaults", "micro_batch_size"):
            value = getattr(spec, field)
            assert (value.value if hasattr(value, "value") else value) == entry.get(field, value), (name, field)
        limits = {key: bounds.model_dump(exclude_none=True) for key, bounds in spec.limits.items()}
        assert limits == entry["limits"], name
