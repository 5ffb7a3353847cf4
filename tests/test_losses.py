"""Each loss against values worked out by hand (math module, not torch)."""

import math

import pytest
import torch

from gad import losses


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_response_mask_stops_after_first_eos_and_keeps_unfinished():
    eos = torch.tensor([7, 9])
    ids = torch.tensor([[1, 2, 7, 0, 0], [1, 9, 7, 3, 0], [1, 2, 3, 4, 5]])
    expected = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert losses.response_mask(ids, eos).tolist() == expected


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert losses.position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_masked_mean_is_token_mean_and_safe_when_empty():
    v = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert losses.masked_mean(v, m).item() == pytest.approx(2.0)  # (1+2+3)/3, not mean of row means
    assert losses.masked_mean(v, torch.zeros_like(m)).item() == 0.0


def test_token_logprobs_use_the_sampling_temperature():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    tok = torch.tensor([1])
    for temp in (1.0, 0.5):
        z = [x / temp for x in (1.0, 2.0, 0.5)]
        want = z[1] - math.log(sum(math.exp(x) for x in z))
        assert losses.token_logprobs(logits, tok, temp).item() == pytest.approx(want, abs=1e-6)


def test_token_entropy_uniform_and_peaked():
    assert losses.token_entropy(torch.zeros(4)).item() == pytest.approx(math.log(4), abs=1e-6)
    assert losses.token_entropy(torch.tensor([100.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_bradley_terry_pairs_each_sample_with_its_own_teacher():
    t = torch.tensor([1.0, -1.0])
    s = torch.tensor([[0.0, 2.0], [-3.0, -1.0]])
    pairs = [1 - 0, 1 - 2, -1 + 3, -1 + 1]
    want = sum(-math.log(sig(d)) for d in pairs) / 4
    assert losses.bradley_terry_loss(t, s).item() == pytest.approx(want, abs=1e-6)


def test_bce_discriminator_loss():
    t = torch.tensor([0.5])
    s = torch.tensor([[1.0, -2.0]])
    want = sum(-math.log(sig(0.5)) - math.log(1 - sig(x)) for x in (1.0, -2.0)) / 2
    assert losses.bce_discriminator_loss(t, s).item() == pytest.approx(want, abs=1e-6)


def test_discriminator_accuracy():
    t = torch.tensor([1.0, 0.0])
    s = torch.tensor([[0.0, 2.0], [-1.0, -2.0]])
    assert losses.discriminator_accuracy(t, s).item() == pytest.approx(0.75)


def test_group_advantages_normalise_per_prompt_with_unbiased_std():
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    adv = losses.group_advantages(r)
    std = math.sqrt(((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / 2)  # unbiased: divide by N - 1
    assert adv[0].tolist() == pytest.approx([-1 / (std + 1e-6), 0.0, 1 / (std + 1e-6)], abs=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no signal, no NaN (integers: the mean is exact)


def test_ppo_clip_loss_clips_only_in_the_advantage_direction():
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = losses.ppo_clip_loss(logp, old, adv, clip_ratio=0.2)
    # ratio 1.5, A>0: min(1.5, 1.2) -> 1.2 clipped; A<0: min(-1.5, -1.2) -> -1.5 unclipped
    # ratio 0.5, A>0: min(0.5, 0.8) -> 0.5 unclipped; A<0: min(-0.5, -0.8) -> -0.8 clipped
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8], abs=1e-6)
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_ppo_at_ratio_one_is_the_plain_policy_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    adv = torch.tensor([2.0, -3.0])
    loss, _ = losses.ppo_clip_loss(logp, logp.detach(), adv, clip_ratio=0.2)
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-2.0, 3.0])


def test_k3_kl_matches_formula_and_is_zero_at_equality():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    d = -1.5 + 1.0
    assert losses.k3_kl(logp, ref).tolist() == pytest.approx([math.exp(d) - d - 1, 0.0], abs=1e-7)
    # >= 0 in exact arithmetic; exp(d) - d - 1 for a tiny d rounds to a few float32 ulps either side of 0
    assert (losses.k3_kl(torch.randn(100), torch.randn(100)) >= -1e-6).all()
