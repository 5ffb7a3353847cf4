"""Running each prompt once per group (gad.prompt_sharing) must change nothing but the time:
outputs, gradients and a whole GAD step equal the row-by-row path's, up to float rounding."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import PAD, ROOT, TINY
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gad.discriminator import Discriminator
from gad.fit import build_module
from gad.models import load_student
from gad.prompt_sharing import can_share_prompt, forward_after_prompt
from gad.rollout import generation_config, sample


def grouped_rows(prompts: int = 3, group: int = 4, width: int = 9, reply: int = 6, seed: int = 0):
    """Left-padded prompts of different lengths, each repeated `group` times, and right-padded
    replies of lengths 1..reply, as a rollout lays them out."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([width, width - 3, 2])[:prompts]
    prompt_mask = (torch.arange(width) >= width - lengths[:, None]).long()
    prompt_ids = torch.randint(0, 256, (prompts, width), generator=g).masked_fill(prompt_mask == 0, PAD)
    rows = prompts * group
    reply_lengths = torch.randint(1, reply + 1, (rows,), generator=g)
    reply_mask = (torch.arange(reply) < reply_lengths[:, None]).long()
    reply_ids = torch.randint(0, 256, (rows, reply), generator=g).masked_fill(reply_mask == 0, PAD)
    return (prompt_ids.repeat_interleave(group, 0), prompt_mask.repeat_interleave(group, 0), reply_ids, reply_mask)


def gradients(loss: torch.Tensor, model: torch.nn.Module) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def assert_same_gradients(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    scale = max(x.abs().max().item() for x in a)
    assert scale > 0
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("trunk", [False, True], ids=["causal_lm", "bare_trunk"])
def test_shared_prompt_gives_the_row_by_row_outputs_and_gradients(trunk):
    torch.manual_seed(0)
    model = load_student(config=TINY).train()
    model = model.base_model if trunk else model
    rows = grouped_rows()
    kwargs = {} if trunk else {"logits_to_keep": rows[2].size(1) + 1}
    plain = forward_after_prompt(model, *rows, group_size=1, **kwargs)
    shared = forward_after_prompt(model, *rows, group_size=4, **kwargs)
    assert shared.shape == plain.shape == (12, 7, 32 if trunk else 259)
    valid = torch.cat([torch.ones(12, 1), rows[3]], dim=1).bool()  # last prompt token + real reply tokens
    torch.testing.assert_close(shared[valid], plain[valid], atol=2e-5, rtol=1e-4)
    weight = torch.randn(plain.shape[-1])
    loss = lambda out: ((out * weight).sum(-1) * valid).sum()  # noqa: E731
    assert_same_gradients(gradients(loss(plain), model), gradients(loss(shared), model))


def test_discriminator_scores_and_gradients_do_not_depend_on_sharing():
    torch.manual_seed(0)
    d = Discriminator.from_student(load_student(config=TINY)).train()
    rows = grouped_rows(group=5)
    plain, shared = d(*rows), d(*rows, group_size=5)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    assert plain.std() > 0  # rows scored at different tokens, not one constant
    assert_same_gradients(gradients(plain.square().sum(), d), gradients(shared.square().sum(), d))


def test_gradient_checkpointing_takes_the_row_by_row_path():
    """Transformers drops a cache under checkpointing in training: sharing would silently lose the prompt."""
    torch.manual_seed(0)
    model = load_student(config=TINY).train()
    rows = grouped_rows()
    want = forward_after_prompt(model, *rows, group_size=4).detach()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert not can_share_prompt(model)
    torch.testing.assert_close(forward_after_prompt(model, *rows, group_size=4), want, atol=1e-6, rtol=1e-5)
    assert can_share_prompt(model.eval())  # eval mode (the reference, scoring): checkpointing is off


def test_rows_that_do_not_share_their_prompt_are_refused():
    model = load_student(config=TINY)
    prompt_ids, prompt_mask, reply_ids, reply_mask = grouped_rows()
    prompt_ids[1, -1] = 7  # row 1 no longer repeats row 0's prompt
    with pytest.raises(ValueError, match="groups of 4"):
        forward_after_prompt(model, prompt_ids, prompt_mask, reply_ids, reply_mask, group_size=4)


# Training forwards share prompts on the padded path only (a packed micro-batch holds each sequence whole).
PADDED = "method.max_tokens_per_micro_batch=null"


def gad_module(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/gad-test-out", *overrides])
    torch.manual_seed(0)
    return cfg, build_module(cfg)


@pytest.mark.parametrize("micro_batch, checkpointing, grouped", [(8, False, True), (2, False, False), (8, True, False)])
def test_generator_micro_batches_hold_whole_groups_only_when_sharing(micro_batch, checkpointing, grouped):
    """A group larger than method.micro_batch_size is never forced into one forward (memory stays as configured)."""
    _, module = gad_module(
        "method.num_samples=3",
        f"method.micro_batch_size={micro_batch}",
        PADDED,
        f"model.student.gradient_checkpointing={checkpointing}",
    )
    module.train()
    rollout = module.rollout({"prompt_ids": torch.tensor([[5, 6, 7]] * 4), "prompt_mask": torch.ones(4, 3).long()})
    assert module.shares_prompt(module.generator) is grouped
    sizes = [sl.stop - sl.start for sl in module.sample_chunks(rollout, module.shares_prompt(module.generator))]
    assert sum(sizes) == 12
    assert all(size % 3 == 0 for size in sizes) if grouped else all(size <= micro_batch for size in sizes)
    assert module.shares_prompt(module.reference) is (micro_batch >= 3)  # eval mode: checkpointing is off


def gad_step(share: bool):
    """One adversarial GAD step on the toy world from fixed weights: D's scores, the metrics, and
    each network's gradients (what its optimizer would step on)."""
    cfg, module = gad_module(
        "data.batch_size=4", "method.num_samples=3", "method.micro_batch_size=8", PADDED, f"method.share_prompt={share}"
    )
    data = instantiate(cfg.data, tokenizer=module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.completed_steps = module.warmup_steps  # the adversarial phase
    module.start_adversarial_phase()
    # No trainer here: a plain backward, and each network's gradients taken where its optimizer would step.
    grads = {}
    module.manual_backward = lambda loss: loss.backward()
    module.step_optimizer = lambda name: grads.setdefault(
        name, [p.grad for p in module.networks[name].module.parameters() if p.requires_grad]
    )
    rollout = module.rollout(batch)
    scores, d_metrics = module.discriminator_step(batch, rollout, update=True)
    g_metrics = module.policy_step(batch, rollout, rewards=scores.student)
    return scores, {**d_metrics, **g_metrics}, grads


def test_a_gad_step_is_the_same_with_and_without_sharing():
    scores, metrics, grads = gad_step(share=True)
    want_scores, want_metrics, want_grads = gad_step(share=False)
    torch.testing.assert_close(scores.student, want_scores.student, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.teacher, want_scores.teacher, atol=1e-5, rtol=1e-4)
    for key in ("train/d_loss", "train/g_loss", "train/kl", "train/entropy"):
        assert metrics[key].item() == pytest.approx(want_metrics[key].item(), rel=1e-4, abs=1e-6), key
    assert set(grads) == {"generator", "discriminator"}
    for name in grads:
        assert_same_gradients(want_grads[name], grads[name])


def test_a_rollout_with_the_prompt_prefilled_once_samples_what_the_plain_one_does():
    torch.manual_seed(0)
    model = load_student(config=TINY).train()
    prompt_ids, prompt_mask, _, _ = grouped_rows(group=1)
    config = generation_config(max_new_tokens=6, eos_ids=[258], pad_id=PAD, temperature=1.0)
    rollouts = []
    for share in (False, True):
        torch.manual_seed(1)
        rollouts.append(
            sample(
                model,
                prompt_ids,
                prompt_mask,
                num_samples=4,
                config=config,
                eos_ids=torch.tensor([258]),
                micro_batch_size=8,
                share_prompt=share,
            )
        )
    plain, shared = rollouts
    assert torch.equal(shared.prompt_ids, plain.prompt_ids)
    # The shared prefill's logits equal the plain ones up to float rounding, so a draw that lands within rounding of
    # a boundary of the cumulative distribution (a few in a million draws) may pick the neighbouring token on some
    # CPU, and that row goes its own way after it. One such row of 12 is rounding; more would be a sharing bug.
    differing = (shared.response_ids != plain.response_ids).any(1).sum().item()
    assert differing <= 1, differing
    assert plain.response_ids.size(0) == 12 and len({tuple(r) for r in plain.response_ids.tolist()}) > 1
    assert model.training  # the mode is restored


def test_sharing_and_rollouts_use_the_current_cache_api():
    """transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40)."""
    model = load_student(config=TINY)
    rows = grouped_rows()
    config = generation_config(max_new_tokens=3, eos_ids=[258], pad_id=PAD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forward_after_prompt(model, *rows, group_size=4, logits_to_keep=rows[2].size(1) + 1)
        sample(
            model,
            rows[0][::4],
            rows[1][::4],
            num_samples=4,
            config=config,
            eos_ids=torch.tensor([258]),
            micro_batch_size=8,
            share_prompt=True,
        )
