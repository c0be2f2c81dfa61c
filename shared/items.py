"""What a model sees of an item: where it stands in its job, its prompt and its seed.
The ledger's claimed item is one of these with its row id, so the worker hands claimed
items to a runner as they are."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ItemInput:
    index: int
    prompt: str
    seed: int
