"""Torch generator modules on disk: `config.json` + `model.safetensors`, never a pickle.

`config.json` names everything needed to rebuild the module before its weights load::

    {"class": "worker.runners.generator_modules:ConditionalDCGANGenerator",
     "kwargs": {"latent_size": 32, "num_classes": 10},   # the class's constructor arguments
     "latent_size": 32, "image_shape": [1, 8, 8],        # what the runner feeds and expects
     "num_classes": 10,                                  # 0: the module takes the latent only
     "output": "tanh"}                                   # tanh: [-1, 1]; sigmoid: [0, 1]

A conditional module is called as `module(latents, labels)`, an unconditional one as
`module(latents)`; either returns (n, *image_shape). Any `torch.nn.Module` importable by
that path works; the two below are the demo models' (a DCGAN generator and a VAE
decoder for 8x8 digits), kept here so that serving needs nothing of the training code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from shared.errors import ConfigError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class GeneratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_path: str = Field(alias="class")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    latent_size: int = Field(ge=1)
    image_shape: tuple[int, int, int]
    num_classes: int = Field(0, ge=0)
    output: str = Field("tanh", pattern="^(tanh|sigmoid)$")
    labels: list[str] | None = None


def save_generator(module: nn.Module, directory: Path | str, config: dict[str, Any]) -> None:
    """Write `config.json` and `model.safetensors` for `module` into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    GeneratorConfig.model_validate(config)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_config(directory: Path | str) -> GeneratorConfig:
    path = Path(directory) / CONFIG_FILE
    try:
        return GeneratorConfig.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: a generator model needs config.json and {WEIGHTS_FILE}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid generator config: {exc}") from None


def load_generator(directory: Path | str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(module in eval mode on `device`, its config). The weights must match the module exactly."""
    from safetensors.torch import load_file

    from worker.runners import import_runner_class

    config = read_config(directory)
    module = import_runner_class(config.class_path)(**config.kwargs)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{config.class_path} is not a torch.nn.Module")
    module.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)), strict=True)
    return module.to(device=device, dtype=dtype).eval(), config


class ConditionalDCGANGenerator(nn.Module):
    """DCGAN's generator at 8x8: (latent, class embedding) -> 2x2 -> 4x4 -> 8x8, tanh."""

    def __init__(self, latent_size: int = 32, num_classes: int = 10, width: int = 64, channels: int = 1):
        super().__init__()
        self.embed = nn.Embedding(num_classes, num_classes)
        self.project = nn.Sequential(
            nn.Linear(latent_size + num_classes, width * 4 * 2 * 2, bias=False),
            nn.BatchNorm1d(width * 4 * 2 * 2),
            nn.ReLU(True),
        )
        self.width = width
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.Conv2d(width, channels, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.project(torch.cat([latents, self.embed(labels)], dim=1))
        return self.up(hidden.view(len(latents), self.width * 4, 2, 2))


class ConditionalVAEDecoder(nn.Module):
    """A conditional VAE's decoder: (latent, one-hot class) -> pixels in [0, 1] (sigmoid)."""

    def __init__(self, latent_size: int = 16, num_classes: int = 10, hidden: int = 256, pixels: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Linear(latent_size + num_classes, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, pixels),
            nn.Sigmoid(),
        )
        self.side = int(pixels**0.5)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(labels, self.num_classes).to(latents.dtype)
        return self.net(torch.cat([latents, one_hot], dim=1)).view(len(latents), 1, self.side, self.side)
