"""A tiny Stable Diffusion pipeline with a real `StableDiffusionSafetyChecker` that flags
exactly one chosen image.

The checker's weights are random, so it is aimed: its first concept embedding is the
embedding of the chosen image, with a threshold halfway between that image's own
similarity (1) and the highest of the other images'; the other concepts (threshold 2)
never match. The images are the ones the same pipeline gives without a checker, so the
flagged one is known before the run.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path


def checker_parts():
    """A tiny CLIP-based safety checker that flags nothing yet, and its image processor."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    layer = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config=layer, vision_config={**layer, "image_size": 32, "patch_size": 8}, projection_dim=8)
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(2.0)  # a cosine similarity never exceeds 1: no concept matches
        checker.special_care_embeds_weights.fill_(2.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, extractor


def _embeddings(checker, extractor, images):
    import torch

    with torch.no_grad():
        clip_input = extractor(images, return_tensors="pt").pixel_values
        embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
    return torch.nn.functional.normalize(embeds, dim=1)


def build_checked_sd(plain_dir: Path, directory: Path, pngs: list[bytes], flagged: int) -> Path:
    """`plain_dir`'s pipeline saved in `directory` with a checker that flags `pngs[flagged]`
    (the PNGs are what the plain pipeline gives the items that will be run)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    checker, extractor = checker_parts()
    embeds = _embeddings(checker, extractor, [Image.open(io.BytesIO(png)).convert("RGB") for png in pngs])
    similarity = embeds @ embeds[flagged]
    others = max(float(value) for index, value in enumerate(similarity) if index != flagged)
    if others > 0.999:
        raise AssertionError("the tiny checker cannot tell these images apart")
    with torch.no_grad():
        checker.concept_embeds[0] = embeds[flagged]
        checker.concept_embeds_weights[0] = (others + 1.0) / 2
    shutil.copytree(plain_dir, directory, dirs_exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(directory, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.register_modules(safety_checker=checker, feature_extractor=extractor)
    pipe.register_to_config(requires_safety_checker=True)
    pipe.save_pretrained(directory)
    return Path(directory)

