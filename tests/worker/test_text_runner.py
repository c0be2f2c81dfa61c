"""TextRunner on a tiny random GPT-2: batch independence, seeds, cancellation."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.worker.conftest import StopAfter
from worker.runners.base import Cancelled, ItemInput, ItemOutput

PROMPTS = [
    "The quick brown fox",
    "a",
    "",
    "Return the number of items in the queue, or zero when it is empty. " * 3,
    "def add(a, b):",
    "Seven small cats sat on seven warm mats and watched the birds",
    "x" * 400,  # longer than the model's 128 positions: truncated from the left
    "Rain",
]
SAMPLED = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.95}


def items(seed_base: int = 100) -> list[ItemInput]:
    return [ItemInput(index, prompt, seed_base + index) for index, prompt in enumerate(PROMPTS)]


def texts(outputs: list[ItemOutput]) -> list[str]:
    assert all(isinstance(o, ItemOutput) and isinstance(o.text, str) for o in outputs)
    return [o.text for o in outputs]


def alone(runner, batch: list[ItemInput], params: dict) -> list[str]:
    return [texts(runner.predict([item], params))[0] for item in batch]


def test_greedy_item_in_batch_equals_item_alone(text_runner):
    params = {"max_new_tokens": 12}
    batched = texts(text_runner.predict(items(), params))
    assert len(batched) == len(PROMPTS)
    assert batched == alone(text_runner, items(), params)
    assert any(batched)


@pytest.mark.parametrize(
    "params",
    [
        SAMPLED,
        {**SAMPLED, "temperature": 0.7, "top_k": 20, "top_p": 1.0},
        {**SAMPLED, "top_p": 1.0},
        # top-k and top-p together, past the sampler's first chunk of uniforms
        {**SAMPLED, "max_new_tokens": 40, "temperature": 1.3, "top_k": 50, "top_p": 0.9},
    ],
    ids=["top_p", "top_k", "plain", "top_k_top_p_long"],
)
def test_sampled_item_in_batch_equals_item_alone(text_runner, params):
    batched = texts(text_runner.predict(items(), params))
    assert batched == alone(text_runner, items(), params)
    assert batched == texts(text_runner.predict(items(), params)), "a second run must repeat the first"


def test_sampled_batch_split_differently_gives_same_items(text_runner):
    batch = items()
    whole = texts(text_runner.predict(batch, SAMPLED))
    halves = texts(text_runner.predict(batch[:3], SAMPLED)) + texts(text_runner.predict(batch[3:], SAMPLED))
    assert whole == halves
    assert texts(text_runner.predict(batch[::-1], SAMPLED)) == whole[::-1]


def test_seeds_change_sampled_output(text_runner):
    first = texts(text_runner.predict(items(100), SAMPLED))
    second = texts(text_runner.predict(items(5000), SAMPLED))
    assert sum(a != b for a, b in zip(first, second)) >= len(PROMPTS) // 2
    greedy = texts(text_runner.predict(items(100), {"max_new_tokens": 12}))
    assert first != greedy


def test_should_stop_before_start_raises_cancelled(text_runner):
    with pytest.raises(Cancelled):
        text_runner.predict(items(), SAMPLED, should_stop=lambda: True)


def test_should_stop_mid_generation_raises_cancelled(text_runner):
    stop = StopAfter(4)
    with pytest.raises(Cancelled):
        text_runner.predict(items(), {**SAMPLED, "max_new_tokens": 50}, should_stop=stop)
    assert stop.calls == 4, "polled once before and once per generated token, stopped at once"
    assert texts(text_runner.predict(items()[:2], SAMPLED)) == texts(text_runner.predict(items(), SAMPLED))[:2]


def test_should_stop_false_changes_nothing(text_runner):
    assert texts(text_runner.predict(items(), SAMPLED, should_stop=lambda: False)) == texts(
        text_runner.predict(items(), SAMPLED)
    )


def test_max_new_tokens_beyond_positions_is_capped(text_runner):
    outputs = text_runner.predict(items()[:2], {"max_new_tokens": 1000})
    assert len(outputs) == 2


def test_empty_input_list(text_runner):
    assert text_runner.predict([], SAMPLED) == []


def test_checkpoint_generation_defaults_do_not_leak(tiny_model_dirs, tiny_registry, text_runner, tmp_path):
    """A generation_config.json with penalties must not change what the runner produces."""
    from worker.runners.text import TextRunner

    source = shutil.copytree(tiny_model_dirs["text"], tmp_path / "model")
    config_path = source / "generation_config.json"
    config = json.loads(config_path.read_text())
    config.update(repetition_penalty=50.0, no_repeat_ngram_size=1, top_k=1, do_sample=True, min_new_tokens=5)
    config_path.write_text(json.dumps(config))
    spec = tiny_registry.get("tiny-text").model_copy(update={"source": str(source)})
    runner = TextRunner(spec, "cpu")
    runner.setup()
    for params in ({"max_new_tokens": 12}, SAMPLED):
        assert texts(runner.predict(items(), params)) == texts(text_runner.predict(items(), params))


def test_generation_stops_at_eos(text_runner, monkeypatch):
    """Make the first greedy token of one prompt the end-of-sequence token: its text is empty."""
    assert text_runner.model.generation_config.eos_token_id == text_runner.tokenizer.eos_token_id
    item = items()[0]
    input_ids, mask = text_runner._encode([item.prompt], None)
    with torch.inference_mode():
        first = int(text_runner.model(input_ids=input_ids, attention_mask=mask).logits[0, -1].argmax())
    assert texts(text_runner.predict([item], {"max_new_tokens": 8}))[0] != ""
    monkeypatch.setattr(text_runner.model.generation_config, "eos_token_id", first)
    assert texts(text_runner.predict([item], {"max_new_tokens": 8})) == [""]


def test_trim_at_eos():
    from worker.runners.text import trim_at_eos

    assert trim_at_eos([5, 6, 0, 7, 0], {0}) == [5, 6]
    assert trim_at_eos([5, 6], {0}) == [5, 6]
    assert trim_at_eos([9, 5], {9, 5}) == []


def _draw(sampler, logits: torch.Tensor, draws: int) -> torch.Tensor:
    counts = torch.zeros(logits.shape[-1])
    for _ in range(draws):
        scores = sampler(None, logits.clone())
        assert torch.isinf(scores).sum() == logits.numel() - 1, "exactly one token left"
        counts[scores[0].argmax()] += 1
    return counts / draws


def test_seeded_sampler_follows_the_distribution():
    from worker.runners.sampling import SeededSampler

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    plain = _draw(SeededSampler([1], 1.0, 0, 1.0), logits, 2000)
    assert torch.allclose(plain, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)
    top_k = _draw(SeededSampler([2], 1.0, 2, 1.0), logits, 1000)
    assert top_k[2:].sum() == 0 and torch.allclose(top_k[:2], torch.tensor([0.625, 0.375]), atol=0.05)
    top_p = _draw(SeededSampler([3], 1.0, 0, 0.75), logits, 1000)
    assert top_p[2:].sum() == 0, "0.5 + 0.3 covers top_p 0.75; the rest is cut"
    greedy = _draw(SeededSampler([4], 1.0, 0, 0.0), logits, 50)
    assert greedy[0] == 1.0


def _sampler(seeds: list[int], temperature=1.0, top_k=0, top_p=1.0):
    from worker.runners.sampling import SeededSampler

    return SeededSampler(seeds, temperature, top_k, top_p)


def _run(sampler, logits: torch.Tensor, steps: int) -> torch.Tensor:
    """(rows, steps) tokens the sampler picks, step after step, from the same logits."""
    return torch.cat([sampler(None, logits.clone()).argmax(dim=-1, keepdim=True) for _ in range(steps)], dim=1)


SAMPLER_SETTINGS = [
    {},
    {"temperature": 0.6},
    {"top_k": 5},
    {"top_p": 0.8},
    {"temperature": 1.5, "top_k": 7, "top_p": 0.9},
]


@pytest.mark.parametrize("settings", SAMPLER_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "plain")
def test_seeded_sampler_rows_are_independent(settings):
    """Each row picks the same tokens alone as in any batch, over more steps than one chunk."""
    from worker.runners.sampling import SeededSampler

    torch.manual_seed(0)
    logits = torch.randn(5, 60)
    seeds = [11, 12, 13, 14, 15]
    steps = SeededSampler.CHUNK + 9
    batched = _run(_sampler(seeds, **settings), logits, steps)
    for row, seed in enumerate(seeds):
        assert torch.equal(_run(_sampler([seed], **settings), logits[row : row + 1], steps)[0], batched[row])
    reordered = _run(_sampler(seeds[::-1], **settings), logits.flip(0), steps)
    assert torch.equal(reordered, batched.flip(0))
    assert len(set(batched[0].tolist())) > 1, "a sampler, not a constant"


def test_seeded_sampler_shorter_run_is_a_prefix():
    """Step t's uniform depends on (seed, t) only, so stopping early never changes earlier tokens."""
    logits = torch.randn(3, 50)
    long = _run(_sampler([1, 2, 3], top_p=0.9), logits, 70)
    assert torch.equal(_run(_sampler([1, 2, 3], top_p=0.9), logits, 12), long[:, :12])


@pytest.mark.parametrize("settings", SAMPLER_SETTINGS[:4], ids=["plain", "temperature", "top_k", "top_p"])
def test_seeded_sampler_never_picks_an_impossible_token(settings):
    logits = torch.log(torch.tensor([[0.0, 0.4, 0.0, 0.3, 0.3, 0.0]]))
    picked = set(_run(_sampler([7], **settings), logits, 300)[0].tolist())
    assert picked <= {1, 3, 4} and len(picked) > 1


@pytest.mark.parametrize("uniform", [0.0, 0.5, 1.0 - 2**-24, 1.0])
@pytest.mark.parametrize("settings", SAMPLER_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "plain")
def test_seeded_sampler_edges_of_the_uniform_stay_on_kept_tokens(settings, uniform):
    """Even a uniform that rounds up to the total mass lands on a token that has mass."""
    sampler = _sampler([0], **settings)
    logits = torch.log(torch.tensor([[0.0, 0.3, 0.0, 0.3, 0.4, 0.0, 0.0]])).repeat(2, 1)
    logits[1] = logits[1].flip(0)
    chosen = sampler._choose(logits, torch.full((2, 1), uniform))
    for row in range(2):
        assert torch.isfinite(logits[row, chosen[row, 0]])


def test_seeded_sampler_top_k_with_top_p_and_temperature_follows_the_distribution():
    """Temperature 0.5 squares the probabilities; top-k 3 keeps 0.4^2, 0.3^2, 0.2^2 (0.29
    in all); top-p 0.8 of that keeps the first two (0.16 + 0.09 = 0.25 >= 0.232)."""
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    drawn = _draw(_sampler([5], temperature=0.5, top_k=3, top_p=0.8), logits, 2000)
    assert drawn[2:].sum() == 0 and torch.allclose(drawn[:2], torch.tensor([0.64, 0.36]), atol=0.04)
