"""The seeded sampler's counter-based draws and its guards (worker/runners/sampling.py)."""
from __future__ import annotations

import pytest
import torch

from worker.runners.sampling import SeededSampler, counter_uniforms, mix64, row_keys

MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    """SplitMix64's output function in plain Python integers (the reference)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _reference_uniform(seed: int, step: int) -> float:
    state = (_mix(seed & MASK) + (step + 1) * 0x9E3779B97F4A7C15) & MASK
    return (_mix(state) >> 40) / 2**24


SEEDS = [0, 1, 42, 2**31 - 1, 2**63 - 1, 2**63, 2**64 - 1, 123_456_789_012_345]


def test_uniforms_equal_splitmix64_in_plain_integers():
    """The int64 tensor arithmetic wraps and shifts as unsigned 64-bit arithmetic does."""
    uniforms = counter_uniforms(row_keys(SEEDS, "cpu"), 3, 40)
    assert uniforms.dtype == torch.float32 and uniforms.shape == (len(SEEDS), 40)
    expected = [[_reference_uniform(seed, 3 + step) for step in range(40)] for seed in SEEDS]
    assert uniforms.tolist() == expected


def test_mix64_agrees_with_the_reference_on_random_words():
    words = torch.randint(-(2**63), 2**63 - 1, (5_000,), dtype=torch.int64, generator=torch.Generator().manual_seed(1))
    mixed = mix64(words).tolist()
    assert [value & MASK for value in mixed] == [_mix(word & MASK) for word in words.tolist()]


def test_a_step_s_uniform_depends_on_the_seed_and_the_step_only():
    keys = row_keys([7, 8, 9], "cpu")
    whole = counter_uniforms(keys, 0, 100)
    assert torch.equal(counter_uniforms(keys, 37, 5), whole[:, 37:42])
    assert torch.equal(counter_uniforms(row_keys([8], "cpu"), 0, 100)[0], whole[1])


def test_uniforms_are_uniform():
    values = counter_uniforms(row_keys(range(64), "cpu"), 0, 1_000).flatten()
    assert values.min() >= 0 and values.max() < 1
    deciles = torch.histc(values, bins=10, min=0, max=1) / values.numel()
    assert torch.allclose(deciles, torch.full((10,), 0.1), atol=0.01)
    assert len(set(values.tolist())) > 0.98 * values.numel()


def test_sampler_keys_live_on_the_scores_device_and_no_host_generator_is_used(monkeypatch):
    def no_host_draws(*_args, **_kwargs):
        raise AssertionError("the sampler drew from a torch.Generator")

    sampler = SeededSampler([1, 2, 3], temperature=1.0, top_k=0, top_p=0.9)
    monkeypatch.setattr(torch, "rand", no_host_draws)
    monkeypatch.setattr(torch, "Generator", no_host_draws)
    scores = torch.randn(3, 50)
    out = sampler(None, scores)
    assert sampler._keys.device == scores.device and sampler._uniforms.device == scores.device
    assert (torch.isfinite(out).sum(dim=-1) == 1).all()


@pytest.mark.parametrize("settings", [{}, {"top_k": 3}, {"top_p": 0.8}, {"temperature": 0.0}, {"temperature": 0.5}],
                         ids=["plain", "top_k", "top_p", "greedy", "temperature"])
def test_nan_scores_are_never_picked_and_a_row_of_nothing_ends(settings):
    params = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **settings}
    sampler = SeededSampler([5, 6, 7, 8], fallback_token=2, **params)
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([
        [0.0, nan, 1.0, nan, 0.5, -inf],  # NaN: impossible
        [nan] * 6,  # nothing left: the fallback (end of sequence)
        [-inf] * 6,  # every token banned: the same
        [0.0, 1.0, inf, 2.0, -inf, nan],  # +inf: certain
    ])
    for _ in range(50):
        chosen = sampler(None, scores.clone()).argmax(dim=-1).tolist()
        assert chosen[0] in {0, 2, 4}
        assert chosen[1:] == [2, 2, 2]


def test_without_a_fallback_an_empty_row_still_gets_a_token_and_others_are_unharmed():
    sampler = SeededSampler([1, 2], temperature=1.0, top_k=0, top_p=0.9)
    scores = torch.tensor([[float("nan")] * 4, [0.0, float("-inf"), 0.0, float("-inf")]])
    for _ in range(20):
        chosen = sampler(None, scores.clone()).argmax(dim=-1).tolist()
        assert 0 <= chosen[0] < 4 and chosen[1] in {0, 2}


def test_top_k_never_sorts_the_whole_vocabulary(monkeypatch):
    """top_k takes `topk` (k candidates), also with top_p; only top_p alone sorts the vocabulary."""
    real_sort = torch.sort

    def small_sorts_only(tensor, *args, **kwargs):
        assert tensor.shape[-1] <= 4, "sorted the whole vocabulary"
        return real_sort(tensor, *args, **kwargs)

    monkeypatch.setattr(torch, "sort", small_sorts_only)
    sampler = SeededSampler([3], temperature=0.8, top_k=4, top_p=0.9)
    picked = {int(sampler(None, torch.arange(100.0).view(1, -1) / 10).argmax()) for _ in range(40)}
    assert picked <= {96, 97, 98, 99} and len(picked) > 1


@pytest.mark.parametrize("settings", [{"top_p": 0.9}, {"top_k": 20}, {"top_k": 20, "top_p": 0.9}, {}],
                         ids=["top_p", "top_k", "top_k_top_p", "plain"])
def test_near_ties_that_swap_places_do_not_move_the_draws(settings):
    """Pairs of tokens with equal logits, nudged by 1e-5 one way and then the other (as
    float rounding in another batch shape does), swap places in a sort by probability;
    the draws walk token ids, so almost every draw picks the same token both times (only
    a pair straddling the nucleus's cut-off can differ; in probability order every one did)."""
    base = (torch.randn(25, generator=torch.Generator().manual_seed(3)) * 2).repeat_interleave(2)
    nudge = torch.tensor([1e-5, -1e-5]).repeat(25)
    rows, steps = 400, 5
    params = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **settings}
    one, other = SeededSampler(range(rows), **params), SeededSampler(range(rows), **params)
    up, down = (base + nudge).expand(rows, -1), (base - nudge).expand(rows, -1)
    differing = sum(int((one(None, up.clone()).argmax(-1) != other(None, down.clone()).argmax(-1)).sum())
                    for _ in range(steps))
    assert differing <= 0.03 * rows * steps
