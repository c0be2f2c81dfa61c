"""Text generation with a causal language model (transformers `AutoModelForCausalLM`).

Batch independence: an item's text depends only on its prompt, the parameters and
its seed. Greedy decoding with left padding has that property by itself. Sampling
through `generate(do_sample=True)` does not (one global random stream is shared by
the rows), so sampling is done here by `SeededSampler` (worker.runners.sampling): a
logits processor that draws each row's token from that row's own counter-based stream,
on the device, and hands `generate` a one-hot score row, which its greedy step then
picks; it costs about what `generate(do_sample=True)` does on the same batch.

A slice's items are put in prompt-length order before they are cut into micro-batches
(`batch_order`), so prompts of like length share a batch and little of it is padding.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from shared.registry import ModelSpec, max_positions
from worker.runners.base import BaseRunner, Cancelled, ItemInput, ItemOutput
from worker.runners.common import load_options, param, resolve_source
from worker.runners.decoding import RowBudgets, RowPenalties, StopStrings, cut_at_stop
from worker.runners.sampling import SeededSampler

DEFAULT_MAX_NEW_TOKENS = 32


class ShouldStop(StoppingCriteria):
    """Polls `should_stop` once per generated token and aborts the call with `Cancelled`."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if self.should_stop():
            raise Cancelled("generation cancelled")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class ReportTokens(StoppingCriteria):
    """Reports the tokens generated so far to the progress tracker (which throttles the
    writes); never stops generation."""

    def __init__(self, progress, prompt_width: int):
        self.progress, self.prompt_width = progress, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.progress(tokens=input_ids.shape[1] - self.prompt_width)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class TextRunner(BaseRunner):
    """Runs a causal language model over micro-batches of prompts."""

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        super().__init__(spec, device)
        self.model = None
        self.tokenizer = None

    def setup(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        source = resolve_source(self.spec)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(source, **load_options(self.spec, self.device))
        model.to(self.device).eval()
        # generate() fills every unset field of the config it is given from
        # model.generation_config; a clean one stops a checkpoint's defaults
        # (repetition penalty, top_k, ...) from leaking in.
        eos_ids = self._eos_ids(tokenizer, model)
        model.generation_config = GenerationConfig(
            bos_token_id=model.generation_config.bos_token_id,
            eos_token_id=_one_or_list(eos_ids),
            pad_token_id=tokenizer.pad_token_id,
        )
        self.tokenizer, self.model = tokenizer, model

    @staticmethod
    def _eos_ids(tokenizer, model) -> list[int]:
        """The end-of-sequence ids: the model's generation config first, else the tokenizer's."""
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return [int(i) for i in ids if i is not None]

    def max_positions(self) -> int | None:
        """The longest sequence the model takes (prompt + new tokens), if it has a limit."""
        value = max_positions(self.model.config.to_dict())
        if value is not None:
            return value
        value = getattr(self.tokenizer, "model_max_length", None)
        return value if isinstance(value, int) and 0 < value < 1_000_000 else None

    def loaded(self) -> bool:
        return self.model is not None

    def batch_order(self, items: Sequence[ItemInput], params: dict[str, Any]) -> list[ItemInput]:
        """`items` by prompt length in tokens, shortest first (stable), for a slice to cut
        into micro-batches: prompts of like length then share one and little of it is
        left padding. An item's output does not depend on its batch, so only speed changes."""
        items = list(items)
        if len(items) < 2 or not self.loaded():
            return items
        lengths = self._token_lengths([item.prompt for item in items], self._lengths(params)[1])
        return [items[i] for i in sorted(range(len(items)), key=lengths.__getitem__)]

    def generate(
        self, inputs: list[ItemInput], params: dict[str, Any], should_stop: Callable[[], bool] | None
    ) -> list[ItemOutput]:
        outputs: dict[int, ItemOutput] = {}
        for group in self._fitting_groups(inputs, params):
            outputs.update(zip(group, self._generate([inputs[i] for i in group], params, should_stop)))
        return [outputs[i] for i in range(len(inputs))]

    def _fitting_groups(self, inputs: list[ItemInput], params: dict[str, Any]) -> list[list[int]]:
        """The micro-batch as one group, or, with `max_length`, as groups whose padded
        prompts plus the most new tokens any of their rows takes fit the model's positions
        (each row fits alone; a long prompt beside a short one may not). Outputs do not
        depend on the grouping."""
        limit = self.max_positions()
        if param(params, "max_length") is None or limit is None:
            return [list(range(len(inputs)))]
        _, room = self._lengths(params)
        total = min(int(params["max_length"]), limit)
        lengths = self._token_lengths([item.prompt for item in inputs], room)
        groups: list[list[int]] = []
        for index in sorted(range(len(inputs)), key=lambda i: lengths[i]):
            shortest = lengths[groups[-1][0]] if groups else None
            if shortest is None or lengths[index] + max(1, total - shortest) > limit:
                groups.append([index])
            else:
                groups[-1].append(index)
        return groups

    def _generate(
        self, inputs: list[ItemInput], params: dict[str, Any], should_stop: Callable[[], bool] | None
    ) -> list[ItemOutput]:
        max_length = param(params, "max_length")
        max_new_tokens, prompt_room = self._lengths(params)
        input_ids, attention_mask = self._encode([item.prompt for item in inputs], prompt_room)
        width = input_ids.shape[1]
        budgets = self._budgets(int(max_length), attention_mask) if max_length is not None else None
        if budgets is not None:
            max_new_tokens = max(1, *budgets)
        eos_ids = set(self._eos_ids(self.tokenizer, self.model))
        decode = lambda tokens: self._decode(tokens, eos_ids)  # noqa: E731
        stops = param(params, "stop")
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.model.generation_config.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=self._processors(inputs, params, attention_mask),
                stopping_criteria=self._criteria(should_stop, budgets, stops, width, decode),
            )
        new_tokens = output[:, width:].tolist()
        if budgets is not None:
            new_tokens = [row[:budget] for row, budget in zip(new_tokens, budgets)]
        return [ItemOutput(text=cut_at_stop(decode(row), stops)) for row in new_tokens]

    def _processors(self, inputs: list[ItemInput], params: dict[str, Any], attention_mask) -> LogitsProcessorList:
        """Penalties first, then the seeded sampler (whose one-hot rows greedy search picks)."""
        processors = LogitsProcessorList()
        penalty = float(param(params, "repetition_penalty", 1.0))
        ngram = int(param(params, "no_repeat_ngram_size", 0))
        if penalty != 1.0 or ngram > 0:
            starts = attention_mask.shape[1] - attention_mask.sum(dim=1)  # left padding
            processors.append(RowPenalties(starts, penalty, ngram))
        if params.get("do_sample"):
            processors.append(
                SeededSampler(
                    [item.seed for item in inputs],
                    temperature=param(params, "temperature", 1.0),
                    top_k=param(params, "top_k", 0),
                    top_p=param(params, "top_p", 1.0),
                    fallback_token=self._fallback_token(),
                )
            )
        return processors

    def _criteria(self, should_stop, budgets, stops, width: int, decode) -> StoppingCriteriaList:
        """Cancellation, per-row budgets and stop strings, and the token progress report."""
        criteria = StoppingCriteriaList([ShouldStop(should_stop)] if should_stop is not None else [])
        if budgets is not None:
            criteria.append(RowBudgets(width, budgets))
        if stops:
            criteria.append(StopStrings(stops, width, decode))
        criteria.append(ReportTokens(self.progress, width))
        return criteria

    def _lengths(self, params: dict[str, Any]) -> tuple[int, int | None]:
        """(max_new_tokens, longest prompt in tokens), so that both fit the model's positions.

        The prompt room depends on the parameters only, never on the other prompts of
        the batch, so truncation cannot make an item depend on its neighbours. With
        `max_length` the prompt keeps room for one new token at least.
        """
        limit = self.max_positions()
        if param(params, "max_length") is not None:
            return 1, (limit - 1 if limit is not None else None)
        max_new_tokens = int(param(params, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if limit is None:
            return max_new_tokens, None
        max_new_tokens = max(1, min(max_new_tokens, limit - 1))
        return max_new_tokens, limit - max_new_tokens

    def _budgets(self, max_length: int, attention_mask: torch.Tensor) -> list[int]:
        """Per item, the new tokens `max_length` (prompt plus new tokens) leaves it: none for
        a prompt that fills it, and never more than the model's positions or the registry's
        `limits.max_new_tokens.max` allow. Each depends on the item's own prompt only."""
        limit = self.max_positions()
        total = min(max_length, limit) if limit is not None else max_length
        bounds = self.spec.limits.get("max_new_tokens")
        cap = int(bounds.max) if bounds is not None and bounds.max is not None else None
        budgets = [max(0, total - int(length)) for length in attention_mask.sum(dim=1).tolist()]
        return [min(budget, cap) if cap is not None else budget for budget in budgets]

    def _encode(self, prompts: list[str], prompt_room: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-truncated, left-padded ids; an empty prompt becomes a single BOS (or EOS) token."""
        tokenizer = self.tokenizer
        kwargs = {"truncation": True, "max_length": prompt_room} if prompt_room else {}
        encoded = tokenizer(prompts, **kwargs)["input_ids"]
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        encoded = [ids if ids else [start] for ids in encoded]
        width = max(len(ids) for ids in encoded)
        pad = tokenizer.pad_token_id
        input_ids = [[pad] * (width - len(ids)) + ids for ids in encoded]
        mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded]
        as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long, device=self.device)  # noqa: E731
        return as_tensor(input_ids), as_tensor(mask)

    def _token_lengths(self, prompts: list[str], prompt_room: int | None) -> list[int]:
        """Each prompt's length in tokens as `_encode` makes it (truncated; empty: one token)."""
        kwargs = {"truncation": True, "max_length": prompt_room} if prompt_room else {}
        return [len(ids) or 1 for ids in self.tokenizer(prompts, **kwargs)["input_ids"]]

    def _fallback_token(self) -> int | None:
        """The token a row with nothing left to sample takes: end of sequence, so it ends."""
        eos_ids = self._eos_ids(self.tokenizer, self.model)
        return eos_ids[0] if eos_ids else self.tokenizer.pad_token_id

    def _decode(self, tokens: list[int], eos_ids: set[int]) -> str:
        text = self.tokenizer.decode(trim_at_eos(tokens, eos_ids), skip_special_tokens=True)
        # A byte-level model can emit NUL, which PostgreSQL text cannot hold.
        return text.replace("\x00", "\ufffd")


def _one_or_list(ids: list[int]) -> int | list[int] | None:
    """How a generation config spells no id, one id or several."""
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else ids


def trim_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """The tokens before the first end-of-sequence token."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:position]
    return tokens
