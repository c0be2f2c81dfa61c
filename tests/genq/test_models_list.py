"""`genq models list` says which registry entries lack their weights here and how to get
them: demo models are built, Hub models are fetched elsewhere and their cache copied."""
from __future__ import annotations

import yaml

from tests.genq.test_cli import genq
from tests.helpers.hub_cache import save_to_hub_cache, write_files


def test_models_list_marks_missing_weights_and_says_how_to_fetch_them(tmp_path):
    hub = tmp_path / "hub"
    save_to_hub_cache(write_files(tmp_path / "src", {"config.json": {}, "model.safetensors": 10}), "org/here", hub)
    save_to_hub_cache(write_files(tmp_path / "part", {"config.json": {}, "model.safetensors": 10}), "org/partial",
                      hub, skip=("model.safetensors",))
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": {
        "demo-text": {"task": "text-generation", "source": "var/models/demo-text"},
        "here": {"task": "text-generation", "source": "org/here"},
        "partial": {"task": "text-generation", "source": "org/partial"},
        "gone": {"task": "text-to-image", "source": "stabilityai/sd-turbo"},
    }}))
    result = genq("models", "list", GENQ_MODELS_FILE=str(registry), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert "ready" in row["here"] and "MISSING" not in row["here"]
    assert all("MISSING" in row[name] for name in ("demo-text", "partial", "gone"))
    out = result.stdout
    assert "its download in the Hugging Face cache is incomplete: the model has no weight files" in out
    assert f"its weights are not in this machine's Hugging Face cache: {hub}/models--stabilityai--sd-turbo" in out
    assert "3 of the models lack their weights" in out
    assert "demo-text: built by genq up on first start, or now by: genq models build-demo --only=demo-text" in out
    assert "    hf download stabilityai/sd-turbo\n    hf download org/partial\n" in out  # by model name
    assert f"into {hub}" in out
