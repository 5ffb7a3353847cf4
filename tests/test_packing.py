"""Padding-free training forwards (gad.packing, method.max_tokens_per_micro_batch) must change nothing
but the compute: outputs, losses and every network's gradients equal the padded path's, in float64."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import TINY
from hydra.utils import instantiate
from test_prompt_sharing import gad_module, grouped_rows

from gad.models import load_student
from gad.packing import packed_forward_after_prompt, packed_response_logits, plan_packs
from gad.prompt_sharing import forward_after_prompt


def test_packs_respect_the_budget_and_hold_every_unit_once():
    rng = random.Random(0)
    sizes = [rng.choice([1, 3, 7, 20, 45]) for _ in range(60)] + [130]  # the last is over the budget
    packs = plan_packs(sizes, 50)
    assert sorted(u for p in packs for u in p) == list(range(len(sizes)))
    assert [60] in packs  # alone
    assert all(sum(sizes[u] for u in p) <= 50 for p in packs if p != [60])
    assert len(packs) <= sum(sizes) // 50 + 3  # first fit decreasing leaves little room unused


def test_packed_rows_give_the_padded_outputs_and_gradients_and_stay_apart():
    torch.manual_seed(0)
    model = load_student(config=TINY).double().train()
    rows = grouped_rows()
    real = rows[3].bool()
    padded = forward_after_prompt(model, *rows, logits_to_keep=rows[2].size(1) + 1)[:, :-1][real]
    packed = packed_response_logits(model, *rows)
    torch.testing.assert_close(packed, padded, atol=1e-12, rtol=1e-10)
    weight = torch.randn(packed.shape, dtype=torch.float64)
    params = list(model.parameters())
    for a, b in zip(
        torch.autograd.grad((padded * weight).sum(), params), torch.autograd.grad((packed * weight).sum(), params)
    ):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)
    # A trunk's hidden states, laid out as the padded forward's (the discriminator reads them).
    trunk = model.base_model
    valid = torch.cat([torch.ones(12, 1), rows[3]], dim=1).bool()
    torch.testing.assert_close(
        packed_forward_after_prompt(trunk, *rows)[valid], forward_after_prompt(trunk, *rows)[valid]
    )
    # No row sees another: changing row 0's tokens changes only row 0's logits.
    changed = [x.clone() for x in rows]
    changed[2][0] = (changed[2][0] + 1) % 256
    after = packed_response_logits(model, *changed)
    first = int(real[0].sum())
    assert not torch.allclose(after[:first], packed[:first])
    # Bit-exact on purpose: the same pack layout through the same kernels; another row's values enter no sum of
    # these rows (the mask's -inf gives exact zeros), so any difference is a leak, not rounding.
    torch.testing.assert_close(after[first:], packed[first:], atol=0, rtol=0)


def gad_step(budget, *overrides):
    """One adversarial GAD step in float64 (G with PPO + k3 KL to a reference that differs from it, and
    alpha x CE): D's scores, the metrics and both networks' gradients, plus the micro-batches' token counts."""
    cfg, module = gad_module(
        "data.batch_size=4",
        "method.num_samples=3",
        "method.micro_batch_size=8",
        "method.alpha=0.5",
        f"method.max_tokens_per_micro_batch={budget}",
        *overrides,
    )
    module.double()
    data = instantiate(cfg.data, tokenizer=module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.completed_steps = module.warmup_steps
    module.start_adversarial_phase()
    with torch.no_grad():  # a reference away from G, so the KL term has a gradient
        for p in module.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grads, tokens = {}, []
    module.manual_backward = lambda loss: loss.backward()
    module.step_optimizer = lambda name: grads.setdefault(
        name, [p.grad.clone() for p in module.networks[name].module.parameters() if p.requires_grad]
    )
    rollout = module.rollout(batch)
    hooks = [
        m.register_forward_pre_hook(lambda _, args, kw: tokens.append(kw["input_ids"].numel()), with_kwargs=True)
        for m in (module.generator, module.discriminator.trunk, module.reference)
    ]
    scores, d_metrics = module.discriminator_step(batch, rollout, update=True)
    g_metrics = module.policy_step(batch, rollout, rewards=scores.student)
    for hook in hooks:
        hook.remove()
    return scores, {**d_metrics, **g_metrics}, grads, tokens


@pytest.mark.parametrize("budget", [40, 100000], ids=["many_packs", "one_pack"])
def test_a_packed_gad_step_equals_the_padded_one(budget):
    want_scores, want, want_grads, padded_tokens = gad_step("null", "method.share_prompt=false")
    scores, got, grads, packed_tokens = gad_step(budget)
    torch.testing.assert_close(scores.teacher, want_scores.teacher, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(scores.student, want_scores.student, atol=1e-10, rtol=1e-9)
    for key in ("train/d_loss", "train/d_acc", "train/g_loss", "train/kl", "train/entropy", "train/sft_loss"):
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-6, abs=1e-12), key  # float32 accumulators
    assert want["train/kl"].item() > 0 and want["train/sft_loss"].item() > 0
    for name in ("generator", "discriminator"):
        for a, b in zip(want_grads[name], grads[name]):
            torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)
    assert sum(packed_tokens) < sum(padded_tokens)
    if budget == 40:
        assert len(packed_tokens) > 6  # many micro-batches, prompts out of order: scores and rewards still line up


def test_warmup_cross_entropy_and_validation_are_the_same_packed():
    results = []
    for budget in ("null", 30):
        cfg, module = gad_module("data.batch_size=6", f"method.max_tokens_per_micro_batch={budget}")
        module.double()
        module.manual_backward = lambda loss: loss.backward()
        data = instantiate(cfg.data, tokenizer=module.tokenizer)
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        ce = module.sft_backward(batch)
        module.validation_step(batch, 0)
        results.append((ce, module.val_nll.compute(), [p.grad for p in module.generator.parameters()]))
    (ce0, nll0, g0), (ce1, nll1, g1) = results
    # float32 accumulators: the sums themselves are rounded; the gradients are float64 throughout
    assert ce1.item() == pytest.approx(ce0.item(), rel=1e-6) and nll1.item() == pytest.approx(nll0.item(), rel=1e-6)
    assert nll0.item() == pytest.approx(ce0.item(), rel=1e-6)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)
