"""KD maths (gad.kd_losses) against float64 NumPy written independently here, and the module's
blended loss at its two ends: alpha = 1 is SeqKD's loss (and gradient), alpha = 0 is pure KD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gad import kd_losses
from gad.config.kd_teacher import KDTeacherConfig
from gad.config.method import OptimizerConfig
from gad.data.datamodule import DistillDataModule
from gad.kd_teachers import build_teacher
from gad.kd_teachers.local import listed_topk
from gad.losses import masked_sum
from gad.methods import SeqKDModule
from gad.methods.kd import KDModule, at_tokens
from gad.models import load_student, load_tokenizer

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").student.config)


# ---------------------------------------------------------------- independent float64 references


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_full_kl(zt: np.ndarray, zs: np.ndarray, T: float) -> float:
    """KL(softmax(zt/T) || softmax(zs/T)) for one position."""
    p, q = np_softmax(zt / T), np_softmax(zs / T)
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))


def ref_topk_kl(ids: list[int], teacher_lp: list[float], zs: np.ndarray, T: float) -> float:
    """The documented top-k + remainder rule, spelled out with probabilities:
    buckets = listed tokens + 'other'; teacher other = 1 - sum p, student other = 1 - sum q;
    each side's buckets softened by p^(1/T) / sum p^(1/T); KL over the buckets."""
    p = [math.exp(v) for v in teacher_lp]
    p.append(max(0.0, 1.0 - sum(p)))
    q_full = np_softmax(zs)
    q = [q_full[i] for i in ids]
    q.append(1.0 - sum(q))
    pt = np.array(p) ** (1 / T)
    pt /= pt.sum()
    qt = np.array(q) ** (1 / T)
    qt /= qt.sum()
    return float(sum(a * math.log(a / b) for a, b in zip(pt, qt) if a > 0))


def masked_token_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float((values * mask).sum() / mask.sum())


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ---------------------------------------------------------------- pure maths


@pytest.mark.parametrize("T", [1.0, 2.0, 0.7])
def test_full_kl_matches_float64_reference(rng, T):
    B, R, V = 2, 5, 11
    zt, zs = rng.normal(size=(B, R, V)) * 3, rng.normal(size=(B, R, V)) * 3
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=float)
    got = kd_losses.full_kl(torch.tensor(zt), torch.tensor(zs), T)
    want = np.array([[ref_full_kl(zt[b, r], zs[b, r], T) for r in range(R)] for b in range(B)])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    loss = T**2 * masked_sum(got, torch.tensor(mask)) / mask.sum()
    assert abs(loss.item() - T**2 * masked_token_mean(want, mask)) < 1e-6
    assert (want > 1e-3).all()  # not a vacuous comparison


def test_full_kl_float32_inputs_close_to_float64(rng):
    zt, zs = rng.normal(size=(4, 50)) * 4, rng.normal(size=(4, 50)) * 4
    got = kd_losses.full_kl(torch.tensor(zt, dtype=torch.float32), torch.tensor(zs, dtype=torch.float32), 2.0)
    want = [ref_full_kl(zt[i], zs[i], 2.0) for i in range(4)]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 3.5])
def test_topk_kl_with_remainder_matches_float64_reference(rng, T):
    B, R, V, K = 2, 4, 13, 4
    zt, zs = rng.normal(size=(B, R, V)) * 2, rng.normal(size=(B, R, V)) * 2
    lt = np.log(np.apply_along_axis(np_softmax, -1, zt))
    ids = np.argsort(-lt, axis=-1)[..., :K].copy()
    ids[0, 1, 3] = ids[0, 1, 0]  # a padded slot, marked invalid below (and duplicating a real id)
    valid = np.ones((B, R, K), dtype=bool)
    valid[0, 1, 3] = False
    listed = np.take_along_axis(lt, ids, -1)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=float)
    got = kd_losses.topk_kl(torch.tensor(ids), torch.tensor(listed), torch.tensor(zs), T, torch.tensor(valid))
    want = np.zeros((B, R))
    for b in range(B):
        for r in range(R):
            keep = valid[b, r]
            want[b, r] = ref_topk_kl(list(ids[b, r][keep]), list(listed[b, r][keep]), zs[b, r], T)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    loss = T**2 * masked_sum(got, torch.tensor(mask)) / mask.sum()
    assert abs(loss.item() - T**2 * masked_token_mean(want, mask)) < 1e-6
    assert (want > 1e-4).all()


def test_topk_with_the_whole_vocabulary_is_the_full_kl(rng):
    V = 9
    zt, zs = rng.normal(size=(3, V)) * 2, rng.normal(size=(3, V)) * 2
    lt = torch.log_softmax(torch.tensor(zt), -1)
    ids = torch.argsort(lt, -1, descending=True)
    got = kd_losses.topk_kl(ids, torch.gather(lt, -1, ids), torch.tensor(zs), 2.0)
    torch.testing.assert_close(got, kd_losses.full_kl(torch.tensor(zt), torch.tensor(zs), 2.0), rtol=0, atol=1e-10)


def test_topk_at_temperature_one_is_the_coarse_grained_kl_and_below_the_full_kl(rng):
    zt, zs = rng.normal(size=(20, 30)) * 2, rng.normal(size=(20, 30)) * 2
    lt = torch.log_softmax(torch.tensor(zt), -1)
    vals, ids = lt.topk(5, -1)
    got = kd_losses.topk_kl(ids, vals, torch.tensor(zs), 1.0)
    assert (got <= kd_losses.full_kl(torch.tensor(zt), torch.tensor(zs), 1.0) + 1e-12).all()  # data processing
    same = kd_losses.topk_kl(ids, vals, torch.tensor(zt), 2.0)  # a student equal to the teacher
    torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-12)


def test_gradients_are_finite_with_empty_buckets():
    logits = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 0, 0, 0, 0]])
    valid = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    lp = torch.log_softmax(torch.randn(2, 6, dtype=torch.float64), -1)
    lp = torch.gather(lp, -1, ids)
    kd_losses.topk_kl(ids, lp, logits, 2.0, valid).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_full_kl_with_padded_embedding_tables(rng):
    """Same tokenizer, different embedding sizes: shared ids one by one, surplus rows one bucket."""
    zt, zs = rng.normal(size=(3, 10)), rng.normal(size=(3, 12))  # the student has 2 surplus rows
    got = kd_losses.full_kl(torch.tensor(zt), torch.tensor(zs), 2.0)
    for i in range(3):
        p, q = np_softmax(zt[i]), np_softmax(zs[i])
        pb, qb = np.append(p, 0.0), np.append(q[:10], q[10:].sum())
        pt, qt = pb**0.5 / (pb**0.5).sum(), qb**0.5 / (qb**0.5).sum()
        assert got[i].item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(pt, qt) if a > 0), abs=1e-12)
    # the other way round the student has no mass where the teacher has some: infinite
    assert torch.isinf(kd_losses.full_kl(torch.tensor(zs), torch.tensor(zt), 2.0)).all()


def test_blended_loss_and_alpha_warmup():
    ce, kl = torch.tensor(1.5, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)
    assert kd_losses.blended_loss(ce, kl, 0.5, 2.0).item() == pytest.approx(0.5 * 1.5 + 0.5 * 4 * 0.25, abs=1e-12)
    assert kd_losses.blended_loss(ce, kl, 1.0, 2.0).item() == pytest.approx(1.5, abs=1e-12)
    assert kd_losses.blended_loss(ce, kl, 0.0, 2.0).item() == pytest.approx(1.0, abs=1e-12)
    assert [kd_losses.alpha_at(s, 0.5, 4) for s in range(6)] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    assert kd_losses.alpha_at(0, 0.5, 0) == 0.5


def test_listed_topk_adds_the_scored_token_like_vllm():
    logp = torch.log_softmax(torch.tensor([[[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]]]), -1)
    d = listed_topk(logp, torch.tensor([[1, 0]]), 2)
    assert d.ids.tolist() == [[[0, 1, 1], [3, 2, 0]]]
    assert d.valid.tolist() == [[[True, True, False], [True, True, True]]]
    torch.testing.assert_close(d.logprobs, torch.gather(logp, -1, d.ids))


# ---------------------------------------------------------------- the module's loss at alpha = 1 and 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tok = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
    torch.manual_seed(0)
    teacher_dir = tmp_path_factory.mktemp("teacher")
    load_student(config={**TINY, "num_hidden_layers": 1, "initializer_range": 0.2}).save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    dm = DistillDataModule(
        tok,
        str(ROOT / "data" / "toy" / "train.jsonl"),
        max_prompt_tokens=64,
        max_response_tokens=12,
        val_size=0,
        batch_size=4,
        seed=0,
        cache_dir=None,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return tok, teacher_dir, batch


def make(cls, tok, **kwargs):
    torch.manual_seed(1)  # the same student weights for every module
    student = load_student(config=TINY)
    teacher = kwargs.pop("teacher", None)
    kwargs.setdefault("max_tokens_per_micro_batch", None)  # the padded path unless a test packs
    config = cls.Config(
        _target_=f"gad.methods.{cls.__name__}",
        generator_optimizer=OptimizerConfig(lr=1e-3),
        micro_batch_size=3,
        **({"teacher": KDTeacherConfig(**teacher)} if teacher is not None else {}),
        **kwargs,
    )
    module = cls(config, student, tok)
    module.manual_backward = lambda loss, *a, **k: loss.backward()  # no Trainer here
    return module


def grads(module):
    return {n: p.grad.clone() for n, p in module.generator.named_parameters() if p.grad is not None}


def kd(tok, teacher_dir, **kwargs):
    spec = {"kind": "local", "path": str(teacher_dir), **kwargs.pop("teacher", {})}
    kwargs.setdefault("alpha_warmup_steps", 0)
    module = make(KDModule, tok, teacher=spec, max_new_tokens=12, **kwargs)
    module.setup_teacher()
    return module


@pytest.mark.parametrize("on_policy", [True, False])
def test_alpha_one_is_seqkd(world, on_policy):
    tok, teacher_dir, batch = world
    seqkd = make(SeqKDModule, tok)
    ce = seqkd.sft_backward(batch)
    module = kd(tok, teacher_dir, alpha=1.0, on_policy=on_policy)
    assert module.teacher is None  # never asked
    metrics = module.kd_backward(batch, module.current_alpha())
    # Bit-exact on purpose: alpha = 1 runs SeqKD's own code (sft_backward) on the same batch in this process.
    assert metrics["train/loss"].item() == ce.item()
    want, got = grads(seqkd), grads(module)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_alpha_one_after_warmup_matches_seqkd_loss_with_teacher_present(world):
    tok, teacher_dir, batch = world
    ce = make(SeqKDModule, tok).sft_backward(batch)
    module = kd(tok, teacher_dir, alpha=1.0, on_policy=False, alpha_warmup_steps=2)
    module.completed_steps = 5  # past the warm-up: alpha = 1
    assert module.kd_backward(batch, module.current_alpha())["train/loss"].item() == pytest.approx(ce.item(), rel=1e-6)


@pytest.mark.parametrize("top_k", [None, 5])
def test_alpha_zero_is_pure_kd_against_float64(world, top_k):
    """Off-policy alpha = 0: loss = T^2 x token-mean KL on the teacher responses, computed here in
    float64 from the two models' own logits; the gradient is that of T^2 x KL alone."""
    tok, teacher_dir, batch = world
    module = kd(tok, teacher_dir, alpha=0.0, on_policy=False, softening_temperature=2.0, teacher={"top_k": top_k})
    metrics = module.kd_backward(batch, 0.0)

    targets, mask = batch["response_ids"], batch["response_mask"].numpy()
    with torch.no_grad():
        parts = batch["prompt_ids"], batch["prompt_mask"], targets, batch["response_mask"]
        zs = module.response_logprobs(module.generator, *parts, with_logits=True)[1].double().numpy()
        zt = module.response_logprobs(module.teacher.model, *parts, with_logits=True)[1].double().numpy()
    per_token = np.zeros(mask.shape)
    for i, (b, r) in enumerate(zip(*np.nonzero(mask))):  # the logits are flat, at the real tokens in row-major order
        if top_k is None:
            per_token[b, r] = ref_full_kl(zt[i], zs[i], 2.0)
        else:
            lt = np.log(np_softmax(zt[i]))
            listed = list(np.argsort(-lt)[:top_k])
            if targets[b, r].item() not in listed:
                listed.append(targets[b, r].item())
            per_token[b, r] = ref_topk_kl(listed, [lt[j] for j in listed], zs[i], 2.0)
    want = 4.0 * masked_token_mean(per_token, mask)
    assert abs(metrics["train/loss"].item() - want) < 1e-5  # float32 models vs the float64 reference
    assert want > 1e-2

    # the gradient is exactly that of T^2 x KL (CE is only logged at alpha = 0)
    kl_only = kd(tok, teacher_dir, alpha=0.0, on_policy=False, softening_temperature=2.0, teacher={"top_k": top_k})
    zs_t = kl_only.response_logprobs(kl_only.generator, *parts, with_logits=True)[1]
    ids, attn = torch.cat(parts[0::2], dim=1), torch.cat(parts[1::2], dim=1)
    dists = kl_only.teacher.score(ids, attn, targets.size(1))
    dists = at_tokens(dists, batch["response_mask"].bool())
    loss = 4.0 * kl_only.token_kl(dists, zs_t).sum() / batch["response_mask"].sum()
    loss.backward()
    want_g, got_g = grads(kl_only), grads(module)
    assert all(torch.allclose(want_g[k], got_g[k], atol=1e-6, rtol=1e-4) for k in want_g)


def test_on_policy_kl_is_on_the_students_samples(world):
    tok, teacher_dir, batch = world
    module = kd(tok, teacher_dir, alpha=0.5, on_policy=True)
    metrics = module.kd_backward(batch, 0.5)
    rollout = module.rollout(batch)  # the same seed and step: the same samples
    assert metrics["train/response_len"].item() == rollout.lengths.float().mean().item()
    with torch.no_grad():
        zs = module.response_logprobs(
            module.generator,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.response_ids,
            rollout.response_mask,
            with_logits=True,
        )[1]
        dists = module.teacher.score(rollout.input_ids, rollout.attention_mask, rollout.response_ids.size(1))
        kl = module.token_kl(at_tokens(dists, rollout.response_mask.bool()), zs)
    assert metrics["train/kl"].item() == pytest.approx((kl.sum() / rollout.lengths.sum()).item(), rel=1e-5)
    assert metrics["train/loss"].item() == pytest.approx(
        0.5 * metrics["train/sft_loss"].item() + 0.5 * 4 * metrics["train/kl"].item(), rel=1e-6
    )


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"kind": "remote"}, "method.teacher.kind=remote"),
        ({"kind": "local"}, "method.teacher.path"),
        ({"kind": "local", "path": "x", "topk": 3}, "method.teacher.topk: unknown key"),
        ({"kind": "api", "base_url": "http://x/v1"}, "method.teacher.top_k"),
        ({"kind": "api", "base_url": "http://x/v1", "top_k": 0}, "method.teacher.top_k=0"),
    ],
)
def test_teacher_config_errors_name_the_key(spec, fragment):
    from gad.errors import GADError

    with pytest.raises(GADError, match=fragment.replace(".", r"\.").replace("=", "=")):
        build_teacher(spec)


@pytest.mark.parametrize("override", ["method.samples_per_prompt=0", "method.alpha_warmup_steps=-1"])
def test_kd_keys_are_validated_before_anything_loads(override):
    from hydra import compose, initialize_config_dir

    from gad.config.validate import validate
    from gad.errors import GADError

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/gad-test-out", "method=kd", override]
        )
    with pytest.raises(GADError, match=override.replace(".", r"\.") + " is invalid"):
        validate(cfg)


def test_local_teacher_with_another_tokenizer_is_refused(world, tmp_path):
    from gad.errors import GADError

    tok, teacher_dir, _ = world
    other = load_tokenizer(str(ROOT / "data" / "toy" / "tokenizer"))
    other.add_tokens(["the"])
    other.save_pretrained(tmp_path)
    teacher = build_teacher({"kind": "local", "path": str(teacher_dir), "tokenizer": str(tmp_path)})
    with pytest.raises(GADError) as err:
        teacher.setup(tok)
    assert "does not share the student's tokenizer" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("on_policy", [True, False])
def test_packed_kd_step_equals_the_padded_one(world, on_policy):
    """method.max_tokens_per_micro_batch: the KD step's loss and gradients are the padded path's."""
    tok, teacher_dir, batch = world
    results = []
    for budget in (None, 25):
        module = kd(
            tok, teacher_dir, alpha=0.5, on_policy=on_policy, teacher={"top_k": 5}, max_tokens_per_micro_batch=budget
        )
        results.append((module.kd_backward(batch, 0.5), grads(module)))
    (want, want_g), (got, got_g) = results
    for key in ("train/kl", "train/sft_loss", "train/loss", "train/teacher_topk_mass"):
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-5), key
    assert want_g.keys() == got_g.keys()
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], atol=1e-6, rtol=1e-4)
