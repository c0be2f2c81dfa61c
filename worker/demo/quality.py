"""How good the demo models are, in figures that can be compared with a baseline.

- Text: perplexity on held-out docstrings, for the trained model and for the same
  architecture with its random initial weights.
- Images (demo-image, demo-dcgan, demo-vae): a digit classifier trained on the real
  digits judges generated samples; the figure is how often it recognises the requested
  digit, next to how often it "recognises" a random digit in uniform noise. The
  generators also get a diversity figure (`judge_generator`), since a model that
  draws one perfect digit per class would pass the classifier.
"""
from __future__ import annotations

import functools
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


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (n, 8, 8) with values 0..16, and their digits."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """(n, 8, 8) in 0..16 -> (n, 1, 8, 8) in [-1, 1]."""
    return torch.from_numpy(images).unsqueeze(1) / 8.0 - 1.0


@functools.lru_cache(maxsize=1)
def digits_judge() -> DigitJudge:
    """The judge fitted on all of scikit-learn's digits, fitted once per process (the
    fit takes seconds, and every digit model is judged by the same one)."""
    return DigitJudge(*load_digits())


def mean_pairwise_distance(samples: torch.Tensor) -> float:
    """Mean Euclidean distance between every two of `samples` ((n, ...) in [-1, 1]),
    measured on pixels in [0, 1]: how varied a set of images is."""
    flat = ((samples.clamp(-1, 1) + 1) / 2).reshape(len(samples), -1).double()
    return float(torch.pdist(flat).mean())


def judge_generator(generate, judge_: DigitJudge, images: np.ndarray, targets: np.ndarray, *, samples: int,
                    per_class: int = 100) -> dict:
    """The figures of a digit generator. `generate(seeds, classes)` returns one sample per
    seed and class, (n, 1, 8, 8) in [-1, 1].

    - class_accuracy: the judge recognises the requested digit in `samples` samples
      (each digit equally often), next to noise_accuracy, the same figure for noise;
    - diversity: per digit, the mean pairwise distance of `per_class` samples against
      that of the real digits of that class (up to `per_class` of them), averaged over
      the digits; a ratio near 1 means samples vary as much as real handwriting does.
    """
    classes = np.arange(samples) % 10
    accuracy = judge_.accuracy(generate([10_000 + i for i in range(samples)], classes.tolist()), classes)
    generated, real = [], []
    real_images = to_model_range(images)
    for digit in range(10):
        seeds = [20_000 + digit * per_class + i for i in range(per_class)]
        generated.append(mean_pairwise_distance(generate(seeds, [digit] * per_class)))
        real.append(mean_pairwise_distance(real_images[torch.from_numpy(targets == digit)][:per_class]))
    return {
        "class_accuracy": round(accuracy, 3),
        "noise_accuracy": round(judge_.noise_accuracy(samples), 3),
        "classifier_train_accuracy": round(judge_.train_accuracy, 3),
        "samples": samples,
        "diversity": {
            "samples_per_class": per_class,
            "generated": round(float(np.mean(generated)), 3),
            "real": round(float(np.mean(real)), 3),
            "ratio": round(float(np.mean(generated) / np.mean(real)), 3),
        },
    }


def module_sampler(module, latent_size: int, output: str = "tanh"):
    """`generate(seeds, classes)` for `judge_generator`, drawing latents as the serving
    runner does (`worker.runners.generator.seeded_latent`)."""
    from worker.runners.generator import seeded_latent

    @torch.inference_mode()
    def generate(seeds: list[int], classes: list[int]) -> torch.Tensor:
        latents = torch.stack([seeded_latent(seed, latent_size) for seed in seeds])
        images = module(latents, torch.tensor(classes, dtype=torch.long)).float()
        return (images * 2 - 1 if output == "sigmoid" else images).clamp(-1, 1)

    return generate
