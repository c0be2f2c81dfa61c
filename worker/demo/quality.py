"""How good the demo models are, in figures that can be compared with a baseline.

- Text: perplexity on held-out docstrings, for the trained model and for the same
  architecture with its random initial weights.
- Images: a digit classifier trained on the real digits judges generated samples;
  the figure is how often it recognises the requested digit, next to how often it
  "recognises" a random digit in uniform noise.
"""
from __future__ import annotations

import math

import numpy as np
import torch


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, block: int, max_blocks: int) -> float:
    """exp(mean next-token loss) over the first `max_blocks` whole blocks of `stream`."""
    was_training = model.training
    model.eval()
    count = min(max_blocks, len(stream) // block)
    if count == 0:
        raise ValueError(f"the held-out stream has {len(stream)} tokens, less than one block of {block}")
    blocks = stream[: count * block].view(count, block)
    losses = [model(input_ids=chunk, labels=chunk).loss.item() for chunk in blocks.split(16)]
    weights = [len(chunk) for chunk in blocks.split(16)]
    model.train(was_training)
    return math.exp(sum(l * w for l, w in zip(losses, weights)) / sum(weights))


class DigitJudge:
    """A logistic-regression classifier of 8x8 digits (pixel values 0..16)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        from sklearn.linear_model import LogisticRegression

        features = images.reshape(len(images), -1) / 16.0
        self.classifier = LogisticRegression(max_iter=2000).fit(features, targets)
        self.train_accuracy = float(self.classifier.score(features, targets))

    def accuracy(self, samples: torch.Tensor, classes: np.ndarray) -> float:
        """Share of `samples` ((n, 1, 8, 8) in [-1, 1]) classified as their requested class."""
        features = ((samples.clamp(-1, 1) + 1) / 2).reshape(len(samples), -1).numpy()
        return float((self.classifier.predict(features) == np.asarray(classes)).mean())

    def noise_accuracy(self, count: int, seed: int = 0) -> float:
        """The same figure for uniform noise images with a requested class each: the floor."""
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand((count, 1, 8, 8), generator=generator) * 2 - 1
        return self.accuracy(noise, np.arange(count) % 10)
