"""Whether a model's weights are on this machine: a local directory as it is, a Hugging
Face id from the hub cache's layout (written file for file as `hf download` leaves it),
with a partial download read as missing; and which weight files a load would read."""
from __future__ import annotations

import pytest

from shared.model_files import hub_id, missing_weights, model_directory, weight_files, weights_of
from shared.registry import ModelSpec
from tests.helpers.hub_cache import save_to_hub_cache, use_hub_cache, write_files

TEXT_MODEL = {"config.json": {"model_type": "gpt2"}, "model.safetensors": 1000, "tokenizer.json": b"{}"}
PIPELINE = {
    "model_index.json": {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                         "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"],
                         "safety_checker": [None, None]},
    "unet/config.json": {}, "unet/diffusion_pytorch_model.safetensors": 300,
    "unet/diffusion_pytorch_model.fp16.safetensors": 150, "unet/diffusion_pytorch_model.bin": 310,
    "vae/config.json": {}, "vae/diffusion_pytorch_model.safetensors": 40,
    "vae/diffusion_pytorch_model.fp16.safetensors": 20,
    "scheduler/scheduler_config.json": {},
    "sd_turbo.safetensors": 5000,  # the single-file checkpoint a Hub repo keeps beside the folders
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    return use_hub_cache(monkeypatch, tmp_path / "hub")


def spec(source: str, variant: str | None = None, **fields) -> ModelSpec:
    return ModelSpec(name="m", task="text-generation", source=source, variant=variant, **fields)


def test_a_hub_id_in_the_cache_is_available_from_its_snapshot(tmp_path, cache):
    snapshot = save_to_hub_cache(write_files(tmp_path / "gpt2", TEXT_MODEL), "openai-community/gpt2", cache)
    assert snapshot.parent.parent == cache / "models--openai-community--gpt2"
    weights = weights_of(spec("openai-community/gpt2"))
    assert weights.available and weights.reason is None and weights.where == str(snapshot)
    assert model_directory(spec("openai-community/gpt2")) == snapshot
    assert [p.name for p in weight_files(snapshot)] == ["model.safetensors"]


def test_a_hub_id_missing_from_the_cache_is_unavailable_with_the_command_that_fetches_it(cache):
    weights = weights_of(spec("stabilityai/sd-turbo"))
    assert not weights.available
    assert weights.reason == "its weights are not in this machine's Hugging Face cache"
    assert str(cache) not in weights.reason  # the reason is for API clients: no server paths
    assert weights.where == str(cache / "models--stabilityai--sd-turbo")
    assert weights.fetch == "hf download stabilityai/sd-turbo"
    assert model_directory(spec("stabilityai/sd-turbo")) is None


@pytest.mark.parametrize("skip, missing", [
    (("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"), "unet/ has no weight files"),
    (("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"),
     "vae/ is missing"),
    (("model_index.json",), "neither model_index.json nor config.json"),
])
def test_a_partial_download_is_unavailable_and_says_what_is_missing(tmp_path, cache, skip, missing):
    save_to_hub_cache(write_files(tmp_path / "sd", PIPELINE), "org/sd", cache, skip=skip)
    weights = weights_of(spec("org/sd"))
    assert not weights.available
    assert weights.reason == f"its download in the Hugging Face cache is incomplete: {missing}"
    assert weights.fetch == "hf download org/sd"


def test_a_variant_counts_only_with_its_files(tmp_path, cache):
    """As the loaders read them: transformers only the variant's files; diffusers a
    component's plain files where it has no variant ones, but not a pipeline without any."""
    save_to_hub_cache(write_files(tmp_path / "t", TEXT_MODEL), "org/t", cache)
    weights = weights_of(spec("org/t", variant="fp16"))
    assert not weights.available and weights.reason.endswith("incomplete: no weight files of variant fp16")
    write_files(tmp_path / "t16", {"config.json": {}, "model.fp16.safetensors": 10})
    assert missing_weights(tmp_path / "t16", "fp16") is None
    pipeline = write_files(tmp_path / "sd", PIPELINE)
    (pipeline / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert missing_weights(pipeline, "fp16") is None  # the vae's plain files are read
    (pipeline / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert missing_weights(pipeline, "fp16") == "no weight files of variant fp16"
    assert missing_weights(pipeline) is None


def test_a_sharded_checkpoint_needs_every_shard_its_index_names(tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    directory = write_files(tmp_path / "sharded", {"config.json": {}, "model.safetensors.index.json": index,
                                                   "model-00001-of-00002.safetensors": 10})
    assert missing_weights(directory) == "model-00002-of-00002.safetensors is missing"
    write_files(directory, {"model-00002-of-00002.safetensors": 10})
    assert missing_weights(directory) is None


def test_weight_files_are_those_from_pretrained_reads(tmp_path):
    pipeline = write_files(tmp_path / "sd", PIPELINE)
    names = [str(p.relative_to(pipeline)) for p in weight_files(pipeline)]
    assert names == ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    names = [str(p.relative_to(pipeline)) for p in weight_files(pipeline, "fp16")]
    assert names == ["unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    loose = write_files(tmp_path / "loose", {"generator/weights.pt": 7, "readme.txt": b"x"})  # another layout
    assert [p.name for p in weight_files(loose)] == ["weights.pt"]
    assert weight_files(tmp_path / "nowhere") == [] and weight_files(None) == []


def test_a_local_directory_is_taken_as_it_is_and_a_missing_one_has_no_fetch_command(tmp_path, cache):
    (tmp_path / "mine").mkdir()
    assert weights_of(spec(str(tmp_path / "mine"))).available  # a custom runner's own layout
    missing = spec("var/models/demo-text", registry_dir=tmp_path)
    weights = weights_of(missing)
    assert not weights.available and weights.reason == "its model directory does not exist"
    assert weights.where == str(tmp_path / "var/models/demo-text") and weights.fetch is None
    assert hub_id(missing) is None and hub_id(spec("gpt2")) == "gpt2"
