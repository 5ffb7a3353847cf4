"""vLLM as the rollout engine on a real pretrained student, SmolLM2-135M-Instruct (`model=smollm2-135m`):
one in-process engine for the module's log-prob tests, and `src/train.py ... method.rollout.engine=vllm` at
tiny shapes (2 prompts x 2 samples x 8 new tokens) for GAD (warm-up, adversarial, resume, export) and KD.

Needs vLLM: the environment .ci/vllm-env builds (CPU); the second step of .ci/run
runs this file in its own environment; the main suite skips it.
"""

from __future__ import annotations

import resource
import shutil

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: .ci/run's second step runs this file")

import torch  # noqa: E402
from conftest import assert_one_line_error, run_entry  # noqa: E402
from test_real_student import GAD, dump, state, steps, tiny, train  # noqa: E402, F401 (dump: a fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from gad.prompt_sharing import forward_after_prompt  # noqa: E402
from gad.vllm_rollout import EngineOptions, VLLMRollout  # noqa: E402

T = 0.8
ENGINE = ["method.rollout.engine=vllm", "method.rollout.kv_cache_gb=1", "method.profile=true"]


@pytest.fixture(scope="module")
def student(smollm2):
    return AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(student):
    engine = VLLMRollout.build(student, dtype=torch.float32, seed=0, options=EngineOptions(max_model_len=256))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def chat(smollm2):
    tok = AutoTokenizer.from_pretrained(smollm2, padding_side="left")
    questions = ["What is the capital of France?", "Name a primary colour.", "Say hello in Spanish."]
    enc = tok.apply_chat_template(
        [[{"role": "user", "content": q}] for q in questions],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        padding=True,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"], [tok.eos_token_id], tok.pad_token_id


def draw(engine, chat, seed=1):
    ids, mask, eos, pad = chat
    return engine.sample(
        ids,
        mask,
        num_samples=2,
        temperature=T,
        top_p=1.0,
        max_new_tokens=24,
        eos_ids=eos,
        pad_id=pad,
        rollout_seed=seed,
    )


def gap(model, rollout, logp) -> float:
    with torch.no_grad():
        logits = forward_after_prompt(
            model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
        )[:, :-1]
        ref = torch.log_softmax(logits.float() / T, -1).gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)
    return float(((ref - logp) * rollout.response_mask).abs().max())


def test_smollm2_logprobs_before_and_after_an_update(engine, student, chat, smollm2):
    engine.push_weights(student)
    rollout, logp = draw(engine, chat)
    assert rollout.response_mask.sum() > 20
    assert gap(student, rollout, logp) < 1e-3  # float32: measured ~3e-5
    # one real gradient step on the sampled text moves the policy; the engine follows only after the push
    updated = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    updated.load_state_dict(student.state_dict())
    opt = torch.optim.SGD(updated.parameters(), lr=0.05)
    logits = forward_after_prompt(
        updated, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
    )[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rollout.response_ids.flatten(), reduction="none")
    (loss * rollout.response_mask.flatten()).sum().backward()
    opt.step()
    updated.eval()
    assert gap(updated, rollout, logp) > 1e-2
    engine.push_weights(updated)
    rollout2, logp2 = draw(engine, chat)
    assert gap(updated, rollout2, logp2) < 1e-3
    engine.push_weights(student)
    rollout3, logp3 = draw(engine, chat)
    assert torch.equal(rollout3.response_ids, rollout.response_ids)  # the old weights, the old samples
    assert torch.allclose(logp3, logp, atol=1e-4)


@pytest.fixture(scope="module")
def gad_run(tmp_path_factory, smollm2, dump):  # noqa: F811
    """1 warm-up step, then 2 adversarial steps, sampled by vLLM; checkpoints step_2 and last."""
    run = train(tmp_path_factory.mktemp("gad"), *tiny(smollm2, dump), *GAD, *ENGINE)
    yield run
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def test_gad_with_vllm_trains_logs_the_gap_resumes_and_exports(gad_run, smollm2, dump, tmp_path):  # noqa: F811
    rows = steps(gad_run)
    assert [float(r["train/phase"]) for r in rows] == [0, 1, 1]
    gaps = [float(r["train/rollout_logprob_gap"]) for r in rows[1:]]
    assert all(0 <= g < 1e-3 for g in gaps), gaps  # float32 engine and trainer: the same policy
    assert all(float(r["time/rollout"]) > 0 for r in rows)
    assert AutoModelForCausalLM.from_pretrained(gad_run / "student").config.model_type == "llama"
    resumed = train(
        tmp_path, *tiny(smollm2, dump), *GAD, *ENGINE, f"ckpt_path={gad_run / 'checkpoints' / 'step_000002.ckpt'}"
    )
    try:
        a, b = state(gad_run / "checkpoints" / "last.ckpt"), state(resumed / "checkpoints" / "last.ckpt")
        assert a.keys() == b.keys()
        assert not [k for k in a if not torch.equal(a[k], b[k])]
        assert [float(r["train/step"]) for r in steps(resumed)] == [3]
    finally:
        shutil.rmtree(resumed / "checkpoints", ignore_errors=True)


def test_kd_on_policy_with_vllm(smollm2, dump, tmp_path):  # noqa: F811
    """KD samples with the engine too (the teacher: the student's own folder, a local model)."""
    run = train(
        tmp_path,
        *tiny(smollm2, dump),
        "method=kd",
        "method.steps=2",
        "method.alpha_warmup_steps=0",
        "method.on_policy=true",
        "method.samples_per_prompt=2",
        f"method.teacher.path={smollm2}",
        "method.teacher.top_k=5",
        "callbacks.step_checkpoint=null",
        *ENGINE,
    )
    rows = steps(run)
    assert len(rows) == 2 and all(float(r["train/response_len"]) > 0 for r in rows)
    assert all(0 <= float(r["train/rollout_logprob_gap"]) < 1e-3 for r in rows)
    assert all(float(r["time/rollout"]) > 0 for r in rows)


def limit_file_size_to_1gb() -> None:
    # in the child: GAD's checkpoint of this student (~3.2 GB) fails with EFBIG; its export (~0.5 GB) would not
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, resource.RLIM_INFINITY))


def test_a_run_that_fails_with_the_engine_running_ends_in_its_one_error_line(smollm2, dump, tmp_path):  # noqa: F811
    """The engine shuts down with the run on an error too: before, its exit handler ran after the process group
    was gone and printed a traceback ("Invalid process group specified") under the run's own error."""
    proc = run_entry(
        "train.py",
        f"paths.log_dir={tmp_path}",
        f"paths.cache_dir={tmp_path}/cache",
        *tiny(smollm2, dump),
        *GAD,
        *ENGINE,
        preexec_fn=limit_file_size_to_1gb,
        timeout=1200,
    )
    assert_one_line_error(proc, "step_000002.ckpt", "file too large")
