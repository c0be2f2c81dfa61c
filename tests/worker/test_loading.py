"""Loading weights: the registry's `variant` (fp16 files) is what gets read, and on a GPU
the weights are placed on the device by `from_pretrained` itself."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from shared.items import ItemInput
from shared.registry import ModelSpec
from worker.cache import ModelCache
from worker.runners.common import load_options


def fp16_only_copy(source, target, load):
    """A copy of a model directory whose weights exist only as the fp16 variant."""
    import torch

    shutil.copytree(source, target)
    model = load(target)
    for path in list(target.rglob("*.safetensors")):
        path.unlink()
    model.to(torch.float16).save_pretrained(target, variant="fp16")
    return target


def test_a_text_model_with_fp16_variant_weights_loads_and_generates(tmp_path, tiny_model_dirs):
    import torch
    from transformers import AutoModelForCausalLM

    source = fp16_only_copy(tiny_model_dirs["text"], tmp_path / "text-fp16", AutoModelForCausalLM.from_pretrained)
    assert [p.name for p in source.glob("*.safetensors")] == ["model.fp16.safetensors"]
    spec = ModelSpec(name="t16", task="text-generation", source=str(source), variant="fp16", dtype="float32")
    cache = ModelCache("cpu")
    runner = cache.get(spec)
    assert {p.dtype for p in runner.model.parameters()} == {torch.float32}  # fp16 files, the registry's dtype
    outputs = runner.predict([ItemInput(index=0, prompt="hello", seed=1)], {"max_new_tokens": 4})
    assert len(outputs) == 1 and outputs[0].text is not None
    assert cache.sizes["t16"] > 0
    without_variant = spec.model_copy(update={"name": "t32", "variant": None})
    with pytest.raises(OSError, match="model.safetensors"):
        ModelCache("cpu").get(without_variant)  # proves the variant's file was the one read


def test_an_image_pipeline_with_fp16_variant_weights_loads(tmp_path, tiny_model_dirs):
    from diffusers import UNet2DModel

    source = tmp_path / "uncond-fp16"
    shutil.copytree(tiny_model_dirs["uncond"], source)
    unet = UNet2DModel.from_pretrained(source / "unet")
    (source / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.half().save_pretrained(source / "unet", variant="fp16")
    spec = ModelSpec(name="u16", task="unconditional-image", source=str(source), variant="fp16")
    runner = ModelCache("cpu").get(spec)
    [output] = runner.predict([ItemInput(index=0, prompt="", seed=3)], {"num_inference_steps": 2})
    assert output.image_png.startswith(b"\x89PNG")


def test_load_options_put_gpu_weights_straight_on_the_device():
    spec = ModelSpec(name="m", task="text-generation", source=".", dtype="float16", variant="fp16")
    import torch

    assert load_options(spec, "cuda") == {"dtype": torch.float16, "local_files_only": True, "variant": "fp16",
                                          "device_map": "cuda"}
    assert "device_map" not in load_options(spec, "cpu")


# Loads the shipped registry's Hub entries by id in a fresh process, as a worker would:
# offline, from the hub cache named by HF_HUB_CACHE.
LOAD_BY_ID = """
import json, sys
from huggingface_hub import constants
from shared.items import ItemInput
from shared.model_files import model_directory
from shared.registry import load_registry
from worker.cache import ModelCache
from worker.memory import estimate_weight_bytes

assert constants.HF_HUB_OFFLINE, "HF_HUB_OFFLINE is not in effect"
registry = load_registry(sys.argv[1])
cache = ModelCache("cpu", capacity=4)
text = cache.get(registry.get("gpt2"))
[said] = text.predict([ItemInput(index=0, prompt="hello", seed=1)],
                      {"max_new_tokens": 4, "do_sample": True, "top_k": 50, "top_p": 0.95})
image = cache.get(registry.get("sd-turbo"))
[drawn] = image.predict([ItemInput(index=0, prompt="a red cat", seed=1)],
                        {"num_inference_steps": 1, "guidance_scale": 0.0, "width": 64, "height": 64})
print(json.dumps({
    "runners": [type(text).__name__, type(image).__name__],
    "text": said.text, "png": drawn.image_png[:8].hex(), "sizes": cache.sizes,
    "text_layers": text.model.config.n_layer,
    "unet_dtype": str(image.pipe.unet.dtype),
    "estimates": {spec.name: estimate_weight_bytes(model_directory(spec), spec.variant)
                  for spec in map(registry.get, ["gpt2", "sd-turbo"])},
}))
"""


def test_the_shipped_hub_entries_load_by_id_offline_from_the_hub_cache(tmp_path, tiny_model_dirs):
    """The registry's `gpt2` and `sd-turbo` (tiny stand-ins saved under those ids in a
    temporary cache, in the hub's layout) load through the real runners with
    HF_HUB_OFFLINE=1 and generate; the image pipeline is cached with its fp16 files only,
    as the shipped entry's `variant: fp16` asks."""
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from diffusers import DiffusionPipeline

    from tests.helpers.hub_cache import save_to_hub_cache

    root = Path(__file__).resolve().parents[2]
    cache_dir = tmp_path / "hub"
    save_to_hub_cache(tiny_model_dirs["text"], "openai-community/gpt2", cache_dir)
    pipeline = tmp_path / "sd-fp16"
    shutil.copytree(tiny_model_dirs["sd"], pipeline)
    DiffusionPipeline.from_pretrained(pipeline).to(torch.float16).save_pretrained(pipeline, variant="fp16")
    save_to_hub_cache(pipeline, "stabilityai/sd-turbo", cache_dir, skip=("model.safetensors",))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir), "HF_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-c", LOAD_BY_ID, str(root / "models.yaml")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["runners"] == ["TextRunner", "ImageRunner"]
    assert result["text_layers"] == 2 and isinstance(result["text"], str)  # the tiny model, by the real id
    assert result["png"] == b"\x89PNG\r\n\x1a\n".hex()
    assert result["unet_dtype"] == "torch.float32"  # dtype auto on the CPU, read from the fp16 files
    assert result["sizes"]["gpt2"] > 0 and result["sizes"]["sd-turbo"] > 0
    fp16_files = sum(p.stat().st_size for p in pipeline.rglob("*.fp16.safetensors"))
    assert result["estimates"] == {"gpt2": (tiny_model_dirs["text"] / "model.safetensors").stat().st_size,
                                   "sd-turbo": fp16_files}  # measured in the snapshot, not 0
