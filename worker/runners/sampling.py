"""Per-row seeded sampling for `TextRunner`, drawn on the model's device.

`generate(do_sample=True)` shares one random stream between the rows of a batch, so a
row's tokens would depend on its neighbours. `SeededSampler` gives every row its own
stream instead, counter-based: the uniform a row uses at step t is a fixed function of
(the item's seed, t) -- SplitMix64 of `mix(seed) + (t + 1) * golden gamma`, computed in
64-bit integer tensor ops on the device. Nothing is drawn row by row in Python, nothing
is copied from the host per step, and the value does not depend on the batch, on the
device (integer arithmetic is exact on CPU and GPU alike), on `max_new_tokens` (a
shorter generation is a prefix of a longer one) or on whether the row already ended.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (the golden ratio in 64 bits)
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_UNIFORM_BITS = 24  # a float32 holds 24 bits exactly: uniforms k / 2**24, as torch.rand draws


def _signed(value: int) -> int:
    """An unsigned 64-bit value as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 bits; torch's `>>` is arithmetic."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 tensors (arithmetic wraps modulo 2**64)."""
    x = (x ^ _shift_right(x, 30)) * _signed(_MIX1)
    x = (x ^ _shift_right(x, 27)) * _signed(_MIX2)
    return x ^ _shift_right(x, 31)


def row_keys(seeds: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """(rows,) int64: each item's stream key, from its seed alone."""
    seeds_ = torch.tensor([_signed(int(seed)) for seed in seeds], dtype=torch.int64, device=device)
    return mix64(seeds_)


def counter_uniforms(keys: torch.Tensor, first_step: int, steps: int) -> torch.Tensor:
    """(rows, steps) float32 uniforms in [0, 1): row r's at step t depends on keys[r] and t only."""
    counters = torch.arange(first_step + 1, first_step + 1 + steps, dtype=torch.int64, device=keys.device)
    states = keys.view(-1, 1) + counters.view(1, -1) * _signed(_GAMMA)
    bits = _shift_right(mix64(states), 64 - _UNIFORM_BITS)
    return bits.to(torch.float32) * (2.0 ** -_UNIFORM_BITS)


class SeededSampler(LogitsProcessor):
    """Samples each row's next token from its own counter-based stream; returns one-hot
    scores, which `generate`'s greedy step then picks.

    The uniforms are computed `CHUNK` steps at a time for all rows in one call (a
    speed choice only: step t's value is the same whatever the chunk). The choice is
    an inverse-CDF lookup (`_choose`) along each row's vocabulary, so rows never mix.
    NaN scores count as impossible, +inf as certain; a row left with no possible
    token (all NaN, or every token banned) gets `fallback_token` (end of sequence),
    so it ends rather than sampling garbage.
    """

    CHUNK = 32

    def __init__(self, seeds: Sequence[int], temperature: float, top_k: int | None, top_p: float,
                 fallback_token: int | None = None):
        self.seeds = [int(seed) for seed in seeds]
        self.temperature = float(temperature)
        self.top_k = int(top_k or 0)
        self.top_p = min(float(top_p), 1.0)
        self.fallback_token = fallback_token
        self._keys: torch.Tensor | None = None
        self._uniforms: torch.Tensor | None = None
        self._step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = self._choose(scores.float(), self._next_uniforms(scores.device))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen, 0.0)
        return out

    def _next_uniforms(self, device: torch.device) -> torch.Tensor:
        """This step's (rows, 1) uniforms, on `device`."""
        column = self._step % self.CHUNK
        if column == 0:
            if self._keys is None or self._keys.device != torch.device(device):
                self._keys = row_keys(self.seeds, device)
            self._uniforms = counter_uniforms(self._keys, self._step, self.CHUNK)
        self._step += 1
        return self._uniforms[:, column : column + 1]

    def _choose(self, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Per row, the token whose cumulative-probability interval holds the row's uniform.

        `logits` is (rows, vocab), `uniforms` (rows, 1); returns (rows, 1). The intervals
        lie in token-id order, never in probability order: two nearly equal probabilities
        can swap places in a sort between one batch and another (float rounding differs
        with the batch's shape), and in probability order that swap would move a uniform
        to the other token. In id order a tiny change in the logits moves a token only
        when the uniform lies right at an interval's edge. `last` is the last candidate
        with any mass (a uniform that rounds up to the total lands there).
        """
        if self.temperature > 0 and self.temperature != 1.0:
            logits = logits / self.temperature
        logits, empty = self._cleaned(logits)
        if self.temperature <= 0:
            return self._or_fallback(torch.argmax(logits, dim=-1, keepdim=True), empty)
        values, ids = self._candidates(logits)
        cdf = torch.cumsum(torch.softmax(values, dim=-1), dim=-1)
        total = cdf[:, -1:].contiguous()
        # An empty row's cdf is NaN: the clamp keeps its (discarded) index in range.
        last = torch.searchsorted(cdf, total).clamp_(max=cdf.shape[-1] - 1)
        positions = torch.minimum(torch.searchsorted(cdf, uniforms * total, right=True), last)
        chosen = positions if ids is None else torch.gather(ids, -1, positions)
        return self._or_fallback(chosen, empty)

    @staticmethod
    def _cleaned(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits with NaN as -inf and +inf as the largest float, (rows, 1) true where a
        row has no finite logit left). One pass over the vocabulary and a max: no sync."""
        logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max,
                                  neginf=float("-inf"))
        return logits, torch.isneginf(logits.amax(dim=-1, keepdim=True))

    def _or_fallback(self, chosen: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        if self.fallback_token is None:
            return chosen
        return torch.where(empty, torch.full_like(chosen, self.fallback_token), chosen)

    def _candidates(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the candidates' logits, -inf outside the nucleus, in token-id order; their ids,
        or None when they are the whole vocabulary). top-k takes `topk`'s k (sorted by id
        afterwards, k elements); top-p alone needs the whole vocabulary sorted to find
        its cut-off logit, and keeps every token at or above it."""
        if 0 < self.top_k < logits.shape[-1]:
            values, ids = torch.topk(logits, self.top_k, dim=-1, sorted=True)
            if self.top_p < 1.0:
                values = values.masked_fill(values < self._nucleus_cutoff(values), float("-inf"))
            ids, order = torch.sort(ids, dim=-1)
            return values.gather(-1, order), ids
        if self.top_p < 1.0:
            ranked = torch.sort(logits, dim=-1, descending=True).values
            return logits.masked_fill(logits < self._nucleus_cutoff(ranked), float("-inf")), None
        return logits, None

    def _nucleus_cutoff(self, ranked: torch.Tensor) -> torch.Tensor:
        """(rows, 1): the logit of the last token of the nucleus, given logits sorted in
        descending order: the first token at which the cumulative mass reaches top_p."""
        cdf = torch.cumsum(torch.softmax(ranked, dim=-1), dim=-1)
        last = torch.searchsorted(cdf, cdf[:, -1:] * self.top_p).clamp_(max=ranked.shape[-1] - 1)
        return ranked.gather(-1, last)
