"""Small helpers shared by the runners: where to load a model from, dtypes, seeds,
which class a prompt names, and image samples to PNG outputs. Torch only: a runner
that needs neither transformers nor diffusers does not load them through here."""
from __future__ import annotations

import io
import re
from typing import Any, Sequence

import torch

from shared.registry import ModelSpec
from worker.runners.base import ItemOutput

_SEED_MASK = (1 << 64) - 1


def resolve_source(spec: ModelSpec) -> str:
    """The model's local directory if it exists, else its Hugging Face id.

    Callers load with `local_files_only=True`, so an id is resolved from the local
    cache only: a model that is not there fails to load instead of downloading.
    """
    local = spec.local_source()
    return str(local) if local is not None else spec.source


def torch_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """`"float16"` -> `torch.float16`; an unknown name raises `ValueError`. `"auto"` (the
    registry's default) is the fast one for `device`: bfloat16 on a CUDA GPU (float16
    on one without bfloat16, before Ampere), float32 elsewhere (half precision on a
    CPU is slow and inexact)."""
    if name == "auto":
        return _auto_dtype(device)
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def _auto_dtype(device: str) -> torch.dtype:
    if not str(device).startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_options(spec: ModelSpec, device: str = "cpu") -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` (transformers models and diffusers pipelines):
    local files only, the registry's dtype (`auto`: by device) and weights `variant` (e.g. `fp16`: load
    `model.fp16.safetensors`, half the bytes to read), and on a GPU `device_map` so the
    weights are loaded straight onto the device instead of into host memory first
    (eight workers starting at once would otherwise hold eight host copies)."""
    options: dict[str, Any] = {"dtype": torch_dtype(spec.dtype, device), "local_files_only": True}
    if spec.variant:
        options["variant"] = spec.variant
    if device != "cpu":
        options["device_map"] = device
    return options


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator for one item: a CPU stream is the same on every machine and device."""
    return torch.Generator(device="cpu").manual_seed(int(seed) & _SEED_MASK)


def param(params: dict[str, Any], name: str, default: Any = None) -> Any:
    """`params[name]`, or `default` when it is missing or None."""
    value = params.get(name)
    return default if value is None else value


class ClassNames:
    """Class names in class-index order. A prompt selects class i by naming `labels[i]`
    or the number i as a whole word, in any case ("a handwritten 7", "Seven")."""

    def __init__(self, labels: Sequence[Any]):
        self.labels = [str(label) for label in labels]
        self._patterns = [re.compile(rf"(?<!\w)(?:{re.escape(label)}|{index})(?!\w)", re.IGNORECASE)
                          for index, label in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def index_of(self, prompt: str) -> int:
        """The class index `prompt` names; `ValueError` if it names none or several."""
        found = sorted({index for index, pattern in enumerate(self._patterns) if pattern.search(prompt)})
        if len(found) == 1:
            return found[0]
        if not found:
            names = ", ".join(f"{i} ({label})" for i, label in enumerate(self.labels))
            raise ValueError(f"prompt {prompt!r} names no class; name one of: {names}")
        named = ", ".join(self.labels[i] for i in found)
        raise ValueError(f"prompt {prompt!r} names several classes ({named}); name exactly one")


def image_outputs(samples: torch.Tensor, params: dict[str, Any], display_size: int) -> list[ItemOutput]:
    """(n, c, h, w) in [-1, 1] -> one PNG per row, of the job's `width` x `height`
    (default `display_size` square), upscaled with bicubic interpolation.

    Resizing is done by PIL per image, on 8-bit pixels, so it cannot mix rows.
    """
    from PIL import Image

    size = (int(param(params, "width", display_size)), int(param(params, "height", display_size)))
    pixels = ((samples + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    images = [Image.fromarray(row[..., 0] if mode == "L" else row, mode=mode) for row in pixels]
    resized = [image.resize(size, Image.Resampling.BICUBIC) if image.size != size else image for image in images]
    return [ItemOutput(image_png=to_png(image)) for image in resized]


def to_png(image) -> bytes:
    """PIL image -> PNG bytes (deterministic for identical pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
