"""What a model sees of an item: where it stands in its job, its prompt and its seed.
The ledger's claimed item is one of these with its row id, so the worker hands claimed
items to a runner as they are.

A job may ask for several items per prompt: `n` samples (consecutive seeds), or the
`steps` of a latent walk (`interpolate`). The items of prompt p are then the indexes
p * k .. p * k + k - 1 (k per prompt), so where an item stands (which prompt, which
sample or step) follows from its index and the job's parameters alone, and nothing
more needs to be stored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ItemInput:
    index: int
    prompt: str
    seed: int


def samples_per_prompt(params: dict[str, Any] | None) -> int:
    """How many items each prompt of a job with these parameters became."""
    params = params or {}
    walk = params.get("interpolate")
    if isinstance(walk, dict) and walk.get("steps"):
        return int(walk["steps"])
    return int(params.get("n") or 1)


def sample_position(index: int, params: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt_index, sample) of the item at `index` of a job with these parameters."""
    return divmod(int(index), samples_per_prompt(params))


def walk_fraction(index: int, params: dict[str, Any]) -> float:
    """Where the item at `index` stands on its prompt's latent walk: 0 at `from_seed`,
    1 at `to_seed`, evenly spaced between (a one-step walk stays at `from_seed`)."""
    steps = samples_per_prompt(params)
    return sample_position(index, params)[1] / (steps - 1) if steps > 1 else 0.0
