"""Per-row decoding controls for `TextRunner`: repetition penalty, no-repeat n-grams,
per-item length budgets (`max_length`) and stop strings.

transformers has processors for the first two, but they read every token of a row,
left padding included: a padded row (pad is often EOS) would have its pad token
penalised or banned, and an item alone has no padding, so its output would depend on
the batch. These look only at each row's own tokens, from its first real position
(`starts`) on. Budgets and stop strings end a row alone (a stopping criterion returns
one flag per row); the runner cuts each row's text at its own end afterwards, so what
the rest of the batch still generates never reaches it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria


class RowPenalties(LogitsProcessor):
    """`repetition_penalty` and `no_repeat_ngram_size` as transformers defines them, over
    each row's real tokens (prompt and generated) only."""

    def __init__(self, starts: torch.Tensor, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0):
        self.starts = starts.view(-1, 1)
        self.penalty = float(repetition_penalty)
        self.ngram = int(no_repeat_ngram_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).view(1, -1)
        real = positions >= self.starts
        if self.penalty != 1.0:
            scores = self._penalise(input_ids, real, scores)
        if self.ngram > 0:
            scores = scores.masked_fill(self._banned(input_ids, real, scores), float("-inf"))
        return scores

    def _penalise(self, input_ids, real, scores):
        """Scores of tokens the row holds: divided by the penalty if positive, multiplied if not."""
        seen = _scatter_flags(scores, input_ids, real)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)

    def _banned(self, input_ids, real, scores) -> torch.Tensor:
        """(rows, vocab): the tokens that would complete an n-gram the row already holds."""
        size = self.ngram
        if input_ids.shape[1] < size:
            return torch.zeros_like(scores, dtype=torch.bool)
        windows = input_ids.unfold(1, size, 1)  # (rows, windows, size)
        whole = real.unfold(1, size, 1).all(-1)  # the window lies in the row's own tokens
        if size > 1:
            tail = input_ids[:, -(size - 1):].unsqueeze(1)
            whole &= (windows[..., :-1] == tail).all(-1)
        return _scatter_flags(scores, windows[..., -1], whole)


def _scatter_flags(scores: torch.Tensor, ids: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) bool: true where a flagged position of the row holds that token id
    (a sum, not a scatter of booleans, so duplicate ids cannot race)."""
    counts = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device)
    return counts.scatter_add_(1, ids, flags.to(torch.float32)) > 0


class RowBudgets(StoppingCriteria):
    """Ends each row once it has generated its own number of new tokens."""

    def __init__(self, prompt_width: int, budgets: Sequence[int]):
        self.prompt_width = prompt_width
        self.budgets = list(budgets)
        self._on_device: torch.Tensor | None = None  # copied to the device once, not every step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self._on_device is None:
            self._on_device = torch.tensor(self.budgets, dtype=torch.long, device=input_ids.device)
        return (input_ids.shape[1] - self.prompt_width) >= self._on_device


class StopStrings(StoppingCriteria):
    """Ends a row once its generated text holds one of the stop strings.

    Checked at every step, so a stop string that appears now ends in the newest token:
    only the row's last few new tokens are decoded (enough for the longest stop even if
    every character took four byte tokens), not its whole text again at each step. The
    check depends on the row alone.
    """

    def __init__(self, stops: Sequence[str], prompt_width: int, decode: Callable[[list[int]], str]):
        self.stops = list(stops)
        self.prompt_width = prompt_width
        self.decode = decode
        self.window = 4 * max(len(stop) for stop in self.stops) + 2
        self.stopped: list[bool] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.stopped is None:
            self.stopped = [False] * input_ids.shape[0]
        start = max(self.prompt_width, input_ids.shape[1] - self.window)
        rows = input_ids[:, start:].tolist()
        for row, tokens in enumerate(rows):
            if not self.stopped[row]:
                self.stopped[row] = first_stop(self.decode(tokens), self.stops) is not None
        return torch.tensor(self.stopped, dtype=torch.bool, device=input_ids.device)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string in `text` begins, or None."""
    found = [position for position in (text.find(stop) for stop in stops) if position >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: Sequence[str] | None) -> str:
    """`text` up to (not including) the first stop string, as OpenAI's `stop` does."""
    position = first_stop(text, stops or ())
    return text if position is None else text[:position]
