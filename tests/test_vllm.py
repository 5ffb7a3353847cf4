"""vLLM as the rollout engine (gad.vllm_rollout), on a tiny random Qwen2 student: one engine for the module.

Needs vLLM: the environment .ci/vllm-env builds (CPU); the second step of .ci/run
runs these files in their own environment; the main suite skips them. Log-probs are compared, not only
tokens: a stale output layer leaves greedy tokens of a random model unchanged.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run's second step runs this file")

import torch  # noqa: E402
from conftest import PAD, ROOT  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from gad.config.rollout import RolloutEngineConfig  # noqa: E402
from gad.config.typed import typed  # noqa: E402
from gad.errors import GADError  # noqa: E402
from gad.losses import rollout_correction  # noqa: E402
from gad.models import add_lora, load_student, plain_from_state  # noqa: E402
from gad.prompt_sharing import forward_after_prompt  # noqa: E402
from gad.vllm_rollout import (  # noqa: E402
    EngineOptions,
    VLLMRollout,
    VLLMSampler,
    check_world_size,
    row_seeds,
    student_weights,
)

T = 0.9
EOS = [258, *range(0, 256, 16)]  # the model's own eos and a sixteenth of the bytes: rows end at different steps
CONFIG = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").student.config)


def student(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return load_student(config={**CONFIG, **overrides}).eval()


@pytest.fixture(scope="module")
def model():
    return student(initializer_range=0.2)


@pytest.fixture(scope="module")
def engine(model):
    engine = VLLMRollout.build(model, dtype=torch.float32, seed=0, options=EngineOptions(max_model_len=64))
    yield engine
    engine.close()


def prompts(rows: int = 4, width: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (rows,), generator=g)
    mask = (torch.arange(width) >= width - lengths[:, None]).long()
    return torch.randint(0, 256, (rows, width), generator=g).masked_fill(mask == 0, PAD), mask


def draw(engine, *, seed=5, num_samples=3, max_new_tokens=16, rows=4, temperature=T):
    ids, mask = prompts(rows)
    return engine.sample(
        ids,
        mask,
        num_samples=num_samples,
        temperature=temperature,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_ids=EOS,
        pad_id=PAD,
        rollout_seed=seed,
    )


def training_logprobs(model, rollout, temperature=T) -> torch.Tensor:
    """What the policy loss computes: log-softmax(logits / T) of each sampled token, teacher-forced."""
    with torch.no_grad():
        logits = forward_after_prompt(
            model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
        )[:, :-1]
        logp = torch.log_softmax(logits.float() / temperature, -1)
        return logp.gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1) * rollout.response_mask


def gap(model, rollout, logp) -> float:
    return float((training_logprobs(model, rollout) - logp).abs().max())


def test_engine_logprobs_are_the_training_forwards(engine, model):
    engine.push_weights(model)
    rollout, logp = draw(engine)
    lengths = rollout.lengths.tolist()
    assert len(set(lengths)) > 1 and min(lengths) < 16  # some rows end on an eos, at different steps
    # exactly the listed ids end a row: the first one in a row is its last real token
    for row, n in zip(rollout.response_ids, lengths):
        ends = [i for i, t in enumerate(row[:n].tolist()) if t in EOS]
        assert ends in ([n - 1], []) and (ends or n == 16)
    assert gap(model, rollout, logp) < 1e-4
    assert float((logp * rollout.response_mask).sum()) < 0 and (logp[rollout.response_mask == 0] == 0).all()


def test_after_an_update_only_the_push_brings_the_engine_level(engine, model):
    updated = student(initializer_range=0.2)
    updated.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.push_weights(model)
    rollout, logp = draw(engine)
    assert gap(updated, rollout, logp) > 1e-2  # the engine still samples the old weights
    engine.push_weights(updated)
    rollout, logp = draw(engine)
    assert gap(updated, rollout, logp) < 1e-4
    engine.push_weights(model)  # and back: the old policy exactly
    rollout, logp = draw(engine)
    assert gap(model, rollout, logp) < 1e-4


def test_without_repacking_the_tied_output_layer_it_stays_stale(engine, model, monkeypatch):
    """Why push_weights repacks the output layer: vLLM's CPU reload leaves a tied head on the old embedding."""
    import gad.vllm_weights as vw

    assert model.config.tie_word_embeddings
    engine.push_weights(model)
    updated = student(initializer_range=0.2)
    updated.load_state_dict(model.state_dict())
    with torch.no_grad():
        updated.model.embed_tokens.weight.add_(0.05 * torch.randn_like(updated.model.embed_tokens.weight))
    monkeypatch.setattr(vw, "_output_layer_repack", lambda worker: None)
    engine.push_weights(updated)
    rollout, logp = draw(engine)
    assert gap(updated, rollout, logp) > 1e-3
    monkeypatch.undo()
    engine.push_weights(updated)
    rollout, logp = draw(engine)
    assert gap(updated, rollout, logp) < 1e-4
    engine.push_weights(model)


def test_samples_are_softmax_of_logits_over_t_whatever_the_models_generation_config(engine, model):
    """The first token's frequencies over many draws match softmax(logits / T) (the L1 distance within
    sampling noise), from a student whose generation config would cut it to its top 20 tokens, top_p 0.8,
    and penalise repeats. A near-flat student: a top-20 or top-p cut would move most of the mass."""
    flat = student(seed=1, initializer_range=0.02)
    flat.generation_config.top_k, flat.generation_config.top_p = 20, 0.8
    flat.generation_config.repetition_penalty = 1.5
    engine.push_weights(flat)
    ids, mask = prompts(rows=1)
    n = 8000
    rollout, _ = engine.sample(
        ids,
        mask,
        num_samples=n,
        temperature=T,
        top_p=1.0,
        max_new_tokens=1,
        eos_ids=EOS,
        pad_id=PAD,
        rollout_seed=11,
    )
    engine.push_weights(model)
    with torch.no_grad():
        logits = flat(ids[:, mask[0].bool()]).logits[0, -1]
    probs = torch.softmax(logits.double() / T, -1)
    freq = torch.bincount(rollout.response_ids[:, 0], minlength=probs.numel()).double() / n
    bound = 4 * (probs.numel() / n) ** 0.5
    assert 2 * (1 - probs.topk(20).values.sum()) > 2 * bound  # what a top-20 cut would cost: well past the bound
    assert (freq - probs).abs().sum() < bound


def test_each_row_is_a_function_of_its_seed(engine, model):
    engine.push_weights(model)
    a, _ = draw(engine, seed=3)
    b, _ = draw(engine, seed=3)
    c, _ = draw(engine, seed=4)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    # the samples of one prompt differ from each other (each row its own seed)
    assert len({tuple(r.tolist()) for r in a.response_ids[:3]}) == 3
    seeds = row_seeds(3, 12)
    assert len(set(seeds)) == 12 and seeds[:4] == row_seeds(3, 4)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*is deprecated:FutureWarning")  # peft asks transformers
def test_lora_student_is_pushed_merged(engine, model):
    peft = pytest.importorskip("peft")
    assert peft
    lora = add_lora(student(initializer_range=0.2), r=4, alpha=8)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # adapters that change the policy
    before = {k: v.detach().clone() for k, v in lora.state_dict().items()}
    merged = plain_from_state(lora, {k: v.clone() for k, v in before.items()})
    pushed = dict(student_weights(lora))
    plain = {k: v for k, v in merged.state_dict().items() if k != "lm_head.weight"}
    assert pushed.keys() == plain.keys()
    assert max(float((pushed[k] - plain[k]).abs().max()) for k in plain) < 1e-6
    engine.push_weights(lora)
    rollout, logp = draw(engine)
    assert gap(merged, rollout, logp) < 1e-4
    assert all(torch.equal(v, before[k]) for k, v in lora.state_dict().items())  # the student is not touched
    engine.push_weights(model)


def test_the_sampler_seam_gives_the_engines_rows(engine, model):
    """VLLMSampler: the Sampler seam's two calls (sync_weights(module), sample(token-id lists) -> rows) over the engine."""
    from types import SimpleNamespace

    sampler = VLLMSampler(EngineOptions(), eos_ids=EOS, seed=0, engine=engine)
    updated = student(initializer_range=0.2)
    updated.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampler.sync_weights(SimpleNamespace(generator=updated))  # no trainer: every call pushes
    ids, mask = prompts()
    rows = sampler.sample(
        [r[m.bool()].tolist() for r, m in zip(ids, mask)],
        num_samples=3,
        temperature=T,
        top_p=1.0,
        max_new_tokens=16,
        seed=5,
    )
    rollout, logp = draw(engine)  # the same seed through the padded-batch call
    assert [len(r) for r in rows.response_ids] == rollout.lengths.tolist()
    for i, (row, lp) in enumerate(zip(rows.response_ids, rows.logprobs)):
        assert row == rollout.response_ids[i, : len(row)].tolist()
        assert torch.allclose(torch.tensor(lp), logp[i, : len(row)])
    assert gap(updated, rollout, logp) < 1e-4
    engine.push_weights(model)


def test_a_too_long_prompt_and_several_ranks_are_refused_in_one_line(engine):
    with pytest.raises(GADError, match="max_model_len=64"):
        draw(engine, max_new_tokens=60)
    with pytest.raises(GADError, match="one training process"):
        check_world_size(2)


def test_truncated_importance_weights():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.tensor([[1, 1, 0]])
    w, total = rollout_correction(logp, engine, mask, cap=1.2)
    assert torch.allclose(w, torch.tensor([[1.2, torch.exp(torch.tensor(-1.0)), 0.0]]))
    assert abs(float(total) - 1.5) < 1e-6
    w, _ = rollout_correction(logp, engine, mask, cap=None)
    assert torch.equal(w, torch.ones_like(logp))


def test_the_engine_knobs_are_checked():
    assert typed(RolloutEngineConfig, {}, "method.rollout").engine == "hf"
    for bad in ({"engine": "sglang"}, {"tis_cap": 0.5}, {"kv_cache_gb": 0}):
        with pytest.raises(GADError, match="method.rollout"):
            typed(RolloutEngineConfig, bad, "method.rollout")
