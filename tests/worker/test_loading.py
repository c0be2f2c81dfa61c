"""Loading weights: the registry's `variant` (fp16 files) is what gets read, and on a GPU
the weights are placed on the device by `from_pretrained` itself."""
from __future__ import annotations

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
