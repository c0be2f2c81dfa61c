"""The primer's GPT-2 options on a tiny random GPT-2: max_length, repetition_penalty,
no_repeat_ngram_size and stop strings, each independent of batch make-up."""
from __future__ import annotations

import pytest
import torch

from shared.registry import Bounds
from tests.worker.test_text_runner import alone, items, texts
from worker.runners.decoding import RowPenalties, StopStrings, cut_at_stop

GREEDY = {"max_new_tokens": 16}
SAMPLED = {"max_new_tokens": 16, "do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.95}
# The primer's call: generate(input_ids, max_length=200, do_sample=True, top_k=50, top_p=0.95).
PRIMER = {"max_length": 40, "do_sample": True, "top_k": 50, "top_p": 0.95}


@pytest.mark.parametrize(
    "params",
    [
        {"max_length": 24},
        PRIMER,
        {**GREEDY, "repetition_penalty": 1.8},
        {**SAMPLED, "repetition_penalty": 1.3},
        {**GREEDY, "no_repeat_ngram_size": 2},
        {**SAMPLED, "no_repeat_ngram_size": 1},
        {**SAMPLED, "stop": ["e", "."]},
        {**PRIMER, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "stop": [" the"]},
    ],
    ids=["max_length", "primer", "penalty_greedy", "penalty_sampled", "ngram_greedy", "ngram1_sampled", "stop",
         "everything"],
)
def test_each_option_gives_an_item_the_same_output_alone_and_in_a_batch(text_runner, params):
    batched = texts(text_runner.predict(items(), params))
    assert batched == alone(text_runner, items(), params)
    halves = texts(text_runner.predict(items()[:3], params)) + texts(text_runner.predict(items()[3:], params))
    assert halves == batched


def prompt_tokens(runner, prompt: str) -> int:
    return len(runner.tokenizer(prompt)["input_ids"]) or 1  # an empty prompt runs as one BOS token


def test_max_length_counts_the_prompt_and_the_new_tokens(text_runner):
    prompts = ["The quick brown fox", "a", "Seven small cats sat on seven warm mats and watched the birds"]
    batch = [item for item in items() if item.prompt in prompts]
    max_length = 20
    by_length = texts(text_runner.predict(batch, {"max_length": max_length}))
    for item, text in zip(batch, by_length):
        new_tokens = max(0, max_length - prompt_tokens(text_runner, item.prompt))
        expected = texts(text_runner.predict([item], {"max_new_tokens": new_tokens}))[0] if new_tokens else ""
        assert text == expected, item.prompt
    assert prompt_tokens(text_runner, prompts[2]) >= max_length and by_length[2] == ""  # a prompt that fills it


def test_max_length_is_capped_by_the_registry_limit_on_new_tokens(text_runner, monkeypatch):
    limits = {"max_new_tokens": Bounds(max=10)}
    monkeypatch.setattr(text_runner, "spec", text_runner.spec.model_copy(update={"limits": limits}))
    long = texts(text_runner.predict(items()[:2], {"max_length": 1000, "do_sample": True}))
    capped = texts(text_runner.predict(items()[:2], {"max_new_tokens": 10, "do_sample": True}))
    assert long == capped


def test_stop_ends_the_text_before_the_first_stop_string(text_runner):
    free = texts(text_runner.predict(items(), SAMPLED))
    index, text = next((i, t) for i, t in enumerate(free) if len(t) > 6)
    stop = text[3:5]
    stopped = texts(text_runner.predict(items(), {**SAMPLED, "stop": [stop, "\u2603"]}))
    assert stopped[index] == text[: text.find(stop)]
    assert all(out == cut_at_stop(whole, [stop, "\u2603"]) for out, whole in zip(stopped, free))


def test_repetition_penalty_and_ngrams_change_the_text(text_runner):
    plain = texts(text_runner.predict(items(), GREEDY))
    penalised = texts(text_runner.predict(items(), {**GREEDY, "repetition_penalty": 3.0}))
    no_repeats = texts(text_runner.predict(items(), {**GREEDY, "no_repeat_ngram_size": 1}))
    assert plain != penalised and plain != no_repeats


def test_no_repeat_ngrams_never_generate_a_repeated_token(text_runner):
    """With size 1 no token of the row (prompt included) may come again."""
    runner = text_runner
    prompts = [item.prompt for item in items()[:4]]
    input_ids, mask = runner._encode(prompts, None)
    starts = mask.shape[1] - mask.sum(dim=1)
    processor = RowPenalties(starts, no_repeat_ngram_size=1)
    with torch.inference_mode():
        out = runner.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                    logits_processor=[processor], pad_token_id=runner.tokenizer.pad_token_id)
    for row, start in zip(out.tolist(), starts.tolist()):
        own = row[start:]
        generated = own[input_ids.shape[1] - start:]
        eos = runner.tokenizer.eos_token_id
        generated = generated[: generated.index(eos)] if eos in generated else generated
        assert not set(generated) & set(own[: input_ids.shape[1] - start])
        assert len(set(generated)) == len(generated)


def test_row_penalties_ignore_left_padding():
    """A padded row scores exactly like the same row unpadded (pad id 0 is never penalised)."""
    scores = torch.tensor([[1.0, 2.0, -1.0, 0.5, 3.0]])
    row = torch.tensor([[2, 3, 2]])
    padded = torch.tensor([[0, 0, 2, 3, 2]])
    for kwargs in ({"repetition_penalty": 2.0}, {"no_repeat_ngram_size": 2}, {"no_repeat_ngram_size": 1}):
        unpadded_out = RowPenalties(torch.tensor([0]), **kwargs)(row, scores.clone())
        padded_out = RowPenalties(torch.tensor([2]), **kwargs)(padded, scores.clone())
        assert torch.equal(unpadded_out, padded_out), kwargs
    penalised = RowPenalties(torch.tensor([0]), repetition_penalty=2.0)(row, scores.clone())
    assert penalised.tolist() == [[1.0, 2.0, -2.0, 0.25, 3.0]]
    banned = RowPenalties(torch.tensor([0]), no_repeat_ngram_size=2)(row, scores.clone())
    assert banned.tolist() == [[1.0, 2.0, -1.0, float("-inf"), 3.0]]  # "2 3" was seen: 3 may not follow 2


def test_stop_strings_end_a_row_in_the_step_its_stop_appears_even_late_in_a_long_text():
    """The criterion decodes only each row's last tokens: a stop completed by the newest
    token after 300 others still ends that row at once, and only that row."""
    decode = lambda ids: "".join(chr(ord("a") + i) for i in ids)  # noqa: E731  one character per token
    criterion = StopStrings(["xyz"], prompt_width=2, decode=decode)
    filler = [0, 1, 2] * 100
    rows = torch.tensor([[0, 0, *filler, 23, 24, 25], [0, 0, *filler, 23, 24, 24]])
    assert criterion(rows, None).tolist() == [True, False]
    assert criterion(rows[:, :-1], None).tolist() == [True, False]  # a stopped row stays stopped
