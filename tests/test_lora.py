"""LoRA (`model.lora`): only the adapters (and D's head) train, the reference is the warmed-up
policy, the export is a plain folder with the adapters merged in, resume is exact."""

from __future__ import annotations

import csv
import sys

import lightning as L
import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_entry, train
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from transformers import AutoModelForCausalLM

from gad.checkpoint_io import restore_reference
from gad.config.validate import validate
from gad.errors import GADError
from gad.fit import build_module
from gad.models import plain_from_state
from gad.runs import load_module, run_config

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft asks it
R = 4
LORA = [
    "model.lora.generator=true",
    "model.lora.discriminator=true",
    f"model.lora.r={R}",
    "model.lora.alpha=8",
    "callbacks.step_checkpoint.every_n_steps=3",
]  # step_3 = the end of warm-up, step_6 = the end


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("logs"), *LORA)


def ckpt(run, name="last"):
    """A checkpoint as training loads it: with the KL reference (saved once, in reference.pt) put back."""
    path = run / "checkpoints" / f"{name}.ckpt"
    return restore_reference(torch.load(path, map_location="cpu", weights_only=False), path)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", "paths.output_dir=/tmp/gad-test-out", *overrides])


def lora_params(student: nn.Module, r: int) -> int:
    """What LoRA on every Linear but the LM head implies: r x (in + out) each."""
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in student.named_modules()
        if isinstance(m, nn.Linear) and name != "lm_head"
    )


def test_only_the_adapters_and_the_head_trained(run):
    cfg = run_config(run)
    L.seed_everything(cfg.seed, verbose=False)
    initial = build_module(cfg).state_dict()  # same seed => the run's initial weights
    final = ckpt(run)["state_dict"]
    assert initial.keys() == final.keys()
    trained = [k for k in initial if k.startswith(("generator.", "discriminator."))]
    adapters = [k for k in trained if ".lora_" in k or k.startswith("discriminator.head.")]
    base = [k for k in trained if k not in adapters]
    for network in ("generator.", "discriminator.trunk."):  # both networks have adapters and frozen weights
        assert any(k.startswith(network) and ".lora_" in k for k in adapters)
        assert any(k.startswith(network) and ".base_layer.weight" in k for k in base)
        assert any(k.startswith(network) and "embed_tokens" in k for k in base)
    assert [k for k in base if not torch.equal(initial[k], final[k])] == []  # bit-identical
    assert [k for k in adapters if torch.equal(initial[k], final[k])] == []  # every adapter moved


def test_trainable_parameters_and_optimizer_state_are_the_adapters(run):
    cfg = run_config(run)
    expected = lora_params(instantiate(cfg.model.student), R)
    hidden = cfg.model.student.config.hidden_size
    module = load_module(run)
    trainable = {
        name: sum(p.numel() for p in net.module.parameters() if p.requires_grad)
        for name, net in module.networks.items()
    }
    assert trainable == {"generator": expected, "discriminator": expected + hidden + 1}
    # Only those reach the optimizers (as many tensors in their groups), and AdamW holds state for them.
    tensors = [sum(p.requires_grad for p in net.module.parameters()) for net in module.networks.values()]
    states = ckpt(run)["optimizer_states"]
    assert [sum(len(g["params"]) for g in opt["param_groups"]) for opt in states] == tensors
    held = [sum(s["exp_avg"].numel() for s in opt["state"].values()) for opt in states]
    assert held == [trainable["generator"], trainable["discriminator"]]


def test_reference_is_the_warmed_up_policy(run):
    warmup_end, last = ckpt(run, "step_000003")["state_dict"], ckpt(run)["state_dict"]
    reference = {k.removeprefix("reference."): v for k, v in last.items() if k.startswith("reference.")}
    assert any(".lora_" in k for k in reference)
    assert all(torch.equal(v, warmup_end["generator." + k]) for k, v in reference.items())
    assert any(not torch.equal(v, last["generator." + k]) for k, v in reference.items())  # G moved on
    # and, run as a network, it gives the warmed-up student's logits
    ids = torch.tensor([[1, 70, 100, 32, 50, 51, 258, 2, 80]])
    with torch.no_grad():
        ref = load_module(run).reference(input_ids=ids).logits
        warmed = load_module(run, run / "checkpoints" / "step_000003.ckpt").generator(input_ids=ids).logits
    assert torch.equal(ref, warmed)  # bit-exact: the same weights through the same network on this machine


def test_export_is_a_plain_model_with_the_adapters_merged(run):
    files = {p.name for p in (run / "student").iterdir()}
    assert "model.safetensors" in files and not any(f.startswith("adapter") for f in files)
    exported = AutoModelForCausalLM.from_pretrained(run / "student").eval()
    assert not any("lora" in k or "base_layer" in k for k in exported.state_dict())
    module = load_module(run)
    ids = torch.tensor([[1, 70, 100, 32, 50, 51, 258, 2, 80], [256, 256, 1, 65, 66, 67, 68, 258, 2]])
    mask = (ids != 256).long()
    with torch.no_grad():
        trained = module.generator(input_ids=ids, attention_mask=mask).logits
        plain = exported(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(plain, trained, rtol=0, atol=1e-5)
    assert exported.generation_config.eos_token_id == module.generator.generation_config.eos_token_id
    assert exported.config.tie_word_embeddings is True  # as the tiny student's: the merge kept the tie


def test_merged_copy_leaves_the_student_untouched(run):
    module = load_module(run)
    live = {k: v.clone() for k, v in module.generator.state_dict().items()}
    plain = plain_from_state(module.generator, {k: v.clone() for k, v in live.items()})
    assert type(plain).__name__ == "Qwen2ForCausalLM" and module.generator.config is not plain.config
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    assert not [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    assert all(torch.equal(v, live[k]) for k, v in module.generator.state_dict().items())
    assert module.generator.config.tie_word_embeddings is True
    ids = torch.tensor([[1, 70, 100, 32, 50]])
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=ids).logits, module.generator(input_ids=ids).logits, rtol=0, atol=1e-5
        )


def test_resume_with_adapters_ends_with_the_same_parameters(run, tmp_path):
    resumed = train(tmp_path, *LORA, f"ckpt_path={run / 'checkpoints' / 'step_000003.ckpt'}")
    a, b = ckpt(run)["state_dict"], ckpt(resumed)["state_dict"]
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # bit-exact: resumed on this machine (no rounding apart)
    steps = [float(r["train/step"]) for r in csv.DictReader(open(resumed / "metrics.csv")) if r.get("train/step")]
    assert steps == [4, 5, 6]


def test_seqkd_adapts_its_generator_only():
    cfg = composed("method=seqkd", "model.lora.generator=true", "model.lora.discriminator=true", f"model.lora.r={R}")
    validate(cfg)
    module = build_module(cfg)
    assert list(module.networks) == ["generator"]
    trainable = sum(p.numel() for p in module.generator.parameters() if p.requires_grad)
    assert trainable == lora_params(instantiate(cfg.model.student), R)


def test_adapters_get_gradients_under_gradient_checkpointing():
    cfg = composed(
        "model.lora.generator=true",
        "model.lora.discriminator=true",
        f"model.lora.r={R}",
        "model.student.gradient_checkpointing=true",
    )
    module = build_module(cfg).train()
    ids = torch.tensor([[1, 70, 100, 32, 50, 51, 258, 2, 80]])
    g = module.generator(input_ids=ids).logits.square().mean()
    d = module.discriminator(ids[:, :6], torch.ones(1, 6), ids[:, 6:], torch.ones(1, 3)).sum()
    (g + d).backward()
    for name, net in module.networks.items():
        trained = [(n, p) for n, p in net.module.named_parameters() if p.requires_grad]
        assert trained and all(p.grad is not None for n, p in trained), name
        assert all(p.grad is None for p in net.module.parameters() if not p.requires_grad), name
        assert any(p.grad.abs().sum() > 0 for n, p in trained if "lora_B" in n), name  # B = 0 at init: A's grad is 0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("+model.lora.rank=8", "model.lora.rank: unknown key"),
        ("model.lora.r=0", "model.lora.r=0 is invalid"),
        ("model.lora.generator=yes", "model.lora.generator=yes is invalid"),
    ],
)
def test_bad_lora_settings_name_the_key(override, fragment):
    with pytest.raises(GADError, match=fragment):
        validate(composed(override))


def test_missing_peft_is_one_line_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(GADError, match=r'model\.lora\.discriminator=true .*pip install -e "\.\[peft\]"'):
        validate(composed("model.lora.discriminator=true"))
    fake = tmp_path / "site" / "peft"  # the same from the command line, with peft unimportable
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('peft is hidden by this test')\n")
    proc = run_entry(
        "train.py", "model.lora.generator=true", f"paths.log_dir={tmp_path}", env={"PYTHONPATH": str(fake.parent)}
    )
    assert_one_line_error(proc, "model.lora.generator=true", 'pip install -e ".[peft]"')
